
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
#include "ngx_collab_ai.h"


#define TS(col)                                                               \
    "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

#define SESSION_COLUMNS                                                       \
    "s.id, s.slug, s.title, s.type, s.is_public, s.max_participants, "       \
    "s.ai_trigger, s.last_seq, "                                             \
    TS("s.last_activity") " AS last_activity, "                              \
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
    "  RETURNING id, display_name"
    "), renamed AS ("
    "  UPDATE users SET display_name = $2::text FROM found"
    "  WHERE users.id = found.id AND $2::text IS NOT NULL"
    "    AND found.display_name IS DISTINCT FROM $2::text"
    ") "
    "SELECT id, display_name FROM created "
    "UNION ALL SELECT id, coalesce($2::text, display_name) FROM found";


const char  ngx_collab_sql_create_session[] =
    "WITH s AS ("
    "  INSERT INTO chat_sessions (title, type, owner_id, max_participants,"
    "                             is_public, ai_trigger)"
    "  VALUES ($1::text, $2::text, $3::bigint, $4::integer,"
    "          coalesce($5::boolean, false), $7::text)"
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


/* $1 session id, $2 seq: the newest picture in a message up to $2 */

const char  ngx_collab_sql_latest_image[] =
    "SELECT m.seq, m.metadata->>'image' AS image"
    "  FROM chat_messages m"
    "  WHERE m.session_id = $1::bigint AND m.seq <= $2::bigint"
    "    AND m.metadata->>'image' IS NOT NULL"
    "  ORDER BY m.seq DESC"
    "  LIMIT 1";


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
    "), looked AS ("
    "  SELECT k.*, m.seq AS old_seq, m.created_at AS old_at FROM keyed k"
    "  LEFT JOIN LATERAL ("
    "    SELECT seq, created_at FROM chat_messages"
    "    WHERE session_id = $1::bigint AND user_id = k.user_id"
    "      AND client_msg_id = k.client_msg_id"
    "    LIMIT 1"
    "  ) m ON true"
    "  WHERE k.ord = k.leader"
    "), fresh AS ("
    "  SELECT l.*, row_number() OVER (ORDER BY l.ord) AS rn FROM looked l"
    "  WHERE l.old_seq IS NULL"
    "), bump AS ("
    "  UPDATE chat_sessions"
    "  SET last_seq = last_seq + (SELECT count(*) FROM fresh),"
    "      last_activity = CASE WHEN last_activity < now() - interval '1 s'"
    "                           THEN now() ELSE last_activity END"
    "  WHERE id = $1::bigint AND EXISTS (SELECT 1 FROM fresh)"
    "  RETURNING last_seq - (SELECT count(*) FROM fresh) AS base"
    "), ins AS ("
    "  INSERT INTO chat_messages (session_id, seq, user_id, kind, body,"
    "                             client_msg_id, metadata, created_at)"
    "  SELECT $1::bigint, bump.base + fresh.rn, fresh.user_id, fresh.kind,"
    "         fresh.body, fresh.client_msg_id, fresh.metadata, now()"
    "  FROM fresh CROSS JOIN bump"
    "), result AS ("
    "  SELECT fresh.ord, bump.base + fresh.rn AS seq, now() AS created_at,"
    "         true AS created"
    "  FROM fresh CROSS JOIN bump"
    "  UNION ALL"
    "  SELECT ord, old_seq, old_at, false FROM looked"
    "  WHERE old_seq IS NOT NULL"
    ") "
    "SELECT k.ord, r.seq, " TS("r.created_at") " AS created_at,"
    "       r.created AND k.ord = k.leader AS created "
    "FROM keyed k JOIN result r ON r.ord = k.leader "
    "ORDER BY k.ord";


/*
 * Invitations and the owner's rights (issue 6).  Each statement checks
 * the caller's right in SQL and reports what it found, so that one round
 * trip tells the op both what happened and why not.
 */

#define INVITATION_COLUMNS                                                    \
    "i.id AS invitation, s.slug, s.title, "                                  \
    "(SELECT external_id FROM users WHERE id = i.invited_by) AS invited_by, " \
    "(SELECT external_id FROM users WHERE id = i.invited_user_id) "          \
    "AS invitee, i.status, "                                                 \
    TS("i.expires_at") " AS expires_at, " TS("i.created_at") " AS created_at"


