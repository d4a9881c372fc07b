"""The optional speed-ups (npcforge.speedups): the same results with or without them."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from npcforge import speedups
from npcforge.config import ConfigError, load_settings


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_commands_run_on_uvloop_when_installed_unless_told_otherwise() -> None:
    assert speedups.uvloop_installed()  # the dev install carries the fast extra
    assert speedups.run(loop_module()).startswith("uvloop")
    assert speedups.run(loop_module(), event_loop="uvloop").startswith("uvloop")
    assert speedups.run(loop_module(), event_loop="asyncio").startswith("asyncio")


def test_the_event_loop_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPCFORGE_EVENT_LOOP", "trio")
    with pytest.raises(ConfigError, match="NPCFORGE_EVENT_LOOP"):
        load_settings()
    monkeypatch.setenv("NPCFORGE_EVENT_LOOP", " AsyncIO ")
    assert load_settings().event_loop == "asyncio"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": [1, 2.5, "x\\u00e9"], "b": null}',
        b'{"big": 123456789012345678901234567890}',  # past 64 bits
        b'{"s": "\\ud800"}',  # a lone surrogate escape
        '{"k": "\u00e9"}',
    ],
)
def test_json_is_read_as_the_json_module_reads_it(raw: bytes | str) -> None:
    assert speedups.json_value(raw) == json.loads(raw)


def test_nan_and_not_json() -> None:
    assert math.isnan(speedups.json_value(b"NaN"))
    for raw in (b"", b"{", b"\xff\xfe", b"<html>"):
        with pytest.raises(ValueError):
            speedups.json_value(raw)


def test_json_bytes_round_trip_and_lone_surrogates() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "é <npc/> \n"}]}
    assert json.loads(speedups.json_bytes(body)) == body
    odd = {"s": "a\ud800b"}
    assert json.loads(speedups.json_bytes(odd)) == odd
