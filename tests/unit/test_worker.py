"""The worker's life around the pipeline: start-up, stopping, expiry, health; on fakes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from consumer.errors import DatabaseUnavailableError, StoreError
from consumer.expiry import ExpiryLoop
from consumer.metrics import Metrics
from consumer.shutdown import exit_if_stuck
from consumer.worker import Worker
from tests.fakes import FakeMessage, InMemoryBroker, InMemoryStore, until
from tests.unit.test_pipeline import quick_settings


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Rig:
    """A worker on in-memory fakes, and one known task."""

    def __init__(self, **settings: Any) -> None:  # noqa: ANN401  # any setting
        """Build the fakes and the worker; `settings` override the quick defaults."""
        self.store = InMemoryStore()
        self.broker = InMemoryBroker(journal=self.store.journal)
        self.task = uuid.uuid4()
        self.store.tasks.add(self.task)
        options = {"batch_wait_ms": 1, "expire_interval_seconds": 0, "metrics_port": 0}
        self.worker = Worker(
            quick_settings(**{**options, **settings}), store=self.store, broker=self.broker
        )

    def message(self, content: str) -> FakeMessage:
        """A valid event of the known task."""
        return FakeMessage.of(
            {"task_id": str(self.task), "context_type": "agent_turn", "content": content}
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        """The worker running until the block ends; stopped then, and awaited."""
        task = asyncio.create_task(self.worker.run())
        try:
            yield task
        finally:
            if not task.done():
                self.worker.stop()
            await asyncio.wait_for(task, timeout=10)

    async def until_consuming(self) -> None:
        """Wait until the worker has subscribed."""
        await until(lambda: self.broker.consuming)


class TestMemoryBudget:
    """Above the high mark of bytes in hand deliveries pause; under the low one they resume."""

    async def test_paused_while_over_then_resumed(self) -> None:
        """Deliveries pause once too much is held, and resume once the batch is written."""
        rig = Rig(inbox_high_bytes=1 << 20, inbox_low_bytes=1024)
        release = asyncio.Event()
        original = rig.store.write_batch

        async def slow_write(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401  # passed on
            await release.wait()
            return await original(*args, **kwargs)

        rig.store.write_batch = slow_write  # type: ignore[method-assign]  # a slow database
        big = [
            FakeMessage.of(
                {
                    "task_id": str(rig.task),
                    "context_type": "agent_turn",
                    "content": f"big {n}",
                    "padding": "p" * 300_000,  # an unknown field: valid, and large
                }
            )
            for n in range(4)
        ]
        async with rig.running():
            await rig.until_consuming()
            await rig.broker.deliver(*big)
            await until(lambda: rig.broker.paused)
            assert rig.worker.metrics.registry.get_sample_value("task_history_inbox_paused") == 1
            release.set()
            await until(lambda: len(rig.store.rows) == 4 and not rig.broker.paused)
        assert ("pause", "-") in rig.store.journal
        assert ("resume", "-") in rig.store.journal
        assert rig.broker.consuming is False  # cancelled at the stop, not left paused

    async def test_the_prefetch_follows_the_size_of_the_messages(self) -> None:
        """204 ahead at first; small messages widen it to the configured count."""
        rig = Rig(prefetch=500)
        async with rig.running():
            await rig.until_consuming()
            assert rig.broker.prefetch == 204  # each unseen message taken as 320 KiB
            await rig.broker.deliver(*(rig.message(f"small {n}") for n in range(40)))
            await until(lambda: rig.broker.prefetch == 500)
        assert len(rig.store.rows) == 40


class TestStopping:
    """A stop writes and acks what is in hand before `run` returns."""

    async def test_messages_in_hand_are_written_and_acked(self) -> None:
        """Deliveries waiting in the inbox when the stop comes are stored and acked, not lost."""
        rig = Rig(batch_wait_ms=60_000, batch_size=1000)  # nothing is written before the stop
        async with rig.running():
            await rig.until_consuming()
            await rig.broker.deliver(*(rig.message(f"event {n}") for n in range(10)))
            assert rig.store.rows == {}
        assert rig.store.contents == [f"event {n}" for n in range(10)]
        assert len(rig.broker.acked) == 10
        assert rig.broker.handler is None  # the subscription was cancelled first
        assert not rig.store.opened
        assert not rig.broker.connected

    async def test_a_hung_write_is_abandoned_at_the_deadline(self) -> None:
        """A write the database never answers is cut at the shutdown deadline, left unacked."""
        rig = Rig(shutdown_timeout_seconds=0.2)
        rig.store.hangs = True
        async with rig.running() as task:
            await rig.until_consuming()
            await rig.broker.deliver(rig.message("never answered"))
            await until(lambda: rig.store.statements == 1)
            rig.worker.stop()
            await asyncio.wait_for(task, timeout=2)
        assert rig.broker.acked == []
        assert rig.store.terminated  # its connections dropped, as a hung server needs

    async def test_a_stop_before_the_database_answers_ends_the_wait(self) -> None:
        """Stopped while waiting for the database, the worker returns without consuming."""
        rig = Rig(retry_backoff_max_seconds=60)
        rig.store.failures = [DatabaseUnavailableError()] * 100
        async with rig.running() as task:
            await asyncio.sleep(0.05)
            rig.worker.stop()
            await asyncio.wait_for(task, timeout=1)
        assert not rig.broker.connected

    async def test_a_stop_that_outlasts_every_bound_exits_saying_where_it_waits(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past its last bound, a stuck stop logs the stack of every task, then exits with 1."""
        exits: list[int] = []
        monkeypatch.setattr("consumer.shutdown.os._exit", exits.append)

        async def stuck_somewhere_no_timeout_reaches() -> None:
            await asyncio.Event().wait()

        stuck = asyncio.create_task(stuck_somewhere_no_timeout_reaches())
        with structlog.testing.capture_logs() as logs:
            exit_if_stuck(after=0.01)
            await until(lambda: exits == [1])
        stuck.cancel()
        [line] = [line for line in logs if line["log_level"] == "critical"]
        assert line["event"] == "the stop did not finish; exiting"
        assert any("stuck_somewhere_no_timeout_reaches" in stack for stack in line["tasks"])

    async def test_a_stop_that_ends_cancels_the_exit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A stop that finishes in time cancels the exit it armed."""
        exits: list[int] = []
        monkeypatch.setattr("consumer.shutdown.os._exit", exits.append)
        exit_if_stuck(after=0.01).cancel()
        await asyncio.sleep(0.05)
        assert exits == []


class TestTransit:
    """The dead-letter queue is consumed too: its messages become dead-letter rows."""

    async def test_a_message_of_the_dead_letter_queue_becomes_a_row(self) -> None:
        """A poison message the broker dead-lettered is stored as a row and acked."""
        rig = Rig()
        poison = FakeMessage(
            b"crashes consumers",
            headers={"x-death": [{"reason": "delivery_limit", "queue": "events"}]},
            exchange="task_build_history.dlx",
        )
        async with rig.running():
            await rig.until_consuming()
            await rig.broker.deliver_dead(poison)
            await until(lambda: bool(rig.broker.acked))
        (letter,) = rig.store.dead_letters
        assert (letter.code, letter.body) == ("delivery_limit", b"crashes consumers")
        assert rig.store.contents == []


class TestStartUp:
    """The worker waits for servers that are down, and fails fast on a bad setting."""

    async def test_the_database_is_waited_for(self) -> None:
        """Two failed connects, then the worker consumes."""
        rig = Rig()
        rig.store.failures = [DatabaseUnavailableError(), DatabaseUnavailableError()]
        async with rig.running():
            await rig.until_consuming()
            await rig.broker.deliver(rig.message("after the outage"))
        assert rig.store.contents == ["after the outage"]

    async def test_a_refusal_is_not_waited_for(self) -> None:
        """A database that refuses the login is an error at once, not an endless wait."""
        rig = Rig()
        rig.store.failures = [StoreError('password authentication failed for user "app"')]
        with pytest.raises(StoreError, match="password authentication failed"):
            await rig.worker.run()


class TestCleanup:
    """Whatever fails on the way out, every connection is closed."""

    async def test_a_readiness_probe_that_swallows_its_cancellation_still_ends(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The client turning the stop's cancellation into a connection error: the stop ends."""
        monkeypatch.setattr("consumer.readiness.CHECK_INTERVAL", 0.01)
        monkeypatch.setattr("consumer.worker.RECANCEL_SECONDS", 0.05)
        rig = Rig()
        rig.broker.ready_messages = None
        rig.broker.cancellation_as_error = True
        async with rig.running() as task:
            await rig.until_consuming()
            await rig.broker.probing.wait()
            rig.worker.stop()
            await asyncio.wait_for(task, timeout=5)  # a bound: without it, a hang is the failure
        assert not rig.broker.connected

    async def test_a_failing_health_server_stop_still_closes_the_servers(self) -> None:
        """If the health server's stop raises, the broker and the database are closed anyway."""
        rig = Rig(metrics_port=free_port(), metrics_host="127.0.0.1")
        health = rig.worker.health
        assert health is not None
        real_stop = health.stop

        async def broken_stop() -> None:
            await real_stop()
            raise RuntimeError("health server would not stop")

        health.stop = broken_stop  # type: ignore[method-assign]  # the failure under test
        with pytest.raises(RuntimeError, match="would not stop"):
            async with rig.running():
                await rig.until_consuming()
        assert not rig.store.opened
        assert not rig.broker.connected


