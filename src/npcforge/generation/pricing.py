"""What a model call costs, before and after: prices, the estimate an attempt reserves, and the
hash that says whether a record's file can be reused. Pure: no I/O but reading packaged files.

Prices come from the packaged table `npcforge/data/model_prices.json` (USD per million tokens,
as OpenRouter's `GET /api/v1/models` lists them), overridden or extended by
`NPCFORGE_MODEL_PRICES` (`model=PROMPT/COMPLETION,...`). They are read once at start: no
network call, per job or otherwise. A new npcforge release refreshes the table; the variable
fixes a price at once. The upstream's own `usage.cost` always wins over them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from npcforge.generation.base import CallStats
from npcforge.generation.prompt import build_messages, max_tokens_for
from npcforge.npc import NpcRecord

PER_MILLION = Decimal(1_000_000)
# Tokens are counted by the model's tokenizer; English and JSON run at about four characters a
# token. Three overestimates the prompt on purpose: the estimate must not fall short.
CHARS_PER_TOKEN = 3
# The validator's findings in a repair prompt, at most.
REPAIR_FINDINGS_TOKENS = 2_000
# The modules whose text decides what a prompt says and what the validator accepts: a change
# to any of them changes the reuse hash, so no file made under the old rules is reused.
PROMPT_MODULES = ("prompt.py", "answer.py")
VALIDATOR_MODULES = (
    "validator.py", "xmlrules.py", "listrules.py", "tfs.py", "stored_xml.py", "recordcheck.py",
)  # fmt: skip


class PriceError(ValueError):
    """NPCFORGE_MODEL_PRICES cannot be read; the message says which entry and why."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens."""

    prompt: Decimal
    completion: Decimal

    def of(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / PER_MILLION


def packaged_prices() -> dict[str, ModelPrice]:
    text = resources.files("npcforge.data").joinpath("model_prices.json").read_text("utf-8")
    models = json.loads(text)["models"]
    return {
        name: ModelPrice(Decimal(str(p["prompt"])), Decimal(str(p["completion"])))
        for name, p in models.items()
    }


def parse_price_overrides(text: str) -> dict[str, ModelPrice]:
    """`openai/gpt-4o-mini=0.15/0.60,other/model=1/2` (USD per million prompt/completion
    tokens)."""
    prices: dict[str, ModelPrice] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        model, sep, pair = entry.partition("=")
        prompt, slash, completion = pair.partition("/")
        try:
            if not sep or not slash or not model.strip():
                raise ValueError
            price = ModelPrice(Decimal(prompt.strip()), Decimal(completion.strip()))
            if not (price.prompt.is_finite() and price.completion.is_finite()):
                raise ValueError
            if price.prompt < 0 or price.completion < 0:
                raise ValueError
        except (ValueError, ArithmeticError):
            raise PriceError(
                f"NPCFORGE_MODEL_PRICES: {entry[:80]!r} is not MODEL=PROMPT/COMPLETION with two "
                "non-negative numbers (USD per million tokens), e.g. "
                "openai/gpt-4o-mini=0.15/0.60"
            ) from None
        prices[model.strip()] = price
    return prices


def load_prices(overrides: str = "") -> dict[str, ModelPrice]:
    return {**packaged_prices(), **parse_price_overrides(overrides)}


def estimate_attempt(npc: NpcRecord, prices: list[ModelPrice], *, max_retries: int) -> Decimal:
    """The most one attempt may cost: the first call and the repair call at the dearest of the
    models that may answer (primary and fallbacks), each asked again up to `max_retries` times
    (a call cut off may still be billed). The prompt is measured, the completion is max_tokens
    (doubled once when the output is cut off at it, so counted twice)."""
    if not prices:
        return Decimal(0)
    price = ModelPrice(max(p.prompt for p in prices), max(p.completion for p in prices))
    messages = build_messages(npc, None, json_answer=True)
    prompt = math.ceil(sum(len(str(m.get("content", ""))) for m in messages) / CHARS_PER_TOKEN)
    completion = 2 * max_tokens_for(npc)
    first = price.of(prompt, completion)
    repair = price.of(prompt + completion + REPAIR_FINDINGS_TOKENS, completion)
    return (first + repair) * (1 + max_retries)


def charge_of(stats: CallStats, price: ModelPrice | None) -> float | None:
    """What the calls cost: the upstream's usage cost; else its tokens at `price`; else 0 when
    every request sent was answered without usage (an error answer is not billed); else None (a
    request was cut off before any usage came back: the reservation keeps its estimate)."""
    if stats.cost is not None:
        return stats.cost
    if stats.prompt_tokens is not None or stats.completion_tokens is not None:
        if price is None:
            return None
        return float(price.of(stats.prompt_tokens or 0, stats.completion_tokens or 0))
    if stats.requests == stats.answered:
        return 0.0
    return None


@cache
def rules_version() -> str:
    """A digest of the prompt's and the validator's source: it changes with either."""
    digest = hashlib.sha256()
    package = resources.files("npcforge.generation")
    for name in (*PROMPT_MODULES, *VALIDATOR_MODULES):
        digest.update(name.encode())
        digest.update(package.joinpath(name).read_bytes())
    return digest.hexdigest()[:16]


@cache
def _hashed_fields(kind: type) -> tuple[str, ...] | None:
    """The fields of a class a file can say (not row ids, not the owner); None for a class that
    is not a dataclass. Cached per class: looking the fields up each time was most of a job's
    hash."""
    if not dataclasses.is_dataclass(kind):
        return None
    skipped = ("id", "phrase_ids", "owner_id")
    return tuple(f.name for f in dataclasses.fields(kind) if f.name not in skipped)


def _without_row_ids(value: Any) -> Any:
    """The record as plain data, without row ids and the owner (no file says them)."""
    kind: type = type(value)
    names = _hashed_fields(kind)
    if names is not None:
        return {name: _without_row_ids(getattr(value, name)) for name in names}
    if isinstance(value, tuple | list):
        return [_without_row_ids(item) for item in value]
    return value


def input_hash(npc: NpcRecord, model: str, *, rules: str | None = None) -> str:
    """What a generation is made of: every field of the record (the prompt carries the whole
    record and the validator checks it), the prompt and validator rules, and the model(s)."""
    document = {
        "record": _without_row_ids(npc),
        "rules": rules if rules is not None else rules_version(),
        "model": model,
    }
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
