"""The oracle of the fault schedule: every confirmed message accounted for exactly once.

Every write the consumers make is recorded by an audit in the database itself: statement
triggers on the history and on the dead letters copy each inserted and deleted row's key into
`fault_audit`, in the writing transaction. The record is therefore exactly as durable as the
writes: it commits with them, is replayed with them after an immediate restart, and reaches the
synchronous standby with them, so after a failover the promoted server's audit holds exactly
the transactions that survived, each once. A transaction the old primary committed locally but
the standby never confirmed is gone from both, as it is from the history (the consumer was never
told it committed, and writes it again).

A logical-decoding slot would see the same writes, but not this way: PostgreSQL 15 keeps slots
on the primary only, so a failover loses the slot and everything decoded after its last read,
and decoding the old primary up to the failover shows transactions the promoted server never
had. The audit needs neither `wal_level=logical` nor a reader keeping pace.

A re-insert after the cap trimmed the first copy leaves the table looking right; the audit
still holds both inserts and the delete between them.
"""

from __future__ import annotations

import bisect
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

ENTRY = "entry"
DEAD_LETTER = "dead letter"
INSERT = "I"
DELETE = "D"

# Test objects in the test's own database, not a migration of the product. The key of an entry
# is the start of its content, where the load writes the event's id: an event stored again
# under another id is caught too. Trigger names sort before the product's, so in a transaction
# an insert is recorded before the cap's delete of the same row.
AUDIT = """
CREATE TABLE fault_audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tbl text NOT NULL,
    op text NOT NULL,
    key text,
    row_id text NOT NULL,
    task_id uuid,
    error text
);

CREATE FUNCTION fault_audit_entries_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_audit (tbl, op, key, row_id, task_id)
    SELECT 'entry', 'I', left(content, 36), id::text, task_id FROM new_rows;
    RETURN NULL;
END $$;

CREATE FUNCTION fault_audit_entries_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_audit (tbl, op, key, row_id, task_id)
    SELECT 'entry', 'D', left(content, 36), id::text, task_id FROM old_rows;
    RETURN NULL;
END $$;

CREATE FUNCTION fault_audit_letters_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_audit (tbl, op, key, row_id, task_id, error)
    SELECT 'dead letter', 'I', message_id, id::text, task_id, error FROM new_rows;
    RETURN NULL;
END $$;

CREATE FUNCTION fault_audit_letters_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_audit (tbl, op, key, row_id, task_id, error)
    SELECT 'dead letter', 'D', message_id, id::text, task_id, error FROM old_rows;
    RETURN NULL;
END $$;

CREATE TRIGGER fault_audit_in AFTER INSERT ON task_build_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fault_audit_entries_in();
CREATE TRIGGER fault_audit_out AFTER DELETE ON task_build_history
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fault_audit_entries_out();
CREATE TRIGGER fault_audit_in AFTER INSERT ON task_build_history_dead_letters
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fault_audit_letters_in();
CREATE TRIGGER fault_audit_out AFTER DELETE ON task_build_history_dead_letters
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fault_audit_letters_out();
"""

# Commit times come from the servers (track_commit_timestamp), replayed with the WAL.
WRITES = """
SELECT seq, xid::text::bigint AS transaction, tbl, op, key, row_id, task_id::text, error,
       extract(epoch FROM coalesce(pg_xact_commit_timestamp(xmin), at))::float8 AS committed
FROM fault_audit ORDER BY seq
"""
ACCOUNTED = """
SELECT count(DISTINCT key) FILTER (WHERE tbl = 'entry') AS entries,
       count(DISTINCT key) FILTER (WHERE tbl = 'dead letter') AS letters
FROM fault_audit WHERE op = 'I'
"""
KEPT = "SELECT id::text FROM task_build_history"
OVER_CAP = """
SELECT count(*) FROM (
    SELECT task_id FROM task_build_history GROUP BY task_id
    HAVING count(*) > (SELECT max_entries_per_task FROM task_build_history_settings)
) AS over
"""


@dataclass(frozen=True, slots=True)
class Sent:
    """One message the load published, and what the oracle must find for it."""

    id: uuid.UUID  # its message_id, and a valid event's id
    # None: a valid event, stored once (the cap may trim it); else the x-error of its one
    # dead letter.
    expected: str | None
    confirmed_at: float | None  # when the broker confirmed it (Unix time); None: never


