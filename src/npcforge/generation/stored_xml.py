"""What is stored: a model's answer written out again from its parsed tree, in the renderer's
style, and judged as written, so nothing the validator did not see (a comment, a processing
instruction, another encoding) ever reaches storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from npcforge.generation.validator import (
    parse_safely,
    validate_npc_xml,
    validate_parsed_npc_xml,
)
from npcforge.generation.xmlrules import (
    MAX_XML_BYTES,
    XML_DECLARATION,
    escape_attribute_unchecked,
    xml_size,
    xml_text_problem,
)
from npcforge.npc import NpcRecord

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

# Plain XML names only: a namespaced or otherwise unusual name is never part of this format.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")
# The format nests three deep (npc > parameters > parameter); anything deeper is not it.
_MAX_DEPTH = 8
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


@dataclass(frozen=True, slots=True)
class CheckedXml:
    """The validator's verdict on a model's answer and, when it passed, the document to store."""

    findings: list[str]
    xml: str | None


def check_npc_xml(xml: str, npc: NpcRecord) -> CheckedXml:
    """Judge `xml` as the XML of `npc` by the document that would be stored.

    The stored document is the parsed tree written out again (`stored_npc_xml`), and that is
    what the validator checks: comments, processing instructions and anything else the parser
    drops never reach storage unseen, and the declaration is always the UTF-8 one.

    The document is parsed once: the writer escapes everything a parse would change (markup
    characters, and CR, LF and tab in attribute values), so the parsed tree is exactly the tree
    of the written document, and that tree is judged with the written text.
    """
    written = _written_out(xml)
    if written is None:
        findings = validate_npc_xml(xml, npc)
        if not findings:  # not expected: the validator passes parsable input only
            findings = ["the XML could not be written out again as parsed"]
        return CheckedXml(findings, None)
    stored, root = written
    findings = validate_parsed_npc_xml(stored, root, npc)
    return CheckedXml(findings, stored if not findings else None)


def stored_npc_xml(xml: str) -> str | None:
    """The parsed tree of `xml` written out in the renderer's style, or None when `xml` is too
    big, does not parse safely, or holds names or nesting this format never has."""
    written = _written_out(xml)
    return None if written is None else written[0]


def _written_out(xml: str) -> tuple[str, Element] | None:
    """`stored_npc_xml`, and the parsed tree it was written from."""
    if xml_size(xml) > MAX_XML_BYTES:
        return None
    root, _ = parse_safely(xml)
    if root is None:
        return None
    out = [XML_DECLARATION, "\n"]
    if not _write_element(root, out, depth=0):
        return None
    out.append("\n")
    stored = "".join(out)
    if xml_text_problem(stored) is not None:  # a character XML cannot carry
        return None
    return stored, root


def _write_element(element: Element, out: list[str], *, depth: int) -> bool:
    tag = element.tag
    if depth > _MAX_DEPTH or not isinstance(tag, str) or not _PLAIN_NAME.fullmatch(tag):
        return False
    out.append("<" + tag)
    for key, value in element.attrib.items():
        if not _PLAIN_NAME.fullmatch(key):
            return False
        out.append(f' {key}="{escape_attribute_unchecked(value)}"')
    children = list(element)
    if not children and not element.text:
        out.append("/>")
        return True
    out.append(">")
    out.append(_escape_text(element.text or ""))
    for child in children:
        if not _write_element(child, out, depth=depth + 1):
            return False
        out.append(_escape_text(child.tail or ""))
    out.append(f"</{tag}>")
    return True


def _escape_text(text: str) -> str:
    return text.translate(_TEXT_ESCAPES)
