
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * Redis pub/sub between workers and hosts, with the system's hiredis.
 *
 * Each worker holds two hiredis async contexts: one that SUBSCRIBEs and
 * one that PUBLISHes (a subscribed connection may send nothing else).
 * The adapter hands hiredis's socket to nginx through ngx_get_connection()
 * and level-triggered events: hiredis reads a bounded amount per call,
 * and a level-triggered read event is reported again while data waits,
 * so nothing is left unread as it could be with edge-triggered epoll.
 *
 * Channels are per session, "<prefix>s:<session id>".  A worker is
 * subscribed to the channel of every room it has (a room exists while
 * the worker has connections in the session, or sends for it in flight);
 * the room's creation subscribes and its release unsubscribes.  A stored
 * message is published once, after COMMIT, as "<seq> <origin>\n<event>",
 * the event being the very JSON text the local connections get; a worker
 * receiving it writes those bytes to its connections without re-encoding,
 * ignores what it published itself, and leaves the ordering to the room
 * (ngx_collab_room_publish()): by seq, with gaps healed from PostgreSQL.
 *
 * Presence crosses hosts the same way.  Each nginx has an id (kept in
 * its collab_zone); when its own connections change a user's status in
 * a session, a worker publishes "P ..." with that host-local status on
 * the session's channel, and other hosts keep it in their zone as that
 * host's slot of the user.  Every worker publishes "H <id>" on
 * "<prefix>hosts" every second; a host not heard of for
 * collab_presence_timeout loses its users.  A worker that subscribes to a
 * session asks "S <id>" and the other hosts answer with their users.
 *
 * Other events: "E|K|D|U <origin> <user>\n<event>" on a session's
 * channel (an event for its connections; K also makes the user's
 * connections leave the session, D everyone's; U, a session update,
 * carries the session's AI trigger in place of the user) and
 * "I <origin> <user>\n<event>" on "<prefix>users" (an event for a user's
 * connections: an invitation).
 *
 * A publish that may have been lost (Redis unreachable, the publisher
 * reconnecting, too many unanswered) is followed, once the publisher is
 * back, by a "Q <origin> <seq>" hint for each of the worker's rooms and
 * for each session whose publish was skipped (up to
 * NGX_COLLAB_REDIS_LOST_MAX of them), room or not: a receiver behind that
 * seq reads the rest from PostgreSQL.
 *
 * Faults.  A lost context is reconnected with exponential backoff and
 * jitter; meanwhile publishing is skipped and same-worker delivery goes
 * on.  When the subscriber comes back it subscribes again to every room
 * and has every room read from PostgreSQL what it may have missed, by
 * seq.  Publishes waiting for Redis are bounded: past the bound they are
 * dropped, which the receivers' gap healing covers.
 *
 * hiredis resolves host names synchronously: collab_redis takes an
 * address or a unix socket.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "ngx_collab.h"
#include "ngx_collab_room.h"
#include "ngx_collab_presence.h"
#include "ngx_collab_protocol.h"
#include "ngx_collab_access.h"
#include "ngx_collab_redis.h"


#define NGX_COLLAB_REDIS_BACKOFF_MIN   100
#define NGX_COLLAB_REDIS_BACKOFF_MAX   5000
#define NGX_COLLAB_REDIS_TIMEOUT       3000
#define NGX_COLLAB_REDIS_INFLIGHT_MAX  10000
#define NGX_COLLAB_REDIS_LOST_MAX      1024


typedef struct {
    redisAsyncContext          *ac;
    ngx_connection_t           *c;
    ngx_event_t                 timer;         /* reconnect or connect */
    ngx_uint_t                  failures;
    ngx_uint_t                  inflight;      /* publishes unanswered */
    const char                 *name;
    unsigned                    subscriber:1;
    unsigned                    connected:1;
    unsigned                    writing:1;     /* in redisAsyncHandleWrite */
} ngx_collab_redis_link_t;


/* a session whose message up to seq could not be published */

typedef struct {
    int64_t                     session;
    int64_t                     seq;
} ngx_collab_redis_lost_t;


static void ngx_collab_redis_connect(ngx_event_t *ev);
static void ngx_collab_redis_retry(ngx_collab_redis_link_t *link);
static void ngx_collab_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_collab_redis_on_disconnect(const redisAsyncContext *ac,
    int status);
static void ngx_collab_redis_handler(ngx_event_t *ev);
static void ngx_collab_redis_add_read(void *data);
static void ngx_collab_redis_del_read(void *data);
static void ngx_collab_redis_add_write(void *data);
static void ngx_collab_redis_del_write(void *data);
static void ngx_collab_redis_cleanup(void *data);
static ngx_int_t ngx_collab_redis_event(ngx_collab_redis_link_t *link,
    ngx_uint_t write, ngx_uint_t on);
static void ngx_collab_redis_message(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_collab_redis_published(redisAsyncContext *ac, void *r,
    void *data);
static size_t ngx_collab_redis_channel(u_char *buf, int64_t id);
static void ngx_collab_redis_send(u_char *chan, size_t clen, u_char *data,
    size_t len);
static void ngx_collab_redis_sync(ngx_collab_room_t *room, uint64_t host);
static ngx_int_t ngx_collab_redis_presence_in(ngx_collab_room_t *room,
    u_char *p, u_char *last);
static void ngx_collab_redis_beat(ngx_event_t *ev);
static void ngx_collab_redis_hosts(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_collab_redis_users(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_collab_redis_ready(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_collab_redis_auth(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_collab_redis_hints(void);
static void ngx_collab_redis_lose(int64_t session, int64_t seq);
static ngx_int_t ngx_collab_redis_parse(u_char *p, u_char *last,
    uint64_t *origin, int64_t *user, u_char **json);
static ssize_t ngx_collab_redis_read_file(ngx_str_t *name, u_char *buf,
    size_t size, ngx_log_t *log);


static ngx_collab_redis_conf_t  *ngx_collab_redis_cf;
static ngx_collab_redis_link_t   ngx_collab_redis_sub;
static ngx_collab_redis_link_t   ngx_collab_redis_pub;
static ngx_event_t               ngx_collab_redis_beat_ev;
static ngx_uint_t                ngx_collab_redis_lost;
static ngx_collab_redis_lost_t   ngx_collab_redis_lost_list[
                                     NGX_COLLAB_REDIS_LOST_MAX];
static ngx_uint_t                ngx_collab_redis_nlost;
static ngx_uint_t                ngx_collab_redis_lost_over;

/* the messages published and not answered yet, oldest first (a ring) */
static ngx_collab_redis_lost_t   ngx_collab_redis_sent[
                                     NGX_COLLAB_REDIS_INFLIGHT_MAX];
static ngx_uint_t                ngx_collab_redis_sent_head;
static ngx_uint_t                ngx_collab_redis_nsent;
static ngx_log_t                *ngx_collab_redis_log;
static uint64_t                  ngx_collab_redis_origin;


char *
ngx_collab_redis_conf(ngx_conf_t *cf, ngx_collab_redis_conf_t *rcf)
{
    u_char      *p;
    ssize_t      n;
    ngx_str_t   *value, s, file;
    ngx_int_t    port;
    ngx_uint_t   i;

    if (rcf->host.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "unix:", 5) == 0) {
        rcf->host.data = value[1].data + 5;
        rcf->host.len = value[1].len - 5;
        rcf->port = 0;

    } else {
        p = ngx_strlchr(value[1].data, value[1].data + value[1].len, ':');
        if (p == NULL) {
            goto invalid;
        }

        port = ngx_atoi(p + 1, value[1].data + value[1].len - p - 1);
        if (port < 1 || port > 65535) {
            goto invalid;
        }

        rcf->host.data = value[1].data;
        rcf->host.len = p - value[1].data;
        rcf->port = port;
        *p = '\0';
    }

    if (rcf->host.len == 0) {
        goto invalid;
    }

    ngx_str_set(&rcf->prefix, "collab:");

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "password=", 9) == 0) {
            rcf->password.data = value[i].data + 9;
            rcf->password.len = value[i].len - 9;
            continue;
        }

        if (ngx_strncmp(value[i].data, "password_file=", 14) == 0) {
            file.data = value[i].data + 14;
            file.len = value[i].len - 14;

            if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            s.data = ngx_pnalloc(cf->pool, 1024);
            if (s.data == NULL) {
                return NGX_CONF_ERROR;
            }

            n = ngx_collab_redis_read_file(&file, s.data, 1024, cf->log);
            if (n < 0) {
                return NGX_CONF_ERROR;
            }

            s.len = n;

            while (s.len && (s.data[s.len - 1] == '\n'
                             || s.data[s.len - 1] == '\r'))
            {
                s.len--;
            }

            rcf->password = s;
            continue;
        }

        if (ngx_strncmp(value[i].data, "db=", 3) == 0) {
            rcf->db = ngx_atoi(value[i].data + 3, value[i].len - 3);
            if (rcf->db == NGX_ERROR) {
                goto invalid_param;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "prefix=", 7) == 0) {
            rcf->prefix.data = value[i].data + 7;
            rcf->prefix.len = value[i].len - 7;
            continue;
        }

        goto invalid_param;
    }

    if (rcf->password.len) {
        p = ngx_pnalloc(cf->pool, rcf->password.len + 1);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(p, rcf->password.data, rcf->password.len);
        p[rcf->password.len] = '\0';
        rcf->password.data = p;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid redis address \"%V\", expected "
                       "\"address:port\" or \"unix:path\"", &value[1]);
    return NGX_CONF_ERROR;

invalid_param:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/* the password file at configuration time (the master reads it as root) */

static ssize_t
ngx_collab_redis_read_file(ngx_str_t *name, u_char *buf, size_t size,
    ngx_log_t *log)
{
    ssize_t   n;
    ngx_fd_t  fd;

    fd = ngx_open_file(name->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      ngx_open_file_n " \"%V\" failed", name);
        return NGX_ERROR;
    }

    n = ngx_read_fd(fd, buf, size);

    if (n == -1) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      ngx_read_fd_n " \"%V\" failed", name);
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      ngx_close_file_n " \"%V\" failed", name);
    }

    if (n == (ssize_t) size) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "redis password file \"%V\" is too long", name);
        return NGX_ERROR;
    }

    return n;
}


