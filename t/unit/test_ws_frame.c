
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * Unit tests of the RFC 6455 frame codec, src/ngx_collab_ws_frame.c.
 *
 * Each test builds a "script": the bytes a client sends (masked frames
 * made by a small encoder below, or raw malformed headers) together with
 * the trace the parser must produce for them.  A trace is the parser's
 * events reduced to a form that does not depend on how the input was cut:
 * every frame header (opcode, fin, length), the payload of each frame
 * merged into one string, every frame end (with in_message and the
 * message opcode), and the final error code.
 *
 * The script is then parsed whole, one byte at a time, split in two at
 * every byte boundary and in random chunks.  Every chunk is copied into
 * its own heap block of exactly its size, so AddressSanitizer catches a
 * read past "last" or a pointer kept into an earlier chunk.  All runs must
 * give the expected trace; on an error, the payload handed out before it
 * may stop short of the bad byte (the parser may withhold the rest of the
 * chunk) but must never include it, and the error must be reported in the
 * call that receives the byte that causes it: UTF-8 errors exactly there
 * ("fail fast"), header errors no later than the end of the header.
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ngx_collab_ws_frame.h"


#define FIN         0x80
#define RSV1        0x40
#define RSV2        0x20
#define RSV3        0x10

#define OP_CONT     NGX_COLLAB_WS_OP_CONT
#define OP_TEXT     NGX_COLLAB_WS_OP_TEXT
#define OP_BIN      NGX_COLLAB_WS_OP_BINARY
#define OP_CLOSE    NGX_COLLAB_WS_OP_CLOSE
#define OP_PING     NGX_COLLAB_WS_OP_PING
#define OP_PONG     NGX_COLLAB_WS_OP_PONG

#define S(s)        (const u_char *) (s), sizeof(s) - 1

/* inputs longer than this are split in two at sampled boundaries only */
#define ALL_SPLITS_MAX  2048


typedef struct {
    u_char        *p;
    size_t         len;
    size_t         cap;
} tbuf_t;


typedef struct {
    tbuf_t         ev;          /* serialized events */
    tbuf_t         pend;        /* payload of the frame in progress */
    unsigned       error;       /* close code of NGX_COLLAB_WS_ERROR or 0 */
    size_t         fed;         /* input bytes given when it was returned */
} trace_t;


typedef struct {
    tbuf_t         in;          /* what the client sends */
    trace_t        exp;         /* what the parser must make of it */
    uint64_t       max;         /* max_message */
    unsigned       in_message:1;
    unsigned       msg_op:4;
    int            lenform;     /* next frame: 0 minimal, 16 or 64 bits */
    int            unmasked;    /* next frame without a mask */
    size_t         fail_at;     /* the error is due once this much is fed */
    int            fail_exact;  /* ... exactly then, not earlier */
    uint32_t       seed;
} script_t;


static void
tbuf_add(tbuf_t *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }

    if (n) {
        memcpy(b->p + b->len, data, n);
    }

    b->len += n;
}


static void
tbuf_byte(tbuf_t *b, unsigned c)
{
    u_char  ch;

    ch = (u_char) c;
    tbuf_add(b, &ch, 1);
}


static void
tbuf_u64(tbuf_t *b, uint64_t v)
{
    int  i;

    for (i = 56; i >= 0; i -= 8) {
        tbuf_byte(b, (unsigned) (v >> i) & 0xff);
    }
}


static void
trace_free(trace_t *t)
{
    free(t->ev.p);
    free(t->pend.p);
    memset(t, 0, sizeof(trace_t));
}


static void
ev_frame(trace_t *t, unsigned op, unsigned fin, uint64_t len)
{
    assert_int_equal(t->pend.len, 0);
    tbuf_byte(&t->ev, 'F');
    tbuf_byte(&t->ev, op);
    tbuf_byte(&t->ev, fin);
    tbuf_u64(&t->ev, len);
}


static void
ev_end(trace_t *t, unsigned in_message, unsigned msg_op)
{
    tbuf_byte(&t->ev, 'D');
    tbuf_u64(&t->ev, t->pend.len);
    tbuf_add(&t->ev, t->pend.p, t->pend.len);
    t->pend.len = 0;

    tbuf_byte(&t->ev, 'E');
    tbuf_byte(&t->ev, in_message);
    tbuf_byte(&t->ev, in_message ? msg_op : 0);
}


/* a 32-bit xorshift: deterministic chunk sizes and mask keys */

static uint32_t
rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}


/*
 * The test-only encoder of client frames: b0 is the first byte as sent
 * (fin, reserved bits, opcode), len the length written in the header
 * (may differ from plen to make header-only inputs), lenform forces a
 * non-minimal length encoding.  Returns the header size.
 */

static size_t
encode(tbuf_t *b, unsigned b0, uint64_t len, int lenform, int masked,
    const u_char mask[4], const u_char *payload, size_t plen)
{
    size_t    i, start;
    unsigned  mbit;

    start = b->len;
    mbit = masked ? 0x80 : 0;

    tbuf_byte(b, b0);

    if (lenform == 64 || (lenform == 0 && len > 0xffff)) {
        tbuf_byte(b, mbit | 127);
        tbuf_u64(b, len);

    } else if (lenform == 16 || (lenform == 0 && len > 125)) {
        tbuf_byte(b, mbit | 126);
        tbuf_byte(b, (unsigned) (len >> 8) & 0xff);
        tbuf_byte(b, (unsigned) len & 0xff);

    } else {
        tbuf_byte(b, mbit | (unsigned) len);
    }

    if (masked) {
        tbuf_add(b, mask, 4);
    }

    i = b->len - start;

    for (start = 0; start < plen; start++) {
        tbuf_byte(b, payload[start] ^ (masked ? mask[start & 3] : 0));
    }

    return i;
}


static void
script_init(script_t *s, uint64_t max)
{
    memset(s, 0, sizeof(script_t));
    s->max = max;
    s->seed = 0x2545f491;
}


static void
script_free(script_t *s)
{
    free(s->in.p);
    trace_free(&s->exp);
}


static size_t
script_encode(script_t *s, unsigned b0, const u_char *data, size_t len)
{
    u_char    mask[4];
    uint32_t  r;
    size_t    h;

    /* vary the key; every fourth frame uses the all-zero key */
    r = rnd(&s->seed);

    if ((r & 3) == 0) {
        memset(mask, 0, 4);

    } else {
        memcpy(mask, &r, 4);
    }

    h = encode(&s->in, b0, len, s->lenform, !s->unmasked, mask, data, len);

    s->lenform = 0;
    s->unmasked = 0;

    return h;
}


/* a frame the parser must accept */

