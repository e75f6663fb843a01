
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_PROTOCOL_H_INCLUDED_
#define _NGX_COLLAB_PROTOCOL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "ngx_collab_ws.h"
#include "ngx_collab_room.h"


/* events and replies: compact, keys in the order they were set */
#define NGX_COLLAB_JSON_FLAGS     (JSON_COMPACT | JSON_PRESERVE_ORDER)

/* requests a connection may have waiting for its identity, at most */
#define NGX_COLLAB_DEFERRED_MAX   32

/* sends a connection may have waiting for their ack, at most */
#define NGX_COLLAB_UNACKED_MAX    256


/* a collab.v1 connection (ws->data) */

struct ngx_collab_conn_s {
    ngx_collab_ws_t            *ws;

    ngx_str_t                   user;          /* the site's user id */
    ngx_str_t                   user_name;     /* empty: none */
    int64_t                     user_id;       /* users.id, 0: unknown */

    ngx_queue_t                 members;       /* ngx_collab_member_t */
    ngx_queue_t                 requests;      /* ngx_collab_req_t */
    ngx_queue_t                 sends;         /* ngx_collab_send_t */
    ngx_uint_t                  nsends;

    json_t                     *deferred;      /* requests before user_id */
    unsigned                    resolving:1;
};


extern const ngx_collab_ws_app_t  ngx_collab_protocol_app;


void ngx_collab_protocol_error(ngx_collab_conn_t *conn, const char *code,
    json_t *ref, const char *message);
void ngx_collab_protocol_reply(ngx_collab_conn_t *conn, json_t *reply);
ngx_collab_ws_msg_t *ngx_collab_protocol_encode(json_t *event,
    ngx_log_t *log);


#endif /* _NGX_COLLAB_PROTOCOL_H_INCLUDED_ */
