"""The console in Debian's Chromium: tasks, search, timelines, dead letters, replay, purge."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from playwright.async_api import Page, Route, expect

from consumer.deadletters import DeadLetter
from tests.browser.conftest import (
    OPERATOR_NAME,
    OPERATOR_TOKEN,
    TOKEN,
    TimelineServer,
    accessibility_violations,
    add_entry,
    add_story,
    ids_of,
    shown_ids,
    wait_for_count,
)
from tests.browser.test_timeline import UPDATE_SCREENSHOT_ENV, XSS_PAYLOADS, wait_until_live
from tests.conftest import Env
from tests.harness import REPOSITORY, running, wait_for
from tests.helpers import new_task
from tests.letters import bury, letter, rows

IMAGES = REPOSITORY / "docs" / "images"
DEAD = "task_build_history_dead_letters"


def query_of(page: Page) -> dict[str, list[str]]:
    """The page's address, its query parsed."""
    return parse_qs(urlsplit(page.url).query)


async def use_token(page: Page, token: str) -> None:
    """Type a token under Access token and send it (Enter), as a person does."""
    if await page.locator("#token-box").get_attribute("open") is None:
        await page.get_by_text("Access token", exact=True).click()
    await page.get_by_label("Token", exact=True).fill(token)
    await page.get_by_label("Token", exact=True).press("Enter")


