
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The HTTP JSON API (collab_api; docs/API.md): the same store, identity,
 * rules and error codes as the WebSocket, for servers (a Next.js server
 * action) and for clients without a socket.
 *
 * A request becomes the collab.v1 op it stands for and goes through the
 * same code as a WebSocket request: an ngx_collab_conn_t is made for it
 * from the request's pool, with ->api set, and ngx_collab_protocol_reply()
 * hands its one reply back here, where it becomes the response: the
 * reply's JSON as the body, the error code mapped to an HTTP status.  The
 * routes that read or post a session's messages and presence check the
 * caller's access first, as join does, without joining.  Nothing waits:
 * the handler keeps the request (r->main->count) until the reply comes.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_collab.h"
#include "ngx_collab_pg.h"
#include "ngx_collab_store.h"
#include "ngx_collab_room.h"
#include "ngx_collab_send.h"
#include "ngx_collab_presence.h"
#include "ngx_collab_protocol.h"
#include "ngx_collab_api.h"


typedef enum {
    NGX_COLLAB_API_SESSION = 1,
    NGX_COLLAB_API_MESSAGES,
    NGX_COLLAB_API_POST,
    NGX_COLLAB_API_PRESENCE
} ngx_collab_api_route_e;


typedef struct {
    ngx_collab_conn_t          *conn;
    ngx_http_request_t         *r;
    ngx_collab_ws_t             ws;            /* the ops' log and conf */
    ngx_collab_api_route_e      route;
    json_t                     *req;
    ngx_event_t                 finish;        /* finalizes after the op */
    ngx_int_t                   rc;
    unsigned                    replied:1;
} ngx_collab_api_t;


static void ngx_collab_api_body(ngx_http_request_t *r);
static ngx_int_t ngx_collab_api_route(ngx_collab_api_t *api, json_t *body);
static void ngx_collab_api_cleanup(void *data);
static void ngx_collab_api_finish(ngx_event_t *ev);
static ngx_int_t ngx_collab_api_fail(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);
static ngx_int_t ngx_collab_api_send(ngx_http_request_t *r,
    ngx_uint_t status, json_t *reply);
static void ngx_collab_api_access_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_api_read_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static ngx_int_t ngx_collab_api_arg(ngx_http_request_t *r, char *name,
    int64_t min, int64_t max, int64_t *value);
static ngx_int_t ngx_collab_api_segment(ngx_str_t *path, ngx_str_t *seg);
static size_t ngx_collab_api_chars(json_t *s);


static struct {
    const char                 *code;
    ngx_uint_t                  status;
} ngx_collab_api_codes[] = {
    { "BAD_REQUEST", NGX_HTTP_BAD_REQUEST },
    { "BAD_IMAGE", NGX_HTTP_BAD_REQUEST },
    { "UNAUTHORIZED", NGX_HTTP_UNAUTHORIZED },
    { "ACCESS_DENIED", NGX_HTTP_FORBIDDEN },
    { "NOT_FOUND", NGX_HTTP_NOT_FOUND },
    { "CONFLICT", NGX_HTTP_CONFLICT },
    { "TOO_LARGE", NGX_HTTP_REQUEST_ENTITY_TOO_LARGE },
    { "RATE_LIMITED", 429 },
    { "UNAVAILABLE", NGX_HTTP_SERVICE_UNAVAILABLE },
    { NULL, 0 }
};


