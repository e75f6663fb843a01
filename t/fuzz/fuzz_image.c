
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * libFuzzer target for the attached-picture check, src/ngx_collab_image.c.
 *
 * The input is a message's "image" as a user may send it.  It is copied
 * into a heap block of exactly its length; when the parser takes it, it
 * is decoded into a heap block of exactly the announced size, so
 * AddressSanitizer catches a read or a write past either.  Invariants:
 *
 *   - the parser's answer is that of a reference written here from the
 *     rules (one of three prefixes, then 4n characters of the RFC 4648
 *     alphabet, at most two "=" at the end, n >= 1);
 *   - a picture taken re-encodes to exactly the base64 it came with,
 *     except for the unused low bits of its last character.
 */


#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_collab_image.h"


static const char  b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static const char  *prefixes[] = {
    "data:image/png;base64,",
    "data:image/jpeg;base64,",
    "data:image/webp;base64,",
};


static int
reference(const u_char *p, size_t len)
{
    size_t  i, k, n, plen, pad;

    for (k = 0; k < 3; k++) {
        plen = strlen(prefixes[k]);

        if (len >= plen && memcmp(p, prefixes[k], plen) == 0) {
            break;
        }
    }

    if (k == 3) {
        return -1;
    }

    p += plen;
    n = len - plen;

    if (n == 0 || n % 4) {
        return -1;
    }

    pad = 0;

    while (pad < 2 && p[n - 1 - pad] == '=') {
        pad++;
    }

    for (i = 0; i < n - pad; i++) {
        if (p[i] == '\0' || strchr(b64, p[i]) == NULL) {
            return -1;
        }
    }

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                  rc;
    size_t               i, j, n, bits;
    u_char              *in, *out;
    uint32_t             v;
    ngx_collab_image_t   img;

    in = malloc(size ? size : 1);
    if (in == NULL) {
        abort();
    }

    memcpy(in, data, size);

    rc = ngx_collab_image_parse(in, size, &img);

    if (rc != reference(in, size)) {
        abort();
    }

    if (rc == 0) {
        if (img.b64 < in || img.b64 + img.b64_len != in + size
            || img.size == 0 || img.size > img.b64_len / 4 * 3)
        {
            abort();
        }

        out = malloc(img.size);
        if (out == NULL) {
            abort();
        }

        n = ngx_collab_image_decode(&img, out);

        if (n != img.size) {
            abort();
        }

        /* re-encode, comparing the significant bits only */

        for (i = 0; i < n; i += 3) {
            v = (uint32_t) out[i] << 16;
            v |= (i + 1 < n) ? (uint32_t) out[i + 1] << 8 : 0;
            v |= (i + 2 < n) ? out[i + 2] : 0;

            for (j = 0; j < 4; j++) {
                bits = (n - i >= 3) ? 24 : (n - i) * 8;

                if (6 * j >= bits) {
                    if (img.b64[i / 3 * 4 + j] != '=') {
                        abort();
                    }

                    continue;
                }

                if (6 * (j + 1) > bits) {
                    /* the last character: its unused bits are free */
                    if ((strchr(b64, img.b64[i / 3 * 4 + j]) - b64)
                        >> (6 * (j + 1) - bits)
                        != (long) ((v >> (18 - 6 * j)) & 0x3f)
                           >> (6 * (j + 1) - bits))
                    {
                        abort();
                    }

                    continue;
                }

                if (img.b64[i / 3 * 4 + j] != b64[(v >> (18 - 6 * j)) & 0x3f])
                {
                    abort();
                }
            }
        }

        free(out);
    }

    free(in);

    return 0;
}
