"""`task-history serve` as an attacker on the network or in the operator's browser meets it.

DNS rebinding, missing security headers, an empty token, listening beyond loopback without one,
slow clients holding connections, pages and streams too large for memory, token bypasses,
static path traversal, SQL in parameters: each is tried against a real server on the real
database, and refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from yarl import URL

from consumer.api import security
from consumer.api.server import serving, serving_with_state
from tests.harness import run_command, start_command, wait_for
from tests.helpers import new_task
from tests.integration.test_api import TOKEN, _environment, api_settings, get_json
from tests.letters import bury, letter

SECRET_BODY = "dead 1"  # noqa: S105  # not a password: the body of dead letter m1, which the tests bury


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that sends what it is told (no cookies kept)."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


async def raw_request(url: str, request: bytes, *, within: float = 10) -> bytes:
    """Send `request` as it is to the server at `url`; everything it answers until it closes."""
    address = URL(url)
    assert address.host is not None
    assert address.port is not None
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    return int(answer.split(b" ", 2)[1])


class TestAllowedHosts:
    """Only the server's own names are answered: a rebinding page's name gets 400."""

    async def test_a_rebinding_page_reads_nothing(
        self, database_url: str, http: aiohttp.ClientSession
    ) -> None:
        """A page whose name resolves to 127.0.0.1 sends that name: 400, no dead letter read."""
        await bury(database_url, [letter(1)])
        async with serving(api_settings(database_url)) as url:
            port = URL(url).port
            for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io"):
                async with http.get(f"{url}/dead-letters/m1", headers={"Host": host}) as response:
                    body = await response.text()
                    assert response.status == 400, host
                    assert "TASK_HISTORY_API_ALLOWED_HOSTS" in json.loads(body)["detail"]
                    assert SECRET_BODY not in body
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST."):
                status, body = await get_json(
                    http, f"{url}/dead-letters/m1", headers={"Host": host}
                )
                assert status == 200, (host, body)
            # Health checks answer any name: orchestrators probe a container by its address.
            for path in ("/healthz", "/readyz"):
                status, _ = await get_json(http, url + path, headers={"Host": "10.1.2.3:8080"})
                assert status == 200

    async def test_no_host_or_two_hosts(self, database_url: str) -> None:
        """HTTP/1.0 without Host, or two Host headers: 400."""
        async with serving(api_settings(database_url)) as url:
            answer = await raw_request(url, b"GET /dead-letters HTTP/1.0\r\n\r\n")
            assert status_of(answer) == 400
            answer = await raw_request(
                url,
                b"GET /dead-letters HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
                b"Connection: close\r\n\r\n",
            )
            assert status_of(answer) == 400

    async def test_the_listening_address_is_allowed(
        self, database_url: str, http: aiohttp.ClientSession
    ) -> None:
        """Listening on 127.0.0.2, that address is a name the server answers; 127.0.0.3 isn't."""
        async with serving(api_settings(database_url, api_host="127.0.0.2")) as url:
            assert URL(url).host == "127.0.0.2"
            assert (await get_json(http, f"{url}/dead-letters"))[0] == 200
            status, _ = await get_json(http, f"{url}/dead-letters", headers={"Host": "127.0.0.3"})
            assert status == 400

    async def test_names_given_replace_the_defaults(
        self, database_url: str, http: aiohttp.ClientSession
    ) -> None:
        """TASK_HISTORY_API_ALLOWED_HOSTS: those names, subdomains by `*.`, and no others."""
        settings = api_settings(database_url, api_allowed_hosts="board.example.com, *.corp.example")
        async with serving(settings) as url:
            for host, status in (
                ("board.example.com", 200),
                ("BOARD.example.com:443", 200),
                ("ci.corp.example", 200),
                ("corp.example", 400),
                ("evilcorp.example", 400),
                ("localhost", 400),
            ):
                got, _ = await get_json(http, f"{url}/dead-letters", headers={"Host": host})
                assert got == status, host


