"""The per-owner daily model budget at the API: a start by an owner whose spend today reached
NPCFORGE_USER_DAILY_BUDGET_USD is refused with 429 BUDGET_EXCEEDED until the next UTC day.

The spend is the ledger's (PostgreSQL, shared by every worker and API process). The check is a
read: a start that passes it while the owner's last calls settle may still queue a job, which
then waits `queued` (hold reason "budget") rather than spending past the cap.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from npcforge.api.errors import ApiError
from npcforge.budget import Budget, next_reset
from npcforge.db.spend import SpendLedger


async def refuse_over_budget(db: Any, budget: Budget, *, npc_id: UUID, owner: UUID | None) -> None:
    """Raise 429 BUDGET_EXCEEDED when the NPC's owner spent their daily budget; nothing when
    there is no owner cap or the NPC is not the caller's (the start then answers 404)."""
    if budget.user is None:
        return
    found = await SpendLedger(db).spent_by_npc_owner(npc_id=npc_id, owner=owner)
    if found is None or not budget.user_over(found[1]):
        return
    now = datetime.now(UTC)
    resets_at = next_reset(now)
    raise ApiError(
        429, "BUDGET_EXCEEDED",
        "The daily model budget of this NPC's owner is spent; generation can start again "
        "when it resets.",
        details={"limitUsd": float(budget.user), "spentUsd": float(found[1]),
                 "resetsAt": resets_at.isoformat().replace("+00:00", "Z")},
        headers={"Retry-After": str(max(1, math.ceil((resets_at - now).total_seconds())))},
    )  # fmt: skip
