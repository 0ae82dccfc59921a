"""The API's bearer token check and its settings: host, port, token and CORS origins."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from consumer.api.security import (
    OPERATOR_PATHS,
    BearerToken,
    OperatorGuard,
    cross_site_reason,
    host_allowed,
    host_name,
    is_json,
    is_open,
    token_role,
)
from consumer.errors import ConfigurationError
from consumer.settings import load_settings

TOKEN = "right-token"  # noqa: S105  # a test's own token


async def call(path: str, *headers: tuple[bytes, bytes]) -> tuple[int, dict[bytes, bytes]]:
    """Send a GET of `path` through the token check; (status, response headers)."""
    reached: list[str] = []

    async def app(scope: Scope, _receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: Message) -> None:
        sent.append(dict(message))

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "headers": list(headers), "method": "GET"}
    await BearerToken(app, token=TOKEN)(scope, receive, send)
    start = sent[0]
    assert (start["status"] == 200) == bool(reached)
    return start["status"], dict(start["headers"])


class TestBearerToken:
    """Every route but the health checks and the page's files needs `Authorization: Bearer`."""

    async def test_the_right_token_passes(self) -> None:
        """The token, with the scheme in any case, reaches the route."""
        for scheme in (b"Bearer", b"bearer", b"BEARER"):
            status, _ = await call("/dead-letters", (b"authorization", scheme + b" right-token"))
            assert status == 200

    async def test_missing_or_wrong_is_401_with_a_challenge(self) -> None:
        """No header, a wrong token, another scheme, a prefix, or two headers: 401."""
        status, headers = await call("/dead-letters")
        assert status == 401
        assert headers[b"www-authenticate"] == b'Bearer realm="task-history"'
        for value in (b"Bearer wrong", b"Basic right-token", b"Bearer right", b"right-token"):
            status, headers = await call("/tasks/x/history", (b"authorization", value))
            assert status == 401
            assert b'error="invalid_token"' in headers[b"www-authenticate"]
        twice = (b"authorization", b"Bearer right-token")
        status, _ = await call("/dead-letters", twice, twice)
        assert status == 401

    async def test_health_and_the_page_are_open(self) -> None:
        """/healthz, /readyz, / and /static/... answer without the token; /openapi.json does not."""
        for path in ("/healthz", "/readyz", "/", "/static/app.js"):
            assert is_open(path)
            assert (await call(path))[0] == 200
        for path in ("/openapi.json", "/static", "/healthz/x", "/dead-letters"):
            assert not is_open(path)


class TestApiSettings:
    """TASK_HISTORY_API_*: defaults, and a bad value refused as a configuration error."""

    def test_defaults(self) -> None:
        """Loopback, port 8080, no token, no CORS origin."""
        settings = load_settings()
        assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8080)
        assert settings.api_token is None
        assert settings.cors_origins == ()

    def test_an_empty_token_is_an_error_and_a_token_is_kept_secret(self) -> None:
        """TASK_HISTORY_API_TOKEN= is refused (it would serve everyone); a token stays secret."""
        with pytest.raises(ConfigurationError, match="TASK_HISTORY_API_TOKEN: is empty"):
            load_settings(api_token="")
        assert load_settings().api_token is None
        settings = load_settings(api_token=TOKEN)
        assert settings.api_token is not None
        assert settings.api_token.get_secret_value() == TOKEN
        assert TOKEN not in repr(settings)

    def test_cors_origins_are_comma_separated(self) -> None:
        """Spaces and a trailing slash are dropped; each must be an http(s) origin."""
        settings = load_settings(api_cors_origins=" https://a.example/, http://localhost:3000 ,")
        assert settings.cors_origins == ("https://a.example", "http://localhost:3000")

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("api_cors_origins", "*"),
            ("api_cors_origins", "https://a.example/path"),
            ("api_cors_origins", "a.example"),
            ("api_port", 65_536),
            ("api_token", "has space"),
            ("api_token", ""),
            ("api_allowed_hosts", "http://board.example"),
            ("api_allowed_hosts", "board.example:8080"),
            ("api_allowed_hosts", "two words"),
            ("api_page_max_bytes", 1000),
        ],
    )
    def test_bad_values_name_their_variable(self, name: str, value: object) -> None:
        """A bad value is a ConfigurationError naming TASK_HISTORY_<NAME> (exit 2)."""
        with pytest.raises(ConfigurationError, match=f"TASK_HISTORY_{name.upper()}"):
            load_settings(**{name: value})


