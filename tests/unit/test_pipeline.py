"""The batch pipeline's decisions, on in-memory fakes of the database and the broker."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from consumer.bookkeeping import SUMMED, BatchSummary
from consumer.broker.headers import RECEIVED_AT, REFUSED_SINCE, REPLAY_COUNT, WAITING_SINCE
from consumer.errors import (
    BrokerUnavailableError,
    DatabaseUnavailableError,
    ErrorCode,
    NotConnectedError,
    StoreError,
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
        "refused_row_retry_seconds": 0,
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

    def message(
        self,
        content: str,
        *,
        headers: dict[str, Any] | None = None,
        **fields: Any,  # noqa: ANN401  # event fields
    ) -> FakeMessage:
        """A valid event of the known task, as a delivered message with these headers."""
        event = {"task_id": str(self.task), "context_type": "agent_turn", "content": content}
        return FakeMessage.of({**event, **fields}, headers=headers or {})

    async def handle(self, *messages: FakeMessage, transit: bool = False) -> None:
        """Run one batch of `messages` through the pipeline, decoded as the broker adapter does."""
        await self.pipeline.handle(
            [Delivery(message.incoming(transit=transit)) for message in messages]
        )

    def codes(self) -> list[str]:
        """The codes of the dead letters written so far."""
        return [letter.code for letter in self.store.dead_letters]

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
        """Body, message id, routing key, signed replay count, headers and task id are kept."""
        bench = Bench()
        body = b'{"task_id": "%s", "context_type": "agent_turn"}' % str(bench.task).encode()
        message = FakeMessage(
            body,
            message_id="m-1",
            routing_key="history.agent_turn",
            headers={REPLAY_COUNT: 2, "trace": "abc"},
        ).signed()
        await bench.handle(message)
        (letter,) = bench.store.dead_letters
        assert (letter.body, letter.message_id, letter.routing_key) == (
            body,
            "m-1",
            "history.agent_turn",
        )
        assert letter.task_id == str(bench.task)
        assert letter.replay_count == 2
        assert letter.headers == {"trace": "abc"}
        assert letter.code == ErrorCode.INVALID_EVENT
        assert letter.detail == "content: Field required"

    async def test_a_replay_count_past_the_column_is_not_believed(self) -> None:
        """x-replay-count 2**31 (once a crash in the dead-letter INSERT): a letter counting 0."""
        bench = Bench()
        bad = FakeMessage(b"{not json", message_id="m", headers={REPLAY_COUNT: 2**31})
        await bench.handle(bench.message("before"), bad, bench.message("after"))
        assert bench.store.contents == ["before", "after"]
        (letter,) = bench.store.dead_letters
        assert (letter.code, letter.replay_count) == (ErrorCode.INVALID_JSON, 0)
        assert bench.sample("task_history_ignored_values_total", kind="unsigned") == 1
        assert len(bench.broker.acked) == 3

    async def test_properties_the_client_could_not_read(self) -> None:
        """A message whose frames had to be read leniently is an invalid_properties letter."""
        bench = Bench()
        unreadable = bench.message("valid body")
        unreadable.unreadable = ("timestamp: timestamp 18446744073709551615 is out of range",)
        await bench.handle(unreadable, bench.message("next"))
        assert bench.store.contents == ["next"]
        (letter,) = bench.store.dead_letters
        assert letter.code == ErrorCode.INVALID_PROPERTIES
        assert "18446744073709551615" in letter.detail


class TestInternalErrors:
    """An error nobody expected fails only the message it comes from: internal_error."""

    async def test_a_parser_bug_fails_only_its_message(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unexpected exception while validating one message dead-letters only that one."""
        monkeypatch.setattr("consumer.triage.parse_event", breaking_on(b"explode", parse_event))
        bench = Bench()
        with structlog.testing.capture_logs() as logs:
            await bench.handle(bench.message("before"), bench.message("explode"))
        assert bench.store.contents == ["before"]
        (copy,) = bench.store.dead_letters
        assert copy.code == ErrorCode.INTERNAL_ERROR
        assert copy.detail == "RuntimeError: parser bug"
        assert any(line.get("exc_info") for line in logs)  # the traceback goes to the log
        assert len(bench.broker.acked) == 2

    @pytest.mark.parametrize("size", [1, 2, 9, 64])
    async def test_a_write_that_breaks_on_one_row(self, size: int) -> None:
        """The driver failing on one row's values: found by halving, alone an internal_error."""
        bench = Bench()
        bench.store.breaks_on = lambda entry: entry.content == "odd"
        contents = [f"event {n}" for n in range(size)]
        contents[size // 2] = "odd"
        with structlog.testing.capture_logs():  # the traceback, rendered plainly
            await bench.handle(*(bench.message(content) for content in contents))
        assert bench.store.contents == [c for c in contents if c != "odd"]
        assert bench.codes() == [ErrorCode.INTERNAL_ERROR]
        assert "TypeError" in bench.store.dead_letters[0].detail
        assert len(bench.broker.acked) == size
        assert bench.sample("task_history_events_received_total") == size

    async def test_a_copy_that_cannot_be_parked(self) -> None:
        """A retry copy failing unexpectedly: that message is a dead letter, the rest go on."""
        bench = Bench(unknown_task_retry_seconds=300)
        strangers = [
            FakeMessage.of({"task_id": str(uuid.uuid4()), "context_type": "error", "content": c})
            for c in ("lost", "odd", "lost too")
        ]
        original = bench.broker.retry_later

        async def breaking(message: Any, **kwargs: Any) -> None:  # noqa: ANN401  # passed on
            if b"odd" in message.body.data:
                raise ValueError("the header table could not be encoded")
            await original(message, **kwargs)

        bench.broker.retry_later = breaking  # type: ignore[method-assign]  # a broken copy
        await bench.handle(bench.message("known"), *strangers)
        assert bench.store.contents == ["known"]
        assert [m for m, _ in bench.broker.retries] == [strangers[0], strangers[2]]
        assert bench.codes() == [ErrorCode.INTERNAL_ERROR]
        assert len(bench.broker.acked) == 4

    async def test_a_letter_the_database_refuses_is_kept_bare(self) -> None:
        """A dead letter whose headers the table refuses is written without them, not lost."""
        bench = Bench()
        bench.store.refuses_letter = lambda letter: bool(letter.headers)
        await bench.handle(FakeMessage(b"[]", message_id="m", headers={"trace": "x"}))
        (letter,) = bench.store.dead_letters
        assert (letter.code, letter.headers) == (ErrorCode.INVALID_EVENT, {})
        assert "headers and properties not kept" in letter.detail
        assert len(bench.broker.acked) == 1

    async def test_a_decoding_failure_is_an_internal_error(self) -> None:
        """A message the broker adapter could not decode is dead-lettered, not dropped."""
        bench = Bench()
        message = FakeMessage(b"{}", message_id="m")
        incoming = dataclasses.replace(message.incoming(), decode_error="KeyError: 'x'")
        await bench.pipeline.handle([Delivery(incoming)])
        (letter,) = bench.store.dead_letters
        assert letter.code == ErrorCode.INTERNAL_ERROR
        assert "KeyError" in letter.detail


class TestTrust:
    """The consumer's own headers are believed only on copies it signed, and within bounds."""

    async def test_a_publishers_received_at_changes_nothing(self) -> None:
        """x-received-at 2099 (or 9999) from a publisher: created_at is when it was received."""
        bench = Bench()
        before = datetime.now(UTC)
        await bench.handle(
            bench.message("a", headers={RECEIVED_AT: "2099-01-01T00:00:00+00:00"}),
            bench.message("b", headers={RECEIVED_AT: "9999-12-31T23:59:59+00:00"}),
        )
        created = [entry.created_at for entry in bench.store.rows.values()]
        assert len(created) == 2
        assert all(before <= at <= datetime.now(UTC) for at in created)
        assert bench.sample("task_history_ignored_values_total", kind="unsigned") == 2

    async def test_a_signed_received_at_is_believed(self) -> None:
        """A retry copy's own x-received-at, signed, is the event's created_at."""
        bench = Bench()
        first = datetime.now(UTC) - timedelta(seconds=40)
        await bench.handle(bench.message("a", headers={RECEIVED_AT: first.isoformat()}).signed())
        (entry,) = bench.store.rows.values()
        assert entry.created_at == first

    @pytest.mark.parametrize(
        "value", ["2099-01-01T00:00:00+00:00", "2000-01-01T00:00:00+00:00", "tomorrow"]
    )
    async def test_a_signed_time_out_of_bounds_is_not_believed(self, value: str) -> None:
        """Signed or not, a time in the future or older than the retention is no time."""
        bench = Bench()
        await bench.handle(bench.message("a", headers={RECEIVED_AT: value}).signed())
        (entry,) = bench.store.rows.values()
        assert datetime.now(UTC) - entry.created_at < timedelta(seconds=5)
        assert bench.sample("task_history_ignored_values_total", kind="out_of_range") == 1

    async def test_a_future_unknown_task_since_does_not_loop_for_ever(self) -> None:
        """A publisher's x-unknown-task-since in 2099: its window starts now, and ends."""
        bench = Bench(unknown_task_retry_seconds=60)
        stranger = FakeMessage.of(
            {"task_id": str(uuid.uuid4()), "context_type": "error", "content": "lost"},
            headers={WAITING_SINCE: "2099-01-01T00:00:00+00:00"},
        )
        before = datetime.now(UTC)
        await bench.handle(stranger)
        ((_, since),) = bench.broker.retries
        assert since is not None
        assert before <= since <= datetime.now(UTC)

    async def test_the_signature_covers_the_body(self) -> None:
        """Signed headers moved onto another body are not believed."""
        bench = Bench()
        signed = bench.message("a", headers={RECEIVED_AT: "2000-01-01T00:00:00+00:00"}).signed()
        other = bench.message("b", headers=dict(signed.headers))
        await bench.handle(other)
        assert bench.sample("task_history_ignored_values_total", kind="unsigned") == 1


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
        poison.exchange = "task_build_history.dlx"  # dead-lettered by the broker
        await bench.handle(poison, transit=True)
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
        await bench.handle(message, transit=True)
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
        assert copy.detail == "the database refused the row: value violates a check constraint"
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
        ).signed()
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
        # The second failure is the probe's: the write is tried again once a probe answers.
        assert bench.store.reconnects == 1
        assert bench.sample("task_history_batch_retries_total") == 1
        assert [kind for kind, _ in bench.store.journal] == ["commit", "ack"]

    async def test_written_as_soon_as_the_database_answers(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A probe, not the backoff, says when to try again: 1 s of outage, not 30 s of wait."""
        monkeypatch.setattr("consumer.pipeline.backoff", lambda _attempt, **_cap: 30.0)
        bench = Bench(retry_backoff_max_seconds=30)
        loop = asyncio.get_running_loop()
        bench.store.unreachable_until = loop.time() + 1.0
        async with asyncio.timeout(10):  # a bound: the backoff alone would take 30 s
            await bench.handle(bench.message("patient"))
        assert bench.store.contents == ["patient"]
        assert bench.sample("task_history_batch_retries_total") == 1

    async def test_a_broker_refusal_of_a_retry_copy_is_retried(self) -> None:
        """An unconfirmed retry copy means no ack; the copy is sent again, the write is not."""
        bench = Bench(unknown_task_retry_seconds=300)
        bench.broker.failures = [BrokerUnavailableError()]
        stranger = FakeMessage.of(
            {"task_id": str(uuid.uuid4()), "context_type": "error", "content": "lost"}
        )
        await bench.handle(bench.message("fine"), stranger)
        assert len(bench.broker.retries) == 1
        assert len(bench.broker.acked) == 2
        assert bench.store.contents == ["fine"]
        assert bench.store.statements == 1  # committed once: the retry is the broker step's
        assert bench.store.reconnects == 0  # a broker failure leaves the database alone
        kinds = [kind for kind, _ in bench.store.journal]
        assert kinds == ["commit", "retry", "ack", "ack"]

    async def test_copies_confirmed_are_not_sent_again(self) -> None:
        """Of three parked copies one is refused: only that one is sent again, and acks wait."""
        bench = Bench(unknown_task_retry_seconds=300)
        bench.broker.failures = [BrokerUnavailableError()]
        strangers = [
            FakeMessage.of({"task_id": str(uuid.uuid4()), "context_type": "error", "content": n})
            for n in ("one", "two", "three")
        ]
        await bench.handle(*strangers)
        retried = [receipt for receipt, _ in bench.broker.retries]
        assert len(retried) == 3
        assert len(set(map(id, retried))) == 3  # each sent once: no extra copy in the queue
        assert len(bench.broker.acked) == 3
        assert [kind for kind, _ in bench.store.journal][-3:] == ["ack", "ack", "ack"]

    async def test_a_dead_letter_failing_after_the_commit_is_retried_alone(self) -> None:
        """The rows are committed; the dead letters written after them fail once: not the rows."""
        bench = Bench(refused_row_retry_seconds=0)
        bench.store.refuses = lambda entry: entry.content == "refused"
        write = bench.store.write_batch
        letters_failed: list[int] = []
        with_entries: list[int] = []

        async def flaky(entries: Any, letters: Any) -> set[uuid.UUID]:  # noqa: ANN401  # the store's
            if entries:
                with_entries.append(len(entries))
            elif not letters_failed:
                letters_failed.append(len(letters))
                raise DatabaseUnavailableError
            return await write(entries, letters)

        bench.store.write_batch = flaky  # type: ignore[method-assign,assignment]
        await bench.handle(bench.message("fine"), bench.message("refused"))
        assert bench.store.contents == ["fine"]
        assert bench.codes() == ["database_rejected"]
        assert letters_failed == [1]
        # The batch, then its halves (bisection): never the rows again after the failure.
        assert with_entries == [2, 1, 1]
        assert len(bench.broker.acked) == 2

    async def test_a_channel_closed_before_the_write_writes_nothing(self) -> None:
        """Its deliveries are the broker's again (perhaps another consumer's): no row, no ack."""
        bench = Bench()
        bench.broker.channel_open = False
        with structlog.testing.capture_logs() as logs:
            await bench.handle(bench.message("someone else's now"))
        assert bench.store.statements == 0
        assert bench.store.contents == []
        assert bench.broker.acked == []
        assert any("broker redelivers it" in line["event"] for line in logs)

    async def test_a_channel_closing_while_the_batch_is_sorted(self) -> None:
        """Closed during the look-up of its tasks: the write that would follow is not made."""
        bench = Bench()
        missing = bench.store.missing_tasks

        async def closing(task_ids: Any) -> set[uuid.UUID]:  # noqa: ANN401  # the store's own
            bench.broker.channel_open = False
            return await missing(task_ids)

        bench.store.missing_tasks = closing  # type: ignore[method-assign]
        await bench.handle(bench.message("redelivered instead"))
        assert bench.store.statements == 0
        assert bench.broker.acked == []

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


class TestRefusedRows:
    """Rows the database refuses wait in the retry queue for a window, then are dead letters."""

    async def test_a_refused_row_waits_while_the_rest_is_stored(self) -> None:
        """Inside its window a refused row is parked with when the refusals began; no letter."""
        bench = Bench(refused_row_retry_seconds=300)
        bench.store.refuses = lambda entry: entry.content == "poison"
        poison = bench.message("poison")
        before = datetime.now(UTC)
        await bench.handle(bench.message("a"), poison, bench.message("b"))
        assert bench.store.contents == ["a", "b"]
        ((parked, since),) = bench.broker.retries
        assert parked is poison
        assert since is not None
        assert before <= since
        assert bench.store.dead_letters == []
        assert len(bench.broker.acked) == 3
        assert bench.sample("task_history_events_refused_waiting_total") == 1

    async def test_dead_lettered_with_the_reason_once_its_window_has_passed(self) -> None:
        """A copy refused since longer than the window: database_rejected, and why."""
        bench = Bench(refused_row_retry_seconds=60)
        bench.store.refuses = lambda entry: entry.content == "poison"
        since = (datetime.now(UTC) - timedelta(seconds=75)).isoformat()
        await bench.handle(bench.message("poison", headers={REFUSED_SINCE: since}).signed())
        (letter,) = bench.store.dead_letters
        assert letter.code == ErrorCode.DATABASE_REJECTED
        assert "value violates a check constraint" in letter.detail
        assert "retried for 75 s" in letter.detail
        assert bench.broker.retries == []

    async def test_every_row_refused_for_one_reason_waits_and_the_next_flow(self) -> None:
        """A constraint no event passes parks them all; none is dead-lettered in the window."""
        bench = Bench(refused_row_retry_seconds=300)
        bench.store.refuses = lambda entry: entry.content.startswith("held")
        await bench.handle(*(bench.message(f"held {n}") for n in range(8)))
        assert len(bench.broker.retries) == 8
        assert bench.store.dead_letters == []
        await bench.handle(bench.message("ok"))  # the next batch is not held up
        assert bench.store.contents == ["ok"]
        assert bench.sample("task_history_batch_retries_total") == 0

    async def test_a_publishers_refused_since_changes_nothing(self) -> None:
        """An unsigned x-database-refused-since of long ago does not end the window at once."""
        bench = Bench(refused_row_retry_seconds=60)
        bench.store.refuses = lambda _entry: True
        old = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        await bench.handle(bench.message("poison", headers={REFUSED_SINCE: old}))
        assert bench.store.dead_letters == []
        assert len(bench.broker.retries) == 1


class TestRefusedWrites:
    """A database that refuses every write for one reason (a revoked grant) is waited out."""

    async def test_waited_out_in_one_line_then_written(self) -> None:
        """One warning, the gauge up and the reason kept while it lasts; nothing dead-lettered."""
        bench = Bench()
        grant = StoreError("permission denied for table task_build_history")
        bench.store.failures = [grant, grant, grant]
        seen: list[tuple[str | None, float]] = []
        original_pause = bench.shutdown.pause

        async def watch(seconds: float) -> None:
            value = bench.sample("task_history_database_refusing")
            seen.append((bench.pipeline.refusal, value))
            await original_pause(seconds)

        bench.shutdown.pause = watch  # type: ignore[method-assign]  # watches each wait
        with structlog.testing.capture_logs() as logs:
            await bench.handle(*(bench.message(f"event {n}") for n in range(5)))
        assert bench.store.contents == [f"event {n}" for n in range(5)]
        assert bench.store.dead_letters == []
        assert seen == [(str(grant), 1.0)] * 3
        warnings = [line for line in logs if line["log_level"] == "warning"]
        assert [line["event"] for line in warnings] == [
            "the database refuses the writes; waiting until it accepts them"
        ]
        assert any(line["event"] == "the database accepts the writes again" for line in logs)
        assert bench.pipeline.refusal is None
        assert bench.sample("task_history_database_refusing") == 0


async def lone_events_logged(count: int, *, every: float) -> list[MutableMapping[str, Any]]:
    """The log lines of `count` one-event batches and a stop, batches told once per `every` s."""
    bench = Bench(batch_log_seconds=every)
    with structlog.testing.capture_logs() as logs:
        for n in range(count):
            await bench.handle(bench.message(f"event {n}"))
        bench.pipeline.close()
    return logs


class TestBatchLines:
    """The batches are told at info once per interval at most, each one at debug."""

    async def test_a_trickle_is_summed_up_not_logged_per_event(self) -> None:
        """Twenty one-event batches: a line each at debug, two at info that add up to all."""
        logs = await lone_events_logged(20, every=60)
        per_batch = [line for line in logs if line["event"] == "batch"]
        summaries = [line for line in logs if line["event"] == "batches"]
        assert {line["log_level"] for line in per_batch} == {"debug"}
        assert len(per_batch) == 20
        # The first batch is told at once; the others wait for the interval or, as here, the stop.
        assert [(line["batches"], line["size"], line["stored"]) for line in summaries] == [
            (1, 1, 1),
            (19, 19, 19),
        ]
        assert {line["log_level"] for line in summaries} == {"info"}

    async def test_told_when_the_interval_has_passed_without_a_stop(self) -> None:
        """A batch's summary comes by itself once the interval allows, no later batch needed."""
        bench = Bench(batch_log_seconds=0.05)
        with structlog.testing.capture_logs() as logs:
            await bench.handle(bench.message("first"))
            await bench.handle(bench.message("second"))
            await asyncio.sleep(0.2)
        summaries = [line for line in logs if line["event"] == "batches"]
        assert [line["size"] for line in summaries] == [1, 1]

    async def test_zero_logs_each_batch_at_info(self) -> None:
        """With 0 seconds every batch has its own info line, and there is nothing to sum up."""
        logs = await lone_events_logged(3, every=0)
        assert [(line["event"], line["log_level"]) for line in logs] == [("batch", "info")] * 3


class TestBatchSummary:
    """The summary's arithmetic, on a clock the test turns."""

    def test_sums_and_slowest(self) -> None:
        """Counts are added up, the slowest batch is kept, and the window's length is told."""
        summary = BatchSummary(10)
        line = dict.fromkeys(SUMMED, 1.0)
        summary.add(line, now=100.0)
        summary.add(line | {"ms": 7.5, "stored": 0}, now=103.0)
        assert summary.due_in(103.0) == 0  # never told yet
        assert summary.take(now=104.0) == {
            "batches": 2,
            "size": 2,
            "stored": 1,
            "duplicates": 2,
            "dead_lettered": 2,
            "waiting_for_task": 2,
            "refused_waiting": 2,
            "unacked": 2,
            "ms_total": 8.5,
            "ms_max": 7.5,
            "seconds": 4.0,
        }
        assert summary.batches == 0
        assert summary.due_in(110.0) == 4.0
        assert summary.due_in(120.0) == 0
