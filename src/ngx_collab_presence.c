
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * Presence, typing and rate buckets in one shared memory zone
 * (collab_zone), shared by the workers of this nginx.
 *
 * The zone holds three rbtrees and two LRU queues:
 *
 *   entries   one node per (session, user): key is the session id, ties
 *             are ordered by user id, so a session's users are adjacent
 *             and a snapshot is one walk; each entry counts the user's
 *             connections per worker (up to NGX_COLLAB_PRESENCE_SLOTS
 *             workers), so several tabs are one presence: online while
 *             any connection is online, away when all are away;
 *   sessions  one node per session with entries: a version bumped by
 *             every change of its entries, so that a worker can tell in
 *             one lookup that nothing changed;
 *   buckets   rate limiting, limit_req's leaky bucket per (user, kind).
 *
 * Liveness.  Every worker owns a row of the worker table and refreshes
 * its heartbeat every second.  A connection count belongs to a worker;
 * it counts only while that worker's row is fresh (younger than
 * collab_presence_timeout) and its process exists.  A worker killed with
 * kill -9 therefore leaves no ghost: its users go offline when its
 * process is found gone, at the latest when its row goes stale.
 *
 * Time.  A user whose last connection closed stays visible with its last
 * status for collab_presence_grace, so that a reload or a reconnecting
 * client causes no offline/online flicker; typing expires at
 * typing_until.  Such changes happen by the clock, not by a write, and
 * do not bump versions: snapshots carry the next instant at which they
 * may change, and workers look again then.
 *
 * Locking.  Every function takes the zone's mutex for a bounded amount of
 * work (one lookup, one walk of one session's users, at most
 * NGX_COLLAB_PRESENCE_SWEEP nodes swept) and neither logs nor allocates
 * outside the slab under it; a full zone is logged after unlocking.
 * Offline entries are swept from the LRU tail, by every worker every
 * second and by an allocation that finds the zone full.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_collab.h"
#include "ngx_collab_presence.h"


#define NGX_COLLAB_PRESENCE_SLOTS    4
#define NGX_COLLAB_PRESENCE_WORKERS  64
#define NGX_COLLAB_PRESENCE_HOSTS    16
#define NGX_COLLAB_PRESENCE_SWEEP    64
#define NGX_COLLAB_PRESENCE_NAME     64      /* bytes of display name kept */


typedef struct {
    ngx_pid_t                       pid;
    ngx_msec_t                      heartbeat;
} ngx_collab_presence_worker_t;


typedef struct {
    uint64_t                        id;
    ngx_msec_t                      heartbeat;
} ngx_collab_presence_host_t;


/* pid > 0: a worker of this nginx; pid < 0: -(1 + row) of a remote host */

typedef struct {
    ngx_pid_t                       pid;
    uint16_t                        online;
    uint16_t                        away;
} ngx_collab_presence_slot_t;


typedef struct {
    ngx_rbtree_node_t               node;
    ngx_queue_t                     queue;
    int64_t                         user;
    ngx_msec_t                      gone_at;       /* 0: connected */
    ngx_msec_t                      typing_until;
    uint64_t                        last_seen;
    ngx_collab_presence_slot_t      slots[NGX_COLLAB_PRESENCE_SLOTS];
    uint16_t                        ext_len;
    uint8_t                         name_len;
    uint8_t                         status;        /* last visible */
    uint8_t                         typing_starts; /* off -> on, wraps */
    u_char                          data[1];
} ngx_collab_presence_node_t;


typedef struct {
    ngx_rbtree_node_t               node;
    uint64_t                        version;
    ngx_uint_t                      entries;
} ngx_collab_presence_session_t;


typedef struct {
    ngx_rbtree_node_t               node;
    ngx_queue_t                     queue;
    ngx_msec_t                      last;
    ngx_uint_t                      excess;
} ngx_collab_presence_bucket_t;


typedef struct {
    ngx_rbtree_t                    entries;
    ngx_rbtree_node_t               entries_sentinel;
    ngx_rbtree_t                    sessions;
    ngx_rbtree_node_t               sessions_sentinel;
    ngx_rbtree_t                    buckets;
    ngx_rbtree_node_t               buckets_sentinel;
    ngx_queue_t                     lru;
    ngx_queue_t                     bucket_lru;
    ngx_collab_presence_worker_t    workers[NGX_COLLAB_PRESENCE_WORKERS];
    ngx_collab_presence_host_t      hosts[NGX_COLLAB_PRESENCE_HOSTS];
    uint64_t                        instance;      /* this nginx's id */
} ngx_collab_presence_shctx_t;


typedef struct {
    ngx_collab_presence_shctx_t    *sh;
    ngx_slab_pool_t                *shpool;
} ngx_collab_presence_ctx_t;


static ngx_int_t ngx_collab_presence_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_collab_presence_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_collab_presence_node_t *ngx_collab_presence_lookup_locked(
    int64_t session, int64_t user);
static ngx_collab_presence_node_t *ngx_collab_presence_first_locked(
    int64_t session);
static ngx_collab_presence_session_t *ngx_collab_presence_session_locked(
    int64_t session, ngx_uint_t create);
static void ngx_collab_presence_changed_locked(
    ngx_collab_presence_node_t *e);
