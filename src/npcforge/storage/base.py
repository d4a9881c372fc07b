"""The Storage port. Keys are `{npcId}.xml`; backends raise npcforge.errors.StorageError."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
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

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> list[StorageError | None]:
        """`put` each (key, data); per item None when stored, else its error. Never raises."""
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


async def put_each(
    storage: Storage, items: Sequence[tuple[str, bytes]]
) -> list[StorageError | None]:
    """`put_many` for backends without a batch write: the puts run concurrently."""

    async def one(key: str, data: bytes) -> StorageError | None:
        try:
            await storage.put(key, data)
        except StorageError as exc:
            return exc
        except Exception as exc:
            return StorageError(f"storage upload failed ({type(exc).__name__})")
        return None

    return list(await asyncio.gather(*(one(key, data) for key, data in items)))
