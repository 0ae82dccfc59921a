"""Every SQL text the store sends, named, and the read builder that assembles paged reads."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.deadletters import Selection
from consumer.pages import HistoryQuery

# Advisory lock keys (pg_advisory_lock's bigint form), one per job that must run alone.
MIGRATE_LOCK = 0x7461736B_0001
EXPIRE_LOCK = 0x7461736B_0002
LOCK = "SELECT pg_advisory_lock($1)"
TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"

PING = "SELECT 1"

# Schema

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS task_history_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED = "SELECT name, checksum FROM task_history_migrations"
HAS_MIGRATIONS_TABLE = "SELECT to_regclass('task_history_migrations') IS NOT NULL"
RECORD_MIGRATION = "INSERT INTO task_history_migrations (name, checksum) VALUES ($1, $2)"
LIMITS = "SELECT max_entries_per_task, retention FROM task_build_history_settings"

# pg_cron. Its library, when preloaded, defines cron.database_name: the one database of the
# server where its jobs table lives. Jobs there may run in any database of the server.

CRON_PLACE = (
    "SELECT current_database() AS here, current_schema() AS schema,"
    " current_setting('cron.database_name', true) AS cron_database"
)
HAS_PG_CRON = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron')"
CREATE_PG_CRON = "CREATE EXTENSION IF NOT EXISTS pg_cron"
CRON_JOB_IDS = "SELECT jobid FROM cron.job WHERE jobname = $1"
CRON_UNSCHEDULE = "SELECT cron.unschedule($1::bigint)"
# cron.schedule is open to any role with USAGE on schema cron, but only runs in its own
# database; cron.schedule_in_database reaches the others and is a superuser's by default.
CRON_SCHEDULE = "SELECT cron.schedule($1, $2, $3)"
CRON_SCHEDULE_IN_DATABASE = "SELECT cron.schedule_in_database($1, $2, $3, $4)"
EXPIRY_JOB = "SELECT job_name FROM task_build_history_expiry_job"
EXPIRY_JOB_SILENT = (
    "SELECT greatest(last_run_at, registered_at) < now() - $1::interval"
    " FROM task_build_history_expiry_job"
)
RECORD_EXPIRY_JOB = """
INSERT INTO task_build_history_expiry_job (job_name, cron_database, schedule)
VALUES ($1, $2, $3)
ON CONFLICT (singleton) DO UPDATE
SET job_name = excluded.job_name, cron_database = excluded.cron_database,
    schedule = excluded.schedule, registered_at = now()
