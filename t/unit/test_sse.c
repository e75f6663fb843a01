
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * Unit tests of the Server-Sent Events parser, src/ngx_collab_sse.c.
 *
 * Each case is a stream of bytes, the buffer sizes to parse it with and
 * what the parser must make of it: the events' data in order and the
 * final return code.  Every case is parsed whole, one byte at a time and
 * split in two at every byte boundary; every chunk is copied into a heap
 * block of exactly its size and the parser's two buffers are heap blocks
 * of exactly their sizes, so AddressSanitizer catches a read past a chunk,
 * a pointer kept into an earlier chunk or a write past a buffer.  All the
 * cuts must give the same events and the same code.
 *
 * Why: the AI provider's stream reaches the parser in whatever pieces TCP
 * and libcurl make of it; a reply must not depend on where those cuts
 * fall, and a hostile provider must not get past the bounded buffers.
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ngx_collab_sse.h"


#define MAX_EVENTS  64


typedef struct {
    size_t         n;
    char          *data[MAX_EVENTS];
    size_t         len[MAX_EVENTS];
    size_t         stop_after;  /* the callback returns 7 then; 0: never */
} events_t;


typedef struct {
    const char    *in;
    size_t         in_len;
    size_t         line_size;
    size_t         data_size;
    int            rc;          /* the code of the last call */
    size_t         nevents;
    const char    *events[8];   /* NUL-terminated; no NUL in them */
    size_t         stop_after;
} sse_case_t;


static int
on_event(void *ctx, const u_char *data, size_t len)
{
    events_t  *ev;

    ev = ctx;

    assert_true(ev->n < MAX_EVENTS);

    /* an exact copy: a NULL data with len 0 is fine */

    ev->data[ev->n] = malloc(len + 1);
    assert_non_null(ev->data[ev->n]);

    if (len) {
        memcpy(ev->data[ev->n], data, len);
    }

    ev->data[ev->n][len] = '\0';
    ev->len[ev->n] = len;
    ev->n++;

    if (ev->stop_after && ev->n == ev->stop_after) {
        return 7;
    }

    return 0;
}


static void
events_free(events_t *ev)
{
    size_t  i;

    for (i = 0; i < ev->n; i++) {
        free(ev->data[i]);
    }

    ev->n = 0;
}


/* feeds the input in chunks cut at cuts[0..ncuts-1]; returns the code */

static int
parse_cut(const sse_case_t *c, const size_t *cuts, size_t ncuts,
    events_t *ev)
{
    int               rc;
    size_t            i, from, to;
    u_char           *chunk;
    ngx_collab_sse_t  s;

    memset(&s, 0, sizeof(ngx_collab_sse_t));
    s.line_size = c->line_size;
    s.data_size = c->data_size;
    s.line = malloc(c->line_size ? c->line_size : 1);
    s.data = malloc(c->data_size ? c->data_size : 1);
    assert_non_null(s.line);
    assert_non_null(s.data);

    ev->n = 0;
    ev->stop_after = c->stop_after;

    rc = 0;
    from = 0;

    for (i = 0; i <= ncuts; i++) {
        to = (i < ncuts) ? cuts[i] : c->in_len;

        chunk = malloc(to - from ? to - from : 1);
        assert_non_null(chunk);
        memcpy(chunk, c->in + from, to - from);

        rc = ngx_collab_sse_feed(&s, chunk, to - from, on_event, ev);

        free(chunk);
        from = to;

        if (rc != 0) {
            break;
        }
    }

    free(s.line);
    free(s.data);

    return rc;
}


static void
check_events(const sse_case_t *c, events_t *ev, int rc, const char *how)
{
    size_t  i;

    if (rc != c->rc || ev->n != c->nevents) {
        print_error("%s: rc %d (want %d), %zu events (want %zu)\n",
                    how, rc, c->rc, ev->n, c->nevents);
        fail();
    }

    for (i = 0; i < ev->n; i++) {
        if (ev->len[i] != strlen(c->events[i])
            || memcmp(ev->data[i], c->events[i], ev->len[i]) != 0)
        {
            print_error("%s: event %zu is \"%s\", want \"%s\"\n",
                        how, i, ev->data[i], c->events[i]);
            fail();
        }
    }
}


