"""Who may ask what: the bearer token, the Host names answered, the headers every answer carries."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Open without the token: the health checks (for orchestrators), and the page with its files,
# which must load to ask for the token and show a refusal.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
OPEN_PREFIXES = ("/static/",)


def is_open(path: str) -> bool:
    """Whether `path` is served without the token."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class BearerToken:
    """ASGI middleware: 401 with `WWW-Authenticate: Bearer` unless the right token is sent."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        """Guard `app` with `token`."""
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on if it is open or carries the token; else refuse it."""
        if scope["type"] != "http" or is_open(scope["path"]):
            await self._app(scope, receive, send)
            return
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) == 1 and _same(given[0], self._token):
            await self._app(scope, receive, send)
            return
        await _refuse(send, wrong=bool(given))


def _same(header: bytes, token: bytes) -> bool:
    """Whether an Authorization header is `Bearer TOKEN`, the token compared in constant time."""
    scheme, _, given = header.partition(b" ")
    # The scheme's case does not matter (RFC 9110); the token's does, compared in a time that
    # does not depend on where it differs.
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


async def _refuse(send: Send, *, wrong: bool) -> None:
    if wrong:
        detail = "the bearer token is wrong"
        challenge = b'Bearer realm="task-history", error="invalid_token"'
    else:
        detail = "this server needs a bearer token: send Authorization: Bearer TOKEN"
        challenge = b'Bearer realm="task-history"'
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Answered whatever the Host header: orchestrators probe them by a pod's or container's address.
ANY_HOST_PATHS = frozenset({"/healthz", "/readyz"})


def host_name(header: bytes) -> str:
    """The name in a Host header, lower case, without port, brackets or a final dot."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):  # [v6]:port
        name = text[1:].partition("]")[0]
    else:
        name = text.rpartition(":")[0] if text.count(":") == 1 else text
    return name.removesuffix(".")


def host_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    """Whether a Host name is one of `allowed` (`*` any, `*.example.com` its subdomains)."""
    for pattern in allowed:
        if pattern in ("*", name):
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
            return True
    return False


class AllowedHosts:
    """ASGI middleware: 400 unless the Host header names this server (DNS rebinding).

    A page on another site can make a browser send it requests by resolving its own name to
    127.0.0.1; the browser then sends that name as Host, which no allowed name matches.
    """

    def __init__(self, app: ASGIApp, *, allowed: tuple[str, ...]) -> None:
        """Guard `app`: only requests whose Host is one of `allowed` reach it."""
        self._app = app
        self._allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on if its Host is allowed (or it is a health check)."""
        if scope["type"] != "http" or scope["path"] in ANY_HOST_PATHS:
            await self._app(scope, receive, send)
            return
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) == 1 and host_allowed(host_name(hosts[0]), self._allowed):
            await self._app(scope, receive, send)
            return
        body = json.dumps(
            {
                "detail": "this server does not answer to this Host; its operator can add the"
                " name to TASK_HISTORY_API_ALLOWED_HOSTS"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# What the page needs and nothing more: its own scripts, styles and requests; no framing, no
# plugins, no inline script, nothing from another site. The icon is an empty data: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, refusals and errors too."""

    def __init__(self, app: ASGIApp) -> None:
        """Add the headers to whatever `app` answers."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer as `app` does, with the headers added to the response's start."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((name, value) for name, value in SECURITY_HEADERS if name not in present),
                ]
            await send(message)

        await self._app(scope, receive, with_headers)
