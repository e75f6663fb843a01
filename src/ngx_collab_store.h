
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_STORE_H_INCLUDED_
#define _NGX_COLLAB_STORE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <libpq-fe.h>
#include <jansson.h>


/* the SQL the product runs; sql/README.md explains each statement */

extern const char  ngx_collab_sql_upsert_user[];
extern const char  ngx_collab_sql_create_session[];
extern const char  ngx_collab_sql_my_sessions[];
extern const char  ngx_collab_sql_join_session[];
extern const char  ngx_collab_sql_messages_since[];
extern const char  ngx_collab_sql_history_before[];
extern const char  ngx_collab_sql_latest_image[];
extern const char  ngx_collab_sql_append_batch[];
extern const char  ngx_collab_sql_invite[];
extern const char  ngx_collab_sql_my_invitations[];
extern const char  ngx_collab_sql_session_invitations[];
extern const char  ngx_collab_sql_respond[];
extern const char  ngx_collab_sql_revoke[];
extern const char  ngx_collab_sql_remove[];
extern const char  ngx_collab_sql_update_session[];
extern const char  ngx_collab_sql_delete_session[];


ngx_int_t ngx_collab_store_ok(PGresult *res, ExecStatusType status,
    ngx_log_t *log);
ngx_uint_t ngx_collab_store_is(PGresult *res, const char *sqlstate,
    const char *constraint);
int64_t ngx_collab_store_int(PGresult *res, int row, const char *field);
json_t *ngx_collab_store_text(PGresult *res, int row, const char *field);

json_t *ngx_collab_store_session(PGresult *res, int row);
json_t *ngx_collab_store_message(PGresult *res, int row);
json_t *ngx_collab_store_invitation(PGresult *res, int row);
ngx_uint_t ngx_collab_store_bool(PGresult *res, int row, const char *field);
ngx_uint_t ngx_collab_store_ai_trigger(PGresult *res, int row);
ngx_uint_t ngx_collab_store_ai_image(PGresult *res, int row);
ngx_uint_t ngx_collab_store_equals(PGresult *res, int row, const char *field,
    const char *value);


#endif /* _NGX_COLLAB_STORE_H_INCLUDED_ */
