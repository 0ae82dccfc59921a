"""The fault schedule's oracle and plan, on made-up writes: what it must catch, and not invent."""

from __future__ import annotations

import itertools
import uuid

from tests.reliability.exactly_once import (
    DEAD_LETTER,
    DELETE,
    ENTRY,
    INSERT,
    Sent,
    Window,
    Write,
    faults_between_copies,
    judge,
    longest_by_kind,
    not_ready,
    stalls,
)
from tests.reliability.fault_schedule import Kind, plan

_seq = itertools.count(1)


def write(
    key: uuid.UUID,
    *,
    transaction: int,
    at: float = 0.0,
    row: uuid.UUID | None = None,
    letter: str | None = None,
) -> Write:
    """An audited insert for the message `key`: its row (id `key` unless told), or a letter."""
    table = ENTRY if letter is None else DEAD_LETTER
    return Write(next(_seq), transaction, at, table, INSERT, str(key), str(row or key), letter)


def delete(key: uuid.UUID, *, transaction: int) -> Write:
    """An audited delete of the row of the message `key`."""
    return Write(next(_seq), transaction, 0.0, ENTRY, DELETE, str(key), str(key))


def valid(confirmed_at: float | None = 1.0) -> Sent:
    """A valid event, confirmed unless told."""
    return Sent(uuid.uuid4(), None, confirmed_at)


class TestJudge:
    """Each message's writes, walked in order, say what became of it."""

    def test_stored_once_and_kept(self) -> None:
        """One insert, the row still there: nothing to report."""
        event = valid()
        verdict = judge([event], [write(event.id, transaction=1)], {str(event.id)})
        assert verdict.failures() == {}
        assert verdict.confirmed == 1

    def test_trimmed_by_the_cap(self) -> None:
        """Deleted in the transaction of a later insert: the cap did it, nothing lost."""
        event, newer = valid(), valid()
        writes = [
            write(event.id, transaction=1),
            write(newer.id, transaction=2),
            delete(event.id, transaction=2),
        ]
        assert judge([event, newer], writes, {str(newer.id)}).failures() == {}

    def test_reinserted_after_trim(self) -> None:
        """Inserted, trimmed, inserted again: the table looks right, the audit does not."""
        event, newer = valid(), valid()
        writes = [
            write(event.id, transaction=1),
            write(newer.id, transaction=2),
            delete(event.id, transaction=2),
            write(event.id, transaction=3),
            delete(event.id, transaction=3),
        ]
        verdict = judge([event, newer], writes, {str(newer.id)})
        assert verdict.failures() == {"re-inserted after trim": 1}
        assert verdict.reinserted_after_trim == [str(event.id)]

    def test_two_copies_at_once(self) -> None:
        """The same event under a second row id while the first is there: a duplicate row."""
        event, other_row = valid(), uuid.uuid4()
        writes = [write(event.id, transaction=1), write(event.id, transaction=2, row=other_row)]
        verdict = judge([event], writes, {str(event.id), str(other_row)})
        assert verdict.failures() == {"duplicate rows": 1}

    def test_never_stored(self) -> None:
        """A confirmed event with no insert is lost; one never confirmed is not."""
        confirmed, unconfirmed = valid(), valid(confirmed_at=None)
        verdict = judge([confirmed, unconfirmed], [], set())
        assert verdict.lost == [str(confirmed.id)]
        assert (verdict.unconfirmed, verdict.unconfirmed_stored) == (1, 0)

    def test_deleted_by_something_else(self) -> None:
        """Deleted in a transaction that inserted nothing: not the cap, so lost."""
        event = valid()
        writes = [write(event.id, transaction=1), delete(event.id, transaction=2)]
        assert judge([event], writes, set()).lost == [str(event.id)]

    def test_dead_letters(self) -> None:
        """An invalid message: one dead letter with its code; a second, or another code, fail."""
        once, twice, wrong = (Sent(uuid.uuid4(), "invalid_json", 1.0) for _ in range(3))
        writes = [
            write(once.id, transaction=1, letter="invalid_json"),
            write(twice.id, transaction=1, letter="invalid_json"),
            write(twice.id, transaction=2, letter="invalid_json"),
            write(wrong.id, transaction=1, letter="internal_error"),
        ]
        verdict = judge([once, twice, wrong], writes, set())
        assert verdict.failures() == {
            "duplicate dead letters": 1,
            "dead letter with the wrong code": 1,
        }

    def test_valid_event_dead_lettered(self) -> None:
        """A valid event that became a dead letter is counted, not called lost as well."""
        event = valid()
        writes = [write(event.id, transaction=1, letter="delivery_limit")]
        assert judge([event], writes, set()).failures() == {"wrongly dead-lettered": 1}

    def test_rows_of_messages_never_sent(self) -> None:
        """A row whose key the load never used, and a table the audit does not explain."""
        stranger = uuid.uuid4()
        verdict = judge([], [write(stranger, transaction=1)], set())
        assert verdict.failures() == {
            "rows of messages never sent": 1,
            "audit disagrees with the table": 1,
        }


