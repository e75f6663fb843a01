
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * RFC 6455 on an nginx connection.
 *
 * The handshake is an ordinary content handler: it validates the upgrade
 * request, sends "101 Switching Protocols" through the header filters and
 * keeps the request alive (r->main->count++) just long enough for a
 * posted write event to see the 101 flushed.  Then the request is freed
 * (its access log line is written with status 101) and the connection is
 * ours: c->data points to ngx_collab_ws_t, allocated from the small
 * connection pool, and the header buffers are given back.  An idle
 * WebSocket therefore holds the ngx_connection_t, the connection pool and
 * this struct, and nothing else: input is read into one per-worker
 * buffer, parsed in place, and a message is copied out only when it
 * spans reads or frames.
 *
 * Output goes through a per-connection queue of shared, refcounted,
 * fully encoded frames (ngx_collab_ws_msg_t).  Queuing never writes: it
 * posts the write event once, so everything queued for a connection in
 * one event loop iteration leaves in one send_chain() (writev) call.
 * The queue is bounded by collab_send_queue_size: a consumer that lets
 * it fill is closed with 1008.  While the queue is more than half full
 * the connection's own input is not read, so a client that pipelines
 * requests is slowed down by TCP rather than cut off.
 *
 * Closing: ngx_collab_ws_close() and protocol failures queue a close
 * frame and never free anything; the connection is finalized only from
 * its own event handlers, so callers fanning out to many connections may
 * close any of them safely.  Once our close frame is written and the
 * peer's has arrived (or the peer failed the protocol), the write side is
 * shut down and input is drained until EOF or collab_close_timeout
 * ("lingering close"), so the peer reads our close frame instead of a
 * reset.
 *
 * Timers: one timer on the read event serves ping, pong deadline, idle
 * timeout and close timeout; it is armed for the nearest deadline and
 * re-checked when it fires, so receiving a frame costs no timer
 * operation.  The write event's timer is collab_send_timeout while
 * output is blocked.
 *
 * Graceful shutdown: the connection is marked c->idle, so an exiting
 * worker calls the read handler with c->close set, and the peer is sent
 * 1012 (service restart).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_collab.h"
#include "ngx_collab_ws.h"


#define NGX_COLLAB_WS_READ_SIZE   65536
#define NGX_COLLAB_WS_READ_LIMIT  16      /* reads per event, then yield */
#define NGX_COLLAB_WS_CHAIN       64      /* frames per send_chain() */
#define NGX_COLLAB_WS_FREE_LINKS  4096    /* queue links cached per worker */


static void ngx_collab_ws_abort(ngx_http_request_t *r);
static void ngx_collab_ws_free_header_buffers(ngx_http_connection_t *hc,
    ngx_connection_t *c);
static void ngx_collab_ws_read_handler(ngx_event_t *rev);
static void ngx_collab_ws_write_handler(ngx_event_t *wev);
static void ngx_collab_ws_process(ngx_collab_ws_t *ws, u_char *pos,
    u_char *last);
static ngx_int_t ngx_collab_ws_append(ngx_collab_ws_t *ws, u_char *data,
    size_t len);
static void ngx_collab_ws_control(ngx_collab_ws_t *ws, u_char *data,
    size_t len);
static void ngx_collab_ws_fail(ngx_collab_ws_t *ws, ngx_uint_t code,
    const char *reason);
static ngx_int_t ngx_collab_ws_queue(ngx_collab_ws_t *ws,
    ngx_collab_ws_msg_t *msg);
static void ngx_collab_ws_free_link(ngx_collab_ws_out_t *out);
static void ngx_collab_ws_drop_queue(ngx_collab_ws_t *ws,
    ngx_uint_t keep_head);
static ngx_int_t ngx_collab_ws_flush(ngx_collab_ws_t *ws);
static void ngx_collab_ws_post_write(ngx_collab_ws_t *ws);
static ngx_int_t ngx_collab_ws_linger(ngx_collab_ws_t *ws);
static void ngx_collab_ws_timer(ngx_collab_ws_t *ws);
static ngx_int_t ngx_collab_ws_send_ping(ngx_collab_ws_t *ws);
static void ngx_collab_ws_arm_timer(ngx_collab_ws_t *ws);
static void ngx_collab_ws_finalize(ngx_collab_ws_t *ws);