/*
 * $1 slug, $2 the caller's users.id, $3 the invitee's external id, $4 the
 * invitation's lifetime in seconds.  The invitee's user row is created if
 * need be.  A pending invitation that expired is renewed in place.
 */

const char  ngx_collab_sql_invite[] =
    "WITH s AS ("
    "  SELECT id, slug, title, owner_id FROM chat_sessions"
    "  WHERE slug = $1::text"
    "), u AS ("
    "  SELECT id FROM users WHERE external_id = $3::text"
    "), nu AS ("
    "  INSERT INTO users (external_id)"
    "  SELECT $3::text WHERE NOT EXISTS (SELECT 1 FROM u)"
    "    AND EXISTS (SELECT 1 FROM s WHERE owner_id = $2::bigint)"
    "  ON CONFLICT (external_id) DO NOTHING RETURNING id"
    "), inv AS ("
    "  SELECT coalesce((SELECT id FROM u), (SELECT id FROM nu)) AS id"
    "), part AS ("
    "  SELECT EXISTS (SELECT 1 FROM chat_participants p, s, inv"
    "                 WHERE p.session_id = s.id AND p.user_id = inv.id) AS yes"
    "), ins AS ("
    "  INSERT INTO chat_invitations (session_id, invited_user_id, invited_by,"
    "                                expires_at)"
    "  SELECT s.id, inv.id, $2::bigint,"
    "         now() + make_interval(secs => $4::double precision)"
    "  FROM s, inv, part"
    "  WHERE s.owner_id = $2::bigint AND inv.id IS NOT NULL AND NOT part.yes"
    "  ON CONFLICT (session_id, invited_user_id) WHERE status = 'pending'"
    "  DO UPDATE SET invited_by = EXCLUDED.invited_by,"
    "                expires_at = EXCLUDED.expires_at, created_at = now()"
    "  WHERE chat_invitations.expires_at <= now()"
    "  RETURNING *"
    ") "
    "SELECT s.id AS session_id, s.owner_id = $2::bigint AS is_owner,"
    " (SELECT yes FROM part) AS is_participant,"
    " (SELECT id FROM inv) AS invited_user_id,"
    " i.id AS invitation, s.slug, s.title,"
    " (SELECT external_id FROM users WHERE id = $2::bigint) AS invited_by,"
    " $3::text AS invitee, i.status,"
    " " TS("i.expires_at") " AS expires_at,"
    " " TS("i.created_at") " AS created_at "
    "FROM s LEFT JOIN ins i ON true";


/* $1 the caller's users.id: their pending invitations */

const char  ngx_collab_sql_my_invitations[] =
    "SELECT " INVITATION_COLUMNS " "
    "FROM chat_invitations i JOIN chat_sessions s ON s.id = i.session_id "
    "WHERE i.invited_user_id = $1::bigint AND i.status = 'pending'"
    "  AND i.expires_at > now() "
    "ORDER BY i.created_at DESC LIMIT 200";


/* $1 slug, $2 the caller: a session's pending invitations, for its owner */

const char  ngx_collab_sql_session_invitations[] =
    "SELECT s.owner_id = $2::bigint AS is_owner, " INVITATION_COLUMNS " "
    "FROM chat_sessions s"
    " LEFT JOIN chat_invitations i ON i.session_id = s.id"
    "  AND i.status = 'pending' AND i.expires_at > now()"
    "  AND s.owner_id = $2::bigint "
    "WHERE s.slug = $1::text "
    "ORDER BY i.created_at DESC LIMIT 201";


/*
 * $1 invitation id, $2 the caller (the invitee), $3 'accepted' or
 * 'declined'.  Accepting makes the invitee a participant, while the
 * session has room (sql/003's trigger decides, under concurrency too);
 * an expired invitation is marked so and refused.
 */

