
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * collab.v1, the JSON protocol spoken on collab_websocket locations
 * (docs/PROTOCOL.md).
 *
 * Every request is a JSON object in a text frame with an "op" and an
 * optional "ref" that the reply carries back.  A request that cannot be
 * served is answered with {"op":"error","code":...,"ref":...,"message":...}
 * and a stable code, and changes nothing; the connection stays open.
 * Binary frames are not part of the protocol and close with 1003.
 *
 * Identity is the site's: collab_user (and collab_user_name) is evaluated
 * on the upgrade, an empty value refuses it with 401.  The user row is
 * upserted when the connection opens; requests that arrive before that
 * answer are kept (at most NGX_COLLAB_DEFERRED_MAX) and served after it.
 *
 * Requests that go to PostgreSQL carry an ngx_collab_req_t, linked to its
 * connection: a connection that closes unlinks them, and their results
 * are then dropped.  Nothing here waits: every reply is queued on the
 * WebSocket, every query goes through the pool.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_collab.h"
#include "ngx_collab_ws.h"
#include "ngx_collab_pg.h"
#include "ngx_collab_store.h"
#include "ngx_collab_room.h"
#include "ngx_collab_send.h"
#include "ngx_collab_presence.h"
#include "ngx_collab_redis.h"
#include "ngx_collab_protocol.h"
#include "ngx_collab_access.h"
#include "ngx_collab_api.h"
#include "ngx_collab_jwt.h"
#include "ngx_collab_ai.h"


#define NGX_COLLAB_SINCE_PAGE     200
#define NGX_COLLAB_HISTORY_MAX    200
#define NGX_COLLAB_SESSIONS_MAX   200




typedef void (*ngx_collab_op_pt)(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);

typedef struct {
    const char                 *name;
    ngx_collab_op_pt            handler;
    ngx_uint_t                  needs_user;
} ngx_collab_op_t;


static ngx_int_t ngx_collab_protocol_upgrade(ngx_http_request_t *r,
    ngx_collab_ws_t *ws);
static ngx_int_t ngx_collab_protocol_open(ngx_collab_ws_t *ws);
static void ngx_collab_protocol_message(ngx_collab_ws_t *ws,
    ngx_uint_t opcode, u_char *data, size_t len);
static void ngx_collab_protocol_close(ngx_collab_ws_t *ws);

static ngx_uint_t ngx_collab_utf8_valid(ngx_str_t *s);
static ngx_int_t ngx_collab_token(ngx_http_request_t *r,
    ngx_collab_loc_conf_t *cf, ngx_collab_jwt_t *jwt);
static void ngx_collab_resolve(ngx_collab_conn_t *conn);
static void ngx_collab_resolve_done(ngx_collab_pg_query_t *q, PGresult *res);
static void ngx_collab_resolved(ngx_collab_conn_t *conn);

