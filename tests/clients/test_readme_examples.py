"""The publishing guide's examples, run as they are: Node's amqplib and HistoryPublisher.

Each is taken from docs/publishing.md (the first ```js / ```python block under its heading),
written to a file and run against the real broker with a consumer running: the event is stored.
Then the ways a publish fails: each must end the program with exit 1 and one line on stderr.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from consumer.settings import Settings
from consumer.topology import Topology
from tests.harness import running, wait_for
from tests.helpers import new_task
from tests.vhosts import empty_vhost, vhost_of

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "publishing.md"
PYTHON_HEADING = "## From Python: `HistoryPublisher`"
NODE_HEADING = "## From other languages: plain AMQP 0-9-1"
RUN_SECONDS = 60


def guide_example(heading: str, language: str) -> str:
    """The first ```language block of the guide's section under `heading`; fails if none."""
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    if heading not in lines:
        pytest.fail(f"docs/publishing.md has no heading {heading!r}: where did the example go?")
    start = lines.index(heading) + 1
    section: list[str] = []
    for line in lines[start:]:
        if re.match(r"#{1,2} ", line):  # the next heading of this level or above
            break
        section.append(line)
    try:
        opening = section.index(f"```{language}")
        closing = section.index("```", opening + 1)
    except ValueError:
        pytest.fail(f"docs/publishing.md has no ```{language} block under {heading!r}")
    return "\n".join(section[opening + 1 : closing]) + "\n"


@dataclass(frozen=True)
class Example:
    """One example of the publishing guide, ready to run."""

    language: str
    command: list[str]
    cwd: Path

    async def run(self, *, url: str, exchange: str, task_id: uuid.UUID) -> tuple[int, str, str]:
        """Run it to its end; (exit code, stdout, stderr)."""
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("TASK_")
        }
        environment |= {
            "TASK_HISTORY_AMQP_URL": url,
            "TASK_HISTORY_EXCHANGE": exchange,
            "TASK_ID": str(task_id),
        }
        process = await asyncio.create_subprocess_exec(
            *self.command,
            cwd=self.cwd,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), RUN_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"the guide's {self.language} example still ran after {RUN_SECONDS} s")
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


@pytest.fixture(params=["node", "python"])
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Example]:
    """The guide's Node example (an ES module, finding tests/node's amqplib), or its Python one."""
    if request.param == "python":
        script = tmp_path / "publish.py"
        script.write_text(guide_example(PYTHON_HEADING, "python"), encoding="utf-8")
        yield Example("Python", [sys.executable, str(script)], tmp_path)
        return
    node_dir: Path = request.getfixturevalue("node_dir")
    # An ES module finds packages in the node_modules beside it or above it, wherever it runs.
    (tmp_path / "node_modules").symlink_to(node_dir / "node_modules", target_is_directory=True)
    script = tmp_path / "publish.mjs"
    script.write_text(guide_example(NODE_HEADING, "js"), encoding="utf-8")
    yield Example("Node", ["node", str(script)], node_dir)


def assert_one_line_failure(code: int, out: str, err: str, *expected: str) -> str:
    """Exit 1, nothing published on stdout, and one line on stderr holding each of `expected`."""
    assert code == 1, (out, err)
    assert "published" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    (line,) = lines
    assert line.startswith("not published: "), line
    for text in expected:
        assert text in line, line
    assert "Traceback" not in err
    return line


class TestTheExamplesPublish:
    """With the topology declared and a consumer running, the example's event is stored."""

    async def test_the_event_is_stored(
        self,
        example: Example,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
    ) -> None:
        """Exit 0, `published <id>` on stdout, and that id is a row of the task's history."""
        task = await new_task(sql)
        async with running(settings):
            code, out, err = await example.run(
                url=amqp_url, exchange=topology.exchange, task_id=task
            )
            assert (code, err) == (0, ""), out
            match = re.fullmatch(r"published ([0-9a-f-]{36})\n", out)
            assert match is not None, out
            event_id = uuid.UUID(match.group(1))

            async def stored() -> list[asyncpg.Record]:
                return list(
                    await sql.fetch(
                        "SELECT task_id, context_type, content FROM task_build_history"
                        " WHERE id = $1",
                        event_id,
                    )
                )

            (row,) = await wait_for(stored, bool, what=f"event {event_id} to be stored")
        assert (row["task_id"], row["context_type"], row["content"]) == (
            task,
            "agent_turn",
            "planned the fix",
        )


class TestTheExamplesFailClearly:
    """Every way a publish fails ends the example with exit 1 and one readable line."""

    async def test_a_broker_where_migrate_never_ran(self, example: Example, amqp_url: str) -> None:
        """No exchange in the vhost: the broker closes the channel with 404."""
        with empty_vhost(amqp_url) as url:
            code, out, err = await example.run(
                url=url, exchange="task_build_history", task_id=uuid.uuid4()
            )
        assert_one_line_failure(
            code,
            out,
            err,
            f"no exchange 'task_build_history' in vhost '{vhost_of(url)}'",
            "run `task-history migrate` on this broker",
        )

    async def test_a_wrong_exchange_name(self, example: Example, amqp_url: str) -> None:
        """A typo in the exchange name: the same 404, naming the name given."""
        name = f"task_build_histroy_{uuid.uuid4().hex[:8]}"
        code, out, err = await example.run(url=amqp_url, exchange=name, task_id=uuid.uuid4())
        assert_one_line_failure(code, out, err, f"no exchange '{name}'", "task-history migrate")

    async def test_a_broker_that_is_not_there(self, example: Example) -> None:
        """Nothing listens at the URL's port: one line, not a second one from the client's log."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # bound, never listening: refused
            url = f"amqp://guest:guest@127.0.0.1:{port}/"
            code, out, err = await example.run(url=url, exchange="x", task_id=uuid.uuid4())
        assert_one_line_failure(code, out, err)

    async def test_a_return_is_a_failure(
        self, example: Example, amqp_url: str, unbound_exchange: str
    ) -> None:
        """The exchange exists, no queue is bound: the broker returns the message."""
        code, out, err = await example.run(
            url=amqp_url, exchange=unbound_exchange, task_id=uuid.uuid4()
        )
        assert_one_line_failure(
            code, out, err, "NO_ROUTE", "no queue is bound for routing key", unbound_exchange
        )

    async def test_the_dead_letter_exchange_refuses_it(
        self, example: Example, amqp_url: str, topology: Topology
    ) -> None:
        """Publishing to the dlx by mistake: 403, and nothing lands among the dead letters."""
        code, out, err = await example.run(
            url=amqp_url, exchange=topology.dead_letter_exchange, task_id=uuid.uuid4()
        )
        assert_one_line_failure(
            code,
            out,
            err,
            "ACCESS_REFUSED",
            f"cannot publish to internal exchange '{topology.dead_letter_exchange}'",
        )
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            dead = await channel.declare_queue(topology.dead_letter_queue, passive=True)
            assert dead.declaration_result.message_count == 0
        finally:
            await connection.close()
