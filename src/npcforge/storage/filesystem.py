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
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from npcforge.config import ConfigError
from npcforge.errors import StorageError
from npcforge.storage.base import check_key

_OBJECT_MODE = 0o644
_TEMP_SUFFIX = ".part"
_CACHE_BYTES = 8 * 1024 * 1024  # recently read objects kept, in total
_CACHE_OBJECT_BYTES = 256 * 1024  # larger objects are read every time
_STALE_TEMP_SECONDS = 3600.0  # a temporary file this old belongs to a write that died
_WRITER_THREADS = 4  # threads one put_many spreads its objects over
_SETTLED_NS = 100_000_000  # a file changed more recently than this is not kept (see below)


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


def _read_to_end(fd: int, size: int) -> bytes:
    """Everything left in `fd`: one read for a file of `size` bytes, more if it has grown."""
    chunks = [os.read(fd, size + 1)]
    while chunks[-1]:
        chunks.append(os.read(fd, 1 << 16))
    return b"".join(chunks)


FileIdentity = tuple[int, int, int, int, int]


def _identity(info: os.stat_result) -> FileIdentity:
    # A put renames a new file over the key, so each version has its own inode; mtime and ctime
    # also catch a file rewritten in place by something else.
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class RecentObjects:
    """Objects read lately, each served again only while its file is provably the same one.

    A hit costs one stat() instead of open, fstat, read and close. A deleted or replaced file
    never matches, so a read never returns what storage no longer holds. File timestamps tick
    coarsely (a few ms), so a file changed within the last tick could change again without its
    identity changing; such a file is read but not kept ("racy" files, as git calls them). Once a
    file has settled, any later change carries a later timestamp.
    """

    def __init__(self, budget: int = _CACHE_BYTES, largest: int = _CACHE_OBJECT_BYTES) -> None:
        self.budget = budget
        self.largest = largest
        self._entries: dict[str, tuple[FileIdentity, bytes]] = {}
        self._size = 0

    def get(self, path: str, identity: FileIdentity) -> bytes | None:
        entry = self._entries.get(path)
        if entry is None:
            return None
        if entry[0] != identity:
            self._drop(path)
            return None
        return entry[1]

    def put(self, path: str, identity: FileIdentity, data: bytes) -> None:
        if len(data) > self.largest or len(data) != identity[2]:
            return  # too big to keep, or the file grew while it was read
        if time.time_ns() - max(identity[3], identity[4]) < _SETTLED_NS:
            return  # changed too recently to tell a further change apart
        self._drop(path)
        self._entries[path] = (identity, data)
        self._size += len(data)
        while self._size > self.budget:
            self._drop(next(iter(self._entries)))  # oldest first

    def _drop(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._size -= len(entry[1])


class FilesystemStorage:
    """The Storage port on a directory tree. Writes run in worker threads; reads run inline."""

    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str], bucket: str) -> None:
        if not bucket or bucket in {".", ".."} or "/" in bucket or "\\" in bucket or "\0" in bucket:
            raise ConfigError(
                "NPCFORGE_BUCKET must be a plain directory name for filesystem storage"
            )
        self.root = Path(root)
        self.bucket = bucket
        self.bucket_dir = self.root / bucket
        self._bucket_path = str(self.bucket_dir)
        self._recent = RecentObjects()

    def __repr__(self) -> str:
        return f"FilesystemStorage(root={str(self.root)!r}, bucket={self.bucket!r})"

    def path_for(self, key: str) -> Path:
        """Where the object `key` lives on disk (the key is validated first)."""
        return self.bucket_dir / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        target = self.path_for(key)
        (error,) = await asyncio.to_thread(self._write_all, [(target, bytes(data))])
        if error is not None:
            raise error

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> list[StorageError | None]:
        # A few worker threads share the batch (fsyncs overlap; one thread per object costs a
        # hop each), then one directory fsync makes every rename durable.
        results: list[StorageError | None] = [None] * len(items)
        valid: list[int] = []
        targets: list[tuple[Path, bytes]] = []
        for index, (key, data) in enumerate(items):
            try:
                targets.append((self.path_for(key), bytes(data)))
            except StorageError as exc:
                results[index] = exc
            else:
                valid.append(index)
        if not targets:
            return results
        lanes = min(len(targets), _WRITER_THREADS)
        written = await asyncio.gather(
            *(
                asyncio.to_thread(self._write_all, targets[lane::lanes], sync_dir=lanes == 1)
                for lane in range(lanes)
            )
        )
        if lanes > 1:
            await asyncio.to_thread(self._sync_bucket_dir)
        for lane, errors in enumerate(written):
            for index, error in zip(valid[lane::lanes], errors, strict=True):
                results[index] = error
        return results

    async def get(self, key: str) -> bytes | None:
        # Read inline: objects are small NPC files (<= 256 KiB), and a page-cache read costs less
        # than the hop to a worker thread (measured: ~10 us against 60-80 us per call). API
        # pollers of a succeeded job read the same file again and again: see RecentObjects.
        target = os.path.join(self._bucket_path, check_key(key))
        with contextlib.suppress(OSError):  # missing, or an error: _read says which
            data = self._recent.get(target, _identity(os.stat(target)))
            if data is not None:
                return data
        found = self._read(target)
        if found is None:
            return None
        data, identity = found
        self._recent.put(target, identity, data)
        return data

    async def ensure_bucket(self) -> bool:
        return await asyncio.to_thread(self._make_bucket_dir)

    async def check(self) -> None:
        await asyncio.to_thread(self._check_bucket_dir)

    async def close(self) -> None:
        return None

    # --- blocking parts, run via asyncio.to_thread ------------------------------------------

    def _write_all(
        self, items: list[tuple[Path, bytes]], *, sync_dir: bool = True
    ) -> list[StorageError | None]:
        """Write each object atomically: every temporary file is written and fsynced, then each
        is renamed over its key, then (unless the caller does it) one fsync of the directory
        makes the renames durable. Per item None when stored, else its error; a failed item
        leaves no temporary file."""
        if not self.bucket_dir.is_dir():
            return [_missing_bucket(self.bucket) for _ in items]
        results: list[StorageError | None] = [None] * len(items)
        staged: list[tuple[int, str, Path]] = []
        for index, (target, data) in enumerate(items):
            try:
                staged.append((index, self._write_temp(target, data), target))
            except OSError as exc:
                results[index] = _os_failure("write", exc)
        for index, temp_name, target in staged:
            try:
                os.replace(temp_name, target)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)
                results[index] = _os_failure("write", exc)
        if staged and sync_dir:
            self._sync_bucket_dir()
        return results

    def _write_temp(self, target: Path, data: bytes) -> str:
        """A fsynced temporary file beside `target` holding `data`; its name."""
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=_TEMP_SUFFIX, dir=self.bucket_dir
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), _OBJECT_MODE)
                os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return temp_name

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

    def _read(self, target: str) -> tuple[bytes, FileIdentity] | None:
        # Plain os calls on a str path: pathlib's read_bytes costs about three times as much.
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self.bucket_dir.is_dir():
                raise _missing_bucket(self.bucket) from None
            return None
        except OSError as exc:
            raise _os_failure("read", exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None  # a directory under the key's name is not an object
            return _read_to_end(fd, info.st_size), _identity(info)
        except OSError as exc:
            raise _os_failure("read", exc) from None
        finally:
            os.close(fd)

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
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self, older_than: float = _STALE_TEMP_SECONDS) -> int:
        """Temporary files of writes that never finished (a process killed mid-upload); a live
        write renames its file within moments, so anything this old is an orphan."""
        cutoff = time.time() - older_than
        removed = 0
        with os.scandir(self.bucket_dir) as entries:
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX)):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed
