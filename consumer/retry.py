"""How long to wait before trying again: doubling, capped, jittered."""

from __future__ import annotations

import random


def backoff(attempt: int, *, base: float = 0.2, cap: float = 30.0) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): doubling, capped, jittered.

    Half the delay is fixed and half random, so replicas that failed together spread out.
    """
    delay = min(cap, base * 2.0 ** min(attempt - 1, 30))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311  # jitter, not cryptography
