
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * Unit tests of the attached-picture check, src/ngx_collab_image.c.
 *
 * Each case is a string a user might send as a message's "image" and
 * whether it is a picture; for a picture, its type, file extension and
 * decoded bytes.  Every input is copied into a heap block of exactly its
 * length (no NUL after it) and decoded into a heap block of exactly the
 * size the parser announced, so AddressSanitizer catches a read or a
 * write past either.
 *
 * Why: these are untrusted bytes a provider receives; only data: URLs of
 * three types with strict base64 pass, never a URL the server would have
 * to fetch.
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ngx_collab_image.h"


typedef struct {
    const char    *in;
    int            rc;
    const char    *type;
    const char    *ext;
    const char    *bytes;
    size_t         size;
} image_case_t;


static const image_case_t  cases[] = {
    { "data:image/png;base64,iVBORw==", 0, "image/png", "png",
      "\x89PNG", 4 },
    { "data:image/jpeg;base64,/9j/", 0, "image/jpeg", "jpg",
      "\xff\xd8\xff", 3 },
    { "data:image/webp;base64,UklGRg==", 0, "image/webp", "webp",
      "RIFF", 4 },
    { "data:image/png;base64,AA==", 0, "image/png", "png", "\0", 1 },
    { "data:image/png;base64,+/+/", 0, "image/png", "png",
      "\xfb\xff\xbf", 3 },

    { "", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,", -1, NULL, NULL, NULL, 0 },
    { "http://example.test/a.png", -1, NULL, NULL, NULL, 0 },
    { "https://example.test/a.png", -1, NULL, NULL, NULL, 0 },
    { "data:image/gif;base64,R0lG", -1, NULL, NULL, NULL, 0 },
    { "data:image/png,iVBORw==", -1, NULL, NULL, NULL, 0 },
    { "DATA:image/png;base64,iVBORw==", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64, iVBORw=", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,iVBORw", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,iVBO\nRw==", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,iV=BORw=", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,A===", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,====", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,iVBOR-_=", -1, NULL, NULL, NULL, 0 },
    { "data:image/png;base64,iVBORw==AAAA", -1, NULL, NULL, NULL, 0 },
    { "data:image/pn", -1, NULL, NULL, NULL, 0 },
};


static void
test_cases(void **state)
{
    int                  rc;
    size_t               i, len, n;
    u_char              *in, *out;
    ngx_collab_image_t   img;

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        len = strlen(cases[i].in);

        in = malloc(len ? len : 1);
        assert_non_null(in);
        memcpy(in, cases[i].in, len);

        rc = ngx_collab_image_parse(in, len, &img);

        if (rc != cases[i].rc) {
            fail_msg("\"%s\": %d, not %d", cases[i].in, rc, cases[i].rc);
        }

        if (rc == 0) {
            assert_string_equal(img.type, cases[i].type);
            assert_string_equal(img.ext, cases[i].ext);
            assert_int_equal(img.size, cases[i].size);

            out = malloc(img.size);
            assert_non_null(out);

            n = ngx_collab_image_decode(&img, out);
            assert_int_equal(n, cases[i].size);
            assert_memory_equal(out, cases[i].bytes, n);

            free(out);
        }

        free(in);
    }
}


/* every byte value survives, whatever the padding */

static void
test_round_trip(void **state)
{
    static const char  b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    size_t               n, i, j, len;
    u_char               bytes[300], *url, *out, *p;
    uint32_t             v;
    ngx_collab_image_t   img;

    (void) state;

    for (i = 0; i < sizeof(bytes); i++) {
        bytes[i] = (u_char) (i * 7 + 3);
    }

    for (n = 1; n <= sizeof(bytes); n++) {
        len = sizeof("data:image/png;base64,") - 1 + (n + 2) / 3 * 4;
        url = malloc(len);
        assert_non_null(url);

        p = url;
        memcpy(p, "data:image/png;base64,", 22);
        p += 22;

        for (i = 0; i < n; i += 3) {
            v = (uint32_t) bytes[i] << 16;
            v |= (i + 1 < n) ? (uint32_t) bytes[i + 1] << 8 : 0;
            v |= (i + 2 < n) ? bytes[i + 2] : 0;

            for (j = 0; j < 4; j++) {
                *p++ = (i + j <= n) ? b64[(v >> (18 - 6 * j)) & 0x3f] : '=';
            }
        }

        assert_int_equal(ngx_collab_image_parse(url, len, &img), 0);
        assert_int_equal(img.size, n);

        out = malloc(n);
        assert_non_null(out);
        assert_int_equal(ngx_collab_image_decode(&img, out), n);
        assert_memory_equal(out, bytes, n);

        free(out);
        free(url);
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_round_trip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
