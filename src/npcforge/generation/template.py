"""The offline `template` provider: the record rendered by the XML rules, no model involved."""

from __future__ import annotations

import time

from npcforge.generation.base import CallStats, Generated, RepairRequest
from npcforge.generation.xmlrules import render_npc_xml
from npcforge.npc import NpcRecord


class TemplateProvider:
    name = "template"
    paused_for = 0.0  # no upstream, nothing to pause

    async def generate(
        self,
        npc: NpcRecord,
        repair: RepairRequest | None = None,
        *,
        account: CallStats | None = None,
        deadline: float | None = None,
    ) -> Generated:
        started = time.monotonic()
        xml = render_npc_xml(npc)
        stats = CallStats(model="template", upstream_ms=(time.monotonic() - started) * 1e3)
        if account is not None:
            account.add(stats)
        return Generated(xml=xml, stats=stats)

    async def close(self) -> None:
        return None