static void
run_case(const sse_case_t *c)
{
    int       rc;
    size_t    i, *cuts;
    events_t  ev;
    char      how[64];

    memset(&ev, 0, sizeof(events_t));

    /* whole */

    rc = parse_cut(c, NULL, 0, &ev);
    check_events(c, &ev, rc, "whole");
    events_free(&ev);

    /* one byte at a time */

    cuts = malloc((c->in_len + 1) * sizeof(size_t));
    assert_non_null(cuts);

    for (i = 0; i < c->in_len; i++) {
        cuts[i] = i + 1;
    }

    rc = parse_cut(c, cuts, c->in_len ? c->in_len - 1 : 0, &ev);
    check_events(c, &ev, rc, "bytewise");
    events_free(&ev);

    /* in two at every boundary, empty chunks at either end included */

    for (i = 0; i <= c->in_len; i++) {
        cuts[0] = i;
        rc = parse_cut(c, cuts, 1, &ev);
        snprintf(how, sizeof(how), "cut at %zu", i);
        check_events(c, &ev, rc, how);
        events_free(&ev);
    }

    free(cuts);
}


#define IN(s)  (s), sizeof(s) - 1


static void
test_line_endings(void **state)
{
    static const sse_case_t  cases[] = {
        { IN("data: one\n\ndata: two\n\n"), 64, 64, 0, 2, { "one", "two" },
          0 },
        { IN("data: one\r\n\r\ndata: two\r\n\r\n"), 64, 64, 0, 2,
          { "one", "two" }, 0 },
        { IN("data: one\r\rdata: two\r\r"), 64, 64, 0, 2, { "one", "two" },
          0 },

        /* mixed in one stream; CR LF LF is two line ends, CR CR too */
        { IN("data: a\r\n\ndata: b\r\rdata: c\n\r\n"), 64, 64, 0, 3,
          { "a", "b", "c" }, 0 },

        /* LF CR: two line ends, the CR not waiting for an LF */
        { IN("data: a\n\rdata: b\n\n"), 64, 64, 0, 2, { "a", "b" }, 0 },

        /* an event without its blank line is not dispatched */
        { IN("data: a\n\ndata: b\n"), 64, 64, 0, 1, { "a" }, 0 },
        { IN("data: a\n\ndata: b"), 64, 64, 0, 1, { "a" }, 0 },
        { IN("data: a\r"), 64, 64, 0, 0, { NULL }, 0 },

        /* an OpenAI-like chunk and the end marker */
        { IN("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
             "data: [DONE]\n\n"), 128, 128, 0, 2,
          { "{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}", "[DONE]" },
          0 },
    };

    size_t  i;

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i]);
    }
}


static void
test_fields(void **state)
{
    static const sse_case_t  cases[] = {

        /* multi-line data joined with LF, without the last LF */
        { IN("data: one\ndata: two\ndata: three\n\n"), 64, 64, 0, 1,
          { "one\ntwo\nthree" }, 0 },

        /* one space after the colon is dropped, no more, none needed */
        { IN("data:x\n\ndata:  y\n\ndata: \n\n"), 64, 64, 0, 3,
          { "x", " y", "" }, 0 },

        /* colons in the value are kept */
        { IN("data: a: b:c\n\n"), 64, 64, 0, 1, { "a: b:c" }, 0 },

        /* "data" without a colon is a data line with an empty value */
        { IN("data\n\n"), 64, 64, 0, 1, { "" }, 0 },
        { IN("data\ndata\n\n"), 64, 64, 0, 1, { "\n" }, 0 },
        { IN("data: a\ndata\ndata: b\n\n"), 64, 64, 0, 1, { "a\n\nb" }, 0 },

        /* comments */
        { IN(": keep-alive\n\n:\ndata: x\n: in between\ndata: y\n\n"), 64,
          64, 0, 1, { "x\ny" }, 0 },
        { IN(": OPENROUTER PROCESSING\n\n: another\n\n"), 64, 64, 0, 0,
          { NULL }, 0 },

        /* other fields are ignored, and so is their value */
        { IN("event: delta\nid: 7\nretry: 1000\ndata: x\nfoo: bar\n\n"),
          64, 64, 0, 1, { "x" }, 0 },
        { IN("event: only\nid: 1\n\n"), 64, 64, 0, 0, { NULL }, 0 },

        /* field names are exact and case-sensitive */
        { IN("Data: no\ndatas: no\ndat: no\n data: no\ndata : no\n"
             "data: yes\n\n"), 64, 64, 0, 1, { "yes" }, 0 },

        /* blank lines without data dispatch nothing */
        { IN("\n\n\r\n\r\r\n\n"), 64, 64, 0, 0, { NULL }, 0 },
        { IN("\n\ndata: a\n\n\n\ndata: b\n\n\n"), 64, 64, 0, 2,
          { "a", "b" }, 0 },

        /* bytes the parser does not interpret pass through */
        { IN("data: caf\xc3\xa9 \x01\x7f\n\n"), 64, 64, 0, 1,
          { "caf\xc3\xa9 \x01\x7f" }, 0 },
    };

    size_t  i;

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i]);
    }
}


