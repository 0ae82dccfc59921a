"""What the console shows, as pure logic: task cursors, chart buckets, selections, outcomes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.console import (
    BUCKETS,
    MAX_BUCKETS,
    TaskCursor,
    chart_range,
    timeline_of,
)
from consumer.deadletters import DeadLetter, Selection
from consumer.errors import InvalidCursorError
from consumer.operations import left_behind
from consumer.replay import Outcome

NOW = datetime(2026, 12, 7, 14, 30, 15, tzinfo=UTC)
TASK = uuid.UUID("6f1c2a1e-7d4b-4c8e-9a0f-1b2c3d4e5f60")
MOMENTS = st.datetimes(
    min_value=datetime(2001, 1, 1),  # noqa: DTZ001  # hypothesis wants naive bounds
    max_value=datetime(2999, 1, 1),  # noqa: DTZ001  # and adds the zone below
    timezones=st.just(UTC),
)


class TestTaskCursor:
    """A page of recent tasks resumes after (last activity, task id); nothing else is taken."""

    @given(moment=MOMENTS, task=st.uuids())
    def test_round_trip(self, moment: datetime, task: uuid.UUID) -> None:
        """What encode gives, decode reads back as it was."""
        assert TaskCursor.decode(TaskCursor(moment, task).encode()) == TaskCursor(moment, task)

    @given(text=st.text(max_size=300))
    def test_anything_else_is_refused(self, text: str) -> None:
        """Any text decodes to a cursor or raises InvalidCursorError: never another error."""
        try:
            cursor = TaskCursor.decode(text)
        except InvalidCursorError:
            return
        assert cursor.last_activity.tzinfo is not None

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "dDF8",  # "t1|"
            "eDF8MjAyNi0xMi0wN1QxMDowMDowMCswMDowMHw2ZjFjMmExZS03ZDRiLTRjOGUtOWEwZi0xYjJjM2Q0ZTVmNjA",
            "dDF8MjAyNi0xMi0wN1QxMDowMDowMHw2ZjFjMmExZS03ZDRiLTRjOGUtOWEwZi0xYjJjM2Q0ZTVmNjA",
            "a" * 201,
        ],
    )
    def test_forged(self, text: str) -> None:
        """Empty, cut short, another tag, a time without an offset, too long: refused."""
        with pytest.raises(InvalidCursorError):
            TaskCursor.decode(text)


class TestChartRange:
    """Bars narrow enough to say when letters started, few enough to draw."""

    @given(
        start=MOMENTS, length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=900))
    )
    def test_every_moment_falls_in_a_bucket(self, start: datetime, length: timedelta) -> None:
        """The buckets start at or before `start`, end after `end`, and are at most 240."""
        end = start + length
        bucket, first, count = chart_range(start, end)
        assert bucket in BUCKETS or bucket > BUCKETS[-1]
        assert first <= start < first + bucket
        assert count <= 2 * MAX_BUCKETS
        assert first + bucket * count > end

    @given(start=st.datetimes(timezones=st.just(UTC)), end=st.datetimes(timezones=st.just(UTC)))
    def test_any_times_at_all(self, start: datetime, end: datetime) -> None:
        """Years 1 to 9999 either way round: buckets whose starts the calendar holds."""
        bucket, first, count = chart_range(start, end)
        assert count >= 1
        assert first + bucket * (count - 1) <= datetime.max.replace(tzinfo=UTC)

    def test_the_narrowest_that_fits(self) -> None:
        """Two hours: 5-minute bars; two days: an hour; a month: a day; an hour: a minute."""
        assert chart_range(NOW - timedelta(hours=2), NOW)[0] == timedelta(minutes=5)
        assert chart_range(NOW - timedelta(days=2), NOW)[0] == timedelta(hours=1)
        assert chart_range(NOW - timedelta(days=30), NOW)[0] == timedelta(days=1)
        bucket, first, count = chart_range(NOW - timedelta(hours=1), NOW)
        assert (bucket, first, count) == (
            timedelta(minutes=1),
            NOW.replace(minute=30, second=0) - timedelta(hours=1),
            61,
        )

    def test_days_start_at_midnight(self) -> None:
        """Daily bars are whole days in UTC."""
        _, first, _ = chart_range(NOW - timedelta(days=40), NOW)
        assert first == datetime(2026, 10, 28, tzinfo=UTC)


class TestTimeline:
    """The database's rows become one series per key, largest first, the rest last."""

    def test_series_from_rows(self) -> None:
        """Counts land in their bucket; keys beyond the top ones are summed as `other`."""
        bucket = timedelta(hours=1)
        start = NOW.replace(minute=0, second=0)
        rows = [
            (start, "unknown_task", True, 3),
            (start + bucket, "unknown_task", True, 5),
            (start + bucket, "invalid_json", True, 9),
            (start, None, False, 2),
            (start + 2 * bucket, None, False, 1),
            (start + 7 * bucket, "unknown_task", True, 4),  # past the range: left out
        ]
        chart = timeline_of(rows, by="error", bucket=bucket, start=start, buckets=3)
        assert [(s.key, s.other, s.counts) for s in chart.series] == [
            ("invalid_json", False, [0, 9, 0]),
            ("unknown_task", False, [3, 5, 0]),
            (None, True, [2, 0, 1]),
        ]
        shown = chart.to_json()
        assert shown["bucket_seconds"] == 3600
        assert shown["buckets"] == [(start + bucket * n).isoformat() for n in range(3)]
        assert [series["total"] for series in shown["series"]] == [9, 8, 3]