static void ngx_collab_op_ping(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_create(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_create_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_sessions(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_sessions_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_join(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_join_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static ngx_int_t ngx_collab_join_read(ngx_collab_req_t *jr);
static void ngx_collab_op_join_read_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_leave(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_send(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_history(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_history_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static ngx_collab_member_t *ngx_collab_presence_member(
    ngx_collab_conn_t *conn, ngx_str_t *slug, json_t *ref);
static void ngx_collab_op_presence(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static void ngx_collab_op_typing(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);
static ngx_int_t ngx_collab_limited(ngx_collab_conn_t *conn, json_t *ref,
    ngx_uint_t kind);
static void ngx_collab_op_ai_cancel(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref);

static json_t *ngx_collab_messages(PGresult *res, int first, int last,
    int64_t *max_seq);


const ngx_collab_ws_app_t  ngx_collab_protocol_app = {
    ngx_string("collab.v1"),
    ngx_collab_protocol_upgrade,
    ngx_collab_protocol_open,
    ngx_collab_protocol_message,
    ngx_collab_protocol_close
};


/* this worker's collab.v1 connections, for events addressed to a user */
static ngx_queue_t  ngx_collab_conns;


static ngx_collab_op_t  ngx_collab_ops[] = {
    { "ping", ngx_collab_op_ping, 0 },
    { "create", ngx_collab_op_create, 1 },
    { "sessions", ngx_collab_op_sessions, 1 },
    { "join", ngx_collab_op_join, 1 },
    { "leave", ngx_collab_op_leave, 1 },
    { "send", ngx_collab_op_send, 1 },
    { "history", ngx_collab_op_history, 1 },
    { "presence", ngx_collab_op_presence, 1 },
    { "typing", ngx_collab_op_typing, 1 },
    { "invite", ngx_collab_op_invite, 1 },
    { "invitations", ngx_collab_op_invitations, 1 },
    { "accept", ngx_collab_op_accept, 1 },
    { "decline", ngx_collab_op_decline, 1 },
    { "revoke", ngx_collab_op_revoke, 1 },
    { "remove", ngx_collab_op_remove, 1 },
    { "update", ngx_collab_op_update, 1 },
    { "delete", ngx_collab_op_delete, 1 },
    { "ai_cancel", ngx_collab_op_ai_cancel, 1 },
    { "_access", ngx_collab_api_access, 1 },   /* the HTTP API's only */
    { NULL, NULL, 0 }
};


/* the connection */


/*
 * The caller's identity (collab_user, collab_user_name) as a connection
 * state allocated from pool: NGX_OK, or the HTTP status to refuse with.
 */

ngx_int_t
ngx_collab_conn_create(ngx_http_request_t *r, ngx_collab_loc_conf_t *cf,
    ngx_pool_t *pool, ngx_collab_conn_t **connp)
{
    time_t              expires;
    ngx_int_t           rc;
    ngx_str_t           user, name;
    ngx_collab_jwt_t    jwt;
    ngx_collab_conn_t  *conn;

    expires = 0;

    if (cf->jwt_key.len) {
        rc = ngx_collab_token(r, cf, &jwt);

        if (rc != NGX_OK) {
            return rc;
        }

        user.data = jwt.sub;
        user.len = jwt.sub_len;
        name.data = jwt.name;
        name.len = jwt.name_len;
        expires = 0;

        if (jwt.has_exp) {

            /* far enough: the connection's timer looks a year ahead */

            expires = (time_t) ngx_min(jwt.exp, (int64_t) ngx_time()
                                                + 2 * 365 * 24 * 3600);
            expires += (expires == 0);
        }

        goto identified;
    }

    if (cf->user == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "collab: \"collab_user\" is not set for this "
                      "location, refusing the request");
        return NGX_HTTP_UNAUTHORIZED;
    }

    if (ngx_http_complex_value(r, cf->user, &user) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (user.len == 0 || user.len > 256 || !ngx_collab_utf8_valid(&user)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: %s user identity, refusing the request",
                      user.len == 0 ? "no"
                      : (user.len > 256 ? "too long a" : "a non-UTF-8"));
        return NGX_HTTP_UNAUTHORIZED;
    }

    ngx_str_null(&name);

    if (cf->user_name
        && ngx_http_complex_value(r, cf->user_name, &name) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

identified:

    if (name.len > 256 || !ngx_collab_utf8_valid(&name)) {
        name.len = 0;
    }

    conn = ngx_pcalloc(pool, sizeof(ngx_collab_conn_t) + user.len + name.len);
    if (conn == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    conn->user.data = (u_char *) (conn + 1);
    conn->user.len = user.len;
    ngx_memcpy(conn->user.data, user.data, user.len);

    conn->user_name.data = conn->user.data + user.len;
    conn->user_name.len = name.len;

    if (name.len) {
        ngx_memcpy(conn->user_name.data, name.data, name.len);
    }

    ngx_queue_init(&conn->link);
    ngx_queue_init(&conn->members);
    ngx_queue_init(&conn->requests);
    ngx_queue_init(&conn->sends);

    conn->expires = expires;
    conn->pool = pool;

    *connp = conn;

    return NGX_OK;
}


/*
 * collab_jwt_secret_file: the HS256 token from "Authorization: Bearer",
 * the collab_jwt_cookie cookie, or the access_token argument, verified.
 */

static ngx_int_t
ngx_collab_token(ngx_http_request_t *r, ngx_collab_loc_conf_t *cf,
    ngx_collab_jwt_t *jwt)
{
    int                     rc;
    ngx_str_t               token;
    ngx_uint_t              level;
    ngx_collab_jwt_conf_t   jcf;

    ngx_str_null(&token);

    if (r->headers_in.authorization
        && r->headers_in.authorization->value.len > 7
        && ngx_strncasecmp(r->headers_in.authorization->value.data,
                           (u_char *) "Bearer ", 7) == 0)
    {
        token.data = r->headers_in.authorization->value.data + 7;
        token.len = r->headers_in.authorization->value.len - 7;

    } else if (cf->jwt_cookie.len
               && ngx_http_parse_multi_header_lines(&r->headers_in.cookies,
                                                    &cf->jwt_cookie, &token)
                  != NGX_DECLINED)
    {
        /* void */

    } else if (ngx_http_arg(r, (u_char *) "access_token", 12, &token)
               != NGX_OK)
    {
        ngx_str_null(&token);
    }

    if (token.len == 0) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: no token, refusing the request");
        return NGX_HTTP_UNAUTHORIZED;
    }

    jcf.key = cf->jwt_key.data;
    jcf.key_len = cf->jwt_key.len;
    jcf.audience = cf->jwt_audience.len ? (char *) cf->jwt_audience.data
                                        : NULL;
    jcf.issuer = cf->jwt_issuer.len ? (char *) cf->jwt_issuer.data : NULL;
    jcf.now = ngx_time();
    jcf.leeway = cf->jwt_leeway;

    rc = ngx_collab_jwt_verify(&jcf, token.data, token.len, jwt);

    if (rc != NGX_COLLAB_JWT_OK) {
        level = (rc == NGX_COLLAB_JWT_ERROR) ? NGX_LOG_ERR : NGX_LOG_INFO;

        ngx_log_error(level, r->connection->log, 0,
                      "collab: token refused: %s", jwt->error);
        return NGX_HTTP_UNAUTHORIZED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_collab_protocol_upgrade(ngx_http_request_t *r, ngx_collab_ws_t *ws)
{
    time_t              left;
    ngx_int_t           rc;
    ngx_collab_conn_t  *conn;

    /* the request pool goes away after the upgrade: the connection's */

    rc = ngx_collab_conn_create(r, ws->conf, r->connection->pool, &conn);

    if (rc != NGX_OK) {
        return rc;
    }

    conn->ws = ws;
    ws->data = conn;

    /* a token that expires closes the WebSocket with 4001 then */

    if (conn->expires) {
        left = conn->expires + ws->conf->jwt_leeway - ngx_time();

        /* at most a year ahead: exp may be any 64-bit number */

        left = ngx_min(ngx_max(left, 0), 365 * 24 * 3600);

        ws->expires = ngx_current_msec + (ngx_msec_t) left * 1000;
        ws->expires += (ws->expires == 0);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_collab_protocol_open(ngx_collab_ws_t *ws)
{
    ngx_collab_conn_t  *conn;

    conn = ws->data;

    if (ngx_collab_conns.next == NULL) {
        ngx_queue_init(&ngx_collab_conns);
    }

    ngx_queue_insert_tail(&ngx_collab_conns, &conn->link);

    ngx_collab_resolve(conn);

    return NGX_OK;
}


/* an event for a user's connections in this worker */

void
ngx_collab_protocol_user_event(int64_t user, ngx_collab_ws_msg_t *msg)
{
    ngx_queue_t        *q;
    ngx_collab_conn_t  *conn;

    if (ngx_collab_conns.next == NULL) {
        return;
    }

    for (q = ngx_queue_head(&ngx_collab_conns);
         q != ngx_queue_sentinel(&ngx_collab_conns);
         q = ngx_queue_next(q))
    {
        conn = ngx_queue_data(q, ngx_collab_conn_t, link);

        if (conn->user_id == user) {
            (void) ngx_collab_ws_enqueue(conn->ws, msg);
        }
    }
}


/*
 * The user's connections (user 0: all) leave the room, having been sent
 * msg if given.  The room may be freed when its last member goes.
 */

void
ngx_collab_protocol_kick(ngx_collab_room_t *room, int64_t user,
    ngx_collab_ws_msg_t *msg)
{
    ngx_uint_t            last;
    ngx_queue_t          *q, *next;
    ngx_collab_member_t  *m;

    for (q = ngx_queue_head(&room->members);
         q != ngx_queue_sentinel(&room->members);
         q = next)
    {
        next = ngx_queue_next(q);
        m = ngx_queue_data(q, ngx_collab_member_t, room_link);

        if (user && m->user_id != user) {
            continue;
        }

        if (m->joining) {
            m->removed = 1;     /* the join answers ACCESS_DENIED */
            continue;
        }

        if (msg) {
            (void) ngx_collab_ws_enqueue(m->ws, msg);
        }

        last = (room->nmembers == 1);

        ngx_collab_member_remove(m);

        if (last) {
            return;
        }
    }
}


static void
ngx_collab_protocol_close(ngx_collab_ws_t *ws)
{
    ngx_collab_conn_close(ws->data);
}


/* the connection (or API request) goes: what waits for it forgets it */

void
ngx_collab_conn_close(ngx_collab_conn_t *conn)
{
    ngx_queue_t       *q;
    ngx_collab_req_t  *req;

    ngx_queue_remove(&conn->link);

    while (!ngx_queue_empty(&conn->requests)) {
        q = ngx_queue_head(&conn->requests);
        ngx_queue_remove(q);

        req = ngx_queue_data(q, ngx_collab_req_t, link);
        req->conn = NULL;
    }

    while (!ngx_queue_empty(&conn->members)) {
        q = ngx_queue_head(&conn->members);
        ngx_collab_member_remove(ngx_queue_data(q, ngx_collab_member_t,
                                                conn_link));
    }

    ngx_collab_send_detach(conn);

    if (conn->deferred) {
        json_decref(conn->deferred);
        conn->deferred = NULL;
    }
}


static void
ngx_collab_protocol_message(ngx_collab_ws_t *ws, ngx_uint_t opcode,
    u_char *data, size_t len)
{
    json_t             *req;
    ngx_collab_conn_t  *conn;

    conn = ws->data;

    if (opcode != NGX_COLLAB_WS_OP_TEXT) {
        ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_UNSUPPORTED,
                            "collab.v1 is JSON in text frames");
        return;
    }

    req = json_loadb((const char *) data, len, JSON_REJECT_DUPLICATES, NULL);

    if (req == NULL || !json_is_object(req)) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", NULL,
                                  "request is not a JSON object");
        json_decref(req);
        return;
    }

    ngx_collab_protocol_dispatch(conn, req);

    json_decref(req);
}


void
ngx_collab_protocol_dispatch(ngx_collab_conn_t *conn, json_t *req)
{
    json_t           *op, *ref;
    const char       *name;
    ngx_collab_op_t  *o;

    ref = json_object_get(req, "ref");

    if (ref && !json_is_string(ref) && !json_is_integer(ref)) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", NULL,
                                  "\"ref\" must be a string or an integer");
        return;
    }

    op = json_object_get(req, "op");

    if (!json_is_string(op)) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"op\" must be a string");
        return;
    }

    name = json_string_value(op);

    for (o = ngx_collab_ops; o->name; o++) {
        if (ngx_strcmp(o->name, name) == 0) {
            break;
        }
    }

    if (o->name == NULL) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref, "unknown op");
        return;
    }

    if (o->needs_user && conn->user_id == 0) {

        /* served once the user is known */

        if (conn->deferred == NULL) {
            conn->deferred = json_array();
        }

        if (conn->deferred == NULL
            || json_array_size(conn->deferred) >= NGX_COLLAB_DEFERRED_MAX
            || json_array_append(conn->deferred, req) != 0)
        {
            ngx_collab_protocol_error(conn, "UNAVAILABLE", ref,
                                      "too many requests before the "
                                      "user is known");
            return;
        }

        if (!conn->resolving) {
            ngx_collab_resolve(conn);
        }

        return;
    }

    o->handler(conn, req, ref);
}


/* what the site names its users must be text: JSON and PostgreSQL say so */

static ngx_uint_t
ngx_collab_utf8_valid(ngx_str_t *s)
{
    ngx_collab_utf8_t  u;

    ngx_memzero(&u, sizeof(ngx_collab_utf8_t));

    return ngx_collab_utf8_feed(&u, s->data, s->len) == 0
           && ngx_collab_utf8_complete(&u)
           && ngx_strlchr(s->data, s->data + s->len, '\0') == NULL;
}


/* the user row: upserted by external id when the connection opens */


static void
ngx_collab_resolve(ngx_collab_conn_t *conn)
{
    ngx_collab_req_t       *req;
    ngx_collab_pg_query_t  *q;

    req = ngx_collab_req_create(conn, 0, NULL);
    if (req == NULL) {
        ngx_collab_resolved(conn);
        return;
    }

    q = ngx_collab_pg_query_create(ngx_collab_sql_upsert_user, 2,
                                   conn->user.len + conn->user_name.len);
    if (q == NULL) {
        ngx_collab_req_free(req);
        ngx_collab_resolved(conn);
        return;
    }

    (void) ngx_collab_pg_param(q, 0, conn->user.data, conn->user.len);
    (void) ngx_collab_pg_param(q, 1, conn->user_name.len
                                     ? conn->user_name.data : NULL,
                               conn->user_name.len);

    q->handler = ngx_collab_resolve_done;
    q->data = req;

    if (ngx_collab_pg_send(q) != NGX_OK) {
        ngx_collab_req_free(req);
        ngx_collab_resolved(conn);
        return;
    }

    conn->resolving = 1;
}


static void
ngx_collab_resolve_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                 col;
    u_char             *name;
    ngx_collab_req_t   *req;
    ngx_collab_conn_t  *conn;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    conn = req->conn;
    ngx_collab_req_free(req);

    conn->resolving = 0;

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK, conn->ws->connection->log)
        == NGX_OK && PQntuples(res) == 1)
    {
        conn->user_id = ngx_collab_store_int(res, 0, "id");

        /* no name from the site this time: the one stored before */

        col = PQfnumber(res, "display_name");

        if (conn->user_name.len == 0 && col >= 0
            && !PQgetisnull(res, 0, col) && PQgetlength(res, 0, col) <= 256)
        {
            name = ngx_pnalloc(conn->pool, PQgetlength(res, 0, col));

            if (name) {
                conn->user_name.len = PQgetlength(res, 0, col);
                conn->user_name.data = name;
                ngx_memcpy(name, PQgetvalue(res, 0, col),
                           conn->user_name.len);
            }
        }
    }

    ngx_collab_resolved(conn);
}


