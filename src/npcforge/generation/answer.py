"""The XML inside a model's answer: what the OpenRouter provider hands to the validator.

Pure: no I/O. Models wrap the document in JSON, code fences or prose; this finds it, and leaves
anything else for the validator to judge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_XML_START = re.compile(r"<\?xml\b|<npc[\s>/]")
_XML_END = "</npc>"


def content_text(content: object) -> str:
    """A message's content as text: a string, or a list of parts (strings or `{text}` objects)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
        return "".join(pieces)
    return ""


def extract_xml(text: str) -> str:
    """The NPC document inside a model's answer.

    Accepts `{"xml": "..."}` (also inside code fences or prose) or a bare document with code
    fences and surrounding prose; the XML runs from `<?xml` (or `<npc`) to the last `</npc>`.
    Text with no recognisable document is returned stripped, for the validator to judge.
    """
    stripped = text.strip()
    candidates = [stripped]
    candidates.extend(match.group(1).strip() for match in _FENCE.finditer(stripped))
    for candidate in candidates:
        wrapped = _xml_from_json(candidate)
        if wrapped is not None:
            return _xml_span(wrapped)
    return _xml_span(stripped)


def _xml_from_json(text: str) -> str | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        document = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if isinstance(document, Mapping) and isinstance(document.get("xml"), str):
        return str(document["xml"])
    return None


def _xml_span(text: str) -> str:
    """From the first `<?xml`/`<npc` to the last `</npc>`, ending in one newline like a file."""
    start = _XML_START.search(text)
    if start is None:
        return text.strip()
    end = text.rfind(_XML_END)
    if end < start.start():
        return text[start.start() :].strip()
    return text[start.start() : end + len(_XML_END)] + "\n"
