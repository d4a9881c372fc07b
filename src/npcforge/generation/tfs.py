"""What a TFS 1.x server reads from an NPC file's lists (SPEC §7), and how npcforge writes them.

Pure. Facts from the Jiddo NpcSystem as TFS 1.0-1.6 ship it (`data/npc/lib/npcsystem/`):
- `modules.lua` splits `shop_buyable`, `shop_sellable` and `keywords` with
  `gmatch("[^;]+")` and each entry with `gmatch("[^,]+")`: an empty field is skipped, not kept.
- `parseBuyable` reads `name,itemid,price,subType,realName`; `parseSellable` reads
  `name,itemid,price,realName,subType`. A buyable without a subtype gets the item's default
  charges, and a fluid container without one is dropped ("SubType missing").
- `keywordhandler.lua` lower-cases the player's message (`string.lower`: ASCII letters only, the
  server runs in the C locale) and tests every word of a keyword node with `string.find`, which
  reads it as a Lua pattern and matches anywhere in the message. The first node that matches
  answers. Shop entries become talk-mode nodes `{"buy", name}` / `{"sell", name}` the same way.
"""

from __future__ import annotations

import heapq
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from npcforge.npc import NpcRecord, ShopItem, ShopListType

__all__ = [
    "FLUID_CONTAINER_IDS",
    "LIST_SEPARATORS",
    "PATTERN_CHARS",
    "SYSTEM_WORDS",
    "TALK_MODE_WORDS",
    "KeywordSet",
    "ShopFields",
    "entries",
    "keyword_form",
    "keyword_sets",
    "list_text_problem",
    "lua_lower",
    "matched_text",
    "module_word_matches",
    "shop_entry",
    "shop_fields",
    "shop_subtype",
    "whole_number",
]

# TFS splits shop lists and keyword lists on these; a value containing one cannot be expressed.
LIST_SEPARATORS = (";", ",")
# Lua pattern magic characters; `%` before one makes it literal.
PATTERN_CHARS = frozenset("^$()%.[]*+-?")
# Words the NPC system answers itself (modules.lua FOCUS_GREETWORDS, FOCUS_FAREWELLWORDS,
# SHOP_TRADEREQUEST, SHOP_YESWORD, SHOP_NOWORD).
SYSTEM_WORDS = ("hi", "hello", "bye", "farewell", "trade", "yes", "no")
# The first word of every talk-mode shop node (ShopModule:addBuyableItem / addSellableItem).
TALK_MODE_WORDS = ("buy", "sell")
# Fluid containers of the standard TFS 1.x items.otb (item group FLUID): bought without a
# subtype, TFS drops them.
FLUID_CONTAINER_IDS = frozenset(
    {
        1775, 2005, 2006, 2007, 2008, 2009, 2011, 2012, 2013, 2014, 2015, 2023, 2031, 2032,
        2033, 2034, 2562, 2574, 2575, 2576, 2577, 3941, 3942, 5553, 7934, 7935, 7937, 10150,
        13735, 25298, 33583, 33775, 33776, 33777, 33778, 33779, 33780, 33783,
    }
)  # fmt: skip

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_PATTERN_ESCAPES = str.maketrans({char: "%" + char for char in PATTERN_CHARS})
# `[%w+]` of the module matchers (ShopModule/FocusModule.messageMatcher), C locale.
_WORD_NEIGHBOUR = "[A-Za-z0-9+]"
_WHOLE_NUMBER = re.compile(r"\s*-?\d+\s*")  # what tonumber() takes, bar hex and fractions


def list_text_problem(text: str) -> str | None:
    """Why `text` cannot be a shop item name or keyword phrase in a TFS list, or None if it can."""
    if not text.strip():
        return "is empty"
    for char in LIST_SEPARATORS:
        if char in text:
            return f'contains "{char}", which TFS uses as a list separator'
    return None


# --- Keywords ----------------------------------------------------------------------------------


def lua_lower(text: str) -> str:
    """`string.lower` as TFS runs it: ASCII letters only ("Ärger" stays "Ärger" there)."""
    return text.translate(_ASCII_LOWER)


def matched_text(text: str) -> str:
    """What a player has to say for `text` to match: the phrase as the handler compares it."""
    return lua_lower(text.strip())


def keyword_form(text: str) -> str:
    """`text` as a TFS keyword: lower case, every Lua pattern character escaped with `%`."""
    return matched_text(text).translate(_PATTERN_ESCAPES)


