
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The worker's registry of chat sessions with local connections: an
 * rbtree keyed by chat_sessions.id, each room with the queue of its
 * members (a connection joined to the room).  A room exists while it has
 * members, sends waiting for a batch, or a batch in flight.
 *
 * Delivery is by seq.  A member is "live" once it has caught up; a live
 * member gets every event whose seq is above the last one it got (so an
 * event is never written twice to a connection).  While a member catches
 * up (its join is reading history from PostgreSQL), events committed in
 * the meantime are held for it, up to NGX_COLLAB_ROOM_HOLD; the member is
 * registered before the history query starts, so an event is either in
 * the query's snapshot or held, never lost.  When the hold overflows the
 * held events are dropped and the join answers "more", so the client
 * reads them from PostgreSQL instead: memory stays bounded and nothing is
 * skipped.  Event frames are shared: held and queued by reference.
 *
 * Events reach a room from this worker's own commits and, through Redis,
 * from other workers and hosts, so they may come out of order or not at
 * all.  A room delivers strictly in seq order: room->seq is the last seq
 * it delivered, an event beyond a gap waits in room->early (at most
 * NGX_COLLAB_ROOM_EARLY) for the missing ones, and a gap still open after
 * NGX_COLLAB_ROOM_GAP ms is filled from PostgreSQL (a "resync"), which
 * also runs for every room when Redis comes back.  A room's seq starts at
 * the session's newest when the room is created by a join.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>

#include "ngx_collab.h"
#include "ngx_collab_pg.h"
#include "ngx_collab_store.h"
#include "ngx_collab_redis.h"
#include "ngx_collab_protocol.h"
#include "ngx_collab_room.h"


static void ngx_collab_member_drop_held(ngx_collab_member_t *m,
    int64_t upto);
static void ngx_collab_room_deliver(ngx_collab_room_t *room, int64_t seq,
    ngx_collab_ws_msg_t *msg);
static void ngx_collab_room_drain(ngx_collab_room_t *room);
static void ngx_collab_room_gap(ngx_event_t *ev);
static void ngx_collab_room_resync_done(ngx_collab_pg_query_t *q,
    PGresult *res);


static ngx_rbtree_t       ngx_collab_rooms;
static ngx_rbtree_node_t  ngx_collab_rooms_sentinel;


ngx_collab_room_t *
ngx_collab_room_lookup(int64_t id)
{
    ngx_rbtree_key_t    key;
    ngx_rbtree_node_t  *node, *sentinel;

    if (ngx_collab_rooms.root == NULL) {
        return NULL;
    }

    key = (ngx_rbtree_key_t) id;

    node = ngx_collab_rooms.root;
    sentinel = ngx_collab_rooms.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;
            continue;
        }

        if (key > node->key) {
            node = node->right;
            continue;
        }

        return (ngx_collab_room_t *) node;
    }

    return NULL;
}


ngx_collab_room_t *
ngx_collab_room_get(int64_t id, ngx_str_t *slug, ngx_log_t *log)
{
    ngx_collab_room_t  *room;

    if (ngx_collab_rooms.root == NULL) {
        ngx_rbtree_init(&ngx_collab_rooms, &ngx_collab_rooms_sentinel,
                        ngx_rbtree_insert_value);
    }

    room = ngx_collab_room_lookup(id);

    if (room) {
        return room;
    }

    room = ngx_alloc(offsetof(ngx_collab_room_t, data) + slug->len, log);
    if (room == NULL) {
        return NULL;
    }

    ngx_memzero(room, sizeof(ngx_collab_room_t));

    room->node.key = (ngx_rbtree_key_t) id;
    room->id = id;
    room->slug.len = slug->len;
    room->slug.data = room->data;
    ngx_memcpy(room->data, slug->data, slug->len);

    ngx_queue_init(&room->members);
    ngx_queue_init(&room->pending);

    room->seq = -1;
    room->ai_trigger = NGX_COLLAB_AI_SERVER;   /* until its join says */

    room->gap.handler = ngx_collab_room_gap;
    room->gap.data = room;
    room->gap.log = ngx_cycle->log;     /* the room outlives connections */
    room->gap.cancelable = 1;

    ngx_rbtree_insert(&ngx_collab_rooms, &room->node);

    ngx_collab_redis_subscribe(room);

    return room;
}


