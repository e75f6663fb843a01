
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_PRESENCE_H_INCLUDED_
#define _NGX_COLLAB_PRESENCE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>


#define NGX_COLLAB_OFFLINE        0
#define NGX_COLLAB_ONLINE         1
#define NGX_COLLAB_AWAY           2

/* sessions this big share one presence list among their joins per tick */
#define NGX_COLLAB_PRESENCE_SHARED  64

#define NGX_COLLAB_RATE_PRESENCE  0
#define NGX_COLLAB_RATE_MESSAGES  1
#define NGX_COLLAB_RATE_AI        2
#define NGX_COLLAB_RATE_AI_SESSION  3          /* keyed by the session */


typedef struct {
    ngx_uint_t                  rate;          /* per 1000 s */
    ngx_uint_t                  burst;         /* times 1000 */
} ngx_collab_rate_t;


typedef struct {
    ngx_shm_zone_t             *shm_zone;
    ngx_msec_t                  presence_timeout;
    ngx_msec_t                  grace;
    ngx_msec_t                  typing_timeout;
    ngx_msec_t                  batch;
    ngx_collab_rate_t           rates[4];
} ngx_collab_presence_conf_t;


/* who, in which session: what a connection tells the zone */

typedef struct {
    int64_t                     session;
    int64_t                     user;
    ngx_str_t                   ext;           /* the site's user id */
    ngx_str_t                   name;
} ngx_collab_presence_who_t;


/* a session's presence as a worker copied it out of the zone */

typedef struct {
    int64_t                     user;
    uint64_t                    last_seen;     /* ms since the epoch */
    ngx_uint_t                  status;
    ngx_uint_t                  typing;
    ngx_msec_t                  typing_until;
    ngx_uint_t                  typing_starts; /* changes when it restarts */
    ngx_str_t                   ext;
    ngx_str_t                   name;
} ngx_collab_presence_item_t;


typedef struct {
    ngx_collab_presence_item_t *items;         /* by user */
    ngx_uint_t                  n;
    uint64_t                    version;
    ngx_msec_t                  next;          /* may change by then */
} ngx_collab_presence_snapshot_t;


char *ngx_collab_presence_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_collab_presence_rate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_collab_presence_init_process(ngx_cycle_t *cycle,
    ngx_collab_presence_conf_t *pcf);
void ngx_collab_presence_exit_process(ngx_cycle_t *cycle);

ngx_uint_t ngx_collab_presence_enabled(void);
ngx_int_t ngx_collab_presence_connect(ngx_collab_presence_who_t *who,
    ngx_uint_t status);
void ngx_collab_presence_disconnect(int64_t session, int64_t user,
    ngx_uint_t status);
void ngx_collab_presence_status(int64_t session, int64_t user,
    ngx_uint_t from, ngx_uint_t to);
ngx_uint_t ngx_collab_presence_typing(int64_t session, int64_t user,
    ngx_uint_t on);
uint64_t ngx_collab_presence_version(int64_t session);
ngx_int_t ngx_collab_presence_snapshot(int64_t session,
    ngx_collab_presence_snapshot_t *snap, ngx_uint_t local, ngx_log_t *log);
void ngx_collab_presence_snapshot_free(ngx_collab_presence_snapshot_t *snap);
ngx_uint_t ngx_collab_presence_active(int64_t session);
ngx_msec_t ngx_collab_presence_limit(int64_t user, ngx_uint_t kind);

/* other hosts (through Redis) */
uint64_t ngx_collab_presence_instance(void);
void ngx_collab_presence_heard(uint64_t host);
void ngx_collab_presence_remote(uint64_t host, ngx_collab_presence_who_t *who,
    ngx_uint_t status, ngx_msec_t typing);
ngx_int_t ngx_collab_presence_local(int64_t session, int64_t user,
    ngx_collab_presence_item_t *item, u_char *buf);

/* the cached wall clock in milliseconds since the epoch */

static ngx_inline uint64_t
ngx_collab_presence_wall(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/* ngx_collab_presence_events.c: the worker's side */
void ngx_collab_presence_events_init(ngx_msec_t batch, ngx_log_t *log);
json_t *ngx_collab_presence_list(ngx_collab_presence_snapshot_t *snap);
const char *ngx_collab_presence_name(ngx_uint_t status);


#endif /* _NGX_COLLAB_PRESENCE_H_INCLUDED_ */
