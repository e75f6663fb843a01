
/*
 * Copyright (C) ngx_collab authors
 */


#include <stdint.h>
#include <string.h>

#include "ngx_collab_image.h"


typedef struct {
    const char                 *prefix;
    size_t                      len;
    const char                 *type;
    const char                 *ext;
} ngx_collab_image_kind_t;


#define ngx_collab_image_kind(t, e)                                          \
    { "data:" t ";base64,", sizeof("data:" t ";base64,") - 1, t, e }

static const ngx_collab_image_kind_t  ngx_collab_image_kinds[] = {
    ngx_collab_image_kind("image/png", "png"),
    ngx_collab_image_kind("image/jpeg", "jpg"),
    ngx_collab_image_kind("image/webp", "webp"),
};


/* a base64 character's value, or 64 */

static u_char
ngx_collab_image_b64(u_char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '+') {
        return 62;
    }

    if (c == '/') {
        return 63;
    }

    return 64;
}


int
ngx_collab_image_parse(const u_char *p, size_t len, ngx_collab_image_t *img)
{
    size_t                          i, n, pad;
    const ngx_collab_image_kind_t  *k;

    k = NULL;

    for (i = 0; i < sizeof(ngx_collab_image_kinds)
                    / sizeof(ngx_collab_image_kinds[0]); i++)
    {
        if (len >= ngx_collab_image_kinds[i].len
            && memcmp(p, ngx_collab_image_kinds[i].prefix,
                      ngx_collab_image_kinds[i].len) == 0)
        {
            k = &ngx_collab_image_kinds[i];
            break;
        }
    }

    if (k == NULL) {
        return -1;
    }

    p += k->len;
    n = len - k->len;

    if (n == 0 || n % 4 != 0) {
        return -1;
    }

    pad = 0;

    if (p[n - 1] == '=') {
        pad = (p[n - 2] == '=') ? 2 : 1;
    }

    for (i = 0; i < n - pad; i++) {
        if (ngx_collab_image_b64(p[i]) == 64) {
            return -1;
        }
    }

    img->type = k->type;
    img->ext = k->ext;
    img->b64 = p;
    img->b64_len = n;
    img->size = n / 4 * 3 - pad;

    return 0;
}


size_t
ngx_collab_image_decode(const ngx_collab_image_t *img, u_char *dst)
{
    size_t         i, n, out;
    uint32_t       v;
    const u_char  *s;

    s = img->b64;
    n = img->b64_len;
    out = 0;

    for (i = 0; i < n; i += 4) {
        v = (uint32_t) ngx_collab_image_b64(s[i]) << 18
            | (uint32_t) ngx_collab_image_b64(s[i + 1]) << 12;

        dst[out++] = (u_char) (v >> 16);

        if (out == img->size) {
            break;
        }

        v |= (uint32_t) ngx_collab_image_b64(s[i + 2]) << 6;
        dst[out++] = (u_char) (v >> 8);

        if (out == img->size) {
            break;
        }

        v |= ngx_collab_image_b64(s[i + 3]);
        dst[out++] = (u_char) v;
    }

    return out;
}