/* serves the requests that waited for the user, or fails them */

static void
ngx_collab_resolved(ngx_collab_conn_t *conn)
{
    size_t   i, n;
    json_t  *deferred, *r;

    deferred = conn->deferred;
    conn->deferred = NULL;

    if (deferred == NULL) {
        return;
    }

    n = json_array_size(deferred);

    for (i = 0; i < n; i++) {
        r = json_array_get(deferred, i);

        if (conn->user_id) {
            ngx_collab_protocol_dispatch(conn, r);

        } else {
            ngx_collab_protocol_error(conn, "UNAVAILABLE",
                                      json_object_get(r, "ref"),
                                      "the user store is unavailable");
        }
    }

    json_decref(deferred);
}


/* ops */


static void
ngx_collab_op_ping(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_collab_protocol_reply(conn, json_pack("{s:s,s:O?}", "op", "pong",
                                              "ref", ref));
}


static void
ngx_collab_op_create(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    size_t                  i, len, chars, blank;
    int64_t                 max;
    json_t                 *title, *type, *pub;
    ngx_int_t               rc;
    ngx_str_t               trigger;
    const char             *t, *ty;
    ngx_collab_req_t       *cr;
    ngx_collab_pg_query_t  *q;

    title = json_object_get(req, "title");

    if (!json_is_string(title)) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"title\" must be a string");
        return;
    }

    t = json_string_value(title);
    len = json_string_length(title);
    chars = 0;
    blank = 1;

    for (i = 0; i < len; i++) {
        if (((u_char) t[i] & 0xc0) != 0x80) {
            chars++;
        }

        if (t[i] != ' ' && t[i] != '\t' && t[i] != '\n' && t[i] != '\r') {
            blank = 0;
        }
    }

    if (blank || chars > 200) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"title\" must have 1 to 200 characters");
        return;
    }

    type = json_object_get(req, "type");
    ty = "text";

    if (type) {
        ty = json_is_string(type) ? json_string_value(type) : "";

        if (ngx_strcmp(ty, "text") != 0
            && ngx_strcmp(ty, "text-to-image") != 0
            && ngx_strcmp(ty, "image-to-image") != 0)
        {
            ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                      "\"type\" must be \"text\", "
                                      "\"text-to-image\" or "
                                      "\"image-to-image\"");
            return;
        }
    }

    pub = json_object_get(req, "isPublic");

    if (pub && !json_is_boolean(pub)) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"isPublic\" must be a boolean");
        return;
    }

    rc = ngx_collab_get_int(req, "maxParticipants", 1, 100000, &max);

    if (rc == NGX_ERROR) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"maxParticipants\" must be an integer "
                                  "from 1 to 100000");
        return;
    }

    if (ngx_collab_get_ai_trigger(req, &trigger) == NGX_ERROR) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"aiTrigger\" must be \"mention\", "
                                  "\"always\", \"off\" or null");
        return;
    }

    cr = ngx_collab_req_create(conn, 0, ref);
    if (cr == NULL) {
        return;
    }

    q = ngx_collab_pg_query_create(ngx_collab_sql_create_session, 7,
                                   len + 16 + NGX_INT64_LEN * 2 + 5
                                   + conn->user.len + trigger.len);
    if (q == NULL) {
        ngx_collab_req_free(cr);
        return;
    }

    (void) ngx_collab_pg_param(q, 0, (u_char *) t, len);
    (void) ngx_collab_pg_param(q, 1, (u_char *) ty, ngx_strlen(ty));
    (void) ngx_collab_pg_param_int(q, 2, conn->user_id);

    if (rc == NGX_OK) {
        (void) ngx_collab_pg_param_int(q, 3, max);

    } else {
        (void) ngx_collab_pg_param(q, 3, NULL, 0);
    }

    if (json_is_true(pub)) {
        (void) ngx_collab_pg_param(q, 4, (u_char *) "true", 4);

    } else {
        (void) ngx_collab_pg_param(q, 4, (u_char *) "false", 5);
    }

    (void) ngx_collab_pg_param(q, 5, conn->user.data, conn->user.len);
    (void) ngx_collab_pg_param(q, 6, trigger.data, trigger.len);

    (void) ngx_collab_req_send(cr, q, ngx_collab_op_create_done);
}


