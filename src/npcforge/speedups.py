"""The optional speed-ups, in one place: each is used when its package is installed (the `fast`
extra, `pip install 'npcforge[fast]'`) and npcforge works the same without it. What each bought
is measured in docs/benchmarks.md (issue 19).

- uvloop runs the event loop of every command (`NPCFORGE_EVENT_LOOP=asyncio` turns it off).
- orjson encodes and decodes the OpenRouter request and response bodies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
# 19 digits in a row may be an integer orjson cannot hold (it holds -2**63 .. 2**64 - 1).
_LONG_BYTES = re.compile(rb"[0-9]{19}")
_LONG_TEXT = re.compile(r"[0-9]{19}")

try:
    import orjson
except ImportError:  # pragma: no cover - the fast extra is part of the dev install
    orjson = None  # type: ignore[assignment]


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run(main: Coroutine[Any, Any, T], *, event_loop: str = "auto") -> T:
    """Run `main` to completion on uvloop (`auto` when installed, or `uvloop`), else asyncio's."""
    if event_loop == "asyncio" or (event_loop == "auto" and not uvloop_installed()):
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)


def json_bytes(value: Any) -> bytes:
    """`value` as UTF-8 JSON: orjson's when installed and it can, else the json module's."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:  # e.g. a lone surrogate, which the json module escapes
            pass
    return json.dumps(value).encode()


def json_value(raw: bytes | str) -> Any:
    """Parse JSON exactly as the json module does (ValueError when it is not JSON): orjson when
    installed, the json module for what orjson refuses (NaN, lone surrogate escapes) or reads
    otherwise (integers past 64 bits, which it turns into floats)."""
    long_number = _LONG_BYTES.search(raw) if isinstance(raw, bytes) else _LONG_TEXT.search(raw)
    if orjson is not None and long_number is None:
        try:
            return orjson.loads(raw)
        except ValueError:
            pass
    return json.loads(raw)
