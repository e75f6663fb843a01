
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
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_collab_room.h"


static void ngx_collab_member_drop_held(ngx_collab_member_t *m,
    int64_t upto);


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

    ngx_rbtree_insert(&ngx_collab_rooms, &room->node);

    return room;
}


void
ngx_collab_room_release(ngx_collab_room_t *room)
{
    if (room->nmembers || room->npending || room->inflight || room->queued) {
        return;
    }

    ngx_collab_presence_snapshot_free(&room->presence);

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


/* writes an event to every member of the room that has not had it */

void
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
