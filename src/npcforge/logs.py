"""Structured logging: JSON lines when not on a terminal, readable text on one.

Records carry ids, sizes, durations and codes in `extra=`; never prompts, XML or secrets.
Every logger of the process goes through the one handler (asyncpg, uvicorn, asyncio, Python
warnings, uncaught exceptions), so in JSON mode each line on stderr is one JSON object, a
traceback included as a field.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

log = logging.getLogger("npcforge")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f"  exc_type={record.exc_info[0].__name__}"
            line += "\n" + self.formatException(record.exc_info)
        return line


class _ProcessHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs on the root logger (found again by its type)."""


def json_mode() -> bool:
    """Whether configure_logging chose JSON lines for this process."""
    return any(
        isinstance(h, _ProcessHandler) and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger().handlers
    )


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    """Route every log of the process to stderr, JSON unless stderr is a terminal (or `fmt`
    says). npcforge logs at `level`; libraries at warning and above."""
    use_json = fmt == "json" or (fmt is None and not sys.stderr.isatty())
    handler = _ProcessHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _ProcessHandler)]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    own = logging.getLogger("npcforge")
    own.handlers[:] = [h for h in own.handlers if not isinstance(h, _ProcessHandler)]
    own.setLevel(level.upper())
    own.propagate = True
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    log.critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        log.critical(
            "uncaught exception in a thread",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            extra={"thread_name": args.thread.name if args.thread else None},
        )


def say(message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """A line for the person at the terminal: as it is in text mode, one JSON log record (of
    logger npcforge.cli) in JSON mode."""
    if json_mode():
        logger = logging.getLogger("npcforge.cli")
        # Handled whatever the log level: the person asked for this line.
        logger.handle(logger.makeRecord(logger.name, level, "", 0, message, (), None, extra=fields))
    else:
        print(message, file=sys.stderr, flush=True)
