"""Live entries for any number of watchers: one LISTEN connection, one read per task, fanned out.

The same notifications `task-history tail` follows (sql/0002_notify.sql). One connection
listens for the whole process; a notification for a watched task wakes that task's feed, which
reads the task's entries once and hands each new one to every watcher of the task. A watcher
that falls too far behind is ended (its client reconnects with Last-Event-ID and loses
nothing); when the listening connection is lost, the feeds read again once it is back, so
nothing committed meanwhile is missed. The listening connection is pinged every keep-alive
interval: one that no longer answers (a partition, which closes nothing) counts as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol
from uuid import UUID

import structlog

from consumer.entries import HistoryEntry
from consumer.errors import DatabaseUnavailableError, StoreError
from consumer.pages import Cursor

log = structlog.get_logger()

Arrival = tuple[HistoryEntry, Cursor]
# Runs a trivial query on the listening connection; StoreError unless it answers within the s.
Ping = Callable[[float], Awaitable[None]]


class ArrivalSource(Protocol):
    """What the feeds need of the store (consumer.store.ReadStore has it)."""

    async def arrivals(self, task_id: UUID, *, after_seq: int | None = None) -> list[Arrival]:
        """A task's entries in arrival order, with their cursors."""
        ...

    def notifications(
        self, on_task: Callable[[UUID], None], *, on_lost: Callable[[], None]
    ) -> AbstractAsyncContextManager[Ping]:
        """Listen while the block runs; the block gets a ping of the listening connection."""
        ...


def size_of(entry: HistoryEntry) -> int:
    """About how many bytes an entry takes on a stream: the length of its JSON."""
    return len(entry.content) + len(str(entry.metadata or "")) + 300


class Watcher:
    """One client's queue of new entries; None in it means: the stream ends here."""

    def __init__(self, *, limit: int, limit_bytes: int) -> None:
        """A watcher ended once more than `limit` entries or `limit_bytes` wait for its client."""
        self._queue: asyncio.Queue[Arrival | None] = asyncio.Queue()
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._waiting_bytes = 0
        self._sizes: dict[UUID, int] = {}
        self.ended = False
        # Why the stream ended, when it was not the client's doing nor the server's stopping.
        self.reason: str | None = None

    def offer(self, arrivals: Sequence[tuple[Arrival, int]]) -> None:
        """Queue one read's entries (with their sizes in bytes); end the watcher if it is behind.

        Behind means still holding more than the limits from earlier reads when a new one
        comes: a client that does not read as fast as entries come keeps them in memory. It is
        dropped, the entries it has not taken are let go, and it is told why (it resumes with
        Last-Event-ID and loses nothing). One read's entries are queued whole, however large:
        they are shared by every watcher of the task, and a reader keeping up takes them all.
        """
        if self.ended or not arrivals:
            return
        if self._queue.qsize() > self._limit or self._waiting_bytes > self._limit_bytes:
            log.warning(
                "stream reader too slow, dropping it",
                waiting=self._queue.qsize(),
                waiting_bytes=self._waiting_bytes,
            )
            self.end(
                reason=f"this reader fell behind by more than {self._limit} entries or"
                f" {self._limit_bytes} bytes; reconnect with Last-Event-ID to resume"
            )
            return
        for arrival, size in arrivals:
            self._queue.put_nowait(arrival)
            self._waiting_bytes += size
            self._sizes[arrival[0].id] = size

    def end(self, *, reason: str | None = None) -> None:
        """End the stream at once, entries still queued or not: its client resumes from its last.

        The entries it had not taken are let go at once.
        """
        if not self.ended:
            self.ended = True
            self.reason = reason
            while not self._queue.empty():
                self._queue.get_nowait()
            self._waiting_bytes = 0
            self._sizes.clear()
            self._queue.put_nowait(None)

    async def next(self, *, within: float) -> Arrival | None:
        """The next entry; None when the stream ended; TimeoutError after `within` s idle."""
        if self.ended:
            return None
        arrival = await asyncio.wait_for(self._queue.get(), within)
        if arrival is not None:
            self._waiting_bytes -= self._sizes.pop(arrival[0].id, 0)
        return arrival


class _Feed:
    """One watched task: its watchers, the ids already handed out, and the task reading it."""

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self.seen: set[UUID] = set()
        self.woken = asyncio.Event()
        self.ready = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None


