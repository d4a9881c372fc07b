"""What the console's pages show, computed without I/O: the conversation preview, the XML with
its syntax marked up, the diff of two files, times and money for people."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from markupsafe import Markup, escape

from npcforge.generation.tfs import keyword_sets, shop_entry
from npcforge.npc import NpcRecord

# --- the record ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One line of the conversation preview: what a player says and what the NPC answers."""

    says: str
    answers: str
    keyword: str  # as TFS matches it (lower case, pattern characters escaped)


def conversation(npc: NpcRecord) -> list[Exchange]:
    """The greeting, every keyword phrase in the order TFS tries them (the first set found in
    the player's message answers), then the farewell."""
    lines = [Exchange("hi", npc.messages.greet, "hi")]
    if npc.keywords_enabled:
        lines += [Exchange(s.phrase, s.reply, s.keyword) for s in keyword_sets(npc)]
    if npc.shop_enabled and npc.shop_mode == "trade_window":
        lines.append(Exchange("trade", "(opens the trade window)", "trade"))
    lines.append(Exchange("bye", npc.messages.farewell, "bye"))
    return lines


@dataclass(frozen=True, slots=True)
class ShopRow:
    list_type: str
    name: str
    item_id: int
    price: int
    subtype: int
    real_name: str | None
    entry: str  # the entry as written in shop_buyable / shop_sellable


def shop_rows(npc: NpcRecord) -> list[ShopRow]:
    return [
        ShopRow(
            list_type=item.list_type,
            name=item.name,
            item_id=item.item_id,
            price=item.price,
            subtype=item.subtype or item.charges,
            real_name=item.real_name,
            entry=shop_entry(item),
        )
        for item in npc.shop_items
    ]


# --- XML -------------------------------------------------------------------------------------

_XML_TOKEN = re.compile(
    r"(?P<comment><!--.*?-->)"
    r"|(?P<pi><\?.*?\?>)"
    r"|(?P<tag></?[\w:.-]+)"
    r"|(?P<attr>[\w:.-]+)(?P<eq>=)(?P<value>\"[^\"]*\"|'[^']*')"
    r"|(?P<close>/?>)",
    re.DOTALL,
)


def highlight_xml(text: str) -> Markup:
    """The XML escaped for HTML, its tags, attribute names and values wrapped in classed spans."""
    out: list[str] = []
    pos = 0
    inside = False
    for match in _XML_TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("attr", "value", "eq"):
            kind = "attr"
        if kind == "attr" and not inside:
            continue  # a name=value in text content, not in a tag
        out.append(str(escape(text[pos : match.start()])))
        if kind == "comment":
            out.append(f'<span class="x-comment">{escape(match.group())}</span>')
        elif kind == "pi":
            out.append(f'<span class="x-pi">{escape(match.group())}</span>')
        elif kind == "tag":
            inside = True
            out.append(f'<span class="x-tag">{escape(match.group())}</span>')
        elif kind == "close":
            inside = False
            out.append(f'<span class="x-tag">{escape(match.group())}</span>')
        else:
            out.append(
                f'<span class="x-attr">{escape(match.group("attr"))}</span>='
                f'<span class="x-value">{escape(match.group("value"))}</span>'
            )
        pos = match.end()
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))  # noqa: S704 -- every piece above was escaped


@dataclass(frozen=True, slots=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "same"
    text: str


def diff_xml(old: str, new: str, *, context: int = 3) -> list[DiffLine]:
    """A unified diff of two files, line by line (empty when they are the same)."""
    lines: list[DiffLine] = []
    diff = difflib.unified_diff(
        old.splitlines(), new.splitlines(), "previous", "current", n=context, lineterm=""
    )
    for line in diff:
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("@@"):
            lines.append(DiffLine("hunk", line))
        elif line.startswith("+"):
            lines.append(DiffLine("add", line[1:]))
        elif line.startswith("-"):
            lines.append(DiffLine("del", line[1:]))
        else:
            lines.append(DiffLine("same", line[1:]))
    return lines


# --- people's units --------------------------------------------------------------------------


def ago(at: datetime | None, now: datetime | None = None) -> str:
    """`at` as "3 s", "5 min", "2 h", "4 d" before `now`."""
    if at is None:
        return ""
    seconds = max(0.0, ((now or datetime.now(UTC)) - at).total_seconds())
    return span(seconds)


def span(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return span((end - start).total_seconds())


def money(cost: Any) -> str:
    """A model cost in US dollars, as exact as the attempt rows keep it (up to 6 decimals)."""
    if cost is None:
        return ""
    value = Decimal(cost)
    return f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"


def capped(count: int, cap: int) -> str:
    """A count that stopped at `cap`: "10000+" when there were more."""
    return f"{cap}+" if count > cap else str(count)