static void
ngx_collab_op_create_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    ngx_collab_req_t  *req;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    if (ngx_collab_store_is(res, "23514", NULL)) {
        ngx_collab_protocol_error(req->conn, "BAD_REQUEST", req->ref,
                                  "invalid session");

    } else if (ngx_collab_store_ok(res, PGRES_TUPLES_OK,
                                   req->conn->ws->connection->log) != NGX_OK
               || PQntuples(res) != 1)
    {
        ngx_collab_protocol_error(req->conn, "UNAVAILABLE", req->ref,
                                  "the session store is unavailable");

    } else {
        ngx_collab_protocol_reply(req->conn,
                                  json_pack("{s:s,s:O?,s:o}",
                                            "op", "created",
                                            "ref", req->ref,
                                            "session",
                                            ngx_collab_store_session(res, 0)));
    }

    ngx_collab_req_free(req);
}


static void
ngx_collab_op_sessions(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    int64_t                 limit;
    ngx_collab_req_t       *sr;
    ngx_collab_pg_query_t  *q;

    if (ngx_collab_get_int(req, "limit", 1, NGX_COLLAB_SESSIONS_MAX, &limit)
        == NGX_ERROR)
    {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"limit\" must be an integer "
                                  "from 1 to 200");
        return;
    }

    sr = ngx_collab_req_create(conn, 0, ref);
    if (sr == NULL) {
        return;
    }

    q = ngx_collab_pg_query_create(ngx_collab_sql_my_sessions, 2,
                                   2 * NGX_INT64_LEN);
    if (q == NULL) {
        ngx_collab_req_free(sr);
        return;
    }

    (void) ngx_collab_pg_param_int(q, 0, conn->user_id);
    (void) ngx_collab_pg_param_int(q, 1, limit ? limit : 50);

    (void) ngx_collab_req_send(sr, q, ngx_collab_op_sessions_done);
}


static void
ngx_collab_op_sessions_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                i, n;
    json_t            *list, *session;
    ngx_collab_req_t  *req;

    req = ngx_collab_req_rows(q, res, "the session store is unavailable");
    if (req == NULL) {
        return;
    }

    list = json_array();
    n = PQntuples(res);

    for (i = 0; list && i < n; i++) {
        session = ngx_collab_store_session(res, i);

        if (session) {
            json_object_set_new(session, "activeUsers",
                json_integer(ngx_collab_presence_active(
                                 ngx_collab_store_int(res, i, "id"))));
        }

        if (json_array_append_new(list, session)) {
            json_decref(list);
            list = NULL;
        }
    }

    ngx_collab_protocol_reply(req->conn,
                              list ? json_pack("{s:s,s:O?,s:o}",
                                               "op", "sessions",
                                               "ref", req->ref,
                                               "sessions", list)
                                   : NULL);

    ngx_collab_req_free(req);
}


static void
ngx_collab_op_join(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    int64_t                 since;
    ngx_str_t               slug;
    ngx_int_t               rc;
    ngx_collab_req_t       *jr;
    ngx_collab_member_t    *m;
    ngx_collab_pg_query_t  *q;

    if (ngx_collab_session_arg(conn, req, ref, &slug) != NGX_OK) {
        return;
    }

    rc = ngx_collab_get_int(req, "since", 0, INT64_MAX, &since);

    if (rc == NGX_ERROR) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"since\" must be a non-negative integer");
        return;
    }

    m = ngx_collab_member_find(conn, &slug);

    if (m && m->joining) {
        ngx_collab_protocol_error(conn, "CONFLICT", ref,
                                  "a join of this session is in progress");
        return;
    }

    jr = ngx_collab_req_create(conn, 0, ref);
    if (jr == NULL) {
        return;
    }

    jr->since = (rc == NGX_OK) ? since : -1;

    /* the access check runs again on every join: rights may change */

    q = ngx_collab_pg_query_create(ngx_collab_sql_join_session, 2,
                                   slug.len + NGX_INT64_LEN);
    if (q == NULL) {
        ngx_collab_req_free(jr);
        return;
    }

    (void) ngx_collab_pg_param(q, 0, slug.data, slug.len);
    (void) ngx_collab_pg_param_int(q, 1, conn->user_id);

    (void) ngx_collab_req_send(jr, q, ngx_collab_op_join_done);
}