static void
s_frame(script_t *s, unsigned b0, const u_char *data, size_t len)
{
    unsigned  op, fin;

    op = b0 & 0x0f;
    fin = (b0 & FIN) ? 1 : 0;

    script_encode(s, b0, data, len);

    ev_frame(&s->exp, op, fin, len);
    tbuf_add(&s->exp.pend, data, len);

    if (op == OP_TEXT || op == OP_BIN) {
        s->in_message = !fin;
        s->msg_op = op;

    } else if (op == OP_CONT) {
        s->in_message = !fin;
    }

    ev_end(&s->exp, s->in_message, s->msg_op);
}


/* a frame whose header must be rejected with "code" */

static void
s_bad_header(script_t *s, unsigned b0, const u_char *data, size_t len,
    unsigned code)
{
    script_encode(s, b0, data, len);

    s->exp.error = code;
    s->fail_at = s->in.len - len;
    s->fail_exact = 0;
}


/* raw header bytes that must be rejected with "code" */

static void
s_bad_raw(script_t *s, const u_char *raw, size_t n, unsigned code)
{
    tbuf_add(&s->in, raw, n);

    s->exp.error = code;
    s->fail_at = s->in.len;
    s->fail_exact = 0;
}


/*
 * A text or continuation frame whose payload is invalid UTF-8 at byte
 * "bad"; bad == len means the message ends inside a sequence, which can
 * only be known once the whole final frame is in.
 */

static void
s_bad_utf8(script_t *s, unsigned b0, const u_char *data, size_t len,
    size_t bad)
{
    script_encode(s, b0, data, len);

    ev_frame(&s->exp, b0 & 0x0f, (b0 & FIN) ? 1 : 0, len);
    tbuf_add(&s->exp.pend, data, bad < len ? bad : len);

    s->exp.error = NGX_COLLAB_WS_CLOSE_INVALID;
    s->fail_at = s->in.len - len + (bad < len ? bad + 1 : len);
    s->fail_exact = 1;
}


/*
 * Parses "in" cut at the offsets in cuts[] (increasing, the last one is
 * n) into a trace.
 */

static void
run(const u_char *in, size_t n, const size_t *cuts, size_t ncuts,
    uint64_t max, trace_t *t)
{
    int                      rc;
    u_char                  *chunk, *pos, *before, *last;
    size_t                   i, start, end, clen, calls;
    ngx_collab_ws_parser_t   p;

    memset(&p, 0, sizeof(ngx_collab_ws_parser_t));
    p.max_message = max;

    memset(t, 0, sizeof(trace_t));

    start = 0;

    for (i = 0; i < ncuts; i++) {
        end = cuts[i];
        assert_true(end >= start && end <= n);
        clen = end - start;

        chunk = malloc(clen ? clen : 1);
        assert_non_null(chunk);
        memcpy(chunk, in + start, clen);

        pos = chunk;
        last = chunk + clen;

        for (calls = 0; /* void */; calls++) {

            /* no call may stall: each one consumes or ends a frame */
            assert_true(calls <= 3 * clen + 4);

            before = pos;
            rc = ngx_collab_ws_parse(&p, &pos, last);

            assert_true(pos >= before);
            assert_true(pos <= last);

            if (rc == NGX_COLLAB_WS_AGAIN) {
                assert_ptr_equal(pos, last);
                break;
            }

            switch (rc) {

            case NGX_COLLAB_WS_FRAME:
                assert_int_equal(p.control, (p.opcode & 0x08) ? 1 : 0);
                ev_frame(t, p.opcode, p.fin, p.frame_len);
                break;

            case NGX_COLLAB_WS_DATA:
                assert_true(p.len > 0);
                assert_true(p.data >= before);
                assert_true(p.data + p.len <= pos);
                tbuf_add(&t->pend, p.data, p.len);
                break;

            case NGX_COLLAB_WS_FRAME_END:
                ev_end(t, p.in_message, p.message_opcode);
                break;

            case NGX_COLLAB_WS_ERROR:
                assert_true(p.error == NGX_COLLAB_WS_CLOSE_PROTOCOL
                            || p.error == NGX_COLLAB_WS_CLOSE_INVALID
                            || p.error == NGX_COLLAB_WS_CLOSE_TOO_BIG);
                assert_non_null(p.reason);
                t->error = p.error;
                t->fed = end;
                free(chunk);
                return;

            default:
                fail_msg("unexpected result %d", rc);
            }

            if (max && p.in_message) {
                assert_true(p.message_len <= max);
            }
        }

        free(chunk);
        start = end;
    }
}


/* the first cut at or after "at": where a due error must be reported */

static size_t
due(const size_t *cuts, size_t ncuts, size_t at)
{
    size_t  i;

    for (i = 0; i < ncuts; i++) {
        if (cuts[i] >= at) {
            return cuts[i];
        }
    }

    return cuts[ncuts - 1];
}


static void
check_run(script_t *s, const size_t *cuts, size_t ncuts, int bytewise)
{
    size_t    fed;
    trace_t  *e, t;

    e = &s->exp;

    run(s->in.p, s->in.len, cuts, ncuts, s->max, &t);

    if (t.ev.len != e->ev.len
        || (e->ev.len && memcmp(t.ev.p, e->ev.p, e->ev.len) != 0))
    {
        fail_msg("trace differs (%zu cuts, input %zu bytes)",
                 ncuts, s->in.len);
    }

    assert_int_equal(t.error, e->error);

    if (e->error == 0 || bytewise) {
        /* byte by byte, every valid byte before the bad one is out */
        assert_int_equal(t.pend.len, e->pend.len);

    } else {
        assert_true(t.pend.len <= e->pend.len);
    }

    if (t.pend.len) {
        assert_memory_equal(t.pend.p, e->pend.p, t.pend.len);
    }

    if (e->error) {
        fed = due(cuts, ncuts, s->fail_at);

        if (s->fail_exact) {
            assert_int_equal(t.fed, fed);

        } else {
            assert_true(t.fed <= fed);
        }
    }

    trace_free(&t);
}


static void
script_run(script_t *s)
{
    size_t    n, i, k, *cuts, ncuts;
    uint32_t  seed;

    n = s->in.len;
    cuts = malloc((n + 2) * sizeof(size_t));
    assert_non_null(cuts);

    /* whole */
    cuts[0] = n;
    check_run(s, cuts, 1, 0);

    /* one byte at a time */
    for (i = 0; i < n; i++) {
        cuts[i] = i + 1;
    }

    check_run(s, cuts, n ? n : 1, 1);

    /* two chunks, at every boundary (sampled for big inputs) */
    for (i = 0; i <= n; i++) {

        if (n > ALL_SPLITS_MAX && i > 300 && i + 300 < n && i % 997) {
            continue;
        }

        cuts[0] = i;
        cuts[1] = n;
        check_run(s, cuts, 2, 0);
    }

    /* random chunks */
    seed = 0x9e3779b9;

    for (k = 0; k < 20; k++) {
        ncuts = 0;
        i = 0;

        while (i < n) {
            i += rnd(&seed) % (k < 10 ? 8 : 200);
            if (i > n) {
                i = n;
            }
            cuts[ncuts++] = i;
        }

        if (ncuts == 0 || cuts[ncuts - 1] != n) {
            cuts[ncuts++] = n;
        }

        check_run(s, cuts, ncuts, 0);
    }

    free(cuts);
}