@dataclass(frozen=True, slots=True)
class Write:
    """One row inserted into or deleted from the history or the dead letters, as audited."""

    seq: int
    transaction: int
    committed: float  # Unix time
    table: str  # ENTRY or DEAD_LETTER
    op: str  # INSERT or DELETE
    key: str  # an entry's event id (from its content), a dead letter's message_id
    row_id: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """One fault as it was inflicted: its kind, when it began and ended, whom it hit."""

    kind: str
    started: float  # Unix times
    ended: float
    consumer: int | None = None  # None: a server, which every consumer sees


@dataclass
class Verdict:
    """What became of every message: each list holds the keys of the messages it names."""

    confirmed: int = 0
    invalid: int = 0
    unconfirmed: int = 0
    unconfirmed_stored: int = 0
    lost: list[str] = field(default_factory=list)
    duplicate_rows: list[str] = field(default_factory=list)
    reinserted_after_trim: list[str] = field(default_factory=list)
    duplicate_dead_letters: list[str] = field(default_factory=list)
    wrongly_dead_lettered: list[str] = field(default_factory=list)
    stored_though_invalid: list[str] = field(default_factory=list)
    wrong_code: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)
    # Rows in the table that the audit does not explain, or the reverse: the oracle is unsound.
    audit_mismatch: int = 0
    tasks_over_cap: int = 0

    @property
    def duplicated(self) -> int:
        """Extra copies of any kind."""
        return (
            len(self.duplicate_rows)
            + len(self.reinserted_after_trim)
            + len(self.duplicate_dead_letters)
        )

    def failures(self) -> dict[str, int]:
        """Every count that must be 0 and is not."""
        counts = {
            "lost": len(self.lost),
            "duplicate rows": len(self.duplicate_rows),
            "re-inserted after trim": len(self.reinserted_after_trim),
            "duplicate dead letters": len(self.duplicate_dead_letters),
            "wrongly dead-lettered": len(self.wrongly_dead_lettered),
            "stored though invalid": len(self.stored_though_invalid),
            "dead letter with the wrong code": len(self.wrong_code),
            "rows of messages never sent": len(self.strangers),
            "audit disagrees with the table": self.audit_mismatch,
            "tasks over the cap": self.tasks_over_cap,
        }
        return {name: count for name, count in counts.items() if count}

    def examples(self) -> str:
        """A few keys of each failure, to look up in the audit and the consumers' logs."""
        lists = {
            "lost": self.lost,
            "duplicate rows": self.duplicate_rows,
            "re-inserted after trim": self.reinserted_after_trim,
            "duplicate dead letters": self.duplicate_dead_letters,
            "wrongly dead-lettered": self.wrongly_dead_lettered,
            "stored though invalid": self.stored_though_invalid,
            "wrong code": self.wrong_code,
            "never sent": self.strangers,
        }
        return "; ".join(f"{name}: {keys[:5]}" for name, keys in lists.items() if keys)


async def install(connection: asyncpg.Connection) -> None:
    """Create the audit table and its triggers (before any write to record)."""
    await connection.execute(AUDIT)


async def accounted(connection: asyncpg.Connection) -> tuple[int, int]:
    """How many distinct events have been stored, and how many messages dead-lettered."""
    row = await connection.fetchrow(ACCOUNTED)
    return int(row["entries"]), int(row["letters"])


async def read(connection: asyncpg.Connection) -> tuple[list[Write], set[str], int]:
    """Every audited write in order, the ids of the rows kept now, the tasks over the cap."""
    writes = [
        Write(
            seq=row["seq"],
            transaction=row["transaction"],
            committed=row["committed"],
            table=row["tbl"],
            op=row["op"],
            key=row["key"] or "",
            row_id=row["row_id"],
            error=row["error"],
        )
        for row in await connection.fetch(WRITES)
    ]
    kept = {row["id"] for row in await connection.fetch(KEPT)}
    return writes, kept, int(await connection.fetchval(OVER_CAP))


def judge(sent: Iterable[Sent], writes: Sequence[Write], kept: set[str]) -> Verdict:
    """Each message's writes, walked in order, against what it should have become."""
    verdict = Verdict()
    entries: dict[str, list[Write]] = defaultdict(list)
    letters: dict[str, list[Write]] = defaultdict(list)
    for write in sorted(writes, key=lambda w: w.seq):
        (entries if write.table == ENTRY else letters)[write.key].append(write)
    # The cap trims in the transaction of the insert that put a task over it.
    inserting = {w.transaction for w in writes if w.table == ENTRY and w.op == INSERT}
    for message in sent:
        key = str(message.id)
        _judge_one(message, entries.pop(key, []), letters.pop(key, []), inserting, verdict)
    verdict.strangers = sorted(set(entries) | set(letters))
    verdict.audit_mismatch = len(_live_rows(writes) ^ kept)
    return verdict