static void
ngx_collab_op_join_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                         col;
    int64_t                     id;
    ngx_str_t                   slug;
    ngx_collab_presence_who_t   who;
    ngx_queue_t          *qq;
    ngx_collab_req_t     *req;
    ngx_collab_conn_t    *conn;
    ngx_collab_room_t    *room;
    ngx_collab_member_t  *m;

    req = ngx_collab_req_rows(q, res, "the session store is unavailable");
    if (req == NULL) {
        return;
    }

    conn = req->conn;

    if (PQntuples(res) != 1) {
        ngx_collab_protocol_error(conn, "NOT_FOUND", req->ref,
                                  "session not found");
        goto done;
    }

    col = PQfnumber(res, "role");

    if (PQgetisnull(res, 0, col)) {
        col = PQfnumber(res, "is_public");

        if (PQgetvalue(res, 0, col)[0] == 't') {
            ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                      "the session is full");

        } else {
            ngx_collab_protocol_error(conn, "ACCESS_DENIED", req->ref,
                                      "not a participant of this session");
        }

        goto done;
    }

    id = ngx_collab_store_int(res, 0, "id");

    /*
     * No client has seen a seq above the session's newest: a larger
     * "since" would hold back every event up to it
     */

    if (req->since > ngx_collab_store_int(res, 0, "last_seq")) {
        req->since = ngx_collab_store_int(res, 0, "last_seq");
    }

    col = PQfnumber(res, "slug");
    slug.data = (u_char *) PQgetvalue(res, 0, col);
    slug.len = PQgetlength(res, 0, col);

    room = ngx_collab_room_get(id, &slug, conn->ws->connection->log);
    if (room == NULL) {
        ngx_collab_protocol_error(conn, "UNAVAILABLE", req->ref,
                                  "out of memory");
        goto done;
    }

    if (room->seq < 0) {
        room->seq = ngx_collab_store_int(res, 0, "last_seq");
    }

    /* what the assistant needs: "update" events keep the trigger fresh */

    room->ai_trigger = ngx_collab_store_ai_trigger(res, 0);
    room->ai_image = ngx_collab_store_ai_image(res, 0);

    m = NULL;

    for (qq = ngx_queue_head(&conn->members);
         qq != ngx_queue_sentinel(&conn->members);
         qq = ngx_queue_next(qq))
    {
        m = ngx_queue_data(qq, ngx_collab_member_t, conn_link);

        if (m->room == room) {
            break;
        }

        m = NULL;
    }

    if (m && m->joining) {
        ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                  "a join of this session is in progress");
        goto done;
    }

    if (m == NULL) {
        m = ngx_collab_member_add(room, conn, conn->ws, &conn->members);
        if (m == NULL) {
            ngx_collab_room_release(room);
            ngx_collab_protocol_error(conn, "UNAVAILABLE", req->ref,
                                      "out of memory");
            goto done;
        }

        m->user_id = conn->user_id;
    }

    if (!m->present && ngx_collab_presence_enabled()) {
        who.session = room->id;
        who.user = conn->user_id;
        who.ext = conn->user;
        who.name = conn->user_name;

        if (ngx_collab_presence_connect(&who, NGX_COLLAB_ONLINE) != NGX_OK) {
            ngx_collab_member_remove(m);
            ngx_collab_protocol_error(conn, "UNAVAILABLE", req->ref,
                                      "presence is unavailable: the "
                                      "collab_zone is full");
            goto done;
        }

        m->present = 1;
        m->status = NGX_COLLAB_ONLINE;

        ngx_collab_redis_presence(room, conn->user_id);
    }

    /*
     * From here the member holds the events committed while the history
     * is read, so that none falls between the two.
     */

    m->joining = 1;
    m->live = 0;
    m->last_seq = req->since > 0 ? req->since : 0;

    req->member = m;
    req->session = ngx_collab_store_session(res, 0);

    if (req->session == NULL || ngx_collab_join_read(req) != NGX_OK) {

        /* a member that failed to catch up is no member: join again */

        ngx_collab_member_remove(m);
        req->member = NULL;

        ngx_collab_protocol_error(conn, "UNAVAILABLE", req->ref,
                                  "the message store is unavailable");
        goto done;
    }

    return;

done:

    ngx_collab_req_free(req);
}


/* the messages a join returns: after "since", or the last ones */

static ngx_int_t
ngx_collab_join_read(ngx_collab_req_t *jr)
{
    ngx_collab_pg_query_t   *q;
    ngx_collab_main_conf_t  *cmcf;

    if (jr->since >= 0) {
        jr->limit = NGX_COLLAB_SINCE_PAGE;

        q = ngx_collab_pg_query_create(ngx_collab_sql_messages_since, 3,
                                       3 * NGX_INT64_LEN);
        if (q == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_collab_pg_param_int(q, 0, jr->member->room->id);
        (void) ngx_collab_pg_param_int(q, 1, jr->since);
        (void) ngx_collab_pg_param_int(q, 2, jr->limit + 1);

    } else {
        cmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                                   ngx_collab_module);
        jr->limit = cmcf->join_history;

        q = ngx_collab_pg_query_create(ngx_collab_sql_history_before, 3,
                                       3 * NGX_INT64_LEN);
        if (q == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_collab_pg_param_int(q, 0, jr->member->room->id);
        (void) ngx_collab_pg_param(q, 1, NULL, 0);
        (void) ngx_collab_pg_param_int(q, 2, jr->limit + 1);
    }

    q->handler = ngx_collab_op_join_read_done;
    q->data = jr;

    return ngx_collab_pg_send(q);
}


static void
ngx_collab_op_join_read_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                   n, first, last;
    json_t               *messages, *last_seq, *reply;
    int64_t               max_seq, session_seq;
    ngx_str_t            *presence;
    ngx_uint_t            more, live;
    ngx_collab_req_t     *req;
    ngx_collab_conn_t    *conn;
    ngx_collab_member_t  *m;
    ngx_collab_ws_msg_t  *msg;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    conn = req->conn;
    m = req->member;
    m->joining = 0;

    if (m->removed) {
        ngx_collab_member_remove(m);

        ngx_collab_protocol_error(conn, "ACCESS_DENIED", req->ref,
                                  "removed from the session");
        ngx_collab_req_free(req);
        return;
    }

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK, conn->ws->connection->log)
        != NGX_OK)
    {
        ngx_collab_member_remove(m);

        ngx_collab_protocol_error(conn, "UNAVAILABLE", req->ref,
                                  "the message store is unavailable");
        ngx_collab_req_free(req);
        return;
    }

    n = PQntuples(res);
    more = (ngx_uint_t) n > req->limit;

    /* since: the extra row is the last; last N: the first (oldest) */

    first = (more && req->since < 0) ? 1 : 0;
    last = more ? (int) req->limit + first : n;

    max_seq = req->since > 0 ? req->since : 0;

    messages = ngx_collab_messages(res, first, last, &max_seq);

    if (req->since >= 0) {
        live = ngx_collab_member_advance(m, max_seq, more);
        more = !live;

    } else {
        live = ngx_collab_member_advance(m, max_seq, 0);
    }

    last_seq = json_object_get(req->session, "lastSeq");
    session_seq = json_integer_value(last_seq);

    presence = ngx_collab_presence_joined(m->room);

    reply = (messages && presence)
            ? json_pack("{s:s,s:O?,s:O,s:I,s:o,s:b}",
                        "op", "joined",
                        "ref", req->ref,
                        "session", req->session,
                        "lastSeq", (json_int_t) ngx_max(session_seq, max_seq),
                        "messages", messages,
                        "more", (int) more)
            : NULL;

    if (reply == NULL && messages && presence == NULL) {
        json_decref(messages);
    }

    /* the presence list comes serialized: spliced in as the last member */

    msg = reply ? ngx_collab_protocol_encode_with(reply, "presence", presence,
                                                  conn->ws->connection->log)
                : NULL;

    json_decref(reply);

    if (msg) {
        (void) ngx_collab_ws_enqueue(conn->ws, msg);
        ngx_collab_ws_msg_release(msg);

    } else {
        ngx_collab_ws_close(conn->ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                            "out of memory");
    }

    if (live) {
        ngx_collab_member_live(m);
    }

    ngx_collab_req_free(req);
}


