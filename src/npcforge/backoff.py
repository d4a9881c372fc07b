"""How long to wait before trying again: npcforge's one backoff, and a server's Retry-After.

Pure: no I/O. Every retry loop in npcforge (the worker's loops and its hand-back, the listener's
reconnects, the upstream gate's reconnects, a job's next attempt, an upload tried again in
place, an upstream request tried again) takes its delay from `backoff`.
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

# 2**32 times any base is beyond every cap; a higher exponent only risks an overflow.
_MAX_EXPONENT = 32


def backoff(
    retry: int,
    *,
    base: float,
    cap: float,
    floor: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry number `retry` (0 for the first): exponential, with jitter.

    The ceiling doubles with each retry from `base` up to `cap`; the delay is drawn uniformly
    between `floor` times the ceiling and the ceiling. `floor=0` is full jitter (a crowd of
    retries spreads out most); a reconnect loop uses `floor=0.5`, so it never retries at once.
    """
    ceiling = min(cap, base * 2.0 ** min(max(retry, 0), _MAX_EXPONENT))
    if ceiling <= 0:
        return 0.0
    return (rng if rng is not None else random).uniform(floor * ceiling, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds (floats allowed) or an HTTP-date.

    Past dates and negative numbers mean "now" (0.0); anything unparseable is None.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
