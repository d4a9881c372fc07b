"""The validator (SPEC §7): everything wrong with a model's answer as the XML of its record.

Pure: no I/O. It judges by the rules the renderer follows (`xmlrules`) and explains every
disagreement in words the model (asked for a repair) and an operator reading
`generation_job_error.details` can act on. Parsing never loads a DTD or expands an entity.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import defusedxml
import defusedxml.ElementTree as defused_et

from npcforge.generation.listrules import keyword_findings, shop_list_findings
from npcforge.generation.listrules import show as _show
from npcforge.generation.tfs import shop_entry, whole_number
from npcforge.generation.xmlrules import (
    MAX_XML_BYTES,
    MESSAGE_KEYS,
    health_attributes,
    keyword_sets_checked,
    look_attributes,
    message_parameters,
    npc_attributes,
    xml_size,
)
from npcforge.npc import NpcRecord, ShopItem, ShopListType

if TYPE_CHECKING:
    # Typing only: parsing always goes through defusedxml.
    from xml.etree.ElementTree import Element

# A garbage answer must not turn into a huge repair prompt or error document.
MAX_FINDINGS = 50
KEYWORD_KEYS = frozenset({"module_keywords", "keywords"})
SHOP_KEYS = frozenset({"module_shop", "shop_buyable", "shop_sellable"})
TRAVEL_KEYS = frozenset({"module_travel", "travel_destinations"})
# Jiddo messages the record leaves open (npcsystem.lua parseParameters), always allowed.
OPEN_MESSAGE_KEYS = frozenset(
    {
        "message_placedinqueue",
        "message_alreadyfocused",
        "message_walkaway",
        "message_walkaway_male",
        "message_walkaway_female",
        "message_idletimeout",
    }
)
# Trade messages: allowed only when the shop is enabled, since they never fire otherwise.
SHOP_MESSAGE_KEYS = frozenset(
    {
        "message_sendtrade",
        "message_buy",
        "message_sell",
        "message_onbuy",
        "message_onsell",
        "message_bought",
        "message_sold",
        "message_missingmoney",
        "message_needmoney",
        "message_needmoremoney",
        "message_missingitem",
        "message_needitem",
        "message_needspace",
        "message_needmorespace",
        "message_onbuy_needspace",
    }
)
# Numeric tuning parameters the record leaves open.
OPEN_NUMBER_KEYS = frozenset({"idletime", "talkradius"})

NPC_FIXED_ATTRIBUTES = ("name", "script", "walkinterval", "floorchange")
# Optional TFS npc attributes the record leaves open; all numeric (pushable is 0/1).
NPC_OPEN_ATTRIBUTES = frozenset({"speed", "walkradius", "pushable"})
NPC_CHILDREN = ("health", "look", "parameters", "voices")
VOICE_ATTRIBUTES = frozenset({"text", "interval2", "margin", "yell"})
YELL_VALUES = frozenset({"yes", "no", "0", "1", "true", "false"})

_KEYWORD_REPLY_KEY = re.compile(r"keyword_reply(\d+)")
_ENCODING_DECLARATION = re.compile(r"<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([^\"']*)[\"']")


# --- Validation --------------------------------------------------------------------------------


class _Findings:
    def __init__(self, limit: int = MAX_FINDINGS) -> None:
        self._limit = limit
        self._items: list[str] = []
        self._dropped = 0

    def add(self, finding: str) -> None:
        if len(self._items) < self._limit:
            self._items.append(finding)
        else:
            self._dropped += 1

    def result(self) -> list[str]:
        if self._dropped:
            return [*self._items, f"… and {self._dropped} more findings"]
        return list(self._items)


def parse_safely(xml: str) -> tuple[Element | None, str | None]:
    """Parse without ever loading a DTD or expanding an entity; (root, None) or (None, finding)."""
    try:
        root: Element = defused_et.fromstring(
            xml, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DTDForbidden:
        return None, "XML must not contain a DOCTYPE declaration (DTDs are not allowed)"
    except defusedxml.EntitiesForbidden:
        return None, "XML must not declare entities"
    except defusedxml.ExternalReferenceForbidden:
        return None, "XML must not reference external entities"
    except defused_et.ParseError as exc:
        return None, f"malformed XML: {exc}"
    except ValueError as exc:  # includes UnicodeEncodeError for lone surrogates
        return None, f"malformed XML: {exc}"
    return root, None


def _check_text(element: Element, where: str, findings: _Findings) -> None:
    """Only whitespace may sit between the elements of this format."""
    if element.text and element.text.strip():
        findings.add(f"unexpected text inside {where}: {_show(element.text.strip())}")
    for child in element:
        if child.tail and child.tail.strip():
            findings.add(
                f"unexpected text after <{child.tag}> in {where}: {_show(child.tail.strip())}"
            )


def _check_no_children(element: Element, where: str, findings: _Findings) -> None:
    for child in element:
        findings.add(f"unexpected element <{child.tag}> inside {where}")
    if element.text and element.text.strip():
        findings.add(f"unexpected text inside {where}: {_show(element.text.strip())}")


def _check_fixed_attributes(
    element: Element,
    label: str,
    expected: Sequence[tuple[str, str]],
    findings: _Findings,
) -> None:
    for key, want in expected:
        got = element.get(key)
        if got is None:
            findings.add(f"{label}@{key} is missing, expected {_show(want)}")
        elif got != want:
            findings.add(f"{label}@{key} is {_show(got)}, expected {_show(want)}")


def _is_whole_number(value: str) -> bool:
    return whole_number(value) is not None


def _children_by_tag(root: Element) -> dict[str, list[Element]]:
    grouped: dict[str, list[Element]] = {}
    for child in root:
        grouped.setdefault(str(child.tag), []).append(child)
    return grouped


def _single(
    grouped: dict[str, list[Element]], tag: str, findings: _Findings, *, required: bool
) -> Element | None:
    elements = grouped.get(tag, [])
    if not elements:
        if required:
            findings.add(f"<{tag}> is missing")
        return None
    if len(elements) > 1:
        findings.add(f"<{tag}> appears {len(elements)} times, expected once")
    return elements[0]


def _check_declaration(xml: str, findings: _Findings) -> None:
    match = _ENCODING_DECLARATION.match(xml)
    if match is not None and match.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        findings.add(f"XML declaration says encoding {_show(match.group(1))}, expected UTF-8")


def _check_npc_element(root: Element, npc: NpcRecord, findings: _Findings) -> None:
    _check_fixed_attributes(root, "npc", npc_attributes(npc), findings)
    for key, value in root.attrib.items():
        if key in NPC_FIXED_ATTRIBUTES:
            continue
        if key not in NPC_OPEN_ATTRIBUTES:
            findings.add(f"npc@{key} is not allowed")
        elif key == "pushable" and value not in ("0", "1"):
            findings.add(f'npc@pushable is {_show(value)}, expected "0" or "1"')
        elif key != "pushable" and not _is_whole_number(value):
            findings.add(f"npc@{key} is {_show(value)}, expected a whole number")
    _check_text(root, "<npc>", findings)


def _check_fixed_element(
    element: Element,
    expected: Sequence[tuple[str, str]],
    findings: _Findings,
    *,
    why_not: str = "",
) -> None:
    """An element whose attributes the record fixes, all of them, and nothing inside."""
    tag = str(element.tag)
    _check_fixed_attributes(element, tag, expected, findings)
    allowed = {key for key, _ in expected}
    for key in element.attrib:
        if key not in allowed:
            findings.add(f"{tag}@{key} is not allowed{why_not}")
    _check_no_children(element, f"<{tag}>", findings)


def _check_voices(element: Element, findings: _Findings) -> None:
    for key in element.attrib:
        findings.add(f"voices@{key} is not allowed")
    _check_text(element, "<voices>", findings)
    for number, voice in enumerate(element, start=1):
        if voice.tag != "voice":
            findings.add(f"unexpected element <{voice.tag}> inside <voices>")
            continue
        label = f"voice {number}"
        text = voice.get("text")
        if text is None or not text.strip():
            findings.add(f"{label} has no text")
        for key, value in voice.attrib.items():
            if key not in VOICE_ATTRIBUTES:
                findings.add(f"{label}: attribute {key} is not allowed")
            elif key in ("interval2", "margin") and not _is_whole_number(value):
                findings.add(f"{label}: {key} is {_show(value)}, expected a whole number")
            elif key == "yell" and value.lower() not in YELL_VALUES:
                findings.add(f'{label}: yell is {_show(value)}, expected "yes" or "no"')
        _check_no_children(voice, f"<voice> {number}", findings)


def _collect_parameters(element: Element | None, findings: _Findings) -> dict[str, str]:
    """Key → value of the first occurrence; structure problems and duplicates become findings."""
    parameters: dict[str, str] = {}
    if element is None:
        return parameters
    for attribute in element.attrib:
        findings.add(f"parameters@{attribute} is not allowed")
    _check_text(element, "<parameters>", findings)
    seen: Counter[str] = Counter()
    for number, child in enumerate(element, start=1):
        if child.tag != "parameter":
            findings.add(f"unexpected element <{child.tag}> inside <parameters>")
            continue
        key = child.get("key")
        value = child.get("value")
        if key is None:
            findings.add(f"<parameter> {number} has no key attribute")
            continue
        for attribute in child.attrib:
            if attribute not in ("key", "value"):
                findings.add(f"parameter {_show(key)}: attribute {attribute} is not allowed")
        _check_no_children(child, f"parameter {_show(key)}", findings)
        if value is None:
            findings.add(f"parameter {_show(key)} has no value attribute")
            value = ""
        seen[key] += 1
        parameters.setdefault(key, value)
    for key, count in seen.items():
        if count > 1:
            findings.add(f"parameter {_show(key)} appears {count} times, expected once")
    return parameters


def _check_value(
    parameters: dict[str, str], key: str, want: str, findings: _Findings, *, context: str = ""
) -> None:
    got = parameters.get(key)
    if got is None:
        findings.add(f"missing parameter {key}{context}, expected {_show(want)}")
    elif got != want:
        findings.add(f"parameter {key}{context} is {_show(got)}, expected {_show(want)}")


def _check_keywords(parameters: dict[str, str], npc: NpcRecord, findings: _Findings) -> None:
    present = [key for key in parameters if key in KEYWORD_KEYS or key.startswith("keyword_reply")]
    if not npc.keywords_enabled:
        for key in present:
            findings.add(f"parameter {key} is not allowed: keywords are disabled for this NPC")
        return
    _check_value(parameters, "module_keywords", "1", findings)
    sets = keyword_sets_checked(npc)
    value = parameters.get("keywords")
    if value is None:
        if sets:
            expected = ";".join(s.keyword for s in sets)
            findings.add(f"missing parameter keywords, expected {_show(expected)}")
    else:
        for finding in keyword_findings(value, sets):
            findings.add(finding)
    for number, keyword_set in enumerate(sets, start=1):
        context = f" (reply to {_show(keyword_set.keyword)})"
        _check_value(
            parameters, f"keyword_reply{number}", keyword_set.reply, findings, context=context
        )
    for key in present:
        if key in KEYWORD_KEYS:
            continue
        match = _KEYWORD_REPLY_KEY.fullmatch(key)
        if match is None or match.group(1).startswith("0"):
            findings.add(f"unknown parameter {_show(key)}")
        elif int(match.group(1)) > len(sets):
            findings.add(f"unexpected parameter {key}: there are only {len(sets)} keyword sets")


def _check_shop(parameters: dict[str, str], npc: NpcRecord, findings: _Findings) -> None:
    if not npc.shop_enabled:
        for key in parameters:
            if key in SHOP_KEYS or key in SHOP_MESSAGE_KEYS:
                findings.add(f"parameter {key} is not allowed: the shop is disabled for this NPC")
        return
    _check_value(parameters, "module_shop", "1", findings)
    lists: tuple[tuple[str, ShopListType, tuple[ShopItem, ...]], ...] = (
        ("shop_buyable", "buy", npc.buy_items),
        ("shop_sellable", "sell", npc.sell_items),
    )
    for key, list_type, items in lists:
        value = parameters.get(key)
        if value is None:
            if items:
                expected = ";".join(shop_entry(item) for item in items)
                findings.add(f"missing parameter {key}, expected {_show(expected)}")
            continue
        for finding in shop_list_findings(key, list_type, value, items):
            findings.add(finding)


def _check_travel(parameters: dict[str, str], npc: NpcRecord, findings: _Findings) -> None:
    if not npc.travel_enabled:
        for key in parameters:
            if key in TRAVEL_KEYS:
                findings.add(f"parameter {key} is not allowed: travel is disabled for this NPC")
        return
    module = parameters.get("module_travel")
    if module is not None and module != "1":
        findings.add(f'parameter module_travel is {_show(module)}, expected "1"')
    destinations = parameters.get("travel_destinations") or ""
    for number, entry in enumerate(destinations.split(";"), start=1):
        if not entry:
            continue
        fields = entry.split(",")
        # name,x,y,z,cost[,premium] (TravelModule:parseDestinations)
        if len(fields) not in (5, 6) or not all(_is_whole_number(f) for f in fields[1:5]):
            findings.add(
                f"travel_destinations entry {number} {_show(entry)}: expected"
                " name,x,y,z,cost[,premium] with whole numbers"
            )


def _check_open_parameters(parameters: dict[str, str], findings: _Findings) -> None:
    """Keys not governed by a module check: the fixed messages or open keys, else unknown."""
    governed = KEYWORD_KEYS | SHOP_KEYS | SHOP_MESSAGE_KEYS | TRAVEL_KEYS
    for key, value in parameters.items():
        if key in governed or key.startswith("keyword_reply") or key in MESSAGE_KEYS:
            continue
        if key in OPEN_NUMBER_KEYS:
            if not _is_whole_number(value):
                findings.add(f"parameter {key} is {_show(value)}, expected a whole number")
        elif key not in OPEN_MESSAGE_KEYS:
            findings.add(f"unknown parameter {_show(key)}")


def validate_npc_xml(xml: str, npc: NpcRecord) -> list[str]:
    """Everything wrong with `xml` as the XML of `npc`; an empty list means it may be stored.

    At most MAX_FINDINGS findings, plus one line counting the rest. Raises ValueError only when the
    record itself cannot be expressed (see `render_npc_xml`).
    """
    too_big = _size_finding(xml)
    if too_big is not None:
        return [too_big]
    root, problem = parse_safely(xml)
    if root is None:
        return [problem or "malformed XML"]
    return _validate_tree(xml, root, npc)


def validate_parsed_npc_xml(xml: str, root: Element, npc: NpcRecord) -> list[str]:
    """`validate_npc_xml` for a document already parsed: `root` is the tree `parse_safely`
    gives for `xml` (the caller vouches for that; nothing is parsed again)."""
    too_big = _size_finding(xml)
    if too_big is not None:
        return [too_big]
    return _validate_tree(xml, root, npc)


def _size_finding(xml: str) -> str | None:
    size = xml_size(xml)
    if size > MAX_XML_BYTES:
        return f"XML is {size} bytes, more than the limit of {MAX_XML_BYTES} bytes"
    return None


def _validate_tree(xml: str, root: Element, npc: NpcRecord) -> list[str]:
    if root.tag != "npc":
        return [f"root element is <{root.tag}>, expected <npc>"]

    findings = _Findings()
    _check_declaration(xml, findings)
    _check_npc_element(root, npc, findings)

    grouped = _children_by_tag(root)
    for tag in grouped:
        if tag not in NPC_CHILDREN:
            findings.add(f"unexpected element <{tag}> inside <npc>")
    health = _single(grouped, "health", findings, required=True)
    if health is not None:
        _check_fixed_element(health, health_attributes(npc), findings)
    look = _single(grouped, "look", findings, required=True)
    if look is not None:
        why_not = f" for this NPC's {npc.look.type} look"
        _check_fixed_element(look, look_attributes(npc), findings, why_not=why_not)
    if "voices" in grouped and not npc.voice_enabled:
        findings.add("<voices> is not allowed: voices are disabled for this NPC")
    else:
        voices = _single(grouped, "voices", findings, required=False)
        if voices is not None:
            _check_voices(voices, findings)

    parameters = _collect_parameters(
        _single(grouped, "parameters", findings, required=True), findings
    )
    for key, want in message_parameters(npc):
        _check_value(parameters, key, want, findings)
    _check_keywords(parameters, npc, findings)
    _check_shop(parameters, npc, findings)
    _check_travel(parameters, npc, findings)
    _check_open_parameters(parameters, findings)
    return findings.result()
