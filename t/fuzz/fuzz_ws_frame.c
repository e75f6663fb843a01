
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * libFuzzer target for the frame parser, ngx_collab_ws_parse().
 *
 * Input: byte 0 picks max_message, bytes 1-4 the sizes of the chunks the
 * rest is cut into (cycled).  Every chunk is copied into a heap block of
 * exactly its size, so ASan sees a read past "last" or into an earlier
 * chunk.  The stream is parsed in those chunks and again one byte at a
 * time; the two traces (frame headers, payload merged per frame, frame
 * ends, error) must be identical, except that payload handed out just
 * before an error may stop short in the chunked run.
 *
 * Invariants checked on every call: *pos stays within [*pos, last];
 * NGX_COLLAB_WS_AGAIN only when the input is used up; DATA lies inside
 * what the call consumed and a frame's data adds up to its length;
 * control frames are final and at most 125 bytes; after the FRAME_END of
 * a final data frame in_message is 0; message_len never exceeds
 * max_message; text handed out is valid UTF-8 so far and complete at the
 * end of the message, per the reference checker in ref_utf8.h; ERROR
 * carries 1002, 1007 (only for text, and in the byte-at-a-time run only
 * at a byte the reference finds bad, or a message that ends inside a
 * sequence) or 1009 (only with a limit) and ends the run.
 */


#include <stdlib.h>
#include <string.h>

#include "ngx_collab_ws_frame.h"
#include "ref_utf8.h"


typedef struct {
    u_char        *p;
    size_t         len;
    size_t         cap;
} buf_t;


typedef struct {
    buf_t          ev;
    buf_t          pend;        /* payload of the frame in progress */
    buf_t          text;        /* its unchecked tail, see text_check() */
    unsigned       error;
} trace_t;


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


#define check(expr)  if (!(expr)) { abort(); }


static void
buf_add(buf_t *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        check(b->p != NULL);
    }

    if (n) {
        memcpy(b->p + b->len, data, n);
    }

    b->len += n;
}


static void
buf_u64(buf_t *b, uint64_t v)
{
    buf_add(b, &v, sizeof(uint64_t));
}


static void
trace_free(trace_t *t)
{
    free(t->ev.p);
    free(t->pend.p);
    free(t->text.p);
}


/*
 * Checks the text message so far with the reference: valid, or ending
 * inside a sequence.  Only the bytes after the last complete sequence
 * are kept, so that checking stays linear.
 */

static size_t
text_check(buf_t *text)
{
    size_t  bad, i;

    bad = ref_utf8(text->p, text->len);

    if (bad == REF_UTF8_VALID) {
        text->len = 0;
        return bad;
    }

    if (bad == text->len) {
        /* keep the incomplete sequence: its lead is in the last 4 bytes */
        i = text->len;

        while (i > 0 && text->len - i < 4) {
            i--;

            if ((text->p[i] & 0xc0) != 0x80) {
                break;
            }
        }

        memmove(text->p, text->p + i, text->len - i);
        text->len -= i;

        return text->len;
    }

    return bad;
}


