"""The reliability suite's figures: each test records what it injected and what it saw.

They are printed at the end of the run, and written as JSON to the file named by
$TASK_HISTORY_TEST_RELIABILITY_REPORT when it is set (README's Reliability table comes from there).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import asyncpg
import pytest

from tests.harness import stored_twice

REPORT_ENV = "TASK_HISTORY_TEST_RELIABILITY_REPORT"


@dataclass
class Figures:
    """What one reliability test did and found; every count but `faults` and `events` must be 0."""

    test: str
    faults: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_lettered_wrongly: int = 0
    # The longest time without a new stored row from the fault until all was stored, if measured.
    stall_seconds: float | None = None
    # Seconds the test took, as the `figures` fixture saw it (most of setup and teardown too).
    seconds: float = 0.0
    note: str = ""


_recorded: list[Figures] = []


async def check_stored(
    sql: asyncpg.Connection, ids: list[uuid.UUID], figures: Figures, *, dead: int
) -> None:
    """Record and check: every id stored, once; nothing dead-lettered."""
    stored = [row["id"] for row in await sql.fetch("SELECT id FROM task_build_history")]
    figures.events = len(ids)
    figures.lost = len(set(ids) - set(stored))
    figures.duplicated = await stored_twice(sql)
    figures.dead_lettered_wrongly = dead
    assert (figures.lost, figures.duplicated, figures.dead_lettered_wrongly) == (0, 0, 0)
    assert set(stored) == set(ids)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """This test's figures, recorded for the summary once it has run."""
    recorded = Figures(test=request.node.name)
    started = time.monotonic()
    yield recorded
    recorded.seconds = round(time.monotonic() - started, 1)
    _recorded.append(recorded)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures and fault schedules; write the figures as JSON where asked."""
    reports = terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
    for report in reports:
        for name, value in getattr(report, "user_properties", []):
            if name == "schedule":
                terminalreporter.section(f"fault schedule of {report.nodeid}")
                terminalreporter.write_line(str(value))
    if not _recorded:
        return
    terminalreporter.section("reliability figures")
    columns = ["faults", "events", "lost", "dupl.", "wrong DL", "stall s", "test s"]
    terminalreporter.write_line(f"{'test':<58} " + " ".join(f"{c:>8}" for c in columns))
    for row in _recorded:
        stall = "-" if row.stall_seconds is None else f"{row.stall_seconds:.2f}"
        counts = (row.faults, row.events, row.lost, row.duplicated, row.dead_lettered_wrongly)
        cells = [*(f"{n:>8}" for n in counts), f"{stall:>8}", f"{row.seconds:>8.1f}"]
        terminalreporter.write_line(f"{row.test[:58]:<58} " + " ".join(cells) + f"  {row.note}")
    if path := os.environ.get(REPORT_ENV):
        with open(path, "w", encoding="utf-8") as report:  # noqa: PTH123  # a plain report file
            json.dump([asdict(row) for row in _recorded], report, indent=2)