static ngx_uint_t ngx_collab_presence_state_locked(
    ngx_collab_presence_node_t *e, ngx_msec_t now, ngx_uint_t *conns);
static ngx_uint_t ngx_collab_presence_local_locked(
    ngx_collab_presence_node_t *e, ngx_msec_t now);
static void ngx_collab_presence_gone_locked(ngx_collab_presence_node_t *e,
    ngx_uint_t visible, ngx_msec_t now);
static ngx_collab_presence_node_t *ngx_collab_presence_entry_locked(
    ngx_collab_presence_who_t *who, ngx_msec_t now);
static ngx_uint_t ngx_collab_presence_live_locked(ngx_pid_t pid,
    ngx_msec_t now);
static ngx_collab_presence_slot_t *ngx_collab_presence_slot_locked(
    ngx_collab_presence_node_t *e, ngx_pid_t pid, ngx_uint_t create,
    ngx_msec_t now);
static void ngx_collab_presence_delete_locked(ngx_collab_presence_node_t *e);
static ngx_uint_t ngx_collab_presence_sweep_locked(ngx_msec_t now,
    ngx_uint_t max);
static void ngx_collab_presence_timer(ngx_event_t *ev);


/* *next becomes t if t comes first */

static ngx_inline void
ngx_collab_presence_sooner(ngx_msec_t *next, ngx_msec_t t)
{
    if ((ngx_msec_int_t) (t - *next) < 0) {
        *next = t;
    }
}


static ngx_collab_presence_conf_t  *ngx_collab_presence_conf;
static ngx_collab_presence_ctx_t   *ngx_collab_presence_ctx;
static ngx_event_t                  ngx_collab_presence_ev;
static ngx_uint_t                   ngx_collab_presence_row;


/* configuration */


char *
ngx_collab_presence_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_presence_conf_t *pcf = conf;

    ssize_t                     size;
    ngx_str_t                  *value;
    ngx_collab_presence_ctx_t  *ctx;

    if (pcf->shm_zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[2]);

    if (size == NGX_ERROR || size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\", at least %uz",
                           &value[2], 8 * ngx_pagesize);
        return NGX_CONF_ERROR;
    }

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_collab_presence_ctx_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    pcf->shm_zone = ngx_shared_memory_add(cf, &value[1], size,
                                          &ngx_collab_module);
    if (pcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pcf->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &value[1]);
        return NGX_CONF_ERROR;
    }

    pcf->shm_zone->init = ngx_collab_presence_init_zone;
    pcf->shm_zone->data = ctx;

    return NGX_CONF_OK;
}


/* collab_rate_presence / collab_rate_messages  Nr/s|Nr/m [burst=N] */

char *
ngx_collab_presence_rate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    u_char             *last;
    ngx_int_t           n, scale, burst;
    ngx_str_t          *value;
    ngx_collab_rate_t  *rate;

    rate = (ngx_collab_rate_t *) (p + cmd->offset);

    if (rate->rate != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    last = value[1].data + value[1].len;
    scale = 1;

    if (value[1].len > 3 && ngx_strncmp(last - 3, "r/s", 3) == 0) {
        last -= 3;

    } else if (value[1].len > 3 && ngx_strncmp(last - 3, "r/m", 3) == 0) {
        last -= 3;
        scale = 60;

    } else {
        goto invalid;
    }

    n = ngx_atoi(value[1].data, last - value[1].data);
    if (n <= 0) {
        goto invalid;
    }

    rate->rate = n * 1000 / scale;
    burst = n * 2 / scale;

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "burst=", 6) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        burst = ngx_atoi(value[2].data + 6, value[2].len - 6);
        if (burst == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid burst value \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    rate->burst = burst * 1000;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid rate \"%V\", expected \"Nr/s\" or \"Nr/m\"",
                       &value[1]);

    return NGX_CONF_ERROR;
}


/*
 * Same name and size across a reload: the new cycle adopts the old
 * zone's data, so presence survives "nginx -s reload".
 */