static void
ngx_collab_op_leave(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_str_t             slug;
    ngx_collab_member_t  *m;

    if (ngx_collab_session_arg(conn, req, ref, &slug) != NGX_OK) {
        return;
    }

    m = ngx_collab_member_find(conn, &slug);

    if (m == NULL) {
        ngx_collab_protocol_error(conn, "NOT_FOUND", ref,
                                  "not joined to this session");
        return;
    }

    if (m->joining) {
        ngx_collab_protocol_error(conn, "CONFLICT", ref,
                                  "a join of this session is in progress");
        return;
    }

    ngx_collab_member_remove(m);

    ngx_collab_protocol_reply(conn, json_pack("{s:s,s:O?,s:s%}",
                                              "op", "left", "ref", ref,
                                              "session", slug.data,
                                              slug.len));
}


static void
ngx_collab_op_send(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    size_t                i, chars;
    json_t               *body, *cmid;
    ngx_str_t             slug, b, id, image;
    ngx_int_t             rc;
    ngx_collab_member_t  *m;

    if (ngx_collab_session_arg(conn, req, ref, &slug) != NGX_OK) {
        return;
    }

    body = json_object_get(req, "body");

    if (!json_is_string(body) || json_string_length(body) == 0) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"body\" must be a non-empty string");
        return;
    }

    if (json_string_length(body) > conn->ws->conf->max_body_size) {
        ngx_collab_protocol_error(conn, "TOO_LARGE", ref,
                                  "\"body\" is larger than "
                                  "collab_max_body_size");
        return;
    }

    cmid = json_object_get(req, "clientMsgId");

    if (!json_is_string(cmid)) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"clientMsgId\" must be a string");
        return;
    }

    id.data = (u_char *) json_string_value(cmid);
    id.len = json_string_length(cmid);

    for (i = 0, chars = 0; i < id.len; i++) {
        if ((id.data[i] & 0xc0) != 0x80) {
            chars++;
        }
    }

    if (chars == 0 || chars > 128) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"clientMsgId\" must have 1 to 128 "
                                  "characters");
        return;
    }

    if (ngx_collab_send_image(req, &image) != NGX_OK) {
        ngx_collab_protocol_error(conn, "BAD_IMAGE", ref,
                                  "\"image\" must be a data:image/png, "
                                  "image/jpeg or image/webp base64 URL");
        return;
    }

    m = ngx_collab_member_find(conn, &slug);

    if (m == NULL) {
        ngx_collab_protocol_error(conn, "ACCESS_DENIED", ref,
                                  "join the session before sending");
        return;
    }

    if (ngx_collab_limited(conn, ref, NGX_COLLAB_RATE_MESSAGES)) {
        return;
    }

    /* a message sent ends its author's typing */

    if (ngx_collab_presence_typing(m->room->id, conn->user_id, 0)) {
        ngx_collab_redis_presence(m->room, conn->user_id);
    }

    b.data = (u_char *) json_string_value(body);
    b.len = json_string_length(body);

    rc = ngx_collab_send(conn, m->room, ref, &b, &id, &image);

    switch (rc) {

    case NGX_OK:
        return;

    case NGX_BUSY:
        ngx_collab_protocol_error(conn, "RATE_LIMITED", ref,
                                  "too many sends are waiting for their ack");
        return;

    default:
        ngx_collab_protocol_error(conn, "UNAVAILABLE", ref,
                                  "the message store is unavailable");
        return;
    }
}


static void
ngx_collab_op_history(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    int64_t                 before, limit;
    ngx_str_t               slug;
    ngx_int_t               rc;
    ngx_collab_req_t       *hr;
    ngx_collab_member_t    *m;
    ngx_collab_pg_query_t  *q;

    if (ngx_collab_session_arg(conn, req, ref, &slug) != NGX_OK) {
        return;
    }

    rc = ngx_collab_get_int(req, "before", 1, INT64_MAX, &before);

    if (rc == NGX_ERROR) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"before\" must be a positive integer");
        return;
    }

    if (ngx_collab_get_int(req, "limit", 1, NGX_COLLAB_HISTORY_MAX, &limit)
        == NGX_ERROR)
    {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"limit\" must be an integer "
                                  "from 1 to 200");
        return;
    }

    m = ngx_collab_member_find(conn, &slug);

    if (m == NULL) {
        ngx_collab_protocol_error(conn, "ACCESS_DENIED", ref,
                                  "join the session before reading it");
        return;
    }

    hr = ngx_collab_req_create(conn, 0, ref);
    if (hr == NULL) {
        return;
    }

    hr->limit = limit ? limit : 50;
    hr->since = -1;

    q = ngx_collab_pg_query_create(ngx_collab_sql_history_before, 3,
                                   3 * NGX_INT64_LEN);
    if (q == NULL) {
        ngx_collab_req_free(hr);
        return;
    }

    (void) ngx_collab_pg_param_int(q, 0, m->room->id);

    if (rc == NGX_OK) {
        (void) ngx_collab_pg_param_int(q, 1, before);

    } else {
        (void) ngx_collab_pg_param(q, 1, NULL, 0);
    }

    (void) ngx_collab_pg_param_int(q, 2, hr->limit + 1);

    hr->session = json_stringn((char *) slug.data, slug.len);

    (void) ngx_collab_req_send(hr, q, ngx_collab_op_history_done);
}


static void
ngx_collab_op_history_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                n;
    json_t            *messages;
    int64_t            max_seq;
    ngx_uint_t         more;
    ngx_collab_req_t  *req;

    req = ngx_collab_req_rows(q, res, "the message store is unavailable");
    if (req == NULL) {
        return;
    }

    n = PQntuples(res);
    more = (ngx_uint_t) n > req->limit;
    max_seq = 0;

    messages = ngx_collab_messages(res, more ? 1 : 0, n, &max_seq);

    ngx_collab_protocol_reply(req->conn,
                              messages
                              ? json_pack("{s:s,s:O?,s:O,s:o,s:b}",
                                          "op", "history",
                                          "ref", req->ref,
                                          "session", req->session,
                                          "messages", messages,
                                          "more", (int) more)
                              : NULL);

    ngx_collab_req_free(req);
}


