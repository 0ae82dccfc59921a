-- Live history: one notification per task per INSERT or COPY statement, for `task-history tail`
-- and anything else that LISTENs on the channel task_build_history.
--
-- The payload is JSON: {"task_id": "<uuid>", "max_seq": <the highest arrival sequence the
-- statement gave that task>}. A notification is delivered when the writing transaction
-- commits, and not at all if it rolls back. A batch of 500 rows over 3 tasks sends 3, not 500.

CREATE FUNCTION task_build_history_notify_v1() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify(
        'task_build_history',
        json_build_object('task_id', t.task_id, 'max_seq', t.max_seq)::text
    )
    FROM (
        SELECT task_id, max(seq) AS max_seq FROM new_rows GROUP BY task_id ORDER BY task_id
    ) AS t;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_build_history_notify
    AFTER INSERT ON task_build_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_build_history_notify_v1();