ngx_int_t
ngx_collab_redis_init_process(ngx_cycle_t *cycle,
    ngx_collab_redis_conf_t *rcf)
{
    ngx_collab_redis_cf = rcf;
    ngx_collab_redis_log = cycle->log;

    /* what this worker publishes carries this, to be recognised */
    ngx_collab_redis_origin = (((uint64_t) ngx_random() << 32)
                               ^ (uint64_t) ngx_random() ^ (uint64_t) ngx_pid)
                              & 0x0fffffffffffffffULL;

    ngx_collab_redis_sub.subscriber = 1;
    ngx_collab_redis_sub.name = "subscriber";
    ngx_collab_redis_pub.name = "publisher";

    ngx_collab_redis_sub.timer.handler = ngx_collab_redis_connect;
    ngx_collab_redis_sub.timer.data = &ngx_collab_redis_sub;
    ngx_collab_redis_sub.timer.log = cycle->log;
    ngx_collab_redis_sub.timer.cancelable = 1;

    ngx_collab_redis_pub.timer = ngx_collab_redis_sub.timer;
    ngx_collab_redis_pub.timer.data = &ngx_collab_redis_pub;

    ngx_collab_redis_connect(&ngx_collab_redis_sub.timer);
    ngx_collab_redis_connect(&ngx_collab_redis_pub.timer);

    ngx_collab_redis_beat_ev.handler = ngx_collab_redis_beat;
    ngx_collab_redis_beat_ev.log = cycle->log;
    ngx_collab_redis_beat_ev.cancelable = 1;
    ngx_add_timer(&ngx_collab_redis_beat_ev, 1000);

    return NGX_OK;
}