static ngx_int_t
ngx_collab_presence_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_collab_presence_ctx_t  *octx = data;

    size_t                      len;
    ngx_collab_presence_ctx_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_calloc(ctx->shpool,
                              sizeof(ngx_collab_presence_shctx_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->entries, &ctx->sh->entries_sentinel,
                    ngx_collab_presence_insert);
    ngx_rbtree_init(&ctx->sh->sessions, &ctx->sh->sessions_sentinel,
                    ngx_rbtree_insert_value);
    ngx_rbtree_init(&ctx->sh->buckets, &ctx->sh->buckets_sentinel,
                    ngx_rbtree_insert_value);
    ngx_queue_init(&ctx->sh->lru);
    ngx_queue_init(&ctx->sh->bucket_lru);

    /* this nginx's name among hosts sharing a Redis; 0 means none */

    while (ctx->sh->instance == 0) {
        ctx->sh->instance = (((uint64_t) ngx_random() << 31)
                             ^ (uint64_t) ngx_random()
                             ^ ((uint64_t) ngx_pid << 48))
                            & 0x0fffffffffffffffULL;
    }

    len = sizeof(" in collab_zone \"\"") + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in collab_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is reported by the caller, with what to raise */
    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_int_t
ngx_collab_presence_init_process(ngx_cycle_t *cycle,
    ngx_collab_presence_conf_t *pcf)
{
    ngx_uint_t                     i, free;
    ngx_collab_presence_shctx_t   *sh;
    ngx_collab_presence_worker_t  *w;

    if (pcf->shm_zone == NULL) {
        return NGX_OK;
    }

    ngx_collab_presence_conf = pcf;
    ngx_collab_presence_ctx = pcf->shm_zone->data;

    sh = ngx_collab_presence_ctx->sh;

    /* a row of the worker table: an empty one or a stale one */

    ngx_shmtx_lock(&ngx_collab_presence_ctx->shpool->mutex);

    free = NGX_COLLAB_PRESENCE_WORKERS;

    for (i = 0; i < NGX_COLLAB_PRESENCE_WORKERS; i++) {
        w = &sh->workers[i];

        if (w->pid == 0
            || !ngx_collab_presence_live_locked(w->pid, ngx_current_msec))
        {
            free = i;
            break;
        }
    }

    if (free < NGX_COLLAB_PRESENCE_WORKERS) {
        sh->workers[free].pid = ngx_pid;
        sh->workers[free].heartbeat = ngx_current_msec;
    }

    ngx_shmtx_unlock(&ngx_collab_presence_ctx->shpool->mutex);

    if (free == NGX_COLLAB_PRESENCE_WORKERS) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "collab: more than %d workers share collab_zone",
                      NGX_COLLAB_PRESENCE_WORKERS);
        return NGX_ERROR;
    }

    ngx_collab_presence_row = free;

    ngx_collab_presence_ev.handler = ngx_collab_presence_timer;
    ngx_collab_presence_ev.log = cycle->log;
    ngx_collab_presence_ev.cancelable = 1;

    ngx_add_timer(&ngx_collab_presence_ev, 1000);

    return NGX_OK;
}


void
ngx_collab_presence_exit_process(ngx_cycle_t *cycle)
{
    ngx_collab_presence_ctx_t  *ctx;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return;
    }

    /* the row goes; counts left behind no longer count */

    ngx_shmtx_lock(&ctx->shpool->mutex);

    if (ctx->sh->workers[ngx_collab_presence_row].pid == ngx_pid) {
        ctx->sh->workers[ngx_collab_presence_row].pid = 0;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_collab_presence_ctx = NULL;
}


/*
 * Every second: refresh this worker's heartbeat, forget rows of
 * processes that are gone (kill(pid, 0), outside the lock), sweep.
 */

static void
ngx_collab_presence_timer(ngx_event_t *ev)
{
    ngx_pid_t                   pids[NGX_COLLAB_PRESENCE_WORKERS];
    ngx_uint_t                  i;
    ngx_collab_presence_ctx_t  *ctx;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return;
    }

    ngx_shmtx_lock(&ctx->shpool->mutex);

    ctx->sh->workers[ngx_collab_presence_row].pid = ngx_pid;
    ctx->sh->workers[ngx_collab_presence_row].heartbeat = ngx_current_msec;

    for (i = 0; i < NGX_COLLAB_PRESENCE_WORKERS; i++) {
        pids[i] = ctx->sh->workers[i].pid;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    for (i = 0; i < NGX_COLLAB_PRESENCE_WORKERS; i++) {
        if (pids[i] == 0 || pids[i] == ngx_pid
            || kill(pids[i], 0) == 0 || ngx_errno != NGX_ESRCH)
        {
            pids[i] = 0;
        }
    }

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (i = 0; i < NGX_COLLAB_PRESENCE_WORKERS; i++) {
        if (pids[i] && ctx->sh->workers[i].pid == pids[i]) {
            ctx->sh->workers[i].pid = 0;
        }
    }

    (void) ngx_collab_presence_sweep_locked(ngx_current_msec,
                                            NGX_COLLAB_PRESENCE_SWEEP);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_add_timer(&ngx_collab_presence_ev, 1000);
}


ngx_uint_t
ngx_collab_presence_enabled(void)
{
    return ngx_collab_presence_ctx != NULL;
}


/* connections */


/*
 * A connection of who, in status, joined the session.  NGX_OK, or
 * NGX_DECLINED when the zone is full (logged), or NGX_BUSY when the user
 * has connections in too many workers at once.
 */

ngx_int_t
ngx_collab_presence_connect(ngx_collab_presence_who_t *who,
    ngx_uint_t status)
{
    ngx_msec_t                   now;
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;
    ngx_collab_presence_slot_t  *slot;

    ctx = ngx_collab_presence_ctx;
    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    e = ngx_collab_presence_entry_locked(who, now);

    if (e == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "collab: presence zone \"%V\" is full, raise "
                      "the size of \"collab_zone\"",
                      &ngx_collab_presence_conf->shm_zone->shm.name);
        return NGX_DECLINED;
    }

    slot = ngx_collab_presence_slot_locked(e, ngx_pid, 1, now);

    if (slot == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_BUSY;
    }

    if (status == NGX_COLLAB_AWAY) {
        slot->away++;

    } else {
        slot->online++;
    }

    e->gone_at = 0;
    e->last_seen = ngx_collab_presence_wall();

    ngx_collab_presence_changed_locked(e);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return NGX_OK;
}


