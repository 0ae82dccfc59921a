"""The broker's pure decisions: names, arguments, headers and ack plans, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumer.broker.deliveries import plan_acks
from consumer.broker.headers import (
    ERROR,
    ERROR_DETAIL,
    FAILED_AT,
    MAX_COUNT,
    ORIGINAL_ROUTING_KEY,
    RECEIVED_AT,
    REFUSED_SINCE,
    REPLAY_COUNT,
    RETRY_COUNT,
    WAITING_SINCE,
    retry_headers,
    routing_key,
)
from consumer.entries import ContextType
from consumer.topology import Topology

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class TestTopologyNames:
    """The default names are the contract's."""

    def test_named_derives_every_name_from_one(self) -> None:
        """Topology.named follows the defaults' pattern, so the default base gives the defaults."""
        assert Topology.named("task_build_history") == Topology()
        assert Topology.named("staging").dead_letter_queue == "staging.dead"

    def test_default_names(self) -> None:
        """Exchange, queue, dead-letter exchange and queue have the contract's names."""
        topology = Topology()
        assert topology.exchange == "task_build_history"
        assert topology.queue == "task_build_history.events"
        assert topology.dead_letter_exchange == "task_build_history.dlx"
        assert topology.dead_letter_queue == "task_build_history.dead"

    def test_retry_queue_and_limit(self) -> None:
        """The consumer's own retry queue and delivery limit have their defaults."""
        topology = Topology()
        assert topology.retry_queue == "task_build_history.retry"
        assert topology.delivery_limit == 20

    def test_names_are_settings(self) -> None:
        """Every name can be chosen, so environments can share a vhost."""
        topology = Topology(
            exchange="e",
            queue="q",
            dead_letter_exchange="dlx",
            dead_letter_queue="dlq",
            retry_queue="rq",
            delivery_limit=5,
        )
        assert (topology.exchange, topology.queue) == ("e", "q")
        assert (topology.dead_letter_exchange, topology.dead_letter_queue) == ("dlx", "dlq")
        assert (topology.retry_queue, topology.delivery_limit) == ("rq", 5)

    def test_equal_by_value(self) -> None:
        """Two topologies with the same names are equal."""
        assert Topology() == Topology()
        assert Topology(queue="other") != Topology()


class TestQueueArguments:
    """The main queue is a quorum queue that dead-letters safely and never drops."""

    def test_default_arguments(self) -> None:
        """The main queue's arguments are exactly the contract's."""
        assert Topology().queue_arguments() == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 20,
            "x-dead-letter-exchange": "task_build_history.dlx",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def test_follow_settings(self) -> None:
        """The delivery limit and dead-letter exchange come from the topology."""
        arguments = Topology(dead_letter_exchange="other.dlx", delivery_limit=3).queue_arguments()
        assert arguments["x-dead-letter-exchange"] == "other.dlx"
        assert arguments["x-delivery-limit"] == 3

    def test_fresh_dict_each_time(self) -> None:
        """Changing one returned dict doesn't change the next."""
        topology = Topology()
        first = topology.queue_arguments()
        first["x-overflow"] = "drop-head"
        assert topology.queue_arguments()["x-overflow"] == "reject-publish"


