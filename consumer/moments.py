"""Points in time as people type them: an age such as `2h`, or an RFC 3339 timestamp."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Longer than any timestamp or age anyone types; the rest is not read at all.
_LONGEST = 64
OUT_OF_RANGE = "is out of range: times go from year 1 to 9999"


def parse_moment(text: str, *, now: datetime) -> datetime:
    """A point in time, in UTC, from an age ("90s", "2h", "3d": that long ago) or RFC 3339.

    RFC 3339 needs an offset. Raises ValueError with a readable message for anything else,
    and for a time outside years 1 to 9999 once in UTC (`since=300000w`,
    `0001-01-01T00:00:00+23:59`).
    """
    shown = text[:_LONGEST] + ("..." if len(text) > _LONGEST else "")
    text = text.strip()
    if len(text) > _LONGEST:
        raise ValueError(f"{shown!r} is too long for a time")
    try:
        if age := _AGE.fullmatch(text):
            seconds = float(age["amount"]) * _UNIT_SECONDS[age["unit"].lower()]
            return (now - timedelta(seconds=seconds)).astimezone(UTC)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise ValueError(
                f"{shown!r} is neither an age such as 30m, 2h or 3d nor a timestamp with an"
                " offset such as 2026-11-26T10:00:00Z"
            )
        return moment.astimezone(UTC)
    except OverflowError:
        # A huge age (inf seconds, or before year 1), or an offset carrying a time past 9999.
        raise ValueError(f"{shown!r} {OUT_OF_RANGE}") from None
