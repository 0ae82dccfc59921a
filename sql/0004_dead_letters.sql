-- Dead letters as rows: each message the consumer could not store, why, and the message as it
-- was received, where SQL and `task-history dlq` can count, filter, replay and delete them at
-- any number. A queue can't be browsed past its unacked limit (2,000 on a quorum queue); a
-- table can. The consumer writes these rows in the same transaction as its batch's entries,
-- and moves what the broker dead-letters itself (task_build_history.dead) in here too.
CREATE TABLE task_build_history_dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The AMQP message_id as received: none when the publisher set none.
    message_id text,
    -- The `x-error` code and the one-line `x-error-detail` of contract §2.
    error text NOT NULL,
    detail text NOT NULL DEFAULT '',
    -- The routing key the message was first published with (replays send it there again).
    routing_key text NOT NULL DEFAULT '',
    -- The body's task_id, when the body is a JSON object naming one (valid or not).
    task_id uuid,
    failed_at timestamptz NOT NULL DEFAULT now(),
    replay_count integer NOT NULL DEFAULT 0 CHECK (replay_count >= 0),
    -- The body byte for byte, and the AMQP properties and headers, as JSON.
    body bytea NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}',
    headers jsonb NOT NULL DEFAULT '{}'
);

-- The filters of `task-history dlq`: by code, by task, by age; each keeps id order for
-- replays that page through them.
CREATE INDEX task_build_history_dead_letters_error ON task_build_history_dead_letters (error, id);
CREATE INDEX task_build_history_dead_letters_task
    ON task_build_history_dead_letters (task_id, id) WHERE task_id IS NOT NULL;
CREATE INDEX task_build_history_dead_letters_failed_at
    ON task_build_history_dead_letters (failed_at);

-- How many dead letters `task-history dlq` has replayed and purged, ever: the consumers export
-- them as metrics, with the rows by code, whoever ran the commands and wherever.
CREATE TABLE task_build_history_dead_letter_totals (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    replayed bigint NOT NULL DEFAULT 0,
    purged bigint NOT NULL DEFAULT 0
);
INSERT INTO task_build_history_dead_letter_totals DEFAULT VALUES;

-- How long dead letters are kept: the expiry job deletes older ones.
ALTER TABLE task_build_history_settings
    ADD COLUMN dead_letter_retention interval NOT NULL DEFAULT interval '20 days'
        CHECK (dead_letter_retention > interval '0');

-- Deletes up to max_rows dead letters older than the retention, through the failed_at index;
-- returns how many. Callers repeat it, one transaction each, until it returns fewer.
CREATE FUNCTION task_build_history_expire_dead_letters_v1(max_rows integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    deleted integer;
BEGIN
    DELETE FROM task_build_history_dead_letters
    WHERE ctid = ANY (ARRAY(
        SELECT d.ctid FROM task_build_history_dead_letters AS d
        WHERE d.failed_at < now() - (SELECT dead_letter_retention
                                     FROM task_build_history_settings)
        ORDER BY d.failed_at
        LIMIT max_rows
    ));
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;


DO $objects$
DECLARE
    here text := current_schema();
BEGIN
    -- Runs as its owner, like the other expiry functions (0003_operations.sql says why).
    EXECUTE format('ALTER FUNCTION %I.task_build_history_expire_dead_letters_v1(integer)'
                   ' SECURITY DEFINER SET search_path = %I, pg_temp', here, here);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.task_build_history_expire_dead_letters_v1(integer)'
                   ' FROM PUBLIC', here);

    -- pg_cron's job from now on: expired entries, then expired dead letters, one transaction
    -- per batch, and the run recorded. The schema is written into the body, as in v1.
    EXECUTE format($create$
        CREATE PROCEDURE %1$I.task_build_history_expire_v2(batch_size integer DEFAULT 10000)
        LANGUAGE plpgsql AS $body$
        DECLARE
            deleted integer;
            total bigint := 0;
        BEGIN
            LOOP
                deleted := %1$I.task_build_history_expire_batch_v1(batch_size);
                total := total + deleted;
                COMMIT;
                EXIT WHEN deleted < batch_size;
            END LOOP;
            LOOP
                deleted := %1$I.task_build_history_expire_dead_letters_v1(batch_size);
                total := total + deleted;
                COMMIT;
                EXIT WHEN deleted < batch_size;
            END LOOP;
            UPDATE %1$I.task_build_history_expiry_job SET last_run_at = now(), last_deleted = total;
        END
        $body$
    $create$, here);
    EXECUTE format('REVOKE ALL ON PROCEDURE %I.task_build_history_expire_v2(integer) FROM PUBLIC',
                   here);

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_consumer') THEN
        -- The consumer writes dead letters; `task-history dlq` run as it replays and purges.
        GRANT SELECT, INSERT, DELETE ON task_build_history_dead_letters TO task_history_consumer;
        -- A replay or purge claims rows with SELECT ... FOR UPDATE SKIP LOCKED, which needs the
        -- UPDATE privilege on one column; nothing updates it.
        GRANT UPDATE (replay_count) ON task_build_history_dead_letters TO task_history_consumer;
        GRANT SELECT, UPDATE (replayed, purged) ON task_build_history_dead_letter_totals
            TO task_history_consumer;
        GRANT EXECUTE ON FUNCTION task_build_history_expire_dead_letters_v1(integer)
            TO task_history_consumer;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_reader') THEN
        GRANT SELECT ON task_build_history_dead_letters, task_build_history_dead_letter_totals
            TO task_history_reader;
    END IF;
END
$objects$;
