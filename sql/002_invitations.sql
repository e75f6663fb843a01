-- 002_invitations.sql: invitations to chat sessions (issue 6).
--
-- Only a session's owner invites; the invitee becomes a participant when
-- they accept, not before (the product plan added invitees to the
-- participants at once: an invitation is an offer, not a membership).
-- An invitation is pending until accepted, declined, revoked by the owner,
-- or past expires_at; an expired invitation cannot be accepted.  At most one
-- pending invitation per (session, user): the partial unique index; an
-- expired pending one is renewed in place by a new invite.


CREATE TABLE chat_invitations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id       bigint NOT NULL
                     REFERENCES chat_sessions (id) ON DELETE CASCADE,
    invited_user_id  bigint NOT NULL
                     REFERENCES users (id) ON DELETE CASCADE,
    invited_by       bigint NOT NULL
                     REFERENCES users (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending',
    expires_at       timestamptz NOT NULL DEFAULT now() + interval '7 days',
    created_at       timestamptz NOT NULL DEFAULT now(),
    responded_at     timestamptz,

    CONSTRAINT chat_invitations_status_check
        CHECK (status IN ('pending', 'accepted', 'declined', 'revoked',
                          'expired'))
);

-- at most one pending invitation per (session, user)
CREATE UNIQUE INDEX chat_invitations_pending_key
    ON chat_invitations (session_id, invited_user_id)
    WHERE status = 'pending';

-- "my invitations" (the invitee's list)
CREATE INDEX chat_invitations_invited_idx
    ON chat_invitations (invited_user_id, status);

-- a session's invitations (the owner's list), and the cascade
CREATE INDEX chat_invitations_session_idx
    ON chat_invitations (session_id);
