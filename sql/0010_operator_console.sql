-- What the console in `task-history serve` needs: recent tasks, and operators who may replay
-- and purge dead letters over HTTP, every time on the record.
--
-- 1. Each task's last activity and error count, kept by the triggers that already keep its
--    entry count, in the same statement: the list of recent tasks reads one row per task,
--    newest first, through an index, at any number of tasks and entries.
-- 2. task_build_history_dead_letter_actions: every replay and purge, by `task-history dlq`
--    or over HTTP: when, who, the filter, how many it chose and how many it moved or deleted.
--    The count grows in the same transaction as each batch's deletes, so it is exact even
--    for a run killed midway.
-- 3. task_history_operator: a third group role, for the login `task-history serve` uses for
--    replays and purges when it is given an operator token. It reads what the reader reads,
--    and may delete dead letters and write the record; nothing else.


-- 1. Last activity (the newest created_at of the entries a task was given) and errors (its
-- entries of context type error now stored). Tasks already there are counted below, once.
ALTER TABLE task_build_history_counts
    ADD COLUMN last_activity timestamptz,
    ADD COLUMN errors integer NOT NULL DEFAULT 0;

-- One pass over the history. The table is locked by the ALTER above until the migration
-- commits, so no writer changes a count meanwhile (writers wait for it: docs/operating.md
-- gives the time it took at 10 million entries).
UPDATE task_build_history_counts AS c
SET last_activity = s.last_activity, errors = s.errors
FROM (
    SELECT task_id, max(created_at) AS last_activity,
           count(*) FILTER (WHERE context_type = 'error') AS errors
    FROM task_build_history
    GROUP BY task_id
) AS s
WHERE c.task_id = s.task_id;

-- Recent tasks, newest activity first, a page after another by (last_activity, task_id).
CREATE INDEX task_build_history_counts_recent
    ON task_build_history_counts (last_activity, task_id) WHERE last_activity IS NOT NULL;


-- task_build_history_trim_v2, and the last activity and errors of each task.
CREATE FUNCTION task_build_history_trim_v3() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    cap integer;
    over_task uuid[];
    over_by integer[];
BEGIN
    SELECT max_entries_per_task INTO STRICT cap FROM task_build_history_settings;

    -- Locks each touched counter row in task order, as v1 does (0001_history.sql says why).
    WITH counted AS (
        INSERT INTO task_build_history_counts AS c (task_id, entries, received, errors,
                                                    last_activity)
        SELECT task_id, count(*), count(*), count(*) FILTER (WHERE context_type = 'error'),
               max(created_at)
        FROM new_rows GROUP BY task_id ORDER BY task_id
        ON CONFLICT (task_id) DO UPDATE
            SET entries = c.entries + excluded.entries, received = c.received + excluded.received,
                errors = c.errors + excluded.errors,
                last_activity = greatest(c.last_activity, excluded.last_activity)
        RETURNING c.task_id, c.entries
    )
    SELECT array_agg(task_id), array_agg(entries - cap) INTO over_task, over_by
    FROM counted WHERE entries > cap;

    PERFORM task_build_history_trim_tasks_v1(over_task, over_by, cap);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER task_build_history_trim
    AFTER INSERT ON task_build_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_build_history_trim_v3();


-- task_build_history_uncount_v1, and the errors. A count for display never stops a delete:
-- it does not go below zero, whatever wrote the rows.
CREATE FUNCTION task_build_history_uncount_v2() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE task_build_history_counts AS c
    SET entries = c.entries - d.n, errors = greatest(c.errors - d.errors, 0)
    FROM (
        SELECT task_id, count(*) AS n, count(*) FILTER (WHERE context_type = 'error') AS errors
        FROM old_rows GROUP BY task_id
    ) AS d
    WHERE c.task_id = d.task_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER task_build_history_uncount
    AFTER DELETE ON task_build_history
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_build_history_uncount_v2();


-- An entry whose context type an UPDATE changes to or from error (psql, a host application)
-- moves the task's error count with it. The WHEN keeps it off every other update.
CREATE FUNCTION task_build_history_recount_errors_v1() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE task_build_history_counts
    SET errors = greatest(errors + CASE WHEN NEW.context_type = 'error' THEN 1 ELSE -1 END, 0)
    WHERE task_id = NEW.task_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_build_history_recount_errors
    AFTER UPDATE OF context_type ON task_build_history
    FOR EACH ROW
    WHEN ((OLD.context_type = 'error') IS DISTINCT FROM (NEW.context_type = 'error'))
    EXECUTE FUNCTION task_build_history_recount_errors_v1();