const char  ngx_collab_sql_respond[] =
    "WITH i AS ("
    "  SELECT * FROM chat_invitations"
    "  WHERE id = $1::bigint AND invited_user_id = $2::bigint FOR UPDATE"
    "), s AS ("
    "  SELECT cs.* FROM chat_sessions cs, i WHERE cs.id = i.session_id"
    "), ok AS ("
    "  SELECT i.id, i.session_id FROM i"
    "  WHERE i.status = 'pending' AND i.expires_at > now()"
    "), p AS ("

    /* the participant limit's trigger skips the row when it is full */

    "  INSERT INTO chat_participants (session_id, user_id, role)"
    "  SELECT session_id, $2::bigint, 'member' FROM ok"
    "  WHERE $3::text = 'accepted'"
    "  ON CONFLICT (session_id, user_id) DO UPDATE"
    "    SET role = chat_participants.role"
    "  RETURNING session_id"
    "), upd AS ("
    "  UPDATE chat_invitations SET status = $3::text, responded_at = now()"
    "  WHERE id IN (SELECT id FROM ok)"
    "    AND ($3::text <> 'accepted' OR EXISTS (SELECT 1 FROM p))"
    "  RETURNING session_id"
    "), expire AS ("
    "  UPDATE chat_invitations SET status = 'expired'"
    "  WHERE id IN (SELECT id FROM i"
    "               WHERE status = 'pending' AND expires_at <= now())"
    ") "
    "SELECT i.status AS was, i.expires_at > now() AS live,"
    " EXISTS (SELECT 1 FROM upd) AS done, " SESSION_COLUMNS ","
    " (SELECT external_id FROM users WHERE id = s.owner_id) AS owner,"
    " 'member' AS role "
    "FROM i JOIN s ON s.id = i.session_id";


/* $1 invitation id, $2 the caller (the session's owner) */

const char  ngx_collab_sql_revoke[] =
    "WITH i AS ("
    "  SELECT ci.*, cs.owner_id, cs.slug FROM chat_invitations ci"
    "  JOIN chat_sessions cs ON cs.id = ci.session_id"
    "  WHERE ci.id = $1::bigint FOR UPDATE OF ci"
    "), upd AS ("
    "  UPDATE chat_invitations SET status = 'revoked', responded_at = now()"
    "  WHERE id IN (SELECT id FROM i WHERE owner_id = $2::bigint"
    "               AND status = 'pending')"
    "  RETURNING id"
    ") "
    "SELECT i.status AS was, i.owner_id = $2::bigint AS is_owner,"
    " EXISTS (SELECT 1 FROM upd) AS done, i.slug,"
    " i.invited_user_id AS invitee_id,"
    " (SELECT external_id FROM users WHERE id = i.invited_user_id)"
    " AS invitee "
    "FROM i";


/* $1 slug, $2 the caller (the owner), $3 the participant's external id */

const char  ngx_collab_sql_remove[] =
    "WITH s AS ("
    "  SELECT id, slug, owner_id FROM chat_sessions WHERE slug = $1::text"
    "), t AS ("
    "  SELECT id FROM users WHERE external_id = $3::text"
    "), del AS ("
    "  DELETE FROM chat_participants p USING s, t"
    "  WHERE p.session_id = s.id AND p.user_id = t.id"
    "    AND s.owner_id = $2::bigint AND t.id <> s.owner_id"
    "  RETURNING p.user_id"
    ") "
    "SELECT s.id, s.slug, s.owner_id = $2::bigint AS is_owner,"
    " (SELECT id FROM t) AS target_id,"
    " coalesce((SELECT id FROM t) = s.owner_id, false) AS target_is_owner,"
    " EXISTS (SELECT 1 FROM del) AS removed "
    "FROM s";


/*
 * $1 slug, $2 the caller (the owner), $3 title, $4 is_public, $5
 * max_participants, $6 true to remove the limit, $7 ai_trigger, $8 true
 * to give the session back the server's; NULL keeps a field
 */

const char  ngx_collab_sql_update_session[] =
    "WITH s0 AS ("
    "  SELECT id, owner_id FROM chat_sessions WHERE slug = $1::text"
    "), s AS ("
    "  UPDATE chat_sessions cs"
    "  SET title = coalesce($3::text, cs.title),"
    "      is_public = coalesce($4::boolean, cs.is_public),"
    "      max_participants = CASE WHEN $6::boolean THEN NULL"
    "                         ELSE coalesce($5::integer, cs.max_participants)"
    "                         END,"
    "      ai_trigger = CASE WHEN $8::boolean THEN NULL"
    "                   ELSE coalesce($7::text, cs.ai_trigger) END"
    "  FROM s0 WHERE cs.id = s0.id AND s0.owner_id = $2::bigint"
    "  RETURNING cs.*"
    ") "
    "SELECT s0.owner_id = $2::bigint AS is_owner, " SESSION_COLUMNS ","
    " (SELECT external_id FROM users WHERE id = s0.owner_id) AS owner,"
    " 'owner' AS role "
    "FROM s0 LEFT JOIN s ON s.id = s0.id";


