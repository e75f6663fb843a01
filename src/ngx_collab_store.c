
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The SQL ngx_collab runs, and the decoding of its rows into the JSON the
 * protocol sends.  Statements take parameters only ($n), never text built
 * from what a client sent; sql/README.md explains how each one keeps seq
 * gap-free and sends idempotent.  Timestamps leave PostgreSQL already as
 * ISO 8601 UTC strings with milliseconds.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_collab_store.h"


#define TS(col)                                                               \
    "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

#define SESSION_COLUMNS                                                       \
    "s.id, s.slug, s.title, s.type, s.is_public, s.max_participants, "       \
    "s.last_seq, " TS("s.last_activity") " AS last_activity, "               \
    TS("s.created_at") " AS created_at"

#define MESSAGE_COLUMNS                                                       \
    "m.seq, u.external_id AS user_ext, u.display_name AS user_name, "        \
    "m.kind, m.body, m.client_msg_id, m.metadata, "                          \
    TS("m.created_at") " AS created_at"


const char  ngx_collab_sql_upsert_user[] =
    "WITH found AS ("
    "  SELECT id, display_name FROM users WHERE external_id = $1::text"
    "), created AS ("
    "  INSERT INTO users (external_id, display_name)"
    "  SELECT $1::text, $2::text WHERE NOT EXISTS (SELECT 1 FROM found)"
    "  ON CONFLICT (external_id) DO UPDATE"
    "    SET display_name = coalesce(EXCLUDED.display_name,"
    "                                users.display_name)"
    "  RETURNING id"
    "), renamed AS ("
    "  UPDATE users SET display_name = $2::text FROM found"
    "  WHERE users.id = found.id AND $2::text IS NOT NULL"
    "    AND found.display_name IS DISTINCT FROM $2::text"
    ") "
    "SELECT id FROM created UNION ALL SELECT id FROM found";


const char  ngx_collab_sql_create_session[] =
    "WITH s AS ("
    "  INSERT INTO chat_sessions (title, type, owner_id, max_participants,"
    "                             is_public)"
    "  VALUES ($1::text, $2::text, $3::bigint, $4::integer,"
    "          coalesce($5::boolean, false))"
    "  RETURNING *"
    "), p AS ("
    "  INSERT INTO chat_participants (session_id, user_id, role)"
    "  SELECT id, owner_id, 'owner' FROM s"
    ") "
    "SELECT " SESSION_COLUMNS ", $6::text AS owner, 'owner' AS role FROM s";


const char  ngx_collab_sql_my_sessions[] =
    "SELECT " SESSION_COLUMNS ", o.external_id AS owner, p.role "
    "FROM chat_participants p"
    " JOIN chat_sessions s ON s.id = p.session_id"
    " JOIN users o ON o.id = s.owner_id "
    "WHERE p.user_id = $1::bigint "
    "ORDER BY s.last_activity DESC, s.id DESC "
    "LIMIT $2::integer";


/*
 * The session by slug and the caller's role in it.  A public session
 * makes a caller who is not yet a participant one, while there is room;
 * role is NULL when the caller may not join.
 */

const char  ngx_collab_sql_join_session[] =
    "WITH s AS ("
    "  SELECT * FROM chat_sessions WHERE slug = $1::text"
    "), p AS ("
    "  SELECT cp.role FROM chat_participants cp, s"
    "  WHERE cp.session_id = s.id AND cp.user_id = $2::bigint"
    "), added AS ("
    "  INSERT INTO chat_participants (session_id, user_id, role)"
    "  SELECT s.id, $2::bigint, 'member' FROM s"
    "  WHERE s.is_public AND NOT EXISTS (SELECT 1 FROM p)"
    "    AND (s.max_participants IS NULL"
    "         OR (SELECT count(*) FROM chat_participants cp"
    "             WHERE cp.session_id = s.id) < s.max_participants)"
    "  ON CONFLICT (session_id, user_id) DO UPDATE"
    "    SET role = chat_participants.role"
    "  RETURNING role"
    ") "
    "SELECT " SESSION_COLUMNS ","
    " (SELECT external_id FROM users WHERE id = s.owner_id) AS owner,"
    " coalesce((SELECT role FROM p), (SELECT role FROM added)) AS role "
    "FROM s";


