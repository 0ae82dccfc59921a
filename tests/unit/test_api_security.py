"""The API's bearer token check and its settings: host, port, token and CORS origins."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from consumer.api.security import BearerToken, host_allowed, host_name, is_open
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