static void
run(const u_char *in, size_t n, const size_t *sizes, uint64_t max,
    int bytewise, trace_t *t)
{
    int                      rc, text, msg_text;
    u_char                  *chunk, *pos, *before, *last, mask[4], c;
    size_t                   start, end, clen, k, k2, off;
    uint64_t                 got;
    ngx_collab_ws_parser_t   p;

    memset(&p, 0, sizeof(ngx_collab_ws_parser_t));
    p.max_message = max;

    memset(t, 0, sizeof(trace_t));
    memset(mask, 0, 4);

    got = 0;
    text = 0;
    msg_text = 0;
    k = 0;

    for (start = 0; start < n; start = end) {

        clen = bytewise ? 1 : sizes[k++ % 4];
        end = start + clen;

        if (end > n) {
            end = n;
            clen = end - start;
        }

        chunk = malloc(clen ? clen : 1);
        check(chunk != NULL);
        memcpy(chunk, in + start, clen);

        pos = chunk;
        last = chunk + clen;

        for ( ;; ) {
            before = pos;
            rc = ngx_collab_ws_parse(&p, &pos, last);

            check(pos >= before && pos <= last);

            if (max && p.in_message) {
                check(p.message_len <= max);
            }

            if (rc == NGX_COLLAB_WS_AGAIN) {
                check(pos == last);
                break;
            }

            switch (rc) {

            case NGX_COLLAB_WS_FRAME:
                check(t->pend.len == 0);
                check(p.control == ((p.opcode & 0x08) ? 1 : 0));
                check(p.opcode <= 2 || (p.opcode >= 8 && p.opcode <= 10));
                check(!p.control || (p.fin && p.frame_len <= 125));
                check(p.frame_len >> 63 == 0);

                buf_add(&t->ev, "F", 1);
                c = (u_char) (p.opcode | (p.fin << 4));
                buf_add(&t->ev, &c, 1);
                buf_u64(&t->ev, p.frame_len);

                got = 0;

                if (p.opcode == NGX_COLLAB_WS_OP_TEXT
                    || p.opcode == NGX_COLLAB_WS_OP_BINARY)
                {
                    msg_text = (p.opcode == NGX_COLLAB_WS_OP_TEXT);
                }

                text = !p.control && msg_text;

                /* the key is the last four bytes of the header */
                off = start + (size_t) (pos - chunk);
                check(off >= 6);
                memcpy(mask, in + off - 4, 4);
                break;

            case NGX_COLLAB_WS_DATA:
                check(p.len > 0);
                check(p.data >= before && p.data + p.len <= pos);

                got += p.len;
                check(got <= p.frame_len);

                buf_add(&t->pend, p.data, p.len);

                if (text) {
                    buf_add(&t->text, p.data, p.len);
                    k2 = text_check(&t->text);
                    check(k2 == REF_UTF8_VALID || k2 == t->text.len);
                }

                break;

            case NGX_COLLAB_WS_FRAME_END:
                check(got == p.frame_len);

                if (!p.control) {
                    check(p.in_message == !p.fin);
                }

                if (text && p.fin) {
                    check(text_check(&t->text) == REF_UTF8_VALID);
                }

                buf_add(&t->ev, "D", 1);
                buf_u64(&t->ev, t->pend.len);
                buf_add(&t->ev, t->pend.p, t->pend.len);
                t->pend.len = 0;

                c = (u_char) (p.in_message
                              | (p.in_message ? p.message_opcode << 1 : 0));
                buf_add(&t->ev, "E", 1);
                buf_add(&t->ev, &c, 1);
                break;

            case NGX_COLLAB_WS_ERROR:
                check(p.reason != NULL);
                check(p.error == NGX_COLLAB_WS_CLOSE_PROTOCOL
                      || p.error == NGX_COLLAB_WS_CLOSE_INVALID
                      || p.error == NGX_COLLAB_WS_CLOSE_TOO_BIG);
                check(p.error != NGX_COLLAB_WS_CLOSE_TOO_BIG || max);

                if (p.error == NGX_COLLAB_WS_CLOSE_INVALID) {
                    check(text);

                    if (bytewise && got < p.frame_len) {
                        /* this byte, unmasked, is the first bad one */
                        c = in[start] ^ mask[got & 3];
                        buf_add(&t->text, &c, 1);
                        k2 = text_check(&t->text);
                        check(k2 == t->text.len - 1);

                    } else if (bytewise) {
                        check(p.fin);
                        k2 = text_check(&t->text);
                        check(k2 == t->text.len && k2 > 0);
                    }
                }

                t->error = p.error;
                free(chunk);
                return;

            default:
                abort();
            }
        }

        free(chunk);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t    i, sizes[4];
    uint64_t  max;
    trace_t   a, b;

    static const uint64_t  maxes[] = { 0, 1, 2, 10, 125, 126, 1000, 65536 };

    if (size < 5) {
        return 0;
    }

    max = maxes[data[0] & 7];

    for (i = 0; i < 4; i++) {
        sizes[i] = data[1 + i] >= 0xf0 ? 4096 : data[1 + i] % 40;
    }

    if (sizes[0] + sizes[1] + sizes[2] + sizes[3] == 0) {
        sizes[0] = 1;
    }

    data += 5;
    size -= 5;

    run(data, size, sizes, max, 0, &a);
    run(data, size, sizes, max, 1, &b);

    check(a.error == b.error);
    check(a.ev.len == b.ev.len);
    check(a.ev.len == 0 || memcmp(a.ev.p, b.ev.p, a.ev.len) == 0);

    /* before an error the chunked run may hand out less, never more */
    check(a.pend.len <= b.pend.len);
    check(a.error || a.pend.len == b.pend.len);
    check(a.pend.len == 0 || memcmp(a.pend.p, b.pend.p, a.pend.len) == 0);

    trace_free(&a);
    trace_free(&b);

    return 0;
}