"""
FORGET_EXPIRY_JOB = "DELETE FROM task_build_history_expiry_job RETURNING job_name, cron_database"

# Writes

CREATE_TASKS = "INSERT INTO tasks (id) SELECT unnest($1::uuid[]) ON CONFLICT (id) DO NOTHING"
MISSING_TASKS = (
    "SELECT t.id FROM unnest($1::uuid[]) AS t (id)"
    " WHERE NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = t.id)"
)
# One statement per batch. Rows keep their array order (the arrival sequence follows it), the
# retention is read once per statement, and an id stored before is skipped, not stored twice:
# the ledger of received ids (sql/0009_received_ids.sql) takes each id first, and only the ids
# it did not hold yet go on to the history, even when the cap has already deleted the first
# copy. The primary key still turns away an id older than the ledger's window, while its row
# is there. Both inserts are one statement: one commits or neither does.
INSERT_ENTRIES = """
WITH r AS (
    SELECT *
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                $7::text[], $8::timestamptz[]) WITH ORDINALITY
             AS r (id, task_id, workspace_id, session_id, context_type, content, metadata,
                   created_at, n)
), first_seen AS (
    INSERT INTO task_build_history_received (id)
    SELECT id FROM r ORDER BY n
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
INSERT INTO task_build_history (id, task_id, workspace_id, session_id, context_type, content,
                                metadata, created_at, expires_at)
SELECT r.id, r.task_id, r.workspace_id, r.session_id, r.context_type, r.content,
       r.metadata::jsonb, r.created_at, r.created_at + s.retention
FROM r
JOIN first_seen USING (id)
CROSS JOIN task_build_history_settings AS s
ORDER BY r.n
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
DELETE_TASK_HISTORY = "SELECT task_build_history_delete_task_v1($1)"

# Dead letters (sql/0004_dead_letters.sql, 0008, 0009): one statement for a batch's, in arrival
# order. A letter whose key is already there (the same message delivered again) is skipped.
INSERT_DEAD_LETTERS = """
INSERT INTO task_build_history_dead_letters (message_id, error, detail, routing_key, task_id,
                                             failed_at, replay_count, body, properties, headers,
                                             original_body_bytes, original_body_sha256, key)
SELECT r.message_id, r.error, r.detail, r.routing_key, r.task_id, r.failed_at, r.replay_count,
       r.body, r.properties::jsonb, r.headers::jsonb, r.original_body_bytes,
       r.original_body_sha256, r.key
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::timestamptz[],
            $7::integer[], $8::bytea[], $9::text[], $10::text[], $11::bigint[],
            $12::bytea[], $13::bytea[]) WITH ORDINALITY
         AS r (message_id, error, detail, routing_key, task_id, failed_at, replay_count, body,
               properties, headers, original_body_bytes, original_body_sha256, key, n)
ORDER BY r.n
ON CONFLICT (key) DO NOTHING
"""
# The key the consumer signs its own headers with (sql/0008, consumer/broker/signing.py).
HEADER_KEY = "SELECT header_key FROM task_build_history_secrets"

# Expiry

EXPIRE_BATCH = "SELECT task_build_history_expire_batch_v1($1)"
EXPIRE_DEAD_LETTERS_BATCH = "SELECT task_build_history_expire_dead_letters_v1($1)"
FORGET_RECEIVED_BATCH = "SELECT task_build_history_forget_received_v1($1)"

# Reads. Every one hides expired rows, whether or not the expiry job has run yet, and every
# entry read starts from READ_SELECT: the entry's nine columns and its arrival sequence.

READ_SELECT = (
    "SELECT id, task_id, workspace_id, session_id, context_type, content, metadata,"
    " created_at, expires_at, seq FROM task_build_history WHERE expires_at > now()"
)
FIND_BY_IDS = READ_SELECT + " AND id = ANY ($1::uuid[]) ORDER BY created_at, seq"
# What `follow` reads on each notification: the task's entries in arrival order. A task holds
# at most the cap (100 by default), so reading them all is cheap, and it is exact where
# `seq > last seen` is not: two writers can commit in the other order than they drew seq.
FOLLOW_TASK = READ_SELECT + " AND task_id = $1 ORDER BY seq"
# Standbys the database streams to now, and whether any must confirm a commit before it is
# acknowledged. Any role sees the rows of pg_stat_replication (only their details are
# restricted) and the setting.
REPLICATION = (
    "SELECT count(*) AS standbys,"
    " current_setting('synchronous_standby_names') <> '' AS synchronous"
    " FROM pg_stat_replication"
)
# Entries each task was given since sql/0005_readable_rows.sql, the ones the cap removed included.
RECEIVED_BY_TASKS = (
    "SELECT task_id, received FROM task_build_history_counts WHERE task_id = ANY ($1::uuid[])"
)
COUNT_BY_TASK = "SELECT count(*) FROM task_build_history WHERE task_id = $1 AND expires_at > now()"
OLDEST = "SELECT min(created_at) FROM task_build_history WHERE expires_at > now()"
OLDEST_OF_TASK = (
    "SELECT created_at FROM task_build_history WHERE task_id = $1 AND expires_at > now()"
    " ORDER BY created_at, seq LIMIT 1"
)
# The channel sql/0002_notify.sql notifies once per task per INSERT or COPY statement.
NOTIFY_CHANNEL = "task_build_history"
# Whether that migration is applied; readable by any role, unlike the migrations table.
HAS_NOTIFY = "SELECT to_regprocedure('task_build_history_notify_v1()') IS NOT NULL"

# Paged, filtered and streamed reads. The text of these queries is assembled only from the
# constant fragments below, picked by which filters are present, and every value travels as a
# numbered parameter: all ten ($1 to $10) are always sent, and an absent filter's fragment
# merely checks that its parameter is NULL. Nothing a caller passes ever becomes SQL text, and
# the fragments of present filters stay plain comparisons the indexes can serve. The text
# searched for ($10) is a LIKE pattern (like_pattern), matched in any case (A to Z): within a
# task, workspace or session, the subject's own index finds the rows it is matched against.
_READ_FILTERS = (  # (fragment when the filter is given, fragment when it is not)
    (" AND task_id = $1", " AND $1::uuid IS NULL"),
    (" AND workspace_id = $2", " AND $2::uuid IS NULL"),
    (" AND session_id = $3", " AND $3::uuid IS NULL"),
    (" AND context_type = ANY ($4::text[])", " AND $4::text[] IS NULL"),
    (" AND created_at >= $5", " AND $5::timestamptz IS NULL"),
    (" AND created_at < $6", " AND $6::timestamptz IS NULL"),
)
_READ_AFTER_OLDEST_FIRST = " AND (created_at, seq) > ($7::timestamptz, $8::bigint)"
_READ_AFTER_NEWEST_FIRST = " AND (created_at, seq) < ($7::timestamptz, $8::bigint)"
# In any case for the letters A to Z, as the "C" collation folds them (other characters match
# as written): three times faster than folding every character by the database's locale.
_READ_TEXT = (' AND content COLLATE "C" ILIKE $10', " AND $10::text IS NULL")
_READ_FROM_START = " AND $7::timestamptz IS NULL AND $8::bigint IS NULL"
_READ_OLDEST_FIRST = " ORDER BY created_at, seq LIMIT $9"
_READ_NEWEST_FIRST = " ORDER BY created_at DESC, seq DESC LIMIT $9"


def read_sql(query: HistoryQuery) -> str:
    """The text of the read `query` asks for, from constant fragments only (see _READ_FILTERS)."""
    given = (
        query.task_id,
        query.workspace_id,
        query.session_id,
        query.context_types or None,
        query.since,
        query.until,
    )
    parts = [READ_SELECT]
    parts.extend(
        when if value is not None else otherwise
        for value, (when, otherwise) in zip(given, _READ_FILTERS, strict=True)
    )
    parts.append(_READ_TEXT[0] if query.text else _READ_TEXT[1])
    if query.after is None:
        parts.append(_READ_FROM_START)
    else:
        parts.append(_READ_AFTER_NEWEST_FIRST if query.newest_first else _READ_AFTER_OLDEST_FIRST)
    parts.append(_READ_NEWEST_FIRST if query.newest_first else _READ_OLDEST_FIRST)
    return "".join(parts)


# A page within a byte budget ($11): the read above, and over its rows, in its order, the running
# total of their sizes (content and metadata in bytes, and 300 for the rest of an entry's JSON);
# rows past the budget are not sent, but the first always is. `read_rows` says how many the
# read itself found, so the caller knows whether the budget cut the page.
_PAGE_HEAD = (
    "SELECT * FROM (SELECT r.*, count(*) OVER () AS read_rows,"
    " octet_length(r.content) + coalesce(octet_length(r.metadata::text), 0) + 300 AS entry_bytes,"
    " sum(octet_length(r.content) + coalesce(octet_length(r.metadata::text), 0) + 300)"
)
_PAGE_TAIL = ") AS r) AS p WHERE through_bytes <= $11 OR through_bytes = entry_bytes"
_PAGE_OLDEST_FIRST = (
    _PAGE_HEAD + " OVER (ORDER BY r.created_at, r.seq ROWS UNBOUNDED PRECEDING) AS through_bytes"
    " FROM (",
    _PAGE_TAIL + " ORDER BY created_at, seq",
)
_PAGE_NEWEST_FIRST = (
    _PAGE_HEAD + " OVER (ORDER BY r.created_at DESC, r.seq DESC ROWS UNBOUNDED PRECEDING)"
    " AS through_bytes FROM (",
    _PAGE_TAIL + " ORDER BY created_at DESC, seq DESC",
)
PAGE_EXTRA_COLUMNS = ("read_rows", "entry_bytes", "through_bytes")


def page_sql(query: HistoryQuery) -> str:
    """The read `query` asks for, stopped at a byte budget (parameter $11) in the database."""
    head, tail = _PAGE_NEWEST_FIRST if query.newest_first else _PAGE_OLDEST_FIRST
    return head + read_sql(query) + tail


def read_arguments(query: HistoryQuery, *, limit: int | None) -> tuple[object, ...]:
    """The ten parameters of `read_sql(query)`, in order; `limit` None reads to the end."""
    after = query.after
    return (
        query.task_id,
        query.workspace_id,
        query.session_id,
        [context_type.value for context_type in query.context_types] or None,
        query.since,
        query.until,
        None if after is None else after.created_at,
        None if after is None else after.seq,
        limit,
        like_pattern(query.text) if query.text else None,
    )


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere: its own %, _ and backslashes taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# How many entries of each context type a read selects (its order, cursor and limit aside).
_COUNT_BY_TYPE = ("SELECT context_type, count(*) AS n FROM (", ") AS r GROUP BY context_type")


def count_by_type_sql(query: HistoryQuery) -> str:
    """The count by context type of what `read_sql(query)` selects; the same parameters."""
    head, tail = _COUNT_BY_TYPE
    return head + read_sql(query) + tail


# Dead letters: what `task-history dlq` reads and deletes. Like the reads above, each text is
# assembled only from constant fragments: a head, the eight filters of _DEAD_LETTER_FILTERS
# (always $1 to $8; an absent filter's fragment merely checks that its parameter is NULL), and
# a tail, whose parameters are numbered from $9.


@dataclass(frozen=True, slots=True)
class FilteredQuery:
    """A dead-letter query's constant text before and after the filters."""

    head: str
    tail: str = ""


_DEAD_LETTER_SELECT = (
    "SELECT id, message_id, error, detail, routing_key, task_id, failed_at, replay_count, body,"
    " properties, headers, original_body_bytes, original_body_sha256"
    " FROM task_build_history_dead_letters WHERE true"
)
_DEAD_LETTER_FILTERS = (  # (fragment when the filter is given, fragment when it is not)
    (" AND error = ANY ($1::text[])", " AND $1::text[] IS NULL"),
    (" AND task_id = $2", " AND $2::uuid IS NULL"),
    (" AND failed_at < $3", " AND $3::timestamptz IS NULL"),
    (" AND failed_at >= $4", " AND $4::timestamptz IS NULL"),
    (" AND routing_key = $5", " AND $5::text IS NULL"),
    (
        ' AND (detail COLLATE "C" ILIKE $6 OR message_id COLLATE "C" ILIKE $6)',
        " AND $6::text IS NULL",
    ),
    (" AND id = ANY ($7::bigint[])", " AND $7::bigint[] IS NULL"),
    (" AND id <= $8", " AND $8::bigint IS NULL"),
)
# The census: each code's count and its largest $9 tasks, in one pass over the rows.
DEAD_LETTER_GROUPS = FilteredQuery(
    "WITH grouped AS (SELECT error, task_id, count(*) AS n FROM task_build_history_dead_letters"
    " WHERE true",
    " GROUP BY error, task_id),"
    " ranked AS (SELECT error, task_id, n, sum(n) OVER (PARTITION BY error) AS of_error,"
    " row_number() OVER (PARTITION BY error ORDER BY n DESC, task_id) AS rank FROM grouped)"
    " SELECT error, of_error, task_id, n FROM ranked WHERE rank <= $9"
    " ORDER BY of_error DESC, error, rank",
)
DEAD_LETTERS_NEWEST = FilteredQuery(_DEAD_LETTER_SELECT, " ORDER BY id DESC LIMIT $9")
# How many match, and the newest one's id: replays and purges stop there, so what fails again
# (or arrives) while they work is not taken in the same run.
DEAD_LETTERS_EXTENT = FilteredQuery(
    "SELECT count(*) AS n, max(id) AS last FROM task_build_history_dead_letters WHERE true"
)
# A batch in id order, after $9 and up to $10, at most $11; claimed, rows another replay or
# purge holds are skipped, not waited for.
_BATCH = " AND id > $9 AND id <= $10 ORDER BY id LIMIT $11"
DEAD_LETTERS_CLAIM = FilteredQuery(_DEAD_LETTER_SELECT, _BATCH + " FOR UPDATE SKIP LOCKED")
DEAD_LETTERS_PEEK = FilteredQuery(_DEAD_LETTER_SELECT, _BATCH)
# The rows a replay sent, deleted, and counted in the totals the metrics show, in one statement.
DELETE_REPLAYED = (
    "WITH gone AS (DELETE FROM task_build_history_dead_letters WHERE id = ANY ($1::bigint[])"
    " RETURNING id)"
    " UPDATE task_build_history_dead_letter_totals SET replayed = replayed + (SELECT count(*)"
    " FROM gone)"
)
# One purge batch: such a window, deleted and counted; how many went and the last one's id.
PURGE_DEAD_LETTERS = FilteredQuery(
    "WITH chosen AS (SELECT id FROM task_build_history_dead_letters WHERE true",
    " AND id > $9 AND id <= $10 ORDER BY id LIMIT $11 FOR UPDATE SKIP LOCKED),"
    " gone AS (DELETE FROM task_build_history_dead_letters AS d USING chosen"
    " WHERE d.id = chosen.id RETURNING d.id),"
    " counted AS (UPDATE task_build_history_dead_letter_totals"
    " SET purged = purged + (SELECT count(*) FROM gone) WHERE EXISTS (SELECT FROM gone))"
    " SELECT count(*) AS n, max(id) AS last FROM gone",
)
# What the consumers' metrics show: the rows by code, and the totals replayed and purged.
DEAD_LETTERS_BY_CODE = (
    "SELECT error, count(*) AS n FROM task_build_history_dead_letters GROUP BY error"
)
DEAD_LETTER_TOTALS = "SELECT replayed, purged FROM task_build_history_dead_letter_totals"
DEAD_LETTERS_EXPORT = FilteredQuery(_DEAD_LETTER_SELECT, " ORDER BY id LIMIT $9")
DEAD_LETTER_BY_ID = _DEAD_LETTER_SELECT + " AND id = $1"
DEAD_LETTER_BY_MESSAGE_ID = _DEAD_LETTER_SELECT + " AND message_id = $1 ORDER BY id DESC LIMIT 1"


def dead_letter_sql(query: FilteredQuery, selection: Selection) -> str:
    """The text of `query` filtered by `selection`, from constant fragments only."""
    given = (
        selection.errors or None,
        selection.task_id,
        selection.failed_before,
        selection.failed_after,
        selection.routing_key,
        selection.text or None,
        selection.ids or None,
        selection.through,
    )
    filters = (
        when if value is not None else otherwise
        for value, (when, otherwise) in zip(given, _DEAD_LETTER_FILTERS, strict=True)
    )
    return "".join((query.head, *filters, query.tail))


def dead_letter_arguments(selection: Selection) -> tuple[object, ...]:
    """The eight filter parameters ($1 to $8) of `dead_letter_sql(_, selection)`, in order."""
    return (
        sorted(selection.errors) or None,
        selection.task_id,
        selection.failed_before,
        selection.failed_after,
        selection.routing_key,
        like_pattern(selection.text) if selection.text else None,
        sorted(selection.ids) or None,
        selection.through,
    )


# The HTTP API's live stream (consumer.api): a task's entries that arrived after a sequence
# number, in arrival order (where a stream resumes from its Last-Event-ID).
ARRIVALS_OF_TASK_AFTER = READ_SELECT + " AND task_id = $1 AND seq > $2 ORDER BY seq"


# The console (`task-history serve`): dead letters a page at a time, their counts over time,
# the record of replays and purges, and the recent tasks.

# A page of letters, newest first, before id $9 (the last one's id), at most $10: what a list
# shows, so neither the body nor the headers, only the body's size.
DEAD_LETTERS_PAGE = FilteredQuery(
    "SELECT id, message_id, error, detail, routing_key, task_id, failed_at, replay_count,"
    " octet_length(body) AS body_bytes FROM task_build_history_dead_letters WHERE true",
    " AND id < $9 ORDER BY id DESC LIMIT $10",
)
# The oldest and newest failure the selection holds: a chart's time range.
DEAD_LETTERS_SPAN = FilteredQuery(
    "SELECT min(failed_at) AS oldest, max(failed_at) AS newest"
    " FROM task_build_history_dead_letters WHERE true"
)
# The selected letters counted per time bucket ($9 wide, from $10) and per key: the $11 keys
# with the most letters each, and the rest together (`top` false). A key is the error code or
# the task (text; NULL for letters naming no task).
_TIMELINE_TAIL = (
    "), top AS (SELECT key, count(*) AS n FROM chosen GROUP BY key ORDER BY n DESC, key"
    " NULLS LAST LIMIT $11)"
    " SELECT date_bin($9::interval, c.failed_at, $10::timestamptz) AS at, t.key AS key,"
    " t.n IS NOT NULL AS top, count(*) AS n"
    " FROM chosen AS c LEFT JOIN top AS t ON t.key IS NOT DISTINCT FROM c.key"
    " WHERE c.failed_at >= $10"
    " GROUP BY 1, 2, 3 ORDER BY 1, 3 DESC, 2"
)
DEAD_LETTER_TIMELINE_BY_ERROR = FilteredQuery(
    "WITH chosen AS (SELECT failed_at, error AS key FROM task_build_history_dead_letters"
    " WHERE true",
    _TIMELINE_TAIL,
)
DEAD_LETTER_TIMELINE_BY_TASK = FilteredQuery(
    "WITH chosen AS (SELECT failed_at, task_id::text AS key FROM task_build_history_dead_letters"
    " WHERE true",
    _TIMELINE_TAIL,
)
# What a replay sent, deleted and counted, and counted in its action's record ($2), in one
# statement: the record's count is what was committed, batch by batch.
DELETE_REPLAYED_RECORDED = (
    "WITH gone AS (DELETE FROM task_build_history_dead_letters WHERE id = ANY ($1::bigint[])"
    " RETURNING id),"
    " counted AS (UPDATE task_build_history_dead_letter_totals SET replayed = replayed +"
    " (SELECT count(*) FROM gone) RETURNING 1)"
    " UPDATE task_build_history_dead_letter_actions SET affected = affected +"
    " (SELECT count(*) FROM gone) WHERE id = $2"
)
# One purge batch, as PURGE_DEAD_LETTERS, counted in its action's record ($12) too.
PURGE_DEAD_LETTERS_RECORDED = FilteredQuery(
    "WITH chosen AS (SELECT id FROM task_build_history_dead_letters WHERE true",
    " AND id > $9 AND id <= $10 ORDER BY id LIMIT $11 FOR UPDATE SKIP LOCKED),"
    " gone AS (DELETE FROM task_build_history_dead_letters AS d USING chosen"
    " WHERE d.id = chosen.id RETURNING d.id),"
    " counted AS (UPDATE task_build_history_dead_letter_totals"
    " SET purged = purged + (SELECT count(*) FROM gone) WHERE EXISTS (SELECT FROM gone)),"
    " recorded AS (UPDATE task_build_history_dead_letter_actions"
    " SET affected = affected + (SELECT count(*) FROM gone)"
    " WHERE id = $12 AND EXISTS (SELECT FROM gone))"
    " SELECT count(*) AS n, max(id) AS last FROM gone",
)

# The record of replays and purges (sql/0010_operator_console.sql).
START_ACTION = (
    "INSERT INTO task_build_history_dead_letter_actions (action, actor, via, filter, selected,"
    " request_id) VALUES ($1, $2, $3, $4::jsonb, $5, $6)"
    " RETURNING id, action, started_at, finished_at, actor, via, database_role, filter,"
    " selected, affected, skipped, state, detail, request_id"
)
FINISH_ACTION = (
    "UPDATE task_build_history_dead_letter_actions SET finished_at = clock_timestamp(),"
    " state = $2, skipped = $3, detail = $4 WHERE id = $1"
)
_ACTIONS = (
    "SELECT id, action, started_at, finished_at, actor, via, database_role, filter, selected,"
    " affected, skipped, state, detail, request_id FROM task_build_history_dead_letter_actions"
)
ACTIONS_FIRST = _ACTIONS + " ORDER BY id DESC LIMIT $1"
ACTIONS_BEFORE = _ACTIONS + " WHERE id < $2 ORDER BY id DESC LIMIT $1"
ACTION_BY_ID = _ACTIONS + " WHERE id = $1"
ACTION_BY_REQUEST = _ACTIONS + " WHERE request_id = $1"
# Whether this connection's role may carry out replays and purges and record them.
MAY_OPERATE = (
    "SELECT has_table_privilege('task_build_history_dead_letters', 'DELETE')"
    " AND has_table_privilege('task_build_history_dead_letter_actions', 'INSERT')"
    " AND has_column_privilege('task_build_history_dead_letter_actions', 'affected', 'UPDATE')"
    " AND has_column_privilege('task_build_history_dead_letter_totals', 'replayed', 'UPDATE')"
)

# Recent tasks: newest last activity first, ties by task id, a page after a (time, id) key
# through task_build_history_counts_recent.
_RECENT_TASKS = (
    "SELECT task_id, entries, errors, last_activity FROM task_build_history_counts"
    " WHERE last_activity IS NOT NULL"
)
RECENT_TASKS_FIRST = _RECENT_TASKS + " ORDER BY last_activity DESC, task_id DESC LIMIT $1"
RECENT_TASKS_AFTER = (
    _RECENT_TASKS + " AND (last_activity, task_id) < ($2::timestamptz, $3::uuid)"
    " ORDER BY last_activity DESC, task_id DESC LIMIT $1"
)
TASK_SUMMARY = (
    "SELECT task_id, entries, errors, last_activity FROM task_build_history_counts"
    " WHERE task_id = $1"
)
# A search of recent tasks: the next $1 tasks after ($2, $3), each with whether any entry of
# its holds the text ($4, a LIKE pattern). A task holds at most the cap of entries, found by
# its index: the work is bounded by the number of tasks looked at, whatever the text.
_TASK_HIT = (
    ", EXISTS (SELECT 1 FROM task_build_history AS h WHERE h.task_id = c.task_id"
    ' AND h.expires_at > now() AND h.content COLLATE "C" ILIKE $4) AS hit'
)
_SEARCH_HEAD = "SELECT c.task_id, c.entries, c.errors, c.last_activity"
SEARCH_TASKS = (
    _SEARCH_HEAD
    + _TASK_HIT
    + " FROM ("
    + RECENT_TASKS_AFTER
    + ") AS c ORDER BY c.last_activity DESC, c.task_id DESC"
)
