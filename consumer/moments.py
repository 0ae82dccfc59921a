"""Points in time as people type them: an age such as `2h`, or an RFC 3339 timestamp."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_AGE = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_moment(text: str, *, now: datetime) -> datetime:
    """A point in time from an age ("90s", "15m", "2h", "3d", "1w": that long ago) or RFC 3339.

    Raises ValueError with a readable message otherwise.
    """
    text = text.strip()
    if age := _AGE.fullmatch(text):
        seconds = float(age["amount"]) * _UNIT_SECONDS[age["unit"].lower()]
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"{text!r} is neither an age such as 30m, 2h or 3d nor a timestamp with an offset"
            " such as 2026-11-26T10:00:00Z"
        )
    return moment
