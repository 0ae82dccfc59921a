"""The one HTTP stack of every process: uvicorn, on a socket bound first.

`serve` runs the API on it, and `consume` its metrics and health checks: the same server, the
same answers (`{"status": "ok"}`), the same way of stopping. Binding before starting makes a
taken port one clear error rather than uvicorn's own exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Iterator

import uvicorn

from consumer.errors import TaskHistoryError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; TaskHistoryError in one line if it can't be had."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise TaskHistoryError(f"cannot listen on {host}:{port}: unknown host ({exc})") from None
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        reason = "the port is taken" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise TaskHistoryError(f"cannot listen on {host}:{port}: {reason}") from None
    listener.set_inheritable(True)
    return listener


class QuietServer(uvicorn.Server):
    """uvicorn that leaves the signals to the process: its owner stops it (`stop()`)."""

    def __init__(self, config: uvicorn.Config) -> None:
        """A server for `config`; `listening` is set once it has started."""
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then say so (unless the start failed)."""
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.listening.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: uvicorn's own handlers would raise the signal again once stopped."""
        yield

    def stop(self) -> None:
        """Stop taking requests and let running ones finish; a second call stops at once."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
