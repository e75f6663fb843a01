
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The send path: a message is acknowledged, and shown to anyone, only
 * after the INSERT that gave it its seq has committed.
 *
 * Sends wait in their room's queue.  A room has at most one batch in
 * PostgreSQL at a time, so its messages commit, are acknowledged and are
 * delivered in seq order; sends that arrive meanwhile make the next
 * batch.  A batch leaves at once while a pool connection is idle;
 * otherwise when collab_batch_window has passed since the first send
 * waiting in the worker (0: at once), or as soon as NGX_COLLAB_BATCH_MAX
 * sends wait.  One batch is one append_batch
 * statement: a single UPDATE of the session row takes as many seqs as the
 * batch has new messages, and the pool pipelines the batches of different
 * rooms.
 *
 * A resent client_msg_id is answered with the original seq and stores
 * nothing.  When two copies race, one statement fails with a unique
 * violation and is sent again (a few times at most), and then finds the
 * other's row.  A batch that cannot run (PostgreSQL down, timeout)
 * answers UNAVAILABLE; whether or not it committed, resending with the
 * same client_msg_id is safe.  A sender that disconnects before its ack
 * still has its message stored and delivered to the others.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_collab.h"
#include "ngx_collab_pg.h"
#include "ngx_collab_store.h"
#include "ngx_collab_redis.h"
#include "ngx_collab_ai.h"
#include "ngx_collab_image.h"
#include "ngx_collab_send.h"


#define NGX_COLLAB_BATCH_MAX      500
#define NGX_COLLAB_BATCH_RETRIES  8
#define NGX_COLLAB_SEND_HOLD      60000


typedef struct {
    ngx_collab_room_t          *room;
    ngx_queue_t                 sends;
    ngx_uint_t                  n;
    ngx_uint_t                  retried;
} ngx_collab_batch_t;


static void ngx_collab_send_enqueue(ngx_collab_room_t *room,
    ngx_collab_send_t *s);
static void ngx_collab_send_timer_handler(ngx_event_t *ev);
static void ngx_collab_send_flush(void);
static void ngx_collab_send_batch(ngx_collab_room_t *room);
static ngx_int_t ngx_collab_send_query(ngx_collab_batch_t *batch);
static u_char *ngx_collab_send_quote(u_char *p, ngx_str_t *s);
static void ngx_collab_send_done(ngx_collab_pg_query_t *q, PGresult *res);
static void ngx_collab_send_ack(ngx_collab_batch_t *batch,
    ngx_collab_send_t *s, PGresult *res, int row);
static void ngx_collab_send_finish(ngx_collab_batch_t *batch,
    const char *code, const char *message);
static void ngx_collab_send_free(ngx_collab_send_t *s);
static void ngx_collab_send_hold_update(void);
static void ngx_collab_send_hold_handler(ngx_event_t *ev);


static ngx_event_t   ngx_collab_send_timer;
static ngx_queue_t   ngx_collab_send_ready;
static ngx_uint_t    ngx_collab_send_waiting;
static ngx_uint_t    ngx_collab_send_batches;     /* in PostgreSQL */
static ngx_event_t   ngx_collab_send_hold;
static ngx_msec_t    ngx_collab_send_window;
static ngx_log_t    *ngx_collab_send_log;


void
ngx_collab_send_init(ngx_collab_main_conf_t *cmcf, ngx_log_t *log)
{
    ngx_collab_send_window = cmcf->batch_window;
    ngx_collab_send_log = log;

    ngx_queue_init(&ngx_collab_send_ready);

    ngx_collab_send_timer.handler = ngx_collab_send_timer_handler;
    ngx_collab_send_timer.log = log;
    ngx_collab_send_timer.cancelable = 1;

    /* not cancelable: see ngx_collab_send_hold_update() */
    ngx_collab_send_hold.handler = ngx_collab_send_hold_handler;
    ngx_collab_send_hold.log = log;
}


/*
 * Queues a send; image: a picture checked by ngx_collab_send_image(), or
 * NULL or empty.  NGX_OK: an ack or an error will follow.  NGX_BUSY: too
 * many sends of this connection wait for their ack; NGX_DECLINED:
 * PostgreSQL is unavailable; NGX_ERROR.
 */

