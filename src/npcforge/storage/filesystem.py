"""Storage on a local directory: `{root}/{bucket}/{key}`, for dev, demo and single-host setups.

Writes are atomic: each put goes to its own temporary file in the bucket directory, is fsynced,
and is renamed over the key, so a reader (or a crash) only ever sees a whole previous or a whole
new object, and concurrent puts of one key leave exactly one of the written payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
from pathlib import Path

from npcforge.config import ConfigError
from npcforge.errors import StorageError
from npcforge.storage.base import check_key

_OBJECT_MODE = 0o644
_TEMP_SUFFIX = ".part"


def _missing_bucket(bucket: str) -> StorageError:
    return StorageError(
        f"storage bucket {bucket!r} does not exist; run `npcforge storage ensure-bucket`",
        details={"storageCode": "NoSuchBucket", "status": "404"},
        retryable=False,
    )


def _os_failure(operation: str, exc: OSError) -> StorageError:
    # A full or read-only disk will not fix itself between attempts; other OS errors might.
    permanent = isinstance(exc, PermissionError) or exc.errno in {errno.ENOSPC, errno.EROFS}
    return StorageError(
        f"filesystem storage {operation} failed: {exc.strerror or type(exc).__name__}",
        details={"storageCode": "FilesystemError", "errno": exc.errno},
        retryable=not permanent,
    )


class FilesystemStorage:
    """The Storage port on a directory tree. Blocking file I/O runs in worker threads."""

    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str], bucket: str) -> None:
        if not bucket or bucket in {".", ".."} or "/" in bucket or "\\" in bucket or "\0" in bucket:
            raise ConfigError(
                "NPCFORGE_BUCKET must be a plain directory name for filesystem storage"
            )
        self.root = Path(root)
        self.bucket = bucket
        self.bucket_dir = self.root / bucket

    def __repr__(self) -> str:
        return f"FilesystemStorage(root={str(self.root)!r}, bucket={self.bucket!r})"

    def path_for(self, key: str) -> Path:
        """Where the object `key` lives on disk (the key is validated first)."""
        return self.bucket_dir / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        target = self.path_for(key)
        await asyncio.to_thread(self._write_atomically, target, bytes(data))

    async def get(self, key: str) -> bytes | None:
        # Read inline: objects are small NPC files (<= 256 KiB), and a page-cache read costs less
        # than the hop to a worker thread (measured: ~10 us against 60-80 us per call).
        return self._read(self.path_for(key))

    async def ensure_bucket(self) -> bool:
        return await asyncio.to_thread(self._make_bucket_dir)

    async def check(self) -> None:
        await asyncio.to_thread(self._check_bucket_dir)

    async def close(self) -> None:
        return None

    # --- blocking parts, run via asyncio.to_thread ------------------------------------------

    def _write_atomically(self, target: Path, data: bytes) -> None:
        if not self.bucket_dir.is_dir():
            raise _missing_bucket(self.bucket)
        try:
            fd, temp_name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=_TEMP_SUFFIX, dir=self.bucket_dir
            )
        except OSError as exc:
            raise _os_failure("write", exc) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), _OBJECT_MODE)
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise _os_failure("write", exc) from None
        self._sync_bucket_dir()

    def _sync_bucket_dir(self) -> None:
        # Makes the rename itself durable; not every platform can open a directory.
        try:
            dir_fd = os.open(self.bucket_dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def _read(self, target: Path) -> bytes | None:
        try:
            return target.read_bytes()
        except FileNotFoundError:
            if not self.bucket_dir.is_dir():
                raise _missing_bucket(self.bucket) from None
            return None
        except IsADirectoryError:
            return None
        except OSError as exc:
            raise _os_failure("read", exc) from None

    def _make_bucket_dir(self) -> bool:
        if self.bucket_dir.is_dir():
            return False
        try:
            self.bucket_dir.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            if self.bucket_dir.is_dir():
                return False  # another process made it first
            raise _os_failure(
                "ensure-bucket", FileExistsError(errno.EEXIST, "exists and is not a directory")
            ) from None
        except OSError as exc:
            raise _os_failure("ensure-bucket", exc) from None
        return True

    def _check_bucket_dir(self) -> None:
        if not self.bucket_dir.is_dir():
            raise _missing_bucket(self.bucket)
        if not os.access(self.bucket_dir, os.W_OK | os.X_OK):
            raise StorageError(
                f"storage directory for bucket {self.bucket!r} is not writable",
                details={"storageCode": "AccessDenied", "status": "403"},
                retryable=False,
            )