def _judge_one(
    message: Sent,
    own_entries: list[Write],
    own_letters: list[Write],
    inserting: set[int],
    verdict: Verdict,
) -> None:
    """Add what became of one message to `verdict`."""
    key = str(message.id)
    letter_inserts = [w for w in own_letters if w.op == INSERT]
    if message.confirmed_at is None:
        verdict.unconfirmed += 1
        verdict.unconfirmed_stored += bool(own_entries or own_letters)
    else:
        verdict.confirmed += 1
        verdict.invalid += message.expected is not None
    _walk_copies(key, own_entries, verdict)
    if len(letter_inserts) > 1:
        verdict.duplicate_dead_letters += [key] * (len(letter_inserts) - 1)
    if message.expected is None:
        if letter_inserts:
            verdict.wrongly_dead_lettered.append(key)
        elif message.confirmed_at is not None and not _stored(own_entries, inserting):
            verdict.lost.append(key)
        return
    if own_entries:
        verdict.stored_though_invalid.append(key)
    if message.confirmed_at is not None and not letter_inserts:
        verdict.lost.append(key)
    if any(w.error != message.expected for w in letter_inserts):
        verdict.wrong_code.append(key)


def _walk_copies(key: str, writes: list[Write], verdict: Verdict) -> None:
    """Count each insert after the first: beside a live copy, or after every copy was deleted."""
    live = inserted = 0
    for write in writes:
        if write.op == DELETE:
            live -= 1
            continue
        if inserted:
            (verdict.duplicate_rows if live else verdict.reinserted_after_trim).append(key)
        inserted += 1
        live += 1


def _stored(writes: list[Write], inserting: set[int]) -> bool:
    """Inserted, and either still there or removed only by the cap (a delete while inserting)."""
    inserts = [w for w in writes if w.op == INSERT]
    deletes = [w for w in writes if w.op == DELETE]
    return bool(inserts) and all(w.transaction in inserting for w in deletes)


def _live_rows(writes: Sequence[Write]) -> set[str]:
    """The history rows the audit says exist now: inserted and not deleted since."""
    live: Counter[str] = Counter()
    for write in writes:
        if write.table == ENTRY:
            live[write.row_id] += 1 if write.op == INSERT else -1
    return {row for row, count in live.items() if count > 0}


# -- how long things waited -----------------------------------------------------------------


def stalls(
    sent: Iterable[Sent], writes: Sequence[Write], *, begin: float, end: float
) -> list[tuple[float, float]]:
    """Spans with no new row stored while a confirmed message waited to be (Unix times).

    A message waits from its confirmation until its first row or dead letter commits. Messages
    whose task does not exist are left out: they wait on purpose (the unknown-task window).
    """
    first: dict[str, float] = {}
    for write in writes:
        if write.op == INSERT:
            first[write.key] = min(first.get(write.key, end), write.committed)
    waiting = sorted(
        (first.get(str(m.id), end), m.confirmed_at)
        for m in sent
        if m.confirmed_at is not None and m.expected != "unknown_task"
    )
    stored_at = [stored for stored, _ in waiting]
    # The earliest confirmation among the messages stored at or after each position.
    earliest = [end] * (len(waiting) + 1)
    for index in range(len(waiting) - 1, -1, -1):
        earliest[index] = min(earliest[index + 1], waiting[index][1])
    progress = sorted({w.committed for w in writes if w.op == INSERT and begin < w.committed})
    found = []
    previous = begin
    for moment in [*(p for p in progress if p < end), end]:
        since = earliest[bisect.bisect_left(stored_at, moment)]
        if since < moment:
            found.append((max(previous, since), moment))
        previous = moment
    return found


def not_ready(samples: Sequence[tuple[float, bool]]) -> list[tuple[float, float]]:
    """Spans during which /readyz did not answer 200, from (time, ready) samples in order."""
    spans = []
    since: float | None = None
    for moment, ready in samples:
        if not ready and since is None:
            since = moment
        elif ready and since is not None:
            spans.append((since, moment))
            since = None
    if since is not None and samples:
        spans.append((since, samples[-1][0]))
    return spans


def longest_by_kind(
    spans: Iterable[tuple[float, float]],
    windows: Sequence[Window],
    *,
    before: float = 0.0,
    after: float = 0.0,
) -> dict[str, float]:
    """The longest span each kind of fault was behind; "none" for a span no fault explains.

    A span is put down to the faults under way from `before` s before it began to `after` s
    after (an effect trails its cause: a stall begins at the last write before the fault, a
    readiness check notices a fault seconds after it), else to the last fault that ended
    before it. Faults overlap, so one span may count for several kinds.
    """
    longest: dict[str, float] = {}
    for start, stop in spans:
        behind = [w for w in windows if w.started <= start + after and w.ended >= start - before]
        if not behind:
            ended = [w for w in windows if w.ended <= start]
            behind = [max(ended, key=lambda w: w.ended)] if ended else []
        for kind in {w.kind for w in behind} or {"none"}:
            longest[kind] = max(longest.get(kind, 0.0), stop - start)
    return longest