static u_char *
pattern(size_t len)
{
    size_t   i;
    u_char  *p;

    p = malloc(len ? len : 1);
    assert_non_null(p);

    for (i = 0; i < len; i++) {
        p[i] = (u_char) (i * 31 + (i >> 8));
    }

    return p;
}


/* frames */

static void
test_opcodes(void **state)
{
    script_t  s;

    (void) state;

    script_init(&s, 0);
    s_frame(&s, FIN | OP_TEXT, S("hello"));
    s_frame(&s, FIN | OP_BIN, S("\x00\xff\x80\x01"));
    s_frame(&s, OP_TEXT, S("frag"));
    s_frame(&s, OP_CONT, S("ment"));
    s_frame(&s, FIN | OP_CONT, S("ed"));
    s_frame(&s, OP_BIN, S("\xff"));
    s_frame(&s, FIN | OP_CONT, S("\xfe"));
    s_frame(&s, FIN | OP_PING, S("ping payload"));
    s_frame(&s, FIN | OP_PONG, S(""));
    s_frame(&s, FIN | OP_PONG, S("pong"));
    s_frame(&s, FIN | OP_CLOSE, S("\x03\xe8" "bye"));
    script_run(&s);
    script_free(&s);
}


static void
test_empty_frames(void **state)
{
    script_t  s;

    (void) state;

    script_init(&s, 0);
    s_frame(&s, FIN | OP_TEXT, S(""));
    s_frame(&s, FIN | OP_BIN, S(""));
    s_frame(&s, OP_TEXT, S(""));
    s_frame(&s, OP_CONT, S(""));
    s_frame(&s, FIN | OP_PING, S(""));
    s_frame(&s, FIN | OP_CONT, S(""));
    s_frame(&s, FIN | OP_CLOSE, S(""));
    script_run(&s);
    script_free(&s);
}


static void
test_lengths(void **state)
{
    size_t     i;
    u_char    *data;
    script_t   s;
    static const size_t  lens[] = {
        0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 124, 125, 126, 127, 128,
        255, 256, 1000, 65535, 65536, 65537, 100000
    };

    (void) state;

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        data = pattern(lens[i]);

        script_init(&s, 0);
        s_frame(&s, FIN | OP_BIN, data, lens[i]);
        s_frame(&s, FIN | OP_PING, S("after"));
        script_run(&s);
        script_free(&s);

        free(data);
    }
}


static void
test_header_sizes(void **state)
{
    u_char    *data;
    script_t   s;

    (void) state;

    /* the encoder picks 7, 16 and 64 bits at 125/126 and 65535/65536 */

    data = pattern(65536);

    script_init(&s, 0);
    s_frame(&s, FIN | OP_BIN, data, 125);
    s_frame(&s, FIN | OP_BIN, data, 126);
    assert_int_equal(s.in.len, (2 + 4 + 125) + (4 + 4 + 126));
    script_run(&s);
    script_free(&s);

    script_init(&s, 0);
    s_frame(&s, FIN | OP_BIN, data, 65535);
    s_frame(&s, FIN | OP_BIN, data, 65536);
    assert_int_equal(s.in.len, (4 + 4 + 65535) + (10 + 4 + 65536));
    script_run(&s);
    script_free(&s);

    free(data);
}


static void
test_non_minimal_lengths(void **state)
{
    script_t  s;

    (void) state;

    /*
     * The codec accepts a non-minimal length in data frames (see its
     * header); in a control frame any extended length is above 125.
     */

    script_init(&s, 0);
    s.lenform = 16;
    s_frame(&s, FIN | OP_TEXT, S("sixteen"));
    s.lenform = 64;
    s_frame(&s, FIN | OP_BIN, S("sixty-four"));
    s.lenform = 16;
    s_frame(&s, OP_TEXT, S("p"));
    s.lenform = 64;
    s_frame(&s, FIN | OP_CONT, S(""));
    script_run(&s);
    script_free(&s);
}


static void
test_big_headers(void **state)
{
    int       rc;
    u_char   *pos;
    tbuf_t    b;
    script_t  s;
    static const u_char  mask[4] = { 1, 2, 3, 4 };
    ngx_collab_ws_parser_t  p;

    (void) state;

    /* headers alone of frames too big to build: 2^32 and 2^63 - 1 */

    memset(&b, 0, sizeof(tbuf_t));
    encode(&b, FIN | OP_BIN, (uint64_t) 1 << 32, 0, 1, mask, NULL, 0);
    assert_int_equal(b.len, 14);

    memset(&p, 0, sizeof(ngx_collab_ws_parser_t));
    pos = b.p;
    rc = ngx_collab_ws_parse(&p, &pos, b.p + b.len);
    assert_int_equal(rc, NGX_COLLAB_WS_FRAME);
    assert_true(p.frame_len == (uint64_t) 1 << 32);
    rc = ngx_collab_ws_parse(&p, &pos, b.p + b.len);
    assert_int_equal(rc, NGX_COLLAB_WS_AGAIN);
    assert_ptr_equal(pos, b.p + b.len);

    b.len = 0;
    encode(&b, OP_TEXT, INT64_MAX, 0, 1, mask, NULL, 0);

    memset(&p, 0, sizeof(ngx_collab_ws_parser_t));
    pos = b.p;
    rc = ngx_collab_ws_parse(&p, &pos, b.p + b.len);
    assert_int_equal(rc, NGX_COLLAB_WS_FRAME);
    assert_true(p.frame_len == (uint64_t) INT64_MAX);
    assert_int_equal(p.opcode, OP_TEXT);
    assert_int_equal(p.fin, 0);

    free(b.p);

    /* the same through every chunking */

    script_init(&s, 0);
    s.lenform = 64;
    script_encode(&s, FIN | OP_BIN, NULL, 0);
    s.in.p[2] = 0x7f;
    s.in.p[3] = 0xff;
    ev_frame(&s.exp, OP_BIN, 1, 0x7fff000000000000ULL);
    script_run(&s);
    script_free(&s);
}


static void
test_length_msb(void **state)
{
    script_t  s;
    static const u_char  raw[] = {
        FIN | OP_BIN, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4
    };
    static const u_char  raw_max[] = {
        FIN | OP_BIN, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
    };

    (void) state;

    script_init(&s, 0);
    s_frame(&s, FIN | OP_TEXT, S("ok"));
    s_bad_raw(&s, raw, sizeof(raw), NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);

    script_init(&s, 0);
    s_bad_raw(&s, raw_max, sizeof(raw_max), NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);
}


