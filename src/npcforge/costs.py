"""Model spend for people: the `npcforge costs` report, the daily budgets' state, and why a queued
job waits. The console can show the same figures: `cost_report(db, days=...)` and
`budget_overview(db, Budget.of(settings))` return the models `--json` prints.

The report sums the attempt rows (`npc_generation_attempts.cost`: the upstream's usage cost, or
tokens x price, 0 for a reused file). The budgets count the spend ledger, which also holds what
is reserved for calls in flight.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic import Field

from npcforge.api.dto import HoldReason, OutputModel, json_document
from npcforge.budget import Budget, next_reset
from npcforge.db.spend import SpendLedger
from npcforge.exits import EXIT_OK, UsageError


class CostLineOut(OutputModel):
    attempts: int = Field(description="Attempt rows counted (reused ones included).")
    reused: int = Field(description="Attempts that reused the stored file (no model call).")
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int


class DayCostOut(CostLineOut):
    day: date


class ModelCostOut(CostLineOut):
    model: str | None


class OwnerCostOut(CostLineOut):
    owner_id: UUID | None


class CostReportOut(OutputModel):
    """`npcforge costs --json`: model spend from the attempt rows, per UTC day, model, owner."""

    since: datetime
    total: CostLineOut
    days: list[DayCostOut]
    models: list[ModelCostOut]
    owners: list[OwnerCostOut]


class BudgetOut(OutputModel):
    """The daily budgets today (UTC): what the fleet spent, settled plus reserved."""

    fleet_limit_usd: float | None
    fleet_spent_usd: float
    fleet_reserved_usd: float = Field(description="Reserved for calls in flight.")
    fleet_remaining_usd: float | None
    user_limit_usd: float | None
    owners_at_limit: int
    held_jobs: int = Field(description="Queued jobs waiting for a budget.")
    resets_at: datetime


def _line(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    rows = list(rows)
    return {
        "attempts": sum(row["attempts"] for row in rows),
        "reused": sum(row["reused"] for row in rows),
        "cost_usd": float(sum((row["cost"] for row in rows), Decimal(0))),
        "prompt_tokens": sum(row["prompt_tokens"] for row in rows),
        "completion_tokens": sum(row["completion_tokens"] for row in rows),
    }


def _grouped(rows: Sequence[Mapping[str, Any]], key: str) -> dict[Any, list[Mapping[str, Any]]]:
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


async def cost_report(db: Any, *, days: int, now: datetime | None = None) -> CostReportOut:
    """Spend of the last `days` UTC days (today included): newest day first, dearest model and
    owner first."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date() - timedelta(days=days - 1)
    since = datetime(today.year, today.month, today.day, tzinfo=UTC)
    rows = await SpendLedger(db).costs(since=since)
    by_day = [DayCostOut(day=day, **_line(group)) for day, group in _grouped(rows, "day").items()]
    by_model = [
        ModelCostOut(model=model, **_line(group))
        for model, group in _grouped(rows, "model").items()
    ]
    by_owner = [
        OwnerCostOut(owner_id=owner, **_line(group))
        for owner, group in _grouped(rows, "owner_id").items()
    ]
    return CostReportOut(
        since=since,
        total=CostLineOut(**_line(rows)),
        days=sorted(by_day, key=lambda line: line.day, reverse=True),
        models=sorted(by_model, key=lambda line: -line.cost_usd),
        owners=sorted(by_owner, key=lambda line: -line.cost_usd),
    )


async def budget_overview(db: Any, budget: Budget) -> BudgetOut:
    ledger = SpendLedger(db)
    state = await ledger.state(user_limit=budget.user)
    fleet_over = budget.fleet_over(state.fleet_spent)
    held = 0
    if fleet_over or state.owners_over:
        held = await ledger.held_jobs(fleet_over=fleet_over, owners_over=state.owners_over)
    remaining = None
    if budget.fleet is not None:
        remaining = float(max(budget.fleet - state.fleet_spent, Decimal(0)))
    return BudgetOut(
        fleet_limit_usd=float(budget.fleet) if budget.fleet is not None else None,
        fleet_spent_usd=float(state.fleet_spent),
        fleet_reserved_usd=float(state.fleet_reserved),
        fleet_remaining_usd=remaining,
        user_limit_usd=float(budget.user) if budget.user is not None else None,
        owners_at_limit=len(state.owners_over),
        held_jobs=held,
        resets_at=next_reset(),
    )


async def hold_reasons(
    db: Any, budget: Budget, jobs: Sequence[tuple[UUID | None, str | None]]
) -> list[HoldReason | None]:
    """Why each (owner, status) job waits: "budget" for a queued job while the fleet's or its
    owner's daily budget is spent, else None. One statement, none without a cap."""
    owners = {owner for owner, status in jobs if status == "queued" and owner is not None}
    if not budget.capped or not any(status == "queued" for _, status in jobs):
        return [None for _ in jobs]
    fleet, spent = await SpendLedger(db).spent_today(owners=owners)
    return [
        budget.hold(fleet, spent.get(owner, Decimal(0)) if owner is not None else Decimal(0))
        if status == "queued"
        else None
        for owner, status in jobs
    ]


# --- `npcforge costs` ------------------------------------------------------------------------


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.6f}"


def _print_table(title: str, rows: list[tuple[str, CostLineOut]]) -> None:
    print(title)
    if not rows:
        print("  (no attempts)")
    for name, line in rows:
        print(
            f"  {name:<40} {_usd(line.cost_usd):>14}  {line.attempts:>7} attempts"
            f"  {line.reused:>6} reused  {line.prompt_tokens + line.completion_tokens:>10} tokens"
        )


async def run_costs_command(conn: Any, args: argparse.Namespace, budget: Budget) -> int:
    if not 1 <= args.days <= 3660:
        raise UsageError("--days must be between 1 and 3660")
    report = await cost_report(conn, days=args.days)
    overview = await budget_overview(conn, budget)
    if args.json:
        print(json_document(CostsOut(report=report, budget=overview)))
        return EXIT_OK
    print(f"model spend since {report.since:%Y-%m-%d} (UTC), from the attempt rows")
    _print_table("per day", [(str(line.day), line) for line in report.days])
    _print_table("per model", [(line.model or "(none)", line) for line in report.models])
    _print_table(
        "per owner", [(str(line.owner_id or "(deleted NPC)"), line) for line in report.owners]
    )
    print(
        f"total {_usd(report.total.cost_usd)} over {report.total.attempts} attempts"
        f" ({report.total.reused} reused)"
    )
    print(
        f"today: fleet spent {_usd(overview.fleet_spent_usd)} (of which reserved "
        f"{_usd(overview.fleet_reserved_usd)}), daily budget {_usd(overview.fleet_limit_usd)}, "
        f"per owner {_usd(overview.user_limit_usd)}; {overview.held_jobs} job(s) held; resets "
        f"{overview.resets_at:%Y-%m-%d %H:%M} UTC"
    )
    return EXIT_OK


class CostsOut(OutputModel):
    """`npcforge costs --json`."""

    report: CostReportOut
    budget: BudgetOut
