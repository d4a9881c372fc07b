"""systemd's notify protocol: datagrams on $NOTIFY_SOCKET. A no-op without it."""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    def __init__(
        self,
        address: str | None,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        self._address: str | None = None
        if address:
            # An "@" prefix names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        # WATCHDOG_PID names the process the watchdog is meant for (as sd_watchdog_enabled
        # reads it): a child that inherited the environment, for one, must not ping for it.
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        if for_us and watchdog_usec and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            self.watchdog_interval = int(watchdog_usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        if self._address is None:
            return False
        payload = "\n".join(lines).encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(payload, self._address)
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