ngx_int_t
ngx_collab_send(ngx_collab_conn_t *conn, ngx_collab_room_t *room,
    json_t *ref, ngx_str_t *body, ngx_str_t *client_msg_id,
    ngx_str_t *image)
{
    u_char             *p;
    size_t              len;
    ngx_collab_send_t  *s;

    if (conn->nsends >= NGX_COLLAB_UNACKED_MAX) {
        return NGX_BUSY;
    }

    if (!ngx_collab_pg_available()) {
        return NGX_DECLINED;
    }

    len = conn->user.len + conn->user_name.len + client_msg_id->len
          + body->len;

    if (image && image->len) {
        len += sizeof("{\"image\":\"\"}") - 1 + image->len;
    }

    s = ngx_alloc(offsetof(ngx_collab_send_t, data) + len,
                  conn->ws->connection->log);
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->conn = conn;
    s->ref = ref ? json_incref(ref) : NULL;
    s->user_id = conn->user_id;
    s->kind = "user";
    ngx_str_null(&s->metadata);

    p = s->data;

    s->user.data = p;
    s->user.len = conn->user.len;
    p = ngx_cpymem(p, conn->user.data, conn->user.len);

    s->user_name.data = p;
    s->user_name.len = conn->user_name.len;
    p = ngx_cpymem(p, conn->user_name.data, conn->user_name.len);

    s->client_msg_id.data = p;
    s->client_msg_id.len = client_msg_id->len;
    p = ngx_cpymem(p, client_msg_id->data, client_msg_id->len);

    s->body.data = p;
    s->body.len = body->len;
    p = ngx_cpymem(p, body->data, body->len);

    if (image && image->len) {

        /* a data: URL needs no escaping in a JSON string */

        s->metadata.data = p;
        p = ngx_cpymem(p, "{\"image\":\"", sizeof("{\"image\":\"") - 1);
        p = ngx_cpymem(p, image->data, image->len);
        p = ngx_cpymem(p, "\"}", 2);
        s->metadata.len = p - s->metadata.data;
    }

    ngx_queue_insert_tail(&conn->sends, &s->conn_link);
    conn->nsends++;

    ngx_collab_send_enqueue(room, s);

    return NGX_OK;
}


/*
 * The "image" of a send or of a POST of a message: absent (or null), or a
 * picture as ngx_collab_image_parse() takes it, never anything else (the
 * server fetches no URL a user gave).  NGX_OK: image is the data: URL,
 * or empty; NGX_ERROR: refuse the message with BAD_IMAGE.
 */

ngx_int_t
ngx_collab_send_image(json_t *req, ngx_str_t *image)
{
    json_t              *v;
    ngx_collab_image_t   img;

    ngx_str_null(image);

    v = json_object_get(req, "image");

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_string(v)
        || ngx_collab_image_parse((u_char *) json_string_value(v),
                                  json_string_length(v), &img)
           != 0)
    {
        return NGX_ERROR;
    }

    image->data = (u_char *) json_string_value(v);
    image->len = json_string_length(v);

    return NGX_OK;
}


/*
 * An AI participant's reply: no author, kind "ai", metadata; stored and
 * delivered like any message, acked to nobody.
 */

