"""The timeline page in Debian's Chromium, against `task-history serve` on a test database."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import pytest
from playwright.async_api import Page, Route, expect

from tests.browser.conftest import (
    STEP,
    TOKEN,
    WAIT_MS,
    TimelineServer,
    add_entry,
    add_story,
    ids_of,
    shown_ids,
    start_of_story,
    wait_for_count,
)
from tests.conftest import Env
from tests.harness import REPOSITORY, Bus, event, running
from tests.helpers import new_task

# The picture docs/reading.md shows; rewritten only when asked, so a test run leaves the
# checkout as it found it:
#   TASK_HISTORY_TEST_UPDATE_SCREENSHOT=1 .venv/bin/pytest tests/browser -k screenshot
SCREENSHOT = REPOSITORY / "docs" / "images" / "timeline.png"
UPDATE_SCREENSHOT_ENV = "TASK_HISTORY_TEST_UPDATE_SCREENSHOT"
# The page's promise: an entry stored while it is open shows within a second.
LIVE_BOUND_MS = 1000

# Records, in the page, when an entry with a given id first shows on the timeline.
WATCH_FOR = """
id => {
    window.seenAt = window.seenAt || {};
    const look = () => {
        if (!(id in window.seenAt) && document.querySelector(`#timeline > li[data-id="${id}"]`)) {
            window.seenAt[id] = Date.now();
        }
    };
    new MutationObserver(look).observe(document.getElementById('timeline'), {childList: true});
    look();
}
"""


async def wait_until_live(page: Page) -> None:
    """Wait until the page says it follows new entries."""
    await expect(page.locator("#live")).to_have_attribute("data-tone", "on", timeout=WAIT_MS)


async def time_to_show(page: Page, entry_id: uuid.UUID, write: Awaitable[object]) -> float:
    """Milliseconds from just before `write` starts until entry `entry_id` shows on the page.

    The page notes the moment the entry's item enters the timeline; both clocks are this
    machine's. Taken before the write starts, the delay measured is never too short.
    """
    await page.evaluate(WATCH_FOR, str(entry_id))
    started = time.time() * 1000
    await write
    await page.wait_for_function(
        "id => window.seenAt && id in window.seenAt", arg=str(entry_id), timeout=WAIT_MS
    )
    seen_at: float = await page.evaluate("id => window.seenAt[id]", str(entry_id))
    return seen_at - started


def record(request: pytest.FixtureRequest, what: str, delays: list[float]) -> None:
    """Keep the delays' median and maximum as the test's figure in the CI log."""
    figure = (
        f"{what}: median {statistics.median(delays):.0f} ms, max {max(delays):.0f} ms"
        f" over {len(delays)} entries"
    )
    request.node.user_properties.append(("summary", figure))


class TestShowsTheHistory:
    """A task's entries, all of them, oldest first, as text."""

    async def test_a_tasks_entries_show_oldest_first(
        self, server: TimelineServer, page: Page
    ) -> None:
        """Every entry of the task shows once, in created_at order, with its kind and text."""
        entries = await add_story(server.database_url)
        other = await add_story(server.database_url, seed=8)  # another task's: never shown
        await page.goto(server.page_url(entries[0].task_id, limit=100))
        await wait_for_count(page, len(entries))
        assert await shown_ids(page) == ids_of(entries)
        assert not set(await shown_ids(page)) & set(ids_of(other))
        contents = await page.locator("#timeline > li .content").all_inner_texts()
        assert contents == [entry.content for entry in entries]
        kinds = await page.locator("#timeline > li").evaluate_all(
            "items => items.map(item => item.dataset.type)"
        )
        assert kinds == [entry.context_type for entry in entries]
        await expect(page.locator("#shown")).to_have_text(f"({len(entries)} shown)")

    async def test_nothing_loads_from_elsewhere(self, server: TimelineServer, page: Page) -> None:
        """Every request the page makes, its own files included, goes to the server it came from."""
        entries = await add_story(server.database_url)
        requested: list[str] = []
        page.on("request", lambda sent: requested.append(sent.url))
        await page.goto(server.page_url(entries[0].task_id))
        await wait_for_count(page, len(entries))
        await wait_until_live(page)
        assert requested
        elsewhere = [url for url in requested if not url.startswith((f"{server.url}/", "data:"))]
        assert not elsewhere

    async def test_older_pages_load_with_the_cursor(
        self, server: TimelineServer, page: Page
    ) -> None:
        """With a page size of 5 the newest 5 show; Load older adds page after page, in place."""
        entries = await add_story(server.database_url)
        await page.goto(server.page_url(entries[0].task_id, limit=5))
        older = page.get_by_role("button", name="Load older entries")
        for shown in range(5, len(entries), 5):
            await wait_for_count(page, shown)
            assert await shown_ids(page) == ids_of(entries[-shown:])
            await older.click()
        await wait_for_count(page, len(entries))
        await expect(older).to_be_hidden()
        assert await shown_ids(page) == ids_of(entries), "pages joined in order, none twice"

    async def test_content_and_metadata_show_as_text(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Markup in content is shown as written, never run; metadata opens from a summary."""
        task_id = await new_task(sql)
        markup = '<img src=x onerror="window.pwned=1"><b>bold?</b>'
        entry_id = await add_entry(
            sql, task_id, content=markup, metadata={"tool": "pytest", "note": "<i>x</i>"}
        )
        await page.goto(server.page_url(task_id))
        item = page.locator(f'#timeline > li[data-id="{entry_id}"]')
        await expect(item.locator(".content")).to_have_text(markup)
        assert await item.locator(".content img, .content b").count() == 0
        assert await page.evaluate("window.pwned") is None
        metadata = item.locator(".metadata")
        await expect(metadata).to_be_hidden()
        await item.get_by_text("Metadata (2 fields)").click()
        await expect(metadata).to_be_visible()
        assert json.loads(await metadata.inner_text()) == {"tool": "pytest", "note": "<i>x</i>"}

    async def test_loading_shows_until_the_server_answers(
        self, server: TimelineServer, page: Page
    ) -> None:
        """While the first page is on its way the page says Loading, then shows the entries."""
        entries = await add_story(server.database_url)
        held = asyncio.Event()

        async def hold(route: Route) -> None:
            await held.wait()
            await route.continue_()

        await page.route("**/history?*", hold)
        await page.goto(server.page_url(entries[0].task_id))
        await expect(page.locator("#state")).to_have_text("Loading…")
        held.set()
        await wait_for_count(page, len(entries))
        await expect(page.locator("#state")).to_be_hidden()

    async def test_a_task_without_entries_says_so(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """A task with no entries yet says so; its first entry, once stored, replaces the words."""
        # The API answers an unknown task with an empty page too: the words fit both.
        task_id = await new_task(sql)
        await page.goto(server.page_url(task_id))
        await expect(page.locator("#state")).to_contain_text("No entries for this task yet")
        await wait_until_live(page)
        await add_entry(sql, task_id, content="the first one")
        await wait_for_count(page, 1)
        await expect(page.locator("#state")).to_be_hidden()

    async def test_not_a_task_id_is_explained(self, server: TimelineServer, page: Page) -> None:
        """Text that is no UUID is refused on the page, with an example of a task id."""
        await page.goto(server.page_url())
        await page.get_by_label("Task id").fill("build-42")
        await page.get_by_label("Task id").press("Enter")
        await expect(page.locator("#state")).to_contain_text("is not a task id")


# What an attacker publishes as content or metadata, or puts in a link to the page.
XSS_PAYLOADS = (
    "<script>window.pwned=1</script>",
    '<img src=x onerror="window.pwned=1">',
    '<svg onload="window.pwned=1"></svg>',
    '"><script>window.pwned=1</script>',
    "javascript:window.pwned=1",
    '<iframe src="javascript:window.pwned=1"></iframe>',
    '<a href="javascript:window.pwned=1">click</a>',
    "</pre><script>window.pwned=1</script>",
    "{{constructor.constructor('window.pwned=1')()}}",
    "<style>@import 'http://evil.example/x.css';</style>",
)
ACTIVE = "#timeline script, #timeline img, #timeline svg, #timeline iframe, #timeline style"


class TestHostileContent:
    """Stored and reflected script payloads are text on the page; nothing runs or loads."""

    async def test_stored_payloads_in_content_and_metadata(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Each payload as content and as a metadata value shows as written; none runs."""
        task_id = await new_task(sql)
        for payload in XSS_PAYLOADS:
            await add_entry(sql, task_id, content=payload, metadata={"note": payload})
        requested: list[str] = []
        page.on("request", lambda sent: requested.append(sent.url))
        await page.goto(server.page_url(task_id))
        await wait_for_count(page, len(XSS_PAYLOADS))
        contents = await page.locator("#timeline > li .content").all_inner_texts()
        assert sorted(contents) == sorted(XSS_PAYLOADS)
        for details in await page.locator("#timeline > li .details summary").all():
            await details.click()
        notes = [
            json.loads(text)["note"]
            for text in await page.locator("#timeline > li .metadata").all_inner_texts()
        ]
        assert sorted(notes) == sorted(XSS_PAYLOADS)
        assert await page.locator(ACTIVE).count() == 0
        assert await page.locator('#timeline a[href^="javascript:"]').count() == 0
        assert await page.evaluate("window.pwned") is None
        assert not [url for url in requested if "evil.example" in url]

    @pytest.mark.parametrize(
        "query",
        [
            {"task": '<img src=x onerror="window.pwned=1">'},
            {
                "task": "6f1c2a1e-7d4b-4c8e-9a0f-1b2c3d4e5f60",
                "limit": "<script>window.pwned=1</script>",
            },
            {
                "task": "6f1c2a1e-7d4b-4c8e-9a0f-1b2c3d4e5f60",
                "since": '<svg onload="window.pwned=1">',
            },
        ],
    )
    async def test_reflected_payloads_in_the_address(
        self, server: TimelineServer, page: Page, query: dict[str, str]
    ) -> None:
        """A link to the page with a payload in its query shows text at most; nothing runs."""
        await page.goto(f"{server.url}/?" + urlencode(query))
        await expect(page.locator("#state")).to_be_visible()
        # The dead letters' chart is the page's own SVG; nothing else may be there.
        active = "main script, main img, main svg:not(#chart), main iframe"
        assert await page.locator(active).count() == 0
        assert await page.evaluate("window.pwned") is None


class TestKeyboardAndSmallScreens:
    """The page works from the keyboard alone and at phone width."""

    async def test_keyboard_only(self, server: TimelineServer, page: Page) -> None:
        """Typing a task id and pressing Enter shows it; Tab and Enter open an entry's metadata."""
        entries = await add_story(server.database_url)
        await page.goto(server.page_url())
        await expect(page.get_by_label("Task id")).to_be_focused()
        await page.keyboard.type(str(entries[0].task_id))
        await page.keyboard.press("Enter")
        await wait_for_count(page, len(entries))
        assert f"task={entries[0].task_id}" in page.url, "the task is in the address, to share"
        first = page.locator("#timeline > li").first.locator("summary")
        await first.focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#timeline > li").first.locator(".metadata")).to_be_visible()

    async def test_phone_width(self, server: TimelineServer, page: Page) -> None:
        """At 390 px wide nothing scrolls sideways and every control keeps its label."""
        entries = await add_story(server.database_url)
        await page.set_viewport_size({"width": 390, "height": 800})
        await page.goto(server.page_url(entries[0].task_id))
        await wait_for_count(page, len(entries))
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        for label in ("Task id", "From", "Before"):
            await expect(page.get_by_label(label, exact=True)).to_be_visible()
        for kind in ("Chat message", "Execution step", "Agent turn", "Error", "Status change"):
            await expect(page.get_by_role("checkbox", name=kind, exact=True)).to_be_visible()


class TestLive:
    """Entries stored while the page is open appear on it, within a second."""

    async def test_a_new_entry_appears_within_a_second(
        self,
        server: TimelineServer,
        page: Page,
        sql: asyncpg.Connection,
        request: pytest.FixtureRequest,
    ) -> None:
        """Five entries committed one by one each show, last on the timeline, within 1 s."""
        entries = await add_story(server.database_url)
        task_id = entries[0].task_id
        await page.goto(server.page_url(task_id))
        await wait_for_count(page, len(entries))
        await wait_until_live(page)
        delays = []
        for number in range(5):
            entry_id = uuid.uuid4()
            delays.append(
                await time_to_show(
                    page,
                    entry_id,
                    add_entry(sql, task_id, entry_id=entry_id, content=f"live turn {number}"),
                )
            )
            assert (await shown_ids(page))[-1] == str(entry_id)
        assert len(await shown_ids(page)) == len(entries) + 5, "each shown once"
        record(request, "commit to visible", delays)
        assert max(delays) <= LIVE_BOUND_MS, f"delays in ms: {delays}"

    async def test_a_published_event_appears_within_a_second(
        self, server: TimelineServer, page: Page, env: Env, request: pytest.FixtureRequest
    ) -> None:
        """Five events published to the broker, through the consumer, each show within 1 s."""
        task_id = await new_task(env.sql)
        await add_entry(env.sql, task_id, content="before")
        await page.goto(server.page_url(task_id))
        await wait_for_count(page, 1)
        await wait_until_live(page)
        delays = []
        async with Bus(env.amqp_url, env.topology) as bus, running(env.settings):
            for number in range(5):
                entry_id = uuid.uuid4()
                body = event(task_id, f"published {number}", id=str(entry_id))
                delays.append(await time_to_show(page, entry_id, bus.publish(body)))
        assert len(await shown_ids(page)) == 6, "each shown once"
        record(request, "publish to visible", delays)
        assert max(delays) <= LIVE_BOUND_MS, f"delays in ms: {delays}"

    async def test_the_stream_resumes_after_the_server_restarts(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Entries stored while the server was down show once it is back, none twice."""
        task_id = await new_task(sql)
        first = await add_entry(sql, task_id, content="before")
        await page.goto(server.page_url(task_id))
        await wait_for_count(page, 1)
        await wait_until_live(page)
        arrived = await add_entry(sql, task_id, content="live, so the page holds a cursor")
        await wait_for_count(page, 2)
        await server.stop()
        await expect(page.locator("#live")).to_have_attribute("data-tone", "lost")
        while_down = [await add_entry(sql, task_id, content=f"while down {n}") for n in range(3)]
        await server.start()
        await wait_until_live(page)
        await wait_for_count(page, 5)
        after = await add_entry(sql, task_id, content="after")
        await wait_for_count(page, 6)
        assert await shown_ids(page) == [str(i) for i in (first, arrived, *while_down, after)]


class TestFilters:
    """Kind and time filters ask the server again, and apply to live entries too."""

    async def test_kind_filter_shows_only_those_kinds(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Unticking every kind but two leaves only entries of those two, live ones included."""
        entries = await add_story(server.database_url)
        task_id = entries[0].task_id
        await page.goto(server.page_url(task_id))
        await wait_for_count(page, len(entries))
        kept = ("status_change", "chat_message")
        for box in await page.locator('input[name="type"]').all():
            if await box.get_attribute("value") not in kept:
                await box.uncheck()
        wanted = [entry for entry in entries if entry.context_type in kept]
        await wait_for_count(page, len(wanted))
        assert await shown_ids(page) == ids_of(wanted)
        await wait_until_live(page)
        await add_entry(sql, task_id, context_type="agent_turn", content="filtered out")
        shown = await add_entry(sql, task_id, context_type="status_change", content="review → done")
        await wait_for_count(page, len(wanted) + 1)
        assert (await shown_ids(page))[-1] == str(shown)

    async def test_time_filters_bound_the_entries(self, server: TimelineServer, page: Page) -> None:
        """From is inclusive and Before exclusive, in the browser's time zone (UTC here)."""
        start = start_of_story(40)
        entries = await add_story(server.database_url, start=start)
        await page.goto(server.page_url(entries[0].task_id))
        await wait_for_count(page, len(entries))
        since = start + STEP * 3
        await page.get_by_label("From").fill(since.strftime("%Y-%m-%dT%H:%M:%S"))
        await wait_for_count(page, len(entries) - 3)
        assert await shown_ids(page) == ids_of(entries[3:])
        until = start + STEP * 8
        await page.get_by_label("Before").fill(until.strftime("%Y-%m-%dT%H:%M:%S"))
        await wait_for_count(page, 5)
        assert await shown_ids(page) == ids_of(entries[3:8])
        await page.get_by_role("button", name="Any time").click()
        await wait_for_count(page, len(entries))


class TestToken:
    """With a token set on the server, the page says what is missing or wrong."""

    async def test_without_a_token_the_page_shows_the_refusal(
        self, guarded_server: TimelineServer, page: Page
    ) -> None:
        """The page itself loads; the history is refused and the page asks for a token."""
        entries = await add_story(guarded_server.database_url)
        await page.goto(guarded_server.page_url(entries[0].task_id))
        await expect(page.locator("#state")).to_contain_text("needs an access token")
        await expect(page.get_by_label("Token", exact=True)).to_be_visible()
        assert await page.locator("#timeline > li").count() == 0

    async def test_a_wrong_token_is_refused(
        self, guarded_server: TimelineServer, page: Page
    ) -> None:
        """A wrong token is named as refused, not as missing."""
        entries = await add_story(guarded_server.database_url)
        await page.goto(guarded_server.page_url(entries[0].task_id))
        await expect(page.locator("#state")).to_contain_text("needs an access token")
        await page.get_by_label("Token", exact=True).fill("wrong")
        await page.get_by_role("button", name="Show history").click()
        await expect(page.locator("#state")).to_contain_text("refused this access token")
        assert await page.locator("#timeline > li").count() == 0

    async def test_the_right_token_shows_entries_and_new_ones(
        self, guarded_server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """With the token the history shows and follows; it stays for the tab, out of the URL."""
        entries = await add_story(guarded_server.database_url)
        task_id = entries[0].task_id
        await page.goto(guarded_server.page_url(task_id))
        await expect(page.locator("#state")).to_contain_text("needs an access token")
        await page.get_by_label("Token", exact=True).fill(TOKEN)
        await page.get_by_label("Token", exact=True).press("Enter")
        await wait_for_count(page, len(entries))
        await wait_until_live(page)
        live = await add_entry(sql, task_id, content="seen through the stream")
        await wait_for_count(page, len(entries) + 1)
        assert (await shown_ids(page))[-1] == str(live)
        assert TOKEN not in page.url
        await page.reload()
        await wait_for_count(page, len(entries) + 1)


class TestServerGone:
    """When the server stops answering, the page says so instead of showing stale silence."""

    async def test_an_unreachable_server_is_reported(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """The live mark turns to reconnecting, and asking again says the server does not answer."""
        task_id = await new_task(sql)
        await add_entry(sql, task_id)
        await page.goto(server.page_url(task_id))
        await wait_for_count(page, 1)
        await wait_until_live(page)
        await server.stop()
        await expect(page.locator("#live")).to_contain_text("reconnecting")
        await page.get_by_role("button", name="Show history").click()
        await expect(page.locator("#state")).to_contain_text("server does not answer")


class TestScreenshot:
    """The README's picture of the page is taken here, from a demo task."""

    async def test_screenshot_of_a_populated_timeline(
        self, server: TimelineServer, page: Page, tmp_path: Path
    ) -> None:
        """A demo agent's task: form, filters, first entries, one entry's details open."""
        entries = await add_story(server.database_url, seed=3)
        await page.set_viewport_size({"width": 1100, "height": 1250})
        await page.goto(server.page_url(entries[0].task_id))
        await wait_for_count(page, len(entries))
        await wait_until_live(page)
        # One entry's details open, near the top so the picture holds the form and filters too.
        await page.locator("#timeline > li").nth(4).locator("summary").click()
        await page.evaluate("window.scrollTo(0, 0)")
        path = SCREENSHOT if os.environ.get(UPDATE_SCREENSHOT_ENV) else tmp_path / SCREENSHOT.name
        picture = await page.screenshot(path=path)
        assert picture[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 20_000, "a page with entries, not a blank one"
