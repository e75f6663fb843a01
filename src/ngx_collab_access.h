
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_ACCESS_H_INCLUDED_
#define _NGX_COLLAB_ACCESS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "ngx_collab_protocol.h"


void ngx_collab_op_invite(ngx_collab_conn_t *conn, json_t *req, json_t *ref);
void ngx_collab_op_invitations(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
void ngx_collab_op_accept(ngx_collab_conn_t *conn, json_t *req, json_t *ref);
void ngx_collab_op_decline(ngx_collab_conn_t *conn, json_t *req, json_t *ref);
void ngx_collab_op_revoke(ngx_collab_conn_t *conn, json_t *req, json_t *ref);
void ngx_collab_op_remove(ngx_collab_conn_t *conn, json_t *req, json_t *ref);
void ngx_collab_op_update(ngx_collab_conn_t *conn, json_t *req, json_t *ref);
void ngx_collab_op_delete(ngx_collab_conn_t *conn, json_t *req, json_t *ref);

void ngx_collab_access_event(int64_t session, u_char kind, int64_t user,
    ngx_collab_ws_msg_t *msg);
void ngx_collab_access_apply(ngx_collab_room_t *room, u_char kind,
    int64_t user, ngx_collab_ws_msg_t *msg);


#endif /* _NGX_COLLAB_ACCESS_H_INCLUDED_ */