class TestTiming:
    """Stalls and not-ready spans, and the faults they are put down to."""

    def test_a_stall_is_a_gap_while_something_waits(self) -> None:
        """No write from 2 to 7 while an event confirmed at 3 waited: a stall from 3 to 7."""
        early, late = Sent(uuid.uuid4(), None, 1.0), Sent(uuid.uuid4(), None, 3.0)
        writes = [write(early.id, transaction=1, at=2.0), write(late.id, transaction=2, at=7.0)]
        assert stalls([early, late], writes, begin=0.0, end=10.0) == [(1.0, 2.0), (3.0, 7.0)]

    def test_no_stall_when_nothing_waits(self) -> None:
        """A quiet spell with nothing confirmed and unwritten is not a stall."""
        event = Sent(uuid.uuid4(), None, 5.0)
        writes = [write(event.id, transaction=1, at=5.1)]
        assert stalls([event], writes, begin=0.0, end=10.0) == [(5.0, 5.1)]

    def test_not_ready_spans(self) -> None:
        """From the first sample not ready to the next ready one."""
        samples = [(0.0, True), (1.0, False), (2.0, False), (3.0, True), (4.0, False)]
        assert not_ready(samples) == [(1.0, 3.0), (4.0, 4.0)]

    def test_attribution(self) -> None:
        """A span goes to the faults under way as it began, else to the last one over."""
        windows = [Window("kill -9", 0.0, 2.0), Window("broker cut", 10.0, 12.0)]
        spans = [(1.0, 4.0), (5.0, 6.0), (9.5, 10.5)]
        assert longest_by_kind(spans, windows, after=1.0) == {
            "kill -9": 3.0,
            "broker cut": 1.0,
        }
        assert longest_by_kind([(0.0, 1.0)], []) == {"none": 1.0}

    def test_copies_by_the_faults_between(self) -> None:
        """A copy is put down to the faults under way between the first write and it."""
        event = valid()
        writes = [
            write(event.id, transaction=1, at=1.0),
            delete(event.id, transaction=2),
            write(event.id, transaction=3, at=9.0),
        ]
        windows = [Window("SIGSTOP", 2.0, 8.0, 0), Window("broker cut", 10.0, 12.0, 1)]
        assert faults_between_copies(writes, windows) == {"SIGSTOP": 1}


class TestPlan:
    """The schedule follows from its number and length alone."""

    def test_the_same_number_gives_the_same_schedule(self) -> None:
        """Twice the same; another number, another schedule."""
        assert plan(7, 600) == plan(7, 600)
        assert plan(7, 600) != plan(8, 600)

    def test_every_kind_and_enough_of_them(self) -> None:
        """Every kind at least once, about one fault every five seconds, within the length."""
        faults = plan(27, 75)
        assert {fault.kind for fault in faults} == set(Kind)
        assert len(plan(27, 600)) == 120
        assert all(0 <= fault.start <= 75 for fault in faults)
