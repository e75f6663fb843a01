
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * A per-worker pool of PostgreSQL connections driven by nginx events.
 *
 * Each connection is opened with PQconnectStart()/PQconnectPoll() and
 * its socket wrapped in an ngx_connection_t from ngx_get_connection(),
 * registered level-triggered: libpq decides how much it reads per
 * PQconsumeInput(), and a level-triggered read event cannot be lost to
 * that.  The write event is armed only while PQflush() has data left.
 *
 * Once connected, a connection runs "SET statement_timeout" and reads the
 * schema version (a database behind this module is refused with a log
 * line naming sql/migrate), then enters pipeline mode.  Every statement
 * runs prepared: the first time a connection runs one, its Prepare goes
 * into the pipeline just before the Execute, so PostgreSQL parses and
 * plans each statement once per connection, not once per query (the
 * batched append is a 2 kB statement).  Queries wait in
 * one FIFO per worker, bounded by the queue= parameter, and are handed to
 * the connection with the fewest queries in flight, up to pipeline= per
 * connection; each is followed by its own sync point, so each commits or
 * fails alone, and results come back in order: a query is complete at
 * its PGRES_PIPELINE_SYNC.
 *
 * Failure is one path, ngx_collab_pg_fail(): the queries in flight on the
 * connection get a NULL result, the connection is closed, and a reconnect
 * is scheduled with exponential backoff and full jitter.  When no
 * connection is left up, waiting queries fail at once and new ones are
 * refused, so callers answer UNAVAILABLE quickly instead of queueing
 * behind an outage.  Handlers never run from inside ngx_collab_pg_send().
 *
 * Nothing here blocks, with one caveat: libpq resolves host names
 * synchronously inside PQconnectStart(), so collab_postgres should name
 * its server by address (hostaddr=, an IP in host=, or a unix socket).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_collab_pg.h"


#define NGX_COLLAB_PG_BACKOFF_MIN   100
#define NGX_COLLAB_PG_BACKOFF_MAX   10000
#define NGX_COLLAB_PG_GRACE         1000    /* beyond statement_timeout */
#define NGX_COLLAB_PG_STATEMENTS    32      /* distinct statements, at most */


typedef enum {
    NGX_COLLAB_PG_DOWN = 0,
    NGX_COLLAB_PG_CONNECTING,
    NGX_COLLAB_PG_SETUP,
    NGX_COLLAB_PG_READY
} ngx_collab_pg_state_e;


typedef struct {
    PGconn                     *conn;
    ngx_connection_t           *c;
    ngx_event_t                 backoff;
    ngx_queue_t                 running;      /* in pipeline order */
    ngx_uint_t                  nrunning;
    PGresult                   *result;       /* the head query's so far */
    ngx_uint_t                  failures;
    ngx_uint_t                  index;
    ngx_uint_t                  nulls;        /* the head query's so far */
    uint32_t                    prepared;     /* statements, by bit */
    ngx_collab_pg_state_e       state;
    unsigned                    broken:1;
} ngx_collab_pg_conn_t;


typedef struct {
    ngx_collab_pg_conf_t       *conf;
    ngx_log_t                  *log;
    ngx_collab_pg_conn_t       *conns;
    ngx_queue_t                 waiting;
    ngx_uint_t                  nwaiting;
    ngx_uint_t                  nready;
    ngx_uint_t                  schema_warned;
} ngx_collab_pg_pool_t;


static void ngx_collab_pg_connect(ngx_event_t *ev);
static ngx_int_t ngx_collab_pg_attach(ngx_collab_pg_conn_t *pc);
static void ngx_collab_pg_detach(ngx_collab_pg_conn_t *pc,
    ngx_uint_t fd_closed);