const char  ngx_collab_sql_messages_since[] =
    "SELECT " MESSAGE_COLUMNS " "
    "FROM chat_messages m LEFT JOIN users u ON u.id = m.user_id "
    "WHERE m.session_id = $1::bigint AND m.seq > $2::bigint "
    "ORDER BY m.seq "
    "LIMIT $3::integer";


const char  ngx_collab_sql_history_before[] =
    "SELECT h.* FROM ("
    "  SELECT " MESSAGE_COLUMNS
    "  FROM chat_messages m LEFT JOIN users u ON u.id = m.user_id"
    "  WHERE m.session_id = $1::bigint"
    "    AND m.seq < coalesce($2::bigint, 9223372036854775807)"
    "  ORDER BY m.seq DESC"
    "  LIMIT $3::integer"
    ") h ORDER BY h.seq";


const char  ngx_collab_sql_append_batch[] =
    "WITH input AS ("
    "  SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[],"
    "                       $5::text[], $6::jsonb[])"
    "  WITH ORDINALITY AS i(user_id, kind, body, client_msg_id, metadata,"
    "                       ord)"
    "), keyed AS ("
    "  SELECT input.*,"
    "         CASE WHEN user_id IS NULL OR client_msg_id IS NULL THEN ord"
    "              ELSE min(ord) OVER (PARTITION BY user_id, client_msg_id)"
    "         END AS leader"
    "  FROM input"
    "), dup AS ("
    "  SELECT k.ord, m.seq, m.created_at FROM keyed k"
    "  JOIN chat_messages m"
    "    ON m.session_id = $1::bigint AND m.user_id = k.user_id"
    "   AND m.client_msg_id = k.client_msg_id"
    "  WHERE k.ord = k.leader"
    "), fresh AS ("
    "  SELECT k.*, row_number() OVER (ORDER BY k.ord) AS rn FROM keyed k"
    "  WHERE k.ord = k.leader"
    "    AND NOT EXISTS (SELECT 1 FROM dup WHERE dup.ord = k.ord)"
    "), bump AS ("
    "  UPDATE chat_sessions"
    "  SET last_seq = last_seq + (SELECT count(*) FROM fresh),"
    "      last_activity = CASE WHEN last_activity < now() - interval '1 s'"
    "                           THEN now() ELSE last_activity END"
    "  WHERE id = $1::bigint AND EXISTS (SELECT 1 FROM fresh)"
    "  RETURNING last_seq - (SELECT count(*) FROM fresh) AS base"
    "), ins AS ("
    "  INSERT INTO chat_messages (session_id, seq, user_id, kind, body,"
    "                             client_msg_id, metadata)"
    "  SELECT $1::bigint, bump.base + fresh.rn, fresh.user_id, fresh.kind,"
    "         fresh.body, fresh.client_msg_id, fresh.metadata"
    "  FROM fresh CROSS JOIN bump"
    "  RETURNING seq, created_at"
    "), result AS ("
    "  SELECT fresh.ord, ins.seq, ins.created_at, true AS created"
    "  FROM fresh CROSS JOIN bump JOIN ins ON ins.seq = bump.base + fresh.rn"
    "  UNION ALL"
    "  SELECT ord, seq, created_at, false FROM dup"
    ") "
    "SELECT k.ord, r.seq, " TS("r.created_at") " AS created_at,"
    "       r.created AND k.ord = k.leader AS created "
    "FROM keyed k JOIN result r ON r.ord = k.leader "
    "ORDER BY k.ord";


/*
 * NGX_OK when the statement succeeded with the expected status; logs a
 * failed statement (a NULL result was logged by the pool already).
 */

ngx_int_t
ngx_collab_store_ok(PGresult *res, ExecStatusType status, ngx_log_t *log)
{
    char    *msg;
    size_t   len;

    if (res == NULL) {
        return NGX_ERROR;
    }

    if (PQresultStatus(res) == status) {
        return NGX_OK;
    }

    msg = PQresultErrorMessage(res);
    len = ngx_strlen(msg);

    while (len && (msg[len - 1] == '\n' || msg[len - 1] == ' ')) {
        len--;
    }

    ngx_log_error(NGX_LOG_ERR, log, 0, "collab: postgres statement failed: "
                  "%s %*s", PQresStatus(PQresultStatus(res)), len, msg);

    return NGX_ERROR;
}


