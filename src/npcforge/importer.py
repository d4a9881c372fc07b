"""`npcforge npc import`: a strict JSON schema for one NPC, inserted in one transaction."""

from __future__ import annotations

import json
import uuid
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from npcforge.db import npcs
from npcforge.generation.recordcheck import RecordProblem, record_problems
from npcforge.generation.tfs import list_text_problem
from npcforge.npc import Keyword, Look, Messages, NpcRecord, ShopItem

# Owner of NPCs imported without an explicit ownerId (dev, demo, scripts).
LOCAL_OWNER_ID = uuid.uuid5(uuid.NAMESPACE_URL, "npcforge:local-owner")
MAX_LIST_ITEMS = 255

Color = Annotated[int, Field(ge=0, le=132)]
Message = Annotated[str, Field(min_length=1, max_length=512)]


class ImportError_(ValueError):
    """The input file cannot be imported; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, str_strip_whitespace=True
    )


class LookIn(_Strict):
    type: Literal["player", "monster", "item"]
    type_id: int | None = Field(default=None, gt=0, le=65535)
    item_id: int | None = Field(default=None, gt=0, le=65535)
    head: Color | None = None
    body: Color | None = None
    legs: Color | None = None
    feet: Color | None = None
    addons: int | None = Field(default=None, ge=0, le=3)
    mount: int | None = Field(default=None, ge=0, le=65535)

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        colors = {"head": self.head, "body": self.body, "legs": self.legs, "feet": self.feet}
        colors["addons"] = self.addons
        if self.type in ("player", "monster") and self.type_id is None:
            raise ValueError(f"typeId is required for a {self.type} look")
        if self.type == "item":
            if self.item_id is None:
                raise ValueError("itemId is required for an item look")
            if self.type_id is not None:
                raise ValueError("typeId must be null for an item look")
        elif self.item_id is not None:
            raise ValueError(f"itemId must be null for a {self.type} look")
        if self.type == "player":
            missing = [name for name, value in colors.items() if value is None]
            if missing:
                raise ValueError("a player look needs " + ", ".join(missing))
        else:
            present = [name for name, value in colors.items() if value is not None]
            if present:
                raise ValueError(f"{', '.join(present)} must be null for a {self.type} look")
        return self


class StatsIn(_Strict):
    health_now: int = Field(ge=0, le=65535)
    health_max: int = Field(ge=1, le=65535)
    walk_interval: int = Field(default=2000, ge=0, le=65535)
    floor_change: bool = False

    @model_validator(mode="after")
    def _health(self) -> Self:
        if self.health_max < self.health_now:
            raise ValueError("healthMax must be at least healthNow")
        return self


class MessagesIn(_Strict):
    greet: Message
    farewell: Message
    decline: Message
    no_shop: Message
    on_close_shop: Message


class ModulesIn(_Strict):
    focus_enabled: bool = False
    travel_enabled: bool = False
    voice_enabled: bool = False
    shop_enabled: bool = False
    shop_mode: Literal["trade_window", "talk_mode"] = "trade_window"
    keywords_enabled: bool = False


def _list_safe(value: str | None) -> str | None:
    if value is None:
        return None
    problem = list_text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class ShopItemIn(_Strict):
    list_type: Literal["buy", "sell"]
    name: str = Field(min_length=1, max_length=255)
    item_id: int = Field(gt=0, le=65535)
    price: int = Field(ge=0, le=2_147_483_647)
    subtype: int = Field(default=0, ge=0, le=65535)
    charges: int = Field(default=0, ge=0, le=65535)
    real_name: str | None = Field(default=None, min_length=1, max_length=255)
    container_item_id: int | None = Field(default=None, gt=0, le=65535)

    _names_ok = field_validator("name", "real_name")(_list_safe)


class KeywordIn(_Strict):
    response: str = Field(min_length=1, max_length=512)
    phrases: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)

    @field_validator("phrases")
    @classmethod
    def _phrases_ok(cls, phrases: list[str]) -> list[str]:
        for phrase in phrases:
            _list_safe(phrase)
        return phrases


class NpcIn(_Strict):
    owner_id: uuid.UUID | None = None
    name: str = Field(min_length=1, max_length=255)
    look: LookIn
    stats: StatsIn
    messages: MessagesIn
    modules: ModulesIn = Field(default_factory=ModulesIn)
    shop_items: list[ShopItemIn] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    keywords: list[KeywordIn] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: dict[str, int] = {}
        for k_index, keyword in enumerate(self.keywords):
            for phrase in keyword.phrases:
                key = phrase.lower()
                if key in seen:
                    raise ValueError(
                        f"keywords[{k_index}]: duplicate phrase {phrase!r} "
                        f"(already in keywords[{seen[key]}]); phrases are unique per NPC"
                    )
                seen[key] = k_index
        responses: set[str] = set()
        for k_index, keyword in enumerate(self.keywords):
            if keyword.response.lower() in responses:
                raise ValueError(f"keywords[{k_index}].response: duplicate response")
            responses.add(keyword.response.lower())
        return self

    def to_record(self) -> NpcRecord:
        """The NPC as the generator would see it once stored (no row ids yet)."""
        look, stats, mods = self.look, self.stats, self.modules
        return NpcRecord(
            id=uuid.UUID(int=0),
            name=self.name,
            look=Look(**look.model_dump()),
            messages=Messages(**self.messages.model_dump()),
            walk_interval=stats.walk_interval,
            floor_change=stats.floor_change,
            health_now=stats.health_now,
            health_max=stats.health_max,
            focus_enabled=mods.focus_enabled,
            travel_enabled=mods.travel_enabled,
            voice_enabled=mods.voice_enabled,
            shop_enabled=mods.shop_enabled,
            shop_mode=mods.shop_mode,
            keywords_enabled=mods.keywords_enabled,
            shop_items=tuple(ShopItem(**item.model_dump()) for item in self.shop_items),
            keywords=tuple(Keyword(k.response, tuple(k.phrases)) for k in self.keywords),
        )


# Where a problem sits in the import format (camelCase, as the user wrote it).
_NPC_FIELDS = {
    "name": "name",
    "look_type_id": "look.typeId",
    "look_item_id": "look.itemId",
    "greet_message": "messages.greet",
    "farewell_message": "messages.farewell",
    "decline_message": "messages.decline",
    "no_shop_message": "messages.noShop",
    "on_close_shop_message": "messages.onCloseShop",
}


def _input_path(problem: RecordProblem) -> str:
    if problem.table == "npc_shop_items":
        return f"shopItems[{problem.index[0]}].{to_camel(problem.column)}"
    if problem.table == "npc_keyword_phrases":
        return f"keywords[{problem.index[0]}].phrases[{problem.index[1]}]"
    if problem.table == "npc_keywords":
        return f"keywords[{problem.index[0]}].{problem.column}"
    return _NPC_FIELDS.get(problem.column, problem.column)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc or '(top level)'}: {message}")
    return "; ".join(lines)


def parse_npc(data: Any) -> NpcIn:
    """Validate import input; refuse what no NPC file can express as meant (TFS's rules)."""
    try:
        npc = NpcIn.model_validate(data)
    except ValidationError as exc:
        raise ImportError_("invalid NPC: " + _describe(exc)) from None
    problems = record_problems(npc.to_record(), whole=True)
    if problems:
        described = (f"{_input_path(p)}: {p.value!r} {p.reason}" for p in problems)
        raise ImportError_("invalid NPC: " + "; ".join(described))
    return npc


def sample_npc_data() -> Any:
    """The bundled sample NPC (`npcforge/data/sample_npc.json`) in the import format."""
    text = resources.files("npcforge.data").joinpath("sample_npc.json").read_text("utf-8")
    return json.loads(text)


def read_npc_file(path: Path) -> NpcIn:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ImportError_(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportError_(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return parse_npc(data)


async def insert_npc(conn: asyncpg.Connection, npc: NpcIn) -> uuid.UUID:
    """Insert the NPC with its shop items and keywords, all or nothing. Returns the new id.

    Rows are inserted in the input's order, which their `position` default keeps."""
    owner = npc.owner_id or LOCAL_OWNER_ID
    owner_name = "npcforge" if owner == LOCAL_OWNER_ID else f"user_{str(owner)[:8]}"
    return await npcs.insert_npc(conn, npc.to_record(), owner_id=owner, owner_name=owner_name)