void
ngx_collab_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                i;
    ngx_collab_redis_link_t  *link, *links[2];

    if (ngx_collab_redis_cf == NULL) {
        return;
    }

    if (ngx_collab_redis_beat_ev.timer_set) {
        ngx_del_timer(&ngx_collab_redis_beat_ev);
    }

    links[0] = &ngx_collab_redis_sub;
    links[1] = &ngx_collab_redis_pub;

    for (i = 0; i < 2; i++) {
        link = links[i];

        if (link->timer.timer_set) {
            ngx_del_timer(&link->timer);
        }

        if (link->ac) {
            link->ac->onDisconnect = NULL;
            redisAsyncFree(link->ac);
            link->ac = NULL;
        }
    }

    ngx_collab_redis_cf = NULL;
}


/* connections */


static void
ngx_collab_redis_connect(ngx_event_t *ev)
{
    ngx_uint_t                level;
    redisAsyncContext        *ac;
    ngx_collab_redis_link_t  *link;
    ngx_collab_redis_conf_t  *rcf;

    link = ev->data;
    rcf = ngx_collab_redis_cf;

    if (link->ac) {

        /* the connect timer: no answer in time */

        ngx_log_error(NGX_LOG_ERR, ngx_collab_redis_log, 0,
                      "collab: redis %s: connect timed out", link->name);

        ac = link->ac;
        link->ac = NULL;
        ac->onDisconnect = NULL;
        redisAsyncFree(ac);

        ngx_collab_redis_retry(link);
        return;
    }

    if (rcf->port) {
        ac = redisAsyncConnect((char *) rcf->host.data, (int) rcf->port);

    } else {
        ac = redisAsyncConnectUnix((char *) rcf->host.data);
    }

    if (ac == NULL || ac->err) {
        level = link->failures ? NGX_LOG_INFO : NGX_LOG_ERR;

        ngx_log_error(level, ngx_collab_redis_log, 0,
                      "collab: redis %s: connect failed: %s", link->name,
                      ac ? ac->errstr : "out of memory");

        if (ac) {
            redisAsyncFree(ac);
        }

        ngx_collab_redis_retry(link);
        return;
    }

    link->ac = ac;
    link->connected = 0;
    link->inflight = 0;

    ac->data = link;
    ac->ev.data = link;
    ac->ev.addRead = ngx_collab_redis_add_read;
    ac->ev.delRead = ngx_collab_redis_del_read;
    ac->ev.addWrite = ngx_collab_redis_add_write;
    ac->ev.delWrite = ngx_collab_redis_del_write;
    ac->ev.cleanup = ngx_collab_redis_cleanup;

    (void) redisAsyncSetConnectCallback(ac, ngx_collab_redis_on_connect);
    (void) redisAsyncSetDisconnectCallback(ac,
                                           ngx_collab_redis_on_disconnect);

    /* hiredis waits for the connect to complete on the write event */
    ngx_collab_redis_add_write(link);

    if (rcf->password.len) {
        (void) redisAsyncCommand(ac, ngx_collab_redis_auth, NULL, "AUTH %s",
                                 rcf->password.data);
    }

    if (rcf->db) {
        (void) redisAsyncCommand(ac, ngx_collab_redis_auth, NULL,
                                 "SELECT %d", (int) rcf->db);
    }

    /* a connection counts as up once Redis answers on it */

    (void) redisAsyncCommand(ac, ngx_collab_redis_ready, NULL, "PING");

    ngx_add_timer(&link->timer, NGX_COLLAB_REDIS_TIMEOUT);
}


static void
ngx_collab_redis_retry(ngx_collab_redis_link_t *link)
{
    ngx_msec_t  delay;

    link->connected = 0;

    delay = NGX_COLLAB_REDIS_BACKOFF_MIN << ngx_min(link->failures, 6);
    delay = ngx_min(delay, NGX_COLLAB_REDIS_BACKOFF_MAX);
    delay = delay / 2 + (ngx_msec_t) ngx_random() % (delay / 2 + 1);

    link->failures++;

    ngx_add_timer(&link->timer, delay);
}


static void
ngx_collab_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_uint_t                level;
    ngx_collab_redis_link_t  *link;

    link = ac->data;

    if (status != REDIS_OK) {

        if (link->timer.timer_set) {
            ngx_del_timer(&link->timer);
        }

        /* hiredis frees the context after this callback */

        level = link->failures ? NGX_LOG_INFO : NGX_LOG_ERR;

        ngx_log_error(level, ngx_collab_redis_log, 0,
                      "collab: redis %s: connect failed: %s", link->name,
                      ac->errstr);

        link->ac = NULL;
        ngx_collab_redis_retry(link);
        return;
    }

    /*
     * the rest waits for the answer to PING, ngx_collab_redis_ready(),
     * under the same timer: a server that accepts and never answers is
     * let go of and retried like one that refuses
     */
}