ngx_int_t
ngx_collab_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_str_t               *type;
    ngx_collab_api_t        *api;
    ngx_collab_conn_t       *conn;
    ngx_pool_cleanup_t      *cln;
    ngx_collab_loc_conf_t   *cf;

    cf = ngx_http_get_module_loc_conf(r, ngx_collab_module);

    rc = ngx_collab_conn_create(r, cf, r->pool, &conn);

    if (rc == NGX_HTTP_UNAUTHORIZED) {
        return ngx_collab_api_fail(r, rc, "UNAUTHORIZED",
                                   "no user identity");
    }

    if (rc != NGX_OK) {
        return rc;
    }

    api = ngx_pcalloc(r->pool, sizeof(ngx_collab_api_t));
    if (api == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    api->conn = conn;
    api->r = r;
    api->ws.connection = r->connection;
    api->ws.conf = cf;
    api->ws.data = conn;

    conn->ws = &api->ws;
    conn->api = api;

    cln->handler = ngx_collab_api_cleanup;
    cln->data = api;

    ngx_http_set_ctx(r, api, ngx_collab_module);

    if (r->method & (NGX_HTTP_POST|NGX_HTTP_PATCH)) {

        type = r->headers_in.content_type ? &r->headers_in.content_type->value
                                          : NULL;

        if (type == NULL
            || type->len < sizeof("application/json") - 1
            || ngx_strncasecmp(type->data, (u_char *) "application/json",
                               sizeof("application/json") - 1) != 0)
        {
            if (ngx_http_discard_request_body(r) != NGX_OK) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            return ngx_collab_api_fail(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                       "BAD_REQUEST",
                                       "the body must be application/json");
        }

        /* the body is small: keep it in memory, never in a file */

        r->request_body_in_single_buf = 1;

        rc = ngx_http_read_client_request_body(r, ngx_collab_api_body);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    rc = ngx_collab_api_route(api, NULL);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    return NGX_DONE;
}


static void
ngx_collab_api_body(ngx_http_request_t *r)
{
    u_char            *p, *last;
    off_t              len;
    json_t            *body;
    ngx_int_t          rc;
    ngx_buf_t         *b;
    ngx_chain_t       *cl;
    ngx_collab_api_t  *api;

    api = ngx_http_get_module_ctx(r, ngx_collab_module);

    body = NULL;

    if (r->request_body && r->request_body->temp_file) {
        ngx_http_finalize_request(r,
            ngx_collab_api_fail(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                "TOO_LARGE", "the body is too large "
                                "(client_body_buffer_size)"));
        return;
    }

    if (r->request_body && r->request_body->bufs) {

        /* the body may come in two buffers: the header's and its own */

        len = 0;

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            len += ngx_buf_size(cl->buf);
        }

        p = ngx_pnalloc(r->pool, len + 1);
        if (p == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        last = p;

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b = cl->buf;

            if (b->last > b->pos) {
                last = ngx_cpymem(last, b->pos, b->last - b->pos);
            }
        }

        body = json_loadb((char *) p, last - p, JSON_REJECT_DUPLICATES,
                          NULL);
    }

    if (body == NULL || !json_is_object(body)) {
        json_decref(body);
        ngx_http_finalize_request(r,
            ngx_collab_api_fail(r, NGX_HTTP_BAD_REQUEST, "BAD_REQUEST",
                                "the body is not a JSON object"));
        return;
    }

    rc = ngx_collab_api_route(api, body);

    json_decref(body);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


/*
 * The request as a collab.v1 op.  NGX_DONE: the op runs and will reply;
 * otherwise what to finalize the request with.
 */

static ngx_int_t
ngx_collab_api_route(ngx_collab_api_t *api, json_t *body)
{
    u_char              *p;
    int64_t              n;
    json_t              *req;
    ngx_str_t            path, a, b, c, d;
    ngx_uint_t           m;
    ngx_table_elt_t     *h;
    const char          *allow;
    ngx_http_request_t  *r;

    r = api->r;
    m = r->method;
    path = r->uri;

    /* the routes are the last segments of the URI, whatever the prefix */

    ngx_str_null(&a);
    ngx_str_null(&b);
    ngx_str_null(&c);
    ngx_str_null(&d);

    while (ngx_collab_api_segment(&path, &a) == NGX_OK) {
        if ((a.len == 8 && ngx_strncmp(a.data, "sessions", 8) == 0)
            || (a.len == 11 && ngx_strncmp(a.data, "invitations", 11) == 0))
        {
            break;
        }

        ngx_str_null(&a);
    }

    (void) ngx_collab_api_segment(&path, &b);
    (void) ngx_collab_api_segment(&path, &c);
    (void) ngx_collab_api_segment(&path, &d);

    /* a participant's id may hold an escaped "/": see below */

    if (a.len == 0
        || (path.len
            && !(c.len == 12 && ngx_strncmp(c.data, "participants", 12) == 0)))
    {
        goto not_found;
    }

    req = body ? json_deep_copy(body) : json_object();
    if (req == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_del(req, "op");
    json_object_del(req, "ref");

    if (a.data[0] == 'i') {

        /* /invitations, /invitations/{id}/accept|decline|revoke */

        if (b.len == 0) {
            if (m != NGX_HTTP_GET) {
                json_decref(req);
                allow = "GET";
                goto not_allowed;
            }

            json_object_set_new(req, "op", json_string("invitations"));
            goto dispatch;
        }

        n = ngx_atoof(b.data, b.len);

        if (n <= 0 || d.len
            || !((c.len == 6 && ngx_strncmp(c.data, "accept", 6) == 0)
                 || (c.len == 7 && ngx_strncmp(c.data, "decline", 7) == 0)
                 || (c.len == 6 && ngx_strncmp(c.data, "revoke", 6) == 0)))
        {
            json_decref(req);
            goto not_found;
        }

        if (m != NGX_HTTP_POST) {
            json_decref(req);
            allow = "POST";
            goto not_allowed;
        }

        json_object_set_new(req, "op", json_stringn((char *) c.data, c.len));
        json_object_set_new(req, "invitation", json_integer(n));
        goto dispatch;
    }

    if (b.len == 0) {

        /* /sessions */

        if (m == NGX_HTTP_GET) {
            json_object_set_new(req, "op", json_string("sessions"));

            if (ngx_collab_api_arg(r, "limit", 1, 200, &n) == NGX_OK) {
                json_object_set_new(req, "limit", json_integer(n));
            }

            goto dispatch;
        }

        if (m == NGX_HTTP_POST) {
            json_object_set_new(req, "op", json_string("create"));
            goto dispatch;
        }

        json_decref(req);
        allow = "GET, POST";
        goto not_allowed;
    }

    json_object_set_new(req, "session", json_stringn((char *) b.data, b.len));

    if (c.len == 0) {

        /* /sessions/{id} */

        switch (m) {

        case NGX_HTTP_GET:
            api->route = NGX_COLLAB_API_SESSION;
            json_object_set_new(req, "op", json_string("_access"));
            goto dispatch;

        case NGX_HTTP_PATCH:
            json_object_set_new(req, "op", json_string("update"));
            goto dispatch;

        case NGX_HTTP_DELETE:
            json_object_set_new(req, "op", json_string("delete"));
            goto dispatch;

        default:
            json_decref(req);
            allow = "GET, PATCH, DELETE";
            goto not_allowed;
        }
    }

    if (c.len == 8 && ngx_strncmp(c.data, "messages", 8) == 0 && d.len == 0) {
        api->route = (m == NGX_HTTP_POST) ? NGX_COLLAB_API_POST
                                          : NGX_COLLAB_API_MESSAGES;

        if (m != NGX_HTTP_POST && m != NGX_HTTP_GET) {
            json_decref(req);
            allow = "GET, POST";
            goto not_allowed;
        }

        json_object_set_new(req, "op", json_string("_access"));
        goto dispatch;
    }

    if (c.len == 8 && ngx_strncmp(c.data, "presence", 8) == 0 && d.len == 0)
    {
        if (m != NGX_HTTP_GET) {
            json_decref(req);
            allow = "GET";
            goto not_allowed;
        }

        api->route = NGX_COLLAB_API_PRESENCE;
        json_object_set_new(req, "op", json_string("_access"));
        goto dispatch;
    }

    if (c.len == 11 && ngx_strncmp(c.data, "invitations", 11) == 0
        && d.len == 0)
    {
        if (m == NGX_HTTP_GET) {
            json_object_set_new(req, "op", json_string("invitations"));
            goto dispatch;
        }

        if (m == NGX_HTTP_POST) {
            json_object_set_new(req, "op", json_string("invite"));
            goto dispatch;
        }

        json_decref(req);
        allow = "GET, POST";
        goto not_allowed;
    }

    if (c.len == 12 && ngx_strncmp(c.data, "participants", 12) == 0
        && d.len)
    {
        if (m != NGX_HTTP_DELETE) {
            json_decref(req);
            allow = "DELETE";
            goto not_allowed;
        }

        /*
         * r->uri is decoded already, "/" and "%" included: the user id is
         * taken from the raw URI's last segment and decoded once
         */

        a = r->unparsed_uri;

        for (p = a.data; p < a.data + a.len && *p != '?'; p++) {
            /* void */
        }

        a.len = p - a.data;

        while (p > a.data && p[-1] != '/') {
            p--;
        }

        d.data = p;
        d.len = a.data + a.len - p;

        a.data = ngx_pnalloc(r->pool, d.len);
        if (a.data == NULL) {
            json_decref(req);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        c.data = a.data;
        ngx_unescape_uri(&c.data, &d.data, d.len, 0);

        json_object_set_new(req, "op", json_string("remove"));
        json_object_set_new(req, "user",
                            json_stringn((char *) a.data, c.data - a.data));
        goto dispatch;
    }

    json_decref(req);

not_found:

    return ngx_collab_api_fail(r, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                               "no such route");

not_allowed:

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value.data = (u_char *) allow;
    h->value.len = ngx_strlen(allow);

    return ngx_collab_api_fail(r, NGX_HTTP_NOT_ALLOWED, "BAD_REQUEST",
                               "method not allowed on this route");

dispatch:

    api->req = req;

    ngx_collab_protocol_dispatch(api->conn, req);

    return NGX_DONE;
}


/* the one reply of the op: the response */

void
ngx_collab_api_reply(ngx_collab_conn_t *conn, json_t *reply)
{
    json_t            *op, *code;
    ngx_uint_t         i, status;
    const char        *s;
    ngx_collab_api_t  *api;

    api = conn->api;

    if (api->replied || api->r == NULL) {
        json_decref(reply);
        return;
    }

    api->replied = 1;

    /*
     * The request is finalized from a posted event, not here: the op
     * that replied may still read its conn (made from the request's
     * pool) before it returns.
     */

    api->finish.handler = ngx_collab_api_finish;
    api->finish.data = api;
    api->finish.log = api->r->connection->log;

    ngx_post_event(&api->finish, &ngx_posted_events);

    if (reply == NULL) {
        api->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return;
    }

    op = json_object_get(reply, "op");
    s = json_is_string(op) ? json_string_value(op) : "";
    status = NGX_HTTP_OK;

    if (ngx_strcmp(s, "error") == 0) {
        code = json_object_get(reply, "code");
        status = NGX_HTTP_INTERNAL_SERVER_ERROR;

        for (i = 0; ngx_collab_api_codes[i].code; i++) {
            if (json_is_string(code)
                && ngx_strcmp(json_string_value(code),
                              ngx_collab_api_codes[i].code) == 0)
            {
                status = ngx_collab_api_codes[i].status;
                break;
            }
        }

    } else if (ngx_strcmp(s, "created") == 0 || ngx_strcmp(s, "invited") == 0
               || ngx_strcmp(s, "ack") == 0)
    {
        status = NGX_HTTP_CREATED;
    }

    json_object_del(reply, "ref");

    api->rc = ngx_collab_api_send(api->r, status, reply);
    json_decref(reply);
}


static void
ngx_collab_api_finish(ngx_event_t *ev)
{
    ngx_collab_api_t    *api;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    api = ev->data;
    r = api->r;
    c = r->connection;

    ngx_http_finalize_request(r, api->rc);
    ngx_http_run_posted_requests(c);
}


/* _access: the session's access check (as join's), then the route's read */

void
ngx_collab_api_access(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_str_t               slug;
    ngx_collab_req_t       *ar;
    ngx_collab_pg_query_t  *q;

    if (conn->api == NULL) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref, "unknown op");
        return;
    }

    if (ngx_collab_slug(req, &slug) != NGX_OK) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "not a session id");
        return;
    }

    ar = ngx_collab_req_create(conn, 0, ref);
    if (ar == NULL) {
        return;
    }

    q = ngx_collab_pg_query_create(ngx_collab_sql_join_session, 2,
                                   slug.len + NGX_INT64_LEN);
    if (q == NULL) {
        ngx_collab_req_free(ar);
        ngx_collab_protocol_error(conn, "UNAVAILABLE", ref, "out of memory");
        return;
    }

    (void) ngx_collab_pg_param(q, 0, slug.data, slug.len);
    (void) ngx_collab_pg_param_int(q, 1, conn->user_id);

    (void) ngx_collab_req_send(ar, q, ngx_collab_api_access_done);
}


