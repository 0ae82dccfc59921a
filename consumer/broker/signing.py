"""The consumer's own headers, signed: a copy that came back through its queues is told apart.

The consumer writes headers on the copies it sends itself (a retry parked in the retry queue,
a replay of a dead letter): when the event was first received, since when its task has been
missing, how often it was replayed. Anyone may set headers of the same names on a message they
publish, and nothing the broker does tells the two apart: a copy from the retry queue arrives
through the default exchange with the events queue's name as its routing key, which any client
can publish too; the broker's `x-death` header says it went through the retry queue, but before
RabbitMQ 3.13 a client may set `x-death` itself; and a replayed copy comes through the main
exchange like any event. So the consumer signs what it writes: an HMAC-SHA256, under a key of
this deployment kept in the database (`task_build_history_secrets`, which only the consumer's
role can read), over its own headers and the body's SHA-256. A header of those names is
believed only on a message whose signature checks; a publisher's copy of them changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from consumer.broker.headers import OWN_HEADERS, SIGNATURE

# Bytes of key the database makes (sql/0008_trust_and_sizes.sql); fewer is refused.
MIN_KEY_BYTES = 32


class HeaderSigner:
    """Signs the consumer's own headers of a message, and checks a signature."""

    def __init__(self, key: bytes) -> None:
        """Sign with `key`, this deployment's secret."""
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the header key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def sign(self, headers: Mapping[str, Any], *, body: bytes) -> dict[str, Any]:
        """`headers` with a signature over their consumer headers and `body` added."""
        signed = {name: value for name, value in headers.items() if name != SIGNATURE}
        signed[SIGNATURE] = self._digest(signed, body)
        return signed

    def vouches_for(self, headers: Mapping[str, Any], *, body: bytes) -> bool:
        """Whether `headers` carry a valid signature of this key over their own and `body`."""
        given = headers.get(SIGNATURE)
        if isinstance(given, str):
            given = given.encode("utf-8", "surrogatepass")
        if not isinstance(given, bytes):
            return False
        # As bytes: compare_digest refuses text that is not ASCII, which a forger may send.
        return hmac.compare_digest(given, self._digest(headers, body).encode("ascii"))

    def _digest(self, headers: Mapping[str, Any], body: bytes) -> str:
        mac = hmac.new(self._key, hashlib.sha256(body).digest(), hashlib.sha256)
        for name in sorted(OWN_HEADERS & headers.keys()):
            mac.update(b"\n" + name.encode() + b"=" + _canonical(headers[name]))
        return base64.b64encode(mac.digest()).decode("ascii")


def _canonical(value: object) -> bytes:
    """A header value as signed: typed, so 1 and "1" differ; any other type never matches."""
    if isinstance(value, bool):
        return b"b:" + (b"1" if value else b"0")
    if isinstance(value, int):
        return b"i:" + str(value).encode()
    if isinstance(value, str):
        return b"s:" + value.encode("utf-8", "surrogatepass")
    return b"?:" + type(value).__name__.encode()