static void
test_limits(void **state)
{
    static const sse_case_t  cases[] = {

        /* a line of exactly line_size bytes fits; one more does not */
        { IN("data: 0123456789\n\n"), 16, 64, 0, 1, { "0123456789" }, 0 },
        { IN("data: 01234567890\n\n"), 16, 64, -1, 0, { NULL }, 0 },

        /* even when it is a comment, or never ends */
        { IN(": 0123456789abcdefgh\n\n"), 16, 64, -1, 0, { NULL }, 0 },
        { IN("data: a\n\ndata: 0123456789abcdef"), 16, 64, -1, 1, { "a" },
          0 },

        /* data: the value and its LF must fit */
        { IN("data: 123456\n\n"), 64, 7, 0, 1, { "123456" }, 0 },
        { IN("data: 1234567\n\n"), 64, 7, -1, 0, { NULL }, 0 },
        { IN("data: 12\ndata: 123\n\n"), 64, 7, 0, 1, { "12\n123" }, 0 },
        { IN("data: 12\ndata: 1234\n\n"), 64, 7, -1, 0, { NULL }, 0 },

        /* the data buffer is reused by the next event */
        { IN("data: 123456\n\ndata: abcdef\n\n"), 64, 7, 0, 2,
          { "123456", "abcdef" }, 0 },

        /* events before the overlong one are delivered */
        { IN("data: a\n\ndata: b\n\ndata: 12345678\n\ndata: c\n\n"), 64, 7,
          -1, 2, { "a", "b" }, 0 },
    };

    size_t  i;

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i]);
    }
}


static void
test_stop(void **state)
{
    static const sse_case_t  cases[] = {

        /* the callback's non-zero return is returned, nothing more read */
        { IN("data: a\n\ndata: b\n\ndata: c\n\n"), 64, 64, 7, 1, { "a" },
          1 },
        { IN("data: a\n\ndata: b\n\ndata: c\n\n"), 64, 64, 7, 2,
          { "a", "b" }, 2 },

        /* a stop on the last event still returns the code */
        { IN("data: a\n\n"), 64, 64, 7, 1, { "a" }, 1 },

        /* bytes after the stop are not looked at, even bad ones */
        { IN("data: a\n\n: this comment is far too long for the line\n"),
          16, 64, 7, 1, { "a" }, 1 },
    };

    size_t  i;

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i]);
    }
}


/* a parser keeps working after a stop when fed again */

static void
test_resume_after_stop(void **state)
{
    int               rc;
    events_t          ev;
    ngx_collab_sse_t  s;
    u_char            line[32], data[32];

    static const char  in1[] = "data: a\n\ndata: b\n\n";
    static const char  in2[] = "data: c\n\n";

    (void) state;

    memset(&s, 0, sizeof(ngx_collab_sse_t));
    memset(&ev, 0, sizeof(events_t));
    s.line = line;
    s.line_size = sizeof(line);
    s.data = data;
    s.data_size = sizeof(data);

    ev.stop_after = 1;

    rc = ngx_collab_sse_feed(&s, (const u_char *) in1, sizeof(in1) - 1,
                             on_event, &ev);
    assert_int_equal(rc, 7);
    assert_int_equal(ev.n, 1);
    assert_string_equal(ev.data[0], "a");

    ev.stop_after = 0;

    rc = ngx_collab_sse_feed(&s, (const u_char *) in2, sizeof(in2) - 1,
                             on_event, &ev);
    assert_int_equal(rc, 0);
    assert_int_equal(ev.n, 2);
    assert_string_equal(ev.data[1], "c");

    events_free(&ev);
}


/* an empty feed changes nothing */

static void
test_empty_feed(void **state)
{
    int               rc;
    events_t          ev;
    ngx_collab_sse_t  s;
    u_char            line[32], data[32];

    (void) state;

    memset(&s, 0, sizeof(ngx_collab_sse_t));
    memset(&ev, 0, sizeof(events_t));
    s.line = line;
    s.line_size = sizeof(line);
    s.data = data;
    s.data_size = sizeof(data);

    rc = ngx_collab_sse_feed(&s, (const u_char *) "data: x\r", 8, on_event,
                             &ev);
    assert_int_equal(rc, 0);

    rc = ngx_collab_sse_feed(&s, (const u_char *) "", 0, on_event, &ev);
    assert_int_equal(rc, 0);
    assert_int_equal(ev.n, 0);

    /* the CR's LF after an empty feed is still the same line end */

    rc = ngx_collab_sse_feed(&s, (const u_char *) "\n\n", 2, on_event, &ev);
    assert_int_equal(rc, 0);
    assert_int_equal(ev.n, 1);
    assert_string_equal(ev.data[0], "x");

    events_free(&ev);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_resume_after_stop),
        cmocka_unit_test(test_empty_feed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
