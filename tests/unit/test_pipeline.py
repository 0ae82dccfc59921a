"""The batch pipeline's decisions, on in-memory fakes of the database and the broker."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from consumer.broker.headers import WAITING_SINCE
from consumer.errors import (
    BrokerUnavailableError,
    DatabaseUnavailableError,
    ErrorCode,
    NotConnectedError,
)
from consumer.events import parse_event
from consumer.metrics import Metrics
from consumer.pipeline import Delivery, Pipeline
from consumer.settings import Settings
from consumer.shutdown import Shutdown
from tests.fakes import FakeMessage, InMemoryBroker, InMemoryStore
from tests.helpers import breaking_on


def quick_settings(**overrides: Any) -> Settings:  # noqa: ANN401  # any setting
    """Settings for a pipeline under test: no .env, no waiting."""
    values: dict[str, Any] = {
        "unknown_task_retry_seconds": 0,
        "retry_backoff_max_seconds": 0.01,
        **overrides,
    }
    return Settings(_env_file=None, **values)


class Bench:
    """A pipeline wired to fakes that share one journal, and one known task."""

    def __init__(self, **settings: Any) -> None:  # noqa: ANN401  # any setting
        """Wire it up; `settings` override the quick defaults."""
        self.store = InMemoryStore()
        self.broker = InMemoryBroker(journal=self.store.journal)
        self.store.opened = True
        self.task = uuid.uuid4()
        self.store.tasks.add(self.task)
        self.metrics = Metrics()
        self.shutdown = Shutdown()
        self.pipeline = Pipeline(
            store=self.store,
            broker=self.broker,
            settings=quick_settings(**settings),
            metrics=self.metrics,
            shutdown=self.shutdown,
        )

    def message(self, content: str, **fields: Any) -> FakeMessage:  # noqa: ANN401  # event fields
        """A valid event of the known task, as a delivered message."""
        event = {"task_id": str(self.task), "context_type": "agent_turn", "content": content}
        return FakeMessage.of({**event, **fields})

    async def handle(self, *messages: FakeMessage) -> None:
        """Run one batch of `messages` through the pipeline."""
        now = datetime.now(UTC)
        await self.pipeline.handle([Delivery(message, now) for message in messages])

    def sample(self, name: str, **labels: str) -> float:
        """The value of one metric series."""
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class TestValidBatches:
    """Valid events are stored in order, and acked only after their commit."""

    async def test_stored_in_arrival_order_then_acked(self) -> None:
        """Every event is a row, in the order delivered, and each is acked after the commit."""
        bench = Bench()
        messages = [bench.message(f"event {n}") for n in range(5)]
        await bench.handle(*messages)
        assert bench.store.contents == [f"event {n}" for n in range(5)]
        assert bench.broker.acked == messages
        kinds = [kind for kind, _ in bench.store.journal]
        assert kinds == ["commit"] * 5 + ["ack"] * 5
        assert bench.store.statements == 1

    async def test_a_redelivered_event_is_stored_once(self) -> None:
        """The same id twice is one row; the second counts as a duplicate and is acked too."""
        bench = Bench()
        event_id = str(uuid.uuid4())
        await bench.handle(bench.message("first", id=event_id))
        await bench.handle(bench.message("first", id=event_id))
        assert bench.store.contents == ["first"]
        assert len(bench.broker.acked) == 2
        assert bench.sample("task_history_events_duplicate_total") == 1
        assert bench.sample("task_history_events_stored_total") == 1


class TestInvalidMessages:
    """An invalid message is dead-lettered with its reason; the valid ones around it are kept."""

    async def test_each_kind_of_bad_message_gets_its_code(self) -> None:
        """Bad JSON, a bad field, an old event and an oversized body each get their x-error."""
        bench = Bench()
        old = (datetime.now(UTC) - timedelta(days=30)).isoformat()
        await bench.handle(
            bench.message("before"),
            FakeMessage(b"{not json", message_id="bad-json"),
            bench.message("", message_id="empty"),
            bench.message("ancient", created_at=old),
            FakeMessage(b" " * (2 << 20), message_id="huge"),
            bench.message("after"),
        )
        assert bench.store.contents == ["before", "after"]
        codes = [copy.code for copy in bench.store.dead_letters]
        assert codes == [
            ErrorCode.INVALID_JSON,
            ErrorCode.INVALID_EVENT,
            ErrorCode.EXPIRED,
            ErrorCode.TOO_LARGE,
        ]
        assert "content" in bench.store.dead_letters[1].detail
        assert len(bench.broker.acked) == 6
        assert bench.sample("task_history_events_dead_lettered_total", code="expired") == 1

    async def test_dead_letters_commit_with_the_batch_before_any_ack(self) -> None:
        """A batch's rows and dead letters are one transaction, committed before any ack."""
        bench = Bench()
        await bench.handle(bench.message("ok"), FakeMessage(b"[]"), bench.message("ok too"))
        kinds = [kind for kind, _ in bench.store.journal]
        assert kinds == ["commit", "commit", "dead_letter", "ack", "ack", "ack"]
        assert bench.store.statements == 1

    async def test_a_dead_letter_keeps_the_message_as_received(self) -> None:
        """Body, message id, routing key, headers and the body's task id are kept."""
        bench = Bench()
        body = b'{"task_id": "%s", "context_type": "agent_turn"}' % str(bench.task).encode()
        message = FakeMessage(
            body,
            message_id="m-1",
            routing_key="history.agent_turn",
            headers={"x-replay-count": 2, "trace": "abc"},
        )
        await bench.handle(message)
        (letter,) = bench.store.dead_letters
        assert (letter.body, letter.message_id, letter.routing_key) == (
            body,
            "m-1",
            "history.agent_turn",
        )
        assert letter.task_id == str(bench.task)
        assert letter.replay_count == 2
        assert letter.headers["trace"] == "abc"
        assert letter.code == ErrorCode.INVALID_EVENT
        assert letter.detail == "content: Field required"

    async def test_a_parser_bug_fails_only_its_message(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unexpected exception while validating one message dead-letters only that one."""
        monkeypatch.setattr("consumer.pipeline.parse_event", breaking_on(b"explode", parse_event))
        bench = Bench()
        await bench.handle(bench.message("before"), bench.message("explode"))
        assert bench.store.contents == ["before"]
        (copy,) = bench.store.dead_letters
        assert copy.code == ErrorCode.INVALID_EVENT
        assert "RuntimeError: parser bug" in copy.detail


class TestSystemicRefusal:
    """A refusal that is every row's, for one reason, is the table's doing: waited out."""

    async def test_lone_rows_refused_alike_dead_letter_one_then_wait(self) -> None:
        """At one event a batch, the first refused row is dead-lettered, the next waits."""
        bench = Bench()
        bench.store.refuses = lambda entry: entry.content != "ok"
        await bench.handle(bench.message("first"))
        assert len(bench.store.dead_letters) == 1
        bench.shutdown.begin(timeout=0)  # so that the wait gives up instead of sleeping
        await bench.handle(bench.message("second"))
        assert len(bench.store.dead_letters) == 1
        assert len(bench.broker.acked) == 1  # the second is left for redelivery

    async def test_a_stored_batch_clears_the_suspicion(self) -> None:
        """Between two lone refusals a batch that stores means each row is judged alone."""
        bench = Bench()
        bench.store.refuses = lambda entry: entry.content.startswith("bad")
        await bench.handle(bench.message("bad 1"))
        await bench.handle(bench.message("ok"))
        await bench.handle(bench.message("bad 2"))
        assert [letter.code for letter in bench.store.dead_letters] == ["database_rejected"] * 2
        assert bench.store.contents == ["ok"]


class TestTransit:
    """What the broker dead-lettered itself is moved from its queue into the table."""

    async def test_a_poison_message_becomes_a_delivery_limit_row(self) -> None:
        """x-death's delivery_limit is the code; the body is kept unparsed; it is acked."""
        bench = Bench()
        x_death = [
            {
                "reason": "delivery_limit",
                "queue": "task_build_history.events",
                "routing-keys": ["history.agent_turn"],
            }
        ]
        poison = FakeMessage(
            b"\xff\xfe not even UTF-8",
            message_id=None,
            headers={"x-death": x_death},
            routing_key="history.agent_turn",
        )
        now = datetime.now(UTC)
        await bench.pipeline.handle([Delivery(poison, now, transit=True)])
        (letter,) = bench.store.dead_letters
        assert letter.code == "delivery_limit"
        assert "delivered too many times" in letter.detail
        assert letter.body == poison.body
        assert letter.routing_key == "history.agent_turn"
        assert bench.broker.acked == [poison]
        assert bench.sample("task_history_events_dead_lettered_total", code="delivery_limit") == 1

    async def test_a_valid_event_in_the_dead_letter_queue_is_not_stored(self) -> None:
        """A transit message stays a dead letter, even when its body is a valid event."""
        bench = Bench()
        message = bench.message("valid, but dead-lettered by the broker")
        await bench.pipeline.handle([Delivery(message, datetime.now(UTC), transit=True)])
        assert bench.store.contents == []
        (letter,) = bench.store.dead_letters
        assert letter.code == "unknown"


class TestBisection:
    """A row the database refuses is found by halving, and dead-lettered alone."""

    @pytest.mark.parametrize("size", [1, 2, 7, 64, 500])
    async def test_one_refused_row_among_many(self, size: int) -> None:
        """The refused row alone is dead-lettered, the rest stored in order, in log2 statements."""
        bench = Bench()
        bench.store.refuses = lambda entry: entry.content == "poison"
        contents = [f"event {n}" for n in range(size)]
        contents[size // 3] = "poison"
        await bench.handle(*(bench.message(content) for content in contents))
        assert bench.store.contents == [c for c in contents if c != "poison"]
        (copy,) = bench.store.dead_letters
        assert copy.code == ErrorCode.DATABASE_REJECTED
        assert "the database refused the row" in copy.detail
        assert len(bench.broker.acked) == size
        assert bench.store.statements <= 1 + 2 * math.ceil(math.log2(size)) + 1

    async def test_several_refused_rows(self) -> None:
        """Each refused row is found, however many there are."""
        bench = Bench()
        bench.store.refuses = lambda entry: entry.content.startswith("bad")
        contents = [("bad" if n % 10 == 3 else "good") + f" {n}" for n in range(100)]
        await bench.handle(*(bench.message(content) for content in contents))
        assert bench.store.contents == [c for c in contents if c.startswith("good")]
        assert len(bench.store.dead_letters) == 10


class TestUnknownTasks:
    """An event whose task doesn't exist waits, then is dead-lettered, or creates its task."""

    async def test_parked_for_a_retry_while_in_its_window(self) -> None:
        """Inside the window the event goes to the retry queue, not the table or the dead."""
        bench = Bench(unknown_task_retry_seconds=300)
        stranger = FakeMessage.of(
            {"task_id": str(uuid.uuid4()), "context_type": "error", "content": "lost"}
        )
        await bench.handle(bench.message("known"), stranger)
        assert bench.store.contents == ["known"]
        assert [message for message, _ in bench.broker.retries] == [stranger]
        assert bench.store.dead_letters == []
        assert len(bench.broker.acked) == 2

    async def test_dead_lettered_once_its_window_has_passed(self) -> None:
        """A retry that has waited the whole window is dead-lettered as unknown_task."""
        bench = Bench(unknown_task_retry_seconds=60)
        since = (datetime.now(UTC) - timedelta(seconds=90)).isoformat()
        stranger = FakeMessage.of(
            {"task_id": str(uuid.uuid4()), "context_type": "error", "content": "lost"},
            headers={WAITING_SINCE: since},
        )
        await bench.handle(stranger)
        (copy,) = bench.store.dead_letters
        assert copy.code == ErrorCode.UNKNOWN_TASK
        assert "retried for 90 s" in copy.detail

    async def test_dead_lettered_at_once_with_no_window(self) -> None:
        """With a window of 0 an unknown task is dead-lettered on first sight."""
        bench = Bench(unknown_task_retry_seconds=0)
        task = uuid.uuid4()
        await bench.handle(
            FakeMessage.of({"task_id": str(task), "context_type": "error", "content": "lost"})
        )
        (copy,) = bench.store.dead_letters
        assert copy.detail == f"task_id: no task {task} exists"
        assert bench.broker.retries == []

    async def test_created_when_the_setting_says_so(self) -> None:
        """With create_missing_tasks the task row is made and the event stored."""
        bench = Bench(create_missing_tasks=True)
        task = uuid.uuid4()
        await bench.handle(
            FakeMessage.of({"task_id": str(task), "context_type": "error", "content": "new"})
        )
        assert task in bench.store.tasks
        assert bench.store.contents == ["new"]


class TestFailures:
    """A server failure is waited out; a bug is not; a closed channel drops the batch."""

    async def test_a_database_outage_is_retried_with_fresh_connections(self) -> None:
        """The batch is written once the database is back; nothing acked before that."""
        bench = Bench()
        bench.store.failures = [DatabaseUnavailableError(), DatabaseUnavailableError()]
        await bench.handle(bench.message("patient"))
        assert bench.store.contents == ["patient"]
        assert bench.store.reconnects == 2
        assert bench.sample("task_history_batch_retries_total") == 2
        assert [kind for kind, _ in bench.store.journal] == ["commit", "ack"]

    async def test_a_broker_refusal_of_a_retry_copy_is_retried(self) -> None:
        """An unconfirmed retry copy means no ack; the batch is tried again, stored once."""
        bench = Bench(unknown_task_retry_seconds=300)
        bench.broker.failures = [BrokerUnavailableError()]
        stranger = FakeMessage.of(
            {"task_id": str(uuid.uuid4()), "context_type": "error", "content": "lost"}
        )
        await bench.handle(bench.message("fine"), stranger)
        assert len(bench.broker.retries) == 1
        assert len(bench.broker.acked) == 2
        assert bench.store.contents == ["fine"]
        assert bench.store.reconnects == 0  # a broker failure leaves the database alone

    async def test_a_refusal_of_every_row_for_one_reason_is_waited_out(self) -> None:
        """A constraint refusing every row is not the rows' fault: nothing is dead-lettered."""
        bench = Bench()
        refusing = True
        bench.store.refuses = lambda _entry: refusing
        original_pause = bench.shutdown.pause

        async def fix_the_table(seconds: float) -> None:
            nonlocal refusing
            refusing = False  # an operator drops the constraint while the consumer waits
            await original_pause(seconds)

        bench.shutdown.pause = fix_the_table  # type: ignore[method-assign]  # the operator
        with structlog.testing.capture_logs() as logs:
            await bench.handle(*(bench.message(f"event {n}") for n in range(8)))
        assert bench.store.contents == [f"event {n}" for n in range(8)]
        assert bench.store.dead_letters == []
        assert any("refuses every row" in line.get("error", "") for line in logs)

    async def test_a_closed_channel_drops_the_batch_for_redelivery(self) -> None:
        """Once its channel closed, a failing batch is let go: the broker delivers it again."""
        bench = Bench()
        bench.store.failures = [DatabaseUnavailableError()]
        bench.broker.channel_open = False
        with structlog.testing.capture_logs() as logs:
            await bench.handle(bench.message("again later"))
        assert bench.broker.acked == []
        assert any("broker redelivers it" in line["event"] for line in logs)

    async def test_a_bug_is_raised_not_retried_forever(self) -> None:
        """An error that is not retryable (a client used while closed) propagates at once."""
        bench = Bench()
        bench.store.failures = [NotConnectedError("the store is not open")]
        with pytest.raises(NotConnectedError):
            await bench.handle(bench.message("never"))
        assert bench.sample("task_history_batch_retries_total") == 0
        assert bench.broker.acked == []

    async def test_no_retry_past_the_shutdown_deadline(self) -> None:
        """While stopping, a retry that would end past the deadline leaves the batch unacked."""
        bench = Bench(retry_backoff_max_seconds=30)
        bench.shutdown.begin(timeout=0)
        bench.store.failures = [DatabaseUnavailableError()]
        await bench.handle(bench.message("left for redelivery"))
        assert bench.broker.acked == []
        assert bench.store.contents == []
