"""Summarise a py-spy `--format raw` profile (collapsed stacks) into where the time goes.

    python bench/_profile.py PROFILE.txt [--jobs N]

Prints the top functions by self samples, by inclusive samples, and the share of samples per
area (npcforge module, asyncpg, aiohttp, asyncio, logging, json, …). With --jobs, also the
milliseconds of worker CPU per job each line stands for (samples / rate / jobs).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# Functions whose inclusive time tells where a job's time goes (name prefixes of labels).
STAGES = (
    ("claim loop", "Claimer.run "),
    ("one job, all of it", "InFlight._run "),
    ("load the record", "load_npc "),
    ("provider call", "OpenRouterProvider.generate "),
    ("  prompt building", "build_messages "),
    ("  aiohttp request", "ClientSession._request "),
    ("  answer parsing", "extract_xml "),
    ("validation", "validate_npc_xml "),
    ("publish (lock, upload, finalize, attempt row)", "Publisher.publish "),
    ("  storage put (event-loop side)", "FilesystemStorage.put "),
    ("  storage write (thread)", "FilesystemStorage._write_atomically "),
    ("  attempt row", "Outcomes.record "),
    ("asyncpg pool acquire", "PoolAcquireContext.__aenter__ "),
    ("asyncpg pool release", "PoolAcquireContext.__aexit__ "),
    ("logging", "Logger.info "),
    ("JSON log formatting", "JsonFormatter.format "),
    ("lease renewals", "Leases.keep "),
    ("prometheus metric updates", "MutexValue.inc "),
)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _label(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({_short_file(match['file'])})"


def _area(label: str) -> str:
    inside = label[label.rfind("(") + 1 : -1] if label.endswith(")") else label
    top = inside.split("/", 1)[0]
    if top == "npcforge":
        parts = inside.split("/")
        return "npcforge/" + (parts[1] if len(parts) > 2 else parts[-1].split(".")[0])
    if top.endswith(".py"):
        return top[:-3]
    return top or "?"


def summarise(path: Path, *, rate: int = 250, jobs: int | None = None, top: int = 25) -> str:
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_label(frame) for frame in stack.split(";") if frame]
        # The thread name py-spy puts first is not a frame.
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        total += count
        self_samples[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for label in set(frames):
            inclusive[label] += count

    def cost(samples: int) -> str:
        share = f"{samples * 100 / total:5.1f}%"
        if jobs:
            return f"{share}  {samples / rate * 1000 / jobs:7.4f} ms/job"
        return share

    out = [f"samples: {total} at {rate} Hz" + (f", {jobs} jobs" if jobs else "")]
    out.append("\n-- pipeline stages (inclusive; stages nest, so shares overlap) --")
    for stage, needle in STAGES:
        samples = max((n for label, n in inclusive.items() if label.startswith(needle)), default=0)
        out.append(f"{cost(samples)}  {stage}: {needle.strip()}")
    out.append("\n-- self time by area (leaf frame's module) --")
    out.extend(f"{cost(n)}  {area}" for area, n in areas.most_common(top))
    out.append("\n-- self time, top functions --")
    out.extend(f"{cost(n)}  {label}" for label, n in self_samples.most_common(top))
    out.append("\n-- inclusive time, top functions --")
    out.extend(f"{cost(n)}  {label}" for label, n in inclusive.most_common(top + 15))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args(argv)
    print(summarise(args.profile, rate=args.rate, jobs=args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
