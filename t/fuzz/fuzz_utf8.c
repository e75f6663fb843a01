
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * libFuzzer target: ngx_collab_utf8_feed() against the reference checker
 * in ref_utf8.h.  The first input byte picks a split point; the rest is
 * the text.  It is fed whole, in two parts and one byte at a time, and
 * each way must agree with the reference on whether the text is valid,
 * incomplete, or invalid, and on the index of the first bad byte.
 */


#include <stdlib.h>
#include <string.h>

#include "ngx_collab_ws_frame.h"
#include "ref_utf8.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                 rc;
    size_t              n, i, split, bad;
    u_char             *s;
    ngx_collab_utf8_t   u;

    if (size == 0) {
        return 0;
    }

    n = size - 1;
    split = data[0] % (n + 1);

    /* an exact-size copy: ASan sees any read past the end */
    s = malloc(n ? n : 1);
    if (s == NULL) {
        abort();
    }
    memcpy(s, data + 1, n);

    bad = ref_utf8(s, n);

    /* whole */
    memset(&u, 0, sizeof(ngx_collab_utf8_t));
    rc = ngx_collab_utf8_feed(&u, s, n);

    if (bad == REF_UTF8_VALID) {
        if (rc != 0 || !ngx_collab_utf8_complete(&u)) {
            abort();
        }

    } else if (bad == n) {
        if (rc != 0 || ngx_collab_utf8_complete(&u)) {
            abort();
        }

    } else if (rc != -1) {
        abort();
    }

    /* two parts */
    memset(&u, 0, sizeof(ngx_collab_utf8_t));
    rc = ngx_collab_utf8_feed(&u, s, split);

    if (rc != ((bad != REF_UTF8_VALID && bad < split) ? -1 : 0)) {
        abort();
    }

    if (rc == 0) {
        rc = ngx_collab_utf8_feed(&u, s + split, n - split);

        if (rc != ((bad != REF_UTF8_VALID && bad < n) ? -1 : 0)) {
            abort();
        }

        if (rc == 0
            && ngx_collab_utf8_complete(&u) != (bad == REF_UTF8_VALID))
        {
            abort();
        }
    }

    /* one byte at a time: -1 exactly at the first bad byte */
    memset(&u, 0, sizeof(ngx_collab_utf8_t));

    for (i = 0; i < n; i++) {
        rc = ngx_collab_utf8_feed(&u, s + i, 1);

        if (rc != 0) {
            break;
        }
    }

    if (i != (bad == REF_UTF8_VALID ? n : (bad < n ? bad : n))) {
        abort();
    }

    free(s);

    return 0;
}
