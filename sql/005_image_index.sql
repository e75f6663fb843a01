-- 005_image_index.sql: the newest picture of a session, found at once
-- (issue 9, image-to-image sessions).
--
-- An "image-to-image" reply without a picture attached to its question
-- edits the newest picture of the session (ngx_collab_sql_latest_image:
-- session_id = $1, seq <= $2, metadata->>'image' IS NOT NULL, newest
-- first).  Without this index that walks every message of the session
-- back to the last picture: all of them in a long session that has none.
-- The index holds only the messages that carry a picture, so it costs
-- nothing to messages without one.
--
-- CREATE INDEX takes a lock that holds back writes to chat_messages
-- while it is built.  On a large table, build it beforehand without that
-- lock, with the same name, and this migration then does nothing:
--
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS chat_messages_image_idx
--       ON chat_messages (session_id, seq)
--       WHERE (metadata ->> 'image') IS NOT NULL;

CREATE INDEX IF NOT EXISTS chat_messages_image_idx
    ON chat_messages (session_id, seq)
    WHERE (metadata ->> 'image') IS NOT NULL;
