"""The garbage collector and a long-running process's start-up heap."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Exempt everything alive after start-up from the cyclic garbage collector's scans.

    For `npcforge api`, a process that serves one app until it exits. The modules, schemas and
    pools built at start-up are a few hundred thousand objects that live as long as the process,
    and every full collection (which the steady trickle of objects surviving a request triggers
    every few seconds under load) walked all of them again: about 6 % of the CPU of a busy API
    process (bench/api_bench.py). The worker does not call it: there the gain was within W1's
    noise. Start-up garbage is collected first, so it is not frozen with the rest; frozen
    objects are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()
