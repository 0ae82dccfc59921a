"""`task-history serve`: the HTTP read API against the real PostgreSQL, served by uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import asyncpg
import pytest

from consumer.api.server import serving, serving_with_state
from consumer.settings import Settings, load_settings
from consumer.store import Store
from tests.harness import proxy_to, run_command, settings_environment, start_command, through
from tests.helpers import at, new_task
from tests.integration.test_roles import login_role
from tests.letters import bury, letter

# Generous bounds for a loaded CI machine, not the expected delays (well under a second).
ARRIVAL_TIMEOUT = 10
TOKEN = "s3cret-token"  # noqa: S105  # a test's own token


def api_settings(database_url: str, **update: object) -> Settings:
    """Settings for a server of the test's own: its database, any free port, quick keep-alives."""
    return load_settings(
        database_url=database_url,
        api_port=0,
        api_keepalive_seconds=0.5,
        retry_backoff_max_seconds=1,
        log_format="json",
        **update,
    )


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[str]:
    """The API on this test's database, served in the test's event loop; its base URL."""
    async with serving(api_settings(database_url)) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, **options: Any) -> tuple[int, Any]:  # noqa: ANN401  # request options as aiohttp takes them
    """GET `url`; (status, parsed JSON body)."""
    async with http.get(url, **options) as response:
        return response.status, await response.json(content_type=None)


async def add_entries(  # noqa: PLR0913  # one parameter per column a test varies
    sql: asyncpg.Connection,
    task: uuid.UUID,
    seconds: Sequence[float],
    *,
    workspace: uuid.UUID | None = None,
    session: uuid.UUID | None = None,
    types: Sequence[str] = ("agent_turn",),
    prefix: str = "entry",
) -> list[uuid.UUID]:
    """Entries of `task` created at at(s) for each s, in one statement; types taken in turn."""
    ids = [uuid.uuid4() for _ in seconds]
    await sql.execute(
        """
        INSERT INTO task_build_history (id, task_id, workspace_id, session_id, context_type,
                                        content, metadata, created_at)
        SELECT id, $2, $3, $4, context_type, $7 || ' ' || n, jsonb_build_object('n', n),
               created_at
        FROM unnest($1::uuid[], $5::text[], $6::timestamptz[]) WITH ORDINALITY
            AS r (id, context_type, created_at, n)
        ORDER BY n
        """,
        ids,
        task,
        workspace,
        session,
        [types[n % len(types)] for n in range(len(seconds))],
        [at(s) for s in seconds],
        prefix,
    )
    return ids


async def ordered_ids(sql: asyncpg.Connection, column: str, value: uuid.UUID) -> list[uuid.UUID]:
    """The ids of the entries whose `column` is `value`, oldest first, ties in arrival order."""
    records = await sql.fetch(
        f"SELECT id FROM task_build_history WHERE {column} = $1 ORDER BY created_at, seq",
        value,
    )
    return [record["id"] for record in records]


def ids_of(page: dict[str, Any]) -> list[uuid.UUID]:
    """The ids of a page's entries, in order."""
    return [uuid.UUID(entry["id"]) for entry in page["entries"]]


class EventStream:
    """A text/event-stream response read event by event; comments are counted, not returned."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        """Read `response`."""
        self.response = response
        self.comments = 0

    async def next(self, *, timeout: float = ARRIVAL_TIMEOUT) -> dict[str, str]:
        """The next event with data, as its fields; fails after `timeout` s without one."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    return fields
                fields = {}
            elif line.startswith(":"):
                self.comments += 1
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    async def entries(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        """The next `count` events as (id, parsed entry)."""
        events = [await self.next() for _ in range(count)]
        return [(event["id"], json.loads(event["data"])) for event in events]


Opener = Callable[..., Awaitable[EventStream]]


@pytest.fixture
async def stream_of(
    http: aiohttp.ClientSession,
) -> AsyncIterator[Opener]:
    """Opens event streams and closes them all after the test."""
    opened: list[aiohttp.ClientResponse] = []

    async def open_stream(url: str, **headers: str) -> EventStream:
        response = await http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None))
        opened.append(response)
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = EventStream(response)
        # The first field is `retry:`: once it is here, the server watches the task.
        assert (await response.content.readline()).startswith(b"retry: ")
        return stream

    yield open_stream
    for response in opened:
        response.close()