static void ngx_collab_pg_handler(ngx_event_t *ev);
static void ngx_collab_pg_poll(ngx_collab_pg_conn_t *pc);
static void ngx_collab_pg_setup(ngx_collab_pg_conn_t *pc);
static void ngx_collab_pg_results(ngx_collab_pg_conn_t *pc);
static ngx_int_t ngx_collab_pg_flush(ngx_collab_pg_conn_t *pc);
static ngx_int_t ngx_collab_pg_want(ngx_collab_pg_conn_t *pc,
    ngx_uint_t read, ngx_uint_t write);
static void ngx_collab_pg_dispatch(void);
static ngx_int_t ngx_collab_pg_run(ngx_collab_pg_conn_t *pc,
    ngx_collab_pg_query_t *q);
static void ngx_collab_pg_complete(ngx_collab_pg_query_t *q, PGresult *res);
static void ngx_collab_pg_fail(ngx_collab_pg_conn_t *pc, const char *what);
static void ngx_collab_pg_notice(void *arg, const char *message);


static ngx_collab_pg_pool_t  ngx_collab_pg;

/* the statements this worker has seen, by the address of their text */
static const char           *ngx_collab_pg_statements[NGX_COLLAB_PG_STATEMENTS];
static ngx_uint_t            ngx_collab_pg_nstatements;


char *
ngx_collab_pg_conf(ngx_conf_t *cf, ngx_collab_pg_conf_t *pgcf)
{
    ngx_str_t   *value, s;
    ngx_int_t    n;
    ngx_uint_t   i;
    ngx_msec_t   t;

    if (pgcf->conninfo.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "has an empty connection string";
    }

    pgcf->conninfo = value[1];
    pgcf->pool = 4;
    pgcf->queue = 1024;
    pgcf->pipeline = 32;
    pgcf->timeout = 5000;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pool=", 5) == 0) {
            n = ngx_atoi(value[i].data + 5, value[i].len - 5);
            if (n < 1 || n > 64) {
                goto invalid;
            }

            pgcf->pool = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "queue=", 6) == 0) {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (n < 1) {
                goto invalid;
            }

            pgcf->queue = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "pipeline=", 9) == 0) {
            n = ngx_atoi(value[i].data + 9, value[i].len - 9);
            if (n < 1 || n > 1024) {
                goto invalid;
            }

            pgcf->pipeline = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            t = ngx_parse_time(&s, 0);
            if (t == (ngx_msec_t) NGX_ERROR || t == 0) {
                goto invalid;
            }

            pgcf->timeout = t;
            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"",
                       &value[i]);

    return NGX_CONF_ERROR;
}


ngx_int_t
ngx_collab_pg_init_process(ngx_cycle_t *cycle, ngx_collab_pg_conf_t *pgcf)
{
    ngx_uint_t             i;
    ngx_collab_pg_conn_t  *pc;

    ngx_collab_pg.conf = pgcf;
    ngx_collab_pg.log = cycle->log;
    ngx_queue_init(&ngx_collab_pg.waiting);

    ngx_collab_pg.conns = ngx_pcalloc(cycle->pool,
                                 pgcf->pool * sizeof(ngx_collab_pg_conn_t));
    if (ngx_collab_pg.conns == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < pgcf->pool; i++) {
        pc = &ngx_collab_pg.conns[i];

        pc->index = i;
        ngx_queue_init(&pc->running);

        pc->backoff.handler = ngx_collab_pg_connect;
        pc->backoff.data = pc;
        pc->backoff.log = cycle->log;
        pc->backoff.cancelable = 1;

        ngx_collab_pg_connect(&pc->backoff);
    }

    return NGX_OK;
}