/* the statement failed with this SQLSTATE (and constraint, if given) */

ngx_uint_t
ngx_collab_store_is(PGresult *res, const char *sqlstate,
    const char *constraint)
{
    char  *s;

    if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR) {
        return 0;
    }

    s = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    if (s == NULL || ngx_strcmp(s, sqlstate) != 0) {
        return 0;
    }

    if (constraint == NULL) {
        return 1;
    }

    s = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);

    return s && ngx_strcmp(s, constraint) == 0;
}


int64_t
ngx_collab_store_int(PGresult *res, int row, const char *field)
{
    int    col;
    char  *v;

    col = PQfnumber(res, field);

    if (col < 0 || PQgetisnull(res, row, col)) {
        return 0;
    }

    v = PQgetvalue(res, row, col);

    return ngx_atoof((u_char *) v, ngx_strlen(v));
}


json_t *
ngx_collab_store_text(PGresult *res, int row, const char *field)
{
    int  col;

    col = PQfnumber(res, field);

    if (col < 0 || PQgetisnull(res, row, col)) {
        return json_null();
    }

    return json_stringn(PQgetvalue(res, row, col),
                        PQgetlength(res, row, col));
}


static json_t *
ngx_collab_store_integer(PGresult *res, int row, const char *field)
{
    int  col;

    col = PQfnumber(res, field);

    if (col < 0 || PQgetisnull(res, row, col)) {
        return json_null();
    }

    return json_integer(ngx_collab_store_int(res, row, field));
}


json_t *
ngx_collab_store_session(PGresult *res, int row)
{
    int      col;
    json_t  *s;

    col = PQfnumber(res, "is_public");

    s = json_object();
    if (s == NULL) {
        return NULL;
    }

    if (json_object_set_new(s, "id", ngx_collab_store_text(res, row, "slug"))
        || json_object_set_new(s, "title",
                               ngx_collab_store_text(res, row, "title"))
        || json_object_set_new(s, "type",
                               ngx_collab_store_text(res, row, "type"))
        || json_object_set_new(s, "isPublic",
                               json_boolean(col >= 0
                                   && PQgetvalue(res, row, col)[0] == 't'))
        || json_object_set_new(s, "maxParticipants",
                               ngx_collab_store_integer(res, row,
                                                        "max_participants"))
        || json_object_set_new(s, "owner",
                               ngx_collab_store_text(res, row, "owner"))
        || json_object_set_new(s, "role",
                               ngx_collab_store_text(res, row, "role"))
        || json_object_set_new(s, "lastSeq",
                               ngx_collab_store_integer(res, row, "last_seq"))
        || json_object_set_new(s, "lastActivity",
                               ngx_collab_store_text(res, row,
                                                     "last_activity"))
        || json_object_set_new(s, "createdAt",
                               ngx_collab_store_text(res, row, "created_at")))
    {
        json_decref(s);
        return NULL;
    }

    return s;
}


json_t *
ngx_collab_store_message(PGresult *res, int row)
{
    int      col;
    json_t  *m, *meta;

    meta = NULL;
    col = PQfnumber(res, "metadata");

    if (col >= 0 && !PQgetisnull(res, row, col)) {
        meta = json_loadb(PQgetvalue(res, row, col),
                          PQgetlength(res, row, col), 0, NULL);
    }

    m = json_object();
    if (m == NULL) {
        json_decref(meta);
        return NULL;
    }

    if (json_object_set_new(m, "seq",
                            ngx_collab_store_integer(res, row, "seq"))
        || json_object_set_new(m, "user",
                               ngx_collab_store_text(res, row, "user_ext"))
        || json_object_set_new(m, "userName",
                               ngx_collab_store_text(res, row, "user_name"))
        || json_object_set_new(m, "kind",
                               ngx_collab_store_text(res, row, "kind"))
        || json_object_set_new(m, "body",
                               ngx_collab_store_text(res, row, "body"))
        || json_object_set_new(m, "clientMsgId",
                               ngx_collab_store_text(res, row,
                                                     "client_msg_id"))
        || json_object_set_new(m, "createdAt",
                               ngx_collab_store_text(res, row, "created_at"))
        || (meta && json_object_set_new(m, "metadata", meta)))
    {
        json_decref(m);
        return NULL;
    }

    return m;
}