static u_char                ngx_collab_ws_buffer[NGX_COLLAB_WS_READ_SIZE];
static ngx_collab_ws_out_t  *ngx_collab_ws_free_links;
static ngx_uint_t            ngx_collab_ws_nfree_links;


/*
 * Runs from the posted write event once the content handler returned:
 * waits for the 101 to be flushed, frees the request and takes over the
 * connection.  Bytes the client sent right after its handshake are still
 * in the header buffer and are parsed before that buffer is given back.
 */

void
ngx_collab_ws_start(ngx_event_t *ev)
{
    ngx_buf_t              *b;
    ngx_connection_t       *c;
    ngx_collab_ws_t        *ws;
    ngx_http_request_t     *r;
    ngx_http_connection_t  *hc;

    c = ev->data;
    r = c->data;
    ws = ngx_http_get_module_ctx(r, ngx_collab_module);

    if (ev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "collab: client timed out reading the upgrade");
        c->timedout = 1;
        ngx_collab_ws_abort(r);
        return;
    }

    if (r->out || c->buffered) {

        if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
            ngx_collab_ws_abort(r);
            return;
        }

        if (r->out || c->buffered) {
            if (!c->write->timer_set) {
                ngx_add_timer(c->write, ws->conf->send_timeout);
            }

            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                ngx_collab_ws_abort(r);
            }

            return;
        }
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    hc = r->http_connection;
    b = r->header_in;

    ngx_http_free_request(r, 0);

    c->destroyed = 0;
    c->data = ws;
    c->idle = 1;
    c->log->action = "processing WebSocket";
    c->read->handler = ngx_collab_ws_read_handler;
    c->write->handler = ngx_collab_ws_write_handler;

    ws->last_rx = ngx_current_msec;
    ws->last_message = ngx_current_msec;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "collab: websocket open");

    if (ws->conf->app->open && ws->conf->app->open(ws) != NGX_OK) {
        ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                            "internal error");
    }

    if (b && b->pos < b->last) {
        ngx_collab_ws_process(ws, b->pos, b->last);
        b->pos = b->last;
    }

    ngx_collab_ws_free_header_buffers(hc, c);

    ngx_collab_ws_arm_timer(ws);

    ngx_collab_ws_read_handler(c->read);
}


/* the request holds the last reference: what ngx_http_close_request() does */

static void
ngx_collab_ws_abort(ngx_http_request_t *r)
{
    ngx_connection_t  *c;

    c = r->connection;

    ngx_http_free_request(r, 0);
    ngx_http_close_connection(c);
}


static void
ngx_collab_ws_free_header_buffers(ngx_http_connection_t *hc,
    ngx_connection_t *c)
{
    ngx_chain_t  *cl;

    if (c->buffer) {
        (void) ngx_pfree(c->pool, c->buffer->start);
        c->buffer = NULL;
    }

    for (cl = hc->busy; cl; cl = cl->next) {
        (void) ngx_pfree(c->pool, cl->buf->start);
    }

    for (cl = hc->free; cl; cl = cl->next) {
        (void) ngx_pfree(c->pool, cl->buf->start);
    }

    hc->busy = NULL;
    hc->free = NULL;
    hc->nbusy = 0;
}


/* input */


static void
ngx_collab_ws_read_handler(ngx_event_t *rev)
{
    ssize_t            n;
    ngx_uint_t         i;
    ngx_connection_t  *c;
    ngx_collab_ws_t   *ws;

    c = rev->data;
    ws = c->data;

    if (rev->timedout) {
        rev->timedout = 0;
        ngx_collab_ws_timer(ws);
        return;
    }

    if (c->close) {
        c->close = 0;
        ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_RESTART,
                            "server restart");

        /*
         * called by ngx_close_idle_connections() outside of event
         * processing: a posted event would wait for the next timer
         */

        if (c->write->posted) {
            ngx_delete_posted_event(c->write);
            ngx_post_event(c->write, &ngx_posted_next_events);
        }
    }

    for (i = 0; rev->ready; i++) {

        if (i == NGX_COLLAB_WS_READ_LIMIT) {
            ngx_post_event(rev, &ngx_posted_events);
            return;
        }

        if (!ws->lingering
            && ws->out_bytes > ws->conf->send_queue_size / 2)
        {
            /* resumed by the write handler once the queue drains */
            ws->read_paused = 1;
            return;
        }

        n = c->recv(c, ngx_collab_ws_buffer, NGX_COLLAB_WS_READ_SIZE);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {

            if (n == 0 && !ws->close_received && !ws->failed) {
                ngx_log_error(NGX_LOG_INFO, c->log, 0,
                              "collab: client closed the connection "
                              "without a close frame");
            }

            ngx_collab_ws_finalize(ws);
            return;
        }

        if (ws->lingering) {
            continue;
        }

        ws->last_rx = ngx_current_msec;
        ws->ping_pending = 0;

        ngx_collab_ws_process(ws, ngx_collab_ws_buffer,
                              ngx_collab_ws_buffer + n);
    }

    if (ngx_exiting) {

        if (ws->lingering) {
            ngx_collab_ws_finalize(ws);
            return;
        }

        if (!ws->close_sent) {
            ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_RESTART,
                                "server restart");
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_collab_ws_finalize(ws);
    }
}


