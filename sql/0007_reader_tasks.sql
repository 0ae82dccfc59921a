-- The reading role may tell a task that doesn't exist from one with no history yet: `show` of
-- an empty task and `tail` look its id up in `tasks` to say so, and how to create it. Before
-- this file task_history_reader had no right on `tasks`, and both commands failed for it.
--
-- Only the id column, as for task_history_consumer (0003_operations.sql): `tasks` may be the
-- host application's table, and its other columns are none of this role's business.

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_reader') THEN
        GRANT SELECT (id) ON tasks TO task_history_reader;
    END IF;
END
$grants$;
