
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The worker's side of presence: every collab_presence_batch, for each
 * room with local connections, the worker compares the session's
 * presence in the zone with what it last fanned out and sends the
 * difference as one "presence" event {joins, leaves, updates}, plus a
 * "typing" event per user who started or stopped typing (not to that
 * user's own connections).  A mass reconnect is therefore a handful of
 * events per room, not one per connection.
 *
 * A room is looked at again only when the session's version in the zone
 * moved, or when something in its last snapshot changes by the clock (a
 * grace period or a typing indicator ending), or once a second: that is
 * how users of a worker that died are seen to go.  Workers need no
 * messages between them for this on one host; the zone is the meeting
 * point.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <jansson.h>

#include "ngx_collab.h"
#include "ngx_collab_room.h"
#include "ngx_collab_presence.h"
#include "ngx_collab_protocol.h"


static void ngx_collab_presence_tick(ngx_event_t *ev);
static void ngx_collab_presence_room(ngx_collab_room_t *room);
static json_t *ngx_collab_presence_item(ngx_collab_presence_item_t *item,
    ngx_uint_t full);
static void ngx_collab_presence_typing_event(ngx_collab_room_t *room,
    ngx_collab_presence_item_t *item, ngx_uint_t on);


static ngx_event_t  ngx_collab_presence_tick_ev;
static ngx_msec_t   ngx_collab_presence_batch;


void
ngx_collab_presence_events_init(ngx_msec_t batch, ngx_log_t *log)
{
    if (!ngx_collab_presence_enabled()) {
        return;
    }

    ngx_collab_presence_batch = batch;

    ngx_collab_presence_tick_ev.handler = ngx_collab_presence_tick;
    ngx_collab_presence_tick_ev.log = log;
    ngx_collab_presence_tick_ev.cancelable = 1;

    ngx_add_timer(&ngx_collab_presence_tick_ev, batch);
}


static void
ngx_collab_presence_tick(ngx_event_t *ev)
{
    ngx_collab_room_t  *room;

    for (room = ngx_collab_room_first(); room;
         room = ngx_collab_room_next(room))
    {
        if (room->nmembers) {
            ngx_collab_presence_room(room);
        }
    }

    ngx_add_timer(ev, ngx_collab_presence_batch);
}


static void
ngx_collab_presence_room(ngx_collab_room_t *room)
{
    json_t                          *joins, *leaves, *updates, *event;
    uint64_t                         version;
    ngx_int_t                        cmp;
    ngx_uint_t                       i, j;
    ngx_msec_t                       now;
    ngx_collab_ws_msg_t             *msg;
    ngx_collab_presence_item_t      *a, *b;
    ngx_collab_presence_snapshot_t   snap, *old;

    now = ngx_current_msec;
    old = &room->presence;

    /* the joins of the last batch shared a list; the next ones get anew */

    ngx_collab_presence_joined_free(room);

    version = ngx_collab_presence_version(room->id);

    if (version == old->version
        && (ngx_msec_int_t) (now - room->presence_next) < 0)
    {
        return;
    }

    if (ngx_collab_presence_snapshot(room->id, &snap, 0, ngx_cycle->log)
        != NGX_OK)
    {
        return;
    }

    joins = json_array();
    leaves = json_array();
    updates = json_array();

    if (joins == NULL || leaves == NULL || updates == NULL) {
        goto done;
    }

    /* both snapshots are in user order: merge them */

    i = 0;
    j = 0;

    while (i < old->n || j < snap.n) {
        a = (i < old->n) ? &old->items[i] : NULL;
        b = (j < snap.n) ? &snap.items[j] : NULL;

        if (a == NULL) {
            cmp = 1;

        } else if (b == NULL) {
            cmp = -1;

        } else {
            cmp = (a->user < b->user) ? -1 : (a->user > b->user);
        }

        if (cmp < 0) {
            a->status = NGX_COLLAB_OFFLINE;
            a->last_seen = ngx_collab_presence_wall();
            json_array_append_new(leaves, ngx_collab_presence_item(a, 0));

            if (a->typing) {
                ngx_collab_presence_typing_event(room, a, 0);
            }

            i++;
            continue;
        }

        if (cmp > 0) {
            json_array_append_new(joins, ngx_collab_presence_item(b, 1));

            if (b->typing) {
                ngx_collab_presence_typing_event(room, b, 1);
            }

            j++;
            continue;
        }

        if (a->status != b->status) {
            json_array_append_new(updates, ngx_collab_presence_item(b, 0));
        }

        /*
         * typing on again, or on and started anew (stopped and started
         * within one batch: a client clears a user's indicator when a
         * message of theirs arrives, and must hear the new start), or
         * refreshed: clients' safety timers rely on hearing it
         */

        if (a->typing != b->typing
            || (b->typing
                && (a->typing_starts != b->typing_starts
                    || (ngx_msec_int_t) (b->typing_until - a->typing_until)
                       >= 1000)))
        {
            ngx_collab_presence_typing_event(room, b, b->typing);
        }

        i++;
        j++;
    }

    if (json_array_size(joins) || json_array_size(leaves)
        || json_array_size(updates))
    {
        event = json_pack("{s:s,s:s%,s:O,s:O,s:O}",
                          "op", "presence",
                          "session", room->slug.data, room->slug.len,
                          "joins", joins, "leaves", leaves,
                          "updates", updates);

        if (event) {
            msg = ngx_collab_protocol_encode(event, ngx_cycle->log);
            json_decref(event);

            if (msg) {
                ngx_collab_room_broadcast(room, msg, 0);
                ngx_collab_ws_msg_release(msg);
            }
        }
    }

done:

    json_decref(joins);
    json_decref(leaves);
    json_decref(updates);

    ngx_collab_presence_snapshot_free(old);
    *old = snap;

    room->presence_next = now + 1000;

    if ((ngx_msec_int_t) (snap.next - room->presence_next) < 0) {
        room->presence_next = snap.next;
    }
}


static void
ngx_collab_presence_typing_event(ngx_collab_room_t *room,
    ngx_collab_presence_item_t *item, ngx_uint_t on)
{
    json_t               *event;
    ngx_collab_ws_msg_t  *msg;

    event = json_pack("{s:s,s:s%,s:s%,s:b}",
                      "op", "typing",
                      "session", room->slug.data, room->slug.len,
                      "user", item->ext.data, item->ext.len,
                      "on", (int) on);
    if (event == NULL) {
        return;
    }

    msg = ngx_collab_protocol_encode(event, ngx_cycle->log);
    json_decref(event);

    if (msg) {
        ngx_collab_room_broadcast(room, msg, item->user);
        ngx_collab_ws_msg_release(msg);
    }
}


/*
 * The "presence" list of a joined reply, serialized.  In a big session
 * (NGX_COLLAB_PRESENCE_SHARED entries or more at the last tick) one
 * serialization serves every join until the room's next tick, at most
 * collab_presence_batch: what changed since it was made comes in that
 * tick's "presence" event, which the joiner receives as a member (an
 * entry repeated there is harmless, events carry state, not deltas).
 * Otherwise a join storm of n users builds O(n^2) JSON: 5,000 joins took
 * 55 s.  Small sessions get the zone as it is at their join.
 */

ngx_str_t *
ngx_collab_presence_joined(ngx_collab_room_t *room)
{
    char                            *s;
    json_t                          *list;
    ngx_collab_presence_snapshot_t   snap;

    if (room->presence_json.data
        && room->presence.n >= NGX_COLLAB_PRESENCE_SHARED)
    {
        return &room->presence_json;
    }

    ngx_collab_presence_joined_free(room);

    if (ngx_collab_presence_snapshot(room->id, &snap, 0, ngx_cycle->log)
        != NGX_OK)
    {
        return NULL;
    }

    list = ngx_collab_presence_list(&snap);
    ngx_collab_presence_snapshot_free(&snap);

    if (list == NULL) {
        return NULL;
    }

    s = json_dumps(list, NGX_COLLAB_JSON_FLAGS);
    json_decref(list);

    if (s == NULL) {
        return NULL;
    }

    room->presence_json.data = (u_char *) s;
    room->presence_json.len = ngx_strlen(s);

    return &room->presence_json;
}


void
ngx_collab_presence_joined_free(ngx_collab_room_t *room)
{
    if (room->presence_json.data) {
        free(room->presence_json.data);
        ngx_str_null(&room->presence_json);
    }
}


/* the "presence" list of a joined reply, or of the API's presence read */

json_t *
ngx_collab_presence_list(ngx_collab_presence_snapshot_t *snap)
{
    json_t      *list;
    ngx_uint_t   i;

    list = json_array();
    if (list == NULL) {
        return NULL;
    }

    for (i = 0; i < snap->n; i++) {
        if (json_array_append_new(list,
                              ngx_collab_presence_item(&snap->items[i], 1)))
        {
            json_decref(list);
            return NULL;
        }
    }

    return list;
}


static json_t *
ngx_collab_presence_item(ngx_collab_presence_item_t *item, ngx_uint_t full)
{
    json_t  *o;

    o = json_pack("{s:s%,s:s,s:I}",
                  "user", item->ext.data, item->ext.len,
                  "status", ngx_collab_presence_name(item->status),
                  "lastSeen", (json_int_t) item->last_seen);

    if (o && full) {
        json_object_set_new(o, "userName",
                            item->name.len
                            ? json_stringn((char *) item->name.data,
                                           item->name.len)
                            : json_null());
        json_object_set_new(o, "typing", json_boolean(item->typing));
    }

    return o;
}


const char *
ngx_collab_presence_name(ngx_uint_t status)
{
    switch (status) {

    case NGX_COLLAB_ONLINE:
        return "online";

    case NGX_COLLAB_AWAY:
        return "away";

    default:
        return "offline";
    }
}
