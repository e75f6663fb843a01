
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_AI_H_INCLUDED_
#define _NGX_COLLAB_AI_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_COLLAB_AI_OFF      0
#define NGX_COLLAB_AI_MENTION  1
#define NGX_COLLAB_AI_ALWAYS   2
#define NGX_COLLAB_AI_SERVER   3        /* a session's: collab_ai_trigger */

/* room->ai_image: what a session's type asks of the assistant */
#define NGX_COLLAB_AI_IMAGE_NONE      0 /* "text": a written reply */
#define NGX_COLLAB_AI_IMAGE_GENERATE  1 /* "text-to-image" */
#define NGX_COLLAB_AI_IMAGE_EDIT      2 /* "image-to-image" */


typedef struct ngx_collab_room_s  ngx_collab_room_t;


typedef struct {
    ngx_str_t                   endpoint;      /* no trailing slash */
    ngx_str_t                   key;
    ngx_str_t                   model;
    ngx_str_t                   image_model;   /* picture sessions */
    ngx_msec_t                  timeout;
    ngx_uint_t                  max_tokens;
    ngx_uint_t                  context;
    ngx_uint_t                  concurrency;
    ngx_uint_t                  trigger;
} ngx_collab_ai_conf_t;


ngx_int_t ngx_collab_ai_init_process(ngx_cycle_t *cycle,
    ngx_collab_ai_conf_t *acf);
void ngx_collab_ai_exit_process(ngx_cycle_t *cycle);
void ngx_collab_ai_trigger(ngx_collab_room_t *room, int64_t seq,
    int64_t user, ngx_str_t *body, ngx_str_t *metadata);
ngx_int_t ngx_collab_ai_cancel(ngx_collab_room_t *room);
ngx_int_t ngx_collab_ai_trigger_value(u_char *name, size_t len);


#endif /* _NGX_COLLAB_AI_H_INCLUDED_ */
