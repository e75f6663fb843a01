
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * ngx_collab: real-time collaboration inside nginx.  This file is the
 * table of contents: directives, configuration and the hooks that
 * connect the pieces under src/.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_collab.h"
#include "ngx_collab_ws.h"
#include "ngx_collab_echo.h"
#include "ngx_collab_protocol.h"
#include "ngx_collab_send.h"
#include "ngx_collab_api.h"


static void *ngx_collab_create_main_conf(ngx_conf_t *cf);
static char *ngx_collab_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_collab_create_loc_conf(ngx_conf_t *cf);
static char *ngx_collab_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_collab_echo(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_collab_websocket(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_collab_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_collab_jwt_secret_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_collab_set_app(ngx_conf_t *cf, ngx_collab_loc_conf_t *clcf,
    const ngx_collab_ws_app_t *app);
static char *ngx_collab_allowed_origins(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_collab_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_collab_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_collab_ai_endpoint(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_collab_ai_key_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_conf_enum_t  ngx_collab_ai_triggers[] = {
    { ngx_string("off"), NGX_COLLAB_AI_OFF },
    { ngx_string("mention"), NGX_COLLAB_AI_MENTION },
    { ngx_string("always"), NGX_COLLAB_AI_ALWAYS },
    { ngx_null_string, 0 }
};
static char *ngx_collab_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_collab_init_process(ngx_cycle_t *cycle);
static void ngx_collab_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_collab_commands[] = {

    { ngx_string("collab_echo"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_collab_echo,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_websocket"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_collab_websocket,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_collab_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_max_message_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, max_message_size),
      NULL },

    { ngx_string("collab_send_queue_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, send_queue_size),
      NULL },

    { ngx_string("collab_ping_interval"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, ping_interval),
      NULL },

    { ngx_string("collab_ping_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, ping_timeout),
      NULL },

    { ngx_string("collab_idle_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, idle_timeout),
      NULL },

    { ngx_string("collab_send_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, send_timeout),
      NULL },

    { ngx_string("collab_close_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, close_timeout),
      NULL },

    { ngx_string("collab_allowed_origins"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_collab_allowed_origins,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, allowed_origins),
      NULL },

    { ngx_string("collab_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_collab_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_batch_window"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, batch_window),
      NULL },

    { ngx_string("collab_join_history"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, join_history),
      NULL },

    { ngx_string("collab_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_collab_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_ai_endpoint"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_collab_ai_endpoint,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_ai_key_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_collab_ai_key_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_ai_model"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, ai.model),
      NULL },

    { ngx_string("collab_ai_image_model"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, ai.image_model),
      NULL },

    { ngx_string("collab_ai_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, ai.timeout),
      NULL },

    { ngx_string("collab_ai_max_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, ai.max_tokens),
      NULL },

    { ngx_string("collab_ai_context"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, ai.context),
      NULL },

    { ngx_string("collab_ai_concurrency"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, ai.concurrency),
      NULL },

    { ngx_string("collab_ai_trigger"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, ai.trigger),
      &ngx_collab_ai_triggers },

    { ngx_string("collab_rate_ai"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_collab_presence_rate,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, presence.rates[NGX_COLLAB_RATE_AI]),
      NULL },

    { ngx_string("collab_rate_ai_session"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_collab_presence_rate,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t,
               presence.rates[NGX_COLLAB_RATE_AI_SESSION]),
      NULL },

    { ngx_string("collab_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_collab_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_presence_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, presence.presence_timeout),
      NULL },

    { ngx_string("collab_presence_grace"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, presence.grace),
      NULL },

    { ngx_string("collab_typing_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, presence.typing_timeout),
      NULL },

    { ngx_string("collab_presence_batch"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, presence.batch),
      NULL },

    { ngx_string("collab_rate_presence"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_collab_presence_rate,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t,
               presence.rates[NGX_COLLAB_RATE_PRESENCE]),
      NULL },

    { ngx_string("collab_rate_messages"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_collab_presence_rate,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t,
               presence.rates[NGX_COLLAB_RATE_MESSAGES]),
      NULL },

    { ngx_string("collab_invite_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_collab_main_conf_t, invite_ttl),
      NULL },

    { ngx_string("collab_user"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, user),
      NULL },

    { ngx_string("collab_user_name"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, user_name),
      NULL },

    { ngx_string("collab_jwt_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_collab_jwt_secret_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_jwt_audience"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, jwt_audience),
      NULL },

    { ngx_string("collab_jwt_issuer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, jwt_issuer),
      NULL },

    { ngx_string("collab_jwt_cookie"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, jwt_cookie),
      NULL },

    { ngx_string("collab_jwt_leeway"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, jwt_leeway),
      NULL },

    { ngx_string("collab_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_collab_loc_conf_t, max_body_size),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_collab_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_collab_create_main_conf,           /* create main configuration */
    ngx_collab_init_main_conf,             /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_collab_create_loc_conf,            /* create location configuration */
    ngx_collab_merge_loc_conf              /* merge location configuration */
};


ngx_module_t  ngx_collab_module = {
    NGX_MODULE_V1,
    &ngx_collab_module_ctx,                /* module context */
    ngx_collab_commands,                   /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_collab_init_process,               /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_collab_exit_process,               /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_collab_create_main_conf(ngx_conf_t *cf)
{
    ngx_collab_main_conf_t  *cmcf;

    cmcf = ngx_pcalloc(cf->pool, sizeof(ngx_collab_main_conf_t));
    if (cmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     cmcf->pg = { 0 };
     */

    cmcf->batch_window = NGX_CONF_UNSET_MSEC;
    cmcf->join_history = NGX_CONF_UNSET_UINT;
    cmcf->invite_ttl = NGX_CONF_UNSET_MSEC;

    cmcf->presence.presence_timeout = NGX_CONF_UNSET_MSEC;
    cmcf->presence.grace = NGX_CONF_UNSET_MSEC;
    cmcf->presence.typing_timeout = NGX_CONF_UNSET_MSEC;
    cmcf->presence.batch = NGX_CONF_UNSET_MSEC;
    cmcf->presence.rates[0].rate = NGX_CONF_UNSET_UINT;
    cmcf->presence.rates[1].rate = NGX_CONF_UNSET_UINT;
    cmcf->presence.rates[2].rate = NGX_CONF_UNSET_UINT;
    cmcf->presence.rates[3].rate = NGX_CONF_UNSET_UINT;

    cmcf->ai.timeout = NGX_CONF_UNSET_MSEC;
    cmcf->ai.max_tokens = NGX_CONF_UNSET_UINT;
    cmcf->ai.context = NGX_CONF_UNSET_UINT;
    cmcf->ai.concurrency = NGX_CONF_UNSET_UINT;
    cmcf->ai.trigger = NGX_CONF_UNSET_UINT;

    return cmcf;
}


static char *
ngx_collab_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_collab_main_conf_t *cmcf = conf;

    ngx_conf_init_msec_value(cmcf->batch_window, 2);
    ngx_conf_init_uint_value(cmcf->join_history, 50);
    ngx_conf_init_msec_value(cmcf->invite_ttl, 7 * 24 * 3600 * 1000);

    if (cmcf->invite_ttl < 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_invite_ttl\" must be at least 1s");
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(cmcf->presence.presence_timeout, 60000);
    ngx_conf_init_msec_value(cmcf->presence.grace, 5000);
    ngx_conf_init_msec_value(cmcf->presence.typing_timeout, 5000);
    ngx_conf_init_msec_value(cmcf->presence.batch, 100);

    /* 5r/s burst=10 and 20r/s burst=40 */

    if (cmcf->presence.rates[0].rate == NGX_CONF_UNSET_UINT) {
        cmcf->presence.rates[0].rate = 5000;
        cmcf->presence.rates[0].burst = 10000;
    }

    if (cmcf->presence.rates[1].rate == NGX_CONF_UNSET_UINT) {
        cmcf->presence.rates[1].rate = 20000;
        cmcf->presence.rates[1].burst = 40000;
    }

    /* 10r/m burst=3 */

    if (cmcf->presence.rates[2].rate == NGX_CONF_UNSET_UINT) {
        cmcf->presence.rates[2].rate = 166;
        cmcf->presence.rates[2].burst = 3000;
    }

    /* 30r/m burst=10, whoever in the session asks */

    if (cmcf->presence.rates[3].rate == NGX_CONF_UNSET_UINT) {
        cmcf->presence.rates[3].rate = 500;
        cmcf->presence.rates[3].burst = 10000;
    }

    ngx_conf_init_msec_value(cmcf->ai.timeout, 60000);
    ngx_conf_init_uint_value(cmcf->ai.max_tokens, 512);
    ngx_conf_init_uint_value(cmcf->ai.context, 20);
    ngx_conf_init_uint_value(cmcf->ai.concurrency, 4);
    ngx_conf_init_uint_value(cmcf->ai.trigger, NGX_COLLAB_AI_MENTION);

    if (cmcf->ai.model.len == 0) {
        ngx_str_set(&cmcf->ai.model, "openai/gpt-4o-mini");
    }

    if (cmcf->ai.image_model.len == 0) {
        ngx_str_set(&cmcf->ai.image_model, "dall-e-3");
    }

    if (cmcf->ai.context == 0 || cmcf->ai.context > 200
        || cmcf->ai.concurrency == 0 || cmcf->ai.max_tokens == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_ai_context\" must be 1..200, "
                           "\"collab_ai_concurrency\" and "
                           "\"collab_ai_max_tokens\" at least 1");
        return NGX_CONF_ERROR;
    }

    if (cmcf->presence.batch == 0 || cmcf->presence.presence_timeout < 2000)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_presence_batch\" must not be 0 and "
                           "\"collab_presence_timeout\" must be at least 2s");
        return NGX_CONF_ERROR;
    }

    if (cmcf->join_history == 0 || cmcf->join_history > 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_join_history\" must be 1..1000");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_collab_create_loc_conf(ngx_conf_t *cf)
{
    ngx_collab_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_collab_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->app = NULL;
     *     conf->broadcast = 0;
     *     conf->user = NULL;
     *     conf->user_name = NULL;
     *     conf->jwt_key = { 0, NULL };
     *     conf->jwt_audience = { 0, NULL };
     *     conf->jwt_issuer = { 0, NULL };
     *     conf->jwt_cookie = { 0, NULL };
     */

    conf->max_message_size = NGX_CONF_UNSET_SIZE;
    conf->send_queue_size = NGX_CONF_UNSET_SIZE;
    conf->ping_interval = NGX_CONF_UNSET_MSEC;
    conf->ping_timeout = NGX_CONF_UNSET_MSEC;
    conf->idle_timeout = NGX_CONF_UNSET_MSEC;
    conf->send_timeout = NGX_CONF_UNSET_MSEC;
    conf->close_timeout = NGX_CONF_UNSET_MSEC;
    conf->allowed_origins = NGX_CONF_UNSET_PTR;
    conf->max_body_size = NGX_CONF_UNSET_SIZE;
    conf->jwt_leeway = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_collab_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_collab_loc_conf_t  *prev = parent;
    ngx_collab_loc_conf_t  *conf = child;

    ngx_conf_merge_size_value(conf->max_message_size,
                              prev->max_message_size, 64 * 1024);
    ngx_conf_merge_size_value(conf->send_queue_size,
                              prev->send_queue_size, 256 * 1024);
    ngx_conf_merge_msec_value(conf->ping_interval, prev->ping_interval,
                              30000);
    ngx_conf_merge_msec_value(conf->ping_timeout, prev->ping_timeout,
                              10000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout, 0);
    ngx_conf_merge_msec_value(conf->send_timeout, prev->send_timeout,
                              60000);
    ngx_conf_merge_msec_value(conf->close_timeout, prev->close_timeout,
                              5000);
    ngx_conf_merge_ptr_value(conf->allowed_origins, prev->allowed_origins,
                             NULL);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              16 * 1024);

    ngx_conf_merge_str_value(conf->jwt_key, prev->jwt_key, "");
    ngx_conf_merge_str_value(conf->jwt_audience, prev->jwt_audience, "");
    ngx_conf_merge_str_value(conf->jwt_issuer, prev->jwt_issuer, "");
    ngx_conf_merge_str_value(conf->jwt_cookie, prev->jwt_cookie, "");
    ngx_conf_merge_sec_value(conf->jwt_leeway, prev->jwt_leeway, 30);

    if (conf->user == NULL) {
        conf->user = prev->user;
    }

    if (conf->user_name == NULL) {
        conf->user_name = prev->user_name;
    }

    if (conf->max_message_size == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_max_message_size\" must be at least 1");
        return NGX_CONF_ERROR;
    }

    if (conf->send_queue_size == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_send_queue_size\" must be at least 1");
        return NGX_CONF_ERROR;
    }

    if (conf->close_timeout == 0 || conf->send_timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_close_timeout\" and "
                           "\"collab_send_timeout\" must not be 0");
        return NGX_CONF_ERROR;
    }

    if (conf->ping_interval && conf->ping_timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_ping_timeout\" must not be 0 "
                           "while \"collab_ping_interval\" is set");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_collab_echo(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_loc_conf_t *clcf = conf;

    ngx_str_t  *value;

    if (cf->args->nelts == 2) {
        value = cf->args->elts;

        if (ngx_strcmp(value[1].data, "broadcast") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }

        clcf->broadcast = 1;
    }

    return ngx_collab_set_app(cf, clcf, &ngx_collab_echo_app);
}


static char *
ngx_collab_websocket(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_collab_set_app(cf, conf, &ngx_collab_protocol_app);
}


static char *
ngx_collab_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_loc_conf_t *clcf = conf;

    ngx_http_core_loc_conf_t  *hclcf;

    if (clcf->app || clcf->api) {
        return "is duplicate";
    }

    clcf->api = 1;

    hclcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    hclcf->handler = ngx_collab_api_handler;

    return NGX_CONF_OK;
}


/* the key is the file's bytes, a trailing newline stripped */

static char *
ngx_collab_jwt_secret_file(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_loc_conf_t *clcf = conf;

    u_char           *buf;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, name;
    ngx_file_info_t   fi;

    if (clcf->jwt_key.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > 4096)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is not a file of at most 4096 bytes",
                           &name);
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    buf = ngx_pnalloc(cf->pool, 4097);
    if (buf == NULL) {
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, buf, 4096);

    (void) ngx_close_file(fd);

    if (n == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_read_fd_n " \"%V\" failed", &name);
        return NGX_CONF_ERROR;
    }

    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
        n--;
    }

    if (n == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" is empty", &name);
        return NGX_CONF_ERROR;
    }

    clcf->jwt_key.data = buf;
    clcf->jwt_key.len = n;

    return NGX_CONF_OK;
}


static char *
ngx_collab_set_app(ngx_conf_t *cf, ngx_collab_loc_conf_t *clcf,
    const ngx_collab_ws_app_t *app)
{
    ngx_http_core_loc_conf_t  *hclcf;

    if (clcf->app || clcf->api) {
        return "is duplicate";
    }

    clcf->app = app;

    hclcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    hclcf->handler = ngx_collab_ws_handler;

    return NGX_CONF_OK;
}


static char *
ngx_collab_allowed_origins(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    u_char       *c;
    ngx_str_t    *value, *origin;
    ngx_uint_t    i;
    ngx_array_t **a;

    a = (ngx_array_t **) (p + cmd->offset);

    if (*a != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    *a = ngx_array_create(cf->pool, cf->args->nelts - 1, sizeof(ngx_str_t));
    if (*a == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        /* "*", or scheme "://" host [":" port], as browsers send it */

        if (!(value[i].len == 1 && value[i].data[0] == '*')) {

            c = ngx_strnstr(value[i].data, "://", value[i].len);

            if (c == NULL || c == value[i].data
                || value[i].data[value[i].len - 1] == '/')
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid origin \"%V\", expected "
                                   "\"*\" or \"scheme://host[:port]\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }
        }

        origin = ngx_array_push(*a);
        if (origin == NULL) {
            return NGX_CONF_ERROR;
        }

        *origin = value[i];
    }

    return NGX_CONF_OK;
}


static char *
ngx_collab_postgres(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_main_conf_t *cmcf = conf;

    return ngx_collab_pg_conf(cf, &cmcf->pg);
}


static char *
ngx_collab_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_main_conf_t *cmcf = conf;

    return ngx_collab_presence_zone(cf, cmd, &cmcf->presence);
}


static char *
ngx_collab_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_main_conf_t *cmcf = conf;

    return ngx_collab_redis_conf(cf, &cmcf->redis);
}


static char *
ngx_collab_ai_endpoint(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_main_conf_t *cmcf = conf;

    ngx_str_t  *value;

    if (cmcf->ai.endpoint.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "http://", 7) != 0
        && ngx_strncmp(value[1].data, "https://", 8) != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid AI endpoint \"%V\", expected an "
                           "http:// or https:// base URL", &value[1]);
        return NGX_CONF_ERROR;
    }

    cmcf->ai.endpoint = value[1];

    while (cmcf->ai.endpoint.len
           && cmcf->ai.endpoint.data[cmcf->ai.endpoint.len - 1] == '/')
    {
        cmcf->ai.endpoint.len--;
    }

    return NGX_CONF_OK;
}


/* the API key: the file's first line; never logged */

static char *
ngx_collab_ai_key_file(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_collab_main_conf_t *cmcf = conf;

    u_char     *p, *last;
    ssize_t     n;
    ngx_fd_t    fd;
    ngx_str_t  *value, name;

    if (cmcf->ai.key.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &name);
        return NGX_CONF_ERROR;
    }

    p = ngx_pnalloc(cf->pool, 1024);
    if (p == NULL) {
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, p, 1024);

    (void) ngx_close_file(fd);

    if (n <= 0 || n == 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must hold a key of 1 to 1023 bytes",
                           &name);
        return NGX_CONF_ERROR;
    }

    last = ngx_strlchr(p, p + n, '\n');
    n = (last ? last : p + n) - p;

    while (n && (p[n - 1] == '\r' || p[n - 1] == ' ')) {
        n--;
    }

    cmcf->ai.key.data = p;
    cmcf->ai.key.len = n;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_collab_init_process(ngx_cycle_t *cycle)
{
    ngx_core_conf_t         *ccf;
    ngx_collab_main_conf_t  *cmcf;

    cmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_collab_module);

    if (cmcf == NULL) {
        return NGX_OK;
    }

    ngx_collab_send_init(cmcf, cycle->log);

    if (ngx_collab_presence_init_process(cycle, &cmcf->presence) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_collab_presence_events_init(cmcf->presence.batch, cycle->log);

    if (ngx_collab_ai_init_process(cycle, &cmcf->ai) != NGX_OK) {
        return NGX_ERROR;
    }

    if (cmcf->redis.host.data) {
        if (ngx_collab_redis_init_process(cycle, &cmcf->redis) != NGX_OK) {
            return NGX_ERROR;
        }

    } else if (ngx_worker == 0 && cmcf->pg.conninfo.data) {
        ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx,
                                               ngx_core_module);

        if (ccf->worker_processes > 1) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "collab: %i workers and no \"collab_redis\": a "
                          "message reaches other workers' connections only "
                          "when they read it from PostgreSQL, after a "
                          "delay; configure collab_redis",
                          ccf->worker_processes);
        }
    }

    if (cmcf->pg.conninfo.data == NULL) {
        return NGX_OK;
    }

    return ngx_collab_pg_init_process(cycle, &cmcf->pg);
}


static void
ngx_collab_exit_process(ngx_cycle_t *cycle)
{
    ngx_collab_ai_exit_process(cycle);
    ngx_collab_redis_exit_process(cycle);
    ngx_collab_pg_exit_process(cycle);
    ngx_collab_presence_exit_process(cycle);
}