class TestRetryQueueArguments:
    """The retry queue sends each expired message back to the main queue."""

    def test_default_arguments(self) -> None:
        """Expired retries go through the default exchange to the main queue, safely."""
        assert Topology().retry_queue_arguments() == {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "task_build_history.events",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def test_follows_queue_name(self) -> None:
        """Retries return to whichever main queue the topology names."""
        arguments = Topology(queue="other.events").retry_queue_arguments()
        assert arguments["x-dead-letter-routing-key"] == "other.events"


class TestRoutingKey:
    """Events are published with `history.<context_type>`."""

    @pytest.mark.parametrize("context_type", list(ContextType))
    def test_each_context_type(self, context_type: ContextType) -> None:
        """Each context type has its own key under `history.`."""
        assert routing_key(context_type) == f"history.{context_type.value}"

    def test_example(self) -> None:
        """The contract's example key is produced."""
        assert routing_key("agent_turn") == "history.agent_turn"


class TestHeaderNames:
    """The header names are the contract's."""

    def test_header_names(self) -> None:
        """x-error and friends, spelled as contract §2 spells them."""
        assert (ERROR, ERROR_DETAIL, ORIGINAL_ROUTING_KEY, FAILED_AT, REPLAY_COUNT) == (
            "x-error",
            "x-error-detail",
            "x-original-routing-key",
            "x-failed-at",
            "x-replay-count",
        )


class TestRetryHeaders:
    """A retry copy records its first key, its times, its window and how often it was tried."""

    def test_first_retry(self) -> None:
        """The first retry sets every retry header and counts 1."""
        received = NOW - timedelta(seconds=3)
        headers = retry_headers(
            {"trace-id": "abc"},
            routing_key="history.agent_turn",
            received_at=received,
            retry_count=0,
            waiting_since=NOW,
            message_id="m-1",
        )
        assert headers == {
            "trace-id": "abc",
            ORIGINAL_ROUTING_KEY: "history.agent_turn",
            WAITING_SINCE: NOW.isoformat(),
            RECEIVED_AT: received.isoformat(),
            RETRY_COUNT: 1,
        }

    def test_a_refused_row_records_its_window(self) -> None:
        """A row the database refused carries when the refusals began, not a task's wait."""
        headers = retry_headers(
            {}, routing_key="k", received_at=NOW, retry_count=4, refused_since=NOW, message_id="m"
        )
        assert headers[REFUSED_SINCE] == NOW.isoformat()
        assert WAITING_SINCE not in headers
        assert headers[RETRY_COUNT] == 5

    def test_a_publishers_own_headers_are_not_carried(self) -> None:
        """Headers of the consumer's names that came with the message are dropped, not kept."""
        headers = retry_headers(
            {WAITING_SINCE: "2099-01-01T00:00:00+00:00", RETRY_COUNT: "abc", "x-death": [], "a": 1},
            routing_key="k",
            received_at=NOW,
            retry_count=0,
            waiting_since=NOW,
            message_id="m",
        )
        assert headers[WAITING_SINCE] == NOW.isoformat()
        assert headers[RETRY_COUNT] == 1
        assert "x-death" not in headers
        assert headers["a"] == 1

    def test_the_count_stays_in_range(self) -> None:
        """However often a message went round, its count fits PostgreSQL's integer."""
        headers = retry_headers(
            {}, routing_key="k", received_at=NOW, retry_count=MAX_COUNT, message_id="m"
        )
        assert headers[RETRY_COUNT] == MAX_COUNT

    def test_does_not_change_input(self) -> None:
        """The headers passed in are left as they were."""
        original: dict[str, Any] = {RETRY_COUNT: 1}
        retry_headers(original, routing_key="k", received_at=NOW, retry_count=1, message_id="m")
        assert original == {RETRY_COUNT: 1}


class TestPlanAcks:
    """One multiple-ack only when it would ack exactly the given tags."""

    def test_empty(self) -> None:
        """No tags means no ack at all."""
        assert plan_acks([], outstanding=[1, 2, 3]) == (None, [])

    def test_empty_with_nothing_outstanding(self) -> None:
        """No tags and nothing outstanding also means no ack."""
        assert plan_acks([], outstanding=[]) == (None, [])

    def test_all_outstanding(self) -> None:
        """Tags that are every outstanding tag go in one multiple-ack of the highest."""
        assert plan_acks([1, 2, 3], outstanding=[1, 2, 3]) == (3, [])

    def test_all_outstanding_up_to_highest(self) -> None:
        """Outstanding tags above the highest don't prevent a multiple-ack."""
        assert plan_acks([1, 2, 3], outstanding=[1, 2, 3, 4, 5]) == (3, [])

    def test_order_does_not_matter(self) -> None:
        """Tags in any order still make one multiple-ack of the highest."""
        assert plan_acks([3, 1, 2], outstanding=[2, 3, 1]) == (3, [])

    def test_after_earlier_acks(self) -> None:
        """Tags already acked and gone from the outstanding set leave room for a multiple-ack."""
        assert plan_acks([4, 5, 6], outstanding=[4, 5, 6, 7]) == (6, [])

    def test_single_tag(self) -> None:
        """The lowest outstanding tag alone is one multiple-ack of itself."""
        assert plan_acks([1], outstanding=[1, 2]) == (1, [])

    def test_gap_means_singles(self) -> None:
        """An outstanding tag between the given ones forces single acks."""
        assert plan_acks([1, 3], outstanding=[1, 2, 3]) == (None, [1, 3])

    def test_lower_outstanding_means_singles(self) -> None:
        """An outstanding tag below the given ones forces single acks."""
        assert plan_acks([2, 3], outstanding=[1, 2, 3]) == (None, [2, 3])

    def test_singles_sorted(self) -> None:
        """Single acks come in ascending tag order."""
        assert plan_acks([9, 2, 5], outstanding=[1, 2, 5, 9]) == (None, [2, 5, 9])

    def test_tags_not_outstanding_mean_singles(self) -> None:
        """Tags that are not outstanding are never folded into a multiple-ack of others."""
        assert plan_acks([1, 3], outstanding=[2, 3]) == (None, [1, 3])
        assert plan_acks([3, 5], outstanding=[4, 5]) == (None, [3, 5])

    def test_duplicate_tags_once(self) -> None:
        """A tag given twice is acked once."""
        assert plan_acks([2, 2], outstanding=[1, 2]) == (None, [2])
        assert plan_acks([1, 1], outstanding=[1]) == (1, [])

    def test_single_tag_not_lowest(self) -> None:
        """A lone tag above another outstanding tag is acked on its own."""
        assert plan_acks([2], outstanding=[1, 2]) == (None, [2])
