
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * collab_echo: the diagnostic endpoint that conformance suites and the
 * benchmarks talk to.  Every text and binary message goes back to its
 * sender through exactly the path chat traffic takes.  With "broadcast"
 * a message goes instead to every connection of the worker that is on a
 * broadcast location, encoded once and shared by all their queues: the
 * fan-out path, and the way to watch a slow consumer being cut off while
 * the others carry on.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_collab.h"
#include "ngx_collab_ws.h"
#include "ngx_collab_echo.h"


typedef struct {
    ngx_queue_t                 queue;
    ngx_collab_ws_t            *ws;
} ngx_collab_echo_peer_t;


static ngx_int_t ngx_collab_echo_open(ngx_collab_ws_t *ws);
static void ngx_collab_echo_message(ngx_collab_ws_t *ws, ngx_uint_t opcode,
    u_char *data, size_t len);
static void ngx_collab_echo_close(ngx_collab_ws_t *ws);


const ngx_collab_ws_app_t  ngx_collab_echo_app = {
    ngx_null_string,
    NULL,
    ngx_collab_echo_open,
    ngx_collab_echo_message,
    ngx_collab_echo_close
};


/* this worker's broadcast peers */
static ngx_queue_t  ngx_collab_echo_peers;


static ngx_int_t
ngx_collab_echo_open(ngx_collab_ws_t *ws)
{
    ngx_collab_echo_peer_t  *peer;

    if (!ws->conf->broadcast) {
        return NGX_OK;
    }

    if (ngx_collab_echo_peers.next == NULL) {
        ngx_queue_init(&ngx_collab_echo_peers);
    }

    peer = ngx_palloc(ws->connection->pool, sizeof(ngx_collab_echo_peer_t));
    if (peer == NULL) {
        return NGX_ERROR;
    }

    peer->ws = ws;
    ngx_queue_insert_tail(&ngx_collab_echo_peers, &peer->queue);

    ws->data = peer;

    return NGX_OK;
}


static void
ngx_collab_echo_message(ngx_collab_ws_t *ws, ngx_uint_t opcode, u_char *data,
    size_t len)
{
    ngx_queue_t             *q;
    ngx_collab_ws_msg_t     *msg;
    ngx_collab_echo_peer_t  *peer;

    msg = ngx_collab_ws_msg_create(opcode, data, len, ws->connection->log);
    if (msg == NULL) {
        ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                            "out of memory");
        return;
    }

    if (ws->data == NULL) {
        (void) ngx_collab_ws_enqueue(ws, msg);

    } else {
        for (q = ngx_queue_head(&ngx_collab_echo_peers);
             q != ngx_queue_sentinel(&ngx_collab_echo_peers);
             q = ngx_queue_next(q))
        {
            peer = ngx_queue_data(q, ngx_collab_echo_peer_t, queue);
            (void) ngx_collab_ws_enqueue(peer->ws, msg);
        }
    }

    ngx_collab_ws_msg_release(msg);
}


static void
ngx_collab_echo_close(ngx_collab_ws_t *ws)
{
    ngx_collab_echo_peer_t  *peer;

    peer = ws->data;

    if (peer) {
        ngx_queue_remove(&peer->queue);
        ws->data = NULL;
    }
}
