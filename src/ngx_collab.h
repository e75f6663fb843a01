
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_H_INCLUDED_
#define _NGX_COLLAB_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#include "ngx_collab_pg.h"
#include "ngx_collab_presence.h"
#include "ngx_collab_redis.h"
#include "ngx_collab_ai.h"


typedef struct ngx_collab_ws_s      ngx_collab_ws_t;
typedef struct ngx_collab_ws_app_s  ngx_collab_ws_app_t;


typedef struct {
    ngx_collab_pg_conf_t        pg;           /* pg.conninfo.data: set */
    ngx_collab_presence_conf_t  presence;     /* presence.shm_zone: set */
    ngx_collab_redis_conf_t     redis;        /* redis.host.data: set */
    ngx_collab_ai_conf_t        ai;           /* ai.endpoint.len: set */
    ngx_msec_t                  batch_window;
    ngx_uint_t                  batch_size;
    ngx_uint_t                  join_history;
    ngx_msec_t                  invite_ttl;
} ngx_collab_main_conf_t;


typedef struct {
    const ngx_collab_ws_app_t  *app;          /* NULL: not a collab location */
    ngx_uint_t                  broadcast;    /* collab_echo broadcast */
    ngx_uint_t                  api;          /* collab_api */

    size_t                      max_message_size;
    size_t                      send_queue_size;
    ngx_msec_t                  ping_interval;
    ngx_msec_t                  ping_timeout;
    ngx_msec_t                  idle_timeout;
    ngx_msec_t                  send_timeout;
    ngx_msec_t                  close_timeout;
    ngx_array_t                *allowed_origins;   /* of ngx_str_t */

    ngx_http_complex_value_t   *user;
    ngx_http_complex_value_t   *user_name;
    size_t                      max_body_size;

    ngx_str_t                   jwt_key;       /* collab_jwt_secret_file */
    ngx_str_t                   jwt_audience;  /* NUL-terminated */
    ngx_str_t                   jwt_issuer;
    ngx_str_t                   jwt_cookie;
    time_t                      jwt_leeway;
} ngx_collab_loc_conf_t;


extern ngx_module_t  ngx_collab_module;


#endif /* _NGX_COLLAB_H_INCLUDED_ */