ngx_int_t
ngx_collab_send_ai(ngx_collab_room_t *room, ngx_str_t *body,
    ngx_str_t *metadata, ngx_str_t *client_msg_id)
{
    u_char             *p;
    ngx_collab_send_t  *s;

    s = ngx_alloc(offsetof(ngx_collab_send_t, data) + body->len
                  + metadata->len + client_msg_id->len + 2,
                  ngx_collab_send_log);
    if (s == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(s, offsetof(ngx_collab_send_t, data));

    s->kind = "ai";
    ngx_str_set(&s->user_name, "AI");

    p = s->data;

    s->body.data = p;
    s->body.len = body->len;
    p = ngx_cpymem(p, body->data, body->len);

    s->metadata.data = p;
    s->metadata.len = metadata->len;
    p = ngx_cpymem(p, metadata->data, metadata->len);

    s->client_msg_id.data = p;
    s->client_msg_id.len = client_msg_id->len;
    ngx_memcpy(p, client_msg_id->data, client_msg_id->len);

    ngx_collab_send_enqueue(room, s);

    return NGX_OK;
}


static void
ngx_collab_send_enqueue(ngx_collab_room_t *room, ngx_collab_send_t *s)
{
    ngx_queue_insert_tail(&room->pending, &s->queue);
    room->npending++;

    ngx_collab_send_waiting++;
    ngx_collab_send_hold_update();

    if (!room->inflight && !room->queued) {
        ngx_queue_insert_tail(&ngx_collab_send_ready, &room->ready);
        room->queued = 1;
    }

    /*
     * The window only holds sends while PostgreSQL is busy: with a pool
     * connection idle, waiting would add latency and batch nothing.
     */

    if (ngx_collab_send_window == 0
        || ngx_collab_send_waiting >= NGX_COLLAB_BATCH_MAX
        || ngx_collab_pg_idle())
    {
        ngx_collab_send_flush();

    } else if (!ngx_collab_send_timer.timer_set) {
        ngx_add_timer(&ngx_collab_send_timer, ngx_collab_send_window);
    }
}


/* the connection is going away: its sends go on without their acks */

void
ngx_collab_send_detach(ngx_collab_conn_t *conn)
{
    ngx_queue_t        *q;
    ngx_collab_send_t  *s;

    while (!ngx_queue_empty(&conn->sends)) {
        q = ngx_queue_head(&conn->sends);
        s = ngx_queue_data(q, ngx_collab_send_t, conn_link);

        ngx_queue_remove(q);
        s->conn = NULL;
    }

    conn->nsends = 0;
}


static void
ngx_collab_send_timer_handler(ngx_event_t *ev)
{
    ngx_collab_send_flush();
}


static void
ngx_collab_send_flush(void)
{
    ngx_queue_t        *q;
    ngx_collab_room_t  *room;

    if (ngx_collab_send_timer.timer_set) {
        ngx_del_timer(&ngx_collab_send_timer);
    }

    while (!ngx_queue_empty(&ngx_collab_send_ready)) {
        q = ngx_queue_head(&ngx_collab_send_ready);
        ngx_queue_remove(q);

        room = ngx_queue_data(q, ngx_collab_room_t, ready);
        room->queued = 0;

        if (room->inflight || room->npending == 0) {
            ngx_collab_room_release(room);
            continue;
        }

        ngx_collab_send_batch(room);
    }
}


static void
ngx_collab_send_batch(ngx_collab_room_t *room)
{
    ngx_queue_t         *q;
    ngx_collab_batch_t  *batch;

    batch = ngx_alloc(sizeof(ngx_collab_batch_t), ngx_collab_send_log);
    if (batch == NULL) {
        return;             /* the sends stay queued for the next flush */
    }

    batch->room = room;
    batch->n = 0;
    batch->retried = 0;
    ngx_queue_init(&batch->sends);

    while (!ngx_queue_empty(&room->pending)
           && batch->n < NGX_COLLAB_BATCH_MAX)
    {
        q = ngx_queue_head(&room->pending);
        ngx_queue_remove(q);
        ngx_queue_insert_tail(&batch->sends, q);
        batch->n++;
    }

    room->npending -= batch->n;
    ngx_collab_send_waiting -= batch->n;
    ngx_collab_send_batches++;
    room->inflight = 1;

    if (ngx_collab_send_query(batch) != NGX_OK) {
        ngx_collab_send_finish(batch, "UNAVAILABLE",
                               "the message store is unavailable");
    }
}


/* append_batch: the session id and one array literal per column */

static ngx_int_t
ngx_collab_send_query(ngx_collab_batch_t *batch)
{
    u_char                 *p;
    size_t                  size;
    ngx_queue_t            *q;
    ngx_collab_send_t      *s;
    ngx_collab_pg_query_t  *query;

    size = NGX_INT64_LEN + 5 * 2 + batch->n * (NGX_INT64_LEN + 1 + 5 + 5);

    for (q = ngx_queue_head(&batch->sends);
         q != ngx_queue_sentinel(&batch->sends);
         q = ngx_queue_next(q))
    {
        s = ngx_queue_data(q, ngx_collab_send_t, queue);
        size += 2 * (s->body.len + s->client_msg_id.len + s->metadata.len)
                + 3 * 3;
    }

    query = ngx_collab_pg_query_create(ngx_collab_sql_append_batch, 6, size);
    if (query == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_collab_pg_param_int(query, 0, batch->room->id);

    /* $2 user ids, $3 kinds, $4 bodies, $5 client_msg_ids, $6 metadata */

    p = ngx_collab_pg_param_start(query);
    *p++ = '{';

    for (q = ngx_queue_head(&batch->sends);
         q != ngx_queue_sentinel(&batch->sends);
         q = ngx_queue_next(q))
    {
        s = ngx_queue_data(q, ngx_collab_send_t, queue);

        if (s->user_id) {
            p = ngx_sprintf(p, "%L,", s->user_id);

        } else {
            p = ngx_cpymem(p, "NULL,", 5);
        }
    }

    p[-1] = '}';
    ngx_collab_pg_param_end(query, 1, p);

    p = ngx_collab_pg_param_start(query);
    *p++ = '{';

    for (q = ngx_queue_head(&batch->sends);
         q != ngx_queue_sentinel(&batch->sends);
         q = ngx_queue_next(q))
    {
        s = ngx_queue_data(q, ngx_collab_send_t, queue);
        p = ngx_sprintf(p, "%s,", s->kind);
    }

    p[-1] = '}';
    ngx_collab_pg_param_end(query, 2, p);

    p = ngx_collab_pg_param_start(query);
    *p++ = '{';

    for (q = ngx_queue_head(&batch->sends);
         q != ngx_queue_sentinel(&batch->sends);
         q = ngx_queue_next(q))
    {
        s = ngx_queue_data(q, ngx_collab_send_t, queue);
        p = ngx_collab_send_quote(p, &s->body);
        *p++ = ',';
    }

    p[-1] = '}';
    ngx_collab_pg_param_end(query, 3, p);

    p = ngx_collab_pg_param_start(query);
    *p++ = '{';

    for (q = ngx_queue_head(&batch->sends);
         q != ngx_queue_sentinel(&batch->sends);
         q = ngx_queue_next(q))
    {
        s = ngx_queue_data(q, ngx_collab_send_t, queue);
        p = ngx_collab_send_quote(p, &s->client_msg_id);
        *p++ = ',';
    }

    p[-1] = '}';
    ngx_collab_pg_param_end(query, 4, p);

    p = ngx_collab_pg_param_start(query);
    *p++ = '{';

    for (q = ngx_queue_head(&batch->sends);
         q != ngx_queue_sentinel(&batch->sends);
         q = ngx_queue_next(q))
    {
        s = ngx_queue_data(q, ngx_collab_send_t, queue);

        if (s->metadata.len) {
            p = ngx_collab_send_quote(p, &s->metadata);
            *p++ = ',';

        } else {
            p = ngx_cpymem(p, "NULL,", 5);
        }
    }

    p[-1] = '}';
    ngx_collab_pg_param_end(query, 5, p);

    query->handler = ngx_collab_send_done;
    query->data = batch;

    return ngx_collab_pg_send(query);
}


/* an array element: in double quotes, with " and \ escaped */

static u_char *
ngx_collab_send_quote(u_char *p, ngx_str_t *s)
{
    u_char  *c, *last;

    *p++ = '"';

    for (c = s->data, last = c + s->len; c < last; c++) {
        if (*c == '"' || *c == '\\') {
            *p++ = '\\';
        }

        *p++ = *c;
    }

    *p++ = '"';

    return p;
}


static void
ngx_collab_send_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                  row, n;
    ngx_queue_t         *qq;
    ngx_collab_send_t   *s;
    ngx_collab_batch_t  *batch;

    batch = q->data;

    if (ngx_collab_store_is(res, "23505", "chat_messages_client_msg_id_key")
        && batch->retried < NGX_COLLAB_BATCH_RETRIES)
    {
        /*
         * A copy of one of these sends committed meanwhile (the unique
         * check waited for it): send again to find it.  Another copy may
         * race in the next attempt, hence a few tries.
         */

        batch->retried++;

        if (ngx_collab_send_query(batch) == NGX_OK) {
            return;
        }
    }

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK, ngx_collab_send_log)
        != NGX_OK)
    {
        ngx_collab_send_finish(batch, "UNAVAILABLE",
                               "the message could not be stored");
        return;
    }

    n = PQntuples(res);

    if (n == 0) {
        ngx_collab_send_finish(batch, "NOT_FOUND", "session not found");
        return;
    }

    /* one row per send, in order */

    for (row = 0; row < n && !ngx_queue_empty(&batch->sends); row++) {
        qq = ngx_queue_head(&batch->sends);
        ngx_queue_remove(qq);

        s = ngx_queue_data(qq, ngx_collab_send_t, queue);

        ngx_collab_send_ack(batch, s, res, row);
        ngx_collab_send_free(s);
    }

    ngx_collab_send_finish(batch, "UNAVAILABLE",
                           "the message store answered short");
}


/* acks a stored send to its sender and delivers it if it is new */

static void
ngx_collab_send_ack(ngx_collab_batch_t *batch, ngx_collab_send_t *s,
    PGresult *res, int row)
{
    int                   col;
    int64_t               seq;
    json_t               *ack, *event, *created_at;
    ngx_uint_t            created;
    ngx_collab_room_t    *room;
    ngx_collab_ws_msg_t  *msg;

    room = batch->room;

    seq = ngx_collab_store_int(res, row, "seq");
    col = PQfnumber(res, "created");
    created = col >= 0 && PQgetvalue(res, row, col)[0] == 't';
    created_at = ngx_collab_store_text(res, row, "created_at");

    if (s->conn) {
        ack = json_pack("{s:s,s:O?,s:s%,s:s%,s:I,s:O,s:b}",
                        "op", "ack",
                        "ref", s->ref,
                        "session", room->slug.data, room->slug.len,
                        "clientMsgId", s->client_msg_id.data,
                        s->client_msg_id.len,
                        "seq", (json_int_t) seq,
                        "createdAt", created_at,
                        "duplicate", !created);

        ngx_collab_protocol_reply(s->conn, ack);
    }

    if (created) {
        event = json_pack("{s:s,s:s%,s:I,s:o,s:o,s:s,s:s%,s:s%,s:O}",
                          "op", "message",
                          "session", room->slug.data, room->slug.len,
                          "seq", (json_int_t) seq,
                          "user", s->user.len
                                  ? json_stringn((char *) s->user.data,
                                                 s->user.len)
                                  : json_null(),
                          "userName", s->user_name.len
                                      ? json_stringn((char *)
                                                     s->user_name.data,
                                                     s->user_name.len)
                                      : json_null(),
                          "kind", s->kind,
                          "body", s->body.data, s->body.len,
                          "clientMsgId", s->client_msg_id.data,
                          s->client_msg_id.len,
                          "createdAt", created_at);

        if (event && s->metadata.len) {
            json_object_set_new(event, "metadata",
                                json_loadb((char *) s->metadata.data,
                                           s->metadata.len, 0, NULL));
        }

        if (event) {
            msg = ngx_collab_protocol_encode(event, ngx_collab_send_log);
            json_decref(event);

            if (msg) {
                ngx_collab_redis_publish(room, seq, msg->payload,
                                         msg->len - (msg->payload
                                                     - msg->data));
                ngx_collab_room_publish(room, seq, msg);
                ngx_collab_ws_msg_release(msg);
            }
        }

        /* a question to the assistant: the worker that stored it asks */

        if (s->user_id) {
            ngx_collab_ai_trigger(room, seq, s->user_id, &s->body,
                                  &s->metadata);
        }
    }

    json_decref(created_at);
}