static void
test_masking(void **state)
{
    size_t    i;
    u_char   *data;
    trace_t   t;
    size_t    cut;
    static const u_char  masks[][4] = {
        { 0, 0, 0, 0 }, { 0xff, 0xff, 0xff, 0xff }, { 0x37, 0xfa, 0x21, 0x3d },
        { 0x80, 0, 0, 1 }
    };

    (void) state;

    /* RFC 6455, 5.7: a masked "Hello" */
    {
        static const u_char  hello[] = {
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
        };

        cut = sizeof(hello);
        run(hello, sizeof(hello), &cut, 1, 0, &t);
        assert_int_equal(t.error, 0);
        assert_int_equal(t.ev.len, 11 + 9 + 5 + 3);
        assert_memory_equal(t.ev.p + 11 + 9, "Hello", 5);
        trace_free(&t);
    }

    /* every key, every length around the 8-byte fast path */
    data = pattern(40);

    for (i = 0; i < sizeof(masks) / sizeof(masks[0]); i++) {
        size_t    len;
        script_t  s;

        for (len = 0; len < 40; len++) {
            script_init(&s, 0);

            encode(&s.in, FIN | OP_BIN, len, 0, 1, masks[i], data, len);
            ev_frame(&s.exp, OP_BIN, 1, len);
            tbuf_add(&s.exp.pend, data, len);
            ev_end(&s.exp, 0, 0);

            script_run(&s);
            script_free(&s);
        }
    }

    free(data);
}


static void
test_unmasked(void **state)
{
    script_t  s;

    (void) state;

    script_init(&s, 0);
    s.unmasked = 1;
    s_bad_header(&s, FIN | OP_TEXT, S("hello"), NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);

    script_init(&s, 0);
    s_frame(&s, FIN | OP_TEXT, S("masked"));
    s.unmasked = 1;
    s_bad_header(&s, FIN | OP_PING, S(""), NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);

    script_init(&s, 0);
    s_frame(&s, OP_BIN, S("first"));
    s.unmasked = 1;
    s_bad_header(&s, FIN | OP_CONT, S("second"),
                 NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);
}


static void
test_reserved_bits(void **state)
{
    unsigned  i, ops[] = { OP_TEXT, OP_BIN, OP_PING, OP_CLOSE };
    unsigned  rsv[] = { RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3 };
    unsigned  j;
    script_t  s;

    (void) state;

    for (i = 0; i < 4; i++) {
        for (j = 0; j < 4; j++) {
            script_init(&s, 0);
            s_frame(&s, FIN | OP_TEXT, S("before"));
            s_bad_header(&s, FIN | rsv[j] | ops[i], S("x"),
                         NGX_COLLAB_WS_CLOSE_PROTOCOL);
            script_run(&s);
            script_free(&s);
        }
    }

    /* on a continuation too */
    script_init(&s, 0);
    s_frame(&s, OP_TEXT, S("a"));
    s_bad_header(&s, FIN | RSV1 | OP_CONT, S("b"),
                 NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);
}


static void
test_unknown_opcodes(void **state)
{
    unsigned  op;
    script_t  s;

    (void) state;

    for (op = 0; op < 16; op++) {

        if (op <= OP_BIN || (op >= OP_CLOSE && op <= OP_PONG)) {
            continue;
        }

        script_init(&s, 0);
        s_bad_header(&s, FIN | op, S("payload"),
                     NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);

        /* inside a fragmented message as well, and without fin */
        script_init(&s, 0);
        s_frame(&s, OP_TEXT, S("frag"));
        s_bad_header(&s, op, S(""), NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);
    }
}


static void
test_control_fragmented(void **state)
{
    unsigned  i, ops[] = { OP_CLOSE, OP_PING, OP_PONG };
    script_t  s;

    (void) state;

    for (i = 0; i < 3; i++) {
        script_init(&s, 0);
        s_bad_header(&s, ops[i], S("x"), NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);

        script_init(&s, 0);
        s_frame(&s, OP_TEXT, S("frag"));
        s_bad_header(&s, ops[i], S(""), NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);
    }
}


static void
test_control_length(void **state)
{
    unsigned  i, ops[] = { OP_CLOSE, OP_PING, OP_PONG };
    u_char   *data;
    script_t  s;

    (void) state;

    data = pattern(200);
    data[0] = 0x03;
    data[1] = 0xe8;

    for (i = 0; i < 3; i++) {
        script_init(&s, 0);
        s_frame(&s, FIN | ops[i], data, 125);
        s_bad_header(&s, FIN | ops[i], data, 126,
                     NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);

        /* an extended length field is refused even for 125 */
        script_init(&s, 0);
        s.lenform = 16;
        s_bad_header(&s, FIN | ops[i], data, 125,
                     NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);

        script_init(&s, 0);
        s.lenform = 64;
        s_bad_header(&s, FIN | ops[i], data, 126,
                     NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);

        script_init(&s, 0);
        s_bad_header(&s, FIN | ops[i], data, 127,
                     NGX_COLLAB_WS_CLOSE_PROTOCOL);
        script_run(&s);
        script_free(&s);
    }

    free(data);
}


static void
test_continuation_without_start(void **state)
{
    script_t  s;

    (void) state;

    script_init(&s, 0);
    s_bad_header(&s, FIN | OP_CONT, S("orphan"),
                 NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);

    script_init(&s, 0);
    s_bad_header(&s, OP_CONT, S("orphan"), NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);

    /* after a complete fragmented message */
    script_init(&s, 0);
    s_frame(&s, OP_TEXT, S("a"));
    s_frame(&s, FIN | OP_CONT, S("b"));
    s_frame(&s, FIN | OP_PING, S(""));
    s_bad_header(&s, FIN | OP_CONT, S("c"), NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);

    /* after a complete unfragmented one */
    script_init(&s, 0);
    s_frame(&s, FIN | OP_BIN, S("a"));
    s_bad_header(&s, OP_CONT, S("c"), NGX_COLLAB_WS_CLOSE_PROTOCOL);
    script_run(&s);
    script_free(&s);
}


static void
test_data_inside_fragmented(void **state)
{
    unsigned  i, j, ops[] = { OP_TEXT, OP_BIN };
    script_t  s;

    (void) state;

    for (i = 0; i < 2; i++) {
        for (j = 0; j < 2; j++) {
            script_init(&s, 0);
            s_frame(&s, ops[i], S("start"));
            s_frame(&s, FIN | OP_PING, S("p"));
            s_bad_header(&s, FIN | ops[j], S("new"),
                         NGX_COLLAB_WS_CLOSE_PROTOCOL);
            script_run(&s);
            script_free(&s);

            script_init(&s, 0);
            s_frame(&s, ops[i], S("start"));
            s_frame(&s, OP_CONT, S("more"));
            s_bad_header(&s, ops[j], S(""), NGX_COLLAB_WS_CLOSE_PROTOCOL);
            script_run(&s);
            script_free(&s);
        }
    }
}


