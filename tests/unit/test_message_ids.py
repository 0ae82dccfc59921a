"""A copy of a message without a message_id is read as having none, though aiormq adds one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import aiormq.abc
from pamqp.commands import Basic

from consumer.broker.decoding import Trust
from consumer.broker.deliveries import incoming_of
from consumer.broker.headers import NO_MESSAGE_ID, with_id_absence
from consumer.incoming import Incoming
from tests.fakes import SIGNER


def received(*, message_id: str | None, headers: dict[str, Any] | None) -> Incoming:
    """A delivery as aiormq hands it over, with these properties, decoded."""
    delivered = SimpleNamespace(
        header=SimpleNamespace(properties=Basic.Properties(message_id=message_id, headers=headers)),
        body=b"{}",
        channel=None,
        delivery=SimpleNamespace(delivery_tag=1, exchange=""),
        routing_key="history.error",
    )
    return incoming_of(
        cast("aiormq.abc.DeliveredMessage", delivered), trust=Trust(signer=SIGNER), transit=False
    )


class TestCopies:
    """with_id_absence marks a copy of a message that had no message_id, and only that."""

    def test_marks_a_message_without_an_id(self) -> None:
        """No message_id: the copy's headers say so; the others are kept."""
        assert with_id_absence({"a": 1}, message_id=None) == {"a": 1, NO_MESSAGE_ID: True}

    def test_leaves_a_message_with_an_id_alone(self) -> None:
        """A message_id: no mark, and a stale one is dropped."""
        assert with_id_absence({"a": 1, NO_MESSAGE_ID: True}, message_id="m-1") == {"a": 1}


class TestReading:
    """Decoding reads the mark on a copy the consumer signed: message_id None, mark not kept."""

    def test_a_marked_copy_has_no_message_id(self) -> None:
        """The random id aiormq gave the copy is not the message's."""
        headers = SIGNER.sign({NO_MESSAGE_ID: True, "a": 1}, body=b"{}")
        message = received(message_id="4f1c0e", headers=headers)
        assert message.message_id is None
        assert message.headers == {"a": 1}
        assert "message_id" not in message.properties

    def test_a_publishers_mark_changes_nothing(self) -> None:
        """The mark on a message the consumer did not sign is ignored, and says so."""
        message = received(message_id="m-1", headers={NO_MESSAGE_ID: True, "a": 1})
        assert message.message_id == "m-1"
        assert message.headers == {"a": 1}
        assert [i.kind for i in message.ignored] == ["unsigned"]

    def test_an_unmarked_message_keeps_its_id(self) -> None:
        """Anything else reads as it was sent."""
        assert received(message_id="m-1", headers=None).message_id == "m-1"
        assert received(message_id=None, headers={"a": 1}).message_id is None
