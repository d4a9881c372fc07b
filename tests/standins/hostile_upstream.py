"""A hostile OpenAI-compatible upstream: answers an attacker (or a broken proxy) could send.

Each function returns a responder for `OpenRouterStandin.responder` (tests/standins/openrouter.py),
so the real OpenRouter client talks to it over loopback HTTP like to any upstream. The answers are
well-formed on the wire; what they carry is the attack:

- `echoing_key`: the Authorization header echoed back in the error message, in
  `metadata.provider_code` and `metadata.error_type`, and in the X-Request-Id header;
- `huge_field`: one metadata string of several MiB;
- `key_at_the_cut`: the key placed so that it straddles the 300-character cut of a message;
- `retry_after`: any Retry-After value, however far away;
- `smuggled_xml`: a correct NPC document with a processing instruction and a comment inside `<npc>`.
"""

from __future__ import annotations

from collections.abc import Callable

from npcforge.generation.xmlrules import render_npc_xml
from standins.openrouter import RecordedRequest, Reply, error_json, xml_reply

HostileResponder = Callable[[RecordedRequest], Reply]

SMUGGLED_PI = '<?php system("id"); ?>'
SMUGGLED_COMMENT = "<!-- evil -->"


def sent_key(request: RecordedRequest) -> str:
    """The API key the client sent (what a hostile upstream would echo)."""
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def echoing_key(status: int = 401) -> HostileResponder:
    def reply(request: RecordedRequest) -> Reply:
        key = sent_key(request)
        body = error_json(
            status,
            f"Invalid API key: {key}",
            metadata={"provider_code": key, "error_type": key, "raw": key},
        )
        return Reply(status=status, json=body, headers={"X-Request-Id": f"req-{key}"})

    return reply


def huge_field(size: int = 6 * 1024 * 1024, status: int = 400) -> HostileResponder:
    def reply(request: RecordedRequest) -> Reply:
        body = error_json(status, "Bad request", metadata={"error_type": "x" * size})
        return Reply(status=status, json=body)

    return reply


def key_at_the_cut(cut_at: int = 299, status: int = 401) -> HostileResponder:
    """A message whose 300-character cut falls inside the echoed key."""

    def reply(request: RecordedRequest) -> Reply:
        key = sent_key(request)
        lead = "x" * (cut_at - len(key) // 2)
        return Reply(status=status, json=error_json(status, f"{lead} {key} rejected"))

    return reply


def retry_after(value: str, status: int = 503) -> Reply:
    """One error answer asking the client to wait `value` (a Retry-After header, verbatim)."""
    message = "Rate limit exceeded" if status == 429 else "No provider available"
    return Reply(status=status, json=error_json(status, message), headers={"Retry-After": value})


def smuggled_xml() -> HostileResponder:
    """The record's correct XML with a PHP processing instruction and a comment inside <npc>."""

    def reply(request: RecordedRequest) -> Reply:
        xml = render_npc_xml(request.record())
        head, sep, rest = xml.partition("\n  <health")
        assert sep, "the rendered XML changed shape"
        xml = f"{head}\n  {SMUGGLED_PI}\n  {SMUGGLED_COMMENT}{sep}{rest}"
        return xml_reply(xml, wrapped="response_format" in request.json)

    return reply
