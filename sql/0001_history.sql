-- The history store: tasks, their build history, the per-task cap and expiry.
--
-- Functions carry a version suffix (_v1): a later migration adds a _v2 and repoints the
-- trigger or caller instead of editing this file, which `task-history migrate` refuses to
-- re-run once applied (its checksum is recorded).

-- The parent the history belongs to. A host application may already own a `tasks` table;
-- then it is used as it is, provided its key is a uuid `id`.
CREATE TABLE IF NOT EXISTS tasks (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'tasks'::regclass AND attname = 'id'
          AND atttypid = 'uuid'::regtype AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'the existing table "tasks" has no uuid column "id"'
            USING HINT = 'task_build_history.task_id references tasks(id), which must be a uuid key';
    END IF;
END
$$;

-- The two limits, one row, changeable at run time:
--   UPDATE task_build_history_settings SET max_entries_per_task = 200;
CREATE TABLE task_build_history_settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    max_entries_per_task integer NOT NULL DEFAULT 100 CHECK (max_entries_per_task > 0),
    retention interval NOT NULL DEFAULT interval '20 days' CHECK (retention > interval '0')
);
INSERT INTO task_build_history_settings DEFAULT VALUES;

CREATE TABLE task_build_history (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    workspace_id uuid,
    session_id uuid,
    context_type text NOT NULL CONSTRAINT task_build_history_context_type_check CHECK (
        context_type IN (
            'chat_message', 'execution_step', 'agent_turn',
            'setup_complete', 'error', 'status_change'
        )
    ),
    content text NOT NULL,
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set from created_at + retention by a trigger when the writer leaves it out: a generated
    -- column can't do it, timestamptz + interval is not immutable.
    expires_at timestamptz NOT NULL,
    -- Arrival order: breaks created_at ties, so equal timestamps are trimmed oldest-arrived first.
    seq bigint GENERATED ALWAYS AS IDENTITY
);

-- Reads by task and the trim walk this index in (created_at, seq) order.
CREATE INDEX task_build_history_task_idx
    ON task_build_history (task_id, created_at, seq);
CREATE INDEX task_build_history_workspace_idx
    ON task_build_history (workspace_id, created_at, seq) WHERE workspace_id IS NOT NULL;
CREATE INDEX task_build_history_session_idx
    ON task_build_history (session_id, created_at, seq) WHERE session_id IS NOT NULL;
CREATE INDEX task_build_history_expires_idx
    ON task_build_history (expires_at);

-- Entries per task, kept by the triggers below. The trim then deletes exactly the rows past
-- the cap (O(rows deleted)) instead of walking each task's newest hundred on every batch, and
-- the counter row doubles as the per-task lock every writer takes before touching history rows.
CREATE TABLE task_build_history_counts (
    task_id uuid PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    entries integer NOT NULL CHECK (entries >= 0)
);


CREATE FUNCTION task_build_history_set_expires_at_v1() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    NEW.expires_at := NEW.created_at + (SELECT retention FROM task_build_history_settings);
    RETURN NEW;
END
$$;

-- WHEN keeps the function call off writers that compute expires_at themselves (the consumer).
CREATE TRIGGER task_build_history_expires_at
    BEFORE INSERT ON task_build_history
    FOR EACH ROW WHEN (NEW.expires_at IS NULL)
    EXECUTE FUNCTION task_build_history_set_expires_at_v1();


-- Deletes each given task's oldest entries past the cap. The caller holds the tasks' counter
-- rows (locked in task order), so no other writer changes these tasks meanwhile; each DELETE
-- is a new statement and sees every row committed before the locks were granted.
CREATE FUNCTION task_build_history_trim_tasks_v1(over_task uuid[], over_by integer[], cap integer)
RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    expected bigint;
    deleted bigint;
    idle integer := 0;
BEGIN
    WHILE over_task IS NOT NULL LOOP
        SELECT sum(n) INTO expected FROM unnest(over_by) AS n;
        DELETE FROM task_build_history
        WHERE ctid = ANY (ARRAY(
            SELECT oldest.ctid
            FROM unnest(over_task, over_by) AS o (task_id, n)
            CROSS JOIN LATERAL (
                SELECT h.ctid FROM task_build_history AS h
                WHERE h.task_id = o.task_id
                ORDER BY h.created_at, h.seq
                LIMIT o.n
            ) AS oldest
        ));
        GET DIAGNOSTICS deleted = ROW_COUNT;
        EXIT WHEN deleted >= expected;
        -- Two passes in a row that find nothing to delete: the counters claim rows that aren't
        -- there (someone bypassed the triggers); stop rather than spin.
        idle := CASE WHEN deleted = 0 THEN idle + 1 ELSE 0 END;
        EXIT WHEN idle >= 2;
        -- A row picked was updated (new ctid) or deleted by someone else meanwhile: ask the
        -- counters, kept exact by the uncount trigger, what is still over the cap.
        SELECT array_agg(task_id), array_agg(entries - cap) INTO over_task, over_by
        FROM task_build_history_counts
        WHERE task_id = ANY (over_task) AND entries > cap;
    END LOOP;
END
$$;


-- Once per INSERT or COPY statement: count the new rows, then delete each task's oldest rows
-- past the cap.
CREATE FUNCTION task_build_history_trim_v1() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    cap integer;
    over_task uuid[];
    over_by integer[];
