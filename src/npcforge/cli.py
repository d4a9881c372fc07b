"""The `npcforge` command line: parse the arguments, dispatch to the command's module.

Each command's body lives with its idea (`ops`, `doctor`, `daemons`, `devmode`) and is imported
only when that command runs. Exit codes: 0 success, 2 usage or configuration error, 1 any other
failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import asyncpg

from npcforge import __version__, speedups
from npcforge.config import ConfigError, Settings, load_settings
from npcforge.db.migrate import MigrationError
from npcforge.exits import EXIT_FAILURE, EXIT_USAGE, CommandFailed, UsageError
from npcforge.importer import ImportError_
from npcforge.logs import configure_logging, say
from npcforge.signals import interrupt_on_termination

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _uuid_arg(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from None


def _resolve(target: str) -> Command:
    """`module:function` under npcforge, imported when its command runs."""
    module, _, name = target.partition(":")
    command: Command = getattr(importlib.import_module(f"npcforge.{module}"), name)
    return command


# --- parser ------------------------------------------------------------------------------------


_JOB_STATUSES = ["queued", "processing", "succeeded", "failed"]
_JSON_HELP = "print JSON (camelCase keys, ISO 8601 times, as the HTTP API) instead of text"
_NPC_ID_HELP = "the NPC's id (a UUID)"


def _command(
    sub: Any, name: str, summary: str, run: str, **defaults: Any
) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is also the description its --help shows; `run` is
    the `module:function` that carries it out."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
    parser.set_defaults(run=run, **defaults)
    return parser


def _group(sub: Any, name: str, summary: str, dest: str) -> Any:
    parser = sub.add_parser(name, help=summary, description=summary)
    return parser.add_subparsers(dest=dest, metavar="SUBCOMMAND", required=True)


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=8080, help="TCP port to listen on (default: %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npcforge",
        description="Turn NPC records in PostgreSQL into Jiddo NPC XML with a language model. "
        "Settings come from the environment or ./.env (see the README). Exit codes: 0 success, "
        "2 usage or configuration error, 1 any other failure.",
    )
    parser.add_argument(
        "--version", action="version", version=f"npcforge {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _command(sub, "migrate", "apply sql/migrations to DATABASE_URL (idempotent)", "ops:run_migrate")
    _command(sub, "worker", "run the generation daemon until SIGTERM/SIGINT", "daemons:run_worker")
    _listen_options(_command(sub, "api", "serve the HTTP API under uvicorn", "daemons:run_api"))
    _listen_options(
        _command(
            sub, "dev", "embedded PostgreSQL + worker + API on 127.0.0.1, until Ctrl-C",
            "devmode:run_dev", embedded=True,
        )
    )  # fmt: skip
    _command(
        sub, "demo", "generate the bundled sample NPC once, print its XML, exit", "devmode:run_demo",
        embedded=True,
    )  # fmt: skip

    p = _command(
        sub, "enqueue",
        "queue generation jobs for NPCs named by id, or selected with --all / --where-status; "
        "prints one job id per line",
        "ops:run_enqueue",
    )  # fmt: skip
    p.add_argument(
        "npc_ids", nargs="*", type=_uuid_arg, metavar="NPC_ID",
        help="NPCs to queue, each once, in this order; all or none are queued",
    )  # fmt: skip
    p.add_argument(
        "--all", action="store_true", help="select every NPC that is not deleted (default: off)"
    )
    p.add_argument(
        "--where-status", action="append", choices=["none", *_JOB_STATUSES], metavar="STATUS",
        help="select NPCs whose current job has this status (none: never generated); "
        "repeat for several; one of: none, " + ", ".join(_JOB_STATUSES) + " (default: no "
        "selection)",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true",
        help="also replace a queued or running job (it is superseded and cannot publish), and "
        "call the model even when the record is unchanged since its file was made; without "
        "it a named NPC with such a job is an error and a selected one is skipped (default: off)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    p = _command(sub, "status", "show an NPC's current job", "ops:run_status")
    p.add_argument("npc_id", type=_uuid_arg, metavar="NPC_ID", help=_NPC_ID_HELP)
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    npc = _group(sub, "npc", "NPC records", "npc_command")
    p = _command(
        npc, "import", "create an NPC from a JSON file; prints its id", "ops:run_npc_import"
    )
    p.add_argument(
        "file", metavar="FILE.json",
        help="the NPC as JSON, in the shape of the bundled sample (see the README)",
    )  # fmt: skip

    storage = _group(sub, "storage", "object storage", "storage_command")
    _command(
        storage, "ensure-bucket", "create the bucket (private) if missing",
        "ops:run_ensure_bucket",
    )  # fmt: skip

    jobs = _group(sub, "jobs", "list, retry and cancel jobs", "jobs_command")
    p = _command(
        jobs, "list", "list NPCs' current jobs, most recently changed first", "ops:run_jobs"
    )
    p.add_argument(
        "--status", choices=_JOB_STATUSES,
        help="only jobs with this status (default: every status)",
    )  # fmt: skip
    p.add_argument(
        "--limit",
        type=int,
        default=50,
        help="at most this many jobs, 1-10000 (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")
    p = _command(jobs, "retry", "queue failed jobs again, each with a new job id", "ops:run_jobs")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "npc_id", nargs="?", type=_uuid_arg, metavar="NPC_ID",
        help="retry this NPC's failed job (a cancelled one too)",
    )  # fmt: skip
    target.add_argument(
        "--all-failed", action="store_true",
        help="retry every failed job except the cancelled ones (default: off)",
    )  # fmt: skip
    p.add_argument(
        "--code",
        help="with --all-failed: only jobs that failed with this error code, e.g. AI_UPSTREAM; "
        "CANCELLED retries cancelled jobs (default: every code but CANCELLED)",
    )
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")
    p = _command(
        jobs, "cancel", "cancel a queued or running job (ends failed, CANCELLED)", "ops:run_jobs"
    )
    p.add_argument("npc_id", type=_uuid_arg, metavar="NPC_ID", help=_NPC_ID_HELP)
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    p = _command(
        sub, "costs",
        "model spend per UTC day, model and owner from the attempt rows, and today's budgets",
        "ops:run_costs",
    )  # fmt: skip
    p.add_argument(
        "--days", type=int, default=30,
        help="the last this many UTC days, today included, 1-3660 (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    p = _command(
        sub, "doctor", "check database, migrations, LISTEN/NOTIFY, storage and provider key",
        "doctor:run_doctor_command",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")
    return parser


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port (1-65535)")
    return int(value)


def _fail(exc: BaseException, code: int, text: str | None = None) -> int:
    say(f"npcforge: {text or exc}", level=logging.ERROR, exit_code=code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupt_on_termination()  # daemons replace this with a graceful stop
    try:
        settings = load_settings()
    except ConfigError as exc:
        configure_logging()
        return _fail(exc, EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = speedups.run(_resolve(args.run)(settings, args), event_loop=settings.event_loop)
        return code
    except (ConfigError, UsageError, ImportError_, MigrationError) as exc:
        return _fail(exc, EXIT_USAGE)
    except CommandFailed as exc:
        return _fail(exc, EXIT_FAILURE)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(exc, EXIT_FAILURE, f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return _fail(KeyboardInterrupt(), EXIT_FAILURE, "interrupted")


__all__ = ["main"]
