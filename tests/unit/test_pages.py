"""Cursors and the read query's text: pure logic, no database."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from consumer.entries import ContextType
from consumer.errors import InvalidCursorError
from consumer.pages import Cursor, HistoryQuery
from consumer.store.queries import read_arguments, read_sql

MOMENT = datetime(2026, 11, 26, 10, 15, 0, 123456, tzinfo=UTC)


class TestCursor:
    """Cursors are opaque text that decode to exactly what was encoded."""

    @pytest.mark.parametrize("newest_first", [False, True])
    def test_round_trip(self, *, newest_first: bool) -> None:
        """Encoding then decoding gives back the time (to the microsecond), seq and direction."""
        cursor = Cursor(MOMENT, 9_007_199_254_740_993, newest_first=newest_first)
        text = cursor.encode()
        assert re.fullmatch(r"[A-Za-z0-9_-]+", text)  # safe in a URL and a shell
        assert Cursor.decode(text) == cursor

    def test_other_offsets_keep_the_instant(self) -> None:
        """A time with a non-UTC offset decodes to the same instant."""
        moment = MOMENT.astimezone(timezone(timedelta(hours=-5)))
        assert Cursor.decode(Cursor(moment, 1).encode()).created_at == MOMENT

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "!!!",
            "bm90IGEgY3Vyc29y",  # "not a cursor"
            Cursor(MOMENT, 1).encode()[:-3],
            "eDF8MjAyNi0xMS0yNlQxMDoxNTowMCswMDowMHwx",  # tag x1
            "YTF8MjAyNi0xMS0yNlQxMDoxNTowMHwx",  # a time without an offset
            "YTF8MjAyNi0xMS0yNlQxMDoxNTowMCswMDowMHxvbmU",  # seq "one"
        ],
    )
    def test_garbage_is_refused(self, text: str) -> None:
        """Anything encode() did not produce raises InvalidCursorError."""
        with pytest.raises(InvalidCursorError):
            Cursor.decode(text)

    def test_cursor_of_the_other_direction_is_refused(self) -> None:
        """A newest-first cursor can't resume an oldest-first read, nor the reverse."""
        with pytest.raises(InvalidCursorError, match="newest first"):
            HistoryQuery(after=Cursor(MOMENT, 1, newest_first=True))
        with pytest.raises(InvalidCursorError, match="oldest first"):
            HistoryQuery(after=Cursor(MOMENT, 1), newest_first=True)


class TestReadQuery:
    """The read query is assembled from constant fragments; values only travel as parameters."""

    FULL = HistoryQuery(
        task_id=uuid.uuid4(),
        workspace_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        context_types=(ContextType.ERROR, ContextType.AGENT_TURN),
        since=MOMENT,
        until=MOMENT + timedelta(days=1),
        limit=10,
        after=Cursor(MOMENT, 42),
        text="50% of te_sts",
    )

    @pytest.mark.parametrize(
        "query",
        [HistoryQuery(), FULL, HistoryQuery(task_id=uuid.uuid4(), newest_first=True, limit=3)],
    )
    def test_every_parameter_is_used_and_no_value_is_in_the_text(self, query: HistoryQuery) -> None:
        """The text names $1 to $10 and holds none of the values passed."""
        text = read_sql(query)
        arguments = read_arguments(query, limit=query.limit)
        assert sorted(set(re.findall(r"\$(\d+)", text)), key=int) == [str(n) for n in range(1, 11)]
        assert len(arguments) == 10
        for value in arguments:
            if value is not None and not isinstance(value, int):
                assert str(value) not in text
        assert "expires_at > now()" in text

    def test_absent_filters_only_check_for_null(self) -> None:
        """With no filter, no column is compared: each parameter is only checked to be NULL."""
        text = read_sql(HistoryQuery())
        assert "task_id =" not in text
        assert "$1::uuid IS NULL" in text
        assert text.endswith("ORDER BY created_at, seq LIMIT $9")

    def test_newest_first_flips_order_and_comparison(self) -> None:
        """Newest first orders descending and resumes below the cursor."""
        query = HistoryQuery(newest_first=True, after=Cursor(MOMENT, 5, newest_first=True))
        text = read_sql(query)
        assert "(created_at, seq) < ($7::timestamptz, $8::bigint)" in text
        assert text.endswith("ORDER BY created_at DESC, seq DESC LIMIT $9")

    def test_arguments_in_order(self) -> None:
        """The arguments line up with $1 to $10."""
        query = self.FULL
        assert read_arguments(query, limit=11) == (
            query.task_id,
            query.workspace_id,
            query.session_id,
            ["error", "agent_turn"],
            MOMENT,
            MOMENT + timedelta(days=1),
            MOMENT,
            42,
            11,
            "%50\\% of te\\_sts%",
        )
