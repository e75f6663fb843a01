
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_WS_H_INCLUDED_
#define _NGX_COLLAB_WS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_collab.h"
#include "ngx_collab_ws_frame.h"


/*
 * An outgoing frame, complete with its header, shared by every connection
 * it is queued on: a message fanned out to a thousand connections is
 * encoded once.  The creator holds one reference and drops it with
 * ngx_collab_ws_msg_release() once it has queued the frame everywhere.
 */

typedef struct {
    ngx_uint_t                  refs;
    size_t                      len;         /* header + payload */
    u_char                     *payload;
    u_char                      data[1];
} ngx_collab_ws_msg_t;


typedef struct ngx_collab_ws_out_s  ngx_collab_ws_out_t;

struct ngx_collab_ws_out_s {
    ngx_collab_ws_out_t        *next;
    ngx_collab_ws_msg_t        *msg;
};


/* what runs on top of the WebSocket: the echo diagnostic, the chat */

struct ngx_collab_ws_app_s {
    ngx_str_t                   subprotocol;  /* empty: none offered */

    /*
     * before the 101, with the request at hand: NGX_OK, or an HTTP status
     * to refuse the upgrade with (the app has logged why)
     */
    ngx_int_t                 (*upgrade)(ngx_http_request_t *r,
                                         ngx_collab_ws_t *ws);

    /* after the upgrade; NGX_ERROR closes the connection with 1011 */
    ngx_int_t                 (*open)(ngx_collab_ws_t *ws);

    /* a complete text or binary message; data is valid during the call */
    void                      (*message)(ngx_collab_ws_t *ws,
                                         ngx_uint_t opcode, u_char *data,
                                         size_t len);

    /* the connection is going away; ws is freed after the call */
    void                      (*close)(ngx_collab_ws_t *ws);
};


struct ngx_collab_ws_s {
    ngx_connection_t           *connection;
    ngx_collab_loc_conf_t      *conf;
    void                       *data;          /* the app's */

    ngx_collab_ws_parser_t      parser;

    u_char                     *msg;           /* message being assembled */
    size_t                      msg_len;
    size_t                      msg_size;

    u_char                     *ctl;           /* control frame payload */
    size_t                      ctl_len;

    ngx_collab_ws_out_t        *out;           /* send queue */
    ngx_collab_ws_out_t       **out_last;
    size_t                      out_sent;      /* of out->msg */
    size_t                      out_bytes;     /* queued, not yet sent */

    ngx_msec_t                  expires;       /* closed with 4001 then */
    ngx_msec_t                  last_rx;
    ngx_msec_t                  last_message;
    ngx_msec_t                  ping_sent;

    unsigned                    close_sent:1;
    unsigned                    close_received:1;
    unsigned                    failed:1;
    unsigned                    lingering:1;
    unsigned                    ping_pending:1;
    unsigned                    read_paused:1;
};


ngx_int_t ngx_collab_ws_handler(ngx_http_request_t *r);
void ngx_collab_ws_start(ngx_event_t *ev);

ngx_collab_ws_msg_t *ngx_collab_ws_msg_alloc(ngx_uint_t opcode, size_t len,
    ngx_log_t *log);
ngx_collab_ws_msg_t *ngx_collab_ws_msg_create(ngx_uint_t opcode,
    u_char *data, size_t len, ngx_log_t *log);
void ngx_collab_ws_msg_release(ngx_collab_ws_msg_t *msg);

ngx_int_t ngx_collab_ws_enqueue(ngx_collab_ws_t *ws, ngx_collab_ws_msg_t *msg);
ngx_int_t ngx_collab_ws_send(ngx_collab_ws_t *ws, ngx_uint_t opcode,
    u_char *data, size_t len);
void ngx_collab_ws_close(ngx_collab_ws_t *ws, ngx_uint_t code,
    const char *reason);


#endif /* _NGX_COLLAB_WS_H_INCLUDED_ */