SECURITY = {
    "Content-Security-Policy": security.CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class TestSecurityHeaders:
    """Every answer carries the security headers: pages, data, refusals, errors, streams."""

    async def test_on_every_kind_of_answer(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """The page, its files, JSON, 400, 401, 404, 422, the stream, metrics, OpenAPI."""
        assert "frame-ancestors 'none'" in security.CONTENT_SECURITY_POLICY
        task = await new_task(sql)
        async with serving(api_settings(database_url, api_token=TOKEN)) as url:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            cases: list[tuple[str, dict[str, str], int]] = [
                ("/", {}, 200),
                ("/static/app.js", {}, 200),
                ("/static/style.css", {}, 200),
                ("/static/nothing.js", {}, 404),
                ("/healthz", {}, 200),
                ("/readyz", {}, 200),
                (f"/tasks/{task}/history", auth, 200),
                (f"/tasks/{task}/history", {}, 401),
                ("/tasks/x/history", auth, 422),
                (f"/tasks/{task}/history?after=x", auth, 400),
                ("/no/such/route", auth, 404),
                ("/openapi.json", auth, 200),
                ("/metrics", auth, 200),
                ("/dead-letters", {**auth, "Host": "evil.example"}, 400),
            ]
            for path, headers, status in cases:
                async with http.get(url + path, headers=headers) as response:
                    assert response.status == status, path
                    for name, value in SECURITY.items():
                        assert response.headers.get(name) == value, (path, name)
            async with http.get(f"{url}/tasks/{task}/history/stream", headers=auth) as response:
                assert response.status == 200
                assert (
                    response.headers["Content-Security-Policy"]
                    == SECURITY["Content-Security-Policy"]
                )


class TestServeStartup:
    """What `serve` says at start about its token and where it listens."""

    async def test_an_empty_token_is_one_line_and_exit_2(self, database_url: str) -> None:
        """TASK_HISTORY_API_TOKEN= is refused: it would serve everything to everyone."""
        code, out, err = await run_command(
            "serve",
            "--port",
            "0",
            environment=_environment(database_url) | {"TASK_HISTORY_API_TOKEN": ""},
        )
        assert (code, out) == (2, "")
        assert err == (
            "task-history: error: invalid setting TASK_HISTORY_API_TOKEN: is empty: give a"
            " token, or unset it to serve without one\n"
        )

    @pytest.mark.parametrize(
        ("host", "token", "warned"),
        [("0.0.0.0", None, True), ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False)],  # noqa: S104  # listening everywhere is what is tried
    )
    async def test_a_warning_beyond_loopback_without_a_token(
        self, database_url: str, host: str, token: str | None, *, warned: bool
    ) -> None:
        """All interfaces without a token: one warning line saying who can read what."""
        environment = _environment(database_url)
        if token is not None:
            environment["TASK_HISTORY_API_TOKEN"] = token
        process = await start_command(
            "serve", "--host", host, "--port", "0", environment=environment
        )
        assert process.stdout is not None
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"serving on http://"), line
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        log = [json.loads(line) for line in (await process.stderr.read()).splitlines()]
        warnings = [entry for entry in log if entry.get("level") == "warning"]
        assert bool(warnings) == warned, log
        if warned:
            assert "set TASK_HISTORY_API_TOKEN" in warnings[0]["event"]


