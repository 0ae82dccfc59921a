"""Ctrl-C and SIGTERM the moment a command says it waits: each ends the documented way, every try.

A command that announces it is waiting (a line, a URL, a question) must already handle both
signals when it says so: a user reacts to what is on the screen. Each test signals 20 fresh
processes, alternating SIGINT and SIGTERM, as soon as the announcement is read, several at
once so that the processes also race each other for the two cores.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.harness import REPOSITORY, settings_environment
from tests.letters import Screen, bury, letter, rows

TRIES = 20
AT_ONCE = 4
# Bounds for a loaded machine, not the expected delays: a try takes about a second.
ANNOUNCED_WITHIN = 60
ENDED_WITHIN = 30


@dataclass(frozen=True)
class Ending:
    """How one process ended after its signal: exit code and everything it wrote."""

    signal: signal.Signals
    code: int
    output: str


def environment(env: Env, **extra: str) -> dict[str, str]:
    """The test's settings as variables, with `extra` ones."""
    return settings_environment(env.settings) | extra


async def signalled_after(
    args: list[str], announcement: str, number: signal.Signals, environment: dict[str, str]
) -> Ending:
    """Start `task-history ARGS`, signal it as soon as a line holds `announcement`; its ending."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        cwd=REPOSITORY,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen = ""
    try:
        async with asyncio.timeout(ANNOUNCED_WITHIN):
            while announcement not in seen:
                line = await process.stdout.readline()
                if not line:
                    break  # it ended on its own: the assertions below say how
                seen += line.decode(errors="replace")
        if announcement in seen:
            process.send_signal(number)
        async with asyncio.timeout(ENDED_WITHIN):
            rest, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ending(number, process.returncode, seen + rest.decode(errors="replace"))


async def signalled_at_a_question(
    args: list[str], question: str, number: signal.Signals, environment: dict[str, str]
) -> Ending:
    """`task-history ARGS` on a terminal, signalled as soon as `question` is on the screen."""
    terminal, child_side = os.openpty()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", *args),
        cwd=REPOSITORY,
        env=environment,
        stdin=child_side,
        stdout=child_side,
        stderr=child_side,
    )
    os.close(child_side)
    screen = Screen(terminal)
    written = asyncio.Event()
    asyncio.get_running_loop().add_reader(terminal, written.set)
    try:
        async with asyncio.timeout(ANNOUNCED_WITHIN):
            while question not in await screen.read() and process.returncode is None:
                written.clear()
                await written.wait()
        if question in screen.text:
            process.send_signal(number)
        try:
            async with asyncio.timeout(ENDED_WITHIN):
                await process.wait()
        except TimeoutError:
            shown = await screen.read()
            raise AssertionError(f"{number.name}: still running, showing {shown!r}") from None
        output = await screen.read()
    finally:
        asyncio.get_running_loop().remove_reader(terminal)
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(terminal)
    assert process.returncode is not None
    return Ending(number, process.returncode, output)


async def tries(attempt: Callable[[signal.Signals], Awaitable[Ending]]) -> list[Ending]:
    """TRIES attempts, SIGINT and SIGTERM in turn, AT_ONCE at a time."""
    numbers = [signal.SIGINT if n % 2 == 0 else signal.SIGTERM for n in range(TRIES)]
    limit = asyncio.Semaphore(AT_ONCE)

    async def one(number: signal.Signals) -> Ending:
        async with limit:
            return await attempt(number)

    return list(await asyncio.gather(*(one(number) for number in numbers)))


def wrong(endings: list[Ending], *, code: int, last_line: str | None = None) -> list[str]:
    """A line for every ending that is not exit `code` (ending with `last_line`), no traceback."""
    found = []
    for ending in endings:
        lines = ending.output.strip().splitlines()
        if (
            ending.code != code
            or "Traceback" in ending.output
            or "task-history: error" in ending.output
            or (last_line is not None and (not lines or not lines[-1].endswith(last_line)))
        ):
            found.append(f"{ending.signal.name}: exit {ending.code}\n{ending.output}")
    return found


class TestLongRunningCommandsStopCleanly:
    """tail, consume, serve, demo and up, signalled as they announce themselves: exit 0."""

    async def test_tail_when_it_says_it_waits(self, env: Env) -> None:
        """`tail` prints "waiting for entries": a signal then ends it with exit 0."""
        task = uuid.uuid4()
        await env.sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
        endings = await tries(
            lambda number: signalled_after(
                ["tail", str(task)], "waiting for entries", number, environment(env)
            )
        )
        assert not wrong(endings, code=0), "\n".join(wrong(endings, code=0))

    async def test_consume_when_it_says_it_consumes(self, env: Env) -> None:
        """`consume` logs "consuming": a signal then stops it with exit 0 and "stopped"."""
        endings = await tries(
            lambda number: signalled_after(["consume"], '"consuming"', number, environment(env))
        )
        assert not wrong(endings, code=0), "\n".join(wrong(endings, code=0))
        assert all('"stopped"' in ending.output for ending in endings)

    async def test_serve_when_it_prints_its_url(self, env: Env) -> None:
        """`serve` prints "serving on URL": a signal then stops it with exit 0."""
        endings = await tries(
            lambda number: signalled_after(
                ["serve", "--port", "0"], "serving on http://", number, environment(env)
            )
        )
        assert not wrong(endings, code=0), "\n".join(wrong(endings, code=0))

    async def test_demo_when_it_says_it_publishes(self, env: Env) -> None:
        """`demo` says "publishing from N agents": a signal then ends it, counting what it sent."""
        endings = await tries(
            lambda number: signalled_after(
                ["demo", "--rate", "1000"], "(Ctrl-C to stop)", number, environment(env)
            )
        )
        found = wrong(endings, code=0)
        assert not found, "\n".join(found)
        assert all("published " in ending.output for ending in endings)

    async def test_up_when_it_says_to_open_the_page(self, env: Env) -> None:
        """`up --demo` prints "open URL/ ... (Ctrl-C to stop)": a signal then stops it all, 0."""
        endings = await tries(
            lambda number: signalled_after(
                ["up", "--demo", "--port", "0"], "(Ctrl-C to stop)", number, environment(env)
            )
        )
        found = wrong(endings, code=0)
        assert not found, "\n".join(found)
        assert all('"stopped"' in ending.output for ending in endings)


class TestQuestionsAreAnswered:
    """A signal at purge's question is a "no": nothing deleted, exit 1, one line saying so."""

    async def test_purge_question(self, env: Env, tmp_path: Path) -> None:
        """SIGINT (Ctrl-C) or SIGTERM at "[y/N]": "purge cancelled: nothing deleted"."""
        await bury(env.database_url, [letter(n, code="invalid_json") for n in range(3)])
        endings = await tries(
            lambda number: signalled_at_a_question(
                ["dlq", "purge", "--error", "invalid_json"],
                "[y/N]",
                number,
                environment(env, HOME=str(tmp_path)),
            )
        )
        found = wrong(endings, code=1, last_line="purge cancelled: nothing deleted")
        assert not found, "\n".join(found)
        assert len(await rows(env.sql)) == 3


class TestChildrenGetDefaultSignals:
    """Processes the suite starts have SIGINT and SIGTERM at their defaults, however it started."""

    @pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
    async def test_not_ignored_in_a_child(self, number: signal.Signals) -> None:
        """A child's SigIgn (in /proc) has neither signal, even with pytest under `trap "" INT`."""
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", "grep '^SigIgn:' /proc/$$/status", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        ignored = int(out.split()[1], 16)
        assert not ignored & (1 << (number - 1)), out