/*
 * presence and typing: the connection's member of the session, present
 * in the zone and within collab_rate_presence; or NULL, answered
 */

static ngx_collab_member_t *
ngx_collab_presence_member(ngx_collab_conn_t *conn, ngx_str_t *slug,
    json_t *ref)
{
    ngx_collab_member_t  *m;

    m = ngx_collab_member_find(conn, slug);

    if (m == NULL) {
        ngx_collab_protocol_error(conn, "ACCESS_DENIED", ref,
                                  "join the session first");
        return NULL;
    }

    if (!m->present) {
        ngx_collab_protocol_error(conn, "UNAVAILABLE", ref,
                                  "presence needs collab_zone");
        return NULL;
    }

    if (ngx_collab_limited(conn, ref, NGX_COLLAB_RATE_PRESENCE)) {
        return NULL;
    }

    return m;
}


static void
ngx_collab_op_presence(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    json_t               *st;
    ngx_str_t             slug;
    ngx_uint_t            status;
    const char           *s;
    ngx_collab_member_t  *m;

    if (ngx_collab_session_arg(conn, req, ref, &slug) != NGX_OK) {
        return;
    }

    st = json_object_get(req, "status");
    s = json_is_string(st) ? json_string_value(st) : "";

    if (ngx_strcmp(s, "online") == 0) {
        status = NGX_COLLAB_ONLINE;

    } else if (ngx_strcmp(s, "away") == 0) {
        status = NGX_COLLAB_AWAY;

    } else {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"status\" must be \"online\" or "
                                  "\"away\"");
        return;
    }

    m = ngx_collab_presence_member(conn, &slug, ref);
    if (m == NULL) {
        return;
    }

    ngx_collab_presence_status(m->room->id, conn->user_id, m->status,
                               status);
    m->status = status;

    ngx_collab_redis_presence(m->room, conn->user_id);
}


static void
ngx_collab_op_typing(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    json_t               *on;
    ngx_str_t             slug;
    ngx_collab_member_t  *m;

    if (ngx_collab_session_arg(conn, req, ref, &slug) != NGX_OK) {
        return;
    }

    on = json_object_get(req, "on");

    if (!json_is_boolean(on)) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"on\" must be a boolean");
        return;
    }

    m = ngx_collab_presence_member(conn, &slug, ref);
    if (m == NULL) {
        return;
    }

    if (ngx_collab_presence_typing(m->room->id, conn->user_id,
                                   json_is_true(on)))
    {
        ngx_collab_redis_presence(m->room, conn->user_id);
    }
}


/* stops the session's AI reply (on the worker making it) */

static void
ngx_collab_op_ai_cancel(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_str_t             slug;
    ngx_collab_member_t  *m;

    if (ngx_collab_session_arg(conn, req, ref, &slug) != NGX_OK) {
        return;
    }

    m = ngx_collab_member_find(conn, &slug);

    if (m == NULL) {
        ngx_collab_protocol_error(conn, "ACCESS_DENIED", ref,
                                  "join the session first");
        return;
    }

    if (ngx_collab_ai_cancel(m->room) != NGX_OK) {
        ngx_collab_protocol_error(conn, "NOT_FOUND", ref,
                                  "no reply of the assistant is being "
                                  "made here");
        return;
    }

    ngx_collab_protocol_reply(conn, json_pack("{s:s,s:O?,s:s%}",
                                              "op", "ai_cancelled",
                                              "ref", ref,
                                              "session", slug.data,
                                              slug.len));
}


/* RATE_LIMITED with retryAfter (ms) when the user's bucket is empty */

static ngx_int_t
ngx_collab_limited(ngx_collab_conn_t *conn, json_t *ref, ngx_uint_t kind)
{
    ngx_msec_t  delay;

    delay = ngx_collab_presence_limit(conn->user_id, kind);

    if (delay == 0) {
        return 0;
    }

    ngx_collab_protocol_reply(conn,
                              json_pack("{s:s,s:s,s:O?,s:s,s:I}",
                                        "op", "error",
                                        "code", "RATE_LIMITED",
                                        "ref", ref,
                                        "message",
                                        kind == NGX_COLLAB_RATE_MESSAGES
                                        ? "too many messages"
                                        : "too many presence updates",
                                        "retryAfter", (json_int_t) delay));
    return 1;
}


/* requests in flight */


ngx_collab_req_t *
ngx_collab_req_create(ngx_collab_conn_t *conn, ngx_uint_t op, json_t *ref)
{
    ngx_collab_req_t  *req;

    req = ngx_alloc(sizeof(ngx_collab_req_t), conn->ws->connection->log);
    if (req == NULL) {
        ngx_collab_protocol_error(conn, "UNAVAILABLE", ref, "out of memory");
        return NULL;
    }

    ngx_memzero(req, sizeof(ngx_collab_req_t));

    req->conn = conn;
    req->op = op;
    req->ref = ref ? json_incref(ref) : NULL;
    req->since = -1;

    ngx_queue_insert_tail(&conn->requests, &req->link);

    return req;
}


void
ngx_collab_req_free(ngx_collab_req_t *req)
{
    if (req->conn) {
        ngx_queue_remove(&req->link);
    }

    if (req->ref) {
        json_decref(req->ref);
    }

    if (req->session) {
        json_decref(req->session);
    }

    ngx_free(req);
}


/* sends the query for the request; on failure answers UNAVAILABLE */

ngx_int_t
ngx_collab_req_send(ngx_collab_req_t *req, ngx_collab_pg_query_t *q,
    ngx_collab_pg_handler_pt handler)
{
    ngx_int_t  rc;

    q->handler = handler;
    q->data = req;

    rc = ngx_collab_pg_send(q);

    if (rc != NGX_OK) {
        ngx_collab_protocol_error(req->conn, "UNAVAILABLE", req->ref,
                                  rc == NGX_BUSY
                                  ? "the database is overloaded"
                                  : "the database is unavailable");
        ngx_collab_req_free(req);
    }

    return rc;
}


/* the request of a finished query, or NULL if its connection is gone */

ngx_collab_req_t *
ngx_collab_req_result(ngx_collab_pg_query_t *q, PGresult *res)
{
    ngx_collab_req_t  *req;

    req = q->data;

    if (req->conn == NULL) {
        ngx_collab_req_free(req);
        return NULL;
    }

    return req;
}


/*
 * The request of a finished query that reads rows, or NULL: its
 * connection is gone, or the query failed and UNAVAILABLE (with the
 * message given) has been answered; the request is freed then.
 */

ngx_collab_req_t *
ngx_collab_req_rows(ngx_collab_pg_query_t *q, PGresult *res,
    const char *unavailable)
{
    ngx_collab_req_t  *req;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return NULL;
    }

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK,
                            req->conn->ws->connection->log)
        != NGX_OK)
    {
        ngx_collab_protocol_error(req->conn, "UNAVAILABLE", req->ref,
                                  unavailable);
        ngx_collab_req_free(req);
        return NULL;
    }

    return req;
}


