
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * Invitations and the owner's rights over a session: the collab.v1 ops
 * invite, invitations, accept, decline, revoke, remove, update and
 * delete (docs/PROTOCOL.md).
 *
 * Each op is one statement that checks the caller's right in SQL and
 * says what it found (session missing, caller not the owner, invitation
 * no longer pending...), so that the answer is exact and nothing is
 * written when the answer is an error.  An invitee becomes a participant
 * when accepting, not when invited.
 *
 * What others must see goes out as events: the invitee's connections get
 * "invitation" (on any worker or host: through the users channel), the
 * session's get "member" {joined|removed} and "session" (updated); a
 * removed participant's connections leave the session at once, and a
 * deleted session's connections all do, with a "removed" or "deleted"
 * event, everywhere through the session's channel.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_collab.h"
#include "ngx_collab_pg.h"
#include "ngx_collab_store.h"
#include "ngx_collab_room.h"
#include "ngx_collab_redis.h"
#include "ngx_collab_protocol.h"
#include "ngx_collab_access.h"


static void ngx_collab_access_send(ngx_collab_conn_t *conn, json_t *ref,
    const char *sql, ngx_uint_t nparams, ngx_str_t *params,
    ngx_collab_pg_handler_pt handler, int64_t id);
static void ngx_collab_op_invite_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_invitations_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_respond(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref, const char *status);
static void ngx_collab_op_respond_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_revoke_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_remove_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_update_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static void ngx_collab_op_delete_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static ngx_int_t ngx_collab_access_ok(ngx_collab_req_t *req, PGresult *res);
static ngx_int_t ngx_collab_user_arg(ngx_collab_conn_t *conn, json_t *req,
    json_t *ref, ngx_str_t *user);


#define NGX_COLLAB_OP_UPDATE  1
#define NGX_COLLAB_OP_DELETE  2


void
ngx_collab_op_invite(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    u_char                  *p, buf[NGX_INT64_LEN];
    ngx_str_t                params[4];
    ngx_collab_main_conf_t  *cmcf;

    if (ngx_collab_session_arg(conn, req, ref, &params[0]) != NGX_OK) {
        return;
    }

    if (ngx_collab_user_arg(conn, req, ref, &params[2]) != NGX_OK) {
        return;
    }

    if (params[2].len == conn->user.len
        && ngx_strncmp(params[2].data, conn->user.data, conn->user.len) == 0)
    {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "one cannot invite oneself");
        return;
    }

    cmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle, ngx_collab_module);

    p = ngx_sprintf(buf, "%M", cmcf->invite_ttl / 1000);
    params[3].data = buf;
    params[3].len = p - buf;

    ngx_str_null(&params[1]);               /* the caller's id */

    ngx_collab_access_send(conn, ref, ngx_collab_sql_invite, 4, params,
                           ngx_collab_op_invite_done, 0);
}


static void
ngx_collab_op_invite_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    json_t               *inv, *event;
    int64_t               invitee;
    ngx_collab_req_t     *req;
    ngx_collab_conn_t    *conn;
    ngx_collab_ws_msg_t  *msg;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    conn = req->conn;

    if (ngx_collab_access_ok(req, res) != NGX_OK) {
        goto done;
    }

    if (ngx_collab_store_bool(res, 0, "is_participant")) {
        ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                  "already a participant");
        goto done;
    }

    if (PQgetisnull(res, 0, PQfnumber(res, "invitation"))) {
        ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                  "an invitation is pending already");
        goto done;
    }

    inv = ngx_collab_store_invitation(res, 0);

    ngx_collab_protocol_reply(conn, inv ? json_pack("{s:s,s:O?,s:O}",
                                                    "op", "invited",
                                                    "ref", req->ref,
                                                    "invitation", inv)
                                        : NULL);

    /* the invitee hears of it at once, wherever connected */

    invitee = ngx_collab_store_int(res, 0, "invited_user_id");
    event = inv ? json_pack("{s:s,s:o}", "op", "invitation",
                            "invitation", inv)
                : NULL;

    if (event) {
        msg = ngx_collab_protocol_encode(event, ngx_cycle->log);

        if (msg) {
            ngx_collab_protocol_user_event(invitee, msg);
            ngx_collab_redis_user_event(invitee, msg->payload,
                                        msg->len - (msg->payload
                                                    - msg->data));
            ngx_collab_ws_msg_release(msg);
        }

        json_decref(event);
    }

