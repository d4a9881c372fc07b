"""The XML rules: exact rendering, and a validator whose findings name the problem."""

from __future__ import annotations

import time
from dataclasses import replace
from uuid import UUID

import defusedxml.ElementTree as defused_et
import pytest

from npcforge.generation.validator import MAX_FINDINGS, validate_npc_xml
from npcforge.generation.xmlrules import (
    LIST_FORBIDDEN_CHARS,
    MAX_XML_BYTES,
    list_text_problem,
    render_npc_xml,
    xml_size,
)
from npcforge.npc import Keyword, Look, Messages, NpcRecord, ShopItem

RUMOUR = "They say the old mine is open again."

MIRELA = NpcRecord(
    id=UUID("00000000-0000-0000-0000-000000000001"),
    name="Mirela",
    look=Look(type="player", type_id=136, head=78, body=52, legs=113, feet=95, addons=1, mount=368),
    messages=Messages(
        greet="Welcome to my stall, |PLAYERNAME|.",
        farewell="Safe roads, |PLAYERNAME|.",
        decline="As you wish.",
        no_shop="I have nothing to trade today.",
        on_close_shop="Come again.",
    ),
    health_now=150,
    health_max=150,
    keywords_enabled=True,
    keywords=(
        Keyword(response="I trade herbs brought down from the northern hills.", phrases=("job",)),
        Keyword(response=RUMOUR, phrases=("rumours", "gossip", "old mine")),
    ),
    shop_enabled=True,
    shop_items=(
        ShopItem(list_type="buy", name="health potion", item_id=7618, price=45),
        ShopItem(list_type="sell", name="empty potion flask", item_id=7636, price=5),
        ShopItem(list_type="buy", name="mana potion", item_id=7620, price=50),
        ShopItem(list_type="buy", name="vial of oil", item_id=2006, price=20, subtype=11),
    ),
)

MIRELA_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<npc name="Mirela" script="default.lua" walkinterval="2000" floorchange="0">
  <health now="150" max="150"/>
  <look type="136" head="78" body="52" legs="113" feet="95" addons="1" mount="368"/>
  <parameters>
    <parameter key="message_greet" value="Welcome to my stall, |PLAYERNAME|."/>
    <parameter key="message_farewell" value="Safe roads, |PLAYERNAME|."/>
    <parameter key="message_decline" value="As you wish."/>
    <parameter key="message_noshop" value="I have nothing to trade today."/>
    <parameter key="message_oncloseshop" value="Come again."/>
    <parameter key="module_keywords" value="1"/>
    <parameter key="keywords" value="job;rumours;gossip;old mine"/>
    <parameter key="keyword_reply1" value="I trade herbs brought down from the northern hills."/>
    <parameter key="keyword_reply2" value="They say the old mine is open again."/>
    <parameter key="keyword_reply3" value="They say the old mine is open again."/>
    <parameter key="keyword_reply4" value="They say the old mine is open again."/>
    <parameter key="module_shop" value="1"/>
    <parameter key="shop_buyable" \
value="health potion,7618,45;mana potion,7620,50;vial of oil,2006,20,11"/>
    <parameter key="shop_sellable" value="empty potion flask,7636,5"/>
  </parameters>
</npc>
"""

GROK = NpcRecord(
    id=UUID("00000000-0000-0000-0000-000000000002"),
    name="Grok",
    look=Look(type="monster", type_id=2),
    messages=Messages(
        greet="Hrm. |PLAYERNAME|.",
        farewell="Go.",
        decline="No?",
        no_shop="Nothing.",
        on_close_shop="Done.",
    ),
    walk_interval=0,
    shop_enabled=True,
    shop_items=(ShopItem(list_type="buy", name="bone", item_id=2230, price=3),),
)

GROK_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<npc name="Grok" script="default.lua" walkinterval="0" floorchange="0">
  <health now="100" max="100"/>
  <look type="2"/>
  <parameters>
    <parameter key="message_greet" value="Hrm. |PLAYERNAME|."/>
    <parameter key="message_farewell" value="Go."/>
    <parameter key="message_decline" value="No?"/>
    <parameter key="message_noshop" value="Nothing."/>
    <parameter key="message_oncloseshop" value="Done."/>
    <parameter key="module_shop" value="1"/>
    <parameter key="shop_buyable" value="bone,2230,3"/>
    <parameter key="shop_sellable" value=""/>
  </parameters>
</npc>
"""

