"""Who may ask what: the bearer token, the Host names answered, the headers every answer carries."""

from __future__ import annotations

import hmac
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Open without the token: the health checks (for orchestrators), and the page with its files,
# which must load to ask for the token and show a refusal.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
OPEN_PREFIXES = ("/static/",)


def is_open(path: str) -> bool:
    """Whether `path` is served without the token."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


# Who a request is, by the token it carries (in the request's scope, under state["token"]):
# the operator token, the reader token, or none where reading needs none.
OPERATOR = "operator"
READER = "reader"
ANONYMOUS = "anonymous"


class BearerToken:
    """ASGI middleware: 401 with `WWW-Authenticate: Bearer` unless the right token is sent.

    With a reader `token`, every route but the open ones wants it (or the operator token);
    without one, reading needs no token. The operator token, when set, is accepted wherever
    the reader's is; whose it was is left in the request's scope for the operator routes,
    which refuse the reader's (consumer.api.operators).
    """

    def __init__(
        self, app: ASGIApp, *, token: str | None, operator_token: str | None = None
    ) -> None:
        """Guard `app` with the reader `token` and the `operator_token` (either may be None)."""
        self._app = app
        self._token = None if token is None else token.encode()
        self._operator = None if operator_token is None else operator_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on if it is open or carries a token it accepts; else refuse it."""
        if scope["type"] != "http" or is_open(scope["path"]):
            await self._app(scope, receive, send)
            return
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        role = self._role(given)
        if role is None:
            await _refuse(send, wrong=bool(given))
            return
        scope.setdefault("state", {})["token"] = role
        await self._app(scope, receive, send)

    def _role(self, given: list[bytes]) -> str | None:
        """Whose token the Authorization headers carry; None if it must be refused."""
        if not given:
            return ANONYMOUS if self._token is None else None
        if len(given) > 1:
            return None
        # Both compared, whichever matches, so the time taken tells nothing either.
        operator = self._operator is not None and _same(given[0], self._operator)
        reader = self._token is not None and _same(given[0], self._token)
        if operator:
            return OPERATOR
        return READER if reader else None


def token_role(scope: Scope) -> str:
    """Whose token a request carried (OPERATOR, READER or ANONYMOUS), as BearerToken left it."""
    state = scope.get("state") or {}
    role = state.get("token", ANONYMOUS)
    return role if isinstance(role, str) else ANONYMOUS


# The routes that change something: only for the operator token, only JSON, only same-site.
OPERATOR_PATHS = frozenset({"/dead-letters/replay", "/dead-letters/purge"})


class OperatorGuard:
    """ASGI middleware: the operator routes refuse whatever isn't the operator's own request.

    Before anything is read: 401 without a token, 403 for the reader's token, 415 unless the
    body is JSON (an HTML form can't send JSON), 403 for a request a page of another site made
    (Origin, Sec-Fetch-Site). The token only ever travels in the Authorization header, never
    in a cookie, so a browser never adds it by itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Guard the operator routes of `app`."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, unless it is one the operator routes refuse."""
        if scope["type"] != "http" or scope["path"] not in OPERATOR_PATHS:
            await self._app(scope, receive, send)
            return
        refusal = operator_refusal(scope)
        if refusal is None:
            await self._app(scope, receive, send)
            return
        status, detail = refusal
        extra = [(b"www-authenticate", b'Bearer realm="task-history"')] if status == 401 else []  # noqa: PLR2004  # the status of a missing token
        await _answer(send, status, detail, extra)


def operator_refusal(scope: Scope) -> tuple[int, str] | None:
    """Why a request to an operator route is refused (status, reason); None if it is not."""
    if scope["method"] != "POST":
        return None  # the routes themselves answer 405
    role = token_role(scope)
    if role == ANONYMOUS:
        return 401, "replay and purge need the operator token: send Authorization: Bearer TOKEN"
    if role != OPERATOR:
        return 403, "this token may read, not replay or purge: use the operator token"
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    if not is_json(headers.get("content-type")):
        return 415, "send the request as JSON (Content-Type: application/json)"
    reason = cross_site_reason(
        origin=headers.get("origin"),
        fetch_site=headers.get("sec-fetch-site"),
        host=headers.get("host"),
    )
    if reason is not None:
        return 403, f"refused: {reason}"
    return None


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Fetch metadata a browser sends: a request another site's page made is cross-site (or
# same-site, from a sibling subdomain); typed into the address bar, none.
_FETCHED_BY_THIS_SITE = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def cross_site_reason(
    *, origin: str | None, fetch_site: str | None, host: str | None
) -> str | None:
    """Why a state-changing request looks sent by another site's page; None if it does not.

    Browsers say where a request comes from (`Origin`, `Sec-Fetch-Site`); a client that is no
    browser sends neither, and is let through (it has the operator token, which no page of
    another site can make a browser send). The Origin must name this server as the Host
    header does (the port may differ only by being the scheme's default).
    """
    if fetch_site is not None and fetch_site.strip().lower() not in _FETCHED_BY_THIS_SITE:
        return f"a {fetch_site[:40]} request (Sec-Fetch-Site): only this server's own page may"
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(scheme="")
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or host is None:
        return f"the request comes from {origin[:80]!r}, not from this server's page (Origin)"
    default = _DEFAULT_PORTS[parts.scheme]
    given = (parts.hostname.removesuffix("."), str(port) if port is not None else default)
    name, host_port = _name_and_port(host)
    if given != (name, host_port or default):
        return f"the request comes from {origin[:80]!r}, not from this server's page (Origin)"
    return None


def _name_and_port(host: str) -> tuple[str, str]:
    """A Host header's name (lower case, no brackets, no final dot) and port ('' if none)."""
    text = host.strip().lower()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        name, _, port = text.partition(":")
    else:
        name, port = text, ""
    return name.removesuffix("."), port


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON (`application/json`, parameters such as charset aside).

    HTML forms can only send form encodings and text/plain: a request that must be JSON can't
    be a form's.
    """
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


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