void
ngx_collab_pg_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t              i;
    ngx_queue_t            *q;
    ngx_collab_pg_conn_t   *pc;
    ngx_collab_pg_query_t  *query;

    if (ngx_collab_pg.conf == NULL) {
        return;
    }

    while (!ngx_queue_empty(&ngx_collab_pg.waiting)) {
        q = ngx_queue_head(&ngx_collab_pg.waiting);
        ngx_queue_remove(q);
        query = ngx_queue_data(q, ngx_collab_pg_query_t, queue);
        ngx_free(query);
    }

    for (i = 0; i < ngx_collab_pg.conf->pool; i++) {
        pc = &ngx_collab_pg.conns[i];

        while (!ngx_queue_empty(&pc->running)) {
            q = ngx_queue_head(&pc->running);
            ngx_queue_remove(q);
            query = ngx_queue_data(q, ngx_collab_pg_query_t, queue);
            ngx_free(query);
        }

        if (pc->result) {
            PQclear(pc->result);
            pc->result = NULL;
        }

        if (pc->backoff.timer_set) {
            ngx_del_timer(&pc->backoff);
        }

        ngx_collab_pg_detach(pc, 1);

        if (pc->conn) {
            PQfinish(pc->conn);
            pc->conn = NULL;
        }
    }

    ngx_collab_pg.conf = NULL;
}


/* queries */


ngx_collab_pg_query_t *
ngx_collab_pg_query_create(const char *sql, ngx_uint_t nparams, size_t size)
{
    size_t                  len;
    ngx_uint_t              i;
    ngx_collab_pg_query_t  *q;

    len = sizeof(ngx_collab_pg_query_t)
          + nparams * (sizeof(char *) + sizeof(int))
          + size + nparams;                 /* a NUL after each value */

    q = ngx_alloc(len, ngx_cycle->log);
    if (q == NULL) {
        return NULL;
    }

    ngx_memzero(q, sizeof(ngx_collab_pg_query_t));

    q->sql = sql;
    q->nparams = nparams;
    q->stmt = NGX_COLLAB_PG_STATEMENTS;

    for (i = 0; i < ngx_collab_pg_nstatements; i++) {
        if (ngx_collab_pg_statements[i] == sql) {
            q->stmt = i;
            break;
        }
    }

    if (i == ngx_collab_pg_nstatements
        && ngx_collab_pg_nstatements < NGX_COLLAB_PG_STATEMENTS)
    {
        ngx_collab_pg_statements[i] = sql;
        ngx_collab_pg_nstatements++;
        q->stmt = i;
    }
    q->values = (char **) (q + 1);
    q->lengths = (int *) (q->values + nparams);
    q->last = (u_char *) (q->lengths + nparams);
    q->end = (u_char *) q + len;

    ngx_memzero(q->values, nparams * sizeof(char *));
    ngx_memzero(q->lengths, nparams * sizeof(int));

    return q;
}


ngx_int_t
ngx_collab_pg_param(ngx_collab_pg_query_t *q, ngx_uint_t n, u_char *data,
    size_t len)
{
    if (n >= q->nparams) {
        return NGX_ERROR;
    }

    if (data == NULL) {
        q->values[n] = NULL;
        q->lengths[n] = 0;
        return NGX_OK;
    }

    if ((size_t) (q->end - q->last) < len + 1) {
        return NGX_ERROR;
    }

    q->values[n] = (char *) q->last;
    q->lengths[n] = (int) len;

    q->last = ngx_cpymem(q->last, data, len);
    *q->last++ = '\0';

    return NGX_OK;
}


void
ngx_collab_pg_param_end(ngx_collab_pg_query_t *q, ngx_uint_t n, u_char *last)
{
    q->values[n] = (char *) q->last;
    q->lengths[n] = (int) (last - q->last);

    *last++ = '\0';
    q->last = last;
}


ngx_int_t
ngx_collab_pg_param_int(ngx_collab_pg_query_t *q, ngx_uint_t n,
    int64_t value)
{
    u_char  buf[NGX_INT64_LEN + 1], *p;

    p = ngx_sprintf(buf, "%L", value);

    return ngx_collab_pg_param(q, n, buf, p - buf);
}


ngx_uint_t
ngx_collab_pg_available(void)
{
    return ngx_collab_pg.conf && ngx_collab_pg.nready;
}