void
ngx_collab_room_release(ngx_collab_room_t *room)
{
    ngx_uint_t  i;

    if (room->nmembers || room->npending || room->inflight || room->queued
        || room->resyncing || room->ai)
    {
        return;
    }

    ngx_collab_redis_unsubscribe(room);

    if (room->gap.timer_set) {
        ngx_del_timer(&room->gap);
    }

    for (i = 0; i < room->nearly; i++) {
        ngx_collab_ws_msg_release(room->early[i].msg);
    }

    if (room->early) {
        ngx_free(room->early);
    }

    ngx_collab_presence_snapshot_free(&room->presence);
    ngx_collab_presence_joined_free(room);

    ngx_rbtree_delete(&ngx_collab_rooms, &room->node);
    ngx_free(room);
}


ngx_collab_member_t *
ngx_collab_member_add(ngx_collab_room_t *room, ngx_collab_conn_t *conn,
    ngx_collab_ws_t *ws, ngx_queue_t *list)
{
    ngx_collab_member_t  *m;

    m = ngx_alloc(sizeof(ngx_collab_member_t), ws->connection->log);
    if (m == NULL) {
        return NULL;
    }

    ngx_memzero(m, sizeof(ngx_collab_member_t));

    m->room = room;
    m->conn = conn;
    m->ws = ws;

    ngx_queue_insert_tail(&room->members, &m->room_link);
    ngx_queue_insert_tail(list, &m->conn_link);
    room->nmembers++;

    return m;
}


void
ngx_collab_member_remove(ngx_collab_member_t *m)
{
    ngx_collab_room_t  *room;

    room = m->room;

    if (m->present) {
        ngx_collab_presence_disconnect(room->id, m->user_id, m->status);
        ngx_collab_redis_presence(room, m->user_id);
    }

    ngx_queue_remove(&m->room_link);
    ngx_queue_remove(&m->conn_link);
    room->nmembers--;

    ngx_collab_member_drop_held(m, INT64_MAX);

    ngx_free(m);

    ngx_collab_room_release(room);
}


/*
 * A page of history up to seq has been sent to the member.  Returns 1 if
 * the member may go live now (nothing more to read and nothing dropped
 * from its hold), 0 if the client must ask for more.
 */

ngx_uint_t
ngx_collab_member_advance(ngx_collab_member_t *m, int64_t seq,
    ngx_uint_t more)
{
    if (seq > m->last_seq) {
        m->last_seq = seq;
    }

    ngx_collab_member_drop_held(m, m->last_seq);

    if (more) {
        return 0;
    }

    if (m->overflow) {
        m->overflow = 0;
        return 0;
    }

    return 1;
}


void
ngx_collab_member_live(ngx_collab_member_t *m)
{
    ngx_uint_t  i;

    m->live = 1;

    for (i = 0; i < m->nheld; i++) {

        if (m->held[i].seq > m->last_seq) {
            (void) ngx_collab_ws_enqueue(m->ws, m->held[i].msg);
            m->last_seq = m->held[i].seq;
        }
    }

    ngx_collab_member_drop_held(m, INT64_MAX);
}


/*
 * An event with its seq, from this worker's commit, from Redis or from a
 * resync: delivered now if it is the next one, held if it comes early,
 * dropped if it was delivered already.
 */