static void
ngx_collab_redis_auth(redisAsyncContext *ac, void *r, void *data)
{
    ngx_uint_t                level;
    redisReply               *reply;
    ngx_collab_redis_link_t  *link;

    reply = r;
    link = ac->data;

    if (reply && reply->type == REDIS_REPLY_ERROR && link) {
        level = (link->failures > 1) ? NGX_LOG_INFO : NGX_LOG_ERR;

        ngx_log_error(level, ngx_collab_redis_log, 0,
                      "collab: redis %s: %s", link->name, reply->str);
    }
}


static void
ngx_collab_redis_ready(redisAsyncContext *ac, void *r, void *data)
{
    ngx_collab_room_t        *room;
    redisReply               *reply;
    ngx_collab_redis_link_t  *link;

    reply = r;
    link = ac->data;

    /*
     * the connect timer, while this is the link's connection: a context
     * being freed after a failed connect calls this too, with the retry's
     * backoff timer set already
     */

    if (link && link->ac == ac && link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    if (link == NULL || reply == NULL || reply->type == REDIS_REPLY_ERROR) {

        /* refused (a wrong password): hang up, retry with backoff */

        if (link && link->ac) {
            redisAsyncDisconnect(link->ac);
        }

        return;
    }

    if (link->failures) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_collab_redis_log, 0,
                      "collab: redis %s: connected again", link->name);
    }

    link->connected = 1;
    link->failures = 0;

    if (!link->subscriber) {

        /* what was published while this was down may have been lost */

        if (ngx_collab_redis_lost) {
            ngx_collab_redis_hints();
        }

        return;
    }

    if (ngx_collab_presence_instance()) {
        (void) redisAsyncCommand(link->ac, ngx_collab_redis_hosts, NULL,
                                 "SUBSCRIBE %bhosts",
                                 ngx_collab_redis_cf->prefix.data,
                                 ngx_collab_redis_cf->prefix.len);
    }

    (void) redisAsyncCommand(link->ac, ngx_collab_redis_users, NULL,
                             "SUBSCRIBE %busers",
                             ngx_collab_redis_cf->prefix.data,
                             ngx_collab_redis_cf->prefix.len);

    /* what may have been published meanwhile is read from PostgreSQL */

    for (room = ngx_collab_room_first(); room;
         room = ngx_collab_room_next(room))
    {
        ngx_collab_redis_subscribe(room);
        ngx_collab_room_resync(room);
    }
}


static void
ngx_collab_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_collab_redis_link_t  *link;

    link = ac->data;

    ngx_log_error(NGX_LOG_ERR, ngx_collab_redis_log, 0,
                  "collab: redis %s: connection lost%s%s", link->name,
                  ac->err ? ": " : "", ac->err ? ac->errstr : "");

    /* hiredis frees the context after this callback */

    link->ac = NULL;
    ngx_collab_redis_retry(link);
}


/* the adapter: hiredis's socket on nginx's events */


static void
ngx_collab_redis_handler(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_collab_redis_link_t  *link;

    c = ev->data;
    link = c->data;

    if (link->ac == NULL) {
        return;
    }

    /* either may free the context, and the connection with it */

    if (ev->write) {
        link->writing = 1;
        redisAsyncHandleWrite(link->ac);
        link->writing = 0;

    } else {
        redisAsyncHandleRead(link->ac);
    }
}


static ngx_int_t
ngx_collab_redis_event(ngx_collab_redis_link_t *link, ngx_uint_t write,
    ngx_uint_t on)
{
    ngx_event_t       *ev;
    ngx_connection_t  *c;

    c = link->c;

    if (c == NULL) {
        if (!on || link->ac == NULL) {
            return NGX_OK;
        }

        c = ngx_get_connection(link->ac->c.fd, ngx_collab_redis_log);
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->data = link;
        c->read->handler = ngx_collab_redis_handler;
        c->write->handler = ngx_collab_redis_handler;
        c->read->log = ngx_collab_redis_log;
        c->write->log = ngx_collab_redis_log;
        c->read->cancelable = 1;
        c->write->cancelable = 1;

        link->c = c;
    }

    ev = write ? c->write : c->read;

    if (on && !ev->active) {
        return ngx_add_event(ev, write ? NGX_WRITE_EVENT : NGX_READ_EVENT,
                             NGX_LEVEL_EVENT);
    }

    if (!on && ev->active) {
        return ngx_del_event(ev, write ? NGX_WRITE_EVENT : NGX_READ_EVENT, 0);
    }

    return NGX_OK;
}


static void
ngx_collab_redis_add_read(void *data)
{
    (void) ngx_collab_redis_event(data, 0, 1);
}


static void
ngx_collab_redis_del_read(void *data)
{
    (void) ngx_collab_redis_event(data, 0, 0);
}


/*
 * A connected link's commands are written once the handlers of this turn
 * of the event loop are done, together: one write(2) and no epoll_ctl(2)
 * for a burst of publishes.  Only what the socket did not take, and the
 * connect, wait for the socket to be writable.
 */

