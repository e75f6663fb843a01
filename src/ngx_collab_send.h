
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_SEND_H_INCLUDED_
#define _NGX_COLLAB_SEND_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "ngx_collab.h"
#include "ngx_collab_protocol.h"


typedef struct {
    ngx_queue_t                 queue;         /* room->pending, a batch */
    ngx_queue_t                 conn_link;     /* conn->sends */
    ngx_collab_conn_t          *conn;          /* NULL: sender gone */
    json_t                     *ref;
    int64_t                     user_id;
    ngx_str_t                   user;
    ngx_str_t                   user_name;
    ngx_str_t                   client_msg_id;
    ngx_str_t                   body;
    ngx_str_t                   metadata;      /* JSON text, or empty */
    const char                 *kind;          /* "user" or "ai" */
    u_char                      data[1];
} ngx_collab_send_t;


void ngx_collab_send_init(ngx_collab_main_conf_t *cmcf, ngx_log_t *log);
ngx_int_t ngx_collab_send(ngx_collab_conn_t *conn, ngx_collab_room_t *room,
    json_t *ref, ngx_str_t *body, ngx_str_t *client_msg_id,
    ngx_str_t *image);
ngx_int_t ngx_collab_send_image(json_t *req, ngx_str_t *image);
void ngx_collab_send_detach(ngx_collab_conn_t *conn);
ngx_int_t ngx_collab_send_ai(ngx_collab_room_t *room, ngx_str_t *body,
    ngx_str_t *metadata, ngx_str_t *client_msg_id);


#endif /* _NGX_COLLAB_SEND_H_INCLUDED_ */