ngx_int_t
ngx_collab_pg_send(ngx_collab_pg_query_t *q)
{
    ngx_uint_t             i, up;
    ngx_collab_pg_conn_t  *pc;

    if (ngx_collab_pg.conf == NULL) {
        ngx_free(q);
        return NGX_DECLINED;
    }

    if (ngx_collab_pg.nready == 0) {

        /* wait for a connection being opened, not for a backoff */

        up = 0;

        for (i = 0; i < ngx_collab_pg.conf->pool; i++) {
            pc = &ngx_collab_pg.conns[i];

            if (pc->state == NGX_COLLAB_PG_CONNECTING
                || pc->state == NGX_COLLAB_PG_SETUP)
            {
                up = 1;
                break;
            }
        }

        if (!up) {
            ngx_free(q);
            return NGX_DECLINED;
        }
    }

    if (ngx_collab_pg.nwaiting >= ngx_collab_pg.conf->queue) {
        ngx_log_error(NGX_LOG_WARN, ngx_collab_pg.log, 0,
                      "collab: postgres queue full (%ui queries), "
                      "consider raising queue= or pool= of "
                      "\"collab_postgres\"", ngx_collab_pg.nwaiting);
        ngx_free(q);
        return NGX_BUSY;
    }

    q->queued = ngx_current_msec;

    ngx_queue_insert_tail(&ngx_collab_pg.waiting, &q->queue);
    ngx_collab_pg.nwaiting++;

    ngx_collab_pg_dispatch();

    return NGX_OK;
}


/* hands waiting queries to the least loaded ready connections */

static void
ngx_collab_pg_dispatch(void)
{
    ngx_uint_t              i;
    ngx_queue_t            *qq;
    ngx_collab_pg_conn_t   *pc, *best;
    ngx_collab_pg_query_t  *q;

    while (ngx_collab_pg.nwaiting) {

        best = NULL;

        for (i = 0; i < ngx_collab_pg.conf->pool; i++) {
            pc = &ngx_collab_pg.conns[i];

            if (pc->state != NGX_COLLAB_PG_READY || pc->broken
                || pc->nrunning >= ngx_collab_pg.conf->pipeline)
            {
                continue;
            }

            if (best == NULL || pc->nrunning < best->nrunning) {
                best = pc;
            }
        }

        if (best == NULL) {
            return;
        }

        pc = best;

        qq = ngx_queue_head(&ngx_collab_pg.waiting);
        ngx_queue_remove(qq);
        ngx_collab_pg.nwaiting--;

        q = ngx_queue_data(qq, ngx_collab_pg_query_t, queue);

        if (q->handler == NULL) {
            ngx_free(q);
            continue;
        }

        if (ngx_collab_pg_run(pc, q) != NGX_OK
            || !PQpipelineSync(pc->conn))
        {
            /* failed from the connection's own handler, not from here */

            ngx_queue_insert_head(&ngx_collab_pg.waiting, qq);
            ngx_collab_pg.nwaiting++;

            pc->broken = 1;
            ngx_post_event(pc->c->read, &ngx_posted_events);
            continue;
        }

        ngx_queue_insert_tail(&pc->running, qq);
        pc->nrunning++;

        if (!pc->c->read->timer_set) {
            ngx_add_timer(pc->c->read, ngx_collab_pg.conf->timeout
                                       + NGX_COLLAB_PG_GRACE);
        }

        if (ngx_collab_pg_flush(pc) != NGX_OK) {
            pc->broken = 1;
            ngx_post_event(pc->c->read, &ngx_posted_events);
        }
    }
}


/* the query's Execute, after its Prepare if this connection lacks it */