static void
ngx_collab_redis_add_write(void *data)
{
    ngx_collab_redis_link_t  *link;

    link = data;

    if (link->connected && !link->writing && link->c
        && !link->c->write->active)
    {
        if (!link->c->write->posted) {
            ngx_post_event(link->c->write, &ngx_posted_events);
        }

        return;
    }

    (void) ngx_collab_redis_event(link, 1, 1);
}


static void
ngx_collab_redis_del_write(void *data)
{
    ngx_collab_redis_link_t  *link;

    link = data;

    if (link->c && link->c->write->posted) {
        ngx_delete_posted_event(link->c->write);
    }

    (void) ngx_collab_redis_event(link, 1, 0);
}


/* hiredis closes its socket right after: give the connection back */

static void
ngx_collab_redis_cleanup(void *data)
{
    ngx_connection_t         *c;
    ngx_collab_redis_link_t  *link;

    link = data;
    c = link->c;

    if (c == NULL) {
        return;
    }

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;
    link->c = NULL;
}


/* pub/sub */


void
ngx_collab_redis_subscribe(ngx_collab_room_t *room)
{
    size_t                    len;
    u_char                    chan[NGX_INT64_LEN + 256];
    ngx_collab_redis_link_t  *link;

    link = &ngx_collab_redis_sub;

    if (ngx_collab_redis_cf == NULL || !link->connected) {
        return;                 /* done again on (re)connect */
    }

    len = ngx_collab_redis_channel(chan, room->id);

    (void) redisAsyncCommand(link->ac, ngx_collab_redis_message, NULL,
                             "SUBSCRIBE %b", chan, len);

    ngx_collab_redis_sync(room, 0);
}


void
ngx_collab_redis_unsubscribe(ngx_collab_room_t *room)
{
    size_t                    len;
    u_char                    chan[NGX_INT64_LEN + 256];
    ngx_collab_redis_link_t  *link;

    link = &ngx_collab_redis_sub;

    if (ngx_collab_redis_cf == NULL || !link->connected) {
        return;
    }

    len = ngx_collab_redis_channel(chan, room->id);

    (void) redisAsyncCommand(link->ac, NULL, NULL, "UNSUBSCRIBE %b",
                             chan, len);
}


/* publishes an event frame's JSON, "<seq> <origin>\n<json>" */

void
ngx_collab_redis_publish(ngx_collab_room_t *room, int64_t seq, u_char *data,
    size_t len)
{
    u_char                   *p, *payload;
    size_t                    n, clen;
    u_char                    chan[NGX_INT64_LEN + 256];
    u_char                    head[2 * NGX_INT64_LEN + 4];
    ngx_collab_redis_lost_t  *sent;
    ngx_collab_redis_link_t  *link;

    link = &ngx_collab_redis_pub;

    if (ngx_collab_redis_cf == NULL) {
        return;
    }

    if (!link->connected) {
        ngx_collab_redis_lose(room->id, seq);
        return;
    }

    if (link->inflight >= NGX_COLLAB_REDIS_INFLIGHT_MAX) {
        ngx_collab_redis_lose(room->id, seq);

        ngx_log_error(NGX_LOG_WARN, ngx_collab_redis_log, 0,
                      "collab: redis publisher: %ui publishes unanswered, "
                      "dropping (receivers read it from PostgreSQL)",
                      link->inflight);
        return;
    }

    clen = ngx_collab_redis_channel(chan, room->id);

    p = ngx_sprintf(head, "%L %uxL\n", seq, ngx_collab_redis_origin);
    n = p - head;

    payload = ngx_alloc(n + len, ngx_collab_redis_log);
    if (payload == NULL) {
        ngx_collab_redis_lose(room->id, seq);
        return;
    }

    ngx_memcpy(ngx_cpymem(payload, head, n), data, len);

    /*
     * Redis answers in order: the answer (or, should the connection go,
     * the NULL reply) to this PUBLISH is the one that finds this message
     * at the head of ngx_collab_redis_sent
     */

    if (redisAsyncCommand(link->ac, ngx_collab_redis_published,
                          ngx_collab_redis_sent,
                          "PUBLISH %b %b", chan, clen, payload, n + len)
        == REDIS_OK)
    {
        link->inflight++;

        sent = &ngx_collab_redis_sent[(ngx_collab_redis_sent_head
                                       + ngx_collab_redis_nsent++)
                                      % NGX_COLLAB_REDIS_INFLIGHT_MAX];
        sent->session = room->id;
        sent->seq = seq;

    } else {
        ngx_collab_redis_lose(room->id, seq);
    }

    ngx_free(payload);
}


static void
ngx_collab_redis_send(u_char *chan, size_t clen, u_char *data, size_t len)
{
    ngx_collab_redis_link_t  *link;

    link = &ngx_collab_redis_pub;

    if (ngx_collab_redis_cf == NULL || !link->connected
        || link->inflight >= NGX_COLLAB_REDIS_INFLIGHT_MAX)
    {
        return;
    }

    if (redisAsyncCommand(link->ac, ngx_collab_redis_published, NULL,
                          "PUBLISH %b %b", chan, clen, data, len)
        == REDIS_OK)
    {
        link->inflight++;
    }
}


/*
 * Tells other hosts what this nginx's own connections say of the user in
 * the room's session: "P <host> <user> <status> <typing ms> <ext len>\n"
 * followed by the user's id and name.
 */

