
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_PROTOCOL_H_INCLUDED_
#define _NGX_COLLAB_PROTOCOL_H_INCLUDED_


#include "ngx_collab_ws.h"


extern const ngx_collab_ws_app_t  ngx_collab_protocol_app;


#endif /* _NGX_COLLAB_PROTOCOL_H_INCLUDED_ */
