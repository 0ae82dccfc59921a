"""`task-history export`: JSON Lines, the same filters as show, streamed with bounded memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from consumer.cli import main
from tests.helpers import at, insert_rows, new_task, on_database

NINE_FIELDS = {
    "id", "task_id", "workspace_id", "session_id", "context_type",
    "content", "metadata", "created_at", "expires_at",
}  # fmt: skip
TASKS = 500
PER_TASK = 100  # the cap: 500 tasks hold the 50,000 rows
CONTENT_CHARS = 1000
RSS_LIMIT_MB = 120  # it peaks near 70 MB; reading all rows at once peaked near 195


def environment(database_url: str) -> dict[str, str]:
    """This process's environment, pointed at the test's database."""
    keep = {key: value for key, value in os.environ.items() if not key.startswith("TASK_HISTORY_")}
    return {**keep, "TASK_HISTORY_DATABASE_URL": database_url, "TASK_HISTORY_LOG_FORMAT": "json"}


# Runs `task-history ARGS` and, at exit, writes its own peak RSS (VmHWM, kB) to $PEAK_FILE.
# The kernel's wait4 and getrusage figures won't do: at exec they carry over the peak of the
# process that started it (pytest, hundreds of MB by then), whatever the command itself used.
MEASURED = """
import atexit, os, re, sys
from consumer.cli import main

def record():
    status = open("/proc/self/status").read()
    with open(os.environ["PEAK_FILE"], "w") as peak:
        peak.write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))

atexit.register(record)
sys.exit(main(sys.argv[1:]))
"""


def run_measured(
    args: list[str], env: dict[str, str], peak_file: Path
) -> tuple[int, str, str, int]:
    """Run `task-history ARGS` to its end: exit code, stdout, stderr, its own peak RSS in kB."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, *args],
        env={**env, "PEAK_FILE": str(peak_file)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, int(peak_file.read_text())


class TestExportCommand:
    """What export writes, and how much memory it takes to write it."""

    async def test_fifty_thousand_rows_with_bounded_memory(
        self, database_url: str, sql: asyncpg.Connection, tmp_path: Path
    ) -> None:
        """50,000 entries (55 MB of JSON) export in order, the peak RSS well under 200 MB."""
        await sql.execute(
            "INSERT INTO tasks (id) SELECT gen_random_uuid() FROM generate_series(1, $1)", TASKS
        )
        # One statement: every task gets its 100 rows, with distinct times and 1 kB of content.
        await sql.execute(
            """
            INSERT INTO task_build_history (task_id, context_type, content, metadata, created_at)
            SELECT t.id, 'execution_step', n || ' ' || repeat('x', $2), jsonb_build_object('n', n),
                   now() - interval '1 day' + n * interval '1 ms'
            FROM tasks AS t CROSS JOIN generate_series(1, $1) AS n
            """,
            PER_TASK,
            CONTENT_CHARS,
        )
        output = tmp_path / "history.jsonl"
        code, out, err, peak_kb = await asyncio.to_thread(
            run_measured,
            ["export", "--output", str(output)],
            environment(database_url),
            tmp_path / "peak",
        )
        assert code == 0, err
        assert out == f"exported {TASKS * PER_TASK} entries to {output}\n"
        peak_mb = peak_kb / 1024
        assert peak_mb < RSS_LIMIT_MB, f"export peaked at {peak_mb:.0f} MB"

        count = 0
        ids = set()
        previous = ""
        with output.open() as lines:
            for line in lines:
                entry = json.loads(line)
                count += 1
                ids.add(entry["id"])
                assert entry["created_at"] >= previous  # all UTC, so text order is time order
                previous = entry["created_at"]
        assert count == len(ids) == TASKS * PER_TASK
        assert set(entry) == NINE_FIELDS
        assert len(entry["content"]) > CONTENT_CHARS

    def test_one_task_to_stdout_with_filters(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--task and --type select entries; stdout gets exactly the JSON lines."""

        async def seed(connection: asyncpg.Connection) -> tuple[uuid.UUID, list[uuid.UUID]]:
            task, other = await new_task(connection), await new_task(connection)
            ids = await insert_rows(connection, [(task, at(n)) for n in range(3)])
            await insert_rows(connection, [(other, at(n)) for n in range(3)])
            await connection.execute(
                "INSERT INTO task_build_history (task_id, context_type, content)"
                " VALUES ($1, 'error', 'not an agent turn')",
                task,
            )
            return task, ids

        task, ids = on_database(database_url, seed)
        argv = ["--database-url", database_url, "export", "--task", str(task)]
        assert main([*argv, "--type", "agent_turn"]) == 0
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in captured.out.splitlines()]
        assert [uuid.UUID(line["id"]) for line in lines] == ids
        assert set(lines[0]) == NINE_FIELDS
        assert captured.err == ""
        assert main([*argv, "--newest-first", "--limit", "2"]) == 0
        newest = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["content"] for line in newest] == ["not an agent turn", "row 3"]


class TestOutputThatCantBeWritten:
    """`export | head -1` and `export -o /dev/full`, on a table larger than a pipe holds."""

    @pytest.fixture
    async def filled(self, database_url: str, sql: asyncpg.Connection) -> str:
        """The test's database, holding 2,000 entries of 200 characters (400 kB of JSON)."""
        await sql.execute(
            "INSERT INTO tasks (id) SELECT gen_random_uuid() FROM generate_series(1, 20)"
        )
        await sql.execute(
            """
            INSERT INTO task_build_history (task_id, context_type, content)
            SELECT t.id, 'agent_turn', repeat('y', 200)
            FROM tasks AS t CROSS JOIN generate_series(1, 100)
            """
        )
        return database_url

    def test_a_reader_that_goes_away_ends_it_141_and_silent(self, filled: str) -> None:
        """Ten times: the exit status of a program SIGPIPE ends, never 0 or 1, nothing on stderr."""
        for _ in range(10):
            shell = f"{sys.executable} -m consumer export | head -1 >/dev/null"
            done = subprocess.run(
                ["/bin/bash", "-c", shell + "; echo ${PIPESTATUS[0]} >&2"],
                env=environment(filled),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.stderr == "141\n"

    def test_a_full_disk_names_the_file(
        self, filled: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`-o /dev/full`: one line saying which file can't be written and why, exit 1."""
        assert main(["--database-url", filled, "export", "-o", "/dev/full"]) == 1
        captured = capsys.readouterr()
        assert captured.err == (
            "task-history: error: can't write /dev/full: No space left on device\n"
        )