class TestSelection:
    """The filters in words, as JSON for the record, and whether any is set."""

    def test_every_filter(self) -> None:
        """Each filter set shows in words and in the record, named as the HTTP API names it."""
        selection = Selection(
            errors=frozenset({"unknown_task", "expired"}),
            task_id=TASK,
            failed_after=NOW,
            failed_before=NOW + timedelta(hours=1),
            routing_key="history.error",
            text="OOM",
            ids=frozenset({3, 1}),
            through=40,
        )
        assert not selection.is_everything
        assert selection.describe() == (
            f"id #1, #3, error expired or unknown_task, task {TASK}, routing key history.error,"
            " detail holding 'OOM', failed at or after 2026-12-07T14:30:15+00:00, failed before"
            " 2026-12-07T15:30:15+00:00"
        )
        assert selection.to_json() == {
            "ids": [1, 3],
            "error": ["expired", "unknown_task"],
            "task": str(TASK),
            "routing_key": "history.error",
            "q": "OOM",
            "since": "2026-12-07T14:30:15+00:00",
            "until": "2026-12-07T15:30:15+00:00",
            "through": 40,
        }

    def test_through_alone_selects_everything_shown(self) -> None:
        """`through` bounds what was shown; it is no filter (a purge still needs --all)."""
        assert Selection(through=5).is_everything
        assert Selection(through=5).to_json() == {"through": 5}
        assert Selection().describe() == "every dead letter"
        assert Selection(ids=frozenset(range(1, 9))).describe() == "id #1, #2, #3, #4, #5 and more"


def _letter(n: int) -> DeadLetter:
    return DeadLetter(
        message_id=f"m{n}",
        task_id=None,
        routing_key="history.agent_turn",
        code="unknown_task",
        detail="",
        failed_at=NOW,
        replay_count=0,
        headers={},
        properties={},
        body=b"{}",
        id=n,
    )


class TestLeftBehind:
    """What a run chose but left, by reason: every tally of its outcome but the done one."""

    def test_each_reason(self) -> None:
        """Letters at the replay limit and unroutable ones, counted apart; done ones not."""
        outcome = Outcome()
        outcome.done.add(_letter(1))
        outcome.at_max_replays.add(_letter(2))
        outcome.at_max_replays.add(_letter(3))
        outcome.unroutable.add((_letter(4), "no queue"))
        left = left_behind(outcome)
        assert "done" not in left
        assert (left.pop("at_max_replays"), left.pop("unroutable")) == (2, 1)
        assert set(left.values()) <= {0}, "any other reason a replay leaves a letter: none here"
        assert set(left_behind(Outcome()).values()) == {0}
