"""Decoding a delivery: every value typed and bounded, the consumer's headers believed if signed."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.broker.decoding import Trust, decode
from consumer.broker.frames import MAX_DEPTH
from consumer.broker.headers import (
    MAX_COUNT,
    NO_MESSAGE_ID,
    ORIGINAL_ROUTING_KEY,
    OWN_HEADERS,
    RECEIVED_AT,
    REFUSED_SINCE,
    REPLAY_COUNT,
    RETRY_COUNT,
    SIGNATURE,
    WAITING_SINCE,
)
from consumer.broker.signing import HeaderSigner
from consumer.incoming import BODY_PREFIX_BYTES, KEPT_BODY_BYTES, Incoming
from tests.fakes import SIGNER

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
TRUST = Trust(signer=SIGNER, retention=timedelta(days=20))
BODY = b'{"task_id": "x"}'


def decoded(
    headers: dict[str, Any] | None = None,
    *,
    sign: bool = False,
    body: bytes = BODY,
    exchange: str = "task_build_history",
    transit: bool = False,
    **properties: object,
) -> Incoming:
    """A delivery with these headers (signed by the consumer's key if `sign`) and properties."""
    if sign and headers is not None:
        headers = SIGNER.sign(headers, body=body)
    return decode(
        body,
        exchange=exchange,
        routing_key="history.agent_turn",
        properties={"headers": headers, **properties},
        transit=transit,
        trust=TRUST,
        now=NOW,
    )


def kinds(message: Incoming) -> list[str]:
    """The kinds of what was ignored."""
    return [ignored.kind for ignored in message.ignored]


class TestTheConsumersOwnHeaders:
    """Believed only on a copy the consumer signed; a publisher's copy of them changes nothing."""

    def test_signed_they_are_believed(self) -> None:
        """Times, counts, the first routing key and the absent message_id, as written."""
        received = NOW - timedelta(minutes=3)
        message = decoded(
            {
                RECEIVED_AT: received.isoformat(),
                WAITING_SINCE: (NOW - timedelta(minutes=2)).isoformat(),
                REFUSED_SINCE: (NOW - timedelta(minutes=1)).isoformat(),
                RETRY_COUNT: 4,
                REPLAY_COUNT: 2,
                ORIGINAL_ROUTING_KEY: "history.error",
                NO_MESSAGE_ID: True,
                "trace": "t",
            },
            sign=True,
            message_id="random-from-aiormq",
        )
        assert message.received_at == received
        assert message.waiting_since == NOW - timedelta(minutes=2)
        assert message.refused_since == NOW - timedelta(minutes=1)
        assert (message.retry_count, message.replay_count) == (4, 2)
        assert (message.routing_key, message.message_id) == ("history.error", None)
        assert message.headers == {"trace": "t"}
        assert message.ignored == ()

    def test_unsigned_each_is_ignored_and_named(self) -> None:
        """A publisher's copy: the message is as if they were not there, each one counted."""
        message = decoded(
            {
                RECEIVED_AT: "2099-01-01T00:00:00+00:00",
                WAITING_SINCE: "2099-01-01T00:00:00+00:00",
                REPLAY_COUNT: 2**31,
                ORIGINAL_ROUTING_KEY: "elsewhere",
                NO_MESSAGE_ID: True,
                "trace": "t",
            },
            message_id="m-1",
        )
        assert message.received_at == NOW
        assert (message.waiting_since, message.retry_count, message.replay_count) == (None, 0, 0)
        assert (message.routing_key, message.message_id) == ("history.agent_turn", "m-1")
        assert message.headers == {"trace": "t"}
        assert kinds(message) == ["unsigned"] * 5

    def test_a_signature_of_another_key(self) -> None:
        """Another deployment's signature (or a forged one) is no signature."""
        headers = HeaderSigner(b"k" * 32).sign({REPLAY_COUNT: 3}, body=BODY)
        message = decoded(headers)
        assert message.replay_count == 0
        assert kinds(message) == ["unsigned"]

    def test_a_signature_over_another_body(self) -> None:
        """Signed headers moved onto another body are not believed."""
        headers = SIGNER.sign({REPLAY_COUNT: 3}, body=b"{}")
        assert decoded(headers).replay_count == 0

    def test_a_changed_value_breaks_the_signature(self) -> None:
        """Signed with 3, sent with 30: none is believed."""
        headers = SIGNER.sign({REPLAY_COUNT: 3, RETRY_COUNT: 1}, body=BODY)
        headers[REPLAY_COUNT] = 30
        message = decoded(headers)
        assert (message.replay_count, message.retry_count) == (0, 0)

    def test_without_a_key_nothing_is_believed(self) -> None:
        """Before the key is read (or with none), no header of the consumer's counts."""
        headers = SIGNER.sign({REPLAY_COUNT: 3}, body=BODY)
        message = decode(
            BODY,
            exchange="",
            routing_key="k",
            properties={"headers": headers},
            trust=Trust(),
            now=NOW,
        )
        assert message.replay_count == 0

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            (RECEIVED_AT, "2099-01-01T00:00:00+00:00"),  # the future
            (RECEIVED_AT, (NOW + timedelta(minutes=6)).isoformat()),
            (RECEIVED_AT, (NOW - timedelta(days=21)).isoformat()),  # past the retention
            (RECEIVED_AT, "9999-12-31T23:59:59+00:00"),
            (WAITING_SINCE, "0001-01-01T00:00:00+23:59"),  # UTC can't hold it
            (WAITING_SINCE, "2026-12-08T12:00:00"),  # no offset
            (WAITING_SINCE, 1_765_000_000),
            (RETRY_COUNT, -1),
            (RETRY_COUNT, MAX_COUNT + 1),
            (REPLAY_COUNT, "3"),
            (REPLAY_COUNT, True),
            (ORIGINAL_ROUTING_KEY, ""),
            (ORIGINAL_ROUTING_KEY, "k" * 256),
        ],
    )
    def test_signed_but_out_of_bounds(self, name: str, value: object) -> None:
        """Even signed, a time or count out of bounds is not believed.

        A time outside the retention or in the future, a count past the column: a copy from a
        replica with a broken clock changes nothing.
        """
        message = decoded({name: value}, sign=True)
        assert (message.received_at, message.waiting_since) == (NOW, None)
        assert (message.retry_count, message.replay_count) == (0, 0)
        assert message.routing_key == "history.agent_turn"
        assert kinds(message) == ["out_of_range"]

    def test_clocks_a_little_ahead_are_allowed(self) -> None:
        """Another replica's clock a few seconds ahead: its times are believed."""
        ahead = NOW + timedelta(seconds=30)
        assert decoded({RECEIVED_AT: ahead.isoformat()}, sign=True).received_at == ahead


