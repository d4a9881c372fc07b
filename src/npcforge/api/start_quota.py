"""Per-user cap on job starts: a sliding window of start times, kept in this API process.

Each API process counts on its own, so N processes behind a load balancer allow up to N times
`NPCFORGE_GENERATE_PER_MINUTE` per user. A slot is taken before the start is attempted (so
concurrent requests cannot overshoot) and handed back when no job was started (404, 409).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from uuid import UUID

from npcforge.api.auth import Principal
from npcforge.api.errors import ApiError

WINDOW_SECONDS = 60.0
# Forget idle users once this many are tracked, so memory stays bounded by recent activity.
_SWEEP_AT = 10_000


class StartQuota:
    def __init__(
        self,
        per_window: int,
        *,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._clock = clock
        self._starts: dict[UUID, deque[float]] = {}

    def acquire(self, principal: Principal) -> float | None:
        """Take a slot for this principal, or raise 429. Returns a handle for `release`."""
        user = principal.user_id
        if principal.service_role or user is None:
            return None  # the service role is trusted backend code, not a browser user
        now = self._clock()
        starts = self._starts.get(user)
        if starts is None:
            if len(self._starts) >= _SWEEP_AT:
                self._sweep(now)
            starts = self._starts[user] = deque()
        horizon = now - self.window_seconds
        while starts and starts[0] <= horizon:
            starts.popleft()
        if len(starts) >= self.per_window:
            retry_after = max(1, math.ceil(starts[0] + self.window_seconds - now))
            raise ApiError(
                429, "RATE_LIMITED",
                f"Too many generation requests; at most {self.per_window} per minute.",
                details={"limit": self.per_window, "windowSeconds": int(self.window_seconds)},
                headers={"Retry-After": str(retry_after)},
            )  # fmt: skip
        starts.append(now)
        return now

    def release(self, principal: Principal, handle: float | None) -> None:
        """Give back a slot taken by `acquire` when no job was started after all."""
        if handle is None or principal.user_id is None:
            return
        starts = self._starts.get(principal.user_id)
        if starts is not None:
            with contextlib.suppress(ValueError):
                starts.remove(handle)

    def _sweep(self, now: float) -> None:
        horizon = now - self.window_seconds
        for user in [u for u, s in self._starts.items() if not s or s[-1] <= horizon]:
            del self._starts[user]
