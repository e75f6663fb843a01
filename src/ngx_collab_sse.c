
/*
 * Copyright (C) ngx_collab authors
 */


#include <string.h>

#include "ngx_collab_sse.h"


static int ngx_collab_sse_line(ngx_collab_sse_t *s,
    ngx_collab_sse_event_pt event, void *ctx);


int
ngx_collab_sse_feed(ngx_collab_sse_t *s, const u_char *p, size_t len,
    ngx_collab_sse_event_pt event, void *ctx)
{
    int            rc;
    u_char         ch;
    const u_char  *last;

    for (last = p + len; p < last; p++) {
        ch = *p;

        if (ch == '\n' && s->cr) {
            s->cr = 0;              /* the LF of a CRLF */
            continue;
        }

        s->cr = (ch == '\r');

        if (ch == '\n' || ch == '\r') {
            rc = ngx_collab_sse_line(s, event, ctx);

            if (rc != 0) {
                return rc;
            }

            continue;
        }

        if (s->line_len == s->line_size) {
            return -1;
        }

        s->line[s->line_len++] = ch;
    }

    return 0;
}


static int
ngx_collab_sse_line(ngx_collab_sse_t *s, ngx_collab_sse_event_pt event,
    void *ctx)
{
    int      rc;
    size_t   n, vlen;
    u_char  *colon, *value;

    n = s->line_len;
    s->line_len = 0;

    if (n == 0) {

        /* a blank line dispatches the event */

        if (!s->has_data) {
            return 0;
        }

        s->has_data = 0;
        rc = event(ctx, s->data, s->data_len ? s->data_len - 1 : 0);
        s->data_len = 0;

        return rc;
    }

    if (s->line[0] == ':') {
        return 0;                   /* a comment */
    }

    colon = memchr(s->line, ':', n);

    if (colon == NULL) {
        colon = s->line + n;        /* a field with no value */
        value = colon;

    } else {
        value = colon + 1;

        if (value < s->line + n && *value == ' ') {
            value++;
        }
    }

    if (colon - s->line != 4 || memcmp(s->line, "data", 4) != 0) {
        return 0;                   /* event, id, retry: not needed */
    }

    vlen = (size_t) (s->line + n - value);

    if (s->data_len + vlen + 1 > s->data_size) {
        return -1;
    }

    memcpy(s->data + s->data_len, value, vlen);
    s->data_len += vlen;
    s->data[s->data_len++] = '\n';
    s->has_data = 1;

    return 0;
}