def module_word_matches(word: str, message: str) -> bool:
    """ShopModule/FocusModule.messageMatcher: `word` occurs, and never glued to a letter/digit."""
    return (
        word in message
        and re.search(_WORD_NEIGHBOUR + word, message) is None
        and re.search(word + _WORD_NEIGHBOUR, message) is None
    )


@dataclass(frozen=True, slots=True)
class KeywordSet:
    """One TFS keyword set: a single phrase (as the record holds it) and the reply it triggers."""

    phrase: str
    reply: str
    entry: int = 0  # index of the record's keyword the phrase belongs to

    @property
    def keyword(self) -> str:
        """The phrase as it is written in the `keywords` parameter."""
        return keyword_form(self.phrase)


def keyword_sets(npc: NpcRecord) -> list[KeywordSet]:
    """Every phrase as its own set, in record order, except that a phrase comes before every
    phrase it contains: TFS answers with the first set found in the message, so "news" written
    before "good news" would answer "good news" too."""
    sets = [
        KeywordSet(phrase, keyword.response, entry)
        for entry, keyword in enumerate(npc.keywords)
        for phrase in keyword.phrases
    ]
    texts = [matched_text(s.phrase) for s in sets]
    # waiting[i]: how many phrases that contain phrase i are not yet placed.
    waiting = [0] * len(sets)
    contained: list[list[int]] = [[] for _ in sets]
    for outer, outer_text in enumerate(texts):
        for inner, inner_text in enumerate(texts):
            if inner_text != outer_text and inner_text in outer_text:
                waiting[inner] += 1
                contained[outer].append(inner)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered: list[KeywordSet] = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(sets[index])
        for inner in contained[index]:
            waiting[inner] -= 1
            if waiting[inner] == 0:
                heapq.heappush(ready, inner)
    return ordered


# --- Shop lists --------------------------------------------------------------------------------


def shop_subtype(item: ShopItem) -> int:
    """The one subtype field TFS has: the fluid type, or the charges of a rune/charged item."""
    return item.subtype or item.charges


def shop_entry(item: ShopItem) -> str:
    """One entry of `shop_buyable` or `shop_sellable`, in the field order TFS reads for it.

    Field 1 is the talk-mode keyword (`buy <name>`), so it takes the keyword form. A buyable with
    a real name but no subtype writes subtype 0 (TFS creates the item with its default charges);
    a sellable with a subtype but no real name shows the record's name in the trade window,
    since a real name must come first there.
    """
    for label, text in (("name", item.name), ("real name", item.real_name)):
        problem = None if text is None else list_text_problem(text)
        if problem is not None:
            raise ValueError(f"shop item {label} {text!r} {problem}")
    fields = [keyword_form(item.name), str(item.item_id), str(item.price)]
    subtype = shop_subtype(item)
    if item.list_type == "buy":
        if subtype or item.real_name:
            fields.append(str(subtype))
        if item.real_name:
            fields.append(item.real_name)
    else:
        if subtype or item.real_name:
            fields.append(item.real_name or item.name.strip())
        if subtype:
            fields.append(str(subtype))
    return ",".join(fields)


@dataclass(frozen=True, slots=True)
class ShopFields:
    """A list entry's fields as `parseBuyable` / `parseSellable` assign them (raw text)."""

    name: str | None
    item_id: str | None
    price: str | None
    subtype: str | None
    real_name: str | None
    extra: tuple[str, ...]  # fields past the fifth, which TFS warns about and ignores
    skipped_empty: bool  # an empty field was skipped, moving the later ones up


def shop_fields(list_type: ShopListType, entry: str) -> ShopFields:
    """Split one entry the way TFS does: `gmatch("[^,]+")`, then fields by position."""
    raw = entry.split(",")
    fields = [field for field in raw if field]
    name, item_id, price, fourth, fifth = (fields + [None] * 5)[:5]
    subtype, real_name = (fourth, fifth) if list_type == "buy" else (fifth, fourth)
    return ShopFields(
        name=name,
        item_id=item_id,
        price=price,
        subtype=subtype,
        real_name=real_name,
        extra=tuple(fields[5:]),
        skipped_empty=len(fields) != len(raw),
    )


def whole_number(text: str | None) -> int | None:
    """The value of a field written as a whole number, else None."""
    if text is None or _WHOLE_NUMBER.fullmatch(text) is None:
        return None
    return int(text)


def entries(value: str) -> Sequence[str]:
    """A list parameter split as TFS splits it (`gmatch("[^;]+")`: empty entries skipped)."""
    return [entry for entry in value.split(";") if entry]
