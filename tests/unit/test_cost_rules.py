"""Prices, estimates, what an attempt is charged, the reuse hash and the daily budgets: pure."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from conftest import sample_data
from npcforge.budget import Budget, CostPolicy, next_reset, seconds_to_reset
from npcforge.config import ConfigError, Settings
from npcforge.generation.base import CallStats
from npcforge.generation.pricing import (
    ModelPrice,
    PriceError,
    charge_of,
    estimate_attempt,
    input_hash,
    load_prices,
    parse_price_overrides,
    rules_version,
)
from npcforge.importer import parse_npc
from npcforge.npc import NpcRecord

MINI = ModelPrice(Decimal("0.15"), Decimal("0.6"))


def record() -> NpcRecord:
    return parse_npc(sample_data(name="Cost Test")).to_record()


def test_overrides_replace_and_add_prices() -> None:
    prices = load_prices("openai/gpt-4o-mini=1/2, my/model=0.5/0.25")
    assert prices["openai/gpt-4o-mini"] == ModelPrice(Decimal(1), Decimal(2))
    assert prices["my/model"] == ModelPrice(Decimal("0.5"), Decimal("0.25"))
    assert "openai/gpt-4o" in prices  # the packaged table is still there


@pytest.mark.parametrize(
    "text", ["model", "model=1", "=1/2", "model=a/2", "model=-1/2", "model=1/inf"]
)
def test_a_malformed_override_is_refused_naming_it(text: str) -> None:
    with pytest.raises(PriceError, match="NPCFORGE_MODEL_PRICES"):
        parse_price_overrides(text)


def test_the_estimate_covers_first_call_repair_and_retries() -> None:
    npc = record()
    one = estimate_attempt(npc, [MINI], max_retries=0)
    assert one > 0
    assert estimate_attempt(npc, [MINI], max_retries=2) == 3 * one
    # The dearest model that may answer (a fallback) prices the estimate.
    dear = ModelPrice(Decimal(10), Decimal(40))
    assert estimate_attempt(npc, [MINI, dear], max_retries=0) > one
    assert estimate_attempt(npc, [], max_retries=0) == 0
    # A bigger record: a bigger prompt, a bigger estimate.
    bigger = dataclasses.replace(npc, shop_items=npc.shop_items * 2)
    assert estimate_attempt(bigger, [MINI], max_retries=0) > one


def test_what_an_attempt_is_charged() -> None:
    assert (
        charge_of(CallStats(cost=0.0004, prompt_tokens=10, requests=1, answered=1), MINI) == 0.0004
    )
    by_tokens = charge_of(CallStats(prompt_tokens=1000, completion_tokens=500, requests=1,
                                    answered=1), MINI)  # fmt: skip
    assert by_tokens == pytest.approx((1000 * 0.15 + 500 * 0.6) / 1e6)
    assert charge_of(CallStats(prompt_tokens=10, requests=1, answered=1), None) is None
    assert charge_of(CallStats(requests=2, answered=2), MINI) == 0.0  # error answers: unbilled
    assert charge_of(CallStats(), MINI) == 0.0  # no request went out
    assert charge_of(CallStats(requests=2, answered=1), MINI) is None  # one was cut off


def test_the_reuse_hash_follows_the_record_rules_and_model() -> None:
    npc = record()
    base = input_hash(npc, "openai/gpt-4o-mini")
    assert base == input_hash(npc, "openai/gpt-4o-mini")
    # Row ids, the NPC's id and its owner are in no file.
    renumbered = dataclasses.replace(
        npc, id=uuid.uuid4(), owner_id=uuid.uuid4(),
        shop_items=tuple(dataclasses.replace(i, id=uuid.uuid4()) for i in npc.shop_items),
    )  # fmt: skip
    assert input_hash(renumbered, "openai/gpt-4o-mini") == base
    item = npc.shop_items[0]
    cheaper = dataclasses.replace(
        npc, shop_items=(dataclasses.replace(item, price=item.price + 1), *npc.shop_items[1:])
    )
    assert input_hash(cheaper, "openai/gpt-4o-mini") != base
    assert input_hash(npc, "openai/gpt-4o") != base
    assert input_hash(npc, "openai/gpt-4o-mini", rules="other prompt or validator") != base
    assert input_hash(npc, "openai/gpt-4o-mini", rules=rules_version()) == base


def test_the_reuse_hash_of_a_record_does_not_drift() -> None:
    """Hashes are stored (npcforge_generations): the same inputs must hash the same across
    versions, or every NPC's next job calls the model once more. Pinned for this record."""
    assert input_hash(record(), "openai/gpt-4o-mini", rules="pinned") == (
        "75dcf80ac7dfbd0cae9990acaae4d21b200fb00920dcba864981f12201d5a475"
    )


def test_budgets_hold_queued_jobs_at_the_cap() -> None:
    budget = Budget(fleet=Decimal("1.00"), user=Decimal("0.10"))
    assert budget.hold(Decimal("0.99"), Decimal("0.09")) is None
    assert budget.hold(Decimal("1.00"), Decimal(0)) == "budget"
    assert budget.hold(Decimal(0), Decimal("0.10")) == "budget"
    assert Budget().hold(Decimal(100), Decimal(100)) is None
    assert not Budget().capped


def test_the_day_resets_at_utc_midnight() -> None:
    now = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert next_reset(now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert seconds_to_reset(now) == 30


def test_a_cap_needs_a_price_for_every_model() -> None:
    base = {"NPCFORGE_PROVIDER": "openrouter", "OPENROUTER_API_KEY": "sk-or-x"}
    with pytest.raises(ConfigError, match="NPCFORGE_MODEL_PRICES"):
        CostPolicy.of(Settings(**base, OPENROUTER_MODEL="some/unpriced",
                               NPCFORGE_DAILY_BUDGET_USD="5"))  # fmt: skip
    policy = CostPolicy.of(
        Settings(**base, OPENROUTER_MODEL="some/unpriced", NPCFORGE_DAILY_BUDGET_USD="5",
                 NPCFORGE_MODEL_PRICES="some/unpriced=1/2")
    )  # fmt: skip
    assert policy.budget.fleet == Decimal(5)
    assert CostPolicy.of(Settings(**base, OPENROUTER_MODEL="some/unpriced")).budget.capped is False
    assert CostPolicy.of(Settings(NPCFORGE_PROVIDER="template")).model is None