static ngx_int_t
ngx_collab_pg_run(ngx_collab_pg_conn_t *pc, ngx_collab_pg_query_t *q)
{
    u_char  name[16], *p;

    if (q->stmt == NGX_COLLAB_PG_STATEMENTS) {
        return PQsendQueryParams(pc->conn, q->sql, (int) q->nparams, NULL,
                                 (const char * const *) q->values,
                                 q->lengths, NULL, 0)
               ? NGX_OK : NGX_ERROR;
    }

    p = ngx_sprintf(name, "collab_%ui", q->stmt);
    *p = '\0';

    q->preparing = 0;

    if (!(pc->prepared & (1U << q->stmt))) {

        if (!PQsendPrepare(pc->conn, (char *) name, q->sql, (int) q->nparams,
                           NULL))
        {
            return NGX_ERROR;
        }

        pc->prepared |= 1U << q->stmt;
        q->preparing = 1;
    }

    return PQsendQueryPrepared(pc->conn, (char *) name, (int) q->nparams,
                               (const char * const *) q->values, q->lengths,
                               NULL, 0)
           ? NGX_OK : NGX_ERROR;
}


/* any connection up with nothing to do: a query sent now runs at once */

ngx_uint_t
ngx_collab_pg_idle(void)
{
    ngx_uint_t  i;

    if (ngx_collab_pg.conf == NULL || ngx_collab_pg.nwaiting) {
        return 0;
    }

    for (i = 0; i < ngx_collab_pg.conf->pool; i++) {
        if (ngx_collab_pg.conns[i].state == NGX_COLLAB_PG_READY
            && ngx_collab_pg.conns[i].nrunning == 0)
        {
            return 1;
        }
    }

    return 0;
}


static void
ngx_collab_pg_complete(ngx_collab_pg_query_t *q, PGresult *res)
{
    if (q->handler) {
        q->handler(q, res);
    }

    ngx_free(q);
}


/* connections */


static void
ngx_collab_pg_connect(ngx_event_t *ev)
{
    ngx_collab_pg_conn_t  *pc;

    pc = ev->data;

    pc->conn = PQconnectStart((char *) ngx_collab_pg.conf->conninfo.data);

    if (pc->conn == NULL) {
        ngx_collab_pg_fail(pc, "PQconnectStart() failed");
        return;
    }

    if (PQstatus(pc->conn) == CONNECTION_BAD) {
        ngx_collab_pg_fail(pc, "connect");
        return;
    }

    if (PQsetnonblocking(pc->conn, 1) != 0) {
        ngx_collab_pg_fail(pc, "PQsetnonblocking()");
        return;
    }

    (void) PQsetNoticeProcessor(pc->conn, ngx_collab_pg_notice, pc);

    pc->state = NGX_COLLAB_PG_CONNECTING;

    if (ngx_collab_pg_attach(pc) != NGX_OK) {
        ngx_collab_pg_fail(pc, "connect");
        return;
    }

    ngx_add_timer(pc->c->read, ngx_collab_pg.conf->timeout);

    /* PQconnectStart() behaves as if PQconnectPoll() asked for writing */

    if (ngx_collab_pg_want(pc, 0, 1) != NGX_OK) {
        ngx_collab_pg_fail(pc, "connect");
    }
}


static ngx_int_t
ngx_collab_pg_attach(ngx_collab_pg_conn_t *pc)
{
    ngx_socket_t       fd;
    ngx_connection_t  *c;

    fd = PQsocket(pc->conn);

    if (fd == (ngx_socket_t) -1) {
        return NGX_ERROR;
    }

    c = ngx_get_connection(fd, ngx_collab_pg.log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = pc;
    c->read->handler = ngx_collab_pg_handler;
    c->write->handler = ngx_collab_pg_handler;
    c->read->log = ngx_collab_pg.log;
    c->write->log = ngx_collab_pg.log;

    /* an exiting worker does not wait for its database connections */
    c->read->cancelable = 1;
    c->write->cancelable = 1;

    pc->c = c;

    return NGX_OK;
}


/*
 * Gives the ngx_connection_t back without closing the socket, which is
 * libpq's; fd_closed: libpq has closed it already (and epoll forgot it).
 */

static void
ngx_collab_pg_detach(ngx_collab_pg_conn_t *pc, ngx_uint_t fd_closed)
{
    ngx_uint_t         flags;
    ngx_connection_t  *c;

    c = pc->c;

    if (c == NULL) {
        return;
    }

    flags = fd_closed ? NGX_CLOSE_EVENT : 0;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, flags);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;
    pc->c = NULL;
}


