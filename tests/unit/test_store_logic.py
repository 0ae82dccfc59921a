"""The store's own state and query choice, without a server: a stand-in pool where one is needed."""

from __future__ import annotations

import ast
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

import consumer
from consumer.errors import DatabaseUnavailableError, NotConnectedError
from consumer.pages import HistoryQuery
from consumer.store import Store
from consumer.store.queries import read_arguments, read_sql

NOWHERE = "postgresql://nowhere/x"
TASK = uuid.uuid4()

# Calls through each room of the store, and through both ways a read can be a generator.
CALLS: dict[str, Callable[[Store], Awaitable[object]]] = {
    "ping": lambda store: store.ping(),
    "check_schema": lambda store: store.check_schema(),
    "limits": lambda store: store.limits(),
    "expiry_job": lambda store: store.expiry_job(),
    "missing_tasks": lambda store: store.missing_tasks({TASK}),
    "create_tasks": lambda store: store.create_tasks({TASK}),
    "find_by_task": lambda store: store.find_by_task(TASK),
    "count_by_task": lambda store: store.count_by_task(TASK),
    "stream": lambda store: anext(store.stream(HistoryQuery())),
    "follow": lambda store: anext(store.follow(TASK)),
    "expire_exclusively": lambda store: store.expire_exclusively(),
}


class FakePool:
    """What the store asks of an asyncpg pool here: fetch, close, terminate."""

    def __init__(self) -> None:
        """A pool that has sent nothing and is open."""
        self.sent: list[tuple[str, tuple[object, ...]]] = []
        self.closed = False
        self.terminated = False

    async def fetch(self, query: str, *args: object) -> list[object]:
        """Record the statement; no rows."""
        self.sent.append((query, args))
        return []

    async def close(self) -> None:
        """Note the polite close."""
        self.closed = True

    def terminate(self) -> None:
        """Note the drop."""
        self.terminated = True


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> FakePool:
    """The pool `Store.open()` gets instead of connecting."""
    fake = FakePool()

    async def create_pool(*_args: object, **_kwargs: object) -> FakePool:
        return fake

    monkeypatch.setattr(asyncpg, "create_pool", create_pool)
    return fake


class TestNotOpen:
    """Using a store that is not open is a bug: NotConnectedError, never retried."""

    @pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
    async def test_before_open(self, call: Callable[[Store], Awaitable[object]]) -> None:
        """Every kind of call on a store never opened raises NotConnectedError."""
        with pytest.raises(NotConnectedError, match="the store is not open") as raised:
            await call(Store(NOWHERE))
        assert not raised.value.retryable

    async def test_after_close(self, pool: FakePool) -> None:
        """After close() the store refuses like one never opened."""
        store = Store(NOWHERE)
        await store.open()
        assert store.pool is pool
        await store.close()
        assert pool.closed
        with pytest.raises(NotConnectedError):
            await store.count_by_task(TASK)

    async def test_async_with_opens_and_closes(self, pool: FakePool) -> None:
        """`async with` opens the store on the way in and closes it on the way out."""
        async with Store(NOWHERE) as store:
            assert store.pool is pool
        assert pool.closed
        with pytest.raises(NotConnectedError):
            _ = store.pool

    async def test_terminate_or_close_before_open_is_harmless(self) -> None:
        """Neither needs a pool; the store still refuses as one never opened."""
        store = Store(NOWHERE)
        store.terminate()
        await store.close()
        with pytest.raises(NotConnectedError):
            _ = store.pool


class TestTerminated:
    """Connections dropped at the shutdown deadline are an outage: retryable, not a bug."""

    @pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
    async def test_after_terminate(
        self, pool: FakePool, call: Callable[[Store], Awaitable[object]]
    ) -> None:
        """Every kind of call after terminate() raises a retryable DatabaseUnavailableError."""
        store = Store(NOWHERE)
        await store.open()
        store.terminate()
        assert pool.terminated
        with pytest.raises(DatabaseUnavailableError, match="shutdown deadline") as raised:
            await call(store)
        assert raised.value.retryable

    async def test_close_after_terminate_keeps_the_outage(self, pool: FakePool) -> None:
        """The consumer closes after dropping: a write still retrying sees the outage."""
        store = Store(NOWHERE)
        await store.open()
        store.terminate()
        await store.close()
        assert not pool.closed
        with pytest.raises(DatabaseUnavailableError):
            _ = store.pool

    async def test_open_again_after_terminate(self, pool: FakePool) -> None:
        """A new open() makes the store usable again."""
        store = Store(NOWHERE)
        await store.open()
        store.terminate()
        await store.open()
        assert store.pool is pool


class TestReadsShareOneBuilder:
    """The find_by_* reads send the paged read's text, built from its constant fragments."""

    @pytest.mark.parametrize("limit", [None, 3])
    async def test_find_by_task_workspace_session(self, pool: FakePool, limit: int | None) -> None:
        """Each sends read_sql and read_arguments of the HistoryQuery that filters on its id."""
        store = Store(NOWHERE)
        await store.open()
        some = uuid.uuid4()
        assert await store.find_by_task(some, limit=limit) == []
        assert await store.find_by_workspace(some, limit=limit) == []
        assert await store.find_by_session(some, limit=limit) == []
        expected = [
            HistoryQuery(task_id=some, limit=limit),
            HistoryQuery(workspace_id=some, limit=limit),
            HistoryQuery(session_id=some, limit=limit),
        ]
        assert pool.sent == [
            (read_sql(query), read_arguments(query, limit=limit)) for query in expected
        ]


def test_only_the_store_imports_asyncpg() -> None:
    """The driver stays behind consumer/store/: no other module of the package imports it."""
    package = Path(consumer.__file__).parent
    importers = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            if any(name.split(".")[0] == "asyncpg" for name in names):
                importers.append(path.relative_to(package))
    assert importers
    assert [path for path in importers if path.parts[0] != "store"] == []