/* answers what is left in the batch with the error, frees it */

static void
ngx_collab_send_finish(ngx_collab_batch_t *batch, const char *code,
    const char *message)
{
    ngx_queue_t        *q;
    ngx_collab_room_t  *room;
    ngx_collab_send_t  *s;

    while (!ngx_queue_empty(&batch->sends)) {
        q = ngx_queue_head(&batch->sends);
        ngx_queue_remove(q);

        s = ngx_queue_data(q, ngx_collab_send_t, queue);

        if (code && s->conn) {
            ngx_collab_protocol_error(s->conn, code, s->ref, message);
        }

        ngx_collab_send_free(s);
    }

    room = batch->room;
    room->inflight = 0;

    ngx_free(batch);

    ngx_collab_send_batches--;

    if (room->npending) {
        ngx_queue_insert_tail(&ngx_collab_send_ready, &room->ready);
        room->queued = 1;

        /* these waited a whole batch already */
        ngx_collab_send_flush();
        return;
    }

    ngx_collab_send_hold_update();

    ngx_collab_room_release(room);
}


static void
ngx_collab_send_free(ngx_collab_send_t *s)
{
    if (s->conn) {
        ngx_queue_remove(&s->conn_link);
        s->conn->nsends--;
    }

    if (s->ref) {
        json_decref(s->ref);
    }

    ngx_free(s);
}


/*
 * A worker that shuts down gracefully (reload, quit) exits once no timer
 * that is not cancelable is left.  While sends wait or a batch is in
 * PostgreSQL, this one is: what a connection closed by the shutdown sent
 * (1012) or the assistant is writing is stored and published before the
 * worker goes.  The pool's own timeouts bound the wait; the timer only
 * comes back while there still is something.
 */

static void
ngx_collab_send_hold_update(void)
{
    if (ngx_collab_send_waiting + ngx_collab_send_batches) {
        if (!ngx_collab_send_hold.timer_set) {
            ngx_add_timer(&ngx_collab_send_hold, NGX_COLLAB_SEND_HOLD);
        }

    } else if (ngx_collab_send_hold.timer_set) {
        ngx_del_timer(&ngx_collab_send_hold);
    }
}


static void
ngx_collab_send_hold_handler(ngx_event_t *ev)
{
    ngx_collab_send_hold_update();
}
