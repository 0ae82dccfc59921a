"""Readiness: the verdict from what the consumer sees, its log lines, and the worker's signs."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from prometheus_client import CollectorRegistry, Gauge

from consumer.errors import BrokerUnavailableError, DatabaseUnavailableError
from consumer.readiness import ReadinessWatch, Signs, judge
from tests.fakes import until
from tests.unit.test_worker import Rig

STALL = 10.0


class TestJudge:
    """The verdict follows from the signs alone."""

    def test_consuming_with_both_servers_answering_is_ready(self) -> None:
        """Subscribed, both probes answered, nothing waiting: ready."""
        assert judge(Signs(waiting=0, idle_seconds=3600), stall_after=STALL) is None

    @pytest.mark.parametrize(
        ("signs", "reason"),
        [
            (Signs(stopping=True, consuming=False), "stopping"),
            (Signs(consuming=False), "not consuming from the broker"),
            (Signs(broker_problem="the broker did not answer within 3 s"), "the broker did not"),
            (Signs(database_problem="database unavailable: refused"), "database unavailable"),
            (
                Signs(refusal="permission denied for table task_build_history"),
                "the database refuses the writes: permission denied",
            ),
        ],
    )
    def test_each_problem_is_named(self, signs: Signs, reason: str) -> None:
        """Stopping, no subscription, a silent broker or database, refused writes: each named."""
        verdict = judge(signs, stall_after=STALL)
        assert verdict is not None
        assert verdict.startswith(reason)

    def test_messages_waiting_with_no_delivery_for_a_while_is_a_stall(self) -> None:
        """A queue holding messages while nothing came for `stall_after` seconds: not ready."""
        assert judge(Signs(waiting=1, idle_seconds=STALL), stall_after=STALL) == (
            "messages wait in the queue, and none was delivered for 10 s"
        )

    def test_a_short_pause_or_an_empty_queue_is_no_stall(self) -> None:
        """Messages waiting but a recent delivery, or a long quiet with nothing waiting: ready."""
        assert judge(Signs(waiting=40_000, idle_seconds=STALL - 0.1), stall_after=STALL) is None
        assert judge(Signs(waiting=0, idle_seconds=10 * STALL), stall_after=STALL) is None
        assert judge(Signs(waiting=None, idle_seconds=10 * STALL), stall_after=STALL) is None


class Observed:
    """Signs a test sets, as the watch's `observe`."""

    def __init__(self) -> None:
        """Start ready."""
        self.signs = Signs(waiting=0)

    async def __call__(self) -> Signs:
        """The signs set last."""
        return self.signs


def watch(observed: Observed) -> tuple[ReadinessWatch, Gauge]:
    """A watch on `observed`, with a gauge in a registry of its own."""
    gauge = Gauge("ready", "ready", registry=CollectorRegistry())
    return ReadinessWatch(observed, stall_after=STALL, gauge=gauge), gauge


