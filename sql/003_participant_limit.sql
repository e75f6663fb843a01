-- 003_participant_limit.sql: max_participants holds under concurrency.
--
-- join (public sessions) and accept (invitations) check the room left in
-- the same statement as their INSERT, but concurrent statements each count
-- in their own snapshot and could all insert (t/061-access-race.t).  This
-- trigger makes the check exact: it locks the session row, so that
-- writers of one session's participants take turns, and then counts with
-- a fresh snapshot (a PL/pgSQL statement takes its own under READ
-- COMMITTED), which sees what the writer before it committed.  A full
-- session makes the INSERT skip the row (RETURN NULL): the statements
-- above already treat "no row inserted" as full.

CREATE FUNCTION collab_participant_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    lim  integer;
    n    bigint;
BEGIN
    SELECT max_participants INTO lim FROM chat_sessions
    WHERE id = NEW.session_id FOR UPDATE;

    IF lim IS NULL THEN
        RETURN NEW;
    END IF;

    SELECT count(*) INTO n FROM chat_participants
    WHERE session_id = NEW.session_id;

    IF n >= lim THEN
        RETURN NULL;
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER chat_participants_limit
    BEFORE INSERT ON chat_participants
    FOR EACH ROW EXECUTE FUNCTION collab_participant_limit();