done:

    ngx_collab_req_free(req);
}


/* {"op":"invitations"}: mine; with "session": the session's, for its owner */

void
ngx_collab_op_invitations(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_str_t  params[2];

    if (json_object_get(req, "session") == NULL) {
        ngx_str_null(&params[0]);
        ngx_collab_access_send(conn, ref, ngx_collab_sql_my_invitations, 1,
                               params, ngx_collab_op_invitations_done, 0);
        return;
    }

    if (ngx_collab_session_arg(conn, req, ref, &params[0]) != NGX_OK) {
        return;
    }

    ngx_str_null(&params[1]);

    ngx_collab_access_send(conn, ref, ngx_collab_sql_session_invitations, 2,
                           params, ngx_collab_op_invitations_done, 1);
}


static void
ngx_collab_op_invitations_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                i, n;
    json_t            *list;
    ngx_collab_req_t  *req;

    req = ngx_collab_req_rows(q, res, "the session store is unavailable");
    if (req == NULL) {
        return;
    }

    n = PQntuples(res);

    if (req->id) {

        /* a session's: it must exist and be the caller's */

        if (n == 0) {
            ngx_collab_protocol_error(req->conn, "NOT_FOUND", req->ref,
                                      "session not found");
            goto done;
        }

        if (!ngx_collab_store_bool(res, 0, "is_owner")) {
            ngx_collab_protocol_error(req->conn, "ACCESS_DENIED", req->ref,
                                      "only the owner sees the session's "
                                      "invitations");
            goto done;
        }
    }

    list = json_array();

    for (i = 0; list && i < n; i++) {

        if (PQgetisnull(res, i, PQfnumber(res, "invitation"))) {
            continue;           /* the owner's session without any */
        }

        if (json_array_append_new(list, ngx_collab_store_invitation(res, i)))
        {
            json_decref(list);
            list = NULL;
        }
    }

    ngx_collab_protocol_reply(req->conn,
                              list ? json_pack("{s:s,s:O?,s:o}",
                                               "op", "invitations",
                                               "ref", req->ref,
                                               "invitations", list)
                                   : NULL);

done:

    ngx_collab_req_free(req);
}


void
ngx_collab_op_accept(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_collab_op_respond(conn, req, ref, "accepted");
}


void
ngx_collab_op_decline(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_collab_op_respond(conn, req, ref, "declined");
}


static void
ngx_collab_op_respond(ngx_collab_conn_t *conn, json_t *req, json_t *ref,
    const char *status)
{
    u_char     *p, buf[NGX_INT64_LEN];
    int64_t     id;
    ngx_str_t   params[3];

    if (ngx_collab_get_int(req, "invitation", 1, INT64_MAX, &id) != NGX_OK) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"invitation\" must be an invitation id");
        return;
    }

    p = ngx_sprintf(buf, "%L", id);
    params[0].data = buf;
    params[0].len = p - buf;
    ngx_str_null(&params[1]);
    params[2].data = (u_char *) status;
    params[2].len = ngx_strlen(status);

    ngx_collab_access_send(conn, ref, ngx_collab_sql_respond, 3, params,
                           ngx_collab_op_respond_done, status[0] == 'a');
}