void
ngx_collab_presence_disconnect(int64_t session, int64_t user,
    ngx_uint_t status)
{
    ngx_uint_t                   conns, visible;
    ngx_msec_t                   now;
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;
    ngx_collab_presence_slot_t  *slot;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return;
    }

    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    e = ngx_collab_presence_lookup_locked(session, user);

    if (e) {
        visible = ngx_collab_presence_state_locked(e, now, &conns);

        slot = ngx_collab_presence_slot_locked(e, ngx_pid, 0, now);

        if (slot) {
            if (status == NGX_COLLAB_AWAY && slot->away) {
                slot->away--;

            } else if (slot->online) {
                slot->online--;
            }

            if (slot->online == 0 && slot->away == 0) {
                slot->pid = 0;
            }
        }

        ngx_collab_presence_gone_locked(e, visible, now);
        ngx_collab_presence_changed_locked(e);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/* a connection changed from one status to the other */

void
ngx_collab_presence_status(int64_t session, int64_t user, ngx_uint_t from,
    ngx_uint_t to)
{
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;
    ngx_collab_presence_slot_t  *slot;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL || from == to) {
        return;
    }

    ngx_shmtx_lock(&ctx->shpool->mutex);

    e = ngx_collab_presence_lookup_locked(session, user);
    slot = e ? ngx_collab_presence_slot_locked(e, ngx_pid, 0,
                                              ngx_current_msec)
             : NULL;

    if (slot) {
        if (from == NGX_COLLAB_AWAY && slot->away) {
            slot->away--;
            slot->online++;

        } else if (from == NGX_COLLAB_ONLINE && slot->online) {
            slot->online--;
            slot->away++;
        }

        e->last_seen = ngx_collab_presence_wall();

        ngx_collab_presence_changed_locked(e);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


ngx_uint_t
ngx_collab_presence_typing(int64_t session, int64_t user, ngx_uint_t on)
{
    ngx_uint_t                   was, changed;
    ngx_msec_t                   now, until;
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return 0;
    }

    now = ngx_current_msec;
    until = on ? now + ngx_collab_presence_conf->typing_timeout : 0;
    changed = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    e = ngx_collab_presence_lookup_locked(session, user);

    if (e) {
        was = e->typing_until
              && (ngx_msec_int_t) (e->typing_until - now) > 0;

        e->typing_until = until;

        if (on && !was) {
            e->typing_starts++;
        }

        /*
         * A refresh is a change too: the workers' next look at the
         * session tells clients the indicator goes on (clients expire it
         * on their own if they hear nothing for a while).
         */

        if (on || was) {
            ngx_collab_presence_changed_locked(e);
            changed = 1;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return changed;
}


/* reading */


uint64_t
ngx_collab_presence_version(int64_t session)
{
    uint64_t                        version;
    ngx_collab_presence_ctx_t      *ctx;
    ngx_collab_presence_session_t  *s;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return 0;
    }

    ngx_shmtx_lock(&ctx->shpool->mutex);

    s = ngx_collab_presence_session_locked(session, 0);
    version = s ? s->version : 0;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return version;
}


/*
 * Copies the session's users out of the zone, in user order, with their
 * status as of now.  Offline users are left out.  The strings live in
 * the same allocation as the items.  local: as this nginx's own
 * connections alone have them (to tell other hosts).
 */

ngx_int_t
ngx_collab_presence_snapshot(int64_t session,
    ngx_collab_presence_snapshot_t *snap, ngx_uint_t local, ngx_log_t *log)
{
    u_char                         *p;
    size_t                          size;
    uint64_t                        now_wall;
    ngx_uint_t                      n, status, conns;
    ngx_msec_t                      now;
    ngx_rbtree_node_t              *node;
    ngx_collab_presence_ctx_t      *ctx;
    ngx_collab_presence_node_t     *e;
    ngx_collab_presence_item_t     *item;
    ngx_collab_presence_session_t  *s;

    ngx_memzero(snap, sizeof(ngx_collab_presence_snapshot_t));

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return NGX_OK;
    }

    now = ngx_current_msec;
    now_wall = ngx_collab_presence_wall();

    ngx_shmtx_lock(&ctx->shpool->mutex);

    s = ngx_collab_presence_session_locked(session, 0);

    if (s == NULL || s->entries == 0) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_OK;
    }

    /* sized while locked: the worst case of this session's entries */

    size = s->entries * (sizeof(ngx_collab_presence_item_t)
                         + 256 + NGX_COLLAB_PRESENCE_NAME);

    snap->version = s->version;

    snap->items = ngx_alloc(size, log);
    if (snap->items == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_ERROR;
    }

    p = (u_char *) (snap->items + s->entries);
    n = 0;
    snap->next = now + ngx_collab_presence_conf->presence_timeout;

    for (node = (ngx_rbtree_node_t *) ngx_collab_presence_first_locked(
                                                                  session);
         node && node->key == (ngx_rbtree_key_t) session
              && n < s->entries;
         node = ngx_rbtree_next(&ctx->sh->entries, node))
    {
        e = (ngx_collab_presence_node_t *) node;

        if (local) {
            status = ngx_collab_presence_local_locked(e, now);
            conns = 1;

        } else {
            status = ngx_collab_presence_state_locked(e, now, &conns);
        }

        if (status == NGX_COLLAB_OFFLINE) {
            continue;
        }

        /* what changes by the clock: the end of a grace period, typing */

        if (conns == 0 && e->gone_at) {
            ngx_collab_presence_sooner(&snap->next,
                                     e->gone_at
                                     + ngx_collab_presence_conf->grace);
        }

        item = &snap->items[n++];

        item->user = e->user;
        item->status = status;
        item->typing = e->typing_until
                       && (ngx_msec_int_t) (e->typing_until - now) > 0;

        item->typing_until = item->typing ? e->typing_until : 0;
        item->typing_starts = e->typing_starts;

        if (item->typing) {
            ngx_collab_presence_sooner(&snap->next, e->typing_until);
        }
        item->last_seen = conns ? now_wall : e->last_seen;

        item->ext.data = p;
        item->ext.len = e->ext_len;
        p = ngx_cpymem(p, e->data, e->ext_len);

        item->name.data = p;
        item->name.len = e->name_len;
        p = ngx_cpymem(p, e->data + e->ext_len, e->name_len);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    snap->n = n;

    return NGX_OK;
}


void
ngx_collab_presence_snapshot_free(ngx_collab_presence_snapshot_t *snap)
{
    if (snap->items) {
        ngx_free(snap->items);
    }

    ngx_memzero(snap, sizeof(ngx_collab_presence_snapshot_t));
}


/* how many users are online or away in the session */

ngx_uint_t
ngx_collab_presence_active(int64_t session)
{
    ngx_uint_t                   n, conns;
    ngx_msec_t                   now;
    ngx_rbtree_node_t           *node;
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return 0;
    }

    now = ngx_current_msec;
    n = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (node = (ngx_rbtree_node_t *) ngx_collab_presence_first_locked(
                                                                  session);
         node && node->key == (ngx_rbtree_key_t) session;
         node = ngx_rbtree_next(&ctx->sh->entries, node))
    {
        e = (ngx_collab_presence_node_t *) node;

        if (ngx_collab_presence_state_locked(e, now, &conns)
            != NGX_COLLAB_OFFLINE)
        {
            n++;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return n;
}


/*
 * limit_req's leaky bucket: 0 if the user may go on, else the
 * milliseconds after which it may.  A full zone lets requests through:
 * rate limiting fails open rather than refusing everyone.
 */

ngx_msec_t
ngx_collab_presence_limit(int64_t user, ngx_uint_t kind)
{
    ngx_int_t                      excess;
    ngx_msec_t                     now, delay;
    ngx_msec_int_t                 ms;
    ngx_queue_t                   *q;
    ngx_rbtree_key_t               key;
    ngx_rbtree_node_t             *node, *sentinel;
    ngx_collab_rate_t             *rate;
    ngx_collab_presence_ctx_t     *ctx;
    ngx_collab_presence_bucket_t  *b;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return 0;
    }

    rate = &ngx_collab_presence_conf->rates[kind];

    if (rate->rate == 0) {
        return 0;
    }

    key = (ngx_rbtree_key_t) user * 4 + kind;
    now = ngx_current_msec;
    b = NULL;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ctx->sh->buckets.root;
    sentinel = ctx->sh->buckets.sentinel;

    while (node != sentinel) {
        if (key < node->key) {
            node = node->left;

        } else if (key > node->key) {
            node = node->right;

        } else {
            b = (ngx_collab_presence_bucket_t *) node;
            break;
        }
    }

    if (b == NULL) {

        /* buckets idle for a minute are empty anyway: reuse the oldest */

        b = ngx_slab_alloc_locked(ctx->shpool,
                                  sizeof(ngx_collab_presence_bucket_t));

        if (b == NULL && !ngx_queue_empty(&ctx->sh->bucket_lru)) {
            q = ngx_queue_last(&ctx->sh->bucket_lru);
            b = ngx_queue_data(q, ngx_collab_presence_bucket_t, queue);

            if ((ngx_msec_int_t) (now - b->last) < 60000) {
                b = NULL;

            } else {
                ngx_queue_remove(q);
                ngx_rbtree_delete(&ctx->sh->buckets, &b->node);
            }
        }

        if (b == NULL) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            return 0;
        }

        b->node.key = key;
        b->excess = 0;
        b->last = now;

        ngx_rbtree_insert(&ctx->sh->buckets, &b->node);
        ngx_queue_insert_head(&ctx->sh->bucket_lru, &b->queue);

        /* a user's first request passes, as with limit_req */

        ngx_shmtx_unlock(&ctx->shpool->mutex);

        return 0;
    }

    ngx_queue_remove(&b->queue);
    ngx_queue_insert_head(&ctx->sh->bucket_lru, &b->queue);

    ms = (ngx_msec_int_t) (now - b->last);

    if (ms < 0) {
        ms = 0;
    }

    excess = (ngx_int_t) b->excess - (ngx_int_t) (rate->rate * ms / 1000)
             + 1000;

    if (excess < 0) {
        excess = 0;
    }

    if ((ngx_uint_t) excess > rate->burst) {
        delay = (excess - rate->burst) * 1000 / rate->rate;
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return delay ? delay : 1;
    }

    b->excess = excess;
    b->last = now;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return 0;
}


