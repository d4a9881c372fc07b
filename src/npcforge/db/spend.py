"""The spend ledger's and the reuse table's statements (their SQL is in queries.sql; the
functions and the settling trigger in sql/migrations/0008_cost.sql)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from npcforge.db.queries import q


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    scope: str | None  # 'fleet' or 'user' when refused
    fleet_spent: Decimal
    owner_spent: Decimal


@dataclass(frozen=True, slots=True)
class SpendState:
    """Today's (UTC) spend of the fleet, settled plus reserved, and the owners at their cap."""

    fleet_spent: Decimal
    fleet_reserved: Decimal  # the part of fleet_spent reserved for attempts still running
    owners_over: list[UUID]


@dataclass(frozen=True, slots=True)
class LastGeneration:
    input_hash: str
    xml_sha256: str
    size_bytes: int


class SpendLedger:
    def __init__(self, db: Any) -> None:
        self._db = db  # an asyncpg pool or connection

    async def reserve(
        self,
        *,
        npc_id: UUID,
        job_id: UUID,
        attempt: int,
        model: str | None,
        estimate: Decimal,
        fleet_limit: Decimal | None,
        user_limit: Decimal | None,
        timeout: float | None = None,
    ) -> Admission:
        """Admit an attempt and reserve `estimate` for it, or refuse it at a cap."""
        row = await self._db.fetchrow(
            q("spend_reserve"), npc_id, job_id, attempt, model, estimate, fleet_limit,
            user_limit, timeout=timeout,
        )  # fmt: skip
        return Admission(
            admitted=row["admitted"],
            scope=row["scope"],
            fleet_spent=row["fleet_spent"],
            owner_spent=row["owner_spent"],
        )

    async def state(
        self, *, user_limit: Decimal | None, timeout: float | None = None
    ) -> SpendState:
        row = await self._db.fetchrow(q("spend_state"), user_limit, timeout=timeout)
        return SpendState(
            fleet_spent=row["fleet_spent"],
            fleet_reserved=row["fleet_reserved"],
            owners_over=list(row["owners_over"]),
        )

    async def spent_today(self, *, owners: Collection[UUID]) -> tuple[Decimal, dict[UUID, Decimal]]:
        """The fleet's spend today and that of each of `owners` (0 for those without any)."""
        rows = await self._db.fetch(q("spend_of_owners"), [str(owner) for owner in owners])
        amounts: Mapping[str, Decimal] = {row["payer"]: row["amount"] for row in rows}
        fleet = amounts.get("fleet", Decimal(0))
        return fleet, {owner: amounts.get(str(owner), Decimal(0)) for owner in owners}

    async def spent_by_npc_owner(
        self, *, npc_id: UUID, owner: UUID | None
    ) -> tuple[UUID, Decimal] | None:
        """The owner of NPC `npc_id` and what they spent today (None when the NPC is missing,
        deleted, or not `owner`'s)."""
        row = await self._db.fetchrow(q("spend_of_npc_owner"), npc_id, owner)
        return None if row is None else (row["owner_id"], row["spent"])

    async def held_jobs(self, *, fleet_over: bool, owners_over: Collection[UUID]) -> int:
        """Queued jobs waiting on a budget."""
        held: int = await self._db.fetchval(q("spend_held_jobs"), fleet_over, list(owners_over))
        return held

    async def costs(self, *, since: datetime) -> list[Mapping[str, Any]]:
        """Attempt rows since `since`, summed per UTC day, model and owner."""
        rows: list[Mapping[str, Any]] = await self._db.fetch(q("spend_costs"), since)
        return rows


class Generations:
    """What each NPC's last successful generation was made from (for reuse)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def last(self, *, npc_id: UUID) -> LastGeneration | None:
        """For a job that came without it (adopted); a claim brings it along. A publish
        remembers it (`JobQueue.finish_succeeded`)."""
        row = await self._db.fetchrow(q("generation_last"), npc_id)
        if row is None:
            return None
        return LastGeneration(row["input_hash"], row["xml_sha256"], row["size_bytes"])
