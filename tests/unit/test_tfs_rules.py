"""What TFS reads: list encodings, keyword forms and order, and the record check (pure)."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

import pytest

from npcforge.generation.recordcheck import RecordProblem, record_problems
from npcforge.generation.tfs import (
    keyword_form,
    keyword_sets,
    lua_lower,
    module_word_matches,
    shop_entry,
    shop_fields,
)
from npcforge.npc import Keyword, Look, Messages, NpcRecord, ShopItem

ROW = UUID("00000000-0000-0000-0000-00000000aaaa")

BASE = NpcRecord(
    id=UUID("00000000-0000-0000-0000-000000000012"),
    name="Vesna",
    look=Look(type="monster", type_id=57),
    messages=Messages(
        greet="Hi |PLAYERNAME|.", farewell="Bye.", decline="No.", no_shop="None.", on_close_shop="."
    ),
)


def shop(
    *items: ShopItem, mode: str = "trade_window", keywords: tuple[Keyword, ...] = ()
) -> NpcRecord:
    return replace(
        BASE,
        shop_enabled=True,
        shop_mode=mode,  # type: ignore[arg-type]
        shop_items=items,
        keywords_enabled=bool(keywords),
        keywords=keywords,
    )


def phrases(*texts: str, mode: str | None = None, items: tuple[ShopItem, ...] = ()) -> NpcRecord:
    npc = replace(
        BASE,
        keywords_enabled=True,
        keywords=tuple(Keyword(f"reply {i}", (text,)) for i, text in enumerate(texts)),
    )
    if mode is not None:
        npc = replace(npc, shop_enabled=True, shop_mode=mode, shop_items=items)  # type: ignore[arg-type]
    return npc


def reasons(npc: NpcRecord, **kwargs: bool) -> list[str]:
    return [f"{p.column}={p.value}: {p.reason}" for p in record_problems(npc, **kwargs)]


def assert_reason(npc: NpcRecord, *fragments: str) -> None:
    found = reasons(npc)
    assert any(all(f in r for f in fragments) for r in found), found


# --- keyword forms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phrase", "written"),
    [
        ("Tibia", "tibia"),
        ("anti-venom", "anti%-venom"),
        ("100%", "100%%"),
        ("what?", "what%?"),
        ("(secret)", "%(secret%)"),
        ("^top$", "%^top%$"),
        ("[a.b]*+", "%[a%.b%]%*%+"),
        ("  good news ", "good news"),
        ("Zürich", "zürich"),
        ("ÄRGER", "Ärger"),  # Lua's string.lower changes ASCII letters only
        ('Tom\'s "map" & co', 'tom\'s "map" & co'),
    ],
)
def test_keyword_form_lower_cases_ascii_and_escapes_lua_patterns(phrase: str, written: str) -> None:
    assert keyword_form(phrase) == written


def test_lua_lower_leaves_non_ascii_letters() -> None:
    assert lua_lower("ÉCLAIR Über") == "Éclair Über"


def test_a_phrase_comes_before_every_phrase_it_contains() -> None:
    npc = replace(
        BASE,
        keywords_enabled=True,
        keywords=(
            Keyword("news", ("news", "job")),
            Keyword("good news", ("Good News",)),
            Keyword("mine", ("mine",)),
            Keyword("old mine", ("old mine",)),
            Keyword("old mine news", ("old mine news",)),
        ),
    )
    order = [s.keyword for s in keyword_sets(npc)]
    assert order == ["job", "good news", "old mine news", "news", "old mine", "mine"]
    assert [s.reply for s in keyword_sets(npc)][:2] == ["news", "good news"]
    assert [s.entry for s in keyword_sets(npc)] == [0, 1, 4, 0, 3, 2]


def test_record_order_is_kept_when_nothing_contains_anything() -> None:
    npc = phrases("zeta", "alpha", "mid", "beta")
    assert [s.keyword for s in keyword_sets(npc)] == ["zeta", "alpha", "mid", "beta"]


def test_module_word_matcher_follows_the_lua() -> None:
    assert module_word_matches("trade", "trade")
    assert module_word_matches("trade", "let us trade now")
    assert not module_word_matches("trade", "traders")
    assert not module_word_matches("trade", "trade with traders")  # any glued occurrence vetoes
    assert not module_word_matches("trade", "c+trade")


# --- shop entries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "entry"),
    [
        (ShopItem("buy", "health potion", 7618, 45), "health potion,7618,45"),
        (
            ShopItem("buy", "vial of mana fluid", 2006, 100, subtype=7),
            "vial of mana fluid,2006,100,7",
        ),
        (
            ShopItem("buy", "sudden death rune", 2268, 325, charges=5),
            "sudden death rune,2268,325,5",
        ),
        (
            ShopItem("buy", "helmet", 2498, 9, real_name="Royal Helmet"),
            "helmet,2498,9,0,Royal Helmet",
        ),
        (
            ShopItem("buy", "mana", 2006, 9, subtype=7, real_name="vial of mana"),
            "mana,2006,9,7,vial of mana",
        ),
        (ShopItem("sell", "empty vial", 2006, 5), "empty vial,2006,5"),
        (
            ShopItem("sell", "Vial of Mana Fluid", 2006, 20, subtype=7),
            "vial of mana fluid,2006,20,Vial of Mana Fluid,7",
        ),
        (ShopItem("sell", "shield", 2516, 9, real_name="old shield"), "shield,2516,9,old shield"),
        (ShopItem("sell", "uh", 2273, 9, charges=1, real_name="UH rune"), "uh,2273,9,UH rune,1"),
        (ShopItem("buy", "Great Health-Potion", 7591, 190), "great health%-potion,7591,190"),
    ],
)
def test_shop_entries_follow_each_lists_field_order(item: ShopItem, entry: str) -> None:
    assert shop_entry(item) == entry


def test_tfs_reads_back_what_the_entry_means() -> None:
    sold = shop_fields("sell", shop_entry(ShopItem("sell", "mana", 2006, 20, subtype=7)))
    assert (sold.real_name, sold.subtype) == ("mana", "7")
    naive = shop_fields("sell", "mana,2006,20,7")
    assert (naive.real_name, naive.subtype) == ("7", None)
    skipped = shop_fields("buy", "helmet,2498,9,,Royal Helmet")
    assert (skipped.subtype, skipped.real_name, skipped.skipped_empty) == (
        "Royal Helmet",
        None,
        True,
    )


# --- the record check --------------------------------------------------------------------------


def test_a_clean_record_has_no_problems() -> None:
    npc = shop(
        ShopItem("buy", "vial of mana fluid", 2006, 100, subtype=7),
        ShopItem("sell", "empty vial", 2006, 5),
        ShopItem("buy", "sudden death rune", 2268, 325, charges=5),
        keywords=(Keyword("x", ("Tibia", "anti-venom", "news", "good news")),),
    )
    assert record_problems(npc) == []


def test_problems_name_the_row_and_say_what_tfs_would_do() -> None:
    item = ShopItem("buy", "vial", 2006, 10, id=ROW)
    [problem] = record_problems(shop(item))
    assert problem == RecordProblem("npc_shop_items", "subtype", (0,), ROW, "0", problem.reason)
    assert "fluid container" in problem.reason and "SubType missing" in problem.reason
    assert problem.as_detail() == {
        "table": "npc_shop_items", "column": "subtype", "id": str(ROW), "value": "0",
        "problem": problem.reason,
    }  # fmt: skip


def test_list_separators_in_names_and_real_names() -> None:
    assert_reason(
        shop(ShopItem("buy", "vial, large", 2006, 1, subtype=1)), "name=vial, large", '","'
    )
    assert_reason(shop(ShopItem("sell", "x", 2120, 1, real_name="a;b")), "real_name=a;b", '";"')


def test_subtype_and_charges_share_one_field() -> None:
    assert_reason(
        shop(ShopItem("buy", "rune", 2268, 1, subtype=2, charges=3)), "charges=3", "one field"
    )
    assert record_problems(shop(ShopItem("buy", "rune", 2268, 1, subtype=3, charges=3))) == []


def test_the_same_item_twice_in_one_list() -> None:
    npc = shop(ShopItem("buy", "rope", 2120, 50), ShopItem("buy", "long rope", 2120, 60))
    assert_reason(npc, "item_id=2120", "already in the buy list", "'rope'")
    fluids = shop(
        ShopItem("buy", "mana", 2006, 50, subtype=7), ShopItem("buy", "life", 2006, 60, subtype=10)
    )
    assert record_problems(fluids) == []  # TFS keeps fluids apart by their subtype


def test_a_sold_item_that_is_also_bought_shares_its_entry() -> None:
    npc = shop(
        ShopItem("buy", "rune", 2268, 300, charges=5),
        ShopItem("sell", "rune", 2268, 100, charges=3, real_name="old rune"),
    )
    assert_reason(npc, "real_name=old rune", "one trade-window entry")
    assert_reason(npc, "subtype=3", "subtype 5")
    same = shop(ShopItem("buy", "rune", 2268, 300, charges=5), ShopItem("sell", "rune", 2268, 100))
    assert record_problems(same) == []


@pytest.mark.parametrize(
    ("phrase", "fragment"),
    [
        ("bye", 'answers itself ("bye")'),
        ("Hi", 'answers itself ("hi")'),
        ("TRADE", 'answers itself ("trade")'),
        ("no", 'answers itself ("no")'),
        ("by", 'says "bye"'),
        ("fare", 'says "farewell"'),
        ("ell", 'says "hello"'),
    ],
)
def test_words_the_npc_system_answers_are_refused(phrase: str, fragment: str) -> None:
    assert_reason(phrases(phrase), fragment)


def test_buy_and_sell_only_in_a_talk_mode_shop() -> None:
    assert record_problems(phrases("buy", "sell")) == []
    assert_reason(phrases("buy", mode="talk_mode"), 'answers itself ("buy")')
    assert_reason(phrases("se", mode="talk_mode"), 'says "sell"')


def test_trade_inside_a_phrase_collides_with_the_shop() -> None:
    assert_reason(phrases("trade routes", mode="trade_window"), 'the word "trade"')
    assert record_problems(phrases("trade routes")) == []  # no shop, nothing else answers it
    assert record_problems(phrases("traders", mode="trade_window")) == []


def test_keywords_and_talk_mode_entries_that_match_each_other() -> None:
    potion = ShopItem("buy", "health potion", 7618, 45)
    assert_reason(phrases("potion", mode="talk_mode", items=(potion,)), '"buy health potion"')
    assert record_problems(phrases("potion", mode="trade_window", items=(potion,))) == []
    # A shop entry that matches a phrase may take it in any shop mode.
    assert_reason(
        phrases("buy health potion now", mode="trade_window", items=(potion,)),
        "talk-mode shop entry",
    )


def test_talk_mode_entries_shadowed_by_an_earlier_one() -> None:
    npc = shop(
        ShopItem("buy", "health potion", 7618, 45, id=ROW),
        ShopItem("buy", "great health potion", 7591, 190),
        mode="talk_mode",
    )
    assert_reason(npc, "name=great health potion", "answered first by shop item 0")
    assert record_problems(replace(npc, shop_mode="trade_window")) == []
    fine = shop(
        ShopItem("buy", "great health potion", 7591, 190),
        ShopItem("buy", "health potion", 7618, 45),
        mode="talk_mode",
    )
    assert record_problems(fine) == []


def test_talk_mode_names_without_digits_or_trade() -> None:
    assert_reason(shop(ShopItem("buy", "sword of 2 suns", 2376, 9), mode="talk_mode"), "amount")
    assert_reason(
        shop(ShopItem("buy", "trade contract", 2376, 9), mode="talk_mode"), "trade window"
    )


def test_repeated_phrase_in_lua_lower_case() -> None:
    assert_reason(phrases("Job", "job"), "repeats keywords[0].phrases[0]")


def test_only_what_the_file_carries_is_judged_unless_whole() -> None:
    npc = replace(phrases("bye"), keywords_enabled=False)
    assert record_problems(npc) == []
    assert record_problems(npc, whole=True) != []


def test_texts_xml_cannot_carry() -> None:
    assert_reason(replace(BASE, name="Gr\x01k"), "name=Gr\x01k", "U+0001")