def longest_wait(sent: Iterable[Sent], writes: Sequence[Write]) -> float:
    """The longest any confirmed message waited from its confirmation to its first write."""
    first: dict[str, float] = {}
    for write in writes:
        if write.op == INSERT and write.key not in first:
            first[write.key] = write.committed
    waits = [
        first[str(m.id)] - m.confirmed_at
        for m in sent
        if m.confirmed_at is not None and m.expected != "unknown_task" and str(m.id) in first
    ]
    return max(waits, default=0.0)


def faults_between_copies(writes: Sequence[Write], windows: Sequence[Window]) -> Counter[str]:
    """Copies written again, by the kinds of fault under way between the first write and them.

    A copy comes from a redelivery, and a redelivery from a fault after the first write: this
    points at the faults to reproduce alone.
    """
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for write in writes:
        if write.op == INSERT:
            times[write.table, write.key].append(write.committed)
    counts: Counter[str] = Counter()
    for first, *again in times.values():
        for later in again:
            kinds = {w.kind for w in windows if w.started <= later and w.ended >= first}
            counts.update(kinds or {"none"})
    return counts


def figures_by_kind(longest: Mapping[str, float]) -> str:
    """`kind 1.2 s, ...`, longest first."""
    ranked = sorted(longest.items(), key=lambda item: -item[1])
    return ", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in ranked) or "none"


# Gaps between writes shorter than this are the normal pace, not stalls.
SHORTEST_STALL = 0.5
# How far a stall or a not-ready span may trail the fault behind it: a stall begins at the last
# write before the fault; /readyz changes at the consumer's next check (every 2 s), sampled
# every 0.5 s.
STALL_AFTER = 1.0
NOT_READY_BEFORE = 3.0


@dataclass(frozen=True)
class Timing:
    """How long things waited, by the kind of fault behind them."""

    stalls: dict[str, float]
    not_ready: dict[str, float]
    longest_wait: float

    @property
    def longest_stall(self) -> float:
        """The longest stall of the run."""
        return max(self.stalls.values(), default=0.0)


def timing(
    sent: Sequence[Sent],
    writes: Sequence[Write],
    windows: Sequence[Window],
    readiness: Mapping[int, Sequence[tuple[float, bool]]],
    *,
    end: float,
) -> Timing:
    """Stalls from the first fault to `end`, and not-ready spans, by the faults behind them.

    `readiness` holds each consumer's /readyz samples by its index; its spans are put down to
    the faults that consumer saw: its own, its links', the servers'.
    """
    stalled = [
        (start, stop)
        for start, stop in stalls(sent, writes, begin=windows[0].started, end=end)
        if stop - start >= SHORTEST_STALL
    ]
    unready: dict[str, float] = {}
    for index, samples in readiness.items():
        seen = [w for w in windows if w.consumer in {None, index}]
        spans = not_ready(samples)
        for kind, seconds in longest_by_kind(spans, seen, before=NOT_READY_BEFORE).items():
            unready[kind] = max(unready.get(kind, 0.0), seconds)
    return Timing(
        stalls=longest_by_kind(stalled, windows, after=STALL_AFTER),
        not_ready=unready,
        longest_wait=longest_wait(sent, writes),
    )


def summary(verdict: Verdict, waited: Timing) -> str:
    """What became of the messages and how long they waited, in one paragraph."""
    return (
        f"{verdict.confirmed} events ({verdict.invalid} invalid; {verdict.unconfirmed} more not"
        f" confirmed, {verdict.unconfirmed_stored} of them written), lost {len(verdict.lost)},"
        f" duplicated {verdict.duplicated} (rows {len(verdict.duplicate_rows)}, re-inserted"
        f" after trim {len(verdict.reinserted_after_trim)}, dead letters"
        f" {len(verdict.duplicate_dead_letters)}), wrongly dead-lettered"
        f" {len(verdict.wrongly_dead_lettered)}; longest stall by kind:"
        f" {figures_by_kind(waited.stalls)}; longest not ready by kind:"
        f" {figures_by_kind(waited.not_ready)}; longest wait of one event"
        f" {waited.longest_wait:.1f} s"
    )