class TestWatch:
    """The watch keeps the last verdict, logs one line each way, and sets the gauge."""

    async def test_one_line_each_way(self) -> None:
        """Ready, then the same problem seen three times, then ready: two lines in all."""
        observed = Observed()
        readiness, gauge = watch(observed)
        with structlog.testing.capture_logs() as logs:
            assert await readiness.check() is None
            assert gauge._value.get() == 1  # noqa: SLF001  # prometheus-client keeps it there
            observed.signs = Signs(broker_problem="the broker did not answer within 3 s")
            for _ in range(3):
                assert await readiness.check() == "the broker did not answer within 3 s"
            assert gauge._value.get() == 0  # noqa: SLF001  # see above
            observed.signs = Signs(waiting=0)
            assert await readiness.check() is None
        assert [(line["log_level"], line["event"]) for line in logs] == [
            ("warning", "not ready"),
            ("info", "ready again"),
        ]
        assert logs[0]["reason"] == "the broker did not answer within 3 s"
        assert readiness.verdict is None

    async def test_start_up_and_stopping_are_not_announced(self) -> None:
        """Before the first ready verdict, and when stopping, the worker's own lines say it."""
        observed = Observed()
        readiness, gauge = watch(observed)
        assert readiness.verdict == "starting"
        with structlog.testing.capture_logs() as logs:
            observed.signs = Signs(consuming=False)
            await readiness.check()
            observed.signs = Signs(waiting=0)
            await readiness.check()
            observed.signs = Signs(stopping=True, consuming=False)
            await readiness.check()
        assert logs == []
        assert gauge._value.get() == 0  # noqa: SLF001  # prometheus-client keeps it there

    async def test_the_watch_outlives_a_failing_check(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A check that raises is logged, and the next one runs: /readyz never freezes."""
        monkeypatch.setattr("consumer.readiness.CHECK_INTERVAL", 0.01)
        observed = Observed()
        calls = 0

        async def observe() -> Signs:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug")
            return await observed()

        readiness = ReadinessWatch(
            observe, stall_after=STALL, gauge=Gauge("ready", "ready", registry=CollectorRegistry())
        )
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(readiness.run())
            await until(lambda: readiness.verdict is None)
            running.cancel()
        assert logs[0]["event"] == "readiness check failed"

    async def test_a_new_reason_while_not_ready_is_logged(self) -> None:
        """From a stall to the database failing: the new reason gets its own line."""
        observed = Observed()
        readiness, _ = watch(observed)
        await readiness.check()
        with structlog.testing.capture_logs() as logs:
            observed.signs = Signs(waiting=5, idle_seconds=60)
            await readiness.check()
            observed.signs = Signs(database_problem="database unavailable: refused")
            await readiness.check()
        assert [line["reason"] for line in logs] == [
            "messages wait in the queue, and none was delivered for 10 s",
            "database unavailable: refused",
        ]
        assert logs[0]["waiting"] == 5


class TestWorkerSigns:
    """The worker observes the queue, the deliveries and both servers."""

    async def test_a_stall_ends_with_the_next_delivery(self) -> None:
        """Messages wait, none is delivered: not ready; one delivery later, ready again."""
        rig = Rig(stall_seconds=0.05)
        async with rig.running():
            await rig.until_consuming()
            assert await rig.worker.readiness() is None
            rig.broker.ready_messages = 100
            await asyncio.sleep(0.1)
            assert await rig.worker.readiness() == (
                "messages wait in the queue, and none was delivered for 0.05 s"
            )
            await rig.broker.deliver(rig.message("at last"))
            assert await rig.worker.readiness() is None

    async def test_a_broker_that_does_not_answer_is_not_ready(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A probe of the queue that gets no answer in time: not ready, saying so."""
        monkeypatch.setattr("consumer.worker.PROBE_TIMEOUT", 0.05)
        rig = Rig()
        async with rig.running():
            await rig.until_consuming()
            rig.broker.ready_messages = None
            assert await rig.worker.readiness() == "the broker did not answer within 0.05 s"
            rig.broker.ready_messages = 0
            assert await rig.worker.readiness() is None

    async def test_a_connection_dropped_during_the_probe(self) -> None:
        """The connection dropped under the probe (the client's error translated): a verdict."""
        rig = Rig()
        async with rig.running():
            await rig.until_consuming()
            rig.broker.probe_failures = [
                BrokerUnavailableError("broker unavailable: the connection was closed")
            ]
            assert await rig.worker.readiness() == "broker unavailable: the connection was closed"
            assert await rig.worker.readiness() is None

    async def test_whatever_the_client_raises_is_a_verdict(self) -> None:
        """A bare Exception from the client (a channel it lost): not ready, and no traceback."""
        rig = Rig()
        async with rig.running():
            await rig.until_consuming()
            rig.broker.probe_failures = [Exception("Channel closed by RPC timeout")]
            with structlog.testing.capture_logs() as logs:
                verdict = await rig.worker.readiness()
            assert verdict == "the broker did not answer: Channel closed by RPC timeout"
            assert not [line for line in logs if "exc_info" in line]
            assert await rig.worker.readiness() is None

    async def test_the_database_is_asked_too(self) -> None:
        """The database's error is the reason while the broker answers."""
        rig = Rig()
        async with rig.running():
            await rig.until_consuming()
            rig.store.failures = [DatabaseUnavailableError("database unavailable: refused")]
            assert await rig.worker.readiness() == "database unavailable: refused"
