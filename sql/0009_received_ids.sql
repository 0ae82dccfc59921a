-- Exactly once, whatever the cap did: the ids of the entries the consumer stored, kept for a
-- window after they arrived.
--
-- The primary key on task_build_history.id turns a redelivered event away only while its first
-- copy is still there. Once the cap has deleted that copy, a second delivery (a consumer that
-- died between commit and ack, one frozen past its broker heartbeat, a lost connection) would
-- be stored again: trimmed again at once when it carries its created_at, but counted twice and
-- streamed twice; stamped with its late arrival time when it does not, and so made the task's
-- newest entry, pushing out a real one. The consumer's insert records each id here in the same
-- statement, and stores only the ids this table did not hold.
--
-- The window must cover any redelivery: the broker gives a message back within its consumer
-- timeout (30 minutes by default) of the delivery that was never acked. One day by default;
--   UPDATE task_build_history_settings SET redelivery_window = interval '3 days';
-- Ids older than the window are forgotten by the expiry loop of every consumer (and by
-- `task-history expire`); a redelivery after that is stored again if the cap removed its
-- first copy meanwhile.

ALTER TABLE task_build_history_settings
    ADD COLUMN redelivery_window interval NOT NULL DEFAULT interval '1 day'
        CHECK (redelivery_window > interval '0');

CREATE TABLE task_build_history_received (
    id uuid PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Rows arrive in time order: a block range index finds the old ones to forget, for next to
-- nothing per insert (a btree on received_at would cost a second index entry for each).
CREATE INDEX task_build_history_received_at
    ON task_build_history_received USING brin (received_at);


-- Forgets up to max_rows ids received before the window; returns how many. Callers repeat it,
-- one transaction each, until it returns fewer.
CREATE FUNCTION task_build_history_forget_received_v1(max_rows integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    forgotten integer;
BEGIN
    DELETE FROM task_build_history_received
    WHERE ctid = ANY (ARRAY(
        SELECT r.ctid FROM task_build_history_received AS r
        WHERE r.received_at < now() - (SELECT redelivery_window
                                       FROM task_build_history_settings)
        LIMIT max_rows
    ));
    GET DIAGNOSTICS forgotten = ROW_COUNT;
    RETURN forgotten;
END
$$;


DO $objects$
DECLARE
    here text := current_schema();
BEGIN
    -- Runs as its owner, like the other expiry functions (0003_operations.sql says why).
    EXECUTE format('ALTER FUNCTION %I.task_build_history_forget_received_v1(integer)'
                   ' SECURITY DEFINER SET search_path = %I, pg_temp', here, here);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.task_build_history_forget_received_v1(integer)'
                   ' FROM PUBLIC', here);

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_consumer') THEN
        -- The consumer's insert records ids (ON CONFLICT reads them) and forgets old ones.
        GRANT SELECT, INSERT ON task_build_history_received TO task_history_consumer;
        GRANT EXECUTE ON FUNCTION task_build_history_forget_received_v1(integer)
            TO task_history_consumer;
    END IF;
END
$objects$;


-- Dead letters, once each: a message delivered again after its dead letter was written (the
-- consumer died before its ack, its connection dropped) makes no second row. The key is the
-- SHA-256 of what identifies a delivery of one message: its message_id, the routing key it was
-- first published with, how many times it was replayed, and its body; the consumer computes
-- it. A replayed letter that fails again differs by its replay count, so it is kept anew.
-- Rows from before this migration, and rows other tools write, have none.
ALTER TABLE task_build_history_dead_letters ADD COLUMN key bytea;
CREATE UNIQUE INDEX task_build_history_dead_letters_key ON task_build_history_dead_letters (key);