static void
ngx_collab_op_respond_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    char                 *was;
    json_t               *session, *event;
    ngx_collab_req_t     *req;
    ngx_collab_conn_t    *conn;
    ngx_collab_ws_msg_t  *msg;

    req = ngx_collab_req_rows(q, res, "the session store is unavailable");
    if (req == NULL) {
        return;
    }

    conn = req->conn;

    if (PQntuples(res) != 1) {
        ngx_collab_protocol_error(conn, "NOT_FOUND", req->ref,
                                  "no such invitation for this user");
        goto done;
    }

    if (!ngx_collab_store_bool(res, 0, "done")) {
        was = PQgetvalue(res, 0, PQfnumber(res, "was"));

        if (ngx_strcmp(was, "pending") != 0) {
            ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                      ngx_strcmp(was, "expired") == 0
                                      ? "the invitation expired"
                                      : "the invitation is no longer "
                                        "pending");

        } else if (!ngx_collab_store_bool(res, 0, "live")) {
            ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                      "the invitation expired");

        } else {
            ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                      "the session is full");
        }

        goto done;
    }

    session = ngx_collab_store_session(res, 0);

    ngx_collab_protocol_reply(conn,
                              session ? json_pack("{s:s,s:O?,s:O}",
                                                  "op", req->id
                                                        ? "accepted"
                                                        : "declined",
                                                  "ref", req->ref,
                                                  "session", session)
                                      : NULL);

    if (req->id && session) {

        /* the participants see the newcomer */

        event = json_pack("{s:s,s:O,s:s%,s:o,s:s}",
                          "op", "member",
                          "session", json_object_get(session, "id"),
                          "user", conn->user.data, conn->user.len,
                          "userName", conn->user_name.len
                                      ? json_stringn((char *)
                                                     conn->user_name.data,
                                                     conn->user_name.len)
                                      : json_null(),
                          "action", "joined");
        if (event) {
            msg = ngx_collab_protocol_encode(event, ngx_cycle->log);
            json_decref(event);

            if (msg) {
                ngx_collab_access_event(ngx_collab_store_int(res, 0, "id"),
                                        'E', 0, msg);
                ngx_collab_ws_msg_release(msg);
            }
        }
    }

    json_decref(session);

done:

    ngx_collab_req_free(req);
}


void
ngx_collab_op_revoke(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    u_char     *p, buf[NGX_INT64_LEN];
    int64_t     id;
    ngx_str_t   params[2];

    if (ngx_collab_get_int(req, "invitation", 1, INT64_MAX, &id) != NGX_OK) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"invitation\" must be an invitation id");
        return;
    }

    p = ngx_sprintf(buf, "%L", id);
    params[0].data = buf;
    params[0].len = p - buf;
    ngx_str_null(&params[1]);

    ngx_collab_access_send(conn, ref, ngx_collab_sql_revoke, 2, params,
                           ngx_collab_op_revoke_done, id);
}


static void
ngx_collab_op_revoke_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    json_t               *event;
    ngx_collab_req_t     *req;
    ngx_collab_conn_t    *conn;
    ngx_collab_ws_msg_t  *msg;

    req = ngx_collab_req_rows(q, res, "the session store is unavailable");
    if (req == NULL) {
        return;
    }

    conn = req->conn;

    if (PQntuples(res) != 1) {
        ngx_collab_protocol_error(conn, "NOT_FOUND", req->ref,
                                  "no such invitation");
        goto done;
    }

    if (!ngx_collab_store_bool(res, 0, "is_owner")) {
        ngx_collab_protocol_error(conn, "ACCESS_DENIED", req->ref,
                                  "only the session's owner revokes");
        goto done;
    }

    if (!ngx_collab_store_bool(res, 0, "done")) {
        ngx_collab_protocol_error(conn, "CONFLICT", req->ref,
                                  "the invitation is no longer pending");
        goto done;
    }

    ngx_collab_protocol_reply(conn, json_pack("{s:s,s:O?,s:I}",
                                              "op", "revoked",
                                              "ref", req->ref,
                                              "invitation",
                                              (json_int_t) req->id));

    event = json_pack("{s:s,s:I,s:s}", "op", "invitation_revoked",
                      "invitation", (json_int_t) req->id,
                      "session",
                      PQgetvalue(res, 0, PQfnumber(res, "slug")));
    if (event) {
        msg = ngx_collab_protocol_encode(event, ngx_cycle->log);
        json_decref(event);

        if (msg) {
            ngx_collab_protocol_user_event(
                ngx_collab_store_int(res, 0, "invitee_id"), msg);
            ngx_collab_redis_user_event(
                ngx_collab_store_int(res, 0, "invitee_id"), msg->payload,
                msg->len - (msg->payload - msg->data));
            ngx_collab_ws_msg_release(msg);
        }
    }

done:

    ngx_collab_req_free(req);
}