void
ngx_collab_room_publish(ngx_collab_room_t *room, int64_t seq,
    ngx_collab_ws_msg_t *msg)
{
    ngx_uint_t  i;

    if (room->seq < 0) {
        room->seq = seq - 1;
    }

    if (seq <= room->seq) {
        return;
    }

    if (seq == room->seq + 1) {
        ngx_collab_room_deliver(room, seq, msg);
        room->seq = seq;
        ngx_collab_room_drain(room);
        return;
    }

    /* beyond a gap: keep it in seq order, once */

    if (room->early == NULL) {
        room->early = ngx_alloc(NGX_COLLAB_ROOM_EARLY
                                * sizeof(ngx_collab_held_t),
                                room->gap.log);
    }

    if (room->early && room->nearly < NGX_COLLAB_ROOM_EARLY) {

        for (i = room->nearly; i > 0 && room->early[i - 1].seq > seq; i--) {
            /* void */
        }

        if (i == 0 || room->early[i - 1].seq != seq) {
            ngx_memmove(&room->early[i + 1], &room->early[i],
                        (room->nearly - i) * sizeof(ngx_collab_held_t));

            msg->refs++;
            room->early[i].seq = seq;
            room->early[i].msg = msg;
            room->nearly++;
        }
    }

    /* what does not fit is read from PostgreSQL with the rest of the gap */

    if (!room->gap.timer_set && !room->resyncing) {
        ngx_add_timer(&room->gap, NGX_COLLAB_ROOM_GAP);
    }
}


/* delivers the held events that are now next in seq */

static void
ngx_collab_room_drain(ngx_collab_room_t *room)
{
    ngx_uint_t  i;

    for (i = 0; i < room->nearly; i++) {

        if (room->early[i].seq > room->seq + 1) {
            break;
        }

        if (room->early[i].seq == room->seq + 1) {
            ngx_collab_room_deliver(room, room->early[i].seq,
                                    room->early[i].msg);
            room->seq = room->early[i].seq;
        }

        ngx_collab_ws_msg_release(room->early[i].msg);
    }

    if (i) {
        ngx_memmove(&room->early[0], &room->early[i],
                    (room->nearly - i) * sizeof(ngx_collab_held_t));
        room->nearly -= i;
    }

    if (room->nearly == 0) {
        if (room->gap.timer_set) {
            ngx_del_timer(&room->gap);
        }

        if (room->early) {
            ngx_free(room->early);
            room->early = NULL;
        }
    }
}


static void
ngx_collab_room_gap(ngx_event_t *ev)
{
    ngx_collab_room_resync(ev->data);
}


/* reads from PostgreSQL what this room has not delivered yet */

void
ngx_collab_room_resync(ngx_collab_room_t *room)
{
    ngx_collab_pg_query_t  *q;

    if (room->resyncing) {
        room->resync_again = 1;
        return;
    }

    if (room->seq < 0) {
        return;
    }

    if (room->gap.timer_set) {
        ngx_del_timer(&room->gap);
    }

    q = ngx_collab_pg_query_create(ngx_collab_sql_messages_since, 3,
                                   3 * NGX_INT64_LEN);
    if (q == NULL) {
        goto failed;
    }

    (void) ngx_collab_pg_param_int(q, 0, room->id);
    (void) ngx_collab_pg_param_int(q, 1, room->seq);
    (void) ngx_collab_pg_param_int(q, 2, 500);

    q->handler = ngx_collab_room_resync_done;
    q->data = room;

    if (ngx_collab_pg_send(q) != NGX_OK) {
        goto failed;
    }

    room->resyncing = 1;
    room->resync_again = 0;

    return;

failed:

    /* PostgreSQL is unavailable: try again later, if anyone still waits */

    if (room->nmembers) {
        ngx_add_timer(&room->gap, 1000);
    }
}


