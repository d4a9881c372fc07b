"""settle_heap: what a daemon process does once it has started."""

from __future__ import annotations

import gc
import weakref

from npcforge.heap import settle_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector can free it


def test_settle_heap_collects_garbage_then_freezes_what_is_alive():
    assert gc.get_freeze_count() == 0
    garbage = Node()
    gone = weakref.ref(garbage)
    alive = Node()
    kept = weakref.ref(alive)
    del garbage
    try:
        settle_heap()
        assert gone() is None  # collected, not frozen with the rest
        assert kept() is alive
        assert gc.get_freeze_count() > 10_000  # the interpreter's and the test session's objects
        assert not gc.is_finalized(alive)
        # Frozen objects are out of the collector's generations...
        assert all(obj is not alive for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    # ... and back in them once unfrozen.
    assert any(obj is alive for obj in gc.get_objects())
    assert gc.get_freeze_count() == 0
