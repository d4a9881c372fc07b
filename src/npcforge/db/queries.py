"""Named SQL blocks from queries.sql, loaded once."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    matches = list(_NAME_RE.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";")
        if match.group(1) in queries:
            raise ValueError(f"query {match.group(1)!r} is defined twice")
        queries[match.group(1)] = sql
    return queries


# queries.sql holds the queue's and the API's; console.sql the web console's.
QUERY_FILES = ("queries.sql", "console.sql")


@cache
def all_queries() -> dict[str, str]:
    files = resources.files("npcforge.db")
    text = "\n".join(files.joinpath(name).read_text("utf-8") for name in QUERY_FILES)
    return parse_queries(text)


def q(name: str) -> str:
    """The SQL of the named block."""
    return all_queries()[name]