BEGIN
    SELECT max_entries_per_task INTO STRICT cap FROM task_build_history_settings;

    -- The upsert locks each touched counter row, in task order, so concurrent writers of one
    -- task queue up here, and batches that mix tasks can't deadlock. In READ COMMITTED the
    -- upsert adds to the newest committed count, even one committed while we waited.
    WITH counted AS (
        INSERT INTO task_build_history_counts AS c (task_id, entries)
        SELECT task_id, count(*) FROM new_rows GROUP BY task_id ORDER BY task_id
        ON CONFLICT (task_id) DO UPDATE SET entries = c.entries + excluded.entries
        RETURNING c.task_id, c.entries
    )
    SELECT array_agg(task_id), array_agg(entries - cap) INTO over_task, over_by
    FROM counted WHERE entries > cap;

    -- A new statement, with a snapshot taken after the locks: it sees the rows of the writers
    -- we waited for. The oldest go first, ties by arrival. Deleting fires the uncount trigger.
    PERFORM task_build_history_trim_tasks_v1(over_task, over_by, cap);
    RETURN NULL;
END
$$;

CREATE TRIGGER task_build_history_trim
    AFTER INSERT ON task_build_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_build_history_trim_v1();


CREATE FUNCTION task_build_history_uncount_v1() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE task_build_history_counts AS c SET entries = c.entries - d.n
    FROM (SELECT task_id, count(*) AS n FROM old_rows GROUP BY task_id) AS d
    WHERE c.task_id = d.task_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_build_history_uncount
    AFTER DELETE ON task_build_history
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_build_history_uncount_v1();


CREATE FUNCTION task_build_history_reset_counts_v1() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM task_build_history_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_build_history_truncate
    AFTER TRUNCATE ON task_build_history
    FOR EACH STATEMENT EXECUTE FUNCTION task_build_history_reset_counts_v1();


-- An entry that moved to another task would leave both counters wrong.
CREATE FUNCTION task_build_history_pin_task_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a task_build_history entry cannot move to another task (entry %)', OLD.id
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER task_build_history_pin_task
    BEFORE UPDATE OF task_id ON task_build_history
    FOR EACH ROW WHEN (OLD.task_id IS DISTINCT FROM NEW.task_id)
    EXECUTE FUNCTION task_build_history_pin_task_v1();


-- Deletes up to max_rows expired entries through the expires_at index; returns how many.
-- Callers repeat it, one transaction each, until it returns fewer than max_rows.
CREATE FUNCTION task_build_history_expire_batch_v1(max_rows integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    candidates uuid[];
    locked uuid[];
    deleted integer;
BEGIN
    SELECT array_agg(DISTINCT task_id) INTO candidates FROM (
        SELECT h.task_id FROM task_build_history AS h
        WHERE h.expires_at <= now()
        ORDER BY h.expires_at
        LIMIT max_rows
    ) AS s;
    IF candidates IS NULL THEN
        RETURN 0;
    END IF;

    -- Locks in the order every writer takes them: the task rows (as the foreign key check
    -- does), then the counters in task order (as the trim does), then history rows. Any other
    -- order deadlocks against an insert, a trim, or a DELETE FROM tasks cascading here.
    PERFORM 1 FROM tasks WHERE id = ANY (candidates) ORDER BY id FOR KEY SHARE;
    SELECT array_agg(task_id) INTO locked FROM (
        SELECT c.task_id FROM task_build_history_counts AS c
        WHERE c.task_id = ANY (candidates)
        ORDER BY c.task_id
        FOR UPDATE
    ) AS s;
    IF locked IS NULL THEN
        RETURN 0;
    END IF;

    DELETE FROM task_build_history
    WHERE ctid = ANY (ARRAY(
        SELECT h.ctid FROM task_build_history AS h
        WHERE h.expires_at <= now() AND h.task_id = ANY (locked)
        ORDER BY h.expires_at
        LIMIT max_rows
    ))
    AND expires_at <= now();
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;


-- Deletes a task's whole history; returns how many entries. Takes the locks in the writers'
-- order (task row, counter, history rows), so it can run beside them and beside task deletes.
CREATE FUNCTION task_build_history_delete_task_v1(target uuid) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    deleted integer;
BEGIN
    PERFORM 1 FROM tasks WHERE id = target FOR KEY SHARE;
    PERFORM 1 FROM task_build_history_counts WHERE task_id = target FOR UPDATE;
    DELETE FROM task_build_history WHERE task_id = target;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;


-- A new cap or retention applies at once, not from the next insert on: after the UPDATE of
-- the settings commits, no task holds more than the cap, and every expires_at follows the
-- new retention. Both touch every task (or row) concerned: an operator's occasional change.
CREATE FUNCTION task_build_history_apply_settings_v1() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    over_task uuid[];
    over_by integer[];
BEGIN
    IF NEW.max_entries_per_task < OLD.max_entries_per_task THEN
        SELECT array_agg(task_id), array_agg(entries - NEW.max_entries_per_task)
        INTO over_task, over_by
        FROM (
            SELECT task_id, entries FROM task_build_history_counts
            WHERE entries > NEW.max_entries_per_task
            ORDER BY task_id
            FOR UPDATE
        ) AS s;
        PERFORM task_build_history_trim_tasks_v1(over_task, over_by, NEW.max_entries_per_task);
    END IF;
    IF NEW.retention <> OLD.retention THEN
        UPDATE task_build_history SET expires_at = created_at + NEW.retention;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER task_build_history_settings_apply
    AFTER UPDATE ON task_build_history_settings
    FOR EACH ROW EXECUTE FUNCTION task_build_history_apply_settings_v1();
