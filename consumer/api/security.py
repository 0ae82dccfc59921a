"""The bearer token: every route but the health checks and the page's files asks for it."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

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