/*
 * Feeds [pos, last) to the parser and acts on what it finds.  A frame
 * whose whole payload lies in the input is used where it is; anything
 * else is assembled in ws->msg (data) or ws->ctl (control).  Never
 * finalizes the connection.
 */

static void
ngx_collab_ws_process(ngx_collab_ws_t *ws, u_char *pos, u_char *last)
{
    int                      rc;
    u_char                  *direct;
    size_t                   len;
    ngx_collab_ws_parser_t  *p;

    p = &ws->parser;
    direct = NULL;
    len = 0;

    while (!ws->failed && !ws->close_received) {

        rc = ngx_collab_ws_parse(p, &pos, last);

        switch (rc) {

        case NGX_COLLAB_WS_AGAIN:
            return;

        case NGX_COLLAB_WS_ERROR:
            ngx_collab_ws_fail(ws, p->error, p->reason);
            return;

        case NGX_COLLAB_WS_FRAME:
            direct = NULL;
            continue;

        case NGX_COLLAB_WS_DATA:

            if (p->len == p->frame_len
                && (p->control || (p->fin && ws->msg_len == 0)))
            {
                direct = p->data;
                len = p->len;
                continue;
            }

            if (ngx_collab_ws_append(ws, p->data, p->len) != NGX_OK) {
                ngx_collab_ws_fail(ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                                   "out of memory");
                return;
            }

            continue;

        default: /* NGX_COLLAB_WS_FRAME_END */
            break;
        }

        if (p->control) {

            if (direct == NULL) {
                direct = ws->ctl ? ws->ctl : (u_char *) "";
                len = ws->ctl_len;
            }

            ngx_collab_ws_control(ws, direct, len);

            if (ws->ctl) {
                ngx_free(ws->ctl);
                ws->ctl = NULL;
                ws->ctl_len = 0;
            }

            direct = NULL;
            continue;
        }

        if (!p->fin) {
            continue;
        }

        if (direct == NULL) {
            direct = ws->msg ? ws->msg : (u_char *) "";
            len = ws->msg_len;
        }

        ws->last_message = ngx_current_msec;

        if (!ws->close_sent) {
            ws->conf->app->message(ws, p->message_opcode, direct, len);
        }

        if (ws->msg) {
            ngx_free(ws->msg);
            ws->msg = NULL;
            ws->msg_len = 0;
            ws->msg_size = 0;
        }

        direct = NULL;
    }
}