static void
test_control_interleaved(void **state)
{
    script_t  s;

    (void) state;

    script_init(&s, 0);
    s_frame(&s, OP_TEXT, S("Hel"));
    s_frame(&s, FIN | OP_PING, S("ping 1"));
    s_frame(&s, OP_CONT, S("lo, \xce"));        /* split κ across ping */
    s_frame(&s, FIN | OP_PONG, S(""));
    s_frame(&s, FIN | OP_PING, S("\xff\xfe"));  /* not text: no UTF-8 */
    s_frame(&s, OP_CONT, S("\xba"));
    s_frame(&s, FIN | OP_CONT, S(" world"));
    s_frame(&s, FIN | OP_BIN, S("\xff"));
    s_frame(&s, OP_BIN, S("\xc0"));
    s_frame(&s, FIN | OP_PONG, S("x"));
    s_frame(&s, FIN | OP_CONT, S("\x80"));
    s_frame(&s, OP_TEXT, S("bye"));
    s_frame(&s, FIN | OP_CLOSE, S("\x03\xe8"));
    script_run(&s);
    script_free(&s);
}


/* max_message */

static void
test_too_big(void **state)
{
    u_char    *data;
    script_t   s;
    static const u_char  big_bin[] = {
        OP_BIN, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        9, 8, 7, 6
    };
    static const u_char  big_cont[] = {
        FIN | OP_CONT, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 9, 8, 7, 6
    };

    (void) state;

    data = pattern(300);

    /* exactly the limit passes, one more fails at the header */
    script_init(&s, 100);
    s_frame(&s, FIN | OP_BIN, data, 100);
    s_frame(&s, FIN | OP_TEXT, S("small"));
    s_bad_header(&s, FIN | OP_BIN, data, 101, NGX_COLLAB_WS_CLOSE_TOO_BIG);
    script_run(&s);
    script_free(&s);

    /* detected before the payload: the header alone is enough */
    script_init(&s, 100);
    s_bad_header(&s, FIN | OP_TEXT, data, 0, NGX_COLLAB_WS_CLOSE_TOO_BIG);
    s.in.p[1] = 0x80 | 101;
    script_run(&s);
    script_free(&s);

    /* 2^63 - 1: no overflow in the sum */
    script_init(&s, 100);
    s_bad_raw(&s, big_bin, sizeof(big_bin), NGX_COLLAB_WS_CLOSE_TOO_BIG);
    script_run(&s);
    script_free(&s);

    /* across fragments: 60 + 40 passes, 60 + 40 + 1 fails */
    script_init(&s, 100);
    s_frame(&s, OP_TEXT, data + 200, 0);
    s_frame(&s, OP_CONT, S("0123456789012345678901234567890123456789"
                           "01234567890123456789"));
    s_frame(&s, FIN | OP_PING, data, 125);      /* control: not counted */
    s_frame(&s, FIN | OP_CONT, S("0123456789012345678901234567890123456789"));
    s_frame(&s, OP_BIN, data, 60);
    s_frame(&s, OP_CONT, data, 40);
    s_bad_header(&s, FIN | OP_CONT, data, 1, NGX_COLLAB_WS_CLOSE_TOO_BIG);
    script_run(&s);
    script_free(&s);

    /* a huge continuation after a small start */
    script_init(&s, 100);
    s_frame(&s, OP_BIN, data, 10);
    s_bad_raw(&s, big_cont, sizeof(big_cont), NGX_COLLAB_WS_CLOSE_TOO_BIG);
    script_run(&s);
    script_free(&s);

    /* the limit counts per message: a new message starts from zero */
    script_init(&s, 100);
    s_frame(&s, OP_BIN, data, 70);
    s_frame(&s, FIN | OP_CONT, data, 30);
    s_frame(&s, OP_TEXT, S("abc"));
    s_frame(&s, FIN | OP_CONT, data + 200, 0);
    s_frame(&s, FIN | OP_BIN, data, 100);
    script_run(&s);
    script_free(&s);

    free(data);
}


/* UTF-8 */

typedef struct {
    const char  *s;
    size_t       len;
    long         bad;       /* -1 valid, len: truncated, else the index */
} utf8_vector_t;


#define V(str, bad)  { str, sizeof(str) - 1, bad }
#define KOSME        "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"

static const utf8_vector_t  utf8_vectors[] = {

    /* Autobahn 6.1 - 6.2, 6.5 - 6.6 */
    V("", -1),
    V("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1"
      "-UTF-8!!", -1),
    V(KOSME, -1),
    V("\xce\xba\xe1", 3),
    V("\xce\xba\xe1\xbd", 4),

    /* 6.3, 6.4: fail fast in the middle of the text */
    V(KOSME "\xed\xa0\x80" "edited", 12),
    V(KOSME "\xf4\x90\x80\x80" "edited", 12),
    V(KOSME "\xed\xa0", 12),

    /* 6.7, 6.9, 6.11: boundaries */
    V("\x00", -1),
    V("\xc2\x80", -1),
    V("\xe0\xa0\x80", -1),
    V("\xf0\x90\x80\x80", -1),
    V("\x7f", -1),
    V("\xdf\xbf", -1),
    V("\xef\xbf\xbf", -1),
    V("\xf4\x8f\xbf\xbf", -1),
    V("\xed\x9f\xbf", -1),
    V("\xee\x80\x80", -1),
    V("\xef\xbf\xbd", -1),
    V("\xe1\x80\x80\xec\xbf\xbf", -1),
    V("\xf1\x80\x80\x80\xf3\xbf\xbf\xbf", -1),
    V("\xef\xbb\xbf", -1),

    /* 6.22: noncharacters are valid UTF-8 */
    V("\xef\xbf\xbe", -1),
    V("\xf0\x9f\xbf\xbe\xf0\x9f\xbf\xbf", -1),
    V("\xf4\x8f\xbf\xbe", -1),
    V("\xef\xb7\x90", -1),

    /* 6.8, 6.10: five and six byte forms, F5 - FF */
    V("\xf8\x88\x80\x80\x80", 0),
    V("\xfc\x84\x80\x80\x80\x80", 0),
    V("\xf7\xbf\xbf\xbf", 0),
    V("\xfb\xbf\xbf\xbf\xbf", 0),
    V("\xfd\xbf\xbf\xbf\xbf\xbf", 0),
    V("\xf5\x80\x80\x80", 0),
    V("\xf6", 0),
    V("\xfe", 0),
    V("\xff", 0),
    V("\xfe\xfe\xff\xff", 0),
    V("abc\xff", 3),

    /* above U+10FFFF */
    V("\xf4\x90\x80\x80", 1),
    V("\xf4\xbf\xbf\xbf", 1),

    /* 6.12: unexpected continuation bytes */
    V("\x80", 0),
    V("\xbf", 0),
    V("\x80\xbf", 0),
    V("a\x80", 1),
    V("\xc2\x80\x80", 2),
    V("\xe1\x80\x80\xbf", 3),

    /* 6.13 - 6.15: lonely start bytes, missing last bytes */
    V("\xc2\x20", 1),
    V("\xe0\x20", 1),
    V("\xe1\x80\x20", 2),
    V("\xf1\x80\x80\x20", 3),
    V("\xe1\xbdx", 2),
    V("\xc2", 1),
    V("\xe1", 1),
    V("\xe0\xa0", 2),
    V("\xf0\x90\x80", 3),
    V("\xf4\x8f\xbf", 3),
    V("abc\xce", 4),

    /* 6.17 - 6.19: overlong forms */
    V("\xc0\xaf", 0),
    V("\xe0\x80\xaf", 1),
    V("\xf0\x80\x80\xaf", 1),
    V("\xc1\xbf", 0),
    V("\xe0\x9f\xbf", 1),
    V("\xf0\x8f\xbf\xbf", 1),
    V("\xc0\x80", 0),
    V("\xe0\x80\x80", 1),
    V("\xf0\x80\x80\x80", 1),
    V("\xc0", 0),

    /* 6.20, 6.21: UTF-16 surrogates, single and paired */
    V("\xed\xa0\x80", 1),
    V("\xed\xad\xbf", 1),
    V("\xed\xae\x80", 1),
    V("\xed\xaf\xbf", 1),
    V("\xed\xb0\x80", 1),
    V("\xed\xbe\x80", 1),
    V("\xed\xbf\xbf", 1),
    V("\xed\xa0\x80\xed\xb0\x80", 1),
    V("\xed\xaf\xbf\xed\xbf\xbf", 1),

    /* ASCII runs longer than a word, then a bad byte */
    V("0123456789abcdefghij\x80", 20),
    V("0123456789abcdefg\xc3\xa9" "0123456789\xe9", 30),
};