/* hosts: other nginx instances, as heard through Redis */


uint64_t
ngx_collab_presence_instance(void)
{
    return ngx_collab_presence_ctx ? ngx_collab_presence_ctx->sh->instance
                                   : 0;
}


/* the row of a remote host, refreshed; -1 when the table is full */

static ngx_int_t
ngx_collab_presence_host_locked(uint64_t id, ngx_msec_t now)
{
    ngx_int_t                    i, free;
    ngx_collab_presence_host_t  *h;

    h = ngx_collab_presence_ctx->sh->hosts;
    free = -1;

    for (i = 0; i < NGX_COLLAB_PRESENCE_HOSTS; i++) {

        if (h[i].id == id) {
            h[i].heartbeat = now;
            return i;
        }

        if (free == -1
            && (h[i].id == 0
                || (ngx_msec_int_t) (now - h[i].heartbeat)
                   >= (ngx_msec_int_t)
                      ngx_collab_presence_conf->presence_timeout))
        {
            free = i;
        }
    }

    if (free >= 0) {
        h[free].id = id;
        h[free].heartbeat = now;
    }

    return free;
}


/* a remote host says it is alive */

void
ngx_collab_presence_heard(uint64_t host)
{
    ngx_collab_presence_ctx_t  *ctx;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL || host == ctx->sh->instance) {
        return;
    }

    ngx_shmtx_lock(&ctx->shpool->mutex);
    (void) ngx_collab_presence_host_locked(host, ngx_current_msec);
    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/*
 * A remote host tells the status its own connections give who, and how
 * long the user's typing indicator has left.  It becomes that host's
 * slot of the entry; the host's silence (no heartbeat for
 * collab_presence_timeout) ends it.
 */