void
ngx_collab_op_remove(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_str_t  params[3];

    if (ngx_collab_session_arg(conn, req, ref, &params[0]) != NGX_OK) {
        return;
    }

    if (ngx_collab_user_arg(conn, req, ref, &params[2]) != NGX_OK) {
        return;
    }

    ngx_str_null(&params[1]);

    ngx_collab_access_send(conn, ref, ngx_collab_sql_remove, 3, params,
                           ngx_collab_op_remove_done, 0);
}


static void
ngx_collab_op_remove_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    char                 *slug;
    json_t               *event;
    int64_t               target;
    ngx_collab_req_t     *req;
    ngx_collab_conn_t    *conn;
    ngx_collab_ws_msg_t  *msg;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    conn = req->conn;

    if (ngx_collab_access_ok(req, res) != NGX_OK) {
        goto done;
    }

    if (ngx_collab_store_bool(res, 0, "target_is_owner")) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", req->ref,
                                  "the owner cannot be removed");
        goto done;
    }

    if (!ngx_collab_store_bool(res, 0, "removed")) {
        ngx_collab_protocol_error(conn, "NOT_FOUND", req->ref,
                                  "not a participant of this session");
        goto done;
    }

    slug = PQgetvalue(res, 0, PQfnumber(res, "slug"));
    target = ngx_collab_store_int(res, 0, "target_id");

    ngx_collab_protocol_reply(conn, json_pack("{s:s,s:O?,s:s}",
                                              "op", "removed",
                                              "ref", req->ref,
                                              "session", slug));

    /* the removed user's connections leave at once; the others are told */

    event = json_pack("{s:s,s:s,s:s%,s:s}", "op", "member", "session", slug,
                      "user", q->values[2], (size_t) q->lengths[2],
                      "action", "removed");

    if (event) {
        msg = ngx_collab_protocol_encode(event, ngx_cycle->log);
        json_decref(event);

        if (msg) {
            ngx_collab_access_event(ngx_collab_store_int(res, 0, "id"), 'K',
                                    target, msg);
            ngx_collab_ws_msg_release(msg);
        }
    }

done:

    ngx_collab_req_free(req);
}


void
ngx_collab_op_update(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    size_t      i, len, chars;
    json_t     *title, *pub, *max;
    int64_t     n;
    ngx_int_t   rc;
    ngx_str_t   params[8];
    u_char      buf[NGX_INT64_LEN], *p;

    if (ngx_collab_session_arg(conn, req, ref, &params[0]) != NGX_OK) {
        return;
    }

    ngx_str_null(&params[1]);
    ngx_str_null(&params[2]);
    ngx_str_null(&params[3]);
    ngx_str_null(&params[4]);
    ngx_str_set(&params[5], "false");
    ngx_str_set(&params[7], "false");

    title = json_object_get(req, "title");

    if (title) {
        if (!json_is_string(title)) {
            goto invalid_title;
        }

        params[2].data = (u_char *) json_string_value(title);
        params[2].len = json_string_length(title);

        len = params[2].len;

        for (i = 0, chars = 0; i < len; i++) {
            if ((params[2].data[i] & 0xc0) != 0x80) {
                chars++;
            }
        }

        if (chars == 0 || chars > 200) {
            goto invalid_title;
        }
    }

    pub = json_object_get(req, "isPublic");

    if (pub) {
        if (!json_is_boolean(pub)) {
            ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                      "\"isPublic\" must be a boolean");
            return;
        }

        if (json_is_true(pub)) {
            ngx_str_set(&params[3], "true");

        } else {
            ngx_str_set(&params[3], "false");
        }
    }

    max = json_object_get(req, "maxParticipants");

    if (json_is_null(max)) {
        ngx_str_set(&params[5], "true");

    } else if (max) {
        if (ngx_collab_get_int(req, "maxParticipants", 1, 100000, &n)
            != NGX_OK)
        {
            ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                      "\"maxParticipants\" must be an "
                                      "integer from 1 to 100000, or null");
            return;
        }

        p = ngx_sprintf(buf, "%L", n);
        params[4].data = buf;
        params[4].len = p - buf;
    }

    rc = ngx_collab_get_ai_trigger(req, &params[6]);

    if (rc == NGX_ERROR) {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"aiTrigger\" must be \"mention\", "
                                  "\"always\", \"off\" or null");
        return;
    }

    if (rc == NGX_DONE) {
        ngx_str_set(&params[7], "true");
    }

    ngx_collab_access_send(conn, ref, ngx_collab_sql_update_session, 8,
                           params, ngx_collab_op_update_done,
                           NGX_COLLAB_OP_UPDATE);
    return;