class TestAllowedHostNames:
    """Which Host headers the API answers: the parsing and the defaults."""

    @pytest.mark.parametrize(
        ("header", "name"),
        [
            (b"localhost", "localhost"),
            (b"LocalHost:8080", "localhost"),
            (b"127.0.0.1:80", "127.0.0.1"),
            (b"[::1]:8080", "::1"),
            (b"[::1]", "::1"),
            (b"board.example.com.", "board.example.com"),
            (b" evil.example ", "evil.example"),
        ],
    )
    def test_the_name_of_a_host_header(self, header: bytes, name: str) -> None:
        """Lower case, without port, brackets or a final dot."""
        assert host_name(header) == name

    def test_patterns(self) -> None:
        """Exact names, `*.` for subdomains only, `*` for any."""
        allowed = ("board.example.com", "*.corp.example")
        assert host_allowed("board.example.com", allowed)
        assert host_allowed("ci.corp.example", allowed)
        assert not host_allowed("corp.example", allowed)
        assert not host_allowed("evilcorp.example", allowed)
        assert not host_allowed("board.example.com.evil.example", allowed)
        assert host_allowed("anything", ("*",))

    def test_defaults_are_loopback_and_the_listening_address(self) -> None:
        """Loopback names, plus the address listened on unless it is a wildcard."""
        assert load_settings().allowed_hosts == ("localhost", "127.0.0.1", "::1")
        assert load_settings(api_host="10.0.0.5").allowed_hosts[-1] == "10.0.0.5"
        assert load_settings(api_host="0.0.0.0").allowed_hosts == (  # noqa: S104  # the point
            "localhost",
            "127.0.0.1",
            "::1",
        )
        given = load_settings(api_allowed_hosts="Board.Example.com, [::1]").allowed_hosts
        assert given == ("board.example.com", "::1")


OPERATOR = "operator-token"


async def guarded(
    path: str,
    *headers: tuple[bytes, bytes],
    method: str = "POST",
    reader: str | None = TOKEN,
    operator: str | None = OPERATOR,
) -> tuple[int, str | None, bytes]:
    """Send a request through both checks, as `serve` stacks them; (status, role seen, body)."""
    seen: list[str] = []

    async def app(scope: Scope, _receive: Receive, send: Send) -> None:
        seen.append(token_role(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: Message) -> None:
        sent.append(dict(message))

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "headers": list(headers), "method": method}
    stack = BearerToken(OperatorGuard(app), token=reader, operator_token=operator)
    await stack(scope, receive, send)
    return sent[0]["status"], seen[0] if seen else None, sent[1].get("body", b"")


JSON = (b"content-type", b"application/json")


def bearer(token: str) -> tuple[bytes, bytes]:
    """An Authorization header carrying `token`."""
    return (b"authorization", f"Bearer {token}".encode())


class TestTwoTokens:
    """The operator token reads and operates; the reader token only reads."""

    async def test_whose_token_reaches_the_routes(self) -> None:
        """Each token is told apart; reading accepts either; none, only if reading needs none."""
        assert (await guarded("/tasks", bearer(TOKEN), method="GET"))[:2] == (200, "reader")
        assert (await guarded("/tasks", bearer(OPERATOR), method="GET"))[:2] == (200, "operator")
        assert (await guarded("/tasks", method="GET"))[0] == 401
        assert (await guarded("/tasks", method="GET", reader=None))[:2] == (200, "anonymous")
        assert (await guarded("/tasks", bearer("wrong"), method="GET", reader=None))[0] == 401

    @pytest.mark.parametrize("path", sorted(OPERATOR_PATHS))
    async def test_operator_routes_refuse_all_but_the_operator(self, path: str) -> None:
        """401 without a token, 403 for the reader's, 415 unless JSON, 403 from another site."""
        assert (await guarded(path, JSON))[0] == 401
        assert (await guarded(path, JSON, reader=None))[0] == 401
        status, _, body = await guarded(path, JSON, bearer(TOKEN))
        assert status == 403
        assert b"operator token" in body
        for content_type in (b"application/x-www-form-urlencoded", b"text/plain", b"json"):
            status, _, _ = await guarded(path, (b"content-type", content_type), bearer(OPERATOR))
            assert status == 415
        assert (await guarded(path, bearer(OPERATOR)))[0] == 415
        for origin in (b"http://evil.example", b"null", b"http://127.0.0.1:9999"):
            headers = (JSON, bearer(OPERATOR), (b"host", b"127.0.0.1:8080"), (b"origin", origin))
            assert (await guarded(path, *headers))[0] == 403
        for site in (b"cross-site", b"same-site"):
            fetched = (JSON, bearer(OPERATOR), (b"sec-fetch-site", site))
            assert (await guarded(path, *fetched))[0] == 403
        same = (
            JSON,
            bearer(OPERATOR),
            (b"host", b"127.0.0.1:8080"),
            (b"origin", b"http://127.0.0.1:8080"),
            (b"sec-fetch-site", b"same-origin"),
        )
        assert (await guarded(path, *same))[:2] == (200, "operator")
        assert (await guarded(path, JSON, bearer(OPERATOR)))[:2] == (200, "operator")
        charset = (b"content-type", b"Application/JSON; charset=utf-8")
        assert (await guarded(path, charset, bearer(OPERATOR)))[0] == 200
        # Another method goes to the route, which answers it (405).
        assert (await guarded(path, bearer(TOKEN), method="GET"))[0] == 200