void
ngx_collab_presence_remote(uint64_t host, ngx_collab_presence_who_t *who,
    ngx_uint_t status, ngx_msec_t typing)
{
    ngx_int_t                    row;
    ngx_uint_t                   visible, conns, was;
    ngx_msec_t                   now;
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;
    ngx_collab_presence_slot_t  *slot;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL || host == ctx->sh->instance) {
        return;
    }

    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    row = ngx_collab_presence_host_locked(host, now);

    e = (row >= 0) ? (status == NGX_COLLAB_OFFLINE
                      ? ngx_collab_presence_lookup_locked(who->session,
                                                          who->user)
                      : ngx_collab_presence_entry_locked(who, now))
                   : NULL;

    if (e == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return;
    }

    visible = ngx_collab_presence_state_locked(e, now, &conns);
    was = e->typing_until && (ngx_msec_int_t) (e->typing_until - now) > 0;

    slot = ngx_collab_presence_slot_locked(e, -(ngx_pid_t) (row + 1),
                                           status != NGX_COLLAB_OFFLINE,
                                           now);
    if (slot) {
        slot->online = (status == NGX_COLLAB_ONLINE);
        slot->away = (status == NGX_COLLAB_AWAY);

        if (status == NGX_COLLAB_OFFLINE) {
            slot->pid = 0;
        }
    }

    if (status == NGX_COLLAB_OFFLINE) {
        ngx_collab_presence_gone_locked(e, visible, now);

    } else {
        e->gone_at = 0;
        e->last_seen = ngx_collab_presence_wall();
        e->typing_until = typing ? now + typing : 0;
    }

    if (visible != ngx_collab_presence_state_locked(e, now, &conns)
        || was != (e->typing_until != 0))
    {
        ngx_collab_presence_changed_locked(e);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/*
 * What this nginx's own connections say of a user: to tell other hosts.
 * The strings are copied into buf (at least 256 + 64 bytes).  Returns
 * NGX_DECLINED when the zone has no such entry.
 */

ngx_int_t
ngx_collab_presence_local(int64_t session, int64_t user,
    ngx_collab_presence_item_t *item, u_char *buf)
{
    ngx_msec_t                   now;
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;

    ctx = ngx_collab_presence_ctx;

    if (ctx == NULL) {
        return NGX_DECLINED;
    }

    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    e = ngx_collab_presence_lookup_locked(session, user);

    if (e == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_DECLINED;
    }

    item->user = user;
    item->status = ngx_collab_presence_local_locked(e, now);
    item->typing = (item->status != NGX_COLLAB_OFFLINE && e->typing_until
                    && (ngx_msec_int_t) (e->typing_until - now) > 0)
                   ? e->typing_until - now : 0;
    item->last_seen = e->last_seen;

    item->ext.data = buf;
    item->ext.len = e->ext_len;
    item->name.data = ngx_cpymem(buf, e->data, e->ext_len);
    item->name.len = e->name_len;
    ngx_memcpy(item->name.data, e->data + e->ext_len, e->name_len);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return NGX_OK;
}


/* internals, all with the zone locked */


static void
ngx_collab_presence_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t          **p;
    ngx_collab_presence_node_t  *n, *t;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            n = (ngx_collab_presence_node_t *) node;
            t = (ngx_collab_presence_node_t *) temp;

            p = (n->user < t->user) ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_collab_presence_node_t *
ngx_collab_presence_lookup_locked(int64_t session, int64_t user)
{
    ngx_rbtree_key_t             key;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_collab_presence_node_t  *e;

    key = (ngx_rbtree_key_t) session;

    node = ngx_collab_presence_ctx->sh->entries.root;
    sentinel = ngx_collab_presence_ctx->sh->entries.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;
            continue;
        }

        if (key > node->key) {
            node = node->right;
            continue;
        }

        e = (ngx_collab_presence_node_t *) node;

        if (user == e->user) {
            return e;
        }

        node = (user < e->user) ? node->left : node->right;
    }

    return NULL;
}