static void
ngx_collab_room_resync_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                   i, n;
    json_t               *event, *m;
    int64_t               seq;
    ngx_collab_room_t    *room;
    ngx_collab_ws_msg_t  *msg;

    room = q->data;
    room->resyncing = 0;

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK, room->gap.log) != NGX_OK) {

        if (room->nmembers) {
            ngx_add_timer(&room->gap, 1000);
        }

        ngx_collab_room_release(room);
        return;
    }

    n = PQntuples(res);

    for (i = 0; i < n; i++) {
        seq = ngx_collab_store_int(res, i, "seq");

        if (seq != room->seq + 1) {
            continue;
        }

        event = json_pack("{s:s,s:s%}", "op", "message",
                          "session", room->slug.data, room->slug.len);
        m = ngx_collab_store_message(res, i);

        if (event == NULL || m == NULL || json_object_update(event, m) != 0) {
            json_decref(event);
            json_decref(m);
            break;
        }

        json_decref(m);

        msg = ngx_collab_protocol_encode(event, room->gap.log);
        json_decref(event);

        if (msg == NULL) {
            break;
        }

        ngx_collab_room_deliver(room, seq, msg);
        ngx_collab_ws_msg_release(msg);

        room->seq = seq;
    }

    ngx_collab_room_drain(room);

    if (n == 500 || room->resync_again) {
        ngx_collab_room_resync(room);

    } else if (room->nearly && !room->gap.timer_set) {
        ngx_add_timer(&room->gap, NGX_COLLAB_ROOM_GAP);
    }

    ngx_collab_room_release(room);
}


/* writes an event to every member of the room that has not had it */

static void
ngx_collab_room_deliver(ngx_collab_room_t *room, int64_t seq,
    ngx_collab_ws_msg_t *msg)
{
    ngx_queue_t          *q;
    ngx_collab_member_t  *m;

    for (q = ngx_queue_head(&room->members);
         q != ngx_queue_sentinel(&room->members);
         q = ngx_queue_next(q))
    {
        m = ngx_queue_data(q, ngx_collab_member_t, room_link);

        if (seq <= m->last_seq) {
            continue;
        }

        if (m->live) {
            (void) ngx_collab_ws_enqueue(m->ws, msg);
            m->last_seq = seq;
            continue;
        }

        if (m->overflow) {
            continue;
        }

        if (m->held == NULL) {
            m->held = ngx_alloc(NGX_COLLAB_ROOM_HOLD
                                * sizeof(ngx_collab_held_t),
                                m->ws->connection->log);
            if (m->held == NULL) {
                m->overflow = 1;
                continue;
            }
        }

        if (m->nheld == NGX_COLLAB_ROOM_HOLD) {
            ngx_collab_member_drop_held(m, INT64_MAX);
            m->overflow = 1;
            continue;
        }

        msg->refs++;
        m->held[m->nheld].seq = seq;
        m->held[m->nheld].msg = msg;
        m->nheld++;
    }
}


/* an event outside the seq order (presence, typing) to live members */

void
ngx_collab_room_broadcast(ngx_collab_room_t *room, ngx_collab_ws_msg_t *msg,
    int64_t except_user)
{
    ngx_queue_t          *q;
    ngx_collab_member_t  *m;

    for (q = ngx_queue_head(&room->members);
         q != ngx_queue_sentinel(&room->members);
         q = ngx_queue_next(q))
    {
        m = ngx_queue_data(q, ngx_collab_member_t, room_link);

        if (m->live && (except_user == 0 || m->user_id != except_user)) {
            (void) ngx_collab_ws_enqueue(m->ws, msg);
        }
    }
}


ngx_collab_room_t *
ngx_collab_room_first(void)
{
    ngx_rbtree_node_t  *node;

    if (ngx_collab_rooms.root == NULL
        || ngx_collab_rooms.root == ngx_collab_rooms.sentinel)
    {
        return NULL;
    }

    node = ngx_rbtree_min(ngx_collab_rooms.root, ngx_collab_rooms.sentinel);

    return (ngx_collab_room_t *) node;
}


ngx_collab_room_t *
ngx_collab_room_next(ngx_collab_room_t *room)
{
    return (ngx_collab_room_t *) ngx_rbtree_next(&ngx_collab_rooms,
                                                 &room->node);
}


/* releases held events up to seq; all of them frees the hold */

static void
ngx_collab_member_drop_held(ngx_collab_member_t *m, int64_t upto)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < m->nheld; i++) {

        if (m->held[i].seq <= upto) {
            ngx_collab_ws_msg_release(m->held[i].msg);
            continue;
        }

        m->held[n++] = m->held[i];
    }

    m->nheld = n;

    if (n == 0 && m->held) {
        ngx_free(m->held);
        m->held = NULL;
    }
}