static void
ngx_collab_api_access_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int64_t                          id, n, limit;
    json_t                          *body, *cmid, *list;
    ngx_str_t                        slug, b, c, image;
    ngx_int_t                        rc;
    ngx_msec_t                       delay;
    ngx_collab_req_t                *req;
    ngx_collab_api_t                *api;
    ngx_collab_conn_t               *conn;
    ngx_collab_room_t               *room;
    ngx_collab_pg_query_t           *rq;
    ngx_collab_presence_snapshot_t   snap;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    conn = req->conn;
    api = conn->api;

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK, conn->ws->connection->log)
        != NGX_OK)
    {
        ngx_collab_protocol_error(conn, "UNAVAILABLE", NULL,
                                  "the session store is unavailable");
        goto done;
    }

    if (PQntuples(res) != 1) {
        ngx_collab_protocol_error(conn, "NOT_FOUND", NULL,
                                  "session not found");
        goto done;
    }

    if (PQgetisnull(res, 0, PQfnumber(res, "role"))) {
        if (ngx_collab_store_bool(res, 0, "is_public")) {
            ngx_collab_protocol_error(conn, "CONFLICT", NULL,
                                      "the session is full");

        } else {
            ngx_collab_protocol_error(conn, "ACCESS_DENIED", NULL,
                                      "not a participant of this session");
        }

        goto done;
    }

    id = ngx_collab_store_int(res, 0, "id");
    slug.data = (u_char *) PQgetvalue(res, 0, PQfnumber(res, "slug"));
    slug.len = PQgetlength(res, 0, PQfnumber(res, "slug"));

    switch (api->route) {

    case NGX_COLLAB_API_SESSION:
        ngx_collab_protocol_reply(conn, json_pack("{s:s,s:o}",
                                        "op", "session",
                                        "session",
                                        ngx_collab_store_session(res, 0)));
        break;

    case NGX_COLLAB_API_PRESENCE:
        list = NULL;

        if (ngx_collab_presence_snapshot(id, &snap, 0,
                                         conn->ws->connection->log)
            == NGX_OK)
        {
            list = ngx_collab_presence_list(&snap);
            ngx_collab_presence_snapshot_free(&snap);
        }

        ngx_collab_protocol_reply(conn, list ? json_pack("{s:s,s:s%,s:o}",
                                                   "op", "presence",
                                                   "session", slug.data,
                                                   slug.len,
                                                   "presence", list)
                                             : NULL);
        break;

    case NGX_COLLAB_API_MESSAGES:

        if (ngx_collab_api_arg(api->r, "limit", 1, 200, &limit)
            == NGX_ERROR
            || (rc = ngx_collab_api_arg(api->r, "after", 0, INT64_MAX, &n))
               == NGX_ERROR)
        {
            ngx_collab_protocol_error(conn, "BAD_REQUEST", NULL,
                                      "\"limit\" must be 1..200, \"after\" "
                                      "and \"before\" non-negative "
                                      "integers");
            break;
        }

        req->limit = limit ? limit : 50;
        req->since = (rc == NGX_OK) ? n : -1;
        req->session = json_stringn((char *) slug.data, slug.len);

        if (req->since >= 0) {
            rq = ngx_collab_pg_query_create(ngx_collab_sql_messages_since, 3,
                                            3 * NGX_INT64_LEN);
            if (rq) {
                (void) ngx_collab_pg_param_int(rq, 1, req->since);
            }

        } else {
            rc = ngx_collab_api_arg(api->r, "before", 1, INT64_MAX, &n);

            if (rc == NGX_ERROR) {
                ngx_collab_protocol_error(conn, "BAD_REQUEST", NULL,
                                          "\"before\" must be a positive "
                                          "integer");
                break;
            }

            rq = ngx_collab_pg_query_create(ngx_collab_sql_history_before, 3,
                                            3 * NGX_INT64_LEN);
            if (rq) {
                if (rc == NGX_OK) {
                    (void) ngx_collab_pg_param_int(rq, 1, n);

                } else {
                    (void) ngx_collab_pg_param(rq, 1, NULL, 0);
                }
            }
        }

        if (rq == NULL) {
            ngx_collab_protocol_error(conn, "UNAVAILABLE", NULL,
                                      "out of memory");
            break;
        }

        (void) ngx_collab_pg_param_int(rq, 0, id);
        (void) ngx_collab_pg_param_int(rq, 2, req->limit + 1);

        rq->handler = ngx_collab_api_read_done;
        rq->data = req;

        if (ngx_collab_pg_send(rq) != NGX_OK) {
            ngx_collab_protocol_error(conn, "UNAVAILABLE", NULL,
                                      "the database is unavailable");
            break;
        }

        return;                 /* req lives on with the read */

    default: /* NGX_COLLAB_API_POST */

        body = json_object_get(api->req, "body");
        cmid = json_object_get(api->req, "clientMsgId");

        if (!json_is_string(body) || json_string_length(body) == 0
            || !json_is_string(cmid)
            || ngx_collab_api_chars(cmid) == 0
            || ngx_collab_api_chars(cmid) > 128)
        {
            ngx_collab_protocol_error(conn, "BAD_REQUEST", NULL,
                                      "\"body\" must be a non-empty string "
                                      "and \"clientMsgId\" have 1 to 128 "
                                      "characters");
            break;
        }

        if (json_string_length(body) > conn->ws->conf->max_body_size) {
            ngx_collab_protocol_error(conn, "TOO_LARGE", NULL,
                                      "\"body\" is larger than "
                                      "collab_max_body_size");
            break;
        }

        if (ngx_collab_send_image(api->req, &image) != NGX_OK) {
            ngx_collab_protocol_error(conn, "BAD_IMAGE", NULL,
                                      "\"image\" must be a data:image/png, "
                                      "image/jpeg or image/webp base64 "
                                      "URL");
            break;
        }

        delay = ngx_collab_presence_limit(conn->user_id,
                                          NGX_COLLAB_RATE_MESSAGES);
        if (delay) {
            ngx_collab_protocol_reply(conn,
                json_pack("{s:s,s:s,s:s,s:I}", "op", "error",
                          "code", "RATE_LIMITED",
                          "message", "too many messages",
                          "retryAfter", (json_int_t) delay));
            break;
        }

        room = ngx_collab_room_get(id, &slug, conn->ws->connection->log);
        if (room == NULL) {
            ngx_collab_protocol_error(conn, "UNAVAILABLE", NULL,
                                      "out of memory");
            break;
        }

        if (room->seq < 0) {
            room->seq = ngx_collab_store_int(res, 0, "last_seq");
        }

        /* what the assistant needs: "update" events keep the trigger fresh */

        room->ai_trigger = ngx_collab_store_ai_trigger(res, 0);
        room->ai_image = ngx_collab_store_ai_image(res, 0);

        b.data = (u_char *) json_string_value(body);
        b.len = json_string_length(body);
        c.data = (u_char *) json_string_value(cmid);
        c.len = json_string_length(cmid);

        rc = ngx_collab_send(conn, room, NULL, &b, &c, &image);

        if (rc != NGX_OK) {
            ngx_collab_room_release(room);
            ngx_collab_protocol_error(conn, rc == NGX_BUSY ? "RATE_LIMITED"
                                                           : "UNAVAILABLE",
                                      NULL, "the message store is "
                                            "unavailable");
        }

        break;
    }

