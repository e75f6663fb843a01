-- 001_init.sql: the core chat schema of ngx_collab (issue 3).
--
-- Holds users, chat sessions, their participants and their messages: the
-- source of truth behind the WebSocket ops create/sessions/join/send/history.
-- Presence and typing never reach PostgreSQL (they live in the shm zone).
--
-- Applied by sql/migrate inside one transaction together with its row in
-- collab_schema_migrations: no BEGIN/COMMIT here.
--
-- Why it looks like this:
--  * Every message gets a per-session seq 1, 2, 3 ... with no gap.  The
--    counter is chat_sessions.last_seq, bumped by an UPDATE of the session
--    row in the same statement/transaction as the INSERT of the message(s).
--    The row lock serialises the writers of one session across all nginx
--    workers and hosts, and makes commit order equal seq order, so a reader
--    never sees seq N+1 committed before seq N (resume by "since" is exact).
--    A sequence object could not do this: it leaves gaps on rollback and its
--    values commit out of order.  sql/README.md has the statements.
--  * (session_id, user_id, client_msg_id) is unique: a resent send finds its
--    original row instead of creating one.  NULLs are distinct, so messages
--    without a client_msg_id (ai, system) never collide.
--  * Invitations come later (issue 6) in their own migration; they will
--    reference chat_sessions(id) and users(id) and need nothing from here.


-- The site's users, as ngx_collab knows them: external_id is the site's own
-- user id (collab_user / JWT "sub"); id is ours, used by every foreign key.
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id   text NOT NULL,
    display_name  text,
    created_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT users_external_id_key UNIQUE (external_id),
    CONSTRAINT users_external_id_check
        CHECK (char_length(external_id) BETWEEN 1 AND 256),
    CONSTRAINT users_display_name_check
        CHECK (char_length(display_name) <= 256)
);


-- A chat room.  The slug is the public handle (URLs, the protocol's
-- "session"); it is generated here (22 URL-safe characters from a random
-- UUID) unless the caller gives one.  last_seq is the seq of the newest
-- message, the counter the append statements bump.
CREATE TABLE chat_sessions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug              text NOT NULL
                      DEFAULT rtrim(translate(encode(
                          uuid_send(gen_random_uuid()), 'base64'),
                          '+/', '-_'), '='),
    title             text NOT NULL,
    type              text NOT NULL DEFAULT 'text',
    owner_id          bigint NOT NULL
                      REFERENCES users (id) ON DELETE RESTRICT,
    max_participants  integer,
    is_public         boolean NOT NULL DEFAULT false,
    last_seq          bigint NOT NULL DEFAULT 0,
    last_activity     timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT chat_sessions_slug_key UNIQUE (slug),
    CONSTRAINT chat_sessions_slug_check
        CHECK (slug ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT chat_sessions_title_check
        CHECK (char_length(title) BETWEEN 1 AND 200
               AND btrim(title) <> ''),
    CONSTRAINT chat_sessions_type_check
        CHECK (type IN ('text', 'text-to-image', 'image-to-image')),
    CONSTRAINT chat_sessions_max_participants_check
        CHECK (max_participants > 0),
    CONSTRAINT chat_sessions_last_seq_check
        CHECK (last_seq >= 0)
);

-- "my sessions as owner" and the RESTRICT check when a user is deleted
CREATE INDEX chat_sessions_owner_idx ON chat_sessions (owner_id);

-- public sessions / all sessions by recent activity
CREATE INDEX chat_sessions_activity_idx
    ON chat_sessions (last_activity DESC);


-- Who belongs to a session: one row per (session, user), never an array.
-- A deleted session or user takes its participant rows with it.
CREATE TABLE chat_participants (
    session_id  bigint NOT NULL
                REFERENCES chat_sessions (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL
                REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL DEFAULT 'member',
    joined_at   timestamptz NOT NULL DEFAULT now(),

    PRIMARY KEY (session_id, user_id),
    CONSTRAINT chat_participants_role_check
        CHECK (role IN ('owner', 'member'))
);

-- the caller's sessions (the seed's by_participant)
CREATE INDEX chat_participants_user_idx
    ON chat_participants (user_id, session_id);


-- The messages.  (session_id, seq) is both the identity and the order; the
-- primary key index serves "since", "history before" and "last N".
-- user_id is NULL only for ai/system messages; a user message always has
-- its author.  Deleting a user who wrote messages is refused (RESTRICT):
-- erasing a user is a decision (anonymise display_name), not a cascade.
CREATE TABLE chat_messages (
    session_id     bigint NOT NULL
                   REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq            bigint NOT NULL,
    user_id        bigint
                   REFERENCES users (id) ON DELETE RESTRICT,
    kind           text NOT NULL DEFAULT 'user',
    body           text NOT NULL,
    client_msg_id  text,
    metadata       jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),

    PRIMARY KEY (session_id, seq),
    CONSTRAINT chat_messages_client_msg_id_key
        UNIQUE (session_id, user_id, client_msg_id),
    CONSTRAINT chat_messages_seq_check
        CHECK (seq > 0),
    CONSTRAINT chat_messages_kind_check
        CHECK (kind IN ('user', 'ai', 'system')),
    CONSTRAINT chat_messages_user_check
        CHECK (kind <> 'user' OR user_id IS NOT NULL),
    CONSTRAINT chat_messages_client_msg_id_check
        CHECK (char_length(client_msg_id) BETWEEN 1 AND 128)
);