void
ngx_collab_redis_presence(ngx_collab_room_t *room, int64_t user)
{
    u_char                      *p;
    size_t                       clen;
    u_char                       chan[NGX_INT64_LEN + 256];
    u_char                       buf[512], payload[1024];
    ngx_collab_presence_item_t   item;

    if (ngx_collab_redis_cf == NULL || !ngx_collab_redis_pub.connected
        || ngx_collab_presence_local(room->id, user, &item, buf) != NGX_OK)
    {
        return;
    }

    p = ngx_sprintf(payload, "P %uxL %L %ui %ui %uz\n",
                    ngx_collab_presence_instance(), user, item.status,
                    item.typing, item.ext.len);
    p = ngx_cpymem(p, item.ext.data, item.ext.len);
    p = ngx_cpymem(p, item.name.data, item.name.len);

    clen = ngx_collab_redis_channel(chan, room->id);

    ngx_collab_redis_send(chan, clen, payload, p - payload);
}


/*
 * host 0: asks the other hosts for their users in the session; else
 * answers that host with ours
 */

static void
ngx_collab_redis_sync(ngx_collab_room_t *room, uint64_t host)
{
    u_char                          *p;
    size_t                           clen;
    ngx_uint_t                       i;
    u_char                           chan[NGX_INT64_LEN + 256];
    u_char                           payload[NGX_INT64_LEN + 4];
    ngx_collab_presence_snapshot_t   snap;

    if (ngx_collab_presence_instance() == 0) {
        return;
    }

    if (host == 0) {
        clen = ngx_collab_redis_channel(chan, room->id);
        p = ngx_sprintf(payload, "S %uxL", ngx_collab_presence_instance());
        ngx_collab_redis_send(chan, clen, payload, p - payload);
        return;
    }

    if (ngx_collab_presence_snapshot(room->id, &snap, 1, ngx_collab_redis_log)
        != NGX_OK)
    {
        return;
    }

    for (i = 0; i < snap.n; i++) {
        ngx_collab_redis_presence(room, snap.items[i].user);
    }

    ngx_collab_presence_snapshot_free(&snap);
}


static void
ngx_collab_redis_beat(ngx_event_t *ev)
{
    u_char  *p;
    size_t   clen;
    u_char   chan[256 + 8], payload[NGX_INT64_LEN + 4];

    if (ngx_collab_redis_lost && ngx_collab_redis_pub.connected) {
        ngx_collab_redis_hints();
    }

    if (ngx_collab_presence_instance() == 0) {
        ngx_add_timer(ev, 1000);
        return;
    }

    p = ngx_cpymem(chan, ngx_collab_redis_cf->prefix.data,
                   ngx_min(ngx_collab_redis_cf->prefix.len, 200));
    p = ngx_cpymem(p, "hosts", 5);
    clen = p - chan;

    p = ngx_sprintf(payload, "H %uxL", ngx_collab_presence_instance());

    ngx_collab_redis_send(chan, clen, payload, p - payload);

    ngx_add_timer(ev, 1000);
}


static void
ngx_collab_redis_hosts(redisAsyncContext *ac, void *r, void *data)
{
    redisReply  *reply, *payload;

    reply = r;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    payload = reply->element[2];

    if (payload->len > 2 && payload->str[0] == 'H') {
        ngx_collab_presence_heard((uint64_t) ngx_hextoi(
                                      (u_char *) payload->str + 2,
                                      payload->len - 2));
    }
}


static void
ngx_collab_redis_published(redisAsyncContext *ac, void *r, void *data)
{
    ngx_collab_redis_lost_t  *sent;
    ngx_collab_redis_link_t  *link;

    link = ac->data;

    if (link && link->inflight) {
        link->inflight--;
    }

    sent = NULL;

    if (data && ngx_collab_redis_nsent) {

        /* a message's: see ngx_collab_redis_publish() */

        sent = &ngx_collab_redis_sent[ngx_collab_redis_sent_head];
        ngx_collab_redis_sent_head = (ngx_collab_redis_sent_head + 1)
                                     % NGX_COLLAB_REDIS_INFLIGHT_MAX;
        ngx_collab_redis_nsent--;
    }

    if (r == NULL || ((redisReply *) r)->type == REDIS_REPLY_ERROR) {

        /* this one may not have gone out */

        if (sent) {
            ngx_collab_redis_lose(sent->session, sent->seq);

        } else {
            ngx_collab_redis_lost = 1;
        }
    }
}


/* every room tells the others how far it is: receivers behind resync */

static void
ngx_collab_redis_hints(void)
{
    u_char                   *p;
    size_t                    clen;
    u_char                    chan[NGX_INT64_LEN + 256];
    u_char                    payload[3 * NGX_INT64_LEN + 8];
    ngx_uint_t                i;
    ngx_collab_room_t        *room;
    ngx_collab_redis_lost_t  *lost;

    ngx_collab_redis_lost = 0;

    /* the sessions this worker has no room of any more, first */

    for (i = 0; i < ngx_collab_redis_nlost; i++) {
        lost = &ngx_collab_redis_lost_list[i];

        if (ngx_collab_room_lookup(lost->session)) {
            continue;
        }

        clen = ngx_collab_redis_channel(chan, lost->session);
        p = ngx_sprintf(payload, "Q %uxL %L\n", ngx_collab_redis_origin,
                        lost->seq);

        ngx_collab_redis_send(chan, clen, payload, p - payload);
    }

    if (ngx_collab_redis_lost_over) {
        ngx_log_error(NGX_LOG_WARN, ngx_collab_redis_log, 0,
                      "collab: redis publisher: messages of more than %d "
                      "sessions could not be published; those of sessions "
                      "this worker no longer serves reach the other "
                      "workers with their next message",
                      NGX_COLLAB_REDIS_LOST_MAX);
    }

    ngx_collab_redis_nlost = 0;
    ngx_collab_redis_lost_over = 0;

    for (room = ngx_collab_room_first(); room;
         room = ngx_collab_room_next(room))
    {
        if (room->seq <= 0) {
            continue;
        }

        clen = ngx_collab_redis_channel(chan, room->id);
        p = ngx_sprintf(payload, "Q %uxL %L\n", ngx_collab_redis_origin,
                        room->seq);

        ngx_collab_redis_send(chan, clen, payload, p - payload);
    }
}


