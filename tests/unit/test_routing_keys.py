"""The routing rule: context_type is stored; a wrong routing key is counted and warned of once."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from consumer.broker.headers import ORIGINAL_ROUTING_KEY
from consumer.metrics import Metrics
from consumer.pipeline import Delivery, Pipeline
from consumer.settings import Settings
from consumer.shutdown import Shutdown
from consumer.topology import WARNED_ROUTING_KEYS, RoutingKeyCheck
from tests.fakes import FakeMessage, InMemoryBroker, InMemoryStore

MISMATCHES = "task_history_routing_key_mismatches_total"
WARNING = "routing key does not match the event's context_type"


class TestRoutingKeyCheck:
    """What counts as a mismatch, and which keys are warned of."""

    def test_the_right_key_is_no_mismatch(self) -> None:
        """history.<context_type> matches, for every context type."""
        check = RoutingKeyCheck()
        for kind in ("chat_message", "execution_step", "agent_turn", "error"):
            assert check.mismatch(f"history.{kind}", kind) is None

    def test_a_wrong_key_names_itself_and_the_expected_one(self) -> None:
        """`history` and `history.not_a_type` on an agent_turn are mismatches."""
        check = RoutingKeyCheck()
        for key in ("history", "history.not_a_type", "history.error", ""):
            assert check.mismatch(key, "agent_turn") == (key, "history.agent_turn")

    def test_a_retry_copy_is_judged_by_its_first_key(self) -> None:
        """A copy back from the retry queue carries the queue's name; its signed header the key."""
        check = RoutingKeyCheck()
        retried = FakeMessage(
            b"",
            routing_key="task_build_history.events",
            headers={ORIGINAL_ROUTING_KEY: "history.agent_turn"},
        ).signed()
        assert check.mismatch(retried.incoming().routing_key, "agent_turn") is None
        wrong = FakeMessage(
            b"", routing_key="task_build_history.events", headers={ORIGINAL_ROUTING_KEY: "history"}
        ).signed()
        assert check.mismatch(wrong.incoming().routing_key, "agent_turn") == (
            "history",
            "history.agent_turn",
        )

    def test_a_publishers_first_key_is_not_believed(self) -> None:
        """Unsigned, x-original-routing-key is ignored: the delivery's key is the one judged."""
        forged = FakeMessage(
            b"", routing_key="history.agent_turn", headers={ORIGINAL_ROUTING_KEY: "history"}
        )
        assert forged.incoming().routing_key == "history.agent_turn"

    def test_each_key_is_warned_of_once_up_to_the_limit(self) -> None:
        """The first sighting of a key is warned of; a repeat, or a key past the limit, is not."""
        check = RoutingKeyCheck(warn_limit=2)
        assert check.first_sighting("history")
        assert not check.first_sighting("history")
        assert check.first_sighting("history.x")
        assert not check.first_sighting("history.y")  # the limit: counted, not logged
        assert not check.first_sighting("history")

    def test_the_default_limit_is_100(self) -> None:
        """A process warns of at most 100 distinct keys."""
        assert RoutingKeyCheck().warn_limit == WARNED_ROUTING_KEYS == 100


class RoutingBench:
    """A pipeline on in-memory fakes with one known task."""

    def __init__(self) -> None:
        """Wire it up."""
        self.store = InMemoryStore()
        self.store.opened = True
        self.task = uuid.uuid4()
        self.store.tasks.add(self.task)
        self.metrics = Metrics()
        self.pipeline = Pipeline(
            store=self.store,
            broker=InMemoryBroker(journal=self.store.journal),
            settings=Settings(_env_file=None, unknown_task_retry_seconds=0),
            metrics=self.metrics,
            shutdown=Shutdown(),
        )

    def message(self, content: str, key: str, **fields: Any) -> FakeMessage:  # noqa: ANN401  # event fields
        """An event of the known task, delivered with routing key `key`."""
        event = {"task_id": str(self.task), "context_type": "agent_turn", "content": content}
        return FakeMessage.of({**event, **fields}, routing_key=key)

    async def handle(self, *messages: FakeMessage) -> None:
        """One batch."""
        await self.pipeline.handle([Delivery(message.incoming()) for message in messages])

    def mismatches(self) -> float:
        """The counter's value."""
        return self.metrics.registry.get_sample_value(MISMATCHES) or 0.0


class TestPipelineRoutingKeys:
    """The pipeline stores by context_type, counts wrong keys and warns of each once."""

    async def test_wrong_keys_are_stored_counted_and_warned_once(self) -> None:
        """`history` and `history.not_a_type` are stored; 4 counted; one warning per key."""
        bench = RoutingBench()
        with structlog.testing.capture_logs() as logs:
            await bench.handle(
                bench.message("a", "history"),
                bench.message("b", "history.not_a_type"),
                bench.message("c", "history.agent_turn"),
            )
            await bench.handle(
                bench.message("d", "history"), bench.message("e", "history.not_a_type")
            )
        assert sorted(row.content for row in bench.store.rows.values()) == list("abcde")
        assert {row.context_type for row in bench.store.rows.values()} == {"agent_turn"}
        assert bench.mismatches() == 4
        warnings = [line for line in logs if line["event"].startswith(WARNING)]
        assert [(w["routing_key"], w["expected"]) for w in warnings] == [
            ("history", "history.agent_turn"),
            ("history.not_a_type", "history.agent_turn"),
        ]
        assert all(w["log_level"] == "warning" for w in warnings)

    async def test_right_keys_count_nothing(self) -> None:
        """Every context type with its own key: no count, no warning; the series exists at 0."""
        bench = RoutingBench()
        assert f"{MISMATCHES} 0.0" in bench.metrics.render().decode()
        with structlog.testing.capture_logs() as logs:
            await bench.handle(
                *(
                    bench.message(kind, f"history.{kind}", context_type=kind)
                    for kind in ("chat_message", "execution_step", "agent_turn", "error")
                )
            )
        assert len(bench.store.rows) == 4
        assert bench.mismatches() == 0
        assert not [line for line in logs if line["event"].startswith(WARNING)]

    async def test_warnings_stop_at_the_limit_and_counting_does_not(self) -> None:
        """150 distinct wrong keys: 150 counted, 100 warned of."""
        bench = RoutingBench()
        with structlog.testing.capture_logs() as logs:
            await bench.handle(*(bench.message(f"e{n}", f"history.k{n}") for n in range(150)))
        assert len(bench.store.rows) == 150
        assert bench.mismatches() == 150
        assert len([line for line in logs if line["event"].startswith(WARNING)]) == 100

    async def test_an_invalid_event_is_not_counted(self) -> None:
        """A message dead-lettered for its body is not a routing mismatch: it is not stored."""
        bench = RoutingBench()
        await bench.handle(FakeMessage(b"not json", routing_key="history"))
        assert bench.mismatches() == 0
        assert len(bench.store.dead_letters) == 1