class TestPages:
    """The history routes: keyset pages, cursors, filters, and the entry shape of `show --json`."""

    async def test_250_entries_of_a_workspace_in_3_pages(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Pages of 100, 100 and 50 follow each other by cursor, in order, each entry once."""
        workspace = uuid.uuid4()
        for n, count in enumerate((100, 100, 50)):
            task = await new_task(sql)
            await add_entries(sql, task, [s * 3 + n for s in range(count)], workspace=workspace)
        expected = await ordered_ids(sql, "workspace_id", workspace)
        seen: list[uuid.UUID] = []
        sizes = []
        after: str | None = None
        while True:
            params = {"limit": "100"} | ({"after": after} if after else {})
            status, page = await get_json(
                http, f"{api}/workspaces/{workspace}/history", params=params
            )
            assert status == 200, page
            sizes.append(len(page["entries"]))
            seen.extend(ids_of(page))
            after = page["next"]
            if after is None:
                break
        assert sizes == [100, 100, 50]
        assert seen == expected

    async def test_default_page_is_100_and_a_task_page_by_cursor(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Without limit a page holds 100; limit 40 pages a task's 100 entries as 40, 40, 20."""
        task = await new_task(sql)
        await add_entries(sql, task, range(100))
        expected = await ordered_ids(sql, "task_id", task)
        status, page = await get_json(http, f"{api}/tasks/{task}/history")
        assert status == 200
        assert ids_of(page) == expected
        assert page["next"] is None
        got: list[uuid.UUID] = []
        params = {"limit": "40"}
        for size in (40, 40, 20):
            _, page = await get_json(http, f"{api}/tasks/{task}/history", params=params)
            assert len(page["entries"]) == size
            got.extend(ids_of(page))
            params = {"limit": "40", "after": page["next"]}
        assert page["next"] is None
        assert got == expected

    async def test_entries_are_what_show_json_prints(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection, database_url: str
    ) -> None:
        """Each entry is the object `task-history show --json` prints for it, field for field."""
        task = await new_task(sql)
        await add_entries(
            sql, task, range(5), workspace=uuid.uuid4(), types=("error", "chat_message")
        )
        code, out, err = await run_command(
            "show", str(task), "--json", environment=_environment(database_url)
        )
        assert code == 0, err
        _, page = await get_json(http, f"{api}/tasks/{task}/history")
        assert page["entries"] == [json.loads(line) for line in out.splitlines()]
        assert set(page) == {"entries", "next"}

    async def test_filters_by_type_and_time(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """The type (repeated), since (inclusive), until (exclusive) and newest_first combine."""
        task = await new_task(sql)
        types = ("agent_turn", "error", "chat_message")
        await add_entries(sql, task, range(30), types=types)
        url = f"{api}/tasks/{task}/history"
        _, page = await get_json(http, url, params=[("type", "error"), ("type", "chat_message")])
        assert {entry["context_type"] for entry in page["entries"]} == {"error", "chat_message"}
        assert len(page["entries"]) == 20
        since, until = at(10).isoformat(), at(20).isoformat()
        _, page = await get_json(http, url, params={"since": since, "until": until})
        assert [entry["content"] for entry in page["entries"]] == [
            f"entry {n}" for n in range(11, 21)
        ]
        _, page = await get_json(
            http, url, params={"type": "error", "newest_first": "true", "limit": "3"}
        )
        assert [entry["content"] for entry in page["entries"]] == [
            "entry 29",
            "entry 26",
            "entry 23",
        ]
        _, older = await get_json(
            http,
            url,
            params={"type": "error", "newest_first": "true", "limit": "3", "after": page["next"]},
        )
        assert older["entries"][0]["content"] == "entry 20"
        _, recent = await get_json(http, url, params={"since": "1000d"})
        assert len(recent["entries"]) == 30

    async def test_workspace_and_session_routes(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """A workspace's route reads across its tasks; a session's reads only that session."""
        workspace, session = uuid.uuid4(), uuid.uuid4()
        first, second = await new_task(sql), await new_task(sql)
        await add_entries(sql, first, range(3), workspace=workspace, session=session)
        await add_entries(sql, second, range(3, 5), workspace=workspace)
        await add_entries(sql, second, range(5, 7))
        _, page = await get_json(http, f"{api}/workspaces/{workspace}/history")
        assert ids_of(page) == await ordered_ids(sql, "workspace_id", workspace)
        assert len(page["entries"]) == 5
        _, page = await get_json(http, f"{api}/sessions/{session}/history")
        assert ids_of(page) == await ordered_ids(sql, "session_id", session)
        assert len(page["entries"]) == 3

    async def test_an_unknown_task_has_an_empty_history(
        self, api: str, http: aiohttp.ClientSession
    ) -> None:
        """A task with no entries (or none at all) answers 200 with no entries, not 404."""
        status, page = await get_json(http, f"{api}/tasks/{uuid.uuid4()}/history")
        assert (status, page) == (200, {"entries": [], "next": None})
        status, _ = await get_json(http, f"{api}/no/such/route")
        assert status == 404

    async def test_refusals_say_what_is_wrong(self, api: str, http: aiohttp.ClientSession) -> None:
        """Out-of-range limits, bad cursors, types, times and ids: 422 or 400, in one line."""
        url = f"{api}/tasks/{uuid.uuid4()}/history"
        cases = [
            ({"limit": "0"}, 422, "limit"),
            ({"limit": "1001"}, 422, "less than or equal to 1000"),
            ({"after": "not-a-cursor"}, 400, "is not a cursor this server gave out"),
            ({"type": "bogus"}, 422, "parameter type"),
            ({"since": "yesterday"}, 422, "parameter since"),
            ({"since": at(5).isoformat(), "until": at(1).isoformat()}, 422, "earlier than"),
        ]
        for params, status, words in cases:
            got, body = await get_json(http, url, params=params)
            assert (got, words in body["detail"]) == (status, True), (params, body)
            assert "\n" not in body["detail"]
        status, body = await get_json(http, f"{api}/tasks/not-a-uuid/history")
        assert status == 422
        assert "task_id" in body["detail"]


class TestStream:
    """GET /tasks/{id}/history/stream: new entries as Server-Sent Events, resumable."""

    async def test_an_entry_stored_while_listening_arrives(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection, stream_of: Opener
    ) -> None:
        """A row inserted while a client listens arrives as one event; its id is a cursor."""
        task, other = await new_task(sql), await new_task(sql)
        await add_entries(sql, task, [0], prefix="before")
        stream = await stream_of(f"{api}/tasks/{task}/history/stream")
        await add_entries(sql, other, [1], prefix="another task")
        ids = await add_entries(sql, task, [2, 3], prefix="live")
        events = await stream.entries(2)
        assert [uuid.UUID(entry["id"]) for _, entry in events] == ids
        assert events[0][1]["content"] == "live 1"
        # The event id is a cursor the pages take: after the first event comes the second.
        status, page = await get_json(
            http,
            f"{api}/tasks/{task}/history",
            params={"after": events[0][0]},
        )
        assert status == 200
        assert ids_of(page) == ids[1:]

    async def test_keep_alive_comments_while_idle(
        self, api: str, sql: asyncpg.Connection, stream_of: Opener
    ) -> None:
        """An idle stream sends comments (every 0.5 s here), and still delivers afterwards."""
        task = await new_task(sql)
        stream = await stream_of(f"{api}/tasks/{task}/history/stream")
        await asyncio.sleep(1.6)
        await add_entries(sql, task, [0])
        await stream.next()
        assert stream.comments >= 2

    async def test_last_event_id_resumes_with_exactly_the_missed_entries(
        self, api: str, sql: asyncpg.Connection, stream_of: Opener
    ) -> None:
        """Reconnecting with Last-Event-ID: what was missed, in order, then live; nothing twice."""
        task = await new_task(sql)
        stream = await stream_of(f"{api}/tasks/{task}/history/stream")
        first = await add_entries(sql, task, [0, 1], prefix="seen")
        seen = await stream.entries(2)
        assert [uuid.UUID(entry["id"]) for _, entry in seen] == first
        stream.response.close()
        missed = await add_entries(sql, task, [2, 3, 4], prefix="missed")
        resumed = await stream_of(
            f"{api}/tasks/{task}/history/stream", **{"Last-Event-ID": seen[-1][0]}
        )
        later = await add_entries(sql, task, [5], prefix="later")
        got = await resumed.entries(4)
        assert [uuid.UUID(entry["id"]) for _, entry in got] == missed + later
        extra = await add_entries(sql, task, [6], prefix="extra")
        assert [uuid.UUID(entry["id"]) for _, entry in await resumed.entries(1)] == extra

    async def test_from_start_sends_the_current_entries_first(
        self, api: str, sql: asyncpg.Connection, stream_of: Opener
    ) -> None:
        """?from_start=true: the task's entries in arrival order, then new ones."""
        task = await new_task(sql)
        old = await add_entries(sql, task, [0, 1, 2])
        stream = await stream_of(f"{api}/tasks/{task}/history/stream?from_start=true")
        new = await add_entries(sql, task, [3])
        assert [uuid.UUID(entry["id"]) for _, entry in await stream.entries(4)] == old + new

    async def test_a_bad_last_event_id_is_refused(
        self, api: str, http: aiohttp.ClientSession
    ) -> None:
        """A Last-Event-ID this server did not give out: 400 saying so."""
        status, body = await get_json(
            http,
            f"{api}/tasks/{uuid.uuid4()}/history/stream",
            headers={"Last-Event-ID": "garbage"},
        )
        assert status == 400
        assert "Last-Event-ID" in body["detail"]

    async def test_a_client_that_leaves_frees_its_watcher(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Once a client closes its stream, the server stops watching for it."""
        task = await new_task(sql)
        async with serving_with_state(api_settings(database_url)) as (url, state):
            response = await http.get(f"{url}/tasks/{task}/history/stream")
            assert (await response.content.readline()).startswith(b"retry: ")
            assert state.feeds.watchers == 1
            response.close()
            deadline = asyncio.get_running_loop().time() + ARRIVAL_TIMEOUT
            while state.feeds.watchers:
                assert asyncio.get_running_loop().time() < deadline, "the watcher stayed"
                await asyncio.sleep(0.05)

    async def test_a_client_that_leaves_before_the_body_starts_frees_its_watcher(
        self, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """Clients hanging up before a byte came back (the page does, often) leave no watcher."""
        task = await new_task(sql)
        async with serving_with_state(api_settings(database_url)) as (url, state):
            host, port = url.removeprefix("http://").rsplit(":", 1)
            request = f"GET /tasks/{task}/history/stream HTTP/1.1\r\nHost: {host}\r\n\r\n"
            for _ in range(20):
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(request.encode())
                await writer.drain()
                writer.close()  # before `retry:`, before anything came back
                await writer.wait_closed()
            deadline = asyncio.get_running_loop().time() + ARRIVAL_TIMEOUT
            while state.feeds.watchers:
                assert asyncio.get_running_loop().time() < deadline, "watchers stayed"
                await asyncio.sleep(0.05)

    async def test_a_resume_never_repeats_what_the_client_had(
        self, api: str, http: aiohttp.ClientSession, sql: asyncpg.Connection, stream_of: Opener
    ) -> None:
        """Entries the client had, handed out late by a lagging feed, skip its resumed stream."""
        task = await new_task(sql)
        # Another watcher keeps the task's feed, so the resumed stream shares one that lags.
        await stream_of(f"{api}/tasks/{task}/history/stream")
        # The feed only learns of entries from notifications: without one, it lags behind.
        await sql.execute(
            "ALTER TABLE task_build_history DISABLE TRIGGER task_build_history_notify"
        )
        had = await add_entries(sql, task, [0, 1, 2], prefix="had")
        await sql.execute("ALTER TABLE task_build_history ENABLE TRIGGER task_build_history_notify")
        # The client had the first two: it resumes after the second.
        _, page = await get_json(http, f"{api}/tasks/{task}/history", params={"limit": "2"})
        assert ids_of(page) == had[:2]
        resumed = await stream_of(
            f"{api}/tasks/{task}/history/stream", **{"Last-Event-ID": page["next"]}
        )
        later = await add_entries(sql, task, [3], prefix="later")  # wakes the feed: all four
        got = await resumed.entries(2)
        assert [uuid.UUID(entry["id"]) for _, entry in got] == [had[2], *later]

    async def test_many_watchers_share_one_listening_connection(
        self, api: str, sql: asyncpg.Connection, stream_of: Opener, database_url: str
    ) -> None:
        """Ten watchers of two tasks all get their task's entry; the server LISTENs once."""
        tasks = [await new_task(sql), await new_task(sql)]
        streams = [await stream_of(f"{api}/tasks/{tasks[n % 2]}/history/stream") for n in range(10)]
        ids = [await add_entries(sql, task, [n]) for n, task in enumerate(tasks)]
        for n, stream in enumerate(streams):
            assert [uuid.UUID(entry["id"]) for _, entry in await stream.entries(1)] == ids[n % 2]
        name = database_url.rsplit("/", 1)[-1]
        listening = await sql.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
            name,
        )
        assert listening == 1


class TestSecurity:
    """The bearer token, CORS, and a database role that can only read."""

    async def test_token_on(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """With a token: 401 and a Bearer challenge without it or with a wrong one; health open."""
        task = await new_task(sql)
        async with serving(api_settings(database_url, api_token=TOKEN)) as url:
            for path in (f"/tasks/{task}/history", "/dead-letters", "/openapi.json"):
                async with http.get(url + path) as response:
                    assert response.status == 401
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "bearer token" in (await response.json())["detail"]
                wrong = {"Authorization": "Bearer nope"}
                async with http.get(url + path, headers=wrong) as response:
                    assert response.status == 401
                    assert "invalid_token" in response.headers["WWW-Authenticate"]
                right = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get(url + path, headers=right) as response:
                    assert response.status == 200
            async with http.get(
                f"{url}/tasks/{task}/history/stream", params={"token": TOKEN}
            ) as response:
                assert response.status == 401  # never from the query string
            for path in ("/healthz", "/readyz", "/", "/static/app.js"):
                async with http.get(url + path) as response:
                    assert response.status == 200, path

    async def test_token_off(self, api: str, http: aiohttp.ClientSession) -> None:
        """Without a token setting every route answers without one."""
        for path in ("/dead-letters", "/openapi.json", f"/tasks/{uuid.uuid4()}/history"):
            async with http.get(api + path) as response:
                assert response.status == 200, path

    async def test_cors_only_for_listed_origins(
        self, database_url: str, api: str, http: aiohttp.ClientSession
    ) -> None:
        """Allowed origins get the CORS headers (preflight included); others and defaults don't."""
        path = f"/tasks/{uuid.uuid4()}/history"
        async with http.get(api + path, headers={"Origin": "https://board.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        settings = api_settings(
            database_url,
            api_cors_origins="https://board.example, http://localhost:3000",
            api_token=TOKEN,
        )
        async with serving(settings) as url:
            headers = {"Origin": "https://board.example", "Authorization": f"Bearer {TOKEN}"}
            async with http.get(url + path, headers=headers) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == "https://board.example"
            headers["Origin"] = "https://evil.example"
            async with http.get(url + path, headers=headers) as response:
                assert "Access-Control-Allow-Origin" not in response.headers
            preflight = {
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            }
            async with http.options(url + path, headers=preflight) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"

    async def test_served_as_the_reader_role_which_cannot_insert(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """As a member of task_history_reader every route works, and the role can't INSERT."""
        task = await new_task(sql)
        await bury(database_url, [letter(1)])
        async for reader_url in login_role(database_url, "task_history_reader"):
            async with serving(api_settings(reader_url)) as url:
                stream = await http.get(f"{url}/tasks/{task}/history/stream")
                assert (await stream.content.readline()).startswith(b"retry: ")
                ids = await add_entries(sql, task, [0])
                assert json.loads((await EventStream(stream).next())["data"])["id"] == str(ids[0])
                stream.close()
                for path in (
                    f"/tasks/{task}/history",
                    "/dead-letters",
                    "/dead-letters/m1",
                    "/readyz",
                ):
                    status, body = await get_json(http, url + path)
                    assert status == 200, body
            connection = await asyncpg.connect(reader_url)
            try:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await connection.execute(
                        "INSERT INTO task_build_history (task_id, context_type, content)"
                        " VALUES ($1, 'error', 'x')",
                        task,
                    )
            finally:
                await connection.close()

    async def test_the_servers_connections_refuse_writes_whatever_the_role(
        self, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """A read-only store's connections refuse an INSERT even as a role that may write."""
        task = await new_task(sql)
        async with Store(database_url, max_connections=1, read_only=True) as store:
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await store.pool.execute(
                    "INSERT INTO task_build_history (task_id, context_type, content)"
                    " VALUES ($1, 'error', 'x')",
                    task,
                )


class TestDeadLetters:
    """GET /dead-letters and /dead-letters/{id}: what `dlq list --json` and `dlq show` print."""

    async def test_the_census_equals_dlq_list_json(
        self, api: str, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """The same object as `dlq list --json`, unfiltered and filtered by code."""
        task = uuid.uuid4()
        codes = ("invalid_event", "unknown_task", "invalid_json")
        await bury(database_url, [letter(n, code=codes[n % 3], task=task) for n in range(12)])
        environment = _environment(database_url)
        for params in ({}, {"error": "unknown_task"}):
            flags = [f"--{name}={value}" for name, value in params.items()]
            code, out, err = await run_command(
                "dlq", "list", "--json", *flags, environment=environment
            )
            assert code == 0, err
            status, body = await get_json(http, f"{api}/dead-letters", params=params)
            assert status == 200
            assert body == json.loads(out)
        status, body = await get_json(http, f"{api}/dead-letters", params={"error": "nope"})
        assert status == 422
        assert "not a dead-letter error code" in body["detail"]

    async def test_one_by_id(
        self, api: str, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """A letter by row id or message id: `dlq show`'s object, and its body's bytes as text.

        An unknown one is 404.
        """
        buried = letter(7)
        await bury(database_url, [buried])
        code, out, err = await run_command(
            "dlq", "show", "m7", environment=_environment(database_url)
        )
        assert code == 0, err
        status, body = await get_json(http, f"{api}/dead-letters/m7")
        assert status == 200
        raw = buried.body
        assert body.pop("body_bytes") == len(raw)
        assert json.loads(body.pop("body_text")) == json.loads(raw)
        assert body.pop("body_hex") is None
        assert body == json.loads(out)
        status, _ = await get_json(http, f"{api}/dead-letters/{body['id']}")
        assert status == 200
        status, body = await get_json(http, f"{api}/dead-letters/m999")
        assert status == 404
        assert "m999" in body["detail"]


class TestFailures:
    """A failure the API did not expect is JSON too, and never shows the database's own words."""

    async def test_a_refused_read_is_500_with_a_fixed_line(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """The database refusing a read (here a grant taken back): 500, its text only logged."""
        task = await new_task(sql)
        async for reader_url in login_role(database_url, "task_history_reader"):
            await sql.execute("REVOKE SELECT ON task_build_history FROM task_history_reader")
            async with serving(api_settings(reader_url)) as url:
                status, body = await get_json(http, f"{url}/tasks/{task}/history")
        assert status == 500
        assert body == {"detail": "the database refused the read; the server's log says why"}

    async def test_an_unexpected_error_is_500_internal_error(
        self, database_url: str, http: aiohttp.ClientSession
    ) -> None:
        """Any other exception in a route: 500 `{"detail": "internal error"}`, nothing of it."""
        async with serving_with_state(api_settings(database_url)) as (url, state):

            async def broken(_key: str) -> None:
                raise RuntimeError("secret internals")

            state.store.dead_letter = broken  # type: ignore[method-assign,assignment]
            async with http.get(f"{url}/dead-letters/m1") as response:
                assert response.status == 500
                assert response.headers["Content-Type"] == "application/json"
                assert await response.json() == {"detail": "internal error"}


class TestHealth:
    """/healthz answers while the process runs; /readyz only while the database answers."""

    async def test_readyz_follows_the_database(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Ready, then 503 while the database is cut off (history too), then ready again."""
        proxy = await proxy_to(database_url)
        task = await new_task(sql)
        async with serving(
            api_settings(through(database_url, proxy.port), database_timeout_seconds=3)
        ) as url:
            assert (await get_json(http, f"{url}/readyz"))[0] == 200
            await proxy.cut()
            status, body = await get_json(http, f"{url}/readyz")
            assert status == 503
            assert body["status"].startswith("not ready: database unavailable")
            assert (await get_json(http, f"{url}/healthz"))[0] == 200
            status, body = await get_json(http, f"{url}/tasks/{task}/history")
            assert status == 503
            assert "database unavailable" in body["detail"]
            await proxy.start()
            deadline = asyncio.get_running_loop().time() + 30
            while (await get_json(http, f"{url}/readyz"))[0] != 200:
                assert asyncio.get_running_loop().time() < deadline, "not ready again in 30 s"
                await asyncio.sleep(0.2)
            assert (await get_json(http, f"{url}/tasks/{task}/history"))[0] == 200
        await proxy.cut()

    async def test_a_silent_partition_is_noticed_and_nothing_is_missed(
        self, database_url: str, sql: asyncpg.Connection, stream_of: Opener
    ) -> None:
        """A partition is noticed by pinging the LISTEN connection; what it hid arrives after it."""
        proxy = await proxy_to(database_url)
        task = await new_task(sql)
        settings = api_settings(through(database_url, proxy.port), database_timeout_seconds=2)
        async with serving_with_state(settings) as (url, state):
            stream = await stream_of(f"{url}/tasks/{task}/history/stream")
            assert state.feeds.listening
            proxy.freeze()
            ids = await add_entries(sql, task, [0], prefix="during the partition")
            deadline = asyncio.get_running_loop().time() + 15
            while state.feeds.listening:
                assert asyncio.get_running_loop().time() < deadline, "the partition went unseen"
                await asyncio.sleep(0.1)
            proxy.thaw()
            got = await stream.entries(1)
            assert [uuid.UUID(entry["id"]) for _, entry in got] == ids
            deadline = asyncio.get_running_loop().time() + 30
            while not state.feeds.listening:
                assert asyncio.get_running_loop().time() < deadline, "not listening again"
                await asyncio.sleep(0.1)
        await proxy.cut()

    async def test_starts_before_the_database_is_there(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """Started with the database away: alive, not ready; once it is there, ready and live."""
        proxy = await proxy_to(database_url)
        await proxy.cut()
        task = await new_task(sql)
        async with serving(api_settings(through(database_url, proxy.port))) as url:
            assert (await get_json(http, f"{url}/healthz"))[0] == 200
            assert (await get_json(http, f"{url}/readyz"))[0] == 503
            assert (await get_json(http, f"{url}/tasks/{task}/history"))[0] == 503
            await proxy.start()
            deadline = asyncio.get_running_loop().time() + 30
            while (await get_json(http, f"{url}/readyz"))[0] != 200:
                assert asyncio.get_running_loop().time() < deadline, "not ready in 30 s"
                await asyncio.sleep(0.2)
        await proxy.cut()


class TestServeCommand:
    """`task-history serve` in a process of its own: listens, stops on SIGTERM, clear failures."""

    async def test_serves_and_stops_on_sigterm_with_a_stream_open(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """It prints its URL, answers, and exits 0 soon after SIGTERM though a stream is open."""
        task = await new_task(sql)
        environment = _environment(database_url) | {"TASK_HISTORY_API_TOKEN": TOKEN}
        process = await start_command("serve", "--port", "0", environment=environment)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"serving on http://127.0.0.1:"), line
        url = line.decode().split()[-1]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        status, _ = await get_json(http, f"{url}/tasks/{task}/history", headers=auth)
        assert status == 200
        stream = await http.get(f"{url}/tasks/{task}/history/stream", headers=auth)
        assert (await stream.content.readline()).startswith(b"retry: ")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert await stream.content.read() == b"\n"  # the stream ended, cleanly
        stream.close()

    async def test_a_taken_port_is_one_line_and_exit_1(self, database_url: str) -> None:
        """Another program on the port: exit 1 and one line saying so."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            code, out, err = await run_command(
                "serve", "--port", str(port), environment=_environment(database_url)
            )
        assert code == 1
        assert err == f"task-history: error: cannot listen on 127.0.0.1:{port}: the port is taken\n"
        assert out == ""

    async def test_a_database_that_does_not_exist_is_one_line_and_exit_1(
        self, database_url: str
    ) -> None:
        """No such database will not come by waiting: exit 1 at once with one line naming it."""
        missing = f"{database_url.rsplit('/', 1)[0]}/no_such_database_{uuid.uuid4().hex[:8]}"
        code, out, err = await run_command(
            "serve", "--port", "0", environment=_environment(missing)
        )
        assert code == 1
        assert err.count("\n") == 1, err
        assert err.startswith("task-history: error: database 'no_such_database_")
        assert "does not exist" in err
        assert out == ""

    async def test_bad_settings_exit_2(self, database_url: str) -> None:
        """An invalid port or CORS origin setting: exit 2 and one line naming it."""
        environment = _environment(database_url)
        code, _, err = await run_command(
            "serve", environment=environment | {"TASK_HISTORY_API_PORT": "70000"}
        )
        assert (code, err.count("\n")) == (2, 1)
        assert "TASK_HISTORY_API_PORT" in err
        code, _, err = await run_command(
            "serve", environment=environment | {"TASK_HISTORY_API_CORS_ORIGINS": "*"}
        )
        assert (code, err.count("\n")) == (2, 1)
        assert "TASK_HISTORY_API_CORS_ORIGINS" in err


def _environment(database_url: str) -> dict[str, str]:
    """The environment of a `task-history` process on `database_url`, logging as JSON."""
    settings = load_settings(database_url=database_url, log_format="json")
    environment = settings_environment(settings)
    return {key: value for key, value in environment.items() if "API" not in key} | {
        "PATH": os.environ.get("PATH", "")
    }
