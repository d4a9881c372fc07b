"""What is stored is what was validated: the parsed tree written out again, and judged as such."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from npcforge.generation.stored_xml import check_npc_xml, stored_npc_xml
from npcforge.generation.validator import parse_safely, validate_npc_xml
from npcforge.generation.xmlrules import render_npc_xml
from npcforge.npc import Keyword, Look, Messages, NpcRecord, ShopItem

NPC = NpcRecord(
    id=UUID(int=7),
    name="Tomas & Sons <Trade>",
    look=Look(type="player", type_id=128, head=1, body=2, legs=3, feet=4, addons=0),
    messages=Messages(
        greet='Hello "|PLAYERNAME|".',
        farewell="Bye.",
        decline="No.",
        no_shop="Closed.",
        on_close_shop="Thanks.",
    ),
    keywords_enabled=True,
    keywords=(Keyword(response="I sell tools & rope.", phrases=("job", "tools")),),
    shop_enabled=True,
    shop_items=(ShopItem(list_type="buy", name="rope", item_id=3003, price=50),),
)
RENDERED = render_npc_xml(NPC)
BODY_START = "\n  <health"


def inserted(extra: str) -> str:
    """The rendered document with `extra` placed inside <npc>, before <health>."""
    head, sep, rest = RENDERED.partition(BODY_START)
    return f"{head}\n  {extra}{sep}{rest}"


def test_a_rendered_document_is_stored_byte_for_byte() -> None:
    assert stored_npc_xml(RENDERED) == RENDERED
    checked = check_npc_xml(RENDERED, NPC)
    assert (checked.findings, checked.xml) == ([], RENDERED)


@pytest.mark.parametrize(
    "smuggled",
    ['<?php system("id"); ?>', "<!-- evil -->", '<?xml-stylesheet href="x.xsl"?>'],
    ids=["php", "comment", "stylesheet"],
)
def test_what_the_parser_drops_is_not_stored(smuggled: str) -> None:
    raw = inserted(smuggled)
    assert validate_npc_xml(raw, NPC) == []  # the validator never saw it...
    checked = check_npc_xml(raw, NPC)
    assert checked.findings == []
    assert checked.xml is not None
    assert smuggled not in checked.xml  # ...so it is not stored either
    assert checked.xml.replace("\n  \n", "\n") == RENDERED


def test_a_comment_after_the_root_is_not_stored() -> None:
    checked = check_npc_xml(RENDERED + "<!-- trailing --><?pi x?>\n", NPC)
    assert checked.xml == RENDERED


def test_the_declaration_is_always_utf8() -> None:
    raw = RENDERED.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    assert validate_npc_xml(raw, NPC) != []  # the raw answer declared the wrong encoding
    checked = check_npc_xml(raw, NPC)
    assert checked.xml == RENDERED  # what is stored declares, and is, UTF-8


def test_character_references_and_cdata_are_stored_as_plain_escaped_text() -> None:
    raw = inserted("<![CDATA[ ]]>").replace('value="Bye."', 'value="B&#121;e."')
    checked = check_npc_xml(raw, NPC)
    assert checked.xml is not None
    assert "CDATA" not in checked.xml and "&#121;" not in checked.xml
    assert checked.xml.replace("\n   \n", "\n") == RENDERED


def test_findings_come_from_the_document_that_would_be_stored() -> None:
    raw = inserted("<!-- fine --><script>alert(1)</script>")
    checked = check_npc_xml(raw, NPC)
    assert checked.xml is None
    assert checked.findings == ["unexpected element <script> inside <npc>"]


@pytest.mark.parametrize(
    "raw",
    [
        '<!DOCTYPE npc [<!ENTITY x "y">]><npc/>',
        "<npc><unclosed></npc>",
        '<n:npc xmlns:n="urn:x"/>',
        inserted('<x:look xmlns:x="urn:x"/>'),
        inserted("<a>" * 20 + "</a>" * 20),
    ],
    ids=["dtd", "malformed", "namespaced-root", "namespaced-child", "deep"],
)
def test_anything_not_written_out_again_is_never_stored(raw: str) -> None:
    checked = check_npc_xml(raw, NPC)
    assert checked.xml is None
    assert checked.findings


def _shape(element: Any) -> tuple[Any, ...]:
    return (
        element.tag,
        list(element.attrib.items()),
        element.text,
        element.tail,
        [_shape(child) for child in element],
    )


@pytest.mark.parametrize(
    "raw",
    [
        RENDERED,
        RENDERED.replace('value="Bye."', 'value="B&#10;y&#13;e&#9;. &amp; &lt;&gt; &quot;&apos;"'),
        inserted("<![CDATA[ a & b < c ]]> \r\n\t"),
        RENDERED.replace("<parameters>", "<parameters> x &#13; ]]&gt; "),
        inserted('<empty a="1"></empty><text>t</text>'),
    ],
    ids=["rendered", "attribute-escapes", "cdata-and-whitespace", "text-escapes", "empty-elements"],
)
def test_the_stored_document_parses_back_to_the_tree_that_was_judged(raw: str) -> None:
    """check_npc_xml judges the tree it wrote out instead of parsing what it wrote: that is only
    sound while writing out and parsing back changes nothing."""
    root, problem = parse_safely(raw)
    assert root is not None, problem
    stored = stored_npc_xml(raw)
    assert stored is not None
    again, problem = parse_safely(stored)
    assert again is not None, problem
    assert _shape(again) == _shape(root)
    checked = check_npc_xml(raw, NPC)
    assert checked.findings == validate_npc_xml(stored, NPC)
