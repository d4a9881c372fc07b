"""The TFS oracle: `../shared/tfs/check.py`, the real Jiddo NpcSystem under Lua 5.1, as a judge.

It loads an NPC file as TFS's npc.cpp does, runs the unmodified Lua of TFS 1.x, talks to the NPC
and lists every way the server's NPC differs from the record (exit 0 when none). It lives beside
the repository (`../shared/tfs`, TFS's own GPL code: never copied here) and needs `lua5.1`, which
`.ci/run` installs. Missing either is a test failure, never a skip.

One judgement of the oracle is set aside, narrowly: its keyword-set check compares each TFS
keyword node with the record's phrase character for character, while SPEC §7 (and the
conversation the oracle itself runs) needs the phrase lower-cased with Lua pattern characters
escaped. For such a phrase a correct file gets exactly two lines ("no keyword set consisting of
exactly this phrase" and "TFS has a keyword set the record lacks: [<TFS form>] -> <reply>"), and
`assert_tfs_reads_as_meant` accepts those two lines and nothing else; the conversation turn for
the phrase must still answer with its reply. If the oracle is corrected, the lines disappear and
the check is simply exit 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from npcforge.generation.tfs import keyword_form

REPO = Path(__file__).resolve().parents[1]
ORACLE_DIR = REPO.parent / "shared" / "tfs"
ORACLE = ORACLE_DIR / "check.py"
LUA = "lua5.1"


@dataclass(frozen=True)
class Verdict:
    code: int
    mismatches: list[str]
    result: dict[str, Any]
    output: str

    def transcript(self) -> dict[str, list[str]]:
        """Tag of each turn ('greet', 'kw:0:1', 'trade', 'talk:3', …) → what the NPC said."""
        return {tag: said for tag, _text, said, _error in self.result.get("transcript", [])}


def require_oracle() -> None:
    """Fail (not skip) when the oracle or its Lua is missing: CI installs both."""
    if not ORACLE.is_file():
        pytest.fail(
            f"the TFS oracle is missing: expected {ORACLE} (../shared/tfs beside the repository)"
        )
    if shutil.which(LUA) is None:
        pytest.fail(f"{LUA} is not on PATH: the TFS oracle needs it (apt-get install -y lua5.1)")


def judge(xml: str, record: dict[str, Any], workdir: Path) -> Verdict:
    """Run the oracle on `xml` as the file of `record` (the `npcforge npc import` format)."""
    require_oracle()
    workdir.mkdir(parents=True, exist_ok=True)
    xml_path, record_path = workdir / "npc.xml", workdir / "record.json"
    result_path = workdir / "result.json"
    xml_path.write_text(xml, encoding="utf-8")
    record_path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(ORACLE), str(xml_path), str(record_path), "--lua", LUA,
         "--json", str(result_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 1), f"the oracle failed to run: {proc.stdout}{proc.stderr}"
    result = json.loads(result_path.read_text(encoding="utf-8"))
    return Verdict(proc.returncode, list(result["mismatches"]), result, proc.stdout)


def keyword_check_quirks(record: dict[str, Any]) -> set[str]:
    """The oracle's two lines for each phrase whose TFS form differs from how it is written."""
    if not (record.get("modules") or {}).get("keywordsEnabled"):
        return set()
    lines = set()
    for keyword in record.get("keywords") or []:
        for phrase in keyword["phrases"]:
            written = keyword_form(phrase)
            if written != phrase:
                lines.add(f"KEYWORD {phrase!r}: no keyword set consisting of exactly this phrase")
                lines.add(
                    f"KEYWORD: TFS has a keyword set the record lacks: {[written]}"
                    f" -> {keyword['response']!r}"
                )
    return lines


def assert_tfs_reads_as_meant(xml: str, record: dict[str, Any], workdir: Path) -> Verdict:
    """The oracle finds no difference between the NPC TFS loads from `xml` and `record`."""
    verdict = judge(xml, record, workdir)
    unexplained = [m for m in verdict.mismatches if m not in keyword_check_quirks(record)]
    assert not unexplained, verdict.output
    # Every phrase still answered with its own reply when the player said it.
    said = verdict.transcript()
    if (record.get("modules") or {}).get("keywordsEnabled"):
        for k, keyword in enumerate(record.get("keywords") or []):
            for p in range(len(keyword["phrases"])):
                reply = keyword["response"].replace("|PLAYERNAME|", "Tester")
                assert said[f"kw:{k}:{p}"] == [reply], verdict.output
    return verdict