CRATE = NpcRecord(
    id=UUID("00000000-0000-0000-0000-000000000003"),
    name='Tom & "Jerry\'s" <Crate>',
    look=Look(type="item", item_id=1739),
    messages=Messages(
        greet="Hi |PLAYERNAME| & welcome <here>!",
        farewell='Say "bye", |PLAYERNAME|.',
        decline="Don't.",
        no_shop="a > b < c",
        on_close_shop="&amp; stays literal",
    ),
    script="crate.lua",
    walk_interval=1500,
    floor_change=True,
    health_now=80,
    health_max=120,
)

CRATE_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<npc name="Tom &amp; &quot;Jerry&apos;s&quot; &lt;Crate&gt;" script="crate.lua" \
walkinterval="1500" floorchange="1">
  <health now="80" max="120"/>
  <look typeex="1739"/>
  <parameters>
    <parameter key="message_greet" value="Hi |PLAYERNAME| &amp; welcome &lt;here&gt;!"/>
    <parameter key="message_farewell" value="Say &quot;bye&quot;, |PLAYERNAME|."/>
    <parameter key="message_decline" value="Don&apos;t."/>
    <parameter key="message_noshop" value="a &gt; b &lt; c"/>
    <parameter key="message_oncloseshop" value="&amp;amp; stays literal"/>
  </parameters>
