"""How a process ends on a signal: a daemon stops gracefully, any other command as on Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from npcforge.exits import EXIT_FAILURE

log = logging.getLogger("npcforge")


def install_signal_handlers(on_first: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT/SIGHUP: graceful stop. A second one: exit at once, after stopping
    any embedded PostgreSQL this process started."""
    loop = asyncio.get_running_loop()
    count = 0

    def handler(signame: str) -> None:
        nonlocal count
        count += 1
        if count == 1:
            log.info("signal received; shutting down", extra={"signal": signame})
            on_first()
        else:
            log.warning("second signal; exiting now", extra={"signal": signame})
            from npcforge.embedded import stop_all

            stop_all()
            os._exit(EXIT_FAILURE)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, handler, sig.name)


def interrupt_on_termination() -> None:
    """SIGTERM or SIGHUP in a command that is not a daemon: stop as Ctrl-C does (exit 1).
    Daemons replace this with `install_signal_handlers`."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
