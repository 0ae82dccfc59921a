"""The broker's names and queue arguments (contract §2): pure data, no client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

    def dead_letter_queue_arguments(self, *, broker_version: str) -> dict[str, Any]:
        """The dead-letter queue: quorum, and never a delivery limit.

        Looking at dead letters takes them and gives them back, which counts as a delivery.
        From RabbitMQ 4.0 a quorum queue declared without a limit gets one of 20, and this
        queue has nowhere to send a message past it: it would be dropped, so 4.x gets -1
        ("none"). 3.x has no default limit and reads -1 as "no delivery allowed".
        """
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if _major(broker_version) >= 4:  # noqa: PLR2004  # the release that added the default
            arguments["x-delivery-limit"] = -1
        return arguments

    def retry_queue_arguments(self) -> dict[str, Any]:
        """The retry queue: each message waits its own TTL, then goes back to the main queue."""
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


def _major(version: str) -> int:
    """The major number of a version string such as "3.10.8"; 0 when it has none."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0
