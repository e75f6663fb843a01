
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_REDIS_H_INCLUDED_
#define _NGX_COLLAB_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


typedef struct ngx_collab_room_s  ngx_collab_room_t;


typedef struct {
    ngx_str_t                   host;          /* an address, or unix: */
    ngx_int_t                   port;          /* 0: a unix socket */
    ngx_str_t                   password;
    ngx_int_t                   db;
    ngx_str_t                   prefix;
} ngx_collab_redis_conf_t;


char *ngx_collab_redis_conf(ngx_conf_t *cf, ngx_collab_redis_conf_t *rcf);
ngx_int_t ngx_collab_redis_init_process(ngx_cycle_t *cycle,
    ngx_collab_redis_conf_t *rcf);
void ngx_collab_redis_exit_process(ngx_cycle_t *cycle);

void ngx_collab_redis_subscribe(ngx_collab_room_t *room);
void ngx_collab_redis_unsubscribe(ngx_collab_room_t *room);
void ngx_collab_redis_publish(ngx_collab_room_t *room, int64_t seq,
    u_char *data, size_t len);
void ngx_collab_redis_presence(ngx_collab_room_t *room, int64_t user);
void ngx_collab_redis_room_event(int64_t session, u_char kind, int64_t user,
    u_char *data, size_t len);
void ngx_collab_redis_user_event(int64_t user, u_char *data, size_t len);


#endif /* _NGX_COLLAB_REDIS_H_INCLUDED_ */