static ngx_int_t
ngx_collab_ws_append(ngx_collab_ws_t *ws, u_char *data, size_t len)
{
    u_char  *p;
    size_t   size;

    if (ws->parser.control) {

        if (ws->ctl == NULL) {
            ws->ctl = ngx_alloc(NGX_COLLAB_WS_MAX_CONTROL,
                                ws->connection->log);
            if (ws->ctl == NULL) {
                return NGX_ERROR;
            }
        }

        /* the parser bounds control payloads to 125 bytes */

        ngx_memcpy(ws->ctl + ws->ctl_len, data, len);
        ws->ctl_len += len;

        return NGX_OK;
    }

    if (ws->msg_len + len > ws->msg_size) {

        /*
         * Grow with what has arrived, not with what the headers announce,
         * so that a peer cannot make us reserve memory it never sends;
         * the parser has already bounded the total by
         * collab_max_message_size.
         */

        size = ngx_max(ws->msg_size * 2, ws->msg_len + len);
        size = ngx_max(size, 4096);
        size = ngx_min(size, ws->conf->max_message_size);

        p = ngx_alloc(size, ws->connection->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (ws->msg) {
            ngx_memcpy(p, ws->msg, ws->msg_len);
            ngx_free(ws->msg);
        }

        ws->msg = p;
        ws->msg_size = size;
    }

    ngx_memcpy(ws->msg + ws->msg_len, data, len);
    ws->msg_len += len;

    return NGX_OK;
}


static void
ngx_collab_ws_control(ngx_collab_ws_t *ws, u_char *data, size_t len)
{
    uint16_t             code, fault;
    ngx_collab_ws_msg_t  *msg;

    switch (ws->parser.opcode) {

    case NGX_COLLAB_WS_OP_PING:

        if (ws->close_sent) {
            return;
        }

        msg = ngx_collab_ws_msg_create(NGX_COLLAB_WS_OP_PONG, data, len,
                                       ws->connection->log);
        if (msg == NULL) {
            ngx_collab_ws_fail(ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                               "out of memory");
            return;
        }

        /* control frames are not held to the queue limit */

        if (ngx_collab_ws_queue(ws, msg) != NGX_OK) {
            ngx_collab_ws_fail(ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                               "out of memory");
        }

        ngx_collab_ws_msg_release(msg);
        return;

    case NGX_COLLAB_WS_OP_PONG:
        return;

    default: /* NGX_COLLAB_WS_OP_CLOSE */

        fault = ngx_collab_ws_close_check(data, len, &code);

        if (fault) {
            ngx_collab_ws_fail(ws, fault, "invalid close frame");
            return;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ws->connection->log, 0,
                       "collab: client close %uD", (uint32_t) code);

        ws->close_received = 1;

        /* echo the peer's code; no code at all is answered with 1000 */

        ngx_collab_ws_close(ws, code == NGX_COLLAB_WS_CLOSE_NO_STATUS
                                ? NGX_COLLAB_WS_CLOSE_NORMAL : code, NULL);

        ngx_collab_ws_post_write(ws);
    }
}


/*
 * Fails the connection (RFC 6455, 7.1.7): input from now on is read
 * only to be discarded, and the close frame with the code is sent.
 */

static void
ngx_collab_ws_fail(ngx_collab_ws_t *ws, ngx_uint_t code, const char *reason)
{
    ngx_log_error(NGX_LOG_INFO, ws->connection->log, 0,
                  "collab: %s, closing with %ui", reason, code);

    ws->failed = 1;

    if (ws->msg) {
        ngx_free(ws->msg);
        ws->msg = NULL;
        ws->msg_len = 0;
        ws->msg_size = 0;
    }

    if (ws->ctl) {
        ngx_free(ws->ctl);
        ws->ctl = NULL;
        ws->ctl_len = 0;
    }

    ngx_collab_ws_close(ws, code, reason);

    ngx_collab_ws_post_write(ws);
}


/* output */


ngx_collab_ws_msg_t *
ngx_collab_ws_msg_alloc(ngx_uint_t opcode, size_t len, ngx_log_t *log)
{
    size_t                n;
    u_char                header[NGX_COLLAB_WS_MAX_HEADER];
    ngx_collab_ws_msg_t  *msg;

    n = ngx_collab_ws_frame_header(header, opcode, 1, len);

    msg = ngx_alloc(offsetof(ngx_collab_ws_msg_t, data) + n + len, log);
    if (msg == NULL) {
        return NULL;
    }

    msg->refs = 1;
    msg->len = n + len;
    msg->payload = ngx_cpymem(msg->data, header, n);

    return msg;
}


ngx_collab_ws_msg_t *
ngx_collab_ws_msg_create(ngx_uint_t opcode, u_char *data, size_t len,
    ngx_log_t *log)
{
    ngx_collab_ws_msg_t  *msg;

    msg = ngx_collab_ws_msg_alloc(opcode, len, log);
    if (msg == NULL) {
        return NULL;
    }

    if (len) {
        ngx_memcpy(msg->payload, data, len);
    }

    return msg;
}


void
ngx_collab_ws_msg_release(ngx_collab_ws_msg_t *msg)
{
    if (--msg->refs == 0) {
        ngx_free(msg);
    }
}


/*
 * Queues a data frame.  Returns NGX_OK, or NGX_DECLINED when the
 * connection is closing or has just been closed with 1008 because its
 * queue is full, or NGX_ERROR.  Never writes and never finalizes.
 */

ngx_int_t
ngx_collab_ws_enqueue(ngx_collab_ws_t *ws, ngx_collab_ws_msg_t *msg)
{
    if (ws->close_sent) {
        return NGX_DECLINED;
    }

    if (ws->out && ws->out_bytes + msg->len > ws->conf->send_queue_size) {

        ngx_log_error(NGX_LOG_INFO, ws->connection->log, 0,
                      "collab: slow consumer, %uz bytes queued exceed "
                      "collab_send_queue_size", ws->out_bytes + msg->len);

        ngx_collab_ws_drop_queue(ws, 1);
        ngx_collab_ws_fail(ws, NGX_COLLAB_WS_CLOSE_POLICY,
                           "send queue full");

        return NGX_DECLINED;
    }

    return ngx_collab_ws_queue(ws, msg);
}


ngx_int_t
ngx_collab_ws_send(ngx_collab_ws_t *ws, ngx_uint_t opcode, u_char *data,
    size_t len)
{
    ngx_int_t             rc;
    ngx_collab_ws_msg_t  *msg;

    msg = ngx_collab_ws_msg_create(opcode, data, len, ws->connection->log);
    if (msg == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_collab_ws_enqueue(ws, msg);

    ngx_collab_ws_msg_release(msg);

    return rc;
}


/*
 * Starts the closing handshake with the code and an optional reason;
 * does nothing if a close frame was already sent.
 */

void
ngx_collab_ws_close(ngx_collab_ws_t *ws, ngx_uint_t code, const char *reason)
{
    size_t                len;
    u_char               *p;
    ngx_collab_ws_msg_t  *msg;

    if (ws->close_sent) {
        return;
    }

    ws->close_sent = 1;

    len = reason ? ngx_min(ngx_strlen(reason), NGX_COLLAB_WS_MAX_CONTROL - 2)
                 : 0;

    msg = ngx_collab_ws_msg_alloc(NGX_COLLAB_WS_OP_CLOSE, 2 + len,
                                  ws->connection->log);

    if (msg) {
        p = msg->payload;
        *p++ = (u_char) (code >> 8);
        *p++ = (u_char) code;

        if (len) {
            ngx_memcpy(p, reason, len);
        }

        if (ngx_collab_ws_queue(ws, msg) != NGX_OK) {
            ws->failed = 1;
        }

        ngx_collab_ws_msg_release(msg);

    } else {
        ws->failed = 1;
    }

    ngx_add_timer(ws->connection->read, ws->conf->close_timeout);
}


static ngx_int_t
ngx_collab_ws_queue(ngx_collab_ws_t *ws, ngx_collab_ws_msg_t *msg)
{
    ngx_collab_ws_out_t  *out;

    out = ngx_collab_ws_free_links;

    if (out) {
        ngx_collab_ws_free_links = out->next;
        ngx_collab_ws_nfree_links--;

    } else {
        out = ngx_alloc(sizeof(ngx_collab_ws_out_t), ws->connection->log);
        if (out == NULL) {
            return NGX_ERROR;
        }
    }

    msg->refs++;

    out->msg = msg;
    out->next = NULL;

    *ws->out_last = out;
    ws->out_last = &out->next;
    ws->out_bytes += msg->len;

    ngx_collab_ws_post_write(ws);

    return NGX_OK;
}


static void
ngx_collab_ws_free_link(ngx_collab_ws_out_t *out)
{
    ngx_collab_ws_msg_release(out->msg);

    if (ngx_collab_ws_nfree_links < NGX_COLLAB_WS_FREE_LINKS) {
        out->next = ngx_collab_ws_free_links;
        ngx_collab_ws_free_links = out;
        ngx_collab_ws_nfree_links++;
        return;
    }

    ngx_free(out);
}


/* drops queued frames; a frame partly written already is kept whole */

static void
ngx_collab_ws_drop_queue(ngx_collab_ws_t *ws, ngx_uint_t keep_head)
{
    ngx_collab_ws_out_t  *out, *next;

    out = ws->out;

    if (out && keep_head && ws->out_sent) {
        ws->out_bytes = out->msg->len - ws->out_sent;
        ws->out_last = &out->next;
        out = out->next;
        *ws->out_last = NULL;

    } else {
        ws->out = NULL;
        ws->out_last = &ws->out;
        ws->out_sent = 0;
        ws->out_bytes = 0;
    }

    while (out) {
        next = out->next;
        ngx_collab_ws_free_link(out);
        out = next;
    }
}


static void
ngx_collab_ws_post_write(ngx_collab_ws_t *ws)
{
    ngx_event_t  *wev;

    wev = ws->connection->write;

    /* a blocked connection is written when epoll says it can be */

    if (wev->ready) {
        ngx_post_event(wev, &ngx_posted_events);
    }
}


/*
 * Writes queued frames with as few send_chain() calls as possible.
 * Returns NGX_OK when everything is written, NGX_AGAIN when the socket
 * is full, NGX_ERROR.  Progress is taken from the buffers' positions,
 * which send_chain() advances also when it only copies into a TLS buffer.
 */

static ngx_int_t
ngx_collab_ws_flush(ngx_collab_ws_t *ws)
{
    size_t                n;
    ngx_uint_t            i, k;
    ngx_buf_t             bufs[NGX_COLLAB_WS_CHAIN];
    ngx_chain_t           chain[NGX_COLLAB_WS_CHAIN], *cl;
    ngx_connection_t     *c;
    ngx_collab_ws_out_t  *out;

    c = ws->connection;

    while (ws->out || c->buffered) {

        if (!c->write->ready) {
            return NGX_AGAIN;
        }

        i = 0;

        for (out = ws->out; out && i < NGX_COLLAB_WS_CHAIN; out = out->next) {
            ngx_memzero(&bufs[i], sizeof(ngx_buf_t));

            bufs[i].start = out->msg->data + (i == 0 ? ws->out_sent : 0);
            bufs[i].pos = bufs[i].start;
            bufs[i].last = out->msg->data + out->msg->len;
            bufs[i].end = bufs[i].last;
            bufs[i].memory = 1;

            chain[i].buf = &bufs[i];
            chain[i].next = NULL;

            if (i) {
                chain[i - 1].next = &chain[i];
            }

            i++;
        }

        if (i) {
            bufs[i - 1].flush = 1;
        }

        cl = c->send_chain(c, i ? chain : NULL, 0);

        if (cl == NGX_CHAIN_ERROR) {
            c->error = 1;
            return NGX_ERROR;
        }

        for (k = 0; k < i; k++) {
            n = bufs[k].pos - bufs[k].start;
            ws->out_bytes -= n;

            if (bufs[k].pos != bufs[k].last) {
                ws->out_sent += n;
                break;
            }

            out = ws->out;
            ws->out = out->next;
            ws->out_sent = 0;

            if (ws->out == NULL) {
                ws->out_last = &ws->out;
            }

            ngx_collab_ws_free_link(out);
        }

        if (cl) {
            /* the socket took less than offered */
            c->write->ready = 0;
            return NGX_AGAIN;
        }
    }

    return NGX_OK;
}


static void
ngx_collab_ws_write_handler(ngx_event_t *wev)
{
    size_t             before;
    ngx_int_t          rc;
    ngx_connection_t  *c;
    ngx_collab_ws_t   *ws;

    c = wev->data;
    ws = c->data;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "collab: client timed out reading, %uz bytes queued",
                      ws->out_bytes);
        c->timedout = 1;
        ngx_collab_ws_finalize(ws);
        return;
    }

    before = ws->out_bytes;

    rc = ngx_collab_ws_flush(ws);

    if (rc == NGX_ERROR) {
        ngx_collab_ws_finalize(ws);
        return;
    }

    if (rc == NGX_AGAIN) {

        /* the timer measures time without progress */

        if (!wev->timer_set || ws->out_bytes != before) {
            ngx_add_timer(wev, ws->conf->send_timeout);
        }

        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_collab_ws_finalize(ws);
        }

        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    if (ws->read_paused) {
        ws->read_paused = 0;
        ngx_post_event(c->read, &ngx_posted_events);
    }

    if (ws->close_sent && (ws->close_received || ws->failed)
        && !ws->lingering)
    {
        if (ngx_collab_ws_linger(ws) != NGX_OK) {
            ngx_collab_ws_finalize(ws);
        }
    }
}