invalid_title:

    ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                              "\"title\" must have 1 to 200 characters");
}


static void
ngx_collab_op_update_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    json_t               *session, *event;
    ngx_collab_req_t     *req;
    ngx_collab_ws_msg_t  *msg;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    if (ngx_collab_access_ok(req, res) != NGX_OK) {
        goto done;
    }

    if (ngx_collab_store_is(res, "23514", NULL)) {
        ngx_collab_protocol_error(req->conn, "BAD_REQUEST", req->ref,
                                  "invalid session");
        goto done;
    }

    session = ngx_collab_store_session(res, 0);

    ngx_collab_protocol_reply(req->conn,
                              session ? json_pack("{s:s,s:O?,s:O}",
                                                  "op", "updated",
                                                  "ref", req->ref,
                                                  "session", session)
                                      : NULL);

    if (session) {
        json_object_del(session, "role");

        event = json_pack("{s:s,s:O,s:o}", "op", "session",
                          "session", json_object_get(session, "id"),
                          "changes", session);
        if (event) {
            msg = ngx_collab_protocol_encode(event, ngx_cycle->log);
            json_decref(event);

            if (msg) {
                ngx_collab_access_event(ngx_collab_store_int(res, 0, "id"),
                                        'U',
                                        ngx_collab_store_ai_trigger(res, 0),
                                        msg);
                ngx_collab_ws_msg_release(msg);
            }
        }
    }

done:

    ngx_collab_req_free(req);
}


void
ngx_collab_op_delete(ngx_collab_conn_t *conn, json_t *req, json_t *ref)
{
    ngx_str_t  params[2];

    if (ngx_collab_session_arg(conn, req, ref, &params[0]) != NGX_OK) {
        return;
    }

    ngx_str_null(&params[1]);

    ngx_collab_access_send(conn, ref, ngx_collab_sql_delete_session, 2,
                           params, ngx_collab_op_delete_done,
                           NGX_COLLAB_OP_DELETE);
}


static void
ngx_collab_op_delete_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    json_t               *event;
    ngx_collab_req_t     *req;
    ngx_collab_ws_msg_t  *msg;

    req = ngx_collab_req_result(q, res);
    if (req == NULL) {
        return;
    }

    if (ngx_collab_access_ok(req, res) != NGX_OK) {
        goto done;
    }

    ngx_collab_protocol_reply(req->conn,
                              json_pack("{s:s,s:O?,s:s%}",
                                        "op", "deleted", "ref", req->ref,
                                        "session", q->values[0],
                                        (size_t) q->lengths[0]));

    event = json_pack("{s:s,s:s%}", "op", "deleted", "session",
                      q->values[0], (size_t) q->lengths[0]);
    if (event) {
        msg = ngx_collab_protocol_encode(event, ngx_cycle->log);
        json_decref(event);

        if (msg) {
            ngx_collab_access_event(ngx_collab_store_int(res, 0, "id"), 'D',
                                    0, msg);
            ngx_collab_ws_msg_release(msg);
        }
    }

done:

    ngx_collab_req_free(req);
}


/*
 * An event for a session's connections, here and on every other worker
 * and host: 'E' tells them, 'K' also makes the user's connections leave
 * the session (user 0: everyone's), 'D' makes everyone leave, 'U' (the
 * session was updated) also sets the room's AI trigger to "user" (an
 * NGX_COLLAB_AI_* value): the room keeps what the next send needs.
 */

void
ngx_collab_access_event(int64_t session, u_char kind, int64_t user,
    ngx_collab_ws_msg_t *msg)
{
    ngx_collab_room_t  *room;

    room = ngx_collab_room_lookup(session);

    if (room) {
        ngx_collab_access_apply(room, kind, user, msg);
    }

    ngx_collab_redis_room_event(session, kind, user, msg->payload,
                                msg->len - (msg->payload - msg->data));
}


