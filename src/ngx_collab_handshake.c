
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The WebSocket opening handshake (RFC 6455, 4.2): a content handler that
 * checks the upgrade request, answers the faults with 400, 403 or 426 and
 * a one-line reason, and otherwise sends 101 and hands the connection to
 * ngx_collab_ws_start() through a posted write event.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>

#include "ngx_collab.h"
#include "ngx_collab_ws.h"


#define NGX_COLLAB_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


static ngx_int_t ngx_collab_ws_refuse(ngx_http_request_t *r,
    ngx_uint_t status, char *status_line, char *reason);
static ngx_table_elt_t *ngx_collab_ws_find_header(ngx_http_request_t *r,
    char *name, size_t len, ngx_uint_t *count);
static ngx_uint_t ngx_collab_ws_header_has_token(ngx_http_request_t *r,
    char *name, ngx_str_t *token, ngx_uint_t caseless);
static ngx_uint_t ngx_collab_ws_has_token(ngx_str_t *value, ngx_str_t *token,
    ngx_uint_t caseless);
static ngx_uint_t ngx_collab_ws_origin_allowed(ngx_collab_loc_conf_t *cf,
    ngx_str_t *origin);
static ngx_int_t ngx_collab_ws_key_valid(ngx_str_t *key);


ngx_int_t
ngx_collab_ws_handler(ngx_http_request_t *r)
{
    u_char                    *p, hash[20];
    ngx_str_t                  src, accept, *token;
    ngx_int_t                  rc;
    ngx_uint_t                 n;
    ngx_sha1_t                 sha1;
    ngx_table_elt_t           *h, *key, *version, *origin, *protocol;
    ngx_connection_t          *c;
    ngx_collab_ws_t           *ws;
    ngx_collab_loc_conf_t     *cf;
    ngx_http_core_loc_conf_t  *clcf;

    static ngx_str_t  websocket = ngx_string("websocket");
    static ngx_str_t  upgrade = ngx_string("upgrade");

    cf = ngx_http_get_module_loc_conf(r, ngx_collab_module);
    c = r->connection;

    if (r != r->main) {
        return ngx_collab_ws_refuse(r, NGX_HTTP_BAD_REQUEST, NULL,
                                    "WebSocket in a subrequest");
    }

    if (r->method != NGX_HTTP_GET) {
        return ngx_collab_ws_refuse(r, NGX_HTTP_BAD_REQUEST, NULL,
                                    "method is not GET");
    }

    if (r->http_version != NGX_HTTP_VERSION_11
#if (NGX_HTTP_V2)
        || r->stream
#endif
       )
    {
        return ngx_collab_ws_refuse(r, NGX_HTTP_BAD_REQUEST, NULL,
                                    "WebSocket needs HTTP/1.1");
    }

    if (!ngx_collab_ws_header_has_token(r, "Upgrade", &websocket, 1)) {
        return ngx_collab_ws_refuse(r, NGX_HTTP_BAD_REQUEST, NULL,
                                    "no \"Upgrade: websocket\" header");
    }

    if (!ngx_collab_ws_header_has_token(r, "Connection", &upgrade, 1)) {
        return ngx_collab_ws_refuse(r, NGX_HTTP_BAD_REQUEST, NULL,
                                    "no \"Connection: upgrade\" header");
    }

    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        return ngx_collab_ws_refuse(r, NGX_HTTP_BAD_REQUEST, NULL,
                                    "upgrade request with a body");
    }

    version = ngx_collab_ws_find_header(r, "Sec-WebSocket-Version",
                                        sizeof("Sec-WebSocket-Version") - 1,
                                        &n);

    if (n != 1 || version->value.len != 2
        || ngx_strncmp(version->value.data, "13", 2) != 0)
    {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Sec-WebSocket-Version");
        ngx_str_set(&h->value, "13");

        return ngx_collab_ws_refuse(r, 426, "426 Upgrade Required",
                                    "unsupported Sec-WebSocket-Version");
    }

    key = ngx_collab_ws_find_header(r, "Sec-WebSocket-Key",
                                    sizeof("Sec-WebSocket-Key") - 1, &n);

    if (n != 1 || ngx_collab_ws_key_valid(&key->value) != NGX_OK) {
        return ngx_collab_ws_refuse(r, NGX_HTTP_BAD_REQUEST, NULL,
                                    "invalid Sec-WebSocket-Key");
    }

    if (cf->allowed_origins) {
        origin = ngx_collab_ws_find_header(r, "Origin", sizeof("Origin") - 1,
                                           &n);

        if (n > 1 || (n == 1 && !ngx_collab_ws_origin_allowed(cf,
                                                        &origin->value)))
        {
            return ngx_collab_ws_refuse(r, NGX_HTTP_FORBIDDEN, NULL,
                                        "origin not allowed");
        }
    }

    /* the app's subprotocol, if the client offers it among others */

    token = NULL;

    if (cf->app->subprotocol.len
        && ngx_collab_ws_header_has_token(r, "Sec-WebSocket-Protocol",
                                 (ngx_str_t *) &cf->app->subprotocol, 0))
    {
        token = (ngx_str_t *) &cf->app->subprotocol;
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ws = ngx_pcalloc(c->pool, sizeof(ngx_collab_ws_t));
    if (ws == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ws->connection = c;
    ws->conf = cf;
    ws->out_last = &ws->out;
    ws->parser.max_message = cf->max_message_size;

    if (cf->app->upgrade) {
        rc = cf->app->upgrade(r, ws);

        if (rc != NGX_OK) {
            return ngx_collab_ws_refuse(r, rc, NULL,
                                        rc == NGX_HTTP_UNAUTHORIZED
                                        ? "no user identity"
                                        : "upgrade refused");
        }
    }

    /* Sec-WebSocket-Accept: base64(SHA-1(key . GUID)) */

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, key->value.data, key->value.len);
    ngx_sha1_update(&sha1, NGX_COLLAB_WS_GUID,
                    sizeof(NGX_COLLAB_WS_GUID) - 1);
    ngx_sha1_final(hash, &sha1);

    p = ngx_pnalloc(r->pool, ngx_base64_encoded_length(20));
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    src.len = 20;
    src.data = hash;
    accept.data = p;

    ngx_encode_base64(&accept, &src);

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;
    r->keepalive = 0;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Upgrade");
    ngx_str_set(&h->value, "websocket");

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Sec-WebSocket-Accept");
    h->value = accept;

    if (token) {
        protocol = ngx_list_push(&r->headers_out.headers);
        if (protocol == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        protocol->hash = 1;
        ngx_str_set(&protocol->key, "Sec-WebSocket-Protocol");
        protocol->value = *token;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    if (ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        return NGX_ERROR;
    }

    /*
     * The request stays alive until ngx_collab_ws_start() runs from the
     * posted write event, outside of the HTTP request handlers, which
     * must not see the request freed under them.
     */

    ngx_http_set_ctx(r, ws, ngx_collab_module);

    r->main->count++;

    c->read->handler = ngx_collab_ws_start;
    c->write->handler = ngx_collab_ws_start;

    ngx_post_event(c->write, &ngx_posted_events);

    return NGX_DONE;
}


static ngx_int_t
ngx_collab_ws_refuse(ngx_http_request_t *r, ngx_uint_t status,
    char *status_line, char *reason)
{
    size_t        len;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "collab: websocket upgrade refused: %s", reason);

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(reason);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, reason, len);
    *b->last++ = LF;
    b->last_buf = 1;
    b->last_in_chain = 1;

    r->headers_out.status = status;

    if (status_line) {
        r->headers_out.status_line.len = ngx_strlen(status_line);
        r->headers_out.status_line.data = (u_char *) status_line;
    }

    r->headers_out.content_length_n = len + 1;
    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_table_elt_t *
ngx_collab_ws_find_header(ngx_http_request_t *r, char *name, size_t len,
    ngx_uint_t *count)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *found;

    found = NULL;
    *count = 0;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            if (found == NULL) {
                found = &h[i];
            }

            (*count)++;
        }
    }

    return found;
}


