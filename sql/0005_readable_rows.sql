-- Every row the table accepts can be read back. Other programs write here too (psql, COPY, a
-- host application), and before this file the table took values no reader could show: metadata
-- that is a JSON array, string or number, metadata nested hundreds of levels deep, timestamps
-- at infinity or past the year 9999. Now the table refuses them, as the consumer always has:
--
--   metadata    NULL, or a JSON object nesting at most 64 levels of objects and arrays (the
--               object itself is the first level), the consumer's own limit;
--   created_at  from 0001-01-01 to before 9999-01-01 (UTC), leaving room for the retention;
--   expires_at  from 0001-01-01 to 9999-12-31 (UTC).
--
-- Rows written before are made to fit by 0006_readable_old_rows.sql.
--
-- Each entry's task also gets a count of every entry it was ever given (`received`), which
-- the cap never lowers: a test helper tells from it that an event was stored even when the
-- cap removed it in the same statement.


-- Whether a metadata value fits: an object without an object or array at the 65th level
-- (jsonpath level 64; level 0 is the object itself). NULL in, NULL out (STRICT).
CREATE FUNCTION task_build_history_metadata_fits_v1(metadata jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN jsonb_typeof(metadata) = 'object' AND NOT jsonb_path_exists(
    metadata, 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")'
);


-- NOT VALID: new rows are checked from here on, and adding the checks takes its lock only for a
-- moment; the rows already there are made to fit, then checked, by 0006_readable_old_rows.sql,
-- under locks that let reads and writes go on.
ALTER TABLE task_build_history
    ADD CONSTRAINT task_build_history_metadata_check
        CHECK (metadata IS NULL OR task_build_history_metadata_fits_v1(metadata)) NOT VALID,
    ADD CONSTRAINT task_build_history_created_at_check
        CHECK (created_at >= '0001-01-01 00:00:00+00' AND created_at < '9999-01-01 00:00:00+00')
        NOT VALID,
    ADD CONSTRAINT task_build_history_expires_at_check
        CHECK (expires_at >= '0001-01-01 00:00:00+00'
               AND expires_at <= '9999-12-31 23:59:59.999999+00')
        NOT VALID;


-- Entries given to each task from here on, the ones the cap removed included. Only its growth
-- matters (a wait compares two readings), so existing tasks start at 0, and no UPDATE of every
-- counter row holds up the writers.
ALTER TABLE task_build_history_counts ADD COLUMN received bigint NOT NULL DEFAULT 0;


-- task_build_history_trim_v1, and the counter of entries received.
CREATE FUNCTION task_build_history_trim_v2() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    cap integer;
    over_task uuid[];
    over_by integer[];
BEGIN
    SELECT max_entries_per_task INTO STRICT cap FROM task_build_history_settings;

    -- Locks each touched counter row in task order, as v1 does (0001_history.sql says why).
    WITH counted AS (
        INSERT INTO task_build_history_counts AS c (task_id, entries, received)
        SELECT task_id, count(*), count(*) FROM new_rows GROUP BY task_id ORDER BY task_id
        ON CONFLICT (task_id) DO UPDATE
            SET entries = c.entries + excluded.entries, received = c.received + excluded.received
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
    FOR EACH STATEMENT EXECUTE FUNCTION task_build_history_trim_v2();


DO $objects$
DECLARE
    here text := current_schema();
BEGIN
    -- Runs as its owner, like v1 (0003_operations.sql says why).
    EXECUTE format('ALTER FUNCTION %I.task_build_history_trim_v2()'
                   ' SECURITY DEFINER SET search_path = %I, pg_temp', here, here);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.task_build_history_trim_v2() FROM PUBLIC', here);

    -- The test helpers read how many entries a task received; reading a count harms nothing.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_consumer') THEN
        GRANT SELECT (task_id, received) ON task_build_history_counts TO task_history_consumer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_reader') THEN
        GRANT SELECT (task_id, received) ON task_build_history_counts TO task_history_reader;
    END IF;
END
$objects$;