/* level-triggered interest in reading and writing */

static ngx_int_t
ngx_collab_pg_want(ngx_collab_pg_conn_t *pc, ngx_uint_t read,
    ngx_uint_t write)
{
    ngx_connection_t  *c;

    c = pc->c;

    if (read && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!read && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (write && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!write && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_collab_pg_handler(ngx_event_t *ev)
{
    ngx_connection_t      *c;
    ngx_collab_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    if (ev->timedout) {
        ev->timedout = 0;
        ngx_collab_pg_fail(pc, pc->state == NGX_COLLAB_PG_READY
                               ? "query timed out" : "connect timed out");
        return;
    }

    if (pc->broken) {
        ngx_collab_pg_fail(pc, "send");
        return;
    }

    switch (pc->state) {

    case NGX_COLLAB_PG_CONNECTING:
        ngx_collab_pg_poll(pc);
        return;

    case NGX_COLLAB_PG_SETUP:
    case NGX_COLLAB_PG_READY:

        if (ev->write) {
            if (ngx_collab_pg_flush(pc) != NGX_OK) {
                ngx_collab_pg_fail(pc, "send");
            }

            return;
        }

        if (!PQconsumeInput(pc->conn)) {
            ngx_collab_pg_fail(pc, "receive");
            return;
        }

        if (pc->state == NGX_COLLAB_PG_SETUP) {
            ngx_collab_pg_setup(pc);

        } else {
            ngx_collab_pg_results(pc);
        }

        return;

    default:
        return;
    }
}


static void
ngx_collab_pg_poll(ngx_collab_pg_conn_t *pc)
{
    u_char                *p;
    PostgresPollingStatusType  rc;
    u_char                 sql[256];

    rc = PQconnectPoll(pc->conn);

    if (rc == PGRES_POLLING_FAILED) {
        ngx_collab_pg_fail(pc, "connect");
        return;
    }

    if (PQsocket(pc->conn) != pc->c->fd) {

        /* libpq moved on to another address or retried without SSL */

        ngx_collab_pg_detach(pc, 1);

        if (ngx_collab_pg_attach(pc) != NGX_OK) {
            ngx_collab_pg_fail(pc, "connect");
            return;
        }

        ngx_add_timer(pc->c->read, ngx_collab_pg.conf->timeout);
    }

    switch (rc) {

    case PGRES_POLLING_READING:
        if (ngx_collab_pg_want(pc, 1, 0) != NGX_OK) {
            ngx_collab_pg_fail(pc, "connect");
        }

        return;

    case PGRES_POLLING_WRITING:
        if (ngx_collab_pg_want(pc, 0, 1) != NGX_OK) {
            ngx_collab_pg_fail(pc, "connect");
        }

        return;

    default: /* PGRES_POLLING_OK */
        break;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, ngx_collab_pg.log, 0,
                   "collab: postgres connection #%ui up", pc->index);

    p = ngx_snprintf(sql, sizeof(sql) - 1,
                     "SET statement_timeout = %M; "
                     "SET plan_cache_mode = force_generic_plan; "
                     "SELECT max(version) FROM collab_schema_migrations",
                     ngx_collab_pg.conf->timeout);
    *p = '\0';

    if (!PQsendQuery(pc->conn, (char *) sql)) {
        ngx_collab_pg_fail(pc, "setup");
        return;
    }

    pc->state = NGX_COLLAB_PG_SETUP;

    if (ngx_collab_pg_want(pc, 1, 0) != NGX_OK
        || ngx_collab_pg_flush(pc) != NGX_OK)
    {
        ngx_collab_pg_fail(pc, "setup");
    }
}


/*
 * The setup query's results: the SET, then the schema version.  A
 * database without the schema or behind it makes the connection fail,
 * to be retried (and logged) with backoff until it is migrated.
 */

static void
ngx_collab_pg_setup(ngx_collab_pg_conn_t *pc)
{
    char       *v;
    PGresult   *res;
    ngx_int_t   version;

    while (!PQisBusy(pc->conn)) {

        res = PQgetResult(pc->conn);

        if (res == NULL) {
            break;
        }

        if (pc->result) {
            PQclear(pc->result);
        }

        pc->result = res;
    }

    if (PQisBusy(pc->conn)) {
        return;
    }

    res = pc->result;
    pc->result = NULL;
    version = -1;

    if (res && PQresultStatus(res) == PGRES_TUPLES_OK
        && PQntuples(res) == 1)
    {
        v = PQgetvalue(res, 0, 0);
        version = PQgetisnull(res, 0, 0) ? 0 : ngx_atoi((u_char *) v,
                                                        ngx_strlen(v));
    }

    if (res) {
        PQclear(res);
    }

    if (version < NGX_COLLAB_SCHEMA_VERSION) {

        if (!ngx_collab_pg.schema_warned) {
            ngx_log_error(NGX_LOG_ERR, ngx_collab_pg.log, 0,
                          "collab: postgres schema version %i is behind "
                          "this module's %d: apply the migrations with "
                          "\"sql/migrate\" (\"make migrate\")",
                          version < 0 ? 0 : version,
                          NGX_COLLAB_SCHEMA_VERSION);
            ngx_collab_pg.schema_warned = 1;
        }

        ngx_collab_pg_fail(pc, NULL);
        return;
    }

    if (!PQenterPipelineMode(pc->conn)) {
        ngx_collab_pg_fail(pc, "PQenterPipelineMode()");
        return;
    }

    if (pc->c->read->timer_set) {
        ngx_del_timer(pc->c->read);
    }

    if (ngx_collab_pg.nready == 0 && pc->failures) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_collab_pg.log, 0,
                      "collab: postgres is back");
    }

    pc->state = NGX_COLLAB_PG_READY;
    pc->failures = 0;
    ngx_collab_pg.nready++;
    ngx_collab_pg.schema_warned = 0;

    ngx_collab_pg_dispatch();
}


/*
 * Reads pipeline results: each query yields its result(s), a NULL, and
 * its PGRES_PIPELINE_SYNC, at which it is complete.
 */

static void
ngx_collab_pg_results(ngx_collab_pg_conn_t *pc)
{
    PGresult               *res, *last;
    ngx_queue_t            *qq;
    ngx_uint_t              progress;
    ngx_collab_pg_query_t  *q;

    progress = 0;

    while (!PQisBusy(pc->conn)) {

        res = PQgetResult(pc->conn);

        if (pc->nrunning == 0) {
            if (res == NULL) {
                break;
            }

            PQclear(res);           /* a notice of no interest */
            continue;
        }

        qq = ngx_queue_head(&pc->running);
        q = ngx_queue_data(qq, ngx_collab_pg_query_t, queue);

        if (res == NULL) {

            /* one NULL after each statement: the Prepare's, the Execute's */

            if (pc->nulls++ > q->preparing) {
                break;
            }

            continue;
        }

        if (PQresultStatus(res) != PGRES_PIPELINE_SYNC) {

            /* the Prepare's own result: if it failed, it is not there */

            if (q->preparing && pc->nulls == 0
                && PQresultStatus(res) != PGRES_COMMAND_OK)
            {
                pc->prepared &= ~(1U << q->stmt);
            }

            if (pc->result) {
                PQclear(pc->result);
            }

            pc->result = res;
            continue;
        }

        PQclear(res);

        ngx_queue_remove(qq);
        pc->nrunning--;
        pc->nulls = 0;

        last = pc->result;
        pc->result = NULL;


        ngx_collab_pg_complete(q, last);

        if (last) {
            PQclear(last);
        }

        progress = 1;

        if (pc->state != NGX_COLLAB_PG_READY) {
            return;             /* a handler's query failed the pool */
        }
    }

    if (progress) {
        if (pc->nrunning) {
            ngx_add_timer(pc->c->read, ngx_collab_pg.conf->timeout
                                       + NGX_COLLAB_PG_GRACE);

        } else if (pc->c->read->timer_set) {
            ngx_del_timer(pc->c->read);
        }

        ngx_collab_pg_dispatch();
    }
}


static ngx_int_t
ngx_collab_pg_flush(ngx_collab_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->conn);

    if (rc < 0) {
        return NGX_ERROR;
    }

    return ngx_collab_pg_want(pc, 1, rc == 1);
}