/*
 * Our close frame is out and nothing more will be said: shut down the
 * write side and discard input until the peer closes too, so that it
 * reads our close frame rather than a reset caused by unread data.
 */

static ngx_int_t
ngx_collab_ws_linger(ngx_collab_ws_t *ws)
{
    ngx_connection_t  *c;

    c = ws->connection;

    ws->lingering = 1;

    /* an exiting worker does not wait for peers to hang up */

    if (c->ssl || ngx_exiting) {
        return NGX_DONE;
    }

    if (ngx_shutdown_socket(c->fd, NGX_WRITE_SHUTDOWN) == -1) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, ngx_socket_errno,
                       "collab: shutdown() failed");
        return NGX_DONE;
    }

    ngx_add_timer(c->read, ws->conf->close_timeout);

    ngx_post_event(c->read, &ngx_posted_events);

    return NGX_OK;
}


/* timers */


static void
ngx_collab_ws_timer(ngx_collab_ws_t *ws)
{
    ngx_msec_t              now;
    ngx_connection_t       *c;
    ngx_collab_loc_conf_t  *cf;

    c = ws->connection;
    cf = ws->conf;
    now = ngx_current_msec;

    if (ws->close_sent) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "collab: closing handshake timed out");
        c->timedout = 1;
        ngx_collab_ws_finalize(ws);
        return;
    }

    if (ws->expires && (ngx_msec_int_t) (now - ws->expires) >= 0) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "collab: the client's token expired");
        ngx_collab_ws_close(ws, 4001, "token expired");
        return;
    }

    if (ws->ping_pending
        && (ngx_msec_int_t) (now - ws->ping_sent - cf->ping_timeout) >= 0)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "collab: no pong from client");
        c->timedout = 1;
        ngx_collab_ws_finalize(ws);
        return;
    }

    if (cf->idle_timeout
        && (ngx_msec_int_t) (now - ws->last_message - cf->idle_timeout) >= 0)
    {
        ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_GOING_AWAY,
                            "idle timeout");
        return;
    }

    if (!ws->ping_pending && cf->ping_interval
        && (ngx_msec_int_t) (now - ws->last_rx - cf->ping_interval) >= 0)
    {
        if (ngx_collab_ws_send_ping(ws) != NGX_OK) {
            ngx_collab_ws_finalize(ws);
            return;
        }
    }

    ngx_collab_ws_arm_timer(ws);
}


