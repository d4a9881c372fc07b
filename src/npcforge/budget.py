"""Daily spend caps and the cost policy the worker applies to each attempt. Pure.

`NPCFORGE_DAILY_BUDGET_USD` caps the whole fleet's model spend per UTC day,
`NPCFORGE_USER_DAILY_BUDGET_USD` each NPC owner's. The spend itself is counted in PostgreSQL
(`npcforge_spend_days`, see sql/migrations/0008_cost.sql), so every worker, the API and the
operator commands see the same figures; the caps are each process's own settings (one env file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from npcforge.config import ConfigError, Settings
from npcforge.generation.pricing import ModelPrice, PriceError, load_prices

HoldReason = Literal["budget"]
BUDGET: HoldReason = "budget"


def next_reset(now: datetime | None = None) -> datetime:
    """The next UTC midnight: when the day's spend starts again from zero."""
    now = now or datetime.now(UTC)
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def seconds_to_reset(now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    return max(0.0, (next_reset(now) - now).total_seconds())


@dataclass(frozen=True, slots=True)
class Budget:
    """The daily caps in USD (None: no cap)."""

    fleet: Decimal | None = None
    user: Decimal | None = None

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        return cls(settings.daily_budget_usd, settings.user_daily_budget_usd)

    @property
    def capped(self) -> bool:
        return self.fleet is not None or self.user is not None

    def fleet_over(self, fleet_spent: Decimal) -> bool:
        return self.fleet is not None and fleet_spent >= self.fleet

    def user_over(self, owner_spent: Decimal) -> bool:
        return self.user is not None and owner_spent >= self.user

    def hold(self, fleet_spent: Decimal, owner_spent: Decimal) -> HoldReason | None:
        """Why a queued job waits: the fleet's or its owner's budget for today is spent."""
        if self.fleet_over(fleet_spent) or self.user_over(owner_spent):
            return BUDGET
        return None


@dataclass(frozen=True, slots=True)
class CostPolicy:
    """What the worker does about cost before an attempt calls the model.

    `model` is None for a provider that calls no model (the template renderer): nothing is
    reserved, priced or reused then.
    """

    budget: Budget = field(default_factory=Budget)
    model: str | None = None
    fallback_models: tuple[str, ...] = ()
    prices: dict[str, ModelPrice] = field(default_factory=dict)
    max_retries: int = 0

    @classmethod
    def of(cls, settings: Settings) -> CostPolicy:
        """The policy of the configured provider; a cap on a model without a price is a
        configuration error (the estimate could not be made)."""
        if settings.provider != "openrouter":
            return cls(budget=Budget.of(settings))
        try:
            prices = load_prices(settings.model_prices)
        except PriceError as exc:
            raise ConfigError(str(exc)) from None
        policy = cls(
            budget=Budget.of(settings),
            model=settings.openrouter_model,
            fallback_models=tuple(settings.openrouter_fallback_models),
            prices=prices,
            max_retries=settings.openrouter_max_retries,
        )
        missing = [m for m in policy.models if m not in prices]
        if policy.budget.capped and missing:
            cap = (
                "NPCFORGE_DAILY_BUDGET_USD"
                if policy.budget.fleet
                else "NPCFORGE_USER_DAILY_BUDGET_USD"
            )
            raise ConfigError(
                f"{cap} needs a price to estimate calls, and the price table has none for "
                f"{', '.join(missing)}: add it to NPCFORGE_MODEL_PRICES (MODEL=PROMPT/COMPLETION "
                "in USD per million tokens)"
            )
        return policy

    @property
    def models(self) -> tuple[str, ...]:
        return () if self.model is None else (self.model, *self.fallback_models)

    @property
    def generation_key(self) -> str:
        """The model part of the reuse hash: the models that may write the file, in order."""
        return ",".join(self.models)

    def price_of(self, model: str | None) -> ModelPrice | None:
        return self.prices.get(model or "") or self.prices.get(self.model or "")
