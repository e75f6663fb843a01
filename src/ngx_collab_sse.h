
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_SSE_H_INCLUDED_
#define _NGX_COLLAB_SSE_H_INCLUDED_


/*
 * An incremental parser of Server-Sent Events (the WHATWG "text/event-
 * stream" format), as AI providers stream their replies: "data:" lines,
 * a blank line ending each event, comments, any line ending (LF, CRLF,
 * CR), input cut anywhere.  Pure C over bytes, for unit tests and the
 * fuzzer; the caller provides the two bounded buffers.
 */


#include <stddef.h>
#include <sys/types.h>


typedef int (*ngx_collab_sse_event_pt)(void *ctx, const u_char *data,
    size_t len);

typedef struct {
    u_char                     *line;         /* the line being read */
    size_t                      line_len;
    size_t                      line_size;
    u_char                     *data;         /* the event's data so far */
    size_t                      data_len;
    size_t                      data_size;
    unsigned                    cr:1;         /* the last byte was CR */
    unsigned                    has_data:1;
} ngx_collab_sse_t;


/*
 * Feeds len bytes.  For each complete event with data, calls event with
 * the data (lines joined by LF, without the last LF); a non-zero return
 * from it stops the parser and is returned.  Returns 0, or -1 when a line
 * or an event's data does not fit its buffer (the stream is not one this
 * parser takes).
 */
int ngx_collab_sse_feed(ngx_collab_sse_t *s, const u_char *p, size_t len,
    ngx_collab_sse_event_pt event, void *ctx);


#endif /* _NGX_COLLAB_SSE_H_INCLUDED_ */
