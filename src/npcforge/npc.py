"""The NPC record as the pipeline sees it: one immutable value loaded from PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID

LookType = Literal["player", "monster", "item"]
ShopListType = Literal["buy", "sell"]
ShopMode = Literal["trade_window", "talk_mode"]


@dataclass(frozen=True, slots=True)
class Look:
    type: LookType
    type_id: int | None = None
    item_id: int | None = None
    head: int | None = None
    body: int | None = None
    legs: int | None = None
    feet: int | None = None
    addons: int | None = None
    mount: int | None = None


@dataclass(frozen=True, slots=True)
class Messages:
    greet: str
    farewell: str
    decline: str
    no_shop: str
    on_close_shop: str


@dataclass(frozen=True, slots=True)
class ShopItem:
    list_type: ShopListType
    name: str
    item_id: int
    price: int
    subtype: int = 0
    charges: int = 0
    real_name: str | None = None
    container_item_id: int | None = None
    id: UUID | None = None  # the row, when the record came from the database


@dataclass(frozen=True, slots=True)
class Keyword:
    response: str
    phrases: tuple[str, ...]
    # The rows, when the record came from the database (phrase_ids parallel to phrases).
    id: UUID | None = None
    phrase_ids: tuple[UUID, ...] = ()


@dataclass(frozen=True, slots=True)
class NpcRecord:
    id: UUID
    name: str
    look: Look
    messages: Messages
    script: str = "default.lua"
    walk_interval: int = 2000
    floor_change: bool = False
    health_now: int = 100
    health_max: int = 100
    focus_enabled: bool = False
    travel_enabled: bool = False
    voice_enabled: bool = False
    shop_enabled: bool = False
    shop_mode: ShopMode = "trade_window"
    keywords_enabled: bool = False
    shop_items: tuple[ShopItem, ...] = field(default_factory=tuple)
    keywords: tuple[Keyword, ...] = field(default_factory=tuple)
    owner_id: UUID | None = None

    @property
    def buy_items(self) -> tuple[ShopItem, ...]:
        """Items a player buys from the NPC (TFS `shop_buyable`)."""
        return tuple(item for item in self.shop_items if item.list_type == "buy")

    @property
    def sell_items(self) -> tuple[ShopItem, ...]:
        """Items a player sells to the NPC (TFS `shop_sellable`)."""
        return tuple(item for item in self.shop_items if item.list_type == "sell")