/* helpers */


static json_t *
ngx_collab_messages(PGresult *res, int first, int last, int64_t *max_seq)
{
    int       i;
    int64_t   seq;
    json_t   *list;

    list = json_array();
    if (list == NULL) {
        return NULL;
    }

    for (i = first; i < last; i++) {
        seq = ngx_collab_store_int(res, i, "seq");

        if (seq > *max_seq) {
            *max_seq = seq;
        }

        if (json_array_append_new(list, ngx_collab_store_message(res, i))) {
            json_decref(list);
            return NULL;
        }
    }

    return list;
}


/* "session": a slug, 1 to 64 URL-safe characters */

ngx_int_t
ngx_collab_slug(json_t *req, ngx_str_t *slug)
{
    u_char   c;
    size_t   i;
    json_t  *s;

    s = json_object_get(req, "session");

    if (!json_is_string(s)) {
        return NGX_ERROR;
    }

    slug->data = (u_char *) json_string_value(s);
    slug->len = json_string_length(s);

    if (slug->len == 0 || slug->len > 64) {
        return NGX_ERROR;
    }

    for (i = 0; i < slug->len; i++) {
        c = slug->data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '-' || c == '_'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* an op's "session", or NGX_ERROR once BAD_REQUEST has been answered */

ngx_int_t
ngx_collab_session_arg(ngx_collab_conn_t *conn, json_t *req, json_t *ref,
    ngx_str_t *slug)
{
    if (ngx_collab_slug(req, slug) == NGX_OK) {
        return NGX_OK;
    }

    ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                              "\"session\" must be a session id");

    return NGX_ERROR;
}


ngx_collab_member_t *
ngx_collab_member_find(ngx_collab_conn_t *conn, ngx_str_t *slug)
{
    ngx_queue_t          *q;
    ngx_collab_member_t  *m;

    for (q = ngx_queue_head(&conn->members);
         q != ngx_queue_sentinel(&conn->members);
         q = ngx_queue_next(q))
    {
        m = ngx_queue_data(q, ngx_collab_member_t, conn_link);

        if (m->room->slug.len == slug->len
            && ngx_strncmp(m->room->slug.data, slug->data, slug->len) == 0)
        {
            return m;
        }
    }

    return NULL;
}


/* NGX_OK: set; NGX_DECLINED: absent or null (*value = 0); NGX_ERROR */

ngx_int_t
ngx_collab_get_int(json_t *req, const char *name, int64_t min, int64_t max,
    int64_t *value)
{
    json_t      *v;
    json_int_t   n;

    *value = 0;

    v = json_object_get(req, name);

    if (v == NULL || json_is_null(v)) {
        return NGX_DECLINED;
    }

    if (!json_is_integer(v)) {
        return NGX_ERROR;
    }

    n = json_integer_value(v);

    if (n < min || n > max) {
        return NGX_ERROR;
    }

    *value = n;

    return NGX_OK;
}


/*
 * "aiTrigger": NGX_OK: "mention", "always" or "off" (*value points into
 * the request); NGX_DONE: null (the server's collab_ai_trigger);
 * NGX_DECLINED: absent; NGX_ERROR: anything else
 */

ngx_int_t
ngx_collab_get_ai_trigger(json_t *req, ngx_str_t *value)
{
    json_t  *v;

    ngx_str_null(value);

    v = json_object_get(req, "aiTrigger");

    if (v == NULL) {
        return NGX_DECLINED;
    }

    if (json_is_null(v)) {
        return NGX_DONE;
    }

    if (!json_is_string(v)
        || ngx_collab_ai_trigger_value((u_char *) json_string_value(v),
                                       json_string_length(v))
           == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    value->data = (u_char *) json_string_value(v);
    value->len = json_string_length(v);

    return NGX_OK;
}


/* replies */


void
ngx_collab_protocol_error(ngx_collab_conn_t *conn, const char *code,
    json_t *ref, const char *message)
{
    ngx_collab_protocol_reply(conn, json_pack("{s:s,s:s,s:O?,s:s}",
                                              "op", "error",
                                              "code", code,
                                              "ref", ref,
                                              "message", message));
}


/* queues a reply on the connection; takes the reference to reply */

void
ngx_collab_protocol_reply(ngx_collab_conn_t *conn, json_t *reply)
{
    ngx_collab_ws_msg_t  *msg;

    if (conn->api) {
        ngx_collab_api_reply(conn, reply);
        return;
    }

    if (reply == NULL) {
        ngx_collab_ws_close(conn->ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                            "out of memory");
        return;
    }

    msg = ngx_collab_protocol_encode(reply, conn->ws->connection->log);
    json_decref(reply);

    if (msg == NULL) {
        ngx_collab_ws_close(conn->ws, NGX_COLLAB_WS_CLOSE_INTERNAL,
                            "out of memory");
        return;
    }

    (void) ngx_collab_ws_enqueue(conn->ws, msg);
    ngx_collab_ws_msg_release(msg);
}


/*
 * An object with one more member whose value is JSON already serialized:
 * {..., "key": raw}.  The object is never empty (it has "op").
 */

ngx_collab_ws_msg_t *
ngx_collab_protocol_encode_with(json_t *object, const char *key,
    ngx_str_t *raw, ngx_log_t *log)
{
    u_char               *p;
    size_t                len;
    ngx_collab_ws_msg_t  *msg;

    len = json_dumpb(object, NULL, 0, NGX_COLLAB_JSON_FLAGS);
    if (len < 2) {
        return NULL;
    }

    msg = ngx_collab_ws_msg_alloc(NGX_COLLAB_WS_OP_TEXT,
                                  len + sizeof(",\"\":") - 1
                                  + ngx_strlen(key) + raw->len,
                                  log);
    if (msg == NULL) {
        return NULL;
    }

    (void) json_dumpb(object, (char *) msg->payload, len,
                      NGX_COLLAB_JSON_FLAGS);

    /* over the closing brace */

    p = msg->payload + len - 1;
    (void) ngx_sprintf(p, ",\"%s\":%V}", key, raw);

    return msg;
}


/* serializes an event once, straight into a text frame */

ngx_collab_ws_msg_t *
ngx_collab_protocol_encode(json_t *event, ngx_log_t *log)
{
    size_t                len;
    ngx_collab_ws_msg_t  *msg;

    len = json_dumpb(event, NULL, 0, NGX_COLLAB_JSON_FLAGS);
    if (len == 0) {
        return NULL;
    }

    msg = ngx_collab_ws_msg_alloc(NGX_COLLAB_WS_OP_TEXT, len, log);
    if (msg == NULL) {
        return NULL;
    }

    (void) json_dumpb(event, (char *) msg->payload, len, NGX_COLLAB_JSON_FLAGS);

    return msg;
}