done:

    ngx_collab_req_free(req);
}


static void
ngx_collab_api_read_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                i, n, first, last;
    json_t            *list;
    ngx_uint_t         more;
    ngx_collab_req_t  *req;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK,
                            req->conn->ws->connection->log) != NGX_OK)
    {
        ngx_collab_protocol_error(req->conn, "UNAVAILABLE", NULL,
                                  "the message store is unavailable");
        ngx_collab_req_free(req);
        return;
    }

    n = PQntuples(res);
    more = (ngx_uint_t) n > req->limit;

    /* after: the extra row is the last; before: the first (oldest) */

    first = (more && req->since < 0) ? 1 : 0;
    last = more ? (int) req->limit + first : n;

    list = json_array();

    for (i = first; list && i < last; i++) {
        if (json_array_append_new(list, ngx_collab_store_message(res, i))) {
            json_decref(list);
            list = NULL;
        }
    }

    ngx_collab_protocol_reply(req->conn,
                              list ? json_pack("{s:s,s:O,s:o,s:b}",
                                               "op", "messages",
                                               "session", req->session,
                                               "messages", list,
                                               "more", (int) more)
                                   : NULL);

    ngx_collab_req_free(req);
}


/* the request is freed (answered, or the client went): forget it */

static void
ngx_collab_api_cleanup(void *data)
{
    ngx_collab_api_t  *api = data;

    api->r = NULL;

    if (api->finish.posted) {
        ngx_delete_posted_event(&api->finish);
    }

    ngx_collab_conn_close(api->conn);

    if (api->req) {
        json_decref(api->req);
        api->req = NULL;
    }
}


