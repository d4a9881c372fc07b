"""Serialized poll answers, reused while what they were made from is unchanged.

A poll's answer is a pure function of the NPC's status row and, once the job succeeded, of the
stored XML. Both are still read for every poll (the row from PostgreSQL, the object from
storage); only building and serializing the JSON document is skipped when the row's values and
the object's bytes equal those the kept answer was made from. Pollers of one job ask the same
question every second or two, so this is most of what a poll would otherwise spend in Python.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

MAX_ENTRIES = 1024
MAX_BYTES = 8 * 1024 * 1024


class PollAnswers:
    """Bounded in entries and in bytes (the answer plus the object it holds on to)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[UUID, tuple[tuple[Any, ...], bytes | None, bytes]] = {}
        self._bytes = 0

    def get(self, npc_id: UUID, state: tuple[Any, ...], data: bytes | None) -> bytes | None:
        entry = self._entries.get(npc_id)
        if entry is None:
            return None
        kept_state, kept_data, answer = entry
        # The identity check is the common case (storage hands back the object it keeps);
        # equal bytes read anew match too.
        if kept_state != state or not (kept_data is data or kept_data == data):
            return None
        return answer

    def put(self, npc_id: UUID, state: tuple[Any, ...], data: bytes | None, answer: bytes) -> None:
        self._drop(npc_id)
        size = _size(data, answer)
        if size > self.max_bytes:
            return
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))  # the oldest first
        self._entries[npc_id] = (state, data, answer)
        self._bytes += size

    def _drop(self, npc_id: UUID) -> None:
        entry = self._entries.pop(npc_id, None)
        if entry is not None:
            self._bytes -= _size(entry[1], entry[2])

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes


def _size(data: bytes | None, answer: bytes) -> int:
    return len(answer) + (len(data) if data is not None else 0)
