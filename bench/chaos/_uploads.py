"""Count storage writes per object key with inotify, without touching the worker.

`FilesystemStorage.put` writes a temporary file in the bucket directory and renames it over the
key, so every completed upload is exactly one IN_MOVED_TO event named `{npcId}.xml` there. The
watcher reads the events on the harness's event loop (`loop.add_reader`); an overflow of the
kernel's event queue is recorded, because the counts are then incomplete.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections import Counter
from pathlib import Path

IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class UploadWatcher:
    """Renames into `bucket_dir` per file name, from `start()` until `stop()`."""

    def __init__(self, bucket_dir: Path) -> None:
        self.bucket_dir = bucket_dir
        self.renames: Counter[str] = Counter()
        self.overflowed = False
        self._fd: int | None = None
        self._pending = b""

    def start(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed (uploads cannot be counted)")
        watch = libc.inotify_add_watch(fd, os.fsencode(self.bucket_dir), IN_MOVED_TO)
        if watch < 0:
            os.close(fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed on {self.bucket_dir}")
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._drain)

    def _drain(self) -> None:
        assert self._fd is not None
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._parse(self._pending + chunk)

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            _, mask, _, length = _EVENT_HEADER.unpack_from(data, offset)
            end = offset + _EVENT_HEADER.size + length
            if end > len(data):
                break
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
            elif mask & IN_MOVED_TO:
                raw = data[offset + _EVENT_HEADER.size : end].rstrip(b"\0")
                self.renames[os.fsdecode(raw)] += 1
            offset = end
        self._pending = data[offset:]

    async def stop(self) -> None:
        """Read what is queued, then close the watch."""
        if self._fd is None:
            return
        await asyncio.sleep(0.2)  # the last renames' events reach the queue
        self._drain()
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None

    def uploads_per_key(self) -> Counter[str]:
        return Counter({n: c for n, c in self.renames.items() if n.endswith(".xml")})