class Feeds:
    """Every live stream of the process, fed from one LISTEN connection."""

    def __init__(  # noqa: PLR0913  # keyword-only limits and a hook
        self,
        source: ArrivalSource,
        *,
        backlog_limit: int = 1000,
        backlog_bytes: int = 4 * 1024 * 1024,
        retry_max_seconds: float = 30,
        ping_every: float = 15,
        on_dropped: Callable[[], None] = lambda: None,
    ) -> None:
        """Feeds reading from `source`; a watcher ends when its client falls behind.

        Behind means more than `backlog_limit` entries or `backlog_bytes` waiting. The
        listening connection is pinged every `ping_every` s, and lost unless it answers within
        as long. `on_dropped` is called for each watcher ended that way.
        """
        self._source = source
        self._ping_every = ping_every
        self._backlog_limit = backlog_limit
        self._backlog_bytes = backlog_bytes
        self._on_dropped = on_dropped
        self._retry_max = retry_max_seconds
        self._feeds: dict[UUID, _Feed] = {}
        self._listening = asyncio.Event()
        self._closed = False

    @property
    def listening(self) -> bool:
        """Whether notifications are being received now."""
        return self._listening.is_set()

    @property
    def watchers(self) -> int:
        """How many watchers there are, over all tasks."""
        return sum(len(feed.watchers) for feed in self._feeds.values())

    async def run(self) -> None:
        """Listen until cancelled; after a lost connection, listen again with backoff."""
        delay = 0.2
        while True:
            lost = asyncio.Event()
            try:
                async with self._source.notifications(self._notified, on_lost=lost.set) as ping:
                    self._listening.set()
                    delay = 0.2
                    log.info("listening for new entries")
                    # Whatever was committed while nobody listened: every feed reads again.
                    for feed in self._feeds.values():
                        feed.woken.set()
                    await self._until_lost(lost, ping)
            except StoreError as exc:
                log.warning("cannot listen for new entries", error=str(exc), retry_in=delay)
            finally:
                self._listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _until_lost(self, lost: asyncio.Event, ping: Ping) -> None:
        """Return once the listening connection is lost, or stops answering its pings."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._ping_every)
            if lost.is_set():
                return
            try:
                await ping(self._ping_every)
            except StoreError as exc:
                # A partition closes nothing: without this, notifications would stop unseen.
                log.warning("the listening connection does not answer", error=str(exc))
                return

    def close(self) -> None:
        """End every stream now (the server is stopping); new watchers are refused."""
        self._closed = True
        for feed in self._feeds.values():
            for watcher in feed.watchers:
                watcher.end()

    @contextlib.asynccontextmanager
    async def watch(self, task_id: UUID, *, wait: float = 5) -> AsyncIterator[Watcher]:
        """A watcher of `task_id`'s new entries while the block runs.

        Every entry committed after this returns reaches the watcher (and maybe a few from
        just before: callers reading a backlog drop those by id). DatabaseUnavailableError if
        notifications can't be received within `wait` s.
        """
        if self._closed:
            raise DatabaseUnavailableError("the server is shutting down")
        try:
            await asyncio.wait_for(self._listening.wait(), wait)
        except TimeoutError:
            raise DatabaseUnavailableError(
                "database unavailable: not receiving notifications of new entries"
            ) from None
        watcher = Watcher(limit=self._backlog_limit, limit_bytes=self._backlog_bytes)
        feed = self._feeds.get(task_id)
        if feed is None:
            feed = self._feeds[task_id] = _Feed()
            feed.reader = asyncio.create_task(self._read(task_id, feed))
        feed.watchers.add(watcher)  # before the reader's first step: it runs at the next await
        try:
            try:
                await asyncio.wait_for(feed.ready.wait(), wait)
            except TimeoutError:
                raise DatabaseUnavailableError(
                    "database unavailable: cannot read the task's entries"
                ) from None
            yield watcher
        finally:
            feed.watchers.discard(watcher)
            if not feed.watchers and self._feeds.get(task_id) is feed:
                del self._feeds[task_id]
                if feed.reader is not None:
                    feed.reader.cancel()

    def _notified(self, task_id: UUID) -> None:
        feed = self._feeds.get(task_id)
        if feed is not None:
            feed.woken.set()

    async def _read(self, task_id: UUID, feed: _Feed) -> None:
        """Hand the task's new entries to its watchers each time a notification wakes the feed."""
        delay = 0.2
        first = True
        while True:
            try:
                arrivals = await self._source.arrivals(task_id)
            except StoreError as exc:
                log.warning("cannot read new entries", task_id=str(task_id), error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = 0.2
            fresh = [arrival for arrival in arrivals if arrival[0].id not in feed.seen]
            # Only ids still stored: one trimmed by the cap or expired never comes back.
            feed.seen = {entry.id for entry, _ in arrivals}
            if first:
                # What was stored before anyone watched is not new: watchers read it themselves.
                first = False
                feed.ready.set()
            else:
                sized = [(arrival, size_of(arrival[0])) for arrival in fresh]  # once for all
                for watcher in list(feed.watchers):
                    ended = watcher.ended
                    watcher.offer(sized)
                    if watcher.ended and not ended:
                        self._on_dropped()
            await feed.woken.wait()
            feed.woken.clear()
