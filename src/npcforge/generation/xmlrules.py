"""The XML rules (SPEC §7): what the record fixes, and the deterministic renderer.

Pure: no I/O. `render_npc_xml` is the `template` provider's whole job; the validator
(`validator.py`) judges a model's answer against the same rules, and `stored_xml.py` writes the
document that is stored in the renderer's style.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from npcforge.generation.listrules import show as _show
from npcforge.generation.tfs import (
    LIST_SEPARATORS,
    KeywordSet,
    keyword_sets,
    list_text_problem,
    shop_entry,
)
from npcforge.npc import NpcRecord

__all__ = [
    "LIST_FORBIDDEN_CHARS",
    "MAX_XML_BYTES",
    "KeywordSet",
    "expected_parameters",
    "keyword_sets",
    "list_text_problem",
    "look_problem",
    "render_npc_xml",
    "shop_entry",
    "xml_size",
    "xml_text_problem",
]

MAX_XML_BYTES = 262_144
LIST_FORBIDDEN_CHARS = LIST_SEPARATORS

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
INDENT = "  "

MESSAGE_KEYS = (
    "message_greet",
    "message_farewell",
    "message_decline",
    "message_noshop",
    "message_oncloseshop",
)
# Characters XML 1.0 cannot carry at all, not even as character references.
_NOT_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTRIBUTE_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&apos;",
        # Escaped so attribute-value normalisation cannot turn them into spaces.
        "\n": "&#10;",
        "\r": "&#13;",
        "\t": "&#9;",
    }
)


def xml_size(xml: str) -> int:
    """The document's size in UTF-8 bytes (what is stored and served)."""
    return len(xml.encode("utf-8", "surrogatepass"))


# --- What the record fixes ---------------------------------------------------------------------


def npc_attributes(npc: NpcRecord) -> list[tuple[str, str]]:
    return [
        ("name", npc.name),
        ("script", npc.script),
        ("walkinterval", str(npc.walk_interval)),
        ("floorchange", "1" if npc.floor_change else "0"),
    ]


def health_attributes(npc: NpcRecord) -> list[tuple[str, str]]:
    return [("now", str(npc.health_now)), ("max", str(npc.health_max))]


def look_problem(npc: NpcRecord) -> str | None:
    """Why the record's look cannot be written, or None."""
    look = npc.look
    if look.type == "item" and look.item_id is None:
        return "an item look needs look.item_id"
    if look.type != "item" and look.type_id is None:
        return f"a {look.type} look needs look.type_id"
    return None


def look_attributes(npc: NpcRecord) -> list[tuple[str, str]]:
    look = npc.look
    problem = look_problem(npc)
    if problem is not None:
        raise ValueError(problem)
    if look.type == "item":
        return [("typeex", str(look.item_id))]
    attributes = [("type", str(look.type_id))]
    if look.type == "player":
        # TFS reads a missing colour or addon as 0; spell it out so the file says what it means.
        for key, value in (
            ("head", look.head),
            ("body", look.body),
            ("legs", look.legs),
            ("feet", look.feet),
            ("addons", look.addons),
        ):
            attributes.append((key, str(value or 0)))
    if look.mount is not None:
        attributes.append(("mount", str(look.mount)))
    return attributes


def message_parameters(npc: NpcRecord) -> list[tuple[str, str]]:
    messages = npc.messages
    values = (
        messages.greet,
        messages.farewell,
        messages.decline,
        messages.no_shop,
        messages.on_close_shop,
    )
    return list(zip(MESSAGE_KEYS, values, strict=True))


def keyword_sets_checked(npc: NpcRecord) -> list[KeywordSet]:
    sets = keyword_sets(npc)
    for keyword_set in sets:
        problem = list_text_problem(keyword_set.phrase)
        if problem is not None:
            raise ValueError(f"keyword phrase {_show(keyword_set.phrase)} {problem}")
    return sets


def expected_parameters(npc: NpcRecord) -> list[tuple[str, str]]:
    """The `<parameter>` keys and values the record fixes, in rendering order."""
    parameters = message_parameters(npc)
    if npc.keywords_enabled:
        sets = keyword_sets_checked(npc)
        parameters.append(("module_keywords", "1"))
        parameters.append(("keywords", ";".join(s.keyword for s in sets)))
        parameters.extend((f"keyword_reply{n}", s.reply) for n, s in enumerate(sets, start=1))
    if npc.shop_enabled:
        parameters.append(("module_shop", "1"))
        parameters.append(("shop_buyable", ";".join(shop_entry(i) for i in npc.buy_items)))
        parameters.append(("shop_sellable", ";".join(shop_entry(i) for i in npc.sell_items)))
    return parameters


# --- Rendering (the template provider) ---------------------------------------------------------


def xml_text_problem(text: str) -> str | None:
    """Why `text` cannot be an XML attribute value at all, or None."""
    bad = _NOT_XML_CHARS.search(text)
    if bad is None:
        return None
    return f"holds the character U+{ord(bad.group()):04X}, which XML cannot carry"


def xml_chars_only(value: str) -> str:
    problem = xml_text_problem(value)
    if problem is not None:
        raise ValueError(f"{_show(value)} {problem}")
    return value


def _escape_attribute(value: str) -> str:
    return escape_attribute_unchecked(xml_chars_only(value))


def escape_attribute_unchecked(value: str) -> str:
    """An attribute value escaped, its characters not checked: for a writer that checks the
    whole document once (`xml_text_problem`) instead of value by value."""
    return value.translate(_ATTRIBUTE_ESCAPES)


def attributes_text(attributes: Iterable[tuple[str, str]]) -> str:
    return "".join(f' {key}="{_escape_attribute(value)}"' for key, value in attributes)


def render_npc_xml(npc: NpcRecord) -> str:
    """The Jiddo NPC XML for `npc`, byte-for-byte deterministic.

    Raises ValueError when the record cannot be expressed (a list separator in a shop item name or
    keyword phrase, a look without its id, a character XML cannot carry).
    """
    lines = [
        XML_DECLARATION,
        f"<npc{attributes_text(npc_attributes(npc))}>",
        f"{INDENT}<health{attributes_text(health_attributes(npc))}/>",
        f"{INDENT}<look{attributes_text(look_attributes(npc))}/>",
        f"{INDENT}<parameters>",
    ]
    for key, value in expected_parameters(npc):
        lines.append(f"{INDENT * 2}<parameter{attributes_text((('key', key), ('value', value)))}/>")
    lines.append(f"{INDENT}</parameters>")
    lines.append("</npc>")
    return "\n".join(lines) + "\n"
