
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_PROTOCOL_H_INCLUDED_
#define _NGX_COLLAB_PROTOCOL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "ngx_collab_ws.h"
#include "ngx_collab_pg.h"
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
    ngx_queue_t                 link;          /* the worker's list */

    ngx_str_t                   user;          /* the site's user id */
    ngx_str_t                   user_name;     /* empty: none */
    int64_t                     user_id;       /* users.id, 0: unknown */

    ngx_queue_t                 members;       /* ngx_collab_member_t */
    ngx_queue_t                 requests;      /* ngx_collab_req_t */
    ngx_queue_t                 sends;         /* ngx_collab_send_t */
    ngx_uint_t                  nsends;

    json_t                     *deferred;      /* requests before user_id */
    void                       *api;           /* an HTTP API request's */
    time_t                      expires;       /* the token's, 0: none */
    ngx_pool_t                 *pool;          /* conn's, lives as long */
    unsigned                    resolving:1;
};


/* a request waiting for PostgreSQL, linked to its connection */

typedef struct {
    ngx_queue_t                 link;          /* conn->requests */
    ngx_collab_conn_t          *conn;          /* NULL: went away */
    json_t                     *ref;
    ngx_uint_t                  op;

    int64_t                     since;         /* join: -1 none */
    ngx_uint_t                  limit;
    ngx_collab_member_t        *member;
    json_t                     *session;
    int64_t                     id;
} ngx_collab_req_t;


extern const ngx_collab_ws_app_t  ngx_collab_protocol_app;


ngx_int_t ngx_collab_conn_create(ngx_http_request_t *r,
    ngx_collab_loc_conf_t *cf, ngx_pool_t *pool, ngx_collab_conn_t **connp);
void ngx_collab_conn_close(ngx_collab_conn_t *conn);
void ngx_collab_protocol_dispatch(ngx_collab_conn_t *conn, json_t *req);

ngx_collab_req_t *ngx_collab_req_create(ngx_collab_conn_t *conn,
    ngx_uint_t op, json_t *ref);
void ngx_collab_req_free(ngx_collab_req_t *req);
ngx_int_t ngx_collab_req_send(ngx_collab_req_t *req, ngx_collab_pg_query_t *q,
    ngx_collab_pg_handler_pt handler);
ngx_collab_req_t *ngx_collab_req_result(ngx_collab_pg_query_t *q,
    PGresult *res);
ngx_collab_req_t *ngx_collab_req_rows(ngx_collab_pg_query_t *q,
    PGresult *res, const char *unavailable);
ngx_int_t ngx_collab_slug(json_t *req, ngx_str_t *slug);
ngx_int_t ngx_collab_session_arg(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref, ngx_str_t *slug);
ngx_collab_member_t *ngx_collab_member_find(ngx_collab_conn_t *conn,
    ngx_str_t *slug);
ngx_int_t ngx_collab_get_int(json_t *req, const char *name, int64_t min,
    int64_t max, int64_t *value);
ngx_int_t ngx_collab_get_ai_trigger(json_t *req, ngx_str_t *value);
void ngx_collab_protocol_user_event(int64_t user, ngx_collab_ws_msg_t *msg);
void ngx_collab_protocol_kick(ngx_collab_room_t *room, int64_t user,
    ngx_collab_ws_msg_t *msg);


void ngx_collab_protocol_error(ngx_collab_conn_t *conn, const char *code,
    json_t *ref, const char *message);
void ngx_collab_protocol_reply(ngx_collab_conn_t *conn, json_t *reply);
ngx_collab_ws_msg_t *ngx_collab_protocol_encode_with(json_t *object,
    const char *key, ngx_str_t *raw, ngx_log_t *log);
ngx_collab_ws_msg_t *ngx_collab_protocol_encode(json_t *event,
    ngx_log_t *log);


#endif /* _NGX_COLLAB_PROTOCOL_H_INCLUDED_ */