void
ngx_collab_access_apply(ngx_collab_room_t *room, u_char kind, int64_t user,
    ngx_collab_ws_msg_t *msg)
{
    switch (kind) {

    case 'K':
        ngx_collab_room_broadcast(room, msg, 0);
        ngx_collab_protocol_kick(room, user, NULL);
        return;

    case 'D':
        ngx_collab_protocol_kick(room, 0, msg);
        return;

    case 'U':
        if (user >= NGX_COLLAB_AI_OFF && user <= NGX_COLLAB_AI_SERVER) {
            room->ai_trigger = (ngx_uint_t) user;
        }

        ngx_collab_room_broadcast(room, msg, 0);
        return;

    default:
        ngx_collab_room_broadcast(room, msg, 0);
        return;
    }
}


/* the common part of the ops: parameters, the caller's id as $2 */

static void
ngx_collab_access_send(ngx_collab_conn_t *conn, json_t *ref,
    const char *sql, ngx_uint_t nparams, ngx_str_t *params,
    ngx_collab_pg_handler_pt handler, int64_t id)
{
    size_t                  size;
    ngx_uint_t              i;
    ngx_collab_req_t       *req;
    ngx_collab_pg_query_t  *q;

    req = ngx_collab_req_create(conn, 0, ref);
    if (req == NULL) {
        return;
    }

    req->id = id;

    size = NGX_INT64_LEN;

    for (i = 0; i < nparams; i++) {
        size += params[i].len;
    }

    q = ngx_collab_pg_query_create(sql, nparams, size);
    if (q == NULL) {
        ngx_collab_protocol_error(conn, "UNAVAILABLE", ref, "out of memory");
        ngx_collab_req_free(req);
        return;
    }

    for (i = 0; i < nparams; i++) {

        if (i == 1 && sql != ngx_collab_sql_my_invitations) {
            (void) ngx_collab_pg_param_int(q, 1, conn->user_id);
            continue;
        }

        if (i == 0 && sql == ngx_collab_sql_my_invitations) {
            (void) ngx_collab_pg_param_int(q, 0, conn->user_id);
            continue;
        }

        (void) ngx_collab_pg_param(q, i, params[i].data, params[i].len);
    }

    (void) ngx_collab_req_send(req, q, handler);
}


/* the statement ran, found the session, and the caller is its owner */

static ngx_int_t
ngx_collab_access_ok(ngx_collab_req_t *req, PGresult *res)
{
    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK,
                            req->conn->ws->connection->log) != NGX_OK)
    {
        if (ngx_collab_store_is(res, "23514", NULL)) {
            ngx_collab_protocol_error(req->conn, "BAD_REQUEST", req->ref,
                                      "invalid value");

        } else {
            ngx_collab_protocol_error(req->conn, "UNAVAILABLE", req->ref,
                                      "the session store is unavailable");
        }

        return NGX_ERROR;
    }

    if (PQntuples(res) != 1) {
        ngx_collab_protocol_error(req->conn, "NOT_FOUND", req->ref,
                                  "session not found");
        return NGX_ERROR;
    }

    if (!ngx_collab_store_bool(res, 0, "is_owner")) {
        ngx_collab_protocol_error(req->conn, "ACCESS_DENIED", req->ref,
                                  "only the session's owner may do this");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* "user": the site's id of another user, as collab_user would give it */

static ngx_int_t
ngx_collab_user_arg(ngx_collab_conn_t *conn, json_t *req, json_t *ref,
    ngx_str_t *user)
{
    json_t  *u;

    u = json_object_get(req, "user");

    if (!json_is_string(u) || json_string_length(u) == 0
        || json_string_length(u) > 256)
    {
        ngx_collab_protocol_error(conn, "BAD_REQUEST", ref,
                                  "\"user\" must be a user id "
                                  "(1 to 256 bytes)");
        return NGX_ERROR;
    }

    user->data = (u_char *) json_string_value(u);
    user->len = json_string_length(u);

    return NGX_OK;
}