class TestAccessLogAndMetrics:
    """One log line per request, never the token; /metrics behind the token."""

    async def test_log_lines_and_metrics(
        self, database_url: str, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """Each request is a line (method, path, status, bytes, ms); the token is in none.

        /metrics has the API's series and the dead letters the database holds.
        """
        task = uuid.uuid4()
        log_path = tmp_path / "serve.log"
        environment = _environment(database_url) | {"TASK_HISTORY_API_TOKEN": TOKEN}
        with log_path.open("wb") as log_file:
            process = await start_command(
                "serve", "--port", "0", environment=environment, output=log_file.fileno()
            )
        try:
            url = await _url_from_log(log_path)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            # A client that puts the token where it does not belong too: in the address.
            path = f"/tasks/{task}/history"
            assert (await get_json(http, f"{url}{path}?token={TOKEN}", headers=auth))[0] == 200
            assert (await get_json(http, f"{url}{path}"))[0] == 401
            async with http.get(f"{url}/metrics") as response:
                assert response.status == 401
            async with http.get(f"{url}/metrics", headers=auth) as response:
                assert response.status == 200
                metrics = await response.text()
            assert (
                'task_history_api_requests_total{route="/tasks/{task_id}/history",status="200"}'
                " 1.0" in metrics
            )
            assert "process_resident_memory_bytes" in metrics
            # The dead letters the database holds, read at the scrape; no _created series.
            await bury(database_url, [letter(1, code="invalid_json"), letter(2, code="?")])
            async with http.get(f"{url}/metrics", headers=auth) as response:
                metrics = await response.text()
            assert 'task_history_dead_letters{code="invalid_json"} 1.0' in metrics
            assert 'task_history_dead_letters{code="other"} 1.0' in metrics
            assert 'task_history_dead_letters{code="unknown_task"} 0.0' in metrics
            assert "task_history_dead_letters_replayed_total 0.0" in metrics
            assert "_created" not in metrics
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 15)
        text = log_path.read_text()
        assert TOKEN not in text
        requests = [
            entry
            for entry in (json.loads(line) for line in text.splitlines() if line.startswith("{"))
            if entry.get("event") == "request"
        ]
        assert [(r["method"], r["path"], r["status"]) for r in requests] == [
            ("GET", path, 200),
            ("GET", path, 401),
            ("GET", "/metrics", 401),
            ("GET", "/metrics", 200),
            ("GET", "/metrics", 200),
        ]
        assert requests[0]["query"] == "token=***"
        assert all(r["bytes"] > 0 and r["ms"] >= 0 and r["client"] for r in requests)


