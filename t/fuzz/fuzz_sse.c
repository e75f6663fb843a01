
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * libFuzzer target for the Server-Sent Events parser, src/ngx_collab_sse.c.
 *
 * Byte 0 chooses the line buffer's size (1..64, or 4096 when its top bit
 * is set), byte 1 the data buffer's size (the same way), byte 2 after how
 * many events the callback returns non-zero (0: never); the rest is the
 * stream.  The buffers are heap blocks of exactly their sizes, so a write
 * past one is caught by AddressSanitizer.
 *
 * The stream is parsed three ways: whole, one byte at a time (each byte
 * in its own 1-byte heap block), and in chunks whose lengths come from the
 * input itself.  Invariants:
 *
 *   - the three give the same events and the same final code;
 *   - which are those of a reference written here from the WHATWG rules
 *     over the whole input: lines split at CRLF, LF or CR; a line longer
 *     than the line buffer or data that does not fit (with its LF) stops
 *     with -1; comments and other fields ignored; a blank line dispatches
 *     the data lines joined by LF, when there was one;
 *   - the callback's non-zero return is returned at once.
 */


#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_collab_sse.h"


typedef struct {
    size_t         n;
    size_t         total;       /* bytes of data in all events */
    uint64_t       hash;        /* of every event's length and bytes */
    size_t         stop_after;
    int            rc;
} sink_t;


static void
sink_add(sink_t *k, const u_char *data, size_t len)
{
    size_t  i;

    k->n++;
    k->total += len;
    k->hash = (k->hash ^ len) * 1099511628211ULL;

    for (i = 0; i < len; i++) {
        k->hash = (k->hash ^ data[i]) * 1099511628211ULL;
    }
}


static int
on_event(void *ctx, const u_char *data, size_t len)
{
    sink_t  *k;

    k = ctx;

    if (len) {

        /* every byte readable: ASan checks the pointer and length */
        volatile u_char  x = data[0] ^ data[len - 1];
        (void) x;
    }

    sink_add(k, data, len);

    if (k->stop_after && k->n == k->stop_after) {
        return 5;
    }

    return 0;
}


static size_t
size_of(uint8_t b)
{
    return (b & 0x80) ? 4096 : (size_t) (b & 0x3f) + 1;
}


/* the reference: the same rules, written over the whole input */

static int
reference(const u_char *p, size_t len, size_t line_size, size_t data_size,
    sink_t *k)
{
    size_t   i, start, n, vlen, dlen, j;
    u_char  *data, *colon, *value;
    int      has_data, rc;

    data = malloc(data_size);
    if (data == NULL) {
        abort();
    }

    dlen = 0;
    has_data = 0;
    start = 0;
    rc = 0;

    for (i = 0; i <= len; i++) {

        if (i < len && p[i] != '\n' && p[i] != '\r') {
            if (i - start + 1 > line_size) {
                rc = -1;
                goto done;
            }

            continue;
        }

        if (i == len) {
            break;              /* an unfinished line: kept for later */
        }

        /* a line [start, i) */

        n = i - start;

        if (n == 0) {
            if (has_data) {
                has_data = 0;
                sink_add(k, data, dlen - 1);

                if (k->stop_after && k->n == k->stop_after) {
                    rc = 5;
                    goto done;
                }

                dlen = 0;
            }

        } else if (p[start] != ':') {
            colon = memchr(p + start, ':', n);
            value = colon ? colon + 1 : (u_char *) p + i;

            if (colon == NULL) {
                colon = (u_char *) p + i;

            } else if (value < p + i && *value == ' ') {
                value++;
            }

            if (colon - (p + start) == 4 && memcmp(p + start, "data", 4) == 0)
            {
                vlen = (size_t) (p + i - value);

                if (dlen + vlen + 1 > data_size) {
                    rc = -1;
                    goto done;
                }

                for (j = 0; j < vlen; j++) {
                    data[dlen++] = value[j];
                }

                data[dlen++] = '\n';
                has_data = 1;
            }
        }

        /* CRLF is one line end */

        if (p[i] == '\r' && i + 1 < len && p[i + 1] == '\n') {
            i++;
        }

        start = i + 1;
    }

done:

    free(data);

    return rc;
}


static int
parse(const u_char *p, size_t len, size_t line_size, size_t data_size,
    const u_char *cuts, size_t ncuts, int bytewise, sink_t *k)
{
    int               rc;
    size_t            off, n, c;
    u_char           *chunk;
    ngx_collab_sse_t  s;

    memset(&s, 0, sizeof(ngx_collab_sse_t));
    s.line = malloc(line_size);
    s.data = malloc(data_size);
    s.line_size = line_size;
    s.data_size = data_size;

    if (s.line == NULL || s.data == NULL) {
        abort();
    }

    rc = 0;
    off = 0;
    c = 0;

    while (off < len) {
        if (bytewise) {
            n = 1;

        } else {
            n = ncuts ? (size_t) cuts[c++ % ncuts] + 1 : len;
        }

        if (n > len - off) {
            n = len - off;
        }

        chunk = malloc(n);
        if (chunk == NULL) {
            abort();
        }

        memcpy(chunk, p + off, n);
        rc = ngx_collab_sse_feed(&s, chunk, n, on_event, k);
        free(chunk);

        off += n;

        if (rc != 0) {
            break;
        }
    }

    /* the data is untouched by the parser past its size: ASan checks */

    free(s.line);
    free(s.data);

    return rc;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int           rc[4];
    size_t        line_size, data_size, len, ncuts, i;
    sink_t        k[4];
    const u_char  *p;

    if (size < 3) {
        return 0;
    }

    line_size = size_of(data[0]);
    data_size = size_of(data[1]);

    memset(k, 0, sizeof(k));

    for (i = 0; i < 4; i++) {
        k[i].stop_after = data[2] & 0x0f;
    }

    p = data + 3;
    len = size - 3;

    /* the chunk lengths: the stream's own bytes, reversed */

    ncuts = len < 16 ? len : 16;

    rc[0] = parse(p, len, line_size, data_size, NULL, 0, 0, &k[0]);
    rc[1] = parse(p, len, line_size, data_size, NULL, 0, 1, &k[1]);
    rc[2] = parse(p, len, line_size, data_size, p + len - ncuts, ncuts, 0,
                  &k[2]);
    rc[3] = reference(p, len, line_size, data_size, &k[3]);

    for (i = 1; i < 4; i++) {
        if (rc[i] != rc[0] || k[i].n != k[0].n || k[i].total != k[0].total
            || k[i].hash != k[0].hash)
        {
            abort();
        }
    }

    if (rc[0] != 0 && rc[0] != -1 && rc[0] != 5) {
        abort();
    }

    if (rc[0] == 5 && k[0].n != k[0].stop_after) {
        abort();
    }

    return 0;
}
