"""Throughput and recovery from a run's completion times (pure: no I/O).

A completion time is the commit timestamp of the transaction that marked a job `succeeded`
(`pg_xact_commit_timestamp` of its row; the chaos cluster runs with track_commit_timestamp=on).
All times are Unix seconds, the same clock the harness stamps faults with.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

# The pre-fault rate is measured over this many seconds just before the fault starts.
PRE_WINDOW_S = 4.0
# The after-fault rate is measured over this many seconds from the fault's end.
AFTER_WINDOW_S = 10.0
# Recovery: the first window of this length, starting at or after the fault's end, in which
# at least RECOVERED_FRACTION of the pre-fault rate completed.
RECOVERY_WINDOW_S = 1.0
RECOVERED_FRACTION = 0.8
RECOVERY_STEP_S = 0.05
# The fault-free rate skips the ramp-up at the start and the drain at the end of the load.
STEADY_SKIP_S = 1.0


def count_between(times: Sequence[float], start: float, end: float) -> int:
    """Completions in [start, end); `times` sorted."""
    return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)


def rate(times: Sequence[float], start: float, end: float) -> float | None:
    if end - start <= 0:
        return None
    return count_between(times, start, end) / (end - start)


def steady_rate(times: Sequence[float], enqueued: float) -> float | None:
    """Jobs/s of a whole drain, without its first and last STEADY_SKIP_S seconds."""
    if not times:
        return None
    return rate(times, enqueued + STEADY_SKIP_S, times[-1] - STEADY_SKIP_S)


def first_completion_after(times: Sequence[float], moment: float) -> float | None:
    """Seconds from `moment` to the next completion (None if there was none)."""
    index = bisect.bisect_left(times, moment)
    return times[index] - moment if index < len(times) else None


def recovery_seconds(
    times: Sequence[float], fault_end: float, reference_rate: float
) -> float | None:
    """Seconds from the fault's end to the start of the first RECOVERY_WINDOW_S window holding
    RECOVERED_FRACTION * reference_rate completions; None if that never happened."""
    if not times or reference_rate <= 0:
        return None
    needed = RECOVERED_FRACTION * reference_rate * RECOVERY_WINDOW_S
    start = fault_end
    last_possible = times[-1] - RECOVERY_WINDOW_S + RECOVERY_STEP_S
    while start <= last_possible:
        if count_between(times, start, start + RECOVERY_WINDOW_S) >= needed:
            return start - fault_end
        start += RECOVERY_STEP_S
    return None


@dataclass
class Throughput:
    pre: float | None  # PRE_WINDOW_S before the fault
    during: float | None  # between fault start and end (None for an instant fault)
    after: float | None  # AFTER_WINDOW_S from the fault's end (cut at the last completion)
    overall: float | None  # the whole drain, as steady_rate
    first_after_s: float | None
    recovered_s: float | None


def throughput(
    times: Sequence[float], *, enqueued: float, fault_start: float, fault_end: float
) -> Throughput:
    pre = rate(times, max(enqueued, fault_start - PRE_WINDOW_S), fault_start)
    after_end = min(fault_end + AFTER_WINDOW_S, times[-1] if times else fault_end)
    return Throughput(
        pre=pre,
        during=rate(times, fault_start, fault_end) if fault_end - fault_start >= 1.0 else None,
        after=rate(times, fault_end, after_end) if after_end - fault_end >= 1.0 else None,
        overall=steady_rate(times, enqueued),
        first_after_s=first_completion_after(times, fault_end),
        recovered_s=recovery_seconds(times, fault_end, pre or 0.0),
    )


def per_second(times: Sequence[float], start: float) -> list[int]:
    """Completions in each whole second from `start` (for the JSON timeline)."""
    if not times:
        return []
    buckets = [0] * (int(times[-1] - start) + 1)
    for moment in times:
        if moment >= start:
            buckets[int(moment - start)] += 1
    return buckets


def takeover_seconds(
    kills: Sequence[tuple[int, float]], lapsed: Sequence[tuple[str, float]]
) -> float | None:
    """The longest time from a SIGKILL (pid, when) until the reaper had requeued the last job
    of that process; worker ids embed the pid as `host:pid:suffix`."""
    delays = []
    for pid, killed in kills:
        marker = f":{pid}:"
        requeued = [moment for worker, moment in lapsed if marker in worker]
        if requeued:
            delays.append(max(requeued) - killed)
    return max(delays, default=None)