</npc>
"""

CASES = [(MIRELA, MIRELA_XML), (GROK, GROK_XML), (CRATE, CRATE_XML)]


def edited(xml: str, old: str, new: str) -> str:
    assert old in xml, old
    return xml.replace(old, new, 1)


def assert_finding(findings: list[str], *fragments: str) -> None:
    """Some single finding contains every fragment."""
    assert any(all(f in finding for f in fragments) for finding in findings), findings


# --- Rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("npc", "expected"), CASES, ids=["player", "monster", "item"])
def test_render_matches_the_expected_document(npc: NpcRecord, expected: str) -> None:
    assert render_npc_xml(npc) == expected


@pytest.mark.parametrize(("npc", "expected"), CASES, ids=["player", "monster", "item"])
def test_rendered_document_parses_and_round_trips_values(npc: NpcRecord, expected: str) -> None:
    root = defused_et.fromstring(render_npc_xml(npc))
    assert root.tag == "npc"
    assert root.get("name") == npc.name
    values = {p.get("key"): p.get("value") for p in root.find("parameters")}
    assert values["message_greet"] == npc.messages.greet
    assert values["message_oncloseshop"] == npc.messages.on_close_shop


def test_render_monster_with_mount_and_player_without_one() -> None:
    mounted = replace(GROK, look=Look(type="monster", type_id=2, mount=5))
    assert '  <look type="2" mount="5"/>\n' in render_npc_xml(mounted)
    plain = replace(MIRELA, look=Look(type="player", type_id=128))
    assert (
        '  <look type="128" head="0" body="0" legs="0" feet="0" addons="0"/>\n'
        in render_npc_xml(plain)
    )


def test_render_keeps_line_breaks_in_messages_through_a_parse() -> None:
    npc = replace(CRATE, messages=replace(CRATE.messages, greet="one\ntwo\tthree"))
    xml = render_npc_xml(npc)
    assert 'value="one&#10;two&#9;three"' in xml
    assert validate_npc_xml(xml, npc) == []


def test_render_is_deterministic() -> None:
    assert render_npc_xml(MIRELA) == render_npc_xml(MIRELA)


@pytest.mark.parametrize("bad", ["mana, potion", "mana;potion", "   "])
def test_render_refuses_a_shop_item_name_that_breaks_the_list(bad: str) -> None:
    item = ShopItem(list_type="buy", name=bad, item_id=1, price=1)
    with pytest.raises(ValueError, match="shop item name"):
        render_npc_xml(replace(GROK, shop_items=(item,)))


def test_render_refuses_a_keyword_phrase_that_breaks_the_list() -> None:
    npc = replace(MIRELA, keywords=(Keyword(response="x", phrases=("job;work",)),))
    with pytest.raises(ValueError, match="keyword phrase"):
        render_npc_xml(npc)


def test_render_refuses_a_look_without_its_id() -> None:
    with pytest.raises(ValueError, match="item_id"):
        render_npc_xml(replace(CRATE, look=Look(type="item")))
    with pytest.raises(ValueError, match="type_id"):
        render_npc_xml(replace(GROK, look=Look(type="monster")))


def test_render_refuses_characters_xml_cannot_carry() -> None:
    with pytest.raises(ValueError, match="U\\+0001"):
        render_npc_xml(replace(GROK, name="Gr\x01k"))


def test_disabled_modules_render_no_module_parameters() -> None:
    xml = render_npc_xml(CRATE)
    assert "module_" not in xml
    assert "keyword" not in xml
    assert "shop_" not in xml


# --- list_text_problem and size -----------------------------------------------------------------


def test_list_forbidden_chars() -> None:
    assert LIST_FORBIDDEN_CHARS == (";", ",")


@pytest.mark.parametrize("text", ["mana potion", "old mine", "Brother's ale", "a-b"])
def test_list_text_problem_accepts_plain_text(text: str) -> None:
    assert list_text_problem(text) is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("  \t", "empty"), ("job;work", '";"'), ("mana, potion", '","')],
)
def test_list_text_problem_names_the_reason(text: str, fragment: str) -> None:
    problem = list_text_problem(text)
    assert problem is not None
    assert fragment in problem


def test_xml_size_counts_utf8_bytes() -> None:
    assert xml_size("abc") == 3
    assert xml_size("żółw") == 7


# --- Validation: clean documents ---------------------------------------------------------------


@pytest.mark.parametrize(("npc", "expected"), CASES, ids=["player", "monster", "item"])
def test_rendered_document_validates_clean(npc: NpcRecord, expected: str) -> None:
    assert validate_npc_xml(render_npc_xml(npc), npc) == []


def test_validator_accepts_what_the_record_leaves_open() -> None:
    npc = replace(MIRELA, voice_enabled=True)
    xml = edited(
        render_npc_xml(npc),
        "  <parameters>\n",
        '  <voices>\n    <voice text="Fresh herbs!" interval2="100" margin="1" yell="no"/>\n'
        "  </voices>\n"
        "  <parameters>\n"
        '    <parameter key="message_placedinqueue" value="Wait, |PLAYERNAME|."/>\n'
        '    <parameter key="message_sendtrade" value="Have a look."/>\n'
        '    <parameter key="idletime" value="60"/>\n',
    )
    xml = edited(xml, 'floorchange="0">', 'floorchange="0" speed="220">')
    assert validate_npc_xml(xml, npc) == []


def test_validator_ignores_attribute_and_parameter_order() -> None:
    xml = edited(
        GROK_XML,
        '<npc name="Grok" script="default.lua" walkinterval="0" floorchange="0">',
        '<npc floorchange="0" walkinterval="0" script="default.lua" name="Grok">',
    )
    xml = edited(
        xml,
        '    <parameter key="message_greet" value="Hrm. |PLAYERNAME|."/>\n',
        "",
    )
    xml = edited(
        xml,
        "  </parameters>",
        '    <parameter key="message_greet" value="Hrm. |PLAYERNAME|."/>\n  </parameters>',
    )
    assert validate_npc_xml(xml, GROK) == []


def test_empty_lists_may_be_omitted() -> None:
    xml = edited(GROK_XML, '    <parameter key="shop_sellable" value=""/>\n', "")
    assert validate_npc_xml(xml, GROK) == []


# --- Validation: what the record fixes -----------------------------------------------------------


def test_wrong_name() -> None:
    findings = validate_npc_xml(edited(MIRELA_XML, 'name="Mirela"', 'name="Bob"'), MIRELA)
    assert findings == ['npc@name is "Bob", expected "Mirela"']


def test_wrong_script_walkinterval_and_floorchange() -> None:
    xml = edited(
        CRATE_XML,
        'script="crate.lua" walkinterval="1500" floorchange="1"',
        'script="default.lua" walkinterval="2000" floorchange="true"',
    )
    findings = validate_npc_xml(xml, CRATE)
    assert_finding(findings, "npc@script", '"default.lua"', '"crate.lua"')
    assert_finding(findings, "npc@walkinterval", '"1500"')
    assert_finding(findings, "npc@floorchange", '"true"', '"1"')


def test_wrong_health() -> None:
    findings = validate_npc_xml(edited(MIRELA_XML, 'max="150"', 'max="100"'), MIRELA)
    assert findings == ['health@max is "100", expected "150"']


def test_wrong_price() -> None:
    xml = edited(MIRELA_XML, "mana potion,7620,50", "mana potion,7620,60")
    assert validate_npc_xml(xml, MIRELA) == [
        "shop_buyable item 2 (mana potion): price 60, expected 50"
    ]


def test_wrong_item_id_name_and_subtype() -> None:
    xml = edited(MIRELA_XML, "vial of oil,2006,20,11", "Vial of Oil,2007,20")
    findings = validate_npc_xml(xml, MIRELA)
    assert_finding(findings, "item 3 (vial of oil)", 'name "Vial of Oil"', '"vial of oil"')
    assert_finding(findings, "item 3 (vial of oil)", "itemid 2007, expected 2006")
    assert_finding(findings, "item 3 (vial of oil)", "subtype 0, expected 11")


def test_non_numeric_price() -> None:
    xml = edited(MIRELA_XML, "mana potion,7620,50", "mana potion,7620,fifty")
    assert validate_npc_xml(xml, MIRELA) == [
        'shop_buyable item 2 (mana potion): price "fifty" is not a whole number, expected 50'
    ]


def test_shop_item_count_mismatch() -> None:
    xml = edited(MIRELA_XML, ";vial of oil,2006,20,11", "")
    findings = validate_npc_xml(xml, MIRELA)
    assert_finding(findings, "shop_buyable has 2 items, expected 3")
    assert_finding(findings, "shop_buyable is missing item 3", "vial of oil,2006,20,11")


def test_extra_shop_item() -> None:
    xml = edited(MIRELA_XML, "empty potion flask,7636,5", "empty potion flask,7636,5;rope,2120,8")
    findings = validate_npc_xml(xml, MIRELA)
    assert_finding(findings, "shop_sellable item 2", "rope,2120,8", "not in the record")


def test_malformed_shop_entry() -> None:
    xml = edited(MIRELA_XML, "health potion,7618,45", "health potion 7618 45")
    assert_finding(
        validate_npc_xml(xml, MIRELA), "shop_buyable item 1 (health potion)", "name,itemid,price"
    )


def test_buy_and_sell_lists_swapped() -> None:
    xml = edited(MIRELA_XML, 'key="shop_buyable"', 'key="shop_tmp"')
    xml = edited(xml, 'key="shop_sellable"', 'key="shop_buyable"')
    xml = edited(xml, 'key="shop_tmp"', 'key="shop_sellable"')
    findings = validate_npc_xml(xml, MIRELA)
    assert_finding(findings, "shop_buyable item 1 (health potion)", '"empty potion flask"')
    assert_finding(findings, "shop_sellable has 3 items, expected 1")


def test_missing_sellable_list_when_the_record_has_sell_items() -> None:
    xml = edited(
        MIRELA_XML, '    <parameter key="shop_sellable" value="empty potion flask,7636,5"/>\n', ""
    )
    assert validate_npc_xml(xml, MIRELA) == [
        'missing parameter shop_sellable, expected "empty potion flask,7636,5"'
    ]


def test_wrong_look_type() -> None:
    findings = validate_npc_xml(edited(MIRELA_XML, 'type="136"', 'type="137"'), MIRELA)
    assert findings == ['look@type is "137", expected "136"']


def test_look_missing_mount_and_wrong_kind() -> None:
    findings = validate_npc_xml(edited(MIRELA_XML, ' mount="368"', ""), MIRELA)
    assert findings == ['look@mount is missing, expected "368"']
    findings = validate_npc_xml(edited(CRATE_XML, 'typeex="1739"', 'type="130"'), CRATE)
    assert_finding(findings, "look@typeex is missing", '"1739"')
    assert_finding(findings, "look@type is not allowed", "item look")


def test_monster_look_must_not_carry_outfit_colours() -> None:
    findings = validate_npc_xml(
        edited(GROK_XML, '<look type="2"/>', '<look type="2" head="5"/>'), GROK
    )
    assert findings == ["look@head is not allowed for this NPC's monster look"]


def test_missing_message() -> None:
    xml = edited(MIRELA_XML, '    <parameter key="message_decline" value="As you wish."/>\n', "")
    assert validate_npc_xml(xml, MIRELA) == [
        'missing parameter message_decline, expected "As you wish."'
    ]


def test_placeholder_must_stay_verbatim() -> None:
    xml = edited(MIRELA_XML, "Welcome to my stall, |PLAYERNAME|.", "Welcome to my stall, Bob.")
    findings = validate_npc_xml(xml, MIRELA)
    assert findings == [
        'parameter message_greet is "Welcome to my stall, Bob.",'
        ' expected "Welcome to my stall, |PLAYERNAME|."'
    ]


def test_escaped_values_compare_after_decoding() -> None:
    xml = edited(CRATE_XML, "Don&apos;t.", "Do not.")
    assert validate_npc_xml(xml, CRATE) == [
        'parameter message_decline is "Do not.", expected "Don\'t."'
    ]


# --- Keywords ----------------------------------------------------------------------------------


def test_missing_keyword_set() -> None:
    xml = edited(MIRELA_XML, "job;rumours;gossip;old mine", "job;gossip;old mine")
    assert_finding(validate_npc_xml(xml, MIRELA), 'missing keyword set "rumours"')


def test_synonyms_joined_with_a_comma() -> None:
    xml = edited(MIRELA_XML, "job;rumours;gossip;old mine", "job;rumours,gossip,old mine")
    findings = validate_npc_xml(xml, MIRELA)
    assert_finding(findings, '"rumours,gossip,old mine"', "own set")
    assert_finding(findings, 'missing keyword set "gossip"')


def test_keyword_sets_out_of_order() -> None:
    xml = edited(MIRELA_XML, "job;rumours;gossip;old mine", "rumours;job;gossip;old mine")
    assert_finding(validate_npc_xml(xml, MIRELA), "out of order")


def test_wrong_missing_and_extra_keyword_replies() -> None:
    xml = edited(
        MIRELA_XML,
        '<parameter key="keyword_reply3" value="They say the old mine is open again."/>',
        '<parameter key="keyword_reply3" value="Nothing to tell."/>',
    )
    xml = edited(
        xml,
        '    <parameter key="keyword_reply4" value="They say the old mine is open again."/>\n',
        '    <parameter key="keyword_reply5" value="Extra."/>\n',
    )
    findings = validate_npc_xml(xml, MIRELA)
    assert_finding(findings, "keyword_reply3", '"gossip"', '"Nothing to tell."', RUMOUR)
    assert_finding(findings, "missing parameter keyword_reply4", '"old mine"')
    assert_finding(findings, "keyword_reply5", "only 4 keyword sets")


def test_module_keywords_must_be_on() -> None:
    xml = edited(
        MIRELA_XML,
        '<parameter key="module_keywords" value="1"/>',
        '<parameter key="module_keywords" value="0"/>',
    )
    assert validate_npc_xml(xml, MIRELA) == ['parameter module_keywords is "0", expected "1"']


def test_keyword_parameters_when_keywords_disabled() -> None:
    xml = edited(
        CRATE_XML,
        "  </parameters>",
        '    <parameter key="module_keywords" value="1"/>\n'
        '    <parameter key="keywords" value="job"/>\n'
        '    <parameter key="keyword_reply1" value="None of your business."/>\n'
        "  </parameters>",
    )
    findings = validate_npc_xml(xml, CRATE)
    for key in ("module_keywords", "keywords", "keyword_reply1"):
        assert_finding(findings, f"parameter {key} is not allowed", "keywords are disabled")


# --- Findings that speak TFS (they go back to the model in the repair prompt) -------------------

TRICKY = replace(
    GROK,
    keywords_enabled=True,
    keywords=(
        Keyword("The world.", ("Tibia",)),
        Keyword("Cures poison.", ("anti-venom",)),
        Keyword("Nothing new.", ("news",)),
        Keyword("The bridge is repaired!", ("good news",)),
    ),
    shop_items=(
        ShopItem("buy", "guard helmet", 2498, 2500, real_name="royal helmet"),
        ShopItem("buy", "Magic Plate Armor", 2472, 90000),
        ShopItem("sell", "vial of mana fluid", 2006, 20, subtype=7),
    ),
)
TRICKY_XML = render_npc_xml(TRICKY)


def test_tricky_record_renders_tfs_forms() -> None:
    assert 'value="tibia;anti%-venom;good news;news"' in TRICKY_XML
    assert 'key="keyword_reply3" value="The bridge is repaired!"' in TRICKY_XML
    assert (
        'value="guard helmet,2498,2500,0,royal helmet;magic plate armor,2472,90000"' in TRICKY_XML
    )
    assert 'value="vial of mana fluid,2006,20,vial of mana fluid,7"' in TRICKY_XML
    assert validate_npc_xml(TRICKY_XML, TRICKY) == []


def test_sell_subtype_without_a_real_name_is_explained() -> None:
    xml = edited(
        TRICKY_XML,
        "vial of mana fluid,2006,20,vial of mana fluid,7",
        "vial of mana fluid,2006,20,7",
    )
    assert validate_npc_xml(xml, TRICKY) == [
        "shop_sellable item 1 (vial of mana fluid): TFS reads field 4 of a shop_sellable entry as"
        ' the name shown in the trade window (name,itemid,price[,realName][,subType]), so "7"'
        " would be shown as the name and the subtype lost; a subtype needs a real name before"
        ' it: write "vial of mana fluid,2006,20,vial of mana fluid,7"'
    ]


def test_buy_real_name_in_the_subtype_field_is_explained() -> None:
    xml = edited(
        TRICKY_XML, "guard helmet,2498,2500,0,royal helmet", "guard helmet,2498,2500,royal helmet"
    )
    assert_finding(
        validate_npc_xml(xml, TRICKY),
        "shop_buyable item 1 (guard helmet)",
        "field 4 of a shop_buyable entry as the subtype",
        'write "guard helmet,2498,2500,0,royal helmet"',
    )
    skipped = edited(
        TRICKY_XML, "guard helmet,2498,2500,0,royal helmet", "guard helmet,2498,2500,,royal helmet"
    )
    assert_finding(validate_npc_xml(skipped, TRICKY), "empty field, which TFS skips")


def test_upper_case_and_unescaped_phrases_are_explained() -> None:
    xml = edited(TRICKY_XML, "tibia;anti%-venom;", "Tibia;anti-venom;")
    findings = validate_npc_xml(xml, TRICKY)
    assert_finding(findings, 'keyword set "Tibia" has upper-case letters', 'write "tibia"')
    assert_finding(
        findings, "keyword set \"anti-venom\" holds '-'", "Lua pattern", 'write "anti%-venom"'
    )
    assert len(findings) == 2, findings


def test_a_contained_phrase_written_first_is_explained() -> None:
    xml = edited(TRICKY_XML, "good news;news", "news;good news")
    xml = edited(
        xml, 'keyword_reply3" value="The bridge is repaired!', 'keyword_reply3" value="Nothing new.'
    )
    xml = edited(
        xml, 'keyword_reply4" value="Nothing new.', 'keyword_reply4" value="The bridge is repaired!'
    )
    assert_finding(
        validate_npc_xml(xml, TRICKY),
        'out of order: "news" comes before "good news", which contains it',
        '"good news" would get the reply of "news"',
    )


def test_talk_mode_name_field_is_explained() -> None:
    xml = edited(TRICKY_XML, "magic plate armor,2472", "Magic Plate Armor,2472")
    assert_finding(
        validate_npc_xml(xml, TRICKY),
        'name "Magic Plate Armor", expected "magic plate armor"',
        "talk-mode keyword",
    )


def test_what_tfs_reads_the_same_passes() -> None:
    xml = edited(TRICKY_XML, "magic plate armor,2472,90000", "magic plate armor,2472,90000,0")
    xml = edited(xml, "tibia;anti%-venom;", "tibia;;anti%-venom;")  # TFS skips empty sets
    assert validate_npc_xml(xml, TRICKY) == []


# --- Shop and other modules ----------------------------------------------------------------------


def test_module_shop_when_shop_disabled() -> None:
    xml = edited(
        CRATE_XML,
        "  </parameters>",
        '    <parameter key="module_shop" value="1"/>\n  </parameters>',
    )
    assert validate_npc_xml(xml, CRATE) == [
        "parameter module_shop is not allowed: the shop is disabled for this NPC"
    ]


def test_shop_messages_only_with_a_shop() -> None:
    xml = edited(
        CRATE_XML,
        "  </parameters>",
        '    <parameter key="message_sendtrade" value="Look."/>\n  </parameters>',
    )
    assert_finding(validate_npc_xml(xml, CRATE), "message_sendtrade", "shop is disabled")


def test_travel_only_when_enabled() -> None:
    travel = (
        '    <parameter key="module_travel" value="1"/>\n'
        '    <parameter key="travel_destinations" value="Thais,32369,32241,7,110"/>\n'
        "  </parameters>"
    )
    xml = edited(CRATE_XML, "  </parameters>", travel)
    assert_finding(validate_npc_xml(xml, CRATE), "module_travel", "travel is disabled")
    assert validate_npc_xml(xml, replace(CRATE, travel_enabled=True)) == []
    broken = edited(xml, "Thais,32369,32241,7,110", "Thais,north")
    assert_finding(
        validate_npc_xml(broken, replace(CRATE, travel_enabled=True)), "travel_destinations entry 1"
    )


# --- Structure ---------------------------------------------------------------------------------


def test_unknown_element() -> None:
    xml = edited(GROK_XML, "  <parameters>", '  <script file="evil.lua"/>\n  <parameters>')
    assert validate_npc_xml(xml, GROK) == ["unexpected element <script> inside <npc>"]


def test_unknown_parameter_key() -> None:
    xml = edited(
        GROK_XML, "  </parameters>", '    <parameter key="teleport_to" value="1"/>\n  </parameters>'
    )
    assert validate_npc_xml(xml, GROK) == ['unknown parameter "teleport_to"']


def test_unknown_npc_attribute() -> None:
    xml = edited(GROK_XML, 'floorchange="0">', 'floorchange="0" attackable="1">')
    assert validate_npc_xml(xml, GROK) == ["npc@attackable is not allowed"]


def test_duplicate_parameter_key() -> None:
    xml = edited(
        GROK_XML,
        "  </parameters>",
        '    <parameter key="message_decline" value="No?"/>\n  </parameters>',
    )
    assert validate_npc_xml(xml, GROK) == [
        'parameter "message_decline" appears 2 times, expected once'
    ]


def test_parameter_without_value_and_stray_element() -> None:
    xml = edited(
        GROK_XML,
        "  </parameters>",
        '    <parameter key="message_walkaway"/>\n    <param key="x" value="y"/>\n  </parameters>',
    )
    findings = validate_npc_xml(xml, GROK)
    assert_finding(findings, '"message_walkaway" has no value')
    assert_finding(findings, "unexpected element <param> inside <parameters>")


def test_missing_and_repeated_children() -> None:
    xml = edited(GROK_XML, '  <health now="100" max="100"/>\n', "")
    xml = edited(xml, '  <look type="2"/>\n', '  <look type="2"/>\n  <look type="2"/>\n')
    findings = validate_npc_xml(xml, GROK)
    assert_finding(findings, "<health> is missing")
    assert_finding(findings, "<look> appears 2 times")


def test_voices_when_voice_disabled() -> None:
    voices = (
        '  <voices>\n    <voice text="Bones!" interval2="100" margin="1" yell="no"/>\n  </voices>\n'
    )
    xml = edited(GROK_XML, "  <parameters>", voices + "  <parameters>")
    assert validate_npc_xml(xml, GROK) == [
        "<voices> is not allowed: voices are disabled for this NPC"
    ]
    assert validate_npc_xml(xml, replace(GROK, voice_enabled=True)) == []


def test_voice_without_text() -> None:
    voices = '  <voices>\n    <voice interval2="100" shout="1"/>\n  </voices>\n'
    xml = edited(GROK_XML, "  <parameters>", voices + "  <parameters>")
    findings = validate_npc_xml(xml, replace(GROK, voice_enabled=True))
    assert_finding(findings, "voice 1 has no text")
    assert_finding(findings, "voice 1", "shout")


def test_stray_text_in_npc() -> None:
    xml = edited(GROK_XML, "  <parameters>", "Here is your NPC!\n  <parameters>")
    assert_finding(validate_npc_xml(xml, GROK), "unexpected text", "Here is your NPC!")


def test_wrong_root() -> None:
    assert validate_npc_xml('<monster name="Grok"/>', GROK) == [
        "root element is <monster>, expected <npc>"
    ]


def test_declared_encoding_must_be_utf8() -> None:
    xml = edited(GROK_XML, 'encoding="UTF-8"', 'encoding="ISO-8859-1"')
    assert validate_npc_xml(xml, GROK) == [
        'XML declaration says encoding "ISO-8859-1", expected UTF-8'
    ]


def test_oversize_input() -> None:
    xml = GROK_XML.replace("</npc>", "<!--" + "x" * MAX_XML_BYTES + "--></npc>")
    findings = validate_npc_xml(xml, GROK)
    assert len(findings) == 1
    assert_finding(findings, f"{xml_size(xml)} bytes", str(MAX_XML_BYTES))


def test_size_limit_counts_bytes_not_characters() -> None:
    # 100 000 characters, 200 000+ bytes of two-byte letters: still fine; 140 000 is not.
    fits = GROK_XML.replace("</npc>", "<!--" + "ż" * 100_000 + "--></npc>")
    assert validate_npc_xml(fits, GROK) == []
    too_big = GROK_XML.replace("</npc>", "<!--" + "ż" * 140_000 + "--></npc>")
    assert_finding(validate_npc_xml(too_big, GROK), "bytes")


@pytest.mark.parametrize(
    "xml",
    ["", "not xml at all", '<npc name="Grok">', "<npc><health></npc>", '<npc a="1" a="2"/>'],
)
def test_malformed_xml(xml: str) -> None:
    findings = validate_npc_xml(xml, GROK)
    assert len(findings) == 1
    assert findings[0].startswith("malformed XML")


def test_billion_laughs_is_refused_without_expansion() -> None:
    entities = "".join(
        f'  <!ENTITY lol{n} "{("&lol" + str(n - 1) + ";") * 10}">\n' for n in range(1, 10)
    )
    xml = (
        '<?xml version="1.0"?>\n<!DOCTYPE npc [\n  <!ENTITY lol0 "lol">\n'
        + entities
        + ']>\n<npc name="&lol9;"/>\n'
    )
    started = time.perf_counter()
    findings = validate_npc_xml(xml, GROK)
    assert time.perf_counter() - started < 0.5
    assert len(findings) == 1
    assert_finding(findings, "DOCTYPE")


def test_external_entity_is_refused() -> None:
    xml = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE npc [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        '<npc name="&xxe;"/>\n'
    )
    findings = validate_npc_xml(xml, GROK)
    assert len(findings) == 1
    assert_finding(findings, "DOCTYPE")
    assert "root:" not in findings[0]


def test_undeclared_entity_is_malformed() -> None:
    findings = validate_npc_xml(edited(GROK_XML, 'name="Grok"', 'name="&xxe;"'), GROK)
    assert len(findings) == 1
    assert_finding(findings, "malformed XML", "undefined entity")


def test_findings_are_capped() -> None:
    junk = "".join(f'    <parameter key="junk{n}" value="x"/>\n' for n in range(200))
    xml = edited(GROK_XML, "  </parameters>", junk + "  </parameters>")
    findings = validate_npc_xml(xml, GROK)
    assert len(findings) == MAX_FINDINGS + 1
    assert findings[-1] == f"… and {200 - MAX_FINDINGS} more findings"


def test_long_values_are_shortened_in_findings() -> None:
    xml = edited(GROK_XML, 'value="Go."', f'value="{"a" * 5000}"')
    (finding,) = validate_npc_xml(xml, GROK)
    assert len(finding) < 400
    assert "…" in finding
