
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_PG_H_INCLUDED_
#define _NGX_COLLAB_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <libpq-fe.h>


/* the schema version this module is built for (sql/migrate --version) */
#define NGX_COLLAB_SCHEMA_VERSION  5


typedef struct ngx_collab_pg_query_s  ngx_collab_pg_query_t;

/*
 * Called once per query.  res is the statement's result (its status may
 * be an error: check PQresultStatus), or NULL when the query could not
 * run: PostgreSQL unavailable, the connection lost with the query in
 * flight, or the statement timeout.  res is cleared and the query freed
 * after the handler returns.
 */
typedef void (*ngx_collab_pg_handler_pt)(ngx_collab_pg_query_t *q,
    PGresult *res);


struct ngx_collab_pg_query_s {
    ngx_queue_t                 queue;
    const char                 *sql;
    ngx_uint_t                  nparams;
    char                      **values;
    int                        *lengths;
    ngx_collab_pg_handler_pt    handler;       /* NULL: cancelled */
    void                       *data;
    ngx_msec_t                  queued;        /* ngx_current_msec */
    ngx_uint_t                  stmt;          /* prepared statement */
    unsigned                    preparing:1;   /* ... prepared with it */
    u_char                     *last;          /* parameter bytes */
    u_char                     *end;
};


typedef struct {
    ngx_str_t                   conninfo;
    ngx_uint_t                  pool;
    ngx_uint_t                  queue;
    ngx_uint_t                  pipeline;
    ngx_msec_t                  timeout;
} ngx_collab_pg_conf_t;


char *ngx_collab_pg_conf(ngx_conf_t *cf, ngx_collab_pg_conf_t *pgcf);
ngx_int_t ngx_collab_pg_init_process(ngx_cycle_t *cycle,
    ngx_collab_pg_conf_t *pgcf);
void ngx_collab_pg_exit_process(ngx_cycle_t *cycle);

/*
 * A query with room for nparams parameters of at most size bytes in all;
 * parameters are copied in with ngx_collab_pg_param(), NULL data for SQL
 * NULL.
 */
ngx_collab_pg_query_t *ngx_collab_pg_query_create(const char *sql,
    ngx_uint_t nparams, size_t size);
ngx_int_t ngx_collab_pg_param(ngx_collab_pg_query_t *q, ngx_uint_t n,
    u_char *data, size_t len);
ngx_int_t ngx_collab_pg_param_int(ngx_collab_pg_query_t *q, ngx_uint_t n,
    int64_t value);

/*
 * To write a parameter in place: ngx_collab_pg_param_start() returns
 * where to write (there is room for what was promised to create()), and
 * ngx_collab_pg_param_end() takes the end of what was written.
 */
#define ngx_collab_pg_param_start(q)  (q)->last
void ngx_collab_pg_param_end(ngx_collab_pg_query_t *q, ngx_uint_t n,
    u_char *last);

/*
 * Queues the query.  NGX_OK: the handler will be called.  NGX_BUSY: the
 * queue is full; NGX_DECLINED: PostgreSQL is unavailable.  On anything
 * but NGX_OK the query has been freed and the handler is never called.
 */
ngx_int_t ngx_collab_pg_send(ngx_collab_pg_query_t *q);

/* the caller went away: the query still runs, its result is dropped */
#define ngx_collab_pg_cancel(q)  (q)->handler = NULL

ngx_uint_t ngx_collab_pg_available(void);
ngx_uint_t ngx_collab_pg_idle(void);


#endif /* _NGX_COLLAB_PG_H_INCLUDED_ */
