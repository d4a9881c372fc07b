"""Whether a record can be written as an NPC file that TFS reads as meant (SPEC §7).

Pure. One judgement for two callers: `npcforge npc import` refuses such input before anything is
inserted, and the worker fails a job whose stored rows break the rules with `RECORD_INVALID`
(rows the schema allowed before, or that another application wrote) instead of asking a model
for a file that cannot be right. Each problem names its row and says what TFS would do.

Keyword and talk-mode matching (see `tfs`): the player's message is lower-cased and every node
whose words all occur in it may answer; the first one does. Keyword nodes come before the
greeting and farewell nodes, but whether they come before or after the shop's nodes depends on
the order TFS happens to load its modules in (`pairs()` over a table), so a keyword and a shop
node that can match the same message are refused rather than ordered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from npcforge.generation.tfs import (
    FLUID_CONTAINER_IDS,
    SYSTEM_WORDS,
    TALK_MODE_WORDS,
    list_text_problem,
    matched_text,
    module_word_matches,
    shop_subtype,
)
from npcforge.generation.xmlrules import look_problem, xml_text_problem
from npcforge.npc import NpcRecord, ShopItem

__all__ = ["RecordProblem", "record_problems"]

Table = Literal["npcs", "npc_shop_items", "npc_keywords", "npc_keyword_phrases"]

_SHOWN_CHARS = 80


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """One value the file cannot carry as the record means it."""

    table: Table
    column: str
    # Where in the record: () for the NPC row, (item,) for a shop item or keyword, and
    # (keyword, phrase) for a phrase; indexes in record order.
    index: tuple[int, ...]
    row_id: UUID | None
    value: str
    reason: str

    def as_detail(self) -> dict[str, Any]:
        """The entry of `generation_job_error.details.rows` naming this row."""
        detail: dict[str, Any] = {"table": self.table, "column": self.column}
        if self.row_id is not None:
            detail["id"] = str(self.row_id)
        detail["value"] = _shorten(self.value)
        detail["problem"] = self.reason
        return detail

    def describe(self) -> str:
        where = f"{self.table} {self.row_id}" if self.row_id else self.table
        return f"{where} {self.column} {_shorten(self.value)!r} {self.reason}"


def _shorten(value: str) -> str:
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"


@dataclass(frozen=True, slots=True)
class _Node:
    """A talk-mode shop node: `{verb, name}`."""

    index: int
    item: ShopItem

    @property
    def verb(self) -> str:
        return "buy" if self.item.list_type == "buy" else "sell"

    @property
    def name(self) -> str:
        return matched_text(self.item.name)

    @property
    def utterance(self) -> str:
        """What a player says to trade this item in talk mode."""
        return f"{self.verb} {self.name}"

    def matches(self, message: str) -> bool:
        return self.verb in message and self.name in message


def record_problems(npc: NpcRecord, *, whole: bool = False) -> list[RecordProblem]:
    """Everything in `npc` that no NPC file can express as meant; empty when it can be written.

    By default only what the file will carry is judged (the shop and keywords when enabled);
    `whole` judges both lists as if enabled, for input about to be stored.
    """
    shop = npc.shop_enabled or whole
    talk = shop and npc.shop_mode == "talk_mode"
    nodes = [_Node(index, item) for index, item in _shop_order(npc)] if shop else []
    problems = list(_npc_problems(npc))
    if shop:
        problems.extend(_shop_problems(npc, nodes, talk=talk))
    if npc.keywords_enabled or whole:
        problems.extend(_keyword_problems(npc, nodes, shop=shop, talk=talk))
    return problems


def _shop_order(npc: NpcRecord) -> list[tuple[int, ShopItem]]:
    """Shop items in the order TFS adds their nodes: the buy list, then the sell list."""
    indexed = list(enumerate(npc.shop_items))
    return [pair for pair in indexed if pair[1].list_type == "buy"] + [
        pair for pair in indexed if pair[1].list_type == "sell"
    ]


def _npc_problems(npc: NpcRecord) -> Iterator[RecordProblem]:
    look = look_problem(npc)
    if look is not None:
        column = "look_item_id" if npc.look.type == "item" else "look_type_id"
        yield RecordProblem("npcs", column, (), npc.id, npc.look.type, look)
    messages = npc.messages
    for column, text in (
        ("name", npc.name),
        ("greet_message", messages.greet),
        ("farewell_message", messages.farewell),
        ("decline_message", messages.decline),
        ("no_shop_message", messages.no_shop),
        ("on_close_shop_message", messages.on_close_shop),
    ):
        problem = xml_text_problem(text)
        if problem is not None:
            yield RecordProblem("npcs", column, (), npc.id, text, problem)


def _item_problem(
    index: int, item: ShopItem, column: str, value: str, reason: str
) -> RecordProblem:
    return RecordProblem("npc_shop_items", column, (index,), item.id, value, reason)


def _text_problem(text: str) -> str | None:
    return list_text_problem(text) or xml_text_problem(text)


def _shop_problems(npc: NpcRecord, nodes: list[_Node], *, talk: bool) -> Iterator[RecordProblem]:
    for node in nodes:
        index, item = node.index, node.item
        for column, text in (("name", item.name), ("real_name", item.real_name)):
            problem = None if text is None else _text_problem(text)
            if problem is not None and text is not None:
                yield _item_problem(index, item, column, text, problem)
        if item.subtype and item.charges and item.subtype != item.charges:
            yield _item_problem(
                index, item, "charges", str(item.charges),
                f"differs from subtype {item.subtype}: TFS has one field for both (the fluid"
                " type, or the charges of a rune)",
            )  # fmt: skip
        if item.list_type == "buy" and item.item_id in FLUID_CONTAINER_IDS and not item.subtype:
            yield _item_problem(
                index, item, "subtype", str(item.subtype),
                f"must name the fluid: item {item.item_id} is a fluid container, and TFS drops a"
                ' bought fluid container without a subtype ("SubType missing")',
            )  # fmt: skip
        if talk and any(char.isdigit() for char in item.name):
            yield _item_problem(
                index, item, "name", item.name,
                'holds a digit: in a talk-mode shop TFS reads the first number of "'
                f'{node.utterance}" as the amount to trade',
            )  # fmt: skip
    yield from _merged_entries(nodes)
    if talk:
        yield from _shadowed_talk_nodes(nodes)


def _entry_key(item: ShopItem) -> tuple[int, int]:
    """TFS keeps one trade-window entry per item id (per id and fluid type for fluids)."""
    return (item.item_id, shop_subtype(item) if item.item_id in FLUID_CONTAINER_IDS else -1)


def _merged_entries(nodes: list[_Node]) -> Iterator[RecordProblem]:
    first: dict[tuple[str, tuple[int, int]], _Node] = {}
    for node in nodes:
        index, item = node.index, node.item
        key = _entry_key(item)
        earlier = first.setdefault((item.list_type, key), node)
        if earlier is not node:
            yield _item_problem(
                index, item, "item_id", str(item.item_id),
                f"is already in the {item.list_type} list (shop item {earlier.index}"
                f" {earlier.item.name!r}): TFS keeps one trade-window entry per item, so this"
                " one would replace its price",
            )  # fmt: skip
            continue
        bought = first.get(("buy", key)) if item.list_type == "sell" else None
        if bought is None:
            continue
        # TFS adds a sold item to the entry of the same bought item: one name, one subtype.
        if item.real_name is not None and item.real_name != bought.item.real_name:
            shown = bought.item.real_name or "the item's own name"
            yield _item_problem(
                index, item, "real_name", item.real_name,
                f"cannot show: the item is also bought (shop item {bought.index}), and TFS lists"
                f" both in one trade-window entry named {shown!r}",
            )  # fmt: skip
        if shop_subtype(item) and shop_subtype(item) != shop_subtype(bought.item):
            yield _item_problem(
                index, item, "subtype", str(shop_subtype(item)),
                f"cannot apply: the item is also bought (shop item {bought.index}) with subtype"
                f" {shop_subtype(bought.item)}, and TFS keeps one entry with that subtype",
            )  # fmt: skip


def _shadowed_talk_nodes(nodes: list[_Node]) -> Iterator[RecordProblem]:
    for position, node in enumerate(nodes):
        said = node.utterance
        if module_word_matches("trade", said):
            yield _item_problem(
                node.index, node.item, "name", node.item.name,
                f'holds the word "trade": "{said}" would open the trade window instead',
            )  # fmt: skip
            continue
        for earlier in nodes[:position]:
            if earlier.matches(said):
                yield _item_problem(
                    node.index, node.item, "name", node.item.name,
                    f'is never traded in talk mode: "{said}" is answered first by shop item'
                    f" {earlier.index} {earlier.item.name!r} (TFS takes the first entry whose"
                    " words all appear in the message); list this one first or rename it",
                )  # fmt: skip
                break


def _keyword_problems(
    npc: NpcRecord, nodes: list[_Node], *, shop: bool, talk: bool
) -> Iterator[RecordProblem]:
    answered = SYSTEM_WORDS + (TALK_MODE_WORDS if talk else ())
    seen: dict[str, tuple[int, int]] = {}
    for k_index, keyword in enumerate(npc.keywords):
        response_problem = xml_text_problem(keyword.response)
        if response_problem is not None:
            yield RecordProblem(
                "npc_keywords", "response", (k_index,), keyword.id, keyword.response,
                response_problem,
            )  # fmt: skip
        for p_index, phrase in enumerate(keyword.phrases):
            row = keyword.phrase_ids[p_index] if p_index < len(keyword.phrase_ids) else None
            problem = _phrase_problem(phrase, answered, nodes, shop=shop, talk=talk, seen=seen)
            said = matched_text(phrase)
            seen.setdefault(said, (k_index, p_index))
            if problem is not None:
                yield RecordProblem(
                    "npc_keyword_phrases", "phrase", (k_index, p_index), row, phrase, problem
                )


def _phrase_problem(
    phrase: str,
    answered: tuple[str, ...],
    nodes: list[_Node],
    *,
    shop: bool,
    talk: bool,
    seen: dict[str, tuple[int, int]],
) -> str | None:
    problem = _text_problem(phrase)
    if problem is not None:
        return problem
    said = matched_text(phrase)
    if said in seen:
        k_index, p_index = seen[said]
        return (
            f"repeats keywords[{k_index}].phrases[{p_index}] (TFS compares them in lower case):"
            " only the first would ever answer"
        )
    for word in answered:
        if said == word:
            return f'is a word the NPC system answers itself ("{word}")'
        if said in word:
            return (
                f'would also answer when the player says "{word}" (TFS finds keywords anywhere'
                " in the message), so the NPC system would never hear it"
            )
    if shop and module_word_matches("trade", said):
        return (
            'holds the word "trade", which the shop also answers: which one wins depends on'
            " the order TFS happens to load its modules in"
        )
    for node in nodes:
        if node.matches(said):
            return (
                f'also matches the talk-mode shop entry "{node.utterance}" (shop item'
                f" {node.index}): which one answers depends on the order TFS loads its modules in"
            )
        if talk and said in node.utterance:
            return (
                f'would also answer "{node.utterance}" (TFS finds keywords anywhere in the'
                f" message), so shop item {node.index} could not be traded by talking"
            )
    return None