class TestReadiness:
    """/readyz says why the worker is not ready, in a few words."""

    async def test_ready_only_while_consuming_with_the_database_answering(self) -> None:
        """Not consuming, then ready, then the database's error, then stopping."""
        rig = Rig()
        assert await rig.worker.readiness() == "not consuming from the broker"
        async with rig.running():
            await rig.until_consuming()
            assert await rig.worker.readiness() is None
            rig.store.failures = [DatabaseUnavailableError("database unavailable: refused")]
            assert await rig.worker.readiness() == "database unavailable: refused"
            rig.worker.stop()
            assert await rig.worker.readiness() == "stopping"


class TestExpiryLoop:
    """Expiry runs every interval, stands down for pg_cron, and survives its own failures."""

    async def test_an_unexpected_error_is_logged_and_expiry_goes_on(self) -> None:
        """A bug in one run is logged with its traceback; the next interval runs again."""
        store = InMemoryStore(opened=True, failures=[RuntimeError("expiry bug")])
        metrics = Metrics()
        loop = ExpiryLoop(store, interval=0.001, batch_size=10, metrics=metrics)
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(loop.run())
            await until(lambda: store.expired_runs >= 2)
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        (failure,) = [line for line in logs if line["log_level"] == "error"]
        assert failure["event"] == "expiry failed unexpectedly; trying again next interval"
        assert failure["exc_info"] is True
        sample = metrics.registry.get_sample_value
        assert sample("task_history_expiry_runs_total", {"outcome": "failed"}) == 1
        assert (sample("task_history_expiry_runs_total", {"outcome": "done"}) or 0) >= 1

    async def test_the_worker_ends_cleanly_after_an_expiry_failure(self) -> None:
        """A failed expiry run is not the worker's exit cause: `run` returns normally."""
        rig = Rig(expire_interval_seconds=0.001)
        rig.store.failures = []
        async with rig.running():
            await rig.until_consuming()
            rig.store.failures.append(RuntimeError("expiry bug"))
            await until(lambda: rig.store.expired_runs >= 2)

    async def test_stands_down_while_pg_cron_runs_expiry(self) -> None:
        """With a pg_cron job registered, the loop deletes nothing itself."""
        store = InMemoryStore(opened=True, expiry_job_name="task_build_history_expire:db")
        metrics = Metrics()
        await ExpiryLoop(store, interval=1, batch_size=10, metrics=metrics).run_once()
        assert store.expired_runs == 0
        sample = metrics.registry.get_sample_value
        assert sample("task_history_expiry_runs_total", {"outcome": "scheduled"}) == 1