class TestProperties:
    """Each property kept if it is of its AMQP type and range; otherwise ignored and counted."""

    def test_the_usual_ones(self) -> None:
        """Text, delivery mode, priority and a timestamp are kept as they are."""
        message = decoded(
            content_type="application/json",
            message_id="m-1",
            delivery_mode=2,
            priority=9,
            timestamp=NOW,
            type="event",
            app_id="agent",
        )
        assert message.properties == {
            "content_type": "application/json",
            "message_id": "m-1",
            "delivery_mode": 2,
            "priority": 9,
            "timestamp": NOW,
            "type": "event",
            "app_id": "agent",
            "exchange": "task_build_history",
            "routing_key": "history.agent_turn",
        }
        assert message.message_id == "m-1"
        assert message.ignored == ()

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("delivery_mode", 7),
            ("delivery_mode", True),
            ("priority", 256),
            ("priority", -1),
            ("message_id", b"bytes"),
            ("content_type", "x" * 300),
            ("timestamp", datetime(1, 1, 1, tzinfo=UTC)),
            ("timestamp", "yesterday"),
        ],
    )
    def test_out_of_range(self, name: str, value: object) -> None:
        """A value of the wrong type or out of range is left out, with a note."""
        message = decode(
            BODY, exchange="", routing_key="k", properties={name: value}, trust=TRUST, now=NOW
        )
        assert name not in message.properties
        assert kinds(message) == ["out_of_range"]


