"""uvicorn's HTTP/1.1 protocol with a deadline for a request's line and headers.

uvicorn has no header-read timeout: a connection that sends its headers a byte at a time
(slowloris) is held for as long as it likes, and its keep-alive timer is reset by every byte.
Held by the thousand they take every connection the server allows. Here each connection must
send a whole request line and headers within the deadline, counted from the connection's start
and again from the end of each answer (the next request on a kept-alive connection); one that
doesn't is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger()


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol closing connections whose request headers are not complete in time."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401  # uvicorn's own
        """As H11Protocol; the deadline starts with the connection."""
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline for the first request's headers."""
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline."""
        self._stop_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """Handle what arrived; once a request's headers are whole, its deadline is met."""
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a new request: its line and headers are all here
            self._stop_deadline()

    def on_response_complete(self) -> None:
        """An answer ended: the next request's headers have the same deadline.

        So does the rest of a request body the client is still sending slowly.
        """
        super().on_response_complete()  # may start a request already received (pipelined)
        if not self.transport.is_closing() and self._between_requests():
            self._start_deadline()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._between_requests() and not self.transport.is_closing():
            log.debug("request headers too slow, closing the connection", client=self.client)
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with a header deadline of `seconds`, for uvicorn.Config(http=...)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
