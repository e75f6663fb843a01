
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * collab.v1, the JSON protocol spoken on collab_websocket locations
 * (docs/PROTOCOL.md).  Every request is a JSON object in a text frame with
 * an "op" and an optional "ref" that the reply carries back.  A request
 * that cannot be understood is answered with an "error" op and a stable
 * code; the connection stays open.  Binary frames are not part of the
 * protocol and close the connection with 1003.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_collab.h"
#include "ngx_collab_ws.h"
#include "ngx_collab_protocol.h"


static void ngx_collab_protocol_message(ngx_collab_ws_t *ws,
    ngx_uint_t opcode, u_char *data, size_t len);
static void ngx_collab_protocol_error(ngx_collab_ws_t *ws, const char *code,
    json_t *ref, const char *message);
static void ngx_collab_protocol_reply(ngx_collab_ws_t *ws, json_t *reply);


const ngx_collab_ws_app_t  ngx_collab_protocol_app = {
    ngx_string("collab.v1"),
    NULL,
    NULL,
    ngx_collab_protocol_message,
    NULL
};


static void
ngx_collab_protocol_message(ngx_collab_ws_t *ws, ngx_uint_t opcode,
    u_char *data, size_t len)
{
    json_t        *req, *op, *ref, *reply;
    const char    *name;
    json_error_t   error;

    if (opcode != NGX_COLLAB_WS_OP_TEXT) {
        ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_UNSUPPORTED,
                            "collab.v1 is JSON in text frames");
        return;
    }

    req = json_loadb((const char *) data, len, JSON_REJECT_DUPLICATES,
                     &error);

    if (req == NULL || !json_is_object(req)) {
        ngx_collab_protocol_error(ws, "BAD_REQUEST", NULL,
                                  "request is not a JSON object");
        goto done;
    }

    ref = json_object_get(req, "ref");

    if (ref && !json_is_string(ref) && !json_is_integer(ref)) {
        ngx_collab_protocol_error(ws, "BAD_REQUEST", NULL,
                                  "\"ref\" must be a string or an integer");
        goto done;
    }

    op = json_object_get(req, "op");

    if (!json_is_string(op)) {
        ngx_collab_protocol_error(ws, "BAD_REQUEST", ref,
                                  "\"op\" must be a string");
        goto done;
    }

    name = json_string_value(op);

    if (ngx_strcmp(name, "ping") == 0) {
        reply = json_pack("{s:s}", "op", "pong");

        if (reply && ref) {
            json_object_set(reply, "ref", ref);
        }

        ngx_collab_protocol_reply(ws, reply);
        goto done;
    }

    ngx_collab_protocol_error(ws, "BAD_REQUEST", ref, "unknown op");

done:

    json_decref(req);
}


static void
ngx_collab_protocol_error(ngx_collab_ws_t *ws, const char *code, json_t *ref,
    const char *message)
{
    json_t  *reply;

    reply = json_pack("{s:s,s:s,s:s}", "op", "error", "code", code,
                      "message", message);

    if (reply) {
        json_object_set(reply, "ref", ref ? ref : json_null());
    }

    ngx_collab_protocol_reply(ws, reply);
}


/* serializes a reply straight into a frame and queues it; takes reply */

static void
ngx_collab_protocol_reply(ngx_collab_ws_t *ws, json_t *reply)
{
    size_t                len;
    ngx_collab_ws_msg_t  *msg;

    if (reply == NULL) {
        goto failed;
    }

    len = json_dumpb(reply, NULL, 0, JSON_COMPACT);

    msg = len ? ngx_collab_ws_msg_alloc(NGX_COLLAB_WS_OP_TEXT, len,
                                        ws->connection->log)
              : NULL;

    if (msg == NULL) {
        json_decref(reply);
        goto failed;
    }

    (void) json_dumpb(reply, (char *) msg->payload, len, JSON_COMPACT);
    json_decref(reply);

    (void) ngx_collab_ws_enqueue(ws, msg);
    ngx_collab_ws_msg_release(msg);

    return;

failed:

    ngx_collab_ws_close(ws, NGX_COLLAB_WS_CLOSE_INTERNAL, "out of memory");
}
