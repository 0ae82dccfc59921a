"""The console's routes of `task-history serve`, against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from consumer.api.server import serving
from consumer.settings import Settings
from consumer.store.queries import like_pattern
from tests.conftest import Env
from tests.harness import running, wait_for
from tests.helpers import at, new_task, run_sync
from tests.integration.test_api import add_entries, api_settings, get_json
from tests.letters import bury, letter, rows

TABLE = "task_build_history_dead_letters"
READER = "reader-token"
OPERATOR = "operator-token"
READ = {"Authorization": f"Bearer {READER}"}
OPERATE = {"Authorization": f"Bearer {OPERATOR}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[str]:
    """The API with no token and no operator routes; its base URL."""
    async with serving(api_settings(database_url, api_search_tasks_per_page=10)) as url:
        yield url


def operator_settings(settings: Settings, **update: object) -> Settings:
    """The test's settings (its database and broker names) for a server with both tokens."""
    given: dict[str, object] = {
        "amqp_url": settings.amqp_url,
        "exchange": settings.exchange,
        "api_token": READER,
        "api_operator_token": OPERATOR,
        "api_operator_name": "alice",
    }
    return api_settings(settings.database_url, **(given | update))


@pytest.fixture
async def operated(settings: Settings) -> AsyncIterator[str]:
    """The API with a reader token and an operator token, on the test's broker names."""
    async with serving(operator_settings(settings)) as url:
        yield url


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: object,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST `body` as JSON; (status, parsed JSON body)."""
    async with http.post(url, json=body, headers=headers or OPERATE) as response:
        return response.status, await response.json(content_type=None)


class TestRecentTasks:
    """GET /tasks: the tasks newest activity first, a page after another, with their counts."""

    async def test_newest_first_in_pages(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Seven tasks, pages of three: each once, by last activity, then by id."""
        tasks = [await new_task(sql) for _ in range(7)]
        for number, task in enumerate(tasks):
            await add_entries(sql, task, [number * 10, number * 10 + 5], types=("error",))
        seen: list[str] = []
        after = None
        while True:
            query = {"limit": "3"} | ({"after": after} if after else {})
            status, page = await get_json(http, f"{api}/tasks", params=query)
            assert status == 200
            assert len(page["tasks"]) <= 3
            seen.extend(task["task_id"] for task in page["tasks"])
            after = page["next"]
            if after is None:
                break
        assert seen == [str(task) for task in reversed(tasks)]
        status, page = await get_json(http, f"{api}/tasks")
        first = page["tasks"][0]
        assert first == {
            "task_id": str(tasks[-1]),
            "entries": 2,
            "errors": 2,
            "last_activity": at(65).isoformat(),
        }

    async def test_counts_follow_trims_expiry_and_updates(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Entries and errors are what the table holds after the cap, a delete and an UPDATE."""
        task = await new_task(sql)
        await sql.execute("UPDATE task_build_history_settings SET max_entries_per_task = 10")
        await add_entries(sql, task, range(8), types=("error", "agent_turn"))
        await add_entries(sql, task, range(100, 106), types=("error",))  # trims 4 oldest
        await sql.execute(
            "DELETE FROM task_build_history WHERE ctid = (SELECT ctid FROM task_build_history"
            " WHERE task_id = $1 AND context_type = 'agent_turn' LIMIT 1)",
            task,
        )
        await sql.execute(
            "UPDATE task_build_history SET context_type = 'chat_message' WHERE id = (SELECT id"
            " FROM task_build_history WHERE task_id = $1 AND context_type = 'error' LIMIT 1)",
            task,
        )
        status, page = await get_json(http, f"{api}/tasks")
        assert status == 200
        (shown,) = page["tasks"]
        stored = await sql.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE context_type = 'error') AS errors,"
            " max(created_at) AS last FROM task_build_history WHERE task_id = $1",
            task,
        )
        assert (shown["entries"], shown["errors"]) == (stored["n"], stored["errors"]) == (9, 7)
        assert shown["last_activity"] == stored["last"].isoformat()

    async def test_search_every_task_a_bounded_number_at_a_time(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Ten tasks a page: 25 tasks in 3 pages, the found those holding the text exactly.

        In any case, and with % and _ taken literally.
        """
        tasks = [await new_task(sql) for _ in range(25)]
        wanted = set()
        for number, task in enumerate(tasks):
            prefix = "ran 100%_Done here" if number % 6 == 0 else "ran 100% done"
            await add_entries(sql, task, [number], prefix=prefix)
            if number % 6 == 0:
                wanted.add(str(task))
        found: list[str] = []
        examined, pages, after = 0, 0, None
        while True:
            query = {"q": "100%_DONE", "limit": "50"} | ({"after": after} if after else {})
            status, page = await get_json(http, f"{api}/tasks", params=query)
            assert status == 200, page
            pages += 1
            examined += page["examined"]
            assert page["examined"] <= 10
            found.extend(task["task_id"] for task in page["tasks"])
            after = page["next"]
            if after is None:
                break
        assert set(found) == wanted
        assert len(found) == len(wanted)
        assert examined == 25
        assert pages == 3

    @pytest.mark.parametrize(
        "query",
        [
            {"after": "not-a-cursor"},
            {"after": "dDF8eHx5"},
            {"limit": "0"},
            {"limit": "501"},
            {"q": ""},
            {"q": "x" * 201},
            {"q": "nul\x00"},
        ],
    )
    async def test_bad_parameters_are_4xx(
        self, api: str, http: aiohttp.ClientSession, query: dict[str, str]
    ) -> None:
        """A forged cursor, a limit out of range, an empty, long or NUL text: a 4xx, a reason."""
        status, body = await get_json(http, f"{api}/tasks", params=query)
        assert 400 <= status < 500
        assert body["detail"]


class TestTextAndCounts:
    """History routes take `q`; the counts by kind cover every page of a subject."""

    async def test_q_in_a_task_workspace_and_session(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Only entries whose content holds the text, in any case, for each kind of subject."""
        task, workspace, session = await new_task(sql), uuid.uuid4(), uuid.uuid4()
        await add_entries(
            sql, task, range(6), workspace=workspace, session=session, prefix="Build FAILED"
        )
        await add_entries(sql, task, range(10, 14), workspace=workspace, session=session)
        for path in (f"tasks/{task}", f"workspaces/{workspace}", f"sessions/{session}"):
            status, page = await get_json(http, f"{api}/{path}/history", params={"q": "d fail"})
            assert status == 200
            assert [entry["content"] for entry in page["entries"]] == [
                f"Build FAILED {n}" for n in range(1, 7)
            ]

    async def test_counts_by_kind_over_every_page(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Counts of each kind of the whole subject, with time and text filters; not the page."""
        task = await new_task(sql)
        await add_entries(sql, task, range(30), types=("error", "agent_turn", "agent_turn"))
        status, counts = await get_json(http, f"{api}/tasks/{task}/history/counts")
        assert status == 200
        assert counts == {"total": 30, "by_type": {"error": 10, "agent_turn": 20}}
        status, counts = await get_json(
            http,
            f"{api}/tasks/{task}/history/counts",
            params={"since": at(10).isoformat(), "q": "ENTRY 1"},
        )
        # Entries 11 to 30 are at or after at(10); of those, 11 to 19 hold "entry 1".
        assert counts["total"] == 9
        status, counts = await get_json(
            http, f"{api}/tasks/{task}/history/counts", params={"since": "1h", "until": "2h"}
        )
        assert status == 422


def _fold(text: str) -> str:
    """Text as the search compares it: A to Z in any case, every other character as is."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in text)


SEARCHED = st.text(alphabet=st.sampled_from("aAbB%_\\xé\u00c9 -"), min_size=1, max_size=6)


class TestTextMatching:
    """The pattern the store sends matches exactly where the text is, as the page matches it."""

    @given(
        haystack=st.text(alphabet=st.sampled_from("aAbB%_\\xéÉ -"), max_size=12), needle=SEARCHED
    )
    @hypothesis.settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    def test_like_pattern_is_a_substring_in_any_case(
        self, database_url: str, haystack: str, needle: str
    ) -> None:
        """PostgreSQL's verdict on the pattern is Python's on the folded text."""

        async def verdict() -> bool:
            connection = await asyncpg.connect(database_url)
            try:
                return bool(
                    await connection.fetchval(
                        'SELECT $1::text COLLATE "C" ILIKE $2', haystack, like_pattern(needle)
                    )
                )
            finally:
                await connection.close()

        assert run_sync(verdict()) == (_fold(needle) in _fold(haystack))


class TestDeadLetterPages:
    """GET /dead-letters/letters, /timeline and /{id}: what the console's dead letters show."""

    async def test_pages_newest_first_with_every_filter(
        self, api: str, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """Pages of 4 cover each letter once, newest first; each filter narrows them."""
        task = uuid.uuid4()
        now = datetime.now(UTC)
        letters = [
            letter(
                n,
                code="unknown_task" if n % 2 else "invalid_event",
                task=task if n % 3 == 0 else None,
                routing_key="history.error" if n % 5 == 0 else "history.agent_turn",
                failed_at=now - timedelta(minutes=30 - n),
            )
            for n in range(1, 21)
        ]
        await bury(database_url, letters)
        seen: list[str] = []
        after = None
        while True:
            query = {"limit": "4"} | ({"after": after} if after else {})
            status, page = await get_json(http, f"{api}/dead-letters/letters", params=query)
            assert status == 200
            seen.extend(item["message_id"] for item in page["letters"])
            after = page["next"]
            if after is None:
                break
        assert seen == [f"m{n}" for n in range(20, 0, -1)]
        filters: dict[str, Any] = {
            "error": "invalid_event",
            "task": str(task),
            "routing_key": "history.error",
            "q": "INVALID_event for",
            "since": (now - timedelta(minutes=20, seconds=30)).isoformat(),
            "until": (now - timedelta(minutes=15, seconds=30)).isoformat(),
        }
        expected = {
            "error": [n for n in range(1, 21) if n % 2 == 0],
            "task": [n for n in range(1, 21) if n % 3 == 0],
            "routing_key": [n for n in range(1, 21) if n % 5 == 0],
            "q": [n for n in range(1, 21) if n % 2 == 0],
            "since": list(range(10, 21)),
            "until": list(range(1, 15)),
        }
        for name, value in filters.items():
            status, page = await get_json(
                http, f"{api}/dead-letters/letters", params={name: value, "limit": "100"}
            )
            assert status == 200, page
            assert (
                sorted(int(item["message_id"][1:]) for item in page["letters"]) == expected[name]
            ), name
            assert all(item["body_bytes"] > 0 for item in page["letters"])

    async def test_timeline_counts_every_letter_once(
        self, api: str, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """Bars of an hour over three hours, by code and by task: the totals add up."""
        now = datetime.now(UTC)
        tasks = [uuid.uuid4() for _ in range(8)]
        letters = [
            letter(
                n,
                code=("unknown_task", "invalid_json")[n % 2],
                task=tasks[n % 8],
                failed_at=now - timedelta(minutes=170 - n * 3),
            )
            for n in range(50)
        ]
        await bury(database_url, letters)
        status, chart = await get_json(http, f"{api}/dead-letters/timeline")
        assert status == 200
        assert chart["bucket_seconds"] in (300, 900, 3600)
        assert sum(series["total"] for series in chart["series"]) == 50
        assert {series["key"] for series in chart["series"]} == {"unknown_task", "invalid_json"}
        for series in chart["series"]:
            assert len(series["counts"]) == len(chart["buckets"])
        status, chart = await get_json(http, f"{api}/dead-letters/timeline", params={"by": "task"})
        assert sum(series["total"] for series in chart["series"]) == 50
        assert len(chart["series"]) == 7  # the six largest tasks, and the rest together
        assert chart["series"][-1]["other"] is True
        status, chart = await get_json(
            http, f"{api}/dead-letters/timeline", params={"error": "nothing_at_all"}
        )
        assert status == 422

    async def test_one_letter_as_text_or_hex(
        self, api: str, http: aiohttp.ClientSession, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """A UTF-8 body comes as text exactly; any other as hex and base64, with its size."""
        await bury(database_url, [letter(1), letter(2, code="invalid_json", body=b"\xff\x00ab")])
        first, second = await sql.fetchval("SELECT array_agg(id ORDER BY id) FROM " + TABLE)
        status, text = await get_json(http, f"{api}/dead-letters/{first}")
        assert status == 200
        assert text["body_text"].startswith('{"task_id"')
        assert text["body_hex"] is None
        status, binary = await get_json(http, f"{api}/dead-letters/{second}")
        assert (binary["body_text"], binary["body_hex"], binary["body_bytes"]) == (
            None,
            "ff006162",
            4,
        )
        # No byte replaced unseen: the body is null, and its bytes are there in base64.
        assert (binary["body"], binary["body_base64"]) == (None, "/wBhYg==")


class TestOperatorRoutesExistOnlyWithTheToken:
    """Without an operator token there is nothing to replay or purge with."""

    async def test_absent(self, api: str, http: aiohttp.ClientSession) -> None:
        """The routes answer as unknown, and /openapi.json does not name them."""
        for route in ("replay", "purge"):
            async with http.post(f"{api}/dead-letters/{route}", json={"all": True}) as response:
                assert response.status in (404, 405)
        _, document = await get_json(http, f"{api}/openapi.json")
        assert "/dead-letters/replay" not in document["paths"]
        assert "/dead-letters/purge" not in document["paths"]


class TestWhoMayOperate:
    """Only the operator's token, only JSON, only from this server's page or no browser."""

    @pytest.mark.parametrize("route", ["replay", "purge"])
    async def test_refusals(
        self,
        operated: str,
        http: aiohttp.ClientSession,
        database_url: str,
        route: str,
    ) -> None:
        """401 with no or a wrong token, 403 for the reader's, 415 for a form, 403 cross-site."""
        await bury(database_url, [letter(n) for n in range(3)])
        url = f"{operated}/dead-letters/{route}"
        body = {"all": True} if route == "purge" else {}
        cases: list[tuple[dict[str, str], object, int]] = [
            ({}, body, 401),
            ({"Authorization": "Bearer wrong"}, body, 401),
            (READ, body, 403),
            ({**OPERATE, "Origin": "http://evil.example"}, body, 403),
            ({**OPERATE, "Origin": "null"}, body, 403),
            ({**OPERATE, "Sec-Fetch-Site": "cross-site"}, body, 403),
            ({**OPERATE, "Sec-Fetch-Site": "same-site"}, body, 403),
        ]
        for headers, sent, expected in cases:
            async with http.post(url, json=sent, headers=headers) as response:
                assert response.status == expected, (headers, await response.text())
                assert (await response.json())["detail"]
        for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
            headers = dict(OPERATE) | ({"Content-Type": content_type} if content_type else {})
            async with http.post(url, data=b'{"all": true}', headers=headers) as response:
                assert response.status == 415, content_type
        async with http.post(url, data=b"all=true", headers=OPERATE) as response:
            assert response.status == 415
        assert len(await rows_of(database_url)) == 3, "nothing was replayed or purged"

    async def test_this_servers_page_may(
        self, operated: str, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """The same request with this server's own Origin and same-origin fetch is carried out."""
        await bury(database_url, [letter(n) for n in range(3)])
        host = operated.removeprefix("http://")
        headers = {**OPERATE, "Origin": operated, "Sec-Fetch-Site": "same-origin", "Host": host}
        status, done = await post(http, f"{operated}/dead-letters/purge", {"all": True}, headers)
        assert status == 200, done
        assert done["count"] == 3

    async def test_the_operator_token_reads_too(
        self, operated: str, http: aiohttp.ClientSession
    ) -> None:
        """The operator's token is accepted wherever the reader's is."""
        status, _ = await get_json(http, f"{operated}/tasks", headers=OPERATE)
        assert status == 200
        status, _ = await get_json(http, f"{operated}/tasks")
        assert status == 401


async def rows_of(database_url: str) -> list[str]:
    """The dead letters' message ids, in id order."""
    connection = await asyncpg.connect(database_url)
    try:
        return await rows(connection)
    finally:
        await connection.close()


class TestPurge:
    """POST /dead-letters/purge: a dry run counts, the purge deletes exactly those."""

    async def test_deletes_exactly_what_was_counted(
        self, operated: str, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """Letters arriving between the count and the purge are left; the record says who."""
        await bury(database_url, [letter(n, code="invalid_json") for n in range(1, 6)])
        await bury(database_url, [letter(9, code="unknown_task")])
        url = f"{operated}/dead-letters/purge"
        status, preview = await post(http, url, {"error": ["invalid_json"], "dry_run": True})
        assert status == 200
        assert (preview["selected"], preview["count"], preview["action"]) == (5, 5, None)
        await bury(database_url, [letter(n, code="invalid_json") for n in range(20, 23)])
        request = str(uuid.uuid4())
        status, done = await post(
            http,
            url,
            {"error": ["invalid_json"], "through": preview["through"], "request_id": request},
        )
        assert status == 200, done
        assert (done["selected"], done["count"]) == (5, 5)
        assert await rows_of(database_url) == ["m9", "m20", "m21", "m22"]
        action = done["action"]
        assert action["action"] == "purge"
        assert (action["actor"], action["via"], action["state"]) == ("alice", "http", "finished")
        assert (action["selected"], action["affected"]) == (5, 5)
        assert action["filter"]["error"] == ["invalid_json"]
        assert action["request_id"] == request
        status, _ = await post(http, url, {"error": ["invalid_json"], "request_id": request})
        assert status == 409
        assert await rows_of(database_url) == ["m9", "m20", "m21", "m22"]
        status, listed = await get_json(
            http, f"{operated}/dead-letters/actions", params={"request_id": request}, headers=READ
        )
        assert listed["actions"] == [action]

    async def test_ids_and_everything(
        self, operated: str, http: aiohttp.ClientSession, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """A list of ids deletes those; no filter needs "all": true, and then deletes all."""
        await bury(database_url, [letter(n) for n in range(1, 7)])
        ids = [row["id"] for row in await sql.fetch(f"SELECT id FROM {TABLE} ORDER BY id")]
        url = f"{operated}/dead-letters/purge"
        status, done = await post(http, url, {"ids": [ids[1], ids[3], 2**62]})
        assert (status, done["count"]) == (200, 2)
        assert await rows(sql) == ["m1", "m3", "m5", "m6"]
        status, refused = await post(http, url, {})
        assert status == 422
        assert "all" in refused["detail"]
        status, refused = await post(http, url, {"all": True, "error": ["unknown_task"]})
        assert status == 422
        status, done = await post(http, url, {"all": True})
        assert (status, done["count"], done["left"]) == (200, 4, 0)

    @pytest.mark.parametrize(
        "body",
        [
            {"ids": [0]},
            {"ids": ["x"]},
            {"ids": list(range(1, 10_003))},
            {"error": ["no_such_code"]},
            {"since": "yesterday"},
            {"since": "1h", "until": "2h"},
            {"q": ""},
            {"q": "nul\u0000"},
            {"q": "\ud800"},
            {"routing_key": "\udfff"},
            {"through": -1},
            {"limit": 0},
            {"task": "not-a-uuid"},
            {"unknown_field": 1},
            {"all": True, "limit": True},
            {"all": True, "limit": "1"},
            {"all": True, "through": 1.5},
            {"all": "true"},
            {"all": 1},
            {"all": True, "dry_run": "false"},
            {"ids": [True]},
            {"ids": ["1"]},
            [],
            "all",
        ],
    )
    async def test_bad_bodies_are_4xx(
        self, operated: str, http: aiohttp.ClientSession, database_url: str, body: object
    ) -> None:
        """Each malformed body: a 4xx with a reason, nothing deleted."""
        await bury(database_url, [letter(1)])
        status, answer = await post(http, f"{operated}/dead-letters/purge", body)
        assert 400 <= status < 500, answer
        assert answer["detail"]
        assert await rows_of(database_url) == ["m1"]


class TestReplay:
    """POST /dead-letters/replay: the same replay as `dlq replay`, and the events stored."""

    async def test_replayed_letters_are_stored(
        self, env: Env, operated: str, http: aiohttp.ClientSession
    ) -> None:
        """Letters of a task that now exists go back through the consumer into the history."""
        task = uuid.uuid4()
        await bury(env.database_url, [letter(n, task=task) for n in range(1, 13)])
        await bury(env.database_url, [letter(50, code="invalid_json")])
        await env.sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
        async with running(env.settings):
            status, done = await post(
                http, f"{operated}/dead-letters/replay", {"task": str(task), "max_replays": 3}
            )
            assert status == 200, done
            assert (done["selected"], done["count"]) == (12, 12)
            assert set(done["left_behind"].values()) == {0}
            assert {"at_max_replays", "unroutable"} <= set(done["left_behind"])
            assert done["left"] == 1
            stored = await wait_for(
                lambda: env.sql.fetchval(
                    "SELECT count(*) FROM task_build_history WHERE task_id = $1", task
                ),
                lambda n: n == 12,
                what="the replayed events stored",
            )
        assert stored == 12
        assert await rows(env.sql) == ["m50"]
        action = done["action"]
        assert (action["action"], action["affected"], action["state"]) == ("replay", 12, "finished")
        assert action["filter"] == {"task": str(task), "through": action["filter"]["through"]} | {
            "max_replays": 3
        }

    async def test_a_replayed_copy_failing_again_counts_its_replay(
        self, env: Env, operated: str, http: aiohttp.ClientSession
    ) -> None:
        """A replay count signed, as `dlq replay` signs it: the consumer counts the replay."""
        task = uuid.uuid4()  # no such task: the copy fails again at once (no retry window)
        await bury(env.database_url, [letter(1, task=task)])
        async with running(env.settings):
            status, done = await post(http, f"{operated}/dead-letters/replay", {})
            assert status == 200, done
            assert done["count"] == 1
            again = await wait_for(
                lambda: env.sql.fetch(f"SELECT replay_count, error FROM {TABLE}"),
                lambda found: len(found) == 1 and found[0]["replay_count"] == 1,
                what="the copy dead-lettered again, its replay counted",
            )
        assert again[0]["error"] == "unknown_task"

    async def test_unroutable_letters_stay(
        self, env: Env, operated: str, http: aiohttp.ClientSession
    ) -> None:
        """A letter whose routing key reaches no queue is left, and counted as such."""
        await bury(env.database_url, [letter(1, routing_key="nowhere.at.all"), letter(2)])
        status, done = await post(http, f"{operated}/dead-letters/replay", {})
        assert status == 200, done
        assert done["count"] == 1
        assert done["left_behind"]["unroutable"] == 1
        assert await rows(env.sql) == ["m1"]
        assert done["action"]["skipped"] == 1

    async def test_a_broker_that_does_not_answer_is_a_503(
        self, settings: Settings, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """No broker: 503 with the reason; every letter stays."""
        await bury(database_url, [letter(1)])
        closed = operator_settings(settings, amqp_url="amqp://guest:guest@127.0.0.1:9/")
        async with serving(closed) as url:
            status, body = await post(http, f"{url}/dead-letters/replay", {})
        assert status == 503
        assert "broker" in body["detail"]
        assert await rows_of(database_url) == ["m1"]


class TestActions:
    """GET /dead-letters/actions: every replay and purge, by command or over HTTP."""

    async def test_pages_of_the_record(
        self, operated: str, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """Five purges, pages of two, newest first; the reader's token reads them."""
        await bury(database_url, [letter(n) for n in range(5)])
        for n in range(5):
            status, _ = await post(http, f"{operated}/dead-letters/purge", {"q": f"m{n}"})
            assert status == 200
        seen: list[str] = []
        after = None
        while True:
            query = {"limit": "2"} | ({"after": after} if after else {})
            status, page = await get_json(
                http, f"{operated}/dead-letters/actions", params=query, headers=READ
            )
            assert status == 200
            seen.extend(action["filter"]["q"] for action in page["actions"])
            after = page["next"]
            if after is None:
                break
        assert seen == [f"m{n}" for n in range(4, -1, -1)]
        status, _ = await get_json(
            http, f"{operated}/dead-letters/actions", params={"after": "x"}, headers=READ
        )
        assert status == 400