class TestCrossSite:
    """A state-changing request from another site's page is told from this server's own."""

    @pytest.mark.parametrize(
        ("origin", "host"),
        [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("https://board.example.com", "board.example.com"),
            ("https://board.example.com", "board.example.com:443"),
            ("http://board.example.com:80", "board.example.com"),
            ("http://[::1]:8080", "[::1]:8080"),
            ("http://LOCALHOST:8080", "localhost:8080"),
            (None, "localhost:8080"),
        ],
    )
    def test_this_server(self, origin: str | None, host: str) -> None:
        """The same name and port (or the scheme's default port), or no Origin at all."""
        assert cross_site_reason(origin=origin, fetch_site=None, host=host) is None
        assert cross_site_reason(origin=origin, fetch_site="same-origin", host=host) is None

    @pytest.mark.parametrize(
        ("origin", "fetch_site", "host"),
        [
            ("http://evil.example", None, "127.0.0.1:8080"),
            ("http://127.0.0.1:8081", None, "127.0.0.1:8080"),
            ("https://board.example.com:8443", None, "board.example.com"),
            ("http://board.example.com.evil.example", None, "board.example.com"),
            ("null", None, "localhost:8080"),
            ("file://", None, "localhost:8080"),
            ("http://localhost:99999", None, "localhost:8080"),
            ("http://localhost:8080", None, None),
            (None, "cross-site", "localhost:8080"),
            (None, "same-site", "localhost:8080"),
            ("http://localhost:8080", "cross-site", "localhost:8080"),
        ],
    )
    def test_another_site(
        self, origin: str | None, fetch_site: str | None, host: str | None
    ) -> None:
        """Another name, port or scheme, an opaque origin, or a browser saying cross-site."""
        assert cross_site_reason(origin=origin, fetch_site=fetch_site, host=host)

    def test_json_content_types(self) -> None:
        """application/json with any parameters, in any case; nothing a form can send."""
        assert is_json("application/json")
        assert is_json("application/JSON ; charset=utf-8")
        for other in (None, "", "text/plain", "application/json-seq", "multipart/form-data"):
            assert not is_json(other)


class TestOperatorSettings:
    """The operator token is checked like the reader's, and must differ from it."""

    def test_defaults(self) -> None:
        """No operator token; the name `operator`; the same database as the reads."""
        settings = load_settings(database_url="postgresql://reader@db/history")
        assert settings.api_operator_token is None
        assert settings.api_operator_name == "operator"
        assert settings.operator_database_url == "postgresql://reader@db/history"
        other = load_settings(api_operator_database_url="postgresql://operator@db/history")
        assert other.operator_database_url == "postgresql://operator@db/history"

    def test_the_same_token_for_both_is_refused(self) -> None:
        """A reader must not hold the operator's rights: one line naming both settings."""
        with pytest.raises(ConfigurationError) as caught:
            load_settings(api_token="same", api_operator_token="same")  # noqa: S106  # test tokens
        assert "TASK_HISTORY_API_OPERATOR_TOKEN must differ from TASK_HISTORY_API_TOKEN" in str(
            caught.value
        )

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("api_operator_token", ""),
            ("api_operator_token", "two words"),
            ("api_operator_name", ""),
            ("api_operator_name", "   "),
            ("api_operator_name", "bell\x07"),
            ("api_operator_name", "x" * 101),
            ("api_operator_database_url", "mysql://nope"),
            ("api_search_tasks_per_page", 0),
        ],
    )
    def test_bad_values_name_their_variable(self, name: str, value: object) -> None:
        """Each is refused at start, in one line naming the variable."""
        with pytest.raises(ConfigurationError, match=f"TASK_HISTORY_{name.upper()}"):
            load_settings(**{name: value})
