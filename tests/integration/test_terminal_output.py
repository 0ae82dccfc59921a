"""What the operator's terminal receives from hostile data: judged on a real pseudo-terminal.

A publisher writes content, message ids, routing keys and forged `x-error` headers; each
command that shows them runs with its output on a pseudo-terminal (as in a terminal window,
TERM=xterm-256color, 200 columns), and the bytes it wrote are checked: no sequence from the data
reaches the terminal, each is shown escaped, and rich markup in the data is text.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import struct
import sys
import termios
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from consumer.deadletters import DeadLetter
from consumer.settings import Settings
from tests.conftest import Env
from tests.harness import REPOSITORY, Bus, running, settings_environment, wait_for
from tests.helpers import new_task
from tests.letters import NOW, Screen, bury

# What a publisher may write, and how it must look on the screen.
PAYLOADS = {
    "clear": ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    "title": ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
    "link": (
        "\x1b]8;;http://evil.example/\x1b\\innocent\x1b]8;;\x1b\\",
        "\\x1b]8;;http://evil.example/\\x1b\\\\innocent\\x1b]8;;\\x1b\\\\",
    ),
    "overwrite": ("all good\rEVIL", "all good\\x0dEVIL"),
    "c1": ("\x9b2J", "\\x9b2J"),
    "bidi": ("invoice\u202egnp.exe", "invoice\\u202egnp.exe"),
    "smuggled": ("see\U000e0049\U000e0047", "see\\U000e0049\\U000e0047"),
    "erase": ("abc\x08\x08\x08\x7fxyz", "abc\\x08\\x08\\x08\\x7fxyz"),
    "markup-link": (
        "[link=http://evil.example/]innocent text[/link]",
        "[link=http://evil.example/]innocent text[/link]",
    ),
    "markup-close": ("closing tag [/bold] here", "closing tag [/bold] here"),
    "emoji-code": ("a :skull: b", "a :skull: b"),
}
# The programs' own sequences are allowed: rich's colours and bold, its progress bar (hide and
# show the cursor, erase the line, move up), the erasing of tail's "waiting" line. Nothing
# else may start with ESC.
STYLING = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]|\r(?=\x1b\[)|\x1b\[2?K|\x1b\[[0-9]*A")
NEVER = ("\x1b", "\x07", "\x9b", "\u202e", "\U000e0049", "\x08", "\x7f", "\r")


def terminal_pair() -> tuple[int, int]:
    """A pseudo-terminal 200 columns wide: (our side, the program's side)."""
    ours, theirs = os.openpty()
    fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    return ours, theirs


async def on_terminal(
    settings: Settings,
    *args: str,
    until: Callable[[str], bool] | None = None,
) -> tuple[int, str]:
    """Run `task-history ARGS` with stdout and stderr on a pseudo-terminal; (exit code, screen).

    With `until`, the program is sent SIGINT (Ctrl-C) once what it wrote satisfies it.
    """
    ours, theirs = terminal_pair()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", *args),
        cwd=REPOSITORY,
        env=settings_environment(settings) | {"TERM": "xterm-256color", "COLUMNS": "200"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=theirs,
        stderr=theirs,
    )
    os.close(theirs)
    screen = Screen(ours)
    try:
        if until is not None:
            await wait_for(screen.read, until, what=f"{args[0]} to show the entries")
            process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 60)
        await asyncio.sleep(0.1)  # what it wrote last is still on its way through the terminal
        return code, (await screen.read()).replace("\r\n", "\n")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(ours)


def assert_inert(screen: str, *, shown: list[str]) -> None:
    """Nothing from the data acts on the terminal; each of `shown` is on the screen as text."""
    plain = STYLING.sub("", screen)
    for character in NEVER:
        assert character not in plain, (character, plain)
    for text in shown:
        assert text in plain, (text, plain)


async def add_payload_entries(sql: asyncpg.Connection, task: uuid.UUID) -> None:
    """One entry per payload, as any writer of the table may store them."""
    for number, (_name, (content, _shown)) in enumerate(PAYLOADS.items()):
        await sql.execute(
            "INSERT INTO task_build_history (task_id, context_type, content, created_at)"
            " VALUES ($1, 'agent_turn', $2, now() + make_interval(secs => $3))",
            task,
            content,
            float(number) / 1000,
        )


EXPECTED = [shown for _content, shown in PAYLOADS.values()]