/* $1 slug, $2 the caller (the owner); messages and the rest cascade */

const char  ngx_collab_sql_delete_session[] =
    "WITH s AS ("
    "  SELECT id, owner_id FROM chat_sessions WHERE slug = $1::text"
    "), del AS ("
    "  DELETE FROM chat_sessions cs USING s"
    "  WHERE cs.id = s.id AND s.owner_id = $2::bigint RETURNING cs.id"
    ") "
    "SELECT s.id, s.owner_id = $2::bigint AS is_owner,"
    " EXISTS (SELECT 1 FROM del) AS deleted "
    "FROM s";


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
        || json_object_set_new(s, "aiTrigger",
                               ngx_collab_store_text(res, row, "ai_trigger"))
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


/* the field is not NULL and holds exactly this text */

ngx_uint_t
ngx_collab_store_equals(PGresult *res, int row, const char *field,
    const char *value)
{
    int  col;

    col = PQfnumber(res, field);

    return col >= 0 && !PQgetisnull(res, row, col)
           && ngx_strcmp(PQgetvalue(res, row, col), value) == 0;
}


/* the session's ai_trigger as NGX_COLLAB_AI_*: SERVER when NULL */

ngx_uint_t
ngx_collab_store_ai_trigger(PGresult *res, int row)
{
    int        col;
    ngx_int_t  v;

    col = PQfnumber(res, "ai_trigger");

    if (col < 0 || PQgetisnull(res, row, col)) {
        return NGX_COLLAB_AI_SERVER;
    }

    v = ngx_collab_ai_trigger_value((u_char *) PQgetvalue(res, row, col),
                                    PQgetlength(res, row, col));

    return (v == NGX_ERROR) ? NGX_COLLAB_AI_SERVER : (ngx_uint_t) v;
}


/* the session's type as NGX_COLLAB_AI_IMAGE_* */

ngx_uint_t
ngx_collab_store_ai_image(PGresult *res, int row)
{
    if (ngx_collab_store_equals(res, row, "type", "text-to-image")) {
        return NGX_COLLAB_AI_IMAGE_GENERATE;
    }

    if (ngx_collab_store_equals(res, row, "type", "image-to-image")) {
        return NGX_COLLAB_AI_IMAGE_EDIT;
    }

    return NGX_COLLAB_AI_IMAGE_NONE;
}


ngx_uint_t
ngx_collab_store_bool(PGresult *res, int row, const char *field)
{
    int  col;

    col = PQfnumber(res, field);

    return col >= 0 && !PQgetisnull(res, row, col)
           && PQgetvalue(res, row, col)[0] == 't';
}


json_t *
ngx_collab_store_invitation(PGresult *res, int row)
{
    json_t  *i;

    i = json_object();
    if (i == NULL) {
        return NULL;
    }

    if (json_object_set_new(i, "id",
                            ngx_collab_store_integer(res, row, "invitation"))
        || json_object_set_new(i, "session",
                               ngx_collab_store_text(res, row, "slug"))
        || json_object_set_new(i, "title",
                               ngx_collab_store_text(res, row, "title"))
        || json_object_set_new(i, "invitedBy",
                               ngx_collab_store_text(res, row, "invited_by"))
        || json_object_set_new(i, "invitee",
                               ngx_collab_store_text(res, row, "invitee"))
        || json_object_set_new(i, "status",
                               ngx_collab_store_text(res, row, "status"))
        || json_object_set_new(i, "expiresAt",
                               ngx_collab_store_text(res, row, "expires_at"))
        || json_object_set_new(i, "createdAt",
                               ngx_collab_store_text(res, row, "created_at")))
    {
        json_decref(i);
        return NULL;
    }

    return i;
}