static void
test_utf8_feed(void **state)
{
    int                   rc;
    size_t                i, j;
    ngx_collab_utf8_t     u;
    const utf8_vector_t  *v;

    (void) state;

    for (i = 0; i < sizeof(utf8_vectors) / sizeof(utf8_vectors[0]); i++) {
        v = &utf8_vectors[i];

        /* whole */
        memset(&u, 0, sizeof(ngx_collab_utf8_t));
        rc = ngx_collab_utf8_feed(&u, (const u_char *) v->s, v->len);

        if (v->bad < 0) {
            assert_int_equal(rc, 0);
            assert_true(ngx_collab_utf8_complete(&u));

        } else if ((size_t) v->bad == v->len) {
            assert_int_equal(rc, 0);
            assert_false(ngx_collab_utf8_complete(&u));

        } else {
            assert_int_equal(rc, -1);
        }

        /* one byte at a time: -1 exactly at the bad byte */
        memset(&u, 0, sizeof(ngx_collab_utf8_t));

        for (j = 0; j < v->len; j++) {
            rc = ngx_collab_utf8_feed(&u, (const u_char *) v->s + j, 1);

            if (v->bad >= 0 && (size_t) v->bad == j) {
                assert_int_equal(rc, -1);
                break;
            }

            if (rc != 0) {
                fail_msg("vector %zu: -1 at byte %zu, expected %ld",
                         i, j, v->bad);
            }
        }

        /* split in two anywhere */
        for (j = 0; j <= v->len; j++) {
            memset(&u, 0, sizeof(ngx_collab_utf8_t));
            rc = ngx_collab_utf8_feed(&u, (const u_char *) v->s, j);

            if (v->bad >= 0 && (size_t) v->bad < j) {
                assert_int_equal(rc, -1);
                continue;
            }

            assert_int_equal(rc, 0);
            rc = ngx_collab_utf8_feed(&u, (const u_char *) v->s + j,
                                      v->len - j);
            assert_int_equal(rc, (v->bad >= 0 && (size_t) v->bad < v->len)
                                 ? -1 : 0);
        }
    }
}


static void
utf8_frames(const utf8_vector_t *v, size_t split, int before)
{
    size_t          blen;
    script_t        s;
    const u_char   *a, *b;

    script_init(&s, 0);

    if (before) {
        /* a valid message first: its state must not leak into this one */
        s_frame(&s, OP_TEXT, S("pre\xce"));
        s_frame(&s, FIN | OP_CONT, S("\xba"));
        s_frame(&s, FIN | OP_BIN, S("\xff\xce"));
    }

    a = (const u_char *) v->s;
    b = a + split;
    blen = v->len - split;

    if (split == v->len) {
        /* one frame */
        if (v->bad < 0) {
            s_frame(&s, FIN | OP_TEXT, a, v->len);

        } else {
            s_bad_utf8(&s, FIN | OP_TEXT, a, v->len, (size_t) v->bad);
        }

        script_run(&s);
        script_free(&s);
        return;
    }

    /* two fragments with a ping between them */

    if (v->bad >= 0 && (size_t) v->bad < split) {
        s_bad_utf8(&s, OP_TEXT, a, split, (size_t) v->bad);

    } else {
        s_frame(&s, OP_TEXT, a, split);
        s_frame(&s, FIN | OP_PING, S("\xff"));

        if (v->bad < 0) {
            s_frame(&s, FIN | OP_CONT, b, blen);

        } else {
            s_bad_utf8(&s, FIN | OP_CONT, b, blen, (size_t) v->bad - split);
        }
    }

    script_run(&s);
    script_free(&s);
}


static void
test_utf8_frames(void **state)
{
    size_t                i, j;
    const utf8_vector_t  *v;

    (void) state;

    for (i = 0; i < sizeof(utf8_vectors) / sizeof(utf8_vectors[0]); i++) {
        v = &utf8_vectors[i];

        for (j = 0; j <= v->len; j++) {
            utf8_frames(v, j, 0);
        }

        utf8_frames(v, v->len, 1);
    }
}