class TestRecentTasks:
    """Without a task chosen, the tasks most recently active, with their entries and errors."""

    async def test_newest_first_with_their_counts(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Three tasks in order of their last entry; counts as the table holds them; a link each."""
        now = datetime.now(UTC).replace(microsecond=0)
        stories = [
            await add_story(server.database_url, seed=seed, start=now - timedelta(hours=hours))
            for seed, hours in ((1, 5), (2, 1), (3, 3))
        ]
        await page.goto(server.page_url())
        rows_ = page.locator("#recent-rows > tr")
        await expect(rows_).to_have_count(3)
        expected = [stories[1], stories[2], stories[0]]
        shown = await rows_.evaluate_all("rows => rows.map(row => row.dataset.task)")
        assert shown == [str(story[0].task_id) for story in expected]
        for number, story in enumerate(expected):
            cells = await rows_.nth(number).locator("td").all_inner_texts()
            stored = await sql.fetchrow(
                "SELECT count(*) AS n, count(*) FILTER (WHERE context_type = 'error') AS e"
                " FROM task_build_history WHERE task_id = $1",
                story[0].task_id,
            )
            assert cells[1:3] == [str(stored["n"]), str(stored["e"])]
        await rows_.nth(0).get_by_role("link").click()
        await wait_for_count(page, len(stories[1]))
        assert query_of(page)["task"] == [str(stories[1][0].task_id)]
        await expect(page.locator("#recent")).to_be_hidden()


class TestSearch:
    """Text search over every task, then within one, the filters kept in the address."""

    async def test_search_every_task_then_its_entries(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Only the task whose entries hold the text; opened, only those entries, shareably."""
        for seed in range(4):
            await add_story(server.database_url, seed=seed)
        task = await new_task(sql)
        await add_entry(sql, task, content="nothing to see")
        wanted = [
            await add_entry(sql, task, content=f"pytest: KRAKEN-42 failed ({n})") for n in range(2)
        ]
        await page.goto(server.page_url())
        await page.get_by_label("Search the text of every task").fill("kraken-42")
        await page.get_by_role("button", name="Search").click()
        await expect(page.locator("#recent-state")).to_contain_text("1 task with “kraken-42”")
        await expect(page.locator("#recent-rows > tr")).to_have_count(1)
        await page.locator("#recent-rows a").click()
        await wait_for_count(page, 2)
        assert await shown_ids(page) == [str(entry) for entry in wanted]
        assert query_of(page)["q"] == ["kraken-42"]
        await expect(page.get_by_label("Text", exact=True)).to_have_value("kraken-42")
        # The address is the view: opened afresh, it shows the same.
        await page.goto(page.url)
        await wait_for_count(page, 2)
        await wait_until_live(page)
        await add_entry(sql, task, content="another turn")  # does not hold the text
        shown = await add_entry(sql, task, content="kraken-42 again")
        await wait_for_count(page, 3)
        assert (await shown_ids(page))[-1] == str(shown)

    async def test_filters_in_the_address(self, server: TimelineServer, page: Page) -> None:
        """Kinds, times and text from the address fill the form and filter the entries."""
        entries = await add_story(server.database_url, seed=5)
        since = entries[3].created_at
        errors_and_turns = [
            entry
            for entry in entries[3:]
            if entry.context_type in ("error", "agent_turn") and "turn" in entry.content
        ]
        address = (
            f"{server.url}/?task={entries[0].task_id}&type=error&type=agent_turn"
            f"&since={since.isoformat().replace('+', '%2B')}&q=TURN"
        )
        await page.goto(address)
        await wait_for_count(page, len(errors_and_turns))
        assert await shown_ids(page) == ids_of(errors_and_turns)
        await expect(page.get_by_role("checkbox", name="Error", exact=True)).to_be_checked()
        await expect(
            page.get_by_role("checkbox", name="Chat message", exact=True)
        ).not_to_be_checked()
        # A browser shows a whole minute without its seconds.
        shown = since.strftime("%Y-%m-%dT%H:%M:%S" if since.second else "%Y-%m-%dT%H:%M")
        await expect(page.get_by_label("From", exact=True)).to_have_value(shown)
        await page.get_by_role("checkbox", name="Status change", exact=True).check()
        await expect(page).to_have_url(re.compile(r"[?&]type=status_change(&|$)"))


class TestWorkspaceAndSession:
    """An entry's workspace and session open timelines of their own, across tasks."""

    async def test_from_an_entry_to_its_workspace_and_session(
        self, server: TimelineServer, page: Page
    ) -> None:
        """The workspace shows both tasks' entries, each with its task; the session its own."""
        workspace = uuid.uuid4()
        first = await add_story(server.database_url, seed=1, workspace=workspace)
        second = await add_story(
            server.database_url,
            seed=2,
            workspace=workspace,
            start=first[-1].created_at + timedelta(seconds=1),
        )
        await page.goto(server.page_url(first[0].task_id))
        await wait_for_count(page, len(first))
        entry = page.locator("#timeline > li").first
        await entry.locator("summary").click()
        await entry.locator(".id-workspace a").click()
        await wait_for_count(page, len(first) + len(second))
        assert await shown_ids(page) == ids_of(first + second)
        await expect(page.locator("#subject-text")).to_have_text(f"Workspace {workspace}")
        await expect(page.locator("#live-text")).to_contain_text("checked every")
        last = page.locator("#timeline > li").last
        await last.locator("summary").click()
        await expect(last.locator(".id-task a")).to_have_text(str(second[0].task_id))
        await last.locator(".id-session a").click()
        await wait_for_count(page, len(second))
        assert await shown_ids(page) == ids_of(second)
        assert query_of(page)["session"] == [str(second[0].session_id)]


class TestKindCounts:
    """The number beside each kind counts the whole task, not the entries loaded."""

    async def test_counts_cover_every_page_and_new_entries(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Five entries loaded, every kind counted; a live error adds one to errors."""
        entries = await add_story(server.database_url, seed=4)
        await page.goto(server.page_url(entries[0].task_id, limit=5))
        await wait_for_count(page, 5)
        kinds = Counter(entry.context_type for entry in entries)
        for kind, count in kinds.items():
            await expect(page.locator(f'[data-count="{kind}"]')).to_have_text(str(count))
        await expect(page.locator("#counts-total")).to_contain_text(
            f"{len(entries)} entries in all"
        )
        await wait_until_live(page)
        await add_entry(sql, entries[0].task_id, context_type="error", content="boom")
        await expect(page.locator('[data-count="error"]')).to_have_text(str(kinds["error"] + 1))


class TestMetadataLinks:
    """Addresses in metadata are links when they are http or https, text otherwise."""

    async def test_only_http_and_https(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Two links, opening elsewhere without a referrer; other schemes stay text; JSON intact."""
        task = await new_task(sql)
        metadata = {
            "run": "https://ci.example.com/runs/7?step=2",
            "nested": {"log": "http://logs.example.com/a"},
            "script": "javascript:window.pwned=1",
            "data": "data:text/html,<b>x</b>",
            "spaced": "https://example.com/a b",
            "list": ["https://example.com/in-a-list", 3],
        }
        entry_id = await add_entry(sql, task, metadata=metadata)
        await page.goto(server.page_url(task))
        item = page.locator(f'#timeline > li[data-id="{entry_id}"]')
        await item.locator("summary").click()
        links = item.locator(".metadata a")
        await expect(links).to_have_count(3)
        hrefs = await links.evaluate_all("links => links.map(link => link.href)")
        assert sorted(hrefs) == [
            "http://logs.example.com/a",
            "https://ci.example.com/runs/7?step=2",
            "https://example.com/in-a-list",
        ]
        for number in range(3):
            assert await links.nth(number).get_attribute("rel") == "noopener noreferrer nofollow"
            assert await links.nth(number).get_attribute("target") == "_blank"
        assert json.loads(await item.locator(".metadata").inner_text()) == metadata
        assert await page.evaluate("window.pwned") is None


class TestFollowing:
    """New entries come into view, unless the reader scrolled away from them."""

    async def test_into_view_unless_scrolled_away(
        self, server: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """At the end, a new entry is scrolled to; scrolled up, a button says one arrived below."""
        entries = await add_story(server.database_url, seed=6)
        task = entries[0].task_id
        await page.set_viewport_size({"width": 1000, "height": 600})
        await page.goto(server.page_url(task))
        await wait_for_count(page, len(entries))
        await wait_until_live(page)
        first = await add_entry(sql, task, content="first live one")
        await expect(page.locator(f'li[data-id="{first}"]')).to_be_in_viewport()
        await page.mouse.move(500, 300)
        await page.mouse.wheel(0, -20_000)
        await page.wait_for_function("() => window.scrollY === 0")
        second = await add_entry(sql, task, content="second live one")
        button = page.get_by_role("button", name="1 new entry below")
        await expect(button).to_be_visible()
        await expect(page.locator(f'li[data-id="{second}"]')).not_to_be_in_viewport()
        await button.click()
        await expect(page.locator(f'li[data-id="{second}"]')).to_be_in_viewport()
        await expect(button).to_be_hidden()


class TestDarkMode:
    """The page follows the system's colour scheme."""

    async def test_dark_colours(self, server: TimelineServer, page: Page) -> None:
        """With a dark preference, a dark background and light text; light otherwise."""
        entries = await add_story(server.database_url)
        schemes: tuple[tuple[Literal["dark", "light"], bool], ...] = (
            ("dark", True),
            ("light", False),
        )
        for scheme, dark in schemes:
            await page.emulate_media(color_scheme=scheme)
            await page.goto(server.page_url(entries[0].task_id))
            await wait_for_count(page, len(entries))
            background, ink = await page.evaluate(
                "[getComputedStyle(document.body).backgroundColor,"
                " getComputedStyle(document.body).color]"
            )
            assert (luminance(background) < luminance(ink)) is dark, (scheme, background, ink)


def luminance(css: str) -> float:
    """The relative luminance of an `rgb(r, g, b)` colour."""
    red, green, blue = (int(part) / 255 for part in css[css.index("(") + 1 : -1].split(",")[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


async def dead_letters_of_two_days(database_url: str, task: uuid.UUID) -> int:
    """Letters over two days, growing in the last hours, three codes; how many."""
    now = datetime.now(UTC)
    letters: list[DeadLetter] = []
    for hour in range(48):
        for number in range(1 + (8 if hour >= 44 else 0) + hour % 3):
            n = len(letters)
            code = ("unknown_task", "invalid_event", "invalid_json")[n % 3]
            letters.append(
                letter(
                    n,
                    code=code,
                    task=task if n % 2 else None,
                    failed_at=now - timedelta(hours=48 - hour, minutes=number),
                )
            )
    letters.append(letter(len(letters), code="invalid_json", body=b"\xff\xfe\x00binary\x01"))
    await bury(database_url, letters)
    return len(letters)


class TestDeadLetterView:
    """The chart, the filters in the address, the list a page at a time, one letter whole."""

    async def test_chart_list_and_one_letter(
        self, console: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Bars for every code; a code ticked filters the list; a letter's body as text or hex."""
        task = uuid.uuid4()
        total = await dead_letters_of_two_days(console.database_url, task)
        await page.goto(f"{console.url}/?view=dead-letters")
        await expect(page.locator("#letters-count")).to_have_text(f"({total} in all)")
        # The chart comes from a request of its own: its caption is written once it is drawn.
        await expect(page.locator("#chart-caption")).to_contain_text(f"{total} dead letters")
        assert await page.locator("#chart rect.bar").count() > 40
        legend = await page.locator("#chart-legend li").all_inner_texts()
        assert {line.split()[0] for line in legend} == {
            "unknown_task",
            "invalid_event",
            "invalid_json",
        }
        assert sum(int(line.split()[-1]) for line in legend) == total
        await expect(page.locator("#letter-rows > tr")).to_have_count(50)
        await page.get_by_role("button", name="More letters").click()
        await expect(page.locator("#letter-rows > tr")).to_have_count(100)
        shown = await page.locator("#letter-rows > tr").evaluate_all(
            "rows => rows.map(r => r.dataset.id)"
        )
        assert len(set(shown)) == 100, "each letter once, newest first"
        assert [int(n) for n in shown] == sorted((int(n) for n in shown), reverse=True)
        await page.get_by_role("checkbox", name="invalid_event").check()
        await page.get_by_role("button", name="Apply").click()
        await expect(page).to_have_url(re.compile(r"[?&]error=invalid_event(&|$)"))
        invalid = await sql.fetchval(f"SELECT count(*) FROM {DEAD} WHERE error = 'invalid_event'")
        await expect(page.locator("#letters-count")).to_have_text(f"({invalid} match)")
        await expect(page.locator("#letter-rows > tr")).to_have_count(invalid)
        codes = await page.locator("#letter-rows td.code-name").all_inner_texts()
        assert set(codes) == {"invalid_event"}
        # One letter whole: a text body, then a body that is not UTF-8.
        await page.locator("#letter-rows a", has_text="#").first.click()
        await expect(page.locator("#body-kind")).to_have_text("(text)")
        assert json.loads(await page.locator("#letter-body").inner_text())["task_id"]
        await expect(page.locator("#letter-headers")).to_contain_text('"x-error": "invalid_event"')
        binary = await sql.fetchval(f"SELECT max(id) FROM {DEAD}")
        await page.goto(f"{console.url}/?view=dead-letters&letter={binary}")
        await expect(page.locator("#body-kind")).to_contain_text("not UTF-8")
        dump = "00000000  " + "ff fe 00 62 69 6e 61 72 79 01".ljust(47) + "  |...binary.|"
        await expect(page.locator("#letter-body")).to_have_text(dump)

    async def test_a_column_lists_its_letters(self, console: TimelineServer, page: Page) -> None:
        """Clicking the last column sets the time filters to it and lists its letters."""
        # Two groups of letters, each within a few seconds, in 5-minute columns two hours apart.
        recent = datetime.now(UTC) - timedelta(hours=1)
        recent = recent.replace(minute=recent.minute - recent.minute % 5 + 1, second=0)
        await bury(
            console.database_url,
            [letter(n, failed_at=recent - timedelta(hours=2, seconds=-n)) for n in range(4)]
            + [letter(10 + n, failed_at=recent + timedelta(seconds=n)) for n in range(7)],
        )
        await page.goto(f"{console.url}/?view=dead-letters")
        columns = page.locator("#chart rect.hit")
        await expect(columns).to_have_count(2)
        await columns.last.click(force=True)
        await expect(page.locator("#letters-count")).to_have_text("(7 match)")
        assert {"since", "until"} <= set(query_of(page))


class TestHostileLetters:
    """What a publisher put in a dead letter shows as text: nothing in it runs or loads."""

    async def test_payloads_everywhere(
        self, console: TimelineServer, page: Page, request: pytest.FixtureRequest
    ) -> None:
        """Script payloads as detail, routing key, task, code, headers and body stay text."""
        letters = []
        for number, payload in enumerate(XSS_PAYLOADS):
            hostile = letter(
                number,
                code=payload,
                routing_key=payload,
                body=payload.encode(),
            )
            letters.append(
                replace(
                    hostile,
                    detail=payload,
                    headers={"x-error": payload, payload: payload},
                    properties={"app_id": payload},
                )
            )
        await bury(console.database_url, letters)
        requested: list[str] = []
        page.on("request", lambda sent: requested.append(sent.url))
        await page.goto(f"{console.url}/?view=dead-letters&by=error")
        await expect(page.locator("#letter-rows > tr")).to_have_count(len(XSS_PAYLOADS))
        details = await page.locator("#letter-rows td.detail").all_inner_texts()
        assert sorted(details) == sorted(XSS_PAYLOADS)
        for number in range(len(XSS_PAYLOADS)):
            await page.locator("#letter-rows a", has_text="#").nth(number).click()
            await expect(page.locator("#letter-body")).to_have_text(
                XSS_PAYLOADS[len(XSS_PAYLOADS) - 1 - number]
            )
        assert await page.locator(f"main :is({ACTIVE_ELEMENTS})").count() == 0
        assert await page.locator('main a[href^="javascript:"]').count() == 0
        assert await page.evaluate("window.pwned") is None
        assert not [url for url in requested if "evil.example" in url]
        request.node.user_properties.append(
            ("summary", f"console: {len(XSS_PAYLOADS)} hostile dead letters shown as text")
        )


# Elements a payload would need to run or load something (the chart's own SVG aside).
ACTIVE_ELEMENTS = "script, img, iframe, style, object, embed, svg:not(#chart), svg:not(#chart) *"


class TestReplayAndPurge:
    """Replay and purge from the page: a confirmation that counts, the progress, the result."""

    async def test_replay_stores_the_events(
        self, env: Env, console: TimelineServer, page: Page, request: pytest.FixtureRequest
    ) -> None:
        """312 letters of a task that now exists: replayed from the page, stored by the consumer."""
        task = uuid.uuid4()
        await bury(env.database_url, [letter(n, task=task) for n in range(312)])
        await bury(env.database_url, [letter(n, code="invalid_json") for n in range(400, 420)])
        await env.sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
        await page.goto(f"{console.url}/?view=dead-letters&task={task}")
        await use_token(page, OPERATOR_TOKEN)
        await expect(page.locator("#letters-count")).to_have_text("(312 match)")
        released = asyncio.Event()
        progress_seen: list[str] = []

        async def hold_the_answer(route: Route) -> None:
            if json.loads(route.request.post_data or "{}").get("dry_run"):
                await route.continue_()
                return
            answer = await route.fetch()  # carried out; the page follows the record meanwhile
            await expect(page.locator("#progress-label")).to_have_text("Replaying: 312 of 312")
            progress_seen.append(await page.locator("#progress").get_attribute("value") or "")
            released.set()
            await route.fulfill(response=answer)

        await page.route("**/dead-letters/replay", hold_the_answer)
        async with running(env.settings):
            await page.get_by_role("button", name="Replay all matching").click()
            dialog = page.get_by_role("dialog")
            await expect(dialog).to_contain_text("Replay 312 dead letters?")
            await expect(dialog).to_contain_text(f"task {task}")
            await dialog.get_by_role("button", name="Replay 312").click()
            await released.wait()
            await expect(page.locator("#result")).to_contain_text(
                "Replayed 312 of 312 dead letters (recorded as #1)."
            )
            stored = await wait_for(
                lambda: env.sql.fetchval(
                    "SELECT count(*) FROM task_build_history WHERE task_id = $1", task
                ),
                lambda n: n == 100,  # the cap keeps the newest 100 of the 312
                what="the replayed events stored",
            )
            received = await env.sql.fetchval(
                "SELECT received FROM task_build_history_counts WHERE task_id = $1", task
            )
        assert (stored, received) == (100, 312)
        assert progress_seen == ["312"]
        assert await env.sql.fetchval(f"SELECT count(*) FROM {DEAD}") == 20
        await expect(page.locator("#letters-count")).to_have_text("(0 match)")
        record = page.locator("#action-rows > tr").first
        await expect(record).to_contain_text("#1 replay")
        await expect(record).to_contain_text(f"{OPERATOR_NAME} (console or HTTP)")
        await expect(record).to_contain_text("312 replayed")
        request.node.user_properties.append(
            ("summary", "console replay: 312 letters replayed and stored through a consumer")
        )

    async def test_purge_of_a_selection_deletes_those(
        self, console: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Three of ten ticked: the confirmation says three; exactly those are gone."""
        await bury(console.database_url, [letter(n) for n in range(10)])
        await page.goto(f"{console.url}/?view=dead-letters")
        await use_token(page, OPERATOR_TOKEN)
        await expect(page.locator("#letter-rows > tr")).to_have_count(10)
        for message in ("m2", "m5", "m7"):
            row_id = await sql.fetchval(f"SELECT id FROM {DEAD} WHERE message_id = $1", message)
            await page.get_by_role("checkbox", name=f"Select letter {row_id}", exact=True).check()
        await page.get_by_role("button", name="Purge 3 selected").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("Purge 3 dead letters?")
        await dialog.get_by_role("button", name="Purge 3").click()
        await expect(page.locator("#result")).to_contain_text("Deleted 3 of 3 dead letters")
        assert await rows(sql) == [f"m{n}" for n in range(10) if n not in (2, 5, 7)]

    async def test_purge_of_a_filter_deletes_the_confirmed_count(
        self, console: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Letters arriving while the question is asked are not deleted with the ones counted."""
        await bury(console.database_url, [letter(n, code="invalid_json") for n in range(5)])
        await bury(console.database_url, [letter(n, code="unknown_task") for n in range(5, 8)])
        await page.goto(f"{console.url}/?view=dead-letters&error=invalid_json")
        await use_token(page, OPERATOR_TOKEN)
        await expect(page.locator("#letters-count")).to_have_text("(5 match)")
        await page.get_by_role("button", name="Purge all matching").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("Purge 5 dead letters?")
        await bury(console.database_url, [letter(n, code="invalid_json") for n in range(20, 24)])
        await dialog.get_by_role("button", name="Purge 5").click()
        await expect(page.locator("#result")).to_contain_text("Deleted 5 of 5 dead letters")
        assert await rows(sql) == ["m5", "m6", "m7", "m20", "m21", "m22", "m23"]
        recorded = await sql.fetchrow(
            "SELECT action, actor, selected, affected, filter FROM"
            " task_build_history_dead_letter_actions"
        )
        assert (recorded["action"], recorded["actor"]) == ("purge", OPERATOR_NAME)
        assert (recorded["selected"], recorded["affected"]) == (5, 5)
        assert json.loads(recorded["filter"])["error"] == ["invalid_json"]

    async def test_cancel_changes_nothing(
        self, console: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """Cancelled at the question: every letter stays, nothing is recorded."""
        await bury(console.database_url, [letter(n) for n in range(3)])
        await page.goto(f"{console.url}/?view=dead-letters")
        await use_token(page, OPERATOR_TOKEN)
        await page.get_by_role("button", name="Purge all matching").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("Purge 3 dead letters?")
        await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
        await page.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()
        assert len(await rows(sql)) == 3
        assert (
            await sql.fetchval("SELECT count(*) FROM task_build_history_dead_letter_actions") == 0
        )

    async def test_the_reader_token_cannot(
        self, guarded_console: TimelineServer, page: Page, sql: asyncpg.Connection
    ) -> None:
        """With the reader's token the letters show; a purge is refused, and says why."""
        await bury(guarded_console.database_url, [letter(n) for n in range(4)])
        await page.goto(f"{guarded_console.url}/?view=dead-letters")
        await expect(page.locator("#letters-state")).to_contain_text("needs an access token")
        await use_token(page, TOKEN)
        await expect(page.locator("#letters-count")).to_have_text("(4 in all)")
        await page.get_by_role("button", name="Purge all matching").click()
        await expect(page.locator("#result")).to_contain_text(
            "This token may read the dead letters, not replay or purge them"
        )
        await expect(page.get_by_role("dialog")).to_be_hidden()
        assert len(await rows(sql)) == 4
        assert (
            await sql.fetchval("SELECT count(*) FROM task_build_history_dead_letter_actions") == 0
        )


class TestAccessibility:
    """axe-core finds no serious or critical violation, in light or dark mode, in any view."""

    @pytest.mark.parametrize("scheme", ["light", "dark"])
    async def test_no_serious_violation(
        self,
        console: TimelineServer,
        page: Page,
        scheme: Literal["light", "dark"],
        request: pytest.FixtureRequest,
    ) -> None:
        """Recent tasks, a timeline with an entry open, the dead letters with a letter open."""
        await page.emulate_media(color_scheme=scheme)
        entries = await add_story(console.database_url, seed=3)
        await add_story(console.database_url, seed=4)
        await dead_letters_of_two_days(console.database_url, entries[0].task_id)
        found: dict[str, list[dict[str, Any]]] = {}
        await page.goto(console.page_url())
        await expect(page.locator("#recent-rows > tr")).to_have_count(2)
        found["recent tasks"] = await accessibility_violations(page)
        await page.goto(console.page_url(entries[0].task_id))
        await wait_for_count(page, len(entries))
        await page.locator("#timeline > li").nth(2).locator("summary").click()
        found["timeline"] = await accessibility_violations(page)
        await page.goto(f"{console.url}/?view=dead-letters&letter=1")
        await use_token(page, OPERATOR_TOKEN)
        await expect(page.locator("#letter")).to_be_visible()
        await page.get_by_text("The counts as a table").click()
        found["dead letters"] = await accessibility_violations(page)
        await page.get_by_role("button", name="Purge all matching").click()
        await expect(page.get_by_role("dialog")).to_be_visible()
        found["confirmation"] = await accessibility_violations(page)
        await page.keyboard.press("Escape")
        impacts = Counter(v["impact"] for violations in found.values() for v in violations)
        request.node.user_properties.append(
            ("summary", f"axe-core {scheme}: {dict(impacts) or 'no violations'} over 4 views")
        )
        serious = {
            view: [v for v in violations if v["impact"] in ("serious", "critical")]
            for view, violations in found.items()
        }
        assert not any(serious.values()), serious


class TestScreenshots:
    """The pictures in the guides, taken from the console itself.

    Written to docs/images only when asked, so a test run leaves the checkout as it found it:
    TASK_HISTORY_TEST_UPDATE_SCREENSHOT=1 .venv/bin/pytest tests/browser -k screenshot
    """

    async def test_screenshots_of_the_console(
        self, console: TimelineServer, page: Page, tmp_path: Path
    ) -> None:
        """Recent tasks; the dead letters with their chart, a filter and a letter open."""
        folder = IMAGES if os.environ.get(UPDATE_SCREENSHOT_ENV) else tmp_path
        stories = [await add_story(console.database_url, seed=seed) for seed in range(6)]
        await dead_letters_of_two_days(console.database_url, stories[2][0].task_id)
        await page.set_viewport_size({"width": 1100, "height": 900})
        await page.goto(console.page_url())
        await expect(page.locator("#recent-rows > tr")).to_have_count(6)
        await page.screenshot(path=folder / "console-tasks.png")
        await page.set_viewport_size({"width": 1100, "height": 1400})
        await page.goto(f"{console.url}/?view=dead-letters&letter=2")
        await use_token(page, OPERATOR_TOKEN)
        await expect(page.locator("#letter")).to_be_visible()
        await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=folder / "console-dead-letters.png")
        await page.emulate_media(color_scheme="dark")
        await page.screenshot(path=folder / "console-dead-letters-dark.png")
        for name in (
            "console-tasks.png",
            "console-dead-letters.png",
            "console-dead-letters-dark.png",
        ):
            picture = (folder / name).read_bytes()
            assert picture[:8] == b"\x89PNG\r\n\x1a\n"
            assert len(picture) > 20_000, "a page with content, not a blank one"