/*
 * A message (seq) of the session could not be published: remembered by
 * session, so that the hints reach the other workers even when this one
 * has no room of the session any more by then (its members left).
 */

static void
ngx_collab_redis_lose(int64_t session, int64_t seq)
{
    ngx_uint_t                i;
    ngx_collab_redis_lost_t  *lost;

    ngx_collab_redis_lost = 1;

    for (i = 0; i < ngx_collab_redis_nlost; i++) {
        lost = &ngx_collab_redis_lost_list[i];

        if (lost->session == session) {
            lost->seq = ngx_max(lost->seq, seq);
            return;
        }
    }

    if (ngx_collab_redis_nlost == NGX_COLLAB_REDIS_LOST_MAX) {
        ngx_collab_redis_lost_over = 1;
        return;
    }

    lost = &ngx_collab_redis_lost_list[ngx_collab_redis_nlost++];
    lost->session = session;
    lost->seq = seq;
}


static void
ngx_collab_redis_message(redisAsyncContext *ac, void *r, void *data)
{
    u_char               *p, *last, *nl;
    int64_t               id, seq;
    uint64_t              origin;
    redisReply           *reply, *chan, *payload;
    ngx_collab_room_t    *room;
    ngx_collab_ws_msg_t  *msg;

    reply = r;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || ngx_strcmp(reply->element[0]->str, "message") != 0)
    {
        return;                 /* (un)subscribe confirmations */
    }

    chan = reply->element[1];
    payload = reply->element[2];

    if (chan->type != REDIS_REPLY_STRING
        || payload->type != REDIS_REPLY_STRING
        || (size_t) chan->len <= ngx_collab_redis_cf->prefix.len + 2)
    {
        return;
    }

    p = (u_char *) chan->str + ngx_collab_redis_cf->prefix.len + 2;
    id = ngx_atoof(p, (u_char *) chan->str + chan->len - p);

    room = (id > 0) ? ngx_collab_room_lookup(id) : NULL;

    if (room == NULL) {
        return;
    }

    p = (u_char *) payload->str;
    last = p + payload->len;

    if (payload->len > 2 && (p[0] == 'P' || p[0] == 'S')) {
        if (ngx_collab_redis_presence_in(room, p, last) != NGX_OK) {
            goto invalid;
        }

        return;
    }

    if (payload->len > 2 && p[0] == 'Q') {
        if (ngx_collab_redis_parse(p, last, &origin, &seq, &nl) != NGX_OK) {
            goto invalid;
        }

        if (origin != ngx_collab_redis_origin && seq > room->seq) {
            ngx_collab_room_resync(room);
        }

        return;
    }

    if (payload->len > 2
        && (p[0] == 'E' || p[0] == 'K' || p[0] == 'D' || p[0] == 'U'))
    {
        if (ngx_collab_redis_parse(p, last, &origin, &seq, &nl) != NGX_OK) {
            goto invalid;
        }

        if (origin == ngx_collab_redis_origin) {
            return;
        }

        msg = ngx_collab_ws_msg_create(NGX_COLLAB_WS_OP_TEXT, nl,
                                       last - nl, ngx_collab_redis_log);
        if (msg) {
            ngx_collab_access_apply(room, p[0], seq, msg);
            ngx_collab_ws_msg_release(msg);
        }

        return;
    }

    nl = ngx_strlchr(p, last, '\n');
    if (nl == NULL) {
        goto invalid;
    }

    last = ngx_strlchr(p, nl, ' ');
    if (last == NULL) {
        goto invalid;
    }

    seq = ngx_atoof(p, last - p);
    origin = (uint64_t) ngx_hextoi(last + 1, nl - last - 1);

    if (seq <= 0) {
        goto invalid;
    }

    if (origin == ngx_collab_redis_origin) {
        return;                 /* ours, delivered here already */
    }

    p = nl + 1;

    msg = ngx_collab_ws_msg_create(NGX_COLLAB_WS_OP_TEXT, p,
                                   (u_char *) payload->str + payload->len - p,
                                   ngx_collab_redis_log);
    if (msg == NULL) {
        return;
    }

    ngx_collab_room_publish(room, seq, msg);
    ngx_collab_ws_msg_release(msg);

    return;

invalid:

    ngx_log_error(NGX_LOG_WARN, ngx_collab_redis_log, 0,
                  "collab: redis: malformed event on %*s", chan->len,
                  chan->str);
}


static size_t
ngx_collab_redis_channel(u_char *buf, int64_t id)
{
    u_char  *p;

    p = ngx_cpymem(buf, ngx_collab_redis_cf->prefix.data,
                   ngx_min(ngx_collab_redis_cf->prefix.len, 200));
    p = ngx_sprintf(p, "s:%L", id);

    return p - buf;
}


/* "P ..." or "S <host>" from another host, on a session's channel */

