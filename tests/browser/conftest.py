"""Fixtures for the page's tests: `task-history serve` on a free port, Chromium, demo tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright

from consumer.demo import Assignment, story
from consumer.entries import NewEntry
from consumer.settings import load_settings
from consumer.store import Store
from tests.cluster import free_port
from tests.harness import settings_environment, start_command

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download does not work on these machines: Debian's Chromium, told to
# reach nothing but the page (without these flags it keeps calling out and being refused).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Every timed wait in these tests; generous, since the machine runs other tests too.
WAIT_MS = 15_000


@dataclass
class TimelineServer:
    """`task-history serve` in a process of its own, on a port of its own, its log in a file."""

    database_url: str
    log_path: Path
    token: str | None = None
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def page_url(self, task_id: uuid.UUID | None = None, **query: object) -> str:
        """The timeline page's URL, showing `task_id` at once if given."""
        parameters = {"task": str(task_id)} if task_id is not None else {}
        parameters |= {key: str(value) for key, value in query.items()}
        return f"{self.url}/?" + "&".join(f"{key}={value}" for key, value in parameters.items())

    async def start(self) -> None:
        """Start the server and wait until its health check answers."""
        environment = settings_environment(
            load_settings(database_url=self.database_url, log_format="json", metrics_port=0)
        )
        if self.token is not None:
            environment["TASK_HISTORY_API_TOKEN"] = self.token
        with self.log_path.open("ab") as log:
            self.process = await start_command(
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                environment=environment,
                output=log.fileno(),
            )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    pytest.fail(f"task-history serve exited: {self.log()}", pytrace=False)
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    pytest.fail(f"task-history serve did not answer in 30 s: {self.log()}")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and wait for it to end."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    def log(self) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-2000:]


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[TimelineServer]:
    """The read API and its page on this test's database, no token asked."""
    started = TimelineServer(database_url, tmp_path / "serve.log")
    await started.start()
    yield started
    await started.stop()


TOKEN = "correct-horse-battery-staple"  # noqa: S105  # the tests' own token


@pytest.fixture
async def guarded_server(database_url: str, tmp_path: Path) -> AsyncIterator[TimelineServer]:
    """The read API and its page on this test's database, asking for the bearer token TOKEN."""
    started = TimelineServer(database_url, tmp_path / "serve.log", token=TOKEN)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, with a fresh profile of its own."""
    if not CHROMIUM.exists():  # noqa: ASYNC240  # one stat before anything runs
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS)
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A desktop-sized tab in UTC; fails the test if the script throws or the CSP refuses.

    Anything the page does that the server's Content-Security-Policy refuses counts.
    """
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, timezone_id="UTC", locale="en-GB"
    )
    context.set_default_timeout(WAIT_MS)
    # Each refusal by the policy, as the browser reports it to the page.
    await context.add_init_script(CSP_WATCH)
    opened = await context.new_page()
    thrown: list[str] = []
    refused: list[str] = []
    opened.on("pageerror", lambda error: thrown.append(str(error)))
    opened.on(
        "console",
        lambda message: (
            refused.append(message.text)
            if "Content Security Policy" in message.text or message.text.startswith(CSP_MARK)
            else None
        ),
    )
    yield opened
    if not opened.is_closed():
        with contextlib.suppress(Exception):  # a page gone with its server: its list is lost
            refused.extend(await opened.evaluate("window.cspRefusals || []"))
    await context.close()
    assert not thrown, f"the page's script threw: {thrown}"
    assert not refused, f"the Content-Security-Policy refused: {refused}"


CSP_MARK = "csp refused:"
CSP_WATCH = """
window.cspRefusals = [];
document.addEventListener('securitypolicyviolation', event => {
    const what = `${event.violatedDirective} ${event.blockedURI}`;
    window.cspRefusals.push(what);
    console.error(`csp refused: ${what}`);
});
"""


# Entries of the demo tasks are this far apart, so time filters have room between them.
STEP = timedelta(seconds=10)


def start_of_story(count: int) -> datetime:
    """A whole-second time that leaves room for `count` entries STEP apart before now."""
    return datetime.now(UTC).replace(microsecond=0) - STEP * (count + 6)


async def add_story(
    database_url: str, *, seed: int = 7, start: datetime | None = None
) -> list[NewEntry]:
    """A new task with the demo's story of one agent's work on it, STEP apart; its entries."""
    rng = random.Random(seed)
    work = Assignment("agent-1", uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    events = story(rng, work)
    first = start or start_of_story(len(events))
    entries = [
        NewEntry(
            id=uuid.UUID(event["id"]),
            task_id=work.task_id,
            workspace_id=work.workspace_id,
            session_id=work.session_id,
            context_type=event["context_type"],
            content=event["content"],
            metadata=json.dumps(event["metadata"]),
            created_at=first + STEP * number,
        )
        for number, event in enumerate(events)
    ]
    async with Store(database_url, max_connections=1) as store:
        await store.create_task(work.task_id)
        await store.insert_entries(entries)
    return entries


async def add_entry(  # noqa: PLR0913  # one parameter per column a test varies
    sql: asyncpg.Connection,
    task_id: uuid.UUID,
    *,
    entry_id: uuid.UUID | None = None,
    context_type: str = "agent_turn",
    content: str = "a new turn",
    metadata: dict[str, Any] | None = None,
) -> uuid.UUID:
    """Insert and commit one entry created now, as any SQL client would; return its id."""
    entry_id = entry_id or uuid.uuid4()
    await sql.execute(
        "INSERT INTO task_build_history (id, task_id, context_type, content, metadata, created_at)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, now())",
        entry_id,
        task_id,
        context_type,
        content,
        None if metadata is None else json.dumps(metadata),
    )
    return entry_id


async def shown_ids(page: Page) -> list[str]:
    """The ids of the entries on the timeline, top to bottom."""
    ids: list[str] = await page.locator("#timeline > li").evaluate_all(
        "items => items.map(item => item.dataset.id)"
    )
    return ids


async def wait_for_count(page: Page, count: int) -> None:
    """Wait until the timeline shows exactly `count` entries."""
    await page.wait_for_function(
        "count => document.querySelectorAll('#timeline > li').length === count", arg=count
    )


def ids_of(entries: Sequence[NewEntry]) -> list[str]:
    """The entries' ids as the page shows them."""
    return [str(entry.id) for entry in entries]