static ngx_int_t
ngx_collab_api_fail(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_int_t   rc;
    json_t     *reply;

    reply = json_pack("{s:s,s:s,s:s}", "op", "error", "code", code,
                      "message", message);
    if (reply == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_collab_api_send(r, status, reply);
    json_decref(reply);

    return rc;
}


static ngx_int_t
ngx_collab_api_send(ngx_http_request_t *r, ngx_uint_t status, json_t *reply)
{
    size_t        len;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    len = json_dumpb(reply, NULL, 0, NGX_COLLAB_JSON_FLAGS);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last += json_dumpb(reply, (char *) b->pos, len, NGX_COLLAB_JSON_FLAGS);
    *b->last++ = LF;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* a query argument: NGX_OK, NGX_DECLINED (absent, *value 0), NGX_ERROR */

static ngx_int_t
ngx_collab_api_arg(ngx_http_request_t *r, char *name, int64_t min,
    int64_t max, int64_t *value)
{
    off_t      n;
    ngx_str_t  v;

    *value = 0;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &v) != NGX_OK) {
        return NGX_DECLINED;
    }

    n = ngx_atoof(v.data, v.len);

    if (n == NGX_ERROR || n < min || n > max) {
        return NGX_ERROR;
    }

    *value = n;

    return NGX_OK;
}


/* takes the next "/segment" off path */

static ngx_int_t
ngx_collab_api_segment(ngx_str_t *path, ngx_str_t *seg)
{
    u_char  *p, *last;

    p = path->data;
    last = p + path->len;

    while (p < last && *p == '/') {
        p++;
    }

    if (p == last) {
        path->data = last;
        path->len = 0;
        ngx_str_null(seg);
        return NGX_DECLINED;
    }

    seg->data = p;

    while (p < last && *p != '/') {
        p++;
    }

    seg->len = p - seg->data;

    path->len = last - p;
    path->data = p;

    return NGX_OK;
}


/* the characters (not bytes) of a JSON string */

static size_t
ngx_collab_api_chars(json_t *s)
{
    size_t       i, n, len;
    const char  *p;

    p = json_string_value(s);
    len = json_string_length(s);

    for (i = 0, n = 0; i < len; i++) {
        if (((u_char) p[i] & 0xc0) != 0x80) {
            n++;
        }
    }

    return n;
}