class TestHeaders:
    """The publisher's headers are kept as JSON and AMQP can both carry them."""

    def test_nesting_is_cut_at_the_limit(self) -> None:
        """Deeper than MAX_DEPTH levels, a value is left out and named as too deep."""
        value: object = "bottom"
        for _ in range(MAX_DEPTH + 10):
            value = {"n": value}
        message = decoded({"deep": value})
        depth, kept = 0, cast("object", message.headers)
        while isinstance(kept, dict):
            kept = kept.get("deep", kept.get("n"))
            depth += 1
        assert depth == MAX_DEPTH
        assert kinds(message) == ["too_deep"]

    def test_types_kept(self) -> None:
        """Text, bytes, numbers, decimals, times, lists; bytearray as bytes."""
        headers = {"a": [1, 2.5, Decimal("1.5"), None, True], "b": bytearray(b"x"), "t": NOW}
        assert decoded(headers).headers == {
            "a": [1, 2.5, Decimal("1.5"), None, True],
            "b": b"x",
            "t": NOW,
        }

    def test_the_broker_headers_are_kept_apart(self) -> None:
        """x-death and friends are the broker's: not the publisher's headers."""
        message = decoded({"x-death": [{"reason": "expired"}], "x-delivery-count": 3, "a": 1})
        assert message.headers == {"a": 1}
        assert message.broker_headers == {"x-death": [{"reason": "expired"}], "x-delivery-count": 3}

    def test_a_headers_value_that_is_not_a_table(self) -> None:
        """Headers of another type are no headers."""
        message = decode(
            BODY, exchange="", routing_key="k", properties={"headers": "x"}, trust=TRUST, now=NOW
        )
        assert message.headers == {}
        assert kinds(message) == ["out_of_range"]


class TestBodies:
    """A body over the limit is kept as its start, its length and its SHA-256."""

    def test_a_large_body(self) -> None:
        """Over KEPT_BODY_BYTES only BODY_PREFIX_BYTES are kept from the moment it arrives."""
        body = bytes(range(256)) * (KEPT_BODY_BYTES // 128)
        message = decoded(body=body)
        assert message.body.data == body[:BODY_PREFIX_BYTES]
        assert message.body.size == len(body)
        assert message.body.sha256 == hashlib.sha256(body).digest()
        assert not message.body.whole

    def test_a_signed_large_body_is_checked_whole(self) -> None:
        """The signature covers the whole body, not the part kept."""
        body = b"z" * (KEPT_BODY_BYTES + 1)
        assert decoded({REPLAY_COUNT: 1}, sign=True, body=body).replay_count == 1


class TestTransit:
    """A dead-letter queue message's x-death is believed only through the dead-letter exchange."""

    DEATH: ClassVar[dict[str, Any]] = {
        "x-death": [{"reason": "delivery_limit", "queue": "q", "time": NOW}]
    }

    def test_through_the_dead_letter_exchange(self) -> None:
        """The broker put it there: its reason, queue and time are read."""
        message = decoded(self.DEATH, exchange="task_build_history.dlx", transit=True)
        assert message.death is not None
        assert (message.death.reason, message.death.queue, message.death.time) == (
            "delivery_limit",
            "q",
            NOW,
        )

    def test_sent_straight_to_the_queue(self) -> None:
        """Through the default exchange: nobody dead-lettered it, whatever x-death says."""
        assert decoded(self.DEATH, exchange="", transit=True).death is None


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.datetimes(timezones=st.just(UTC)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)


class TestAnything:
    """Whatever the properties and headers hold, decoding returns, and never believes a forger."""

    @settings(max_examples=400)
    @given(
        st.dictionaries(
            st.sampled_from(sorted(OWN_HEADERS | {SIGNATURE, "x-death", "trace"})) | st.text(),
            _values,
            max_size=6,
        ),
        st.dictionaries(
            st.sampled_from(
                ["content_type", "message_id", "delivery_mode", "priority", "timestamp", "type"]
            ),
            _values,
        ),
    )
    def test_any_values(self, headers: dict[str, Any], properties: dict[str, Any]) -> None:
        """No exception; nothing of the consumer's believed; received_at is now."""
        message = decode(
            BODY,
            exchange="",
            routing_key="history.agent_turn",
            properties={"headers": headers, **properties},
            trust=TRUST,
            now=NOW,
        )
        assert message.decode_error is None
        assert message.received_at == NOW
        assert (message.retry_count, message.replay_count) == (0, 0)
        assert message.routing_key == "history.agent_turn"
        assert not set(message.headers) & (OWN_HEADERS | {SIGNATURE})


class TestSignatures:
    """A signature checks only against this key, these headers and this body; never raises."""

    @pytest.mark.parametrize("forged", [b"\x80", "\u00e9t\u00e9", "", 5, None, "A" * 10_000])
    def test_a_forged_signature_of_any_type(self, forged: object) -> None:
        """Bytes, text that is not ASCII, a number: no signature, and no error."""
        message = decoded({REPLAY_COUNT: 1, SIGNATURE: forged})
        assert message.decode_error is None
        assert message.replay_count == 0
        assert kinds(message) == ["unsigned"]

    def test_a_short_key_is_refused(self) -> None:
        """A key shorter than 32 bytes is a mistake, said at once."""
        with pytest.raises(ValueError, match="32 bytes"):
            HeaderSigner(b"short")
