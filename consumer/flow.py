"""How many messages the consumer lets the broker send ahead: a prefetch sized by bytes. No I/O.

AMQP counts prefetch in messages, and RabbitMQ ignores a prefetch in bytes; so a fixed count of
1,000 lets the broker push 1,000 of the largest messages at once (a gigabyte in flight), which
no pause of the subscription can call back. Instead the count follows the size of what arrives:
at most `high_bytes` over the largest body seen lately, never more than the configured prefetch.
Before anything has arrived every message is taken to be as large as the largest event worth
storing (ASSUMED_BYTES); a body padded past that, to the 1 MiB limit, is seen and counted as
soon as it arrives.
"""

from __future__ import annotations

from typing import Final

from consumer.rules import MAX_CONTENT_CHARS, MAX_METADATA_BYTES

# The largest event that keeps everything it carries: content of four-byte characters and
# metadata at their limits (320 KiB). 204 of them in a 64 MiB budget: more than the two
# batches the default prefetch holds.
ASSUMED_BYTES: Final = 4 * MAX_CONTENT_CHARS + MAX_METADATA_BYTES

# Deliveries over which the largest body is remembered: a burst of large messages narrows the
# prefetch at once, and it widens again once that many smaller ones have come.
SIZE_WINDOW: Final = 256
# The count is changed only when the wanted one is this many times larger or smaller: each
# change cancels and renews the subscription. So the bytes in flight stay under about twice
# the high mark.
CHANGE_FACTOR: Final = 2
# Deliveries after which the size assumed for unseen messages gives way to what was seen.
FIRST_LOOK: Final = 32


class PrefetchBySize:
    """The prefetch count that keeps the bytes in flight under `high_bytes`."""

    def __init__(self, *, high_bytes: int, most: int, assumed_bytes: int) -> None:
        """At most `most` messages; an unseen message counts as `assumed_bytes`."""
        self._high_bytes = high_bytes
        self._most = most
        self._largest = assumed_bytes  # the window before this one
        self._largest_now = 0  # this window so far
        self._seen = 0
        self._assumed = True
        self.current = self.wanted()

    def observe(self, size: int) -> None:
        """Note one delivery's body size (as received, before anything was cut)."""
        self._largest_now = max(self._largest_now, size)
        self._seen += 1
        if self._assumed and self._seen >= FIRST_LOOK:
            self._assumed = False
            self._largest = 0
        if self._seen >= SIZE_WINDOW:
            self._largest, self._largest_now, self._seen = self._largest_now, 0, 0

    def wanted(self) -> int:
        """The count for the largest body of the last window or two, within 1 and `most`."""
        largest = max(self._largest, self._largest_now, 1)
        return max(1, min(self._most, self._high_bytes // largest))

    def change(self) -> int | None:
        """The new count if it differs from the current one by CHANGE_FACTOR or more, else None."""
        wanted = self.wanted()
        if wanted * CHANGE_FACTOR <= self.current or wanted >= self.current * CHANGE_FACTOR:
            return wanted
        return None