static void
test_utf8_fail_fast(void **state)
{
    size_t     i;
    u_char    *data;
    script_t   s;

    (void) state;

    /* a long text frame with a bad byte early: nothing after it counts */

    data = pattern(5000);

    for (i = 0; i < 5000; i++) {
        data[i] = 'a' + i % 26;
    }

    data[1234] = 0xc0;

    script_init(&s, 0);
    s_bad_utf8(&s, FIN | OP_TEXT, data, 5000, 1234);
    script_run(&s);
    script_free(&s);

    /* in the third fragment, after interleaved control frames */
    data[1234] = 'x';

    script_init(&s, 0);
    s_frame(&s, OP_TEXT, data, 1000);
    s_frame(&s, FIN | OP_PING, S("ping"));
    s_frame(&s, OP_CONT, S("\xf0\x9f"));
    s_frame(&s, FIN | OP_PONG, S(""));
    s_bad_utf8(&s, OP_CONT, S("\x98\x80zzz\xf0\x9f\x98\x28"), 8);
    script_encode(&s, FIN | OP_CONT, S("never parsed"));
    script_run(&s);
    script_free(&s);

    /* truncated at the end of the final fragment */
    script_init(&s, 0);
    s_frame(&s, OP_TEXT, S("ab\xe2\x82"));
    s_bad_utf8(&s, FIN | OP_CONT, S(""), 0);
    script_run(&s);
    script_free(&s);

    script_init(&s, 0);
    s_frame(&s, OP_TEXT, S("ab"));
    s_bad_utf8(&s, FIN | OP_CONT, S("\xe2\x82"), 2);
    script_run(&s);
    script_free(&s);

    /* binary is never checked, close reasons are not the parser's job */
    script_init(&s, 0);
    s_frame(&s, FIN | OP_BIN, S("\xc0\x80\xed\xa0\x80\xff"));
    s_frame(&s, FIN | OP_CLOSE, S("\x03\xe8\xff"));
    script_run(&s);
    script_free(&s);

    free(data);
}


/* ngx_collab_ws_close_check() */

static uint16_t
close_code(unsigned code, const char *reason, size_t rlen, uint16_t *out)
{
    u_char    *p;
    uint16_t   rc;

    p = malloc(2 + rlen);
    assert_non_null(p);

    p[0] = (u_char) (code >> 8);
    p[1] = (u_char) code;
    memcpy(p + 2, reason, rlen);

    *out = 0xdead;
    rc = ngx_collab_ws_close_check(p, 2 + rlen, out);

    free(p);

    return rc;
}


static void
test_close_check(void **state)
{
    size_t    i;
    u_char   *p;
    uint16_t  code, rc;
    static const unsigned  bad[] = {
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
        65535
    };
    static const unsigned  good[] = {
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
        1014, 3000, 3999, 4000, 4999
    };

    (void) state;

    /* empty: no status */
    p = calloc(1, 1);
    assert_non_null(p);
    code = 0;
    rc = ngx_collab_ws_close_check(p, 0, &code);
    assert_int_equal(rc, 0);
    assert_int_equal(code, NGX_COLLAB_WS_CLOSE_NO_STATUS);

    /* one byte */
    p[0] = 0x03;
    rc = ngx_collab_ws_close_check(p, 1, &code);
    assert_int_equal(rc, NGX_COLLAB_WS_CLOSE_PROTOCOL);
    free(p);

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rc = close_code(bad[i], "", 0, &code);

        if (rc != NGX_COLLAB_WS_CLOSE_PROTOCOL) {
            fail_msg("close code %u: got %u", bad[i], rc);
        }

        rc = close_code(bad[i], "reason", 6, &code);
        assert_int_equal(rc, NGX_COLLAB_WS_CLOSE_PROTOCOL);
    }

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        rc = close_code(good[i], "", 0, &code);

        if (rc != 0) {
            fail_msg("close code %u: got %u", good[i], rc);
        }

        assert_int_equal(code, good[i]);

        rc = close_code(good[i], "Hello-\xc2\xb5 " KOSME, 18, &code);
        assert_int_equal(rc, 0);
        assert_int_equal(code, good[i]);
    }

    /* reasons that are not UTF-8 */
    assert_int_equal(close_code(1000, "\xff", 1, &code),
                     NGX_COLLAB_WS_CLOSE_INVALID);
    assert_int_equal(close_code(1000, "ok\xed\xa0\x80", 5, &code),
                     NGX_COLLAB_WS_CLOSE_INVALID);
    assert_int_equal(close_code(1001, "ok\xce", 3, &code),
                     NGX_COLLAB_WS_CLOSE_INVALID);
    assert_int_equal(close_code(4000, "\xc0\x80", 2, &code),
                     NGX_COLLAB_WS_CLOSE_INVALID);

    /* a 123-byte reason, the longest that fits */
    {
        char  r[123];

        memset(r, 'r', sizeof(r));
        assert_int_equal(close_code(1000, r, sizeof(r), &code), 0);
        assert_int_equal(code, 1000);
    }
}


/* ngx_collab_ws_frame_header() */

static void
header_case(unsigned op, unsigned fin, uint64_t len, const u_char *want,
    size_t wlen)
{
    u_char  *buf;
    size_t   n;

    /* exactly NGX_COLLAB_WS_MAX_HEADER bytes: ASan sees any overflow */
    buf = malloc(NGX_COLLAB_WS_MAX_HEADER);
    assert_non_null(buf);
    memset(buf, 0xaa, NGX_COLLAB_WS_MAX_HEADER);

    n = ngx_collab_ws_frame_header(buf, op, fin, len);
    assert_int_equal(n, wlen);
    assert_memory_equal(buf, want, wlen);

    free(buf);
}


static void
test_frame_header(void **state)
{
    (void) state;

    header_case(OP_TEXT, 1, 0, (const u_char *) "\x81\x00", 2);
    header_case(OP_BIN, 1, 1, (const u_char *) "\x82\x01", 2);
    header_case(OP_TEXT, 0, 125, (const u_char *) "\x01\x7d", 2);
    header_case(OP_BIN, 1, 126, (const u_char *) "\x82\x7e\x00\x7e", 4);
    header_case(OP_CONT, 0, 127, (const u_char *) "\x00\x7e\x00\x7f", 4);
    header_case(OP_BIN, 1, 65535, (const u_char *) "\x82\x7e\xff\xff", 4);
    header_case(OP_BIN, 1, 65536,
                (const u_char *) "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00",
                10);
    header_case(OP_TEXT, 1, (uint64_t) 1 << 32,
                (const u_char *) "\x81\x7f\x00\x00\x00\x01\x00\x00\x00\x00",
                10);
    header_case(OP_CLOSE, 1, 2, (const u_char *) "\x88\x02", 2);
    header_case(OP_PING, 1, 125, (const u_char *) "\x89\x7d", 2);
    header_case(OP_PONG, 1, 0, (const u_char *) "\x8a\x00", 2);
    header_case(OP_BIN, 1, 0x0102030405060708ULL,
                (const u_char *) "\x82\x7f\x01\x02\x03\x04\x05\x06\x07\x08",
                10);
}


/*
 * Round trip: a server header turned into a client frame (mask bit and
 * key added) parses back to the same opcode, fin, length and payload.
 */

