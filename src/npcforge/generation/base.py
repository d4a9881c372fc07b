"""The Provider port: what the worker knows about generation, nothing about HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from npcforge.npc import NpcRecord


@dataclass(frozen=True, slots=True)
class RepairRequest:
    """A second try: the previous output and what the validator found wrong with it."""

    previous_xml: str
    findings: tuple[str, ...]


@dataclass(slots=True)
class CallStats:
    """What one provider call cost; recorded on the attempt row. Never holds prompt or output."""

    model: str | None = None
    generation_id: str | None = None
    request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    retries: int = 0
    upstream_ms: float = 0.0
    # HTTP requests sent, and those whose answer was read (an unanswered one may be billed).
    requests: int = 0
    answered: int = 0

    def add(self, later: CallStats) -> None:
        """Count a later call in: tokens, cost, retries and time add up; the model and ids
        become the later call's where it has them."""
        self.model = later.model or self.model
        self.generation_id = later.generation_id or self.generation_id
        self.request_id = later.request_id or self.request_id
        if later.prompt_tokens is not None:
            self.prompt_tokens = (self.prompt_tokens or 0) + later.prompt_tokens
        if later.completion_tokens is not None:
            self.completion_tokens = (self.completion_tokens or 0) + later.completion_tokens
        if later.cost is not None:
            self.cost = (self.cost or 0.0) + later.cost
        self.retries += later.retries
        self.upstream_ms += later.upstream_ms
        self.requests += later.requests
        self.answered += later.answered


@dataclass(slots=True)
class Generated:
    xml: str
    stats: CallStats = field(default_factory=CallStats)


class Provider(Protocol):
    """Everything the worker reads off a provider."""

    name: str

    @property
    def paused_for(self) -> float:
        """Seconds the fleet still holds off upstream calls after a rate limit (0 when not
        paused); the worker claims no job meanwhile."""
        ...

    async def generate(
        self,
        npc: NpcRecord,
        repair: RepairRequest | None = None,
        *,
        account: CallStats | None = None,
        deadline: float | None = None,
    ) -> Generated:
        """Return the XML for `npc`. Raise a JobError subclass on failure.

        What the call costs (model, ids, tokens, retries) is added to `account` however it
        ends: returned, raised, or cut off by the caller, so a failed call is paid for too.
        `deadline` (on time.monotonic()) is the job's deadline, which the caller enforces; the
        provider only starts no wait that would outlast it.
        """
        ...

    async def close(self) -> None: ...