/* the session's first entry in (session, user) order */

static ngx_collab_presence_node_t *
ngx_collab_presence_first_locked(int64_t session)
{
    ngx_rbtree_key_t    key;
    ngx_rbtree_node_t  *node, *sentinel, *found;

    key = (ngx_rbtree_key_t) session;

    node = ngx_collab_presence_ctx->sh->entries.root;
    sentinel = ngx_collab_presence_ctx->sh->entries.sentinel;
    found = NULL;

    while (node != sentinel) {

        if (key <= node->key) {
            if (key == node->key) {
                found = node;
            }

            node = node->left;

        } else {
            node = node->right;
        }
    }

    return (ngx_collab_presence_node_t *) found;
}


static ngx_collab_presence_session_t *
ngx_collab_presence_session_locked(int64_t session, ngx_uint_t create)
{
    ngx_rbtree_key_t                key;
    ngx_rbtree_node_t              *node, *sentinel;
    ngx_collab_presence_ctx_t      *ctx;
    ngx_collab_presence_session_t  *s;

    ctx = ngx_collab_presence_ctx;
    key = (ngx_rbtree_key_t) session;

    node = ctx->sh->sessions.root;
    sentinel = ctx->sh->sessions.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;

        } else if (key > node->key) {
            node = node->right;

        } else {
            return (ngx_collab_presence_session_t *) node;
        }
    }

    if (!create) {
        return NULL;
    }

    s = ngx_slab_calloc_locked(ctx->shpool,
                               sizeof(ngx_collab_presence_session_t));
    if (s == NULL) {
        return NULL;
    }

    s->node.key = key;
    s->version = 1;

    ngx_rbtree_insert(&ctx->sh->sessions, &s->node);

    return s;
}


static void
ngx_collab_presence_changed_locked(ngx_collab_presence_node_t *e)
{
    ngx_collab_presence_session_t  *s;

    s = ngx_collab_presence_session_locked((int64_t) e->node.key, 0);

    if (s) {
        s->version++;
    }

    ngx_queue_remove(&e->queue);
    ngx_queue_insert_head(&ngx_collab_presence_ctx->sh->lru, &e->queue);
}


/* status as of now; *conns: live connections */

static ngx_uint_t
ngx_collab_presence_state_locked(ngx_collab_presence_node_t *e,
    ngx_msec_t now, ngx_uint_t *conns)
{
    ngx_uint_t  i, online, away;

    online = 0;
    away = 0;

    for (i = 0; i < NGX_COLLAB_PRESENCE_SLOTS; i++) {

        if (e->slots[i].pid == 0
            || !ngx_collab_presence_live_locked(e->slots[i].pid, now))
        {
            continue;
        }

        online += e->slots[i].online;
        away += e->slots[i].away;
    }

    *conns = online + away;

    if (online) {
        return NGX_COLLAB_ONLINE;
    }

    if (away) {
        return NGX_COLLAB_AWAY;
    }

    if (e->gone_at
        && (ngx_msec_int_t) (now - e->gone_at)
           < (ngx_msec_int_t) ngx_collab_presence_conf->grace)
    {
        return e->status ? e->status : NGX_COLLAB_ONLINE;
    }

    return NGX_COLLAB_OFFLINE;
}


static ngx_uint_t
ngx_collab_presence_live_locked(ngx_pid_t pid, ngx_msec_t now)
{
    ngx_uint_t                     i;
    ngx_collab_presence_host_t    *h;
    ngx_collab_presence_worker_t  *w;

    if (pid < 0) {
        i = (ngx_uint_t) (-pid - 1);

        if (i >= NGX_COLLAB_PRESENCE_HOSTS) {
            return 0;
        }

        h = &ngx_collab_presence_ctx->sh->hosts[i];

        return h->id
               && (ngx_msec_int_t) (now - h->heartbeat)
                  < (ngx_msec_int_t)
                    ngx_collab_presence_conf->presence_timeout;
    }

    w = ngx_collab_presence_ctx->sh->workers;

    for (i = 0; i < NGX_COLLAB_PRESENCE_WORKERS; i++) {
        if (w[i].pid == pid) {
            return (ngx_msec_int_t) (now - w[i].heartbeat)
                   < (ngx_msec_int_t)
                     ngx_collab_presence_conf->presence_timeout;
        }
    }

    return 0;
}


/* this worker's slot of the entry; create: take a free or dead one */

static ngx_collab_presence_slot_t *
ngx_collab_presence_slot_locked(ngx_collab_presence_node_t *e, ngx_pid_t pid,
    ngx_uint_t create, ngx_msec_t now)
{
    ngx_uint_t                   i;
    ngx_collab_presence_slot_t  *free;

    free = NULL;

    for (i = 0; i < NGX_COLLAB_PRESENCE_SLOTS; i++) {

        if (e->slots[i].pid == pid) {
            return &e->slots[i];
        }

        if (free == NULL
            && (e->slots[i].pid == 0
                || !ngx_collab_presence_live_locked(e->slots[i].pid, now)))
        {
            free = &e->slots[i];
        }
    }

    if (!create || free == NULL) {
        return NULL;
    }

    free->pid = pid;
    free->online = 0;
    free->away = 0;

    return free;
}