/* any of the request's headers called name lists the token */

static ngx_uint_t
ngx_collab_ws_header_has_token(ngx_http_request_t *r, char *name,
    ngx_str_t *token, ngx_uint_t caseless)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0
            && ngx_collab_ws_has_token(&h[i].value, token, caseless))
        {
            return 1;
        }
    }

    return 0;
}


/* a comma-separated list of tokens contains the token */

static ngx_uint_t
ngx_collab_ws_has_token(ngx_str_t *value, ngx_str_t *token,
    ngx_uint_t caseless)
{
    u_char  *p, *last, *start, *end;

    p = value->data;
    last = p + value->len;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',') {
            p++;
        }

        end = p;

        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }

        if ((size_t) (end - start) != token->len) {
            continue;
        }

        if (caseless) {
            if (ngx_strncasecmp(start, token->data, token->len) == 0) {
                return 1;
            }

        } else if (ngx_strncmp(start, token->data, token->len) == 0) {
            return 1;
        }
    }

    return 0;
}


static ngx_uint_t
ngx_collab_ws_origin_allowed(ngx_collab_loc_conf_t *cf, ngx_str_t *origin)
{
    ngx_str_t   *o;
    ngx_uint_t   i;

    o = cf->allowed_origins->elts;

    for (i = 0; i < cf->allowed_origins->nelts; i++) {

        if (o[i].len == 1 && o[i].data[0] == '*') {
            return 1;
        }

        /* scheme and host are case-insensitive (RFC 6454, 6.1) */

        if (o[i].len == origin->len
            && ngx_strncasecmp(o[i].data, origin->data, o[i].len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* exactly 16 bytes in base64: 22 alphabet characters and "==" */

static ngx_int_t
ngx_collab_ws_key_valid(ngx_str_t *key)
{
    u_char      ch, buf[18];
    ngx_str_t   dst;
    ngx_uint_t  i;

    if (key->len != 24 || key->data[22] != '=' || key->data[23] != '=') {
        return NGX_DECLINED;
    }

    for (i = 0; i < 22; i++) {
        ch = key->data[i];

        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')
              || (ch >= '0' && ch <= '9') || ch == '+' || ch == '/'))
        {
            return NGX_DECLINED;
        }
    }

    dst.data = buf;

    if (ngx_decode_base64(&dst, key) != NGX_OK || dst.len != 16) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