static ngx_int_t
ngx_collab_ws_send_ping(ngx_collab_ws_t *ws)
{
    ngx_int_t             rc;
    ngx_collab_ws_msg_t  *msg;

    msg = ngx_collab_ws_msg_create(NGX_COLLAB_WS_OP_PING, NULL, 0,
                                   ws->connection->log);
    if (msg == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_collab_ws_queue(ws, msg);

    ngx_collab_ws_msg_release(msg);

    ws->ping_pending = 1;
    ws->ping_sent = ngx_current_msec;

    return rc;
}


/* arms the read event's timer for the nearest keepalive deadline */

static void
ngx_collab_ws_arm_timer(ngx_collab_ws_t *ws)
{
    ngx_msec_t              now;
    ngx_uint_t              set;
    ngx_msec_int_t          t, next;
    ngx_event_t            *rev;
    ngx_collab_loc_conf_t  *cf;

    if (ws->close_sent) {
        return;                 /* the close timeout runs */
    }

    cf = ws->conf;
    rev = ws->connection->read;
    now = ngx_current_msec;

    set = 0;
    next = 0;

    if (ws->ping_pending) {
        next = (ngx_msec_int_t) (ws->ping_sent + cf->ping_timeout - now);
        set = 1;

    } else if (cf->ping_interval) {
        next = (ngx_msec_int_t) (ws->last_rx + cf->ping_interval - now);
        set = 1;
    }

    if (cf->idle_timeout) {
        t = (ngx_msec_int_t) (ws->last_message + cf->idle_timeout - now);

        if (!set || t < next) {
            next = t;
            set = 1;
        }
    }

    if (ws->expires) {
        t = (ngx_msec_int_t) (ws->expires - now);

        if (!set || t < next) {
            next = t;
            set = 1;
        }
    }

    if (!set) {
        if (rev->timer_set) {
            ngx_del_timer(rev);
        }

        return;
    }

    ngx_add_timer(rev, next > 0 ? (ngx_msec_t) next : 1);
}


/* the one way a WebSocket connection ends */

static void
ngx_collab_ws_finalize(ngx_collab_ws_t *ws)
{
    ngx_connection_t  *c;

    c = ws->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "collab: websocket close");

    if (ws->conf->app->close) {
        ws->conf->app->close(ws);
    }

    ngx_collab_ws_drop_queue(ws, 0);

    if (ws->msg) {
        ngx_free(ws->msg);
    }

    if (ws->ctl) {
        ngx_free(ws->ctl);
    }

    ngx_http_close_connection(c);
}