async def _url_from_log(log_path: Path) -> str:
    """The URL `serve` announced on its output (the log file), once it does."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log_path.read_text)
        for line in text.splitlines():
            if line.startswith("serving on "):
                return line.split()[-1]
        await asyncio.sleep(0.1)
    raise AssertionError("serve did not start: " + await asyncio.to_thread(log_path.read_text))


async def add_large_entries(
    sql: asyncpg.Connection, task: uuid.UUID, count: int, *, characters: int, fill: str = "x"
) -> None:
    """`count` entries of `characters` characters each, in one statement, in order."""
    await sql.execute(
        """
        INSERT INTO task_build_history (task_id, context_type, content, created_at)
        SELECT $1, 'agent_turn', n || ' ' || repeat($3, $4), now() + make_interval(secs => n)
        FROM generate_series(1, $2) AS n ORDER BY n
        """,
        task,
        count,
        fill,
        characters,
    )


class TestBoundedByBytes:
    """A page stops at its byte budget; a stream reader that falls behind is dropped."""

    async def test_pages_stop_at_the_budget_and_continue(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """30 entries of 20,000 characters, a budget of 64 KiB: pages of 3, every entry once."""
        task = await new_task(sql)
        await add_large_entries(sql, task, 30, characters=20_000)
        budget = 65_536
        async with serving(api_settings(database_url, api_page_max_bytes=budget)) as url:
            for newest_first, expected in (("false", range(1, 31)), ("true", range(30, 0, -1))):
                seen: list[str] = []
                sizes: list[int] = []
                after: str | None = None
                while True:
                    params = {"limit": "1000", "newest_first": newest_first}
                    params |= {"after": after} if after else {}
                    async with http.get(f"{url}/tasks/{task}/history", params=params) as response:
                        assert response.status == 200
                        raw = await response.read()
                    page = json.loads(raw)
                    sizes.append(len(raw))
                    seen.extend(entry["content"].split()[0] for entry in page["entries"])
                    after = page["next"]
                    if after is None:
                        break
                assert seen == [str(n) for n in expected]
                assert max(sizes) <= budget
                assert len(sizes) == 10

    async def test_maximum_entries_fill_a_default_page_to_4_mib(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """100 entries of 65,536 three-byte characters: about 200 KB each, 20 to a page."""
        task = await new_task(sql)
        await add_large_entries(sql, task, 100, characters=65_530, fill="€")
        async with serving(api_settings(database_url)) as url:
            async with http.get(
                f"{url}/tasks/{task}/history", params={"limit": "1000"}
            ) as response:
                raw = await response.read()
            page = json.loads(raw)
        assert 4 * 1024 * 1024 - 200_000 < len(raw) <= 4 * 1024 * 1024 + 1000
        assert len(page["entries"]) == 21
        assert page["next"] is not None

    async def test_a_reader_that_stops_reading_is_dropped_with_the_reason(
        self, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """Entries keep coming, the client reads nothing: its stream ends, saying why."""
        task = await new_task(sql)
        settings = api_settings(database_url, api_stream_queue_bytes=65_536)
        async with serving_with_state(settings) as (url, state):
            address = URL(url)
            assert address.host is not None
            assert address.port is not None
            client = socket.socket()
            # A small receive window: what the server sends piles up on its side.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)  # noqa: FBT003  # the socket's own API
            loop = asyncio.get_running_loop()
            await loop.sock_connect(client, (address.host, address.port))
            await loop.sock_sendall(
                client,
                f"GET /tasks/{task}/history/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
            )
            first = await asyncio.wait_for(loop.sock_recv(client, 1024), 10)
            assert first.startswith(b"HTTP/1.1 200"), first
            await wait_for(
                lambda: asyncio.sleep(0.05, state.feeds.watchers),
                lambda watchers: watchers == 1,
                what="the stream's watcher",
            )
            dropped = state.metrics.streams_dropped
            deadline = time.monotonic() + 60
            rounds = 0
            # Until the watcher is ended: its stream is still blocked writing to this client.
            while not dropped._value.get() and time.monotonic() < deadline:  # noqa: SLF001  # the metric's value
                await add_large_entries(sql, task, 20, characters=50_000)
                rounds += 1
                await asyncio.sleep(0.2)
            assert dropped._value.get() == 1, "the slow reader was never dropped"  # noqa: SLF001
            received = bytearray(first)
            while not received.endswith(b"0\r\n\r\n"):
                chunk = await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 30)
                if not chunk:
                    break
                received += chunk
            client.close()
            assert state.feeds.watchers == 0
        assert b": dropped: this reader fell behind by more than" in received
        assert b"reconnect with Last-Event-ID" in received
        assert rounds >= 2


async def hold_slowly(host: str, port: int, *, hold: float) -> float | None:
    """Open a connection that sends request headers a line every 2 s (slowloris).

    Seconds until the server closed it, or None if it was still open after `hold` s.
    """
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0.0
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while time.monotonic() - started < hold:
            try:
                data = await asyncio.wait_for(reader.read(1024), 2)
            except TimeoutError:
                writer.write(b"X-Slow: 1\r\n")
                try:
                    await writer.drain()
                except OSError:
                    return time.monotonic() - started
                continue
            except OSError:
                return time.monotonic() - started
            if not data:
                return time.monotonic() - started
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class TestSlowClients:
    """1,500 connections sending headers slowly for 45 s do not hold the server."""

    async def test_slowloris(
        self, database_url: str, http: aiohttp.ClientSession, request: pytest.FixtureRequest
    ) -> None:
        """Each is closed by the server within its header deadline (10 s); then all is well."""
        process = await start_command(
            "serve", "--port", "0", environment=_environment(database_url)
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            url = line.decode().split()[-1]
            address = URL(url)
            assert address.host is not None
            assert address.port is not None
            started = time.monotonic()
            held = [
                asyncio.create_task(hold_slowly(address.host, address.port, hold=45))
                for _ in range(1500)
            ]
            await asyncio.sleep(3)
            async with http.get(f"{url}/healthz") as response:
                during = response.status  # 503 past the connection limit, else 200
            closed_after = await asyncio.gather(*held)
            elapsed = time.monotonic() - started
            async with http.get(f"{url}/healthz") as response:
                after = response.status
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 15)
        still_open = [seconds for seconds in closed_after if seconds is None]
        assert still_open == []
        longest = max(seconds for seconds in closed_after if seconds is not None)
        assert longest < 20, longest
        assert after == 200
        request.node.user_properties.append(
            (
                "summary",
                (
                    f"1500 slowloris connections: all closed by the server, the last after"
                    f" {longest:.1f} s (deadline 10 s); a request meanwhile got {during},"
                    f" after them {after}; {elapsed:.1f} s in all"
                ),
            )
        )


def _bearer_attempts() -> list[tuple[str, str, dict[str, str]]]:
    """(name, path, headers) of requests that try to get past the token."""
    right = TOKEN
    letter_path = "/dead-letters/m1"
    headers: list[tuple[str, dict[str, str]]] = [
        ("none", {}),
        ("empty", {"Authorization": ""}),
        ("scheme only", {"Authorization": "Bearer"}),
        ("scheme and space", {"Authorization": "Bearer "}),
        ("wrong token", {"Authorization": "Bearer wrong"}),
        ("a prefix", {"Authorization": f"Bearer {right[:-1]}"}),
        ("a longer token", {"Authorization": f"Bearer {right}x"}),
        ("another case", {"Authorization": f"Bearer {right.upper()}"}),
        ("basic scheme", {"Authorization": f"Basic {right}"}),
        ("token scheme", {"Authorization": f"Token {right}"}),
        ("no scheme", {"Authorization": right}),
        ("quoted", {"Authorization": f'Bearer "{right}"'}),
        ("comma list", {"Authorization": f"Bearer wrong, Bearer {right}"}),
        ("NUL after", {"Authorization": f"Bearer {right}\x00"}),
        ("tab inside", {"Authorization": f"Bearer\t{right[:3]}\t{right[3:]}"}),
        ("unicode look-alike", {"Authorization": f"Bearer {right.replace('e', 'е')}"}),  # noqa: RUF001  # Cyrillic e: the point
        ("in a cookie", {"Cookie": f"token={right}; access_token={right}"}),
        ("x-api-key", {"X-Api-Key": right}),
        ("x-auth-token", {"X-Auth-Token": right}),
        ("proxy authorization", {"Proxy-Authorization": f"Bearer {right}"}),
        ("x-forwarded-for loopback", {"X-Forwarded-For": "127.0.0.1"}),
        ("x-original-url", {"X-Original-URL": "/healthz"}),
        ("x-rewrite-url", {"X-Rewrite-URL": "/healthz"}),
    ]
    attempts = [(name, letter_path, header) for name, header in headers]
    attempts += [
        ("token in the query", f"{letter_path}?token={right}", {}),
        ("access_token in the query", f"{letter_path}?access_token={right}", {}),
        ("dot segment after healthz", "/healthz/../dead-letters/m1", {}),
        ("encoded dot segment", "/healthz/%2e%2e/dead-letters/m1", {}),
        ("through static", "/static/../dead-letters/m1", {}),
        ("through static, encoded", "/static/%2e%2e/dead-letters/m1", {}),
        ("double slash", "//dead-letters/m1", {}),
        ("trailing slash", "/dead-letters/m1/", {}),
        ("upper case path", "/DEAD-LETTERS/m1", {}),
        ("encoded letter", "/%64ead-letters/m1", {}),
        ("semicolon", "/healthz;/../dead-letters/m1", {}),
        ("openapi", "/openapi.json", {}),
        ("metrics", "/metrics", {}),
        ("census", "/dead-letters", {}),
        ("stream", f"/tasks/{uuid.uuid4()}/history/stream", {}),
    ]
    return attempts


BEARER_ATTEMPTS = _bearer_attempts()


class TestRefusedAsBefore:
    """What was refused already stays refused: token bypasses, traversal, SQL, writes."""

    async def test_token_bypass_attempts(
        self, database_url: str, request: pytest.FixtureRequest
    ) -> None:
        """38 ways around the bearer token: none reads a protected route."""
        await bury(database_url, [letter(1)])
        got: dict[int, int] = {}
        async with serving(api_settings(database_url, api_token=TOKEN)) as url:
            for name, path, headers in BEARER_ATTEMPTS:
                request_line = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                extra = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
                answer = await raw_request(url, (request_line + extra + "\r\n").encode("utf-8"))
                status = status_of(answer)
                got[status] = got.get(status, 0) + 1
                assert status in (400, 401, 404), (name, answer[:300])
                assert SECRET_BODY.encode() not in answer, name
            # And the right token, sent properly, does read it.
            answer = await raw_request(
                url,
                f"GET /dead-letters/m1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Authorization: Bearer {TOKEN}\r\n\r\n".encode(),
            )
            assert status_of(answer) == 200
            assert SECRET_BODY.encode() in answer
        assert len(BEARER_ATTEMPTS) >= 37
        request.node.user_properties.append(
            ("summary", f"{len(BEARER_ATTEMPTS)} token bypass attempts: statuses {got}")
        )

    def test_the_token_is_compared_in_constant_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The comparison is hmac.compare_digest's, whatever the given token's length."""
        calls: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(given: bytes, token: bytes) -> bool:
            calls.append((given, token))
            return real(given, token)

        monkeypatch.setattr(hmac, "compare_digest", spy)
        assert security._same(b"Bearer x", b"secret") is False  # noqa: SLF001  # the check itself
        assert security._same(b"Bearer secret", b"secret") is True  # noqa: SLF001
        assert calls == [(b"x", b"secret"), (b"secret", b"secret")]

    @pytest.mark.parametrize(
        "path",
        [
            "/static/../consumer/settings.py",
            "/static/../../pyproject.toml",
            "/static/%2e%2e/%2e%2e/pyproject.toml",
            "/static/..%2f..%2fpyproject.toml",
            "/static/%252e%252e/%252e%252e/pyproject.toml",
            "/static//etc/passwd",
            "/static/..\\..\\pyproject.toml",
            "/static/%2e%2e%5c%2e%2e%5cpyproject.toml",
            "/static/app.js%00.txt",
            "/static/./../app.py",
            "/static/..;/app.py",
            "/static/%c0%ae%c0%ae/app.py",
            "/static/app.js/../../app.py",
            "/static/....//....//pyproject.toml",
            "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        ],
    )
    async def test_static_path_traversal(self, database_url: str, path: str) -> None:
        """A path out of the page's folder is not found; no file of the project is served."""
        async with serving(api_settings(database_url)) as url:
            answer = await raw_request(
                url, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
        assert status_of(answer) in (400, 404), answer[:200]
        for secret in (b"root:", b"import ", b"[project]", b"class "):
            assert secret not in answer

    async def test_sql_in_parameters(
        self, database_url: str, http: aiohttp.ClientSession, sql: asyncpg.Connection
    ) -> None:
        """SQL in every string parameter is data: refused or not found, the tables intact."""
        await bury(database_url, [letter(1)])
        task = await new_task(sql)
        injections = [
            "1 OR 1=1",
            "m1' OR '1'='1",
            "1; DROP TABLE task_build_history; --",
            "' UNION SELECT body FROM task_build_history_dead_letters --",
            "m1'--",
        ]
        async with serving(api_settings(database_url)) as url:
            for text in injections:
                status, body = await get_json(http, f"{url}/dead-letters/{text}")
                assert status == 404, (text, body)
                for name in ("since", "until", "after", "type", "newest_first"):
                    status, body = await get_json(
                        http, f"{url}/tasks/{task}/history", params={name: text}
                    )
                    assert status in (400, 422), (name, text, body)
                status, _ = await get_json(http, f"{url}/dead-letters", params={"error": text})
                assert status == 422
        assert await sql.fetchval("SELECT count(*) FROM task_build_history_dead_letters") == 1
        assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 0