static void
ngx_collab_presence_delete_locked(ngx_collab_presence_node_t *e)
{
    ngx_collab_presence_ctx_t      *ctx;
    ngx_collab_presence_session_t  *s;

    ctx = ngx_collab_presence_ctx;

    s = ngx_collab_presence_session_locked((int64_t) e->node.key, 0);

    if (s) {
        s->version++;

        if (--s->entries == 0) {
            ngx_rbtree_delete(&ctx->sh->sessions, &s->node);
            ngx_slab_free_locked(ctx->shpool, s);
        }
    }

    ngx_queue_remove(&e->queue);
    ngx_rbtree_delete(&ctx->sh->entries, &e->node);
    ngx_slab_free_locked(ctx->shpool, e);
}


/* finds or creates the entry of who; NULL: the zone is full */

static ngx_collab_presence_node_t *
ngx_collab_presence_entry_locked(ngx_collab_presence_who_t *who,
    ngx_msec_t now)
{
    size_t                          size, name;
    ngx_uint_t                      swept;
    ngx_collab_presence_ctx_t      *ctx;
    ngx_collab_presence_node_t     *e;
    ngx_collab_presence_session_t  *s;

    e = ngx_collab_presence_lookup_locked(who->session, who->user);

    if (e) {
        return e;
    }

    ctx = ngx_collab_presence_ctx;

    /* a shortened name is cut before a UTF-8 continuation byte, not in it */

    name = ngx_min(who->name.len, NGX_COLLAB_PRESENCE_NAME);

    while (name < who->name.len && name
           && (who->name.data[name] & 0xc0) == 0x80)
    {
        name--;
    }

    size = offsetof(ngx_collab_presence_node_t, data) + who->ext.len + name;

    for (swept = 0; /* void */; swept++) {
        s = ngx_collab_presence_session_locked(who->session, 1);

        e = s ? ngx_slab_calloc_locked(ctx->shpool, size) : NULL;

        if (e) {
            break;
        }

        if (swept
            || ngx_collab_presence_sweep_locked(now,
                                                NGX_COLLAB_PRESENCE_SWEEP)
               == 0)
        {
            if (s && s->entries == 0) {
                ngx_rbtree_delete(&ctx->sh->sessions, &s->node);
                ngx_slab_free_locked(ctx->shpool, s);
            }

            return NULL;
        }
    }

    e->node.key = (ngx_rbtree_key_t) who->session;
    e->user = who->user;
    e->ext_len = (uint16_t) who->ext.len;
    e->name_len = (uint8_t) name;
    ngx_memcpy(e->data, who->ext.data, who->ext.len);
    ngx_memcpy(e->data + who->ext.len, who->name.data, name);

    ngx_rbtree_insert(&ctx->sh->entries, &e->node);
    ngx_queue_insert_head(&ctx->sh->lru, &e->queue);
    s->entries++;

    return e;
}


/* after a connection went: the grace period starts if it was the last */

static void
ngx_collab_presence_gone_locked(ngx_collab_presence_node_t *e,
    ngx_uint_t visible, ngx_msec_t now)
{
    ngx_uint_t  conns;

    (void) ngx_collab_presence_state_locked(e, now, &conns);

    if (conns) {
        return;
    }

    /* the status shown until the grace period ends */

    if (visible != NGX_COLLAB_OFFLINE) {
        e->status = (uint8_t) visible;
    }

    e->gone_at = now ? now : 1;
    e->typing_until = 0;
    e->last_seen = ngx_collab_presence_wall();
}


/* the status this nginx alone gives the user: its own connections */

static ngx_uint_t
ngx_collab_presence_local_locked(ngx_collab_presence_node_t *e,
    ngx_msec_t now)
{
    ngx_uint_t  i, online, away;

    online = 0;
    away = 0;

    for (i = 0; i < NGX_COLLAB_PRESENCE_SLOTS; i++) {

        if (e->slots[i].pid <= 0
            || !ngx_collab_presence_live_locked(e->slots[i].pid, now))
        {
            continue;
        }

        online += e->slots[i].online;
        away += e->slots[i].away;
    }

    return online ? NGX_COLLAB_ONLINE
                  : (away ? NGX_COLLAB_AWAY : NGX_COLLAB_OFFLINE);
}


/*
 * Frees offline entries from the LRU tail, looking at most at max
 * entries (entries still online are moved to the head).  Returns how
 * many it freed.
 */

static ngx_uint_t
ngx_collab_presence_sweep_locked(ngx_msec_t now, ngx_uint_t max)
{
    ngx_uint_t                   i, freed, conns;
    ngx_queue_t                 *q;
    ngx_collab_presence_ctx_t   *ctx;
    ngx_collab_presence_node_t  *e;

    ctx = ngx_collab_presence_ctx;
    freed = 0;

    for (i = 0; i < max && !ngx_queue_empty(&ctx->sh->lru); i++) {
        q = ngx_queue_last(&ctx->sh->lru);
        e = ngx_queue_data(q, ngx_collab_presence_node_t, queue);

        if (ngx_collab_presence_state_locked(e, now, &conns)
            == NGX_COLLAB_OFFLINE)
        {
            ngx_collab_presence_delete_locked(e);
            freed++;
            continue;
        }

        ngx_queue_remove(q);
        ngx_queue_insert_head(&ctx->sh->lru, q);
    }

    return freed;
}
