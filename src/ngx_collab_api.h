
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_API_H_INCLUDED_
#define _NGX_COLLAB_API_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_collab_protocol.h"


ngx_int_t ngx_collab_api_handler(ngx_http_request_t *r);
void ngx_collab_api_reply(ngx_collab_conn_t *conn, json_t *reply);
void ngx_collab_api_access(ngx_collab_conn_t *conn, json_t *req, json_t *ref);


#endif /* _NGX_COLLAB_API_H_INCLUDED_ */
