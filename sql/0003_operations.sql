-- Running it like production: least-privilege roles, and expiry as a pg_cron job.
--
-- Roles. Two NOLOGIN group roles; a deployment creates LOGIN roles that are members of them
-- (docker-compose.yml does, in its `postgres-roles` init script; see README "Operating it"):
--
--   task_history_consumer  what `task-history consume` needs and nothing more: read and write
--                          history, read the settings and the migrations, look up and create
--                          tasks by id, run the expiry and delete functions. No DDL, no
--                          UPDATE, no TRUNCATE, no access to the per-task counters.
--   task_history_reader    what `show`, `export` and `tail` need: read history and settings.
--
-- Roles belong to the whole cluster while grants belong to one database, and this file runs
-- once per database (tests clone many): the roles are created only if missing, the grants are
-- made every time. A migrating role without CREATEROLE gets a warning and no roles, and the
-- rest still applies.
--
-- The triggers and functions that keep the counters now run with their owner's rights
-- (SECURITY DEFINER): writers need no privilege on task_build_history_counts, so no writer
-- can corrupt the cap. Such a function must not resolve names through a schema its caller
-- controls: each gets a search_path of exactly this schema, then pg_temp last.

DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['task_history_consumer', 'task_history_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION
                -- Another database of the cluster migrating at the same moment created it.
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE WARNING 'role % not created (the migrating role lacks CREATEROLE);'
                        ' create it and run the grants of 0003_operations.sql by hand', role_name;
            END;
        END IF;
    END LOOP;
END
$roles$;


-- Expiry as a pg_cron job. `task-history schedule` registers the job and records it here;
-- while a row exists, the consumers' own expiry loops stand down. The job runs
-- task_build_history_expire_v1 below, which records its last run here too.
CREATE TABLE task_build_history_expiry_job (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    job_name text NOT NULL,
    cron_database text NOT NULL,
    schedule text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_run_at timestamptz,
    last_deleted bigint
);


DO $objects$
DECLARE
    here text := current_schema();
    definer text[] := ARRAY[
        'task_build_history_set_expires_at_v1()',
        'task_build_history_trim_tasks_v1(uuid[], integer[], integer)',
        'task_build_history_trim_v1()',
        'task_build_history_uncount_v1()',
        'task_build_history_reset_counts_v1()',
        'task_build_history_expire_batch_v1(integer)',
        'task_build_history_delete_task_v1(uuid)'
    ];
    fn text;
BEGIN
    FOREACH fn IN ARRAY definer LOOP
        EXECUTE format('ALTER FUNCTION %I.%s SECURITY DEFINER SET search_path = %I, pg_temp',
                       here, fn, here);
        -- Functions are executable by PUBLIC by default; these now run as their owner.
        EXECUTE format('REVOKE ALL ON FUNCTION %I.%s FROM PUBLIC', here, fn);
    END LOOP;

    -- Deletes every expired entry, one transaction per batch, and records the run. A procedure
    -- (it commits between batches) can't carry a SET search_path clause, so the schema is
    -- written into its body here. pg_cron runs it as `CALL schema.task_build_history_expire_v1()`.
    EXECUTE format($create$
        CREATE PROCEDURE %1$I.task_build_history_expire_v1(batch_size integer DEFAULT 10000)
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
            UPDATE %1$I.task_build_history_expiry_job SET last_run_at = now(), last_deleted = total;
        END
        $body$
    $create$, here);
    EXECUTE format('REVOKE ALL ON PROCEDURE %I.task_build_history_expire_v1(integer) FROM PUBLIC',
                   here);

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_consumer') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO task_history_consumer',
                       current_database());
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO task_history_consumer', here);
        GRANT SELECT, INSERT, DELETE ON task_build_history TO task_history_consumer;
        -- The unknown-task check reads ids; TASK_HISTORY_CREATE_MISSING_TASKS inserts them.
        -- Only the id column: `tasks` may be the host application's table.
        GRANT SELECT (id), INSERT (id) ON tasks TO task_history_consumer;
        GRANT SELECT ON task_build_history_settings, task_history_migrations,
            task_build_history_expiry_job TO task_history_consumer;
        GRANT EXECUTE ON FUNCTION task_build_history_expire_batch_v1(integer),
            task_build_history_delete_task_v1(uuid) TO task_history_consumer;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_reader') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO task_history_reader', current_database());
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO task_history_reader', here);
        GRANT SELECT ON task_build_history, task_build_history_settings, task_history_migrations
            TO task_history_reader;
    END IF;
END
$objects$;
