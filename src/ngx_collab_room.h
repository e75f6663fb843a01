
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_ROOM_H_INCLUDED_
#define _NGX_COLLAB_ROOM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_collab_ws.h"
#include "ngx_collab_presence.h"


/* events held for a member while it catches up, at most */
#define NGX_COLLAB_ROOM_HOLD  256

/* events held for a room beyond a gap in seqs, at most */
#define NGX_COLLAB_ROOM_EARLY 256

/* how long a gap may wait for its missing event before PostgreSQL is read */
#define NGX_COLLAB_ROOM_GAP   200


typedef struct ngx_collab_conn_s    ngx_collab_conn_t;
typedef struct ngx_collab_room_s    ngx_collab_room_t;
typedef struct ngx_collab_member_s  ngx_collab_member_t;


typedef struct {
    int64_t                     seq;
    ngx_collab_ws_msg_t        *msg;
} ngx_collab_held_t;


/* a chat session as this worker knows it: its local connections */

struct ngx_collab_room_s {
    ngx_rbtree_node_t           node;          /* key: chat_sessions.id */
    int64_t                     id;
    ngx_str_t                   slug;

    ngx_queue_t                 members;
    ngx_uint_t                  nmembers;

    ngx_queue_t                 pending;       /* sends for the next batch */
    ngx_uint_t                  npending;
    ngx_queue_t                 ready;         /* in the worker's list */
    unsigned                    queued:1;      /* ... of rooms to flush */
    unsigned                    inflight:1;    /* a batch in PostgreSQL */
    unsigned                    retried:1;

    ngx_collab_presence_snapshot_t  presence;  /* as last fanned out */
    ngx_msec_t                  presence_next;
    ngx_str_t                   presence_json; /* a joined reply's list */

    int64_t                     seq;           /* delivered in order */
    ngx_collab_held_t          *early;         /* beyond a gap, by seq */
    ngx_uint_t                  nearly;
    ngx_event_t                 gap;
    unsigned                    resyncing:1;
    unsigned                    resync_again:1;

    void                       *ai;            /* a reply being made */
    ngx_uint_t                  ai_trigger;    /* NGX_COLLAB_AI_* */
    ngx_uint_t                  ai_image;      /* NGX_COLLAB_AI_IMAGE_* */

    u_char                      data[1];       /* the slug */
};


/* one connection joined to one room */

struct ngx_collab_member_s {
    ngx_queue_t                 room_link;
    ngx_queue_t                 conn_link;
    ngx_collab_room_t          *room;
    ngx_collab_conn_t          *conn;
    ngx_collab_ws_t            *ws;

    int64_t                     last_seq;      /* delivered so far */
    int64_t                     user_id;

    ngx_collab_held_t          *held;          /* while catching up */
    ngx_uint_t                  nheld;

    unsigned                    live:1;
    unsigned                    overflow:1;
    unsigned                    joining:1;
    unsigned                    present:1;     /* counted in the zone */
    unsigned                    removed:1;     /* while joining */
    unsigned                    status:2;      /* online or away */
};


ngx_collab_room_t *ngx_collab_room_lookup(int64_t id);
ngx_collab_room_t *ngx_collab_room_get(int64_t id, ngx_str_t *slug,
    ngx_log_t *log);
void ngx_collab_room_release(ngx_collab_room_t *room);

ngx_collab_member_t *ngx_collab_member_add(ngx_collab_room_t *room,
    ngx_collab_conn_t *conn, ngx_collab_ws_t *ws, ngx_queue_t *list);
void ngx_collab_member_remove(ngx_collab_member_t *m);
ngx_uint_t ngx_collab_member_advance(ngx_collab_member_t *m, int64_t seq,
    ngx_uint_t more);
void ngx_collab_member_live(ngx_collab_member_t *m);

void ngx_collab_room_publish(ngx_collab_room_t *room, int64_t seq,
    ngx_collab_ws_msg_t *msg);
void ngx_collab_room_resync(ngx_collab_room_t *room);
void ngx_collab_room_broadcast(ngx_collab_room_t *room,
    ngx_collab_ws_msg_t *msg, int64_t except_user);
ngx_collab_room_t *ngx_collab_room_first(void);
ngx_collab_room_t *ngx_collab_room_next(ngx_collab_room_t *room);

/* ngx_collab_presence_events.c */
ngx_str_t *ngx_collab_presence_joined(ngx_collab_room_t *room);
void ngx_collab_presence_joined_free(ngx_collab_room_t *room);


#endif /* _NGX_COLLAB_ROOM_H_INCLUDED_ */
