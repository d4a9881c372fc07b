"""A model's TFS lists (`keywords`, `shop_buyable`, `shop_sellable`) against the record.

Pure. Both lists are read the way TFS reads them (`tfs`), so an answer that a server reads as
meant passes, and every finding says what TFS would do with what was written and what to write
instead: the findings go back to the model in the repair prompt.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from npcforge.generation.tfs import (
    PATTERN_CHARS,
    KeywordSet,
    entries,
    keyword_form,
    lua_lower,
    shop_entry,
    shop_fields,
    whole_number,
)
from npcforge.npc import ShopItem, ShopListType

__all__ = ["keyword_findings", "shop_list_findings", "show"]

_SHOWN_CHARS = 120
_ESCAPED_CHAR = re.compile(r"%(.)")
FIELD_ORDER = {
    "buy": "name,itemid,price[,subType][,realName]",
    "sell": "name,itemid,price[,realName][,subType]",
}


def show(value: str) -> str:
    """A value quoted for a finding, shortened so one bad value cannot flood the list."""
    if len(value) > _SHOWN_CHARS:
        value = value[:_SHOWN_CHARS] + "…"
    return json.dumps(value, ensure_ascii=False)


# --- keywords ----------------------------------------------------------------------------------


def keyword_findings(value: str, sets: Sequence[KeywordSet]) -> list[str]:
    """What is wrong with a `keywords` value, TFS splitting it on ";" (empty sets skipped)."""
    actual = list(entries(value))
    expected = [s.keyword for s in sets]
    if actual == expected:
        return []
    findings: list[str] = []
    missing = Counter(expected) - Counter(actual)
    extra = Counter(actual) - Counter(expected)
    meant_as: dict[str, str] = {}  # a wrongly written set -> the expected set it stands for
    for written in dict.fromkeys(actual):
        for _ in range(extra[written]):
            meant = _meant(written, missing)
            if meant is not None:
                missing[meant] -= 1
                meant_as[written] = meant
                findings.append(_keyword_advice(written, meant))
            elif "," in written:
                findings.append(
                    f'keyword set {show(written)} joins phrases with "," (TFS would require all'
                    ' of them); every phrase must be its own set, separated by ";"'
                )
            else:
                findings.append(f"unexpected keyword set {show(written)}")
    for phrase in expected:
        if missing[phrase] > 0:
            missing[phrase] -= 1
            findings.append(f"missing keyword set {show(phrase)}")
    corrected = [meant_as.get(written, written) for written in actual]
    if Counter(corrected) == Counter(expected) and corrected != expected:
        findings.append(_order_advice(corrected, expected))
    return findings


def _meant(written: str, missing: Counter[str]) -> str | None:
    """The expected keyword a written set stands for, when it is the phrase written wrongly."""
    for candidate in (keyword_form(written), lua_lower(written.strip())):
        if missing[candidate] > 0:
            return candidate
    return None


def _keyword_advice(written: str, meant: str) -> str:
    reasons = []
    if written != written.strip():
        reasons.append(
            "has spaces around it, which TFS keeps, so the player would have to say them"
        )
    if lua_lower(written) != written:
        reasons.append(
            "has upper-case letters: TFS lower-cases what the player says, never the keyword,"
            " so it would never match"
        )
    raw = sorted(set(_ESCAPED_CHAR.sub("", written)) & PATTERN_CHARS)
    if raw and keyword_form(written) == meant:
        reasons.append(
            f"holds {''.join(raw)!r}, which TFS's string.find reads as a Lua pattern: escape"
            " each of ^$()%.[]*+-? with %"
        )
    return f"keyword set {show(written)} {'; '.join(reasons)}: write {show(meant)}"


def _plain(keyword: str) -> str:
    return _ESCAPED_CHAR.sub(r"\1", keyword)


def _order_advice(actual: list[str], expected: list[str]) -> str:
    for before, shorter in enumerate(actual):
        for longer in actual[before + 1 :]:
            if shorter != longer and _plain(shorter) in _plain(longer):
                return (
                    f"keyword sets are out of order: {show(shorter)} comes before {show(longer)},"
                    " which contains it, and TFS answers with the first set found in the"
                    f" message, so {show(longer)} would get the reply of {show(shorter)};"
                    f" write {show(';'.join(expected))}"
                )
    return (
        f"keyword sets are out of order: got {show(';'.join(actual))},"
        f" expected {show(';'.join(expected))}"
    )


# --- shop lists --------------------------------------------------------------------------------


def shop_list_findings(
    key: str, list_type: ShopListType, value: str, items: Sequence[ShopItem]
) -> list[str]:
    """What is wrong with a `shop_buyable`/`shop_sellable` value, entry by entry."""
    written = list(entries(value))
    findings: list[str] = []
    for number, (entry, item) in enumerate(zip(written, items, strict=False), start=1):
        label = f"{key} item {number} ({item.name})"
        findings.extend(f"{label}{finding}" for finding in _entry_findings(key, entry, item))
    if len(written) != len(items):
        findings.append(f"{key} has {len(written)} items, expected {len(items)}")
    for number, item in enumerate(items[len(written) :], start=len(written) + 1):
        findings.append(f"{key} is missing item {number}: {show(shop_entry(item))}")
    for number, entry in enumerate(written[len(items) :], start=len(items) + 1):
        findings.append(f"{key} item {number} {show(entry)} is not in the record")
    return findings


def _entry_findings(key: str, entry: str, item: ShopItem) -> list[str]:
    """Findings for one entry, each starting with ":" or " is" to follow the entry's label."""
    want_entry = shop_entry(item)
    got, want = shop_fields(item.list_type, entry), shop_fields(item.list_type, want_entry)
    order = FIELD_ORDER[item.list_type]
    if got.price is None or got.extra:
        return [f" is {show(entry)}: TFS reads {key} entries as {order}, i.e. {show(want_entry)}"]
    if got.skipped_empty and replace(got, skipped_empty=False) != want:
        return [
            f": {show(entry)} has an empty field, which TFS skips (fields are split with"
            f' gmatch("[^,]+")), so the fields after it move up; write {show(want_entry)}'
        ]
    findings = []
    if got.name != want.name:
        hint = ""
        if got.name is not None and keyword_form(got.name) == want.name:
            hint = (
                " (the first field is the talk-mode keyword that TFS matches against the"
                " player's lower-cased message: lower case, Lua pattern characters escaped)"
            )
        findings.append(f": name {show(got.name or '')}, expected {show(want.name or '')}{hint}")
    for label, text, number in (
        ("itemid", got.item_id, item.item_id),
        ("price", got.price, item.price),
    ):
        findings.extend(_number_finding(label, text, number))
    misplaced = _misplaced_subtype(item.list_type, got.subtype, got.real_name, want_entry)
    if misplaced is not None:
        return [*findings, misplaced]
    # An absent subtype reads as 0: TFS's default (the item's own charges).
    findings.extend(_number_finding("subtype", got.subtype or "0", whole_number(want.subtype) or 0))
    if got.real_name != want.real_name:
        field = "5" if item.list_type == "buy" else "4"
        findings.append(
            f": trade-window name (realName, field {field} of {order})"
            f" {show(got.real_name) if got.real_name is not None else 'is missing'},"
            f" expected {show(want.real_name) if want.real_name is not None else 'none'}"
        )
    return findings


def _number_finding(label: str, text: str | None, want: int) -> list[str]:
    got = whole_number(text)
    if got is None:
        return [f": {label} {show(text or '')} is not a whole number, expected {want}"]
    return [] if got == want else [f": {label} {got}, expected {want}"]


def _misplaced_subtype(
    list_type: ShopListType, subtype: str | None, real_name: str | None, want_entry: str
) -> str | None:
    """The classic mix-up of the two field orders, explained in TFS's terms."""
    if list_type == "sell" and subtype is None and whole_number(real_name) is not None:
        return (
            f": TFS reads field 4 of a shop_sellable entry as the name shown in the trade window"
            f" ({FIELD_ORDER['sell']}), so {show(real_name or '')} would be shown as the name and"
            f" the subtype lost; a subtype needs a real name before it: write {show(want_entry)}"
        )
    if list_type == "buy" and subtype is not None and whole_number(subtype) is None:
        return (
            f": TFS reads field 4 of a shop_buyable entry as the subtype ({FIELD_ORDER['buy']}),"
            f" so {show(subtype)} is not read as a number, and a real name goes in field 5:"
            f" write {show(want_entry)}"
        )
    return None
