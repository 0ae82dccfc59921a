"""Rows other programs write: the table refuses what no reader could show, and keeps the rest."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from consumer import migrations
from consumer.cli import main
from consumer.errors import InvalidEventError
from consumer.events import parse_event
from consumer.rules import (
    MAX_METADATA_DEPTH,
)
from consumer.store import Store
from tests.helpers import run_sync

PSQL = shutil.which("psql") or "psql"
# Where the table's depth rule and the consumer's must agree: both sides of the limit.
DEPTHS = range(MAX_METADATA_DEPTH - 2, MAX_METADATA_DEPTH + 3)


def nested(depth: int, *, innermost: str = "{}", arrays: bool = False) -> str:
    """JSON text of a metadata object nesting `depth` levels of objects (or, inside, arrays)."""
    text = innermost
    for level in range(depth - 1, 0, -1):
        text = f"[{text}]" if arrays and level > 1 else f'{{"k{level}": {text}}}'
    return text


def depth_of(text: str) -> int:
    """How many levels of objects and arrays a JSON text nests, counted the simple way."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(json.loads(text), 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def psql(database_url: str, statement: str) -> subprocess.CompletedProcess[str]:
    """Run one statement with psql, as another program writing to the table would."""
    return subprocess.run(
        [PSQL, "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-At", database_url, "-c", statement],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def literal(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def insert(task: uuid.UUID, *, metadata: str = "NULL", created_at: str = "now()") -> str:
    """An INSERT of one entry naming only the contract's columns, as a psql user writes it."""
    return (
        "INSERT INTO task_build_history (id, task_id, context_type, content, metadata, created_at)"
        f" VALUES (gen_random_uuid(), '{task}', 'error', 'from psql', {metadata}, {created_at})"
    )


def new_task(database_url: str) -> uuid.UUID:
    """A task row, created with psql."""
    task = uuid.uuid4()
    done = psql(database_url, f"INSERT INTO tasks (id) VALUES ('{task}')")
    assert done.returncode == 0, done.stderr
    return task


def shown(database_url: str, task: uuid.UUID, capsys: pytest.CaptureFixture[str]) -> list[Any]:
    """What `show TASK --json` prints, one object per entry; the command must succeed."""
    capsys.readouterr()
    assert main(["--database-url", database_url, "show", str(task), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def exported(database_url: str, capsys: pytest.CaptureFixture[str]) -> list[Any]:
    """What `export` prints for the whole table; the command must succeed."""
    capsys.readouterr()
    assert main(["--database-url", database_url, "export"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


class TestTheTableRefusesWhatNoReaderCouldShow:
    """Another writer's row that readers could not show is refused, naming the constraint."""

    @pytest.mark.parametrize(
        "metadata", ["'[1, 2]'", "'\"exit 0\"'", "'3'", "'true'", "'null'", literal(nested(65))]
    )
    def test_metadata_that_is_not_a_shallow_object(self, database_url: str, metadata: str) -> None:
        """An array, a string, a number, a JSON null, or an object 65 levels deep."""
        task = new_task(database_url)
        done = psql(database_url, insert(task, metadata=metadata))
        assert done.returncode != 0
        assert 'violates check constraint "task_build_history_metadata_check"' in done.stderr

    @pytest.mark.parametrize(
        "created_at", ["'infinity'", "'-infinity'", "'12000-01-01Z'", "'0010-01-01 BC'"]
    )
    def test_times_out_of_range(self, database_url: str, created_at: str) -> None:
        """created_at at infinity, in year 12000 or before year 1."""
        task = new_task(database_url)
        done = psql(database_url, insert(task, created_at=created_at))
        assert done.returncode != 0
        assert "violates check constraint" in done.stderr

    def test_what_fits_is_written_and_read_back(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Metadata 64 levels deep, of arrays too, and an empty object: show and export print it."""
        task = new_task(database_url)
        kept = [nested(64), nested(64, arrays=True, innermost="[1]"), "{}"]
        for metadata in kept:
            done = psql(database_url, insert(task, metadata=literal(metadata)))
            assert done.returncode == 0, done.stderr
        expected = [json.loads(metadata) for metadata in kept]
        assert [entry["metadata"] for entry in shown(database_url, task, capsys)] == expected
        assert [entry["metadata"] for entry in exported(database_url, capsys)] == expected


class TestTheConsumerAndTheTableAgree:
    """The consumer refuses exactly the metadata the table refuses, by depth."""

    @pytest.mark.parametrize("depth", DEPTHS)
    @pytest.mark.parametrize("arrays", [False, True])
    def test_at_every_depth_near_the_limit(
        self, database_url: str, depth: int, *, arrays: bool
    ) -> None:
        """Object and string forms alike: both refuse past 64 levels, both keep 64."""
        metadata = nested(depth, arrays=arrays)
        assert depth_of(metadata) == depth
        task = new_task(database_url)
        table_takes = psql(database_url, insert(task, metadata=literal(metadata))).returncode == 0
        now = datetime.now(UTC)
        for form in (json.loads(metadata), metadata):
            body = json.dumps(
                {"task_id": str(task), "context_type": "error", "content": "x", "metadata": form}
            ).encode()
            if depth <= MAX_METADATA_DEPTH:
                parse_event(body, message_id=None, received_at=now)
            else:
                with pytest.raises(InvalidEventError, match="64-level limit"):
                    parse_event(body, message_id=None, received_at=now)
        assert table_takes == (depth <= MAX_METADATA_DEPTH)


class TestRowsWrittenBeforeTheChecks:
    """Rows a database held before the checks existed are kept, in a form readers show."""

    def test_odd_rows_are_kept_and_shown(
        self, empty_database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Non-object metadata goes under "value", too-deep metadata as its text, times clamped."""
        earlier = [m for m in migrations.discover() if m.name < "0005"]  # before the checks
        run_sync(_migrate(empty_database_url, earlier))
        task = new_task(empty_database_url)
        deep = nested(300)
        odd = [
            ("'[1, 2]'", "now()"),
            ("'\"exit 0\"'", "now()"),
            ("'3'", "now()"),
            (literal(deep), "now()"),
            (literal("[" * 64 + "]" * 64), "now()"),  # an array 64 deep: wrapped, it is 65
            ("NULL", "'12000-01-01Z'"),
        ]
        for written, created_at in odd:
            done = psql(empty_database_url, insert(task, metadata=written, created_at=created_at))
            assert done.returncode == 0, done.stderr

        run_sync(_migrate(empty_database_url, None))

        entries = shown(empty_database_url, task, capsys)
        metadata = [entry["metadata"] for entry in entries]
        assert metadata[:5] == [
            {"value": [1, 2]},
            {"value": "exit 0"},
            {"value": 3},
            {"value": json.dumps(json.loads(deep))},
            {"value": "[" * 64 + "]" * 64},
        ]
        assert entries[5]["created_at"] == "9998-12-31T23:59:59.999999Z"
        assert entries[5]["expires_at"] == "9999-12-31T23:59:59.999999Z"
        assert len(exported(empty_database_url, capsys)) == len(odd)
        # Counted from the migrations on: the rows before them are not among the received.
        done = psql(empty_database_url, insert(task, metadata="'{\"after\": true}'"))
        assert done.returncode == 0, done.stderr
        received = psql(empty_database_url, "SELECT received FROM task_build_history_counts")
        assert received.stdout.split() == ["1"]


async def _migrate(url: str, available: list[migrations.Migration] | None) -> None:
    """Apply `available` migrations (all when None) to the database at `url`."""
    async with Store(url) as store:
        await store.migrate(available)
