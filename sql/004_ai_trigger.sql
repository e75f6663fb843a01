-- 004_ai_trigger.sql: a session's own collab_ai_trigger (issue 9).
--
-- The owner may say, per session, which messages call on the assistant:
-- 'mention' (a body starting with "@ai"), 'always' (every user message)
-- or 'off'.  NULL, the default and what every existing session gets,
-- means "as the server's collab_ai_trigger says", so that changing the
-- directive still changes every session that never chose.
--
-- The column is nullable without a default: adding it rewrites nothing.
-- The check is on the new column only, which holds nothing but NULLs
-- yet.  The module validates the value before it gets here; the check
-- keeps anything else (psql, another tool) from storing a value the
-- module would not understand.

ALTER TABLE chat_sessions
    ADD COLUMN ai_trigger text
        CONSTRAINT chat_sessions_ai_trigger_check
        CHECK (ai_trigger IN ('mention', 'always', 'off'));
