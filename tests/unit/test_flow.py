"""The prefetch sized by bytes: narrowed by large messages, widened again by small ones."""

from __future__ import annotations

from consumer.flow import FIRST_LOOK, SIZE_WINDOW, PrefetchBySize

MIB = 1 << 20


def flow() -> PrefetchBySize:
    """A 64 MiB budget, at most 1,000 messages, unseen ones taken as 1 MiB."""
    return PrefetchBySize(high_bytes=64 * MIB, most=1000, assumed_bytes=MIB)


class TestPrefetchBySize:
    """The count keeps the bytes in flight under the high mark, within 1 and the configured."""

    def test_before_anything_arrives(self) -> None:
        """Every unseen message counts as the largest an event can be: 64 at first."""
        assert flow().current == 64

    def test_small_messages_widen_it_to_the_configured_count(self) -> None:
        """After a first look at small messages, the configured 1,000."""
        prefetch = flow()
        for _ in range(FIRST_LOOK):
            prefetch.observe(2_000)
        assert prefetch.change() == 1000

    def test_large_messages_narrow_it_at_once(self) -> None:
        """A 300 KiB message among small ones: 218 at most; a 30 MiB one: 2."""
        prefetch = flow()
        for _ in range(FIRST_LOOK):
            prefetch.observe(2_000)
        prefetch.current = 1000
        prefetch.observe(300 << 10)
        assert prefetch.change() == 218
        prefetch.current = 218
        prefetch.observe(30 * MIB)
        assert prefetch.change() == 2

    def test_never_below_one(self) -> None:
        """A message larger than the whole budget still lets one through."""
        prefetch = flow()
        prefetch.observe(200 * MIB)
        assert prefetch.wanted() == 1

    def test_small_changes_are_left_alone(self) -> None:
        """Within a factor of two either way, the subscription is not renewed."""
        prefetch = flow()
        for _ in range(FIRST_LOOK):
            prefetch.observe(600 << 10)
        prefetch.current = 100
        assert prefetch.wanted() == 109
        assert prefetch.change() is None

    def test_a_burst_is_forgotten_after_two_windows(self) -> None:
        """Once two windows of small messages have passed, the large one no longer counts."""
        prefetch = flow()
        prefetch.observe(30 * MIB)
        for _ in range(FIRST_LOOK):
            prefetch.observe(1_000)
        assert prefetch.wanted() == 2
        for _ in range(2 * SIZE_WINDOW):
            prefetch.observe(1_000)
        assert prefetch.wanted() == 1000