/* the server's notices and warnings go to the error log, not to stderr */

static void
ngx_collab_pg_notice(void *arg, const char *message)
{
    size_t                 len;
    ngx_collab_pg_conn_t  *pc;

    pc = arg;
    len = ngx_strlen(message);

    while (len && (message[len - 1] == '\n' || message[len - 1] == ' ')) {
        len--;
    }

    ngx_log_error(NGX_LOG_NOTICE, ngx_collab_pg.log, 0,
                  "collab: postgres connection #%ui: %*s",
                  pc->index, len, message);
}


/*
 * The one failure path: fails the queries in flight, closes the
 * connection and schedules a reconnect with exponential backoff and full
 * jitter.  what: the step that failed, for the log (NULL: logged already).
 */

static void
ngx_collab_pg_fail(ngx_collab_pg_conn_t *pc, const char *what)
{
    char                   *err;
    size_t                  len;
    ngx_uint_t              level;
    ngx_msec_t              delay;
    ngx_queue_t            *qq, failed;
    ngx_collab_pg_query_t  *q;

    if (what) {
        err = pc->conn ? PQerrorMessage(pc->conn) : "";
        len = ngx_strlen(err);

        while (len && (err[len - 1] == '\n' || err[len - 1] == ' ')) {
            len--;
        }

        level = pc->failures ? NGX_LOG_INFO : NGX_LOG_ERR;

        ngx_log_error(level, ngx_collab_pg.log, 0,
                      "collab: postgres connection #%ui: %s failed: %*s",
                      pc->index, what, len, err);
    }

    if (pc->state == NGX_COLLAB_PG_READY) {
        ngx_collab_pg.nready--;
    }

    pc->state = NGX_COLLAB_PG_DOWN;
    pc->broken = 0;
    pc->nulls = 0;
    pc->prepared = 0;

    if (pc->result) {
        PQclear(pc->result);
        pc->result = NULL;
    }

    /*
     * PQfinish() closes the socket right after, if libpq has not already
     * (a failed read closes it): epoll forgets it either way
     */

    ngx_collab_pg_detach(pc, 1);

    if (pc->conn) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }

    /* the queries to fail, taken first: handlers may send new ones */

    ngx_queue_init(&failed);

    while (!ngx_queue_empty(&pc->running)) {
        qq = ngx_queue_head(&pc->running);
        ngx_queue_remove(qq);
        ngx_queue_insert_tail(&failed, qq);
    }

    pc->nrunning = 0;

    if (ngx_collab_pg.nready == 0) {
        while (!ngx_queue_empty(&ngx_collab_pg.waiting)) {
            qq = ngx_queue_head(&ngx_collab_pg.waiting);
            ngx_queue_remove(qq);
            ngx_queue_insert_tail(&failed, qq);
        }

        ngx_collab_pg.nwaiting = 0;
    }

    delay = NGX_COLLAB_PG_BACKOFF_MIN << ngx_min(pc->failures, 7);
    delay = ngx_min(delay, NGX_COLLAB_PG_BACKOFF_MAX);
    delay = delay / 2 + (ngx_msec_t) ngx_random() % (delay / 2 + 1);

    pc->failures++;

    ngx_add_timer(&pc->backoff, delay);

    while (!ngx_queue_empty(&failed)) {
        qq = ngx_queue_head(&failed);
        ngx_queue_remove(qq);

        q = ngx_queue_data(qq, ngx_collab_pg_query_t, queue);
        ngx_collab_pg_complete(q, NULL);
    }
}