static ngx_int_t
ngx_collab_redis_presence_in(ngx_collab_room_t *room, u_char *p,
    u_char *last)
{
    u_char                     *f[5], *nl, *q;
    size_t                      ext;
    uint64_t                    host;
    ngx_int_t                   status, typing;
    ngx_uint_t                  i;
    ngx_collab_presence_who_t   who;

    nl = ngx_strlchr(p, last, '\n');

    if (nl == NULL) {
        nl = last;
    }

    /* the fields after the letter, space separated */

    q = p + 2;

    for (i = 0; i < 5 && q < nl; i++) {
        f[i] = q;
        q = ngx_strlchr(q, nl, ' ');

        if (q == NULL) {
            q = nl;
        }

        q++;
    }

    if (i == 0) {
        return NGX_ERROR;
    }

    host = (uint64_t) ngx_hextoi(f[0], (i > 1 ? f[1] - 1 : nl) - f[0]);

    if ((ngx_int_t) host <= 0) {
        return NGX_ERROR;
    }

    if (host == ngx_collab_presence_instance()) {
        return NGX_OK;          /* ours */
    }

    ngx_collab_presence_heard(host);

    if (p[0] == 'S') {
        ngx_collab_redis_sync(room, host);
        return NGX_OK;
    }

    if (i != 5 || nl == last) {
        return NGX_ERROR;
    }

    who.session = room->id;
    who.user = ngx_atoof(f[1], f[2] - 1 - f[1]);
    status = ngx_atoi(f[2], f[3] - 1 - f[2]);
    typing = ngx_atoi(f[3], f[4] - 1 - f[3]);
    ext = (size_t) ngx_atoof(f[4], nl - f[4]);

    if (who.user <= 0 || status < 0 || status > NGX_COLLAB_AWAY
        || typing < 0 || ext == 0 || ext > (size_t) (last - nl - 1))
    {
        return NGX_ERROR;
    }

    who.ext.data = nl + 1;
    who.ext.len = ext;
    who.name.data = nl + 1 + ext;
    who.name.len = last - who.name.data;

    ngx_collab_presence_remote(host, &who, status, typing);

    return NGX_OK;
}


/* "<kind> <origin hex> <user>\n<json>": *json points at the JSON */

static ngx_int_t
ngx_collab_redis_parse(u_char *p, u_char *last, uint64_t *origin,
    int64_t *user, u_char **json)
{
    u_char  *nl, *sp;

    nl = ngx_strlchr(p, last, '\n');

    if (nl == NULL || nl - p < 5) {
        return NGX_ERROR;
    }

    sp = ngx_strlchr(p + 2, nl, ' ');

    if (sp == NULL) {
        return NGX_ERROR;
    }

    *origin = (uint64_t) ngx_hextoi(p + 2, sp - p - 2);
    *user = ngx_atoof(sp + 1, nl - sp - 1);
    *json = nl + 1;

    return (*user >= 0 && (ngx_int_t) *origin > 0) ? NGX_OK : NGX_ERROR;
}


void
ngx_collab_redis_room_event(int64_t session, u_char kind, int64_t user,
    u_char *data, size_t len)
{
    u_char  *p, *payload;
    size_t   clen;
    u_char   chan[NGX_INT64_LEN + 256];

    if (ngx_collab_redis_cf == NULL || !ngx_collab_redis_pub.connected) {
        return;
    }

    payload = ngx_alloc(2 * NGX_INT64_LEN + 8 + len, ngx_collab_redis_log);
    if (payload == NULL) {
        return;
    }

    p = ngx_sprintf(payload, "%c %uxL %L\n", kind, ngx_collab_redis_origin,
                    user);
    p = ngx_cpymem(p, data, len);

    clen = ngx_collab_redis_channel(chan, session);

    ngx_collab_redis_send(chan, clen, payload, p - payload);

    ngx_free(payload);
}


void
ngx_collab_redis_user_event(int64_t user, u_char *data, size_t len)
{
    u_char  *p, *payload;
    u_char   chan[256 + 8];

    if (ngx_collab_redis_cf == NULL || !ngx_collab_redis_pub.connected) {
        return;
    }

    payload = ngx_alloc(2 * NGX_INT64_LEN + 8 + len, ngx_collab_redis_log);
    if (payload == NULL) {
        return;
    }

    p = ngx_sprintf(payload, "I %uxL %L\n", ngx_collab_redis_origin, user);
    p = ngx_cpymem(p, data, len);

    ngx_collab_redis_send(chan,
                          ngx_cpymem(ngx_cpymem(chan,
                                         ngx_collab_redis_cf->prefix.data,
                                         ngx_min(ngx_collab_redis_cf
                                                 ->prefix.len, 200)),
                                     "users", 5) - chan,
                          payload, p - payload);

    ngx_free(payload);
}


static void
ngx_collab_redis_users(redisAsyncContext *ac, void *r, void *data)
{
    u_char               *p, *last, *json;
    int64_t               user;
    uint64_t              origin;
    redisReply           *reply, *payload;
    ngx_collab_ws_msg_t  *msg;

    reply = r;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    payload = reply->element[2];
    p = (u_char *) payload->str;
    last = p + payload->len;

    if (payload->len < 5 || p[0] != 'I'
        || ngx_collab_redis_parse(p, last, &origin, &user, &json) != NGX_OK
        || origin == ngx_collab_redis_origin)
    {
        return;
    }

    msg = ngx_collab_ws_msg_create(NGX_COLLAB_WS_OP_TEXT, json, last - json,
                                   ngx_collab_redis_log);
    if (msg) {
        ngx_collab_protocol_user_event(user, msg);
        ngx_collab_ws_msg_release(msg);
    }
}
