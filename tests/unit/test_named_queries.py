"""SQL has one home: named blocks in queries.sql, run only by db/, the queue's only by JobQueue."""

from __future__ import annotations

import ast
from pathlib import Path

import npcforge
from npcforge.db.queries import all_queries

SRC = Path(npcforge.__file__).parent
RUNS_SQL = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare"}
# Statements outside db/ that are not the application's: doctor's and readyz's probes of the
# server itself, and the listener's self-NOTIFY on its own connection.
PROBES = {"doctor.py", "api/routes.py", "worker/listener.py"}


def _modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(SRC)): ast.parse(path.read_text("utf-8"))
        for path in sorted(SRC.rglob("*.py"))
    }


def _named_queries_run(tree: ast.Module) -> set[str]:
    """The names in `q("name")` calls."""
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "q"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def _inline_sql(tree: ast.Module) -> list[int]:
    """Lines where a statement is run from a string written in the module."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in RUNS_SQL
        and node.args
        and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
    ]


def test_every_named_query_is_run_somewhere() -> None:
    used = set().union(*(_named_queries_run(tree) for tree in _modules().values()))
    assert sorted(set(all_queries()) - used) == []  # dead blocks
    assert sorted(used - set(all_queries())) == []  # names without a block


def test_only_db_runs_named_queries() -> None:
    outside = [
        name
        for name, tree in _modules().items()
        if not name.startswith("db/") and _named_queries_run(tree)
    ]
    assert outside == []


def test_the_queue_statements_are_run_only_by_job_queue() -> None:
    modules = _modules()
    queue = _named_queries_run(modules["db/jobs.py"])
    assert {"claim_jobs", "renew_leases", "reap_expired_leases", "finish_succeeded_jobs"} <= queue
    elsewhere = {
        name: sorted(_named_queries_run(tree) & queue)
        for name, tree in modules.items()
        if name != "db/jobs.py" and _named_queries_run(tree) & queue
    }
    assert elsewhere == {}


def test_no_inline_sql_outside_db() -> None:
    inline = {
        name: lines
        for name, tree in _modules().items()
        if not name.startswith("db/") and name not in PROBES and (lines := _inline_sql(tree))
    }
    assert inline == {}


def test_db_runs_only_named_queries() -> None:
    inline = {
        name: lines
        for name, tree in _modules().items()
        if name.startswith("db/") and (lines := _inline_sql(tree))
    }
    assert inline == {}