class TestHistory:
    """`show`, `tail` and `publish --wait` on entries whose content attacks the terminal."""

    async def test_show(self, settings: Settings, sql: asyncpg.Connection) -> None:
        """The table shows every payload escaped, the markup as text; exit 0."""
        task = await new_task(sql)
        await add_payload_entries(sql, task)
        code, screen = await on_terminal(settings, "show", str(task))
        assert code == 0, screen
        assert_inert(screen, shown=EXPECTED)
        assert "MarkupError" not in screen
        assert "💀" not in screen
        assert "┏━" in screen  # a table, on a terminal

    async def test_show_json(self, settings: Settings, sql: asyncpg.Connection) -> None:
        """--json on a terminal: JSON escapes, nothing raw."""
        task = await new_task(sql)
        await add_payload_entries(sql, task)
        code, screen = await on_terminal(settings, "show", str(task), "--json")
        assert code == 0, screen
        assert_inert(screen, shown=["\\u001b]0;owned\\u0007", "invoice\\u202egnp.exe"])

    async def test_tail(self, settings: Settings, sql: asyncpg.Connection) -> None:
        """`tail --from-start` prints each payload escaped on its own line."""
        task = await new_task(sql)
        await add_payload_entries(sql, task)
        last = PAYLOADS["emoji-code"][1]
        code, screen = await on_terminal(
            settings, "tail", str(task), "--from-start", until=lambda text: last in text
        )
        assert code == 0, screen
        assert_inert(screen, shown=EXPECTED)
        lines = [line for line in screen.splitlines() if "agent_turn" in line]
        assert len(lines) == len(PAYLOADS)

    async def test_publish_wait(self, settings: Settings) -> None:
        """`publish --wait` prints the stored entry inert."""
        content, shown = PAYLOADS["title"][0] + PAYLOADS["bidi"][0], None
        shown = PAYLOADS["title"][1] + PAYLOADS["bidi"][1]
        async with running(settings):
            code, screen = await on_terminal(
                settings,
                *("publish", "--create-task", "--wait", "--task", str(uuid.uuid4())),
                *("--type", "error", "--content", content),
            )
        assert code == 0, screen
        assert_inert(screen, shown=[f"error           {shown}"])


def hostile_letter(number: int, task: uuid.UUID) -> DeadLetter:
    """A dead letter whose every field a publisher chose: id, routing key, code and detail."""
    code = f"\x1b[2Jforged{number}"
    detail = f"\u202e[link=http://evil.example/]x[/link] \x1b]0;owned\x07 {number}"
    return DeadLetter(
        message_id=f"m{number}\x1b]8;;http://evil.example/\x1b\\",
        task_id=str(task),
        routing_key=f"\x1b]0;owned\x07.nowhere.{number}",
        code=code,
        detail=detail,
        failed_at=NOW,
        replay_count=0,
        headers={"x-error": code, "x-error-detail": detail, "x-\x1b[2J": "\x9b2J\u202e"},
        properties={"content_type": "application/json", "message_id": f"m{number}\x1b[2J"},
        body=b'{"content": "\x1b[2J\xc2\x9b\xe2\x80\xae"}',
    )


LETTER_SHOWN = [
    "\\x1b[2Jforged1",
    "m1\\x1b]8;;http://evil.example/\\x1b\\\\",
    "\\x1b]0;owned\\x07.nowhere.1",
    "\\u202e[link=http://evil.example/]x[/link]",
]


@pytest.fixture
async def buried(env: Env) -> list[DeadLetter]:
    """Three hostile dead letters in this test's database."""
    task = uuid.uuid4()
    letters = [hostile_letter(number, task) for number in range(1, 4)]
    await bury(env.database_url, letters)
    return letters


class TestDeadLetters:
    """`dlq list`, `dlq show`, and the samples `replay` and `purge` print, on forged letters."""

    async def test_list(self, env: Env, buried: list[DeadLetter]) -> None:
        """The census: forged codes, ids, routing keys and details all escaped."""
        code, screen = await on_terminal(env.settings, "dlq", "list")
        assert code == 0, screen
        assert_inert(screen, shown=LETTER_SHOWN)
        assert len(buried) == 3

    async def test_list_json(self, env: Env, buried: list[DeadLetter]) -> None:
        """`dlq list --json` on a terminal: JSON escapes only."""
        code, screen = await on_terminal(env.settings, "dlq", "list", "--json")
        assert code == 0, screen
        assert_inert(screen, shown=["\\u001b[2Jforged1", "\\u202e[link="])
        assert len(buried) == 3

    async def test_show(self, env: Env, buried: list[DeadLetter]) -> None:
        """`dlq show`: headers, properties and body, C1 and bidi characters escaped too."""
        code, screen = await on_terminal(env.settings, "dlq", "show", "1")
        assert code == 0, screen
        assert_inert(screen, shown=["\\u009b2J\\u202e", "\\u001b[2Jforged1"])
        assert len(buried) == 3

    async def test_replay_and_purge_samples(
        self, env: Env, bus: Bus, buried: list[DeadLetter]
    ) -> None:
        """The dry runs' samples and a replay's "left" lines for unroutable letters."""
        for args in (
            ("dlq", "replay", "--dry-run"),
            ("dlq", "purge", "--all", "--dry-run"),
        ):
            code, screen = await on_terminal(env.settings, *args)
            assert code == 0, screen
            assert_inert(screen, shown=LETTER_SHOWN)
        assert await bus.depth(env.topology.queue) == 0
        code, screen = await on_terminal(env.settings, "dlq", "replay")
        assert code == 1, screen  # the routing keys reach no queue: the letters stay
        assert screen.count("left #") == len(buried)
        assert_inert(screen, shown=["unroutable 3"])


@pytest.fixture
async def bus(env: Env) -> AsyncIterator[Bus]:
    """A connection to this test's topology."""
    async with Bus(env.amqp_url, env.topology) as connected:
        yield connected