-- 2. The record of replays and purges. Rows are added and their progress updated; the roles
-- below can't change who did what, and can't delete a row.
CREATE TABLE task_build_history_dead_letter_actions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action text NOT NULL CHECK (action IN ('replay', 'purge')),
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- Who: the operator token's name (over HTTP), or the operating-system user (a command).
    actor text NOT NULL,
    via text NOT NULL CHECK (via IN ('http', 'command')),
    -- The database login that did it, whatever the client says.
    database_role text NOT NULL DEFAULT session_user,
    -- The filter or ids, as JSON, and the options given.
    filter jsonb NOT NULL DEFAULT '{}',
    -- Letters the filter chose when it began; those moved or deleted (grows batch by batch, in
    -- the batch's own transaction); those left (at the replay limit, unroutable, or not whole).
    selected bigint NOT NULL DEFAULT 0,
    affected bigint NOT NULL DEFAULT 0,
    skipped bigint NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'finished', 'failed')),
    -- Why it failed, in one line.
    detail text,
    -- A key the client chose, to follow the action while it runs and never run it twice.
    request_id uuid UNIQUE
);


-- 3. Roles and grants.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_operator') THEN
        BEGIN
            CREATE ROLE task_history_operator NOLOGIN;
        EXCEPTION
            -- Another database of the cluster migrating at the same moment created it.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'role task_history_operator not created (the migrating role lacks'
                    ' CREATEROLE); create it and run the grants of 0010_operator_console.sql'
                    ' by hand';
        END;
    END IF;
END
$roles$;


DO $objects$
DECLARE
    here text := current_schema();
    definer text[] := ARRAY[
        'task_build_history_trim_v3()',
        'task_build_history_uncount_v2()',
        'task_build_history_recount_errors_v1()'
    ];
    fn text;
BEGIN
    -- Run as their owner, like the other counting functions (0003_operations.sql says why).
    FOREACH fn IN ARRAY definer LOOP
        EXECUTE format('ALTER FUNCTION %I.%s SECURITY DEFINER SET search_path = %I, pg_temp',
                       here, fn, here);
        EXECUTE format('REVOKE ALL ON FUNCTION %I.%s FROM PUBLIC', here, fn);
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_reader') THEN
        -- The list of recent tasks.
        GRANT SELECT (task_id, entries, errors, last_activity) ON task_build_history_counts
            TO task_history_reader;
        GRANT SELECT ON task_build_history_dead_letter_actions TO task_history_reader;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_consumer') THEN
        -- `task-history dlq replay` and `purge`, run as this role, record what they do.
        GRANT SELECT, INSERT ON task_build_history_dead_letter_actions TO task_history_consumer;
        GRANT UPDATE (finished_at, selected, affected, skipped, state, detail)
            ON task_build_history_dead_letter_actions TO task_history_consumer;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_operator') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO task_history_operator',
                       current_database());
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO task_history_operator', here);
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_reader') THEN
            BEGIN
                GRANT task_history_reader TO task_history_operator;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING 'task_history_operator not made a member of task_history_reader'
                    ' (the migrating role may not grant it); grant it by hand';
            END;
        END IF;
        GRANT SELECT, DELETE ON task_build_history_dead_letters TO task_history_operator;
        -- A replay or purge claims rows with SELECT ... FOR UPDATE SKIP LOCKED, which needs
        -- the UPDATE privilege on one column; nothing updates it.
        GRANT UPDATE (replay_count) ON task_build_history_dead_letters TO task_history_operator;
        GRANT SELECT, UPDATE (replayed, purged) ON task_build_history_dead_letter_totals
            TO task_history_operator;
        GRANT SELECT, INSERT ON task_build_history_dead_letter_actions TO task_history_operator;
        GRANT UPDATE (finished_at, selected, affected, skipped, state, detail)
            ON task_build_history_dead_letter_actions TO task_history_operator;
        -- A replayed copy carries its replay count signed, as `dlq replay` signs it: without
        -- the key the consumer would not believe the count, and a letter could be replayed
        -- round and round past --max-replays.
        GRANT SELECT ON task_build_history_secrets TO task_history_operator;
    END IF;
END
$objects$;
