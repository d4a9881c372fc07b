"""The Storage port. Keys are `{npcId}.xml`; backends raise npcforge.errors.StorageError."""

from __future__ import annotations

import re
from typing import Protocol

from npcforge.errors import StorageError

# A flat object name: no separators, no dot-only names, nothing a path could escape with.
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def check_key(key: str) -> str:
    """Return `key` if it is a safe flat object name, else raise a permanent StorageError."""
    if not _KEY_RE.fullmatch(key) or ".." in key:
        raise StorageError(
            "invalid storage key", details={"storageCode": "InvalidKey"}, retryable=False
        )
    return key


def xml_key(npc_id: object) -> str:
    return check_key(f"{npc_id}.xml")


class Storage(Protocol):
    name: str
    bucket: str

    async def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any previous object, all or nothing."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        ...

    async def ensure_bucket(self) -> bool:
        """Create the bucket (private) if missing. True when it was created."""
        ...

    async def check(self) -> None:
        """Raise StorageError when the bucket is unreachable or missing."""
        ...

    async def close(self) -> None: ...