static void
test_frame_header_roundtrip(void **state)
{
    int        rc;
    size_t     i, j, h, n;
    u_char     hdr[NGX_COLLAB_WS_MAX_HEADER], *buf, *data, *pos;
    uint64_t   len;
    unsigned   op, fin;
    ngx_collab_ws_parser_t  p;
    static const size_t  lens[] = { 0, 1, 125, 126, 127, 65535, 65536, 70000 };
    static const unsigned  ops[][2] = {
        { OP_BIN, 1 }, { OP_TEXT, 1 }, { OP_PING, 1 }, { OP_PONG, 1 },
        { OP_CLOSE, 1 }, { OP_BIN, 0 }
    };

    (void) state;

    data = pattern(70000);

    for (n = 0; n < 70000; n++) {
        data[n] = (u_char) ('a' + n % 26);     /* text must be UTF-8 */
    }

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        for (j = 0; j < sizeof(ops) / sizeof(ops[0]); j++) {

            op = ops[j][0];
            fin = ops[j][1];
            len = lens[i];

            if ((op & 0x08) && len > NGX_COLLAB_WS_MAX_CONTROL) {
                continue;
            }

            h = ngx_collab_ws_frame_header(hdr, op, fin, len);
            assert_true(h == 2 || h == 4 || h == 10);

            n = h + 4 + len;
            buf = malloc(n);
            assert_non_null(buf);

            memcpy(buf, hdr, h);
            buf[1] |= 0x80;
            memcpy(buf + h, "\x5a\xa5\x0f\xf0", 4);

            for (n = 0; n < len; n++) {
                buf[h + 4 + n] = data[n] ^ buf[h + (n & 3)];
            }

            memset(&p, 0, sizeof(ngx_collab_ws_parser_t));
            pos = buf;

            rc = ngx_collab_ws_parse(&p, &pos, buf + h + 4 + len);
            assert_int_equal(rc, NGX_COLLAB_WS_FRAME);
            assert_int_equal(p.opcode, op);
            assert_int_equal(p.fin, fin);
            assert_true(p.frame_len == len);

            for (n = 0; /* void */; n += p.len) {
                rc = ngx_collab_ws_parse(&p, &pos, buf + h + 4 + len);

                if (rc != NGX_COLLAB_WS_DATA) {
                    break;
                }

                assert_true(n + p.len <= len);
                assert_memory_equal(p.data, data + n, p.len);
            }

            assert_int_equal(rc, NGX_COLLAB_WS_FRAME_END);
            assert_true(n == len);
            assert_int_equal(p.in_message, (op & 0x08) ? 0 : !fin);

            rc = ngx_collab_ws_parse(&p, &pos, buf + h + 4 + len);
            assert_int_equal(rc, NGX_COLLAB_WS_AGAIN);

            free(buf);
        }
    }

    /* 2^32: the header alone */
    h = ngx_collab_ws_frame_header(hdr, OP_BIN, 1, (uint64_t) 1 << 32);
    assert_int_equal(h, 10);
    buf = malloc(h + 4);
    memcpy(buf, hdr, h);
    buf[1] |= 0x80;
    memset(buf + h, 0, 4);
    memset(&p, 0, sizeof(ngx_collab_ws_parser_t));
    pos = buf;
    rc = ngx_collab_ws_parse(&p, &pos, buf + h + 4);
    assert_int_equal(rc, NGX_COLLAB_WS_FRAME);
    assert_true(p.frame_len == (uint64_t) 1 << 32);
    free(buf);

    free(data);
}


static void
test_message_state(void **state)
{
    int       rc;
    u_char   *pos;
    script_t  s;
    ngx_collab_ws_parser_t  p;

    (void) state;

    /* in_message and message_opcode while a fragmented message runs */

    script_init(&s, 0);
    s_frame(&s, OP_BIN, S("ab"));
    s_frame(&s, FIN | OP_PING, S(""));
    s_frame(&s, FIN | OP_CONT, S("cd"));

    memset(&p, 0, sizeof(ngx_collab_ws_parser_t));
    pos = s.in.p;

    rc = ngx_collab_ws_parse(&p, &pos, s.in.p + s.in.len);
    assert_int_equal(rc, NGX_COLLAB_WS_FRAME);
    assert_int_equal(p.opcode, OP_BIN);
    assert_int_equal(p.fin, 0);
    assert_int_equal(p.control, 0);

    while ((rc = ngx_collab_ws_parse(&p, &pos, s.in.p + s.in.len))
           != NGX_COLLAB_WS_FRAME_END)
    {
        assert_int_equal(rc, NGX_COLLAB_WS_DATA);
    }

    assert_int_equal(p.in_message, 1);
    assert_int_equal(p.message_opcode, OP_BIN);
    assert_true(p.message_len == 2);

    rc = ngx_collab_ws_parse(&p, &pos, s.in.p + s.in.len);
    assert_int_equal(rc, NGX_COLLAB_WS_FRAME);
    assert_int_equal(p.opcode, OP_PING);
    assert_int_equal(p.control, 1);
    rc = ngx_collab_ws_parse(&p, &pos, s.in.p + s.in.len);
    assert_int_equal(rc, NGX_COLLAB_WS_FRAME_END);
    assert_int_equal(p.in_message, 1);
    assert_int_equal(p.message_opcode, OP_BIN);

    rc = ngx_collab_ws_parse(&p, &pos, s.in.p + s.in.len);
    assert_int_equal(rc, NGX_COLLAB_WS_FRAME);
    assert_int_equal(p.opcode, OP_CONT);
    assert_int_equal(p.fin, 1);

    while ((rc = ngx_collab_ws_parse(&p, &pos, s.in.p + s.in.len))
           != NGX_COLLAB_WS_FRAME_END)
    {
        assert_int_equal(rc, NGX_COLLAB_WS_DATA);
    }

    assert_int_equal(p.in_message, 0);
    assert_ptr_equal(pos, s.in.p + s.in.len);

    script_free(&s);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_opcodes),
        cmocka_unit_test(test_empty_frames),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_header_sizes),
        cmocka_unit_test(test_non_minimal_lengths),
        cmocka_unit_test(test_big_headers),
        cmocka_unit_test(test_length_msb),
        cmocka_unit_test(test_masking),
        cmocka_unit_test(test_unmasked),
        cmocka_unit_test(test_reserved_bits),
        cmocka_unit_test(test_unknown_opcodes),
        cmocka_unit_test(test_control_fragmented),
        cmocka_unit_test(test_control_length),
        cmocka_unit_test(test_continuation_without_start),
        cmocka_unit_test(test_data_inside_fragmented),
        cmocka_unit_test(test_control_interleaved),
        cmocka_unit_test(test_message_state),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_utf8_feed),
        cmocka_unit_test(test_utf8_frames),
        cmocka_unit_test(test_utf8_fail_fast),
        cmocka_unit_test(test_close_check),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_frame_header_roundtrip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
