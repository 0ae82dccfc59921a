"""The broker's names, queue arguments and routing rule (contract §2): pure data, no client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.broker.headers import routing_key
from consumer.entries import ContextType

# How many distinct mismatched routing keys a consumer process warns of; then it only counts.
WARNED_ROUTING_KEYS = 100


@dataclass(frozen=True, slots=True)
class Topology:
    """The names of contract §2; each is a setting, so tests and environments can share a vhost."""

    exchange: str = "task_build_history"
    queue: str = "task_build_history.events"
    dead_letter_exchange: str = "task_build_history.dlx"
    dead_letter_queue: str = "task_build_history.dead"
    retry_queue: str = "task_build_history.retry"
    delivery_limit: int = 20

    @classmethod
    def named(cls, base: str, *, delivery_limit: int = 20) -> Topology:
        """Every name derived from one, as the defaults are: `base`, `base.events`, ..."""
        return cls(
            exchange=base,
            queue=f"{base}.events",
            dead_letter_exchange=f"{base}.dlx",
            dead_letter_queue=f"{base}.dead",
            retry_queue=f"{base}.retry",
            delivery_limit=delivery_limit,
        )

    def queue_arguments(self) -> dict[str, Any]:
        """The main queue: quorum, poison messages to the dead-letter exchange, never dropped."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            # at-least-once dead-lettering requires it: a full queue refuses, never drops.
            "x-overflow": "reject-publish",
        }

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        """The dead-letter queue: quorum, with the same delivery limit as the events queue.

        It is only a way in: the consumer moves each message into the dead-letter table as it
        comes, and nothing else reads it. Without a limit, a message that stopped the consumer
        every time it was delivered would be delivered for ever (3.x has no default limit; an
        earlier release declared it with -1, "none", on 4.x). Past the limit the broker drops
        it, with a line in its log: it had stopped a consumer that many times in a row.
        The same number on 3.x and 4.x, where -1 means different things, so never -1.
        """
        return {"x-queue-type": "quorum", "x-delivery-limit": self.delivery_limit}

    def retry_queue_arguments(self) -> dict[str, Any]:
        """The retry queue: each message waits its own TTL, then goes back to the main queue."""
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


class RoutingKeyCheck:
    """The routing rule: the body's `context_type` is what is stored; the routing key only routes.

    A message published with a key other than `history.<its context_type>` (`history`, or
    `history.error` on an `agent_turn`) is stored all the same, by its context type: the
    publisher loses nothing, but it is wrong, and the consumer says so, once per distinct key
    (for the first `warn_limit` keys, so a misconfigured publisher can't flood the log).
    """

    def __init__(self, *, warn_limit: int = WARNED_ROUTING_KEYS) -> None:
        """Warn of at most `warn_limit` distinct keys."""
        self.warn_limit = warn_limit
        self._expected = {kind.value: routing_key(kind.value) for kind in ContextType}
        self._warned: set[str] = set()

    def mismatch(self, key: str, context_type: str) -> tuple[str, str] | None:
        """(`key`, the expected key) when an event was published with the wrong key, else None.

        `key` is the one it was first published with (a copy back from the retry queue has
        the queue's name as its delivery key; decoding reads the first from a signed header).
        """
        expected = self._expected.get(context_type) or routing_key(context_type)
        return None if key == expected else (key, expected)

    def first_sighting(self, key: str) -> bool:
        """Whether to warn of `key`: the first time it is seen, while under the limit."""
        if key in self._warned or len(self._warned) >= self.warn_limit:
            return False
        self._warned.add(key)
        return True
