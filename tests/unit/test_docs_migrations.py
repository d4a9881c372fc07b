"""The documentation names the migrations that `sql/migrations/` holds: all of them, no others."""

from __future__ import annotations

import re
from pathlib import Path

from npcforge.db.migrate import load_migrations

REPO = Path(__file__).resolve().parents[2]
# `0003_rate_limit` or `0003_rate_limit.sql`, not part of a longer name or number.
MIGRATION = re.compile(r"(?<![\w.])(\d{4}_[a-z0-9_]+?)(?:\.sql)?(?![\w])")
APPLIED = re.compile(r"applied (\d+) migration\(s\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _documents() -> list[Path]:
    found = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    found += sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file())
    return found


def _shipped() -> list[str]:
    return [f"{m.version}_{m.name}" for m in load_migrations()]


def migration_problems(text: str, shipped: list[str]) -> list[str]:
    """What a document gets wrong: a name that is not shipped, a listing (a code block naming
    migrations) that leaves some out or changes their order, a count that is not theirs."""
    problems = [
        f"names {name}, which is not in sql/migrations/"
        for name in dict.fromkeys(MIGRATION.findall(text))
        if name not in shipped
    ]
    for block in FENCE.findall(text):
        named = list(dict.fromkeys(MIGRATION.findall(block)))
        if named and named != shipped:
            problems.append(f"a listing names {named}, sql/migrations/ holds {shipped}")
    for count in APPLIED.findall(text):
        if int(count) != len(shipped):
            problems.append(f"says {count} migrations were applied, there are {len(shipped)}")
    return problems


def test_every_document_names_exactly_the_shipped_migrations() -> None:
    shipped = _shipped()
    assert len(shipped) >= 4
    problems = [
        f"{path.relative_to(REPO)}: {problem}"
        for path in _documents()
        for problem in migration_problems(path.read_text("utf-8"), shipped)
    ]
    assert problems == []


def test_the_check_notices_a_stale_listing() -> None:
    shipped = ["0001_schema", "0002_supabase", "0003_rate_limit"]
    fine = (
        "```sh\ncp sql/migrations/0001_schema.sql a\ncp 0002_supabase.sql b\n0003_rate_limit\n```"
    )
    assert migration_problems(fine + "\nSee `0002_supabase.sql`.", shipped) == []
    stale = "```sh\nnpcforge migrate\n# applied 2 migration(s): 0001_schema, 0002_supabase\n```"
    assert len(migration_problems(stale, shipped)) == 2
    assert migration_problems("run 0009_future.sql", shipped) == [
        "names 0009_future, which is not in sql/migrations/"
    ]
    renamed = "`0001_schema.sql` becomes `20260101000001_npcforge_0001_schema.sql`"
    assert migration_problems(renamed, shipped) == []
