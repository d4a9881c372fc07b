"""Outside text made safe to keep: every secret, and every fragment of one, removed, then bounded.

Pure: no I/O. Whatever an outside system controls (an upstream error message or metadata field,
a header, a model name, a storage server's message) goes through `scrub` before it is stored in a
job or attempt row, logged, or answered by the API. Redaction comes first and the cut second, so a
secret straddling the cut cannot survive in part; any run of `MIN_FRAGMENT` or more characters of
a secret (its prefix left at a cut, a half a server echoed) counts as the secret.
"""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[redacted]"
# Fragments this long or longer are treated as the secret itself.
MIN_FRAGMENT = 8
ELLIPSIS = "…"


def cut(text: str, limit: int) -> str:
    """`text` at most `limit` characters long, marking a cut with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + ELLIPSIS


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each secret, and each fragment of MIN_FRAGMENT+ characters of one, replaced."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if secret:
            spans.extend(_secret_spans(text, secret))
    if not spans:
        return text
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    pieces: list[str] = []
    done = 0
    for start, end in merged:
        pieces += [text[done:start], REDACTED]
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def scrub(text: str, secrets: Iterable[str], limit: int) -> str:
    """Redact, fold whitespace runs to one space, then cut to `limit` characters."""
    secrets = [secret for secret in secrets if secret]
    # Only a bounded head can reach the result: each redaction marker stands for at most one
    # secret's length of input, every other character for one. The head's own end is safe too:
    # a fragment of MIN_FRAGMENT+ characters left there is redacted like any other.
    longest = max((len(secret) for secret in secrets), default=0)
    head = text[: limit + (limit // len(REDACTED) + 2) * max(longest, 1)]
    return cut(" ".join(redact(head, secrets).split()), limit)


def _secret_spans(text: str, secret: str) -> list[tuple[int, int]]:
    """Where `secret`, or a run of MIN_FRAGMENT+ of its characters, occurs in `text`."""
    if len(secret) < MIN_FRAGMENT:
        spans = []
        start = text.find(secret)
        while start >= 0:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + len(secret))
        return spans
    offsets: dict[str, list[int]] = {}
    for offset in range(len(secret) - MIN_FRAGMENT + 1):
        offsets.setdefault(secret[offset : offset + MIN_FRAGMENT], []).append(offset)
    first_chars = set(secret)
    found: list[tuple[int, int]] = []
    position, end = 0, len(text) - MIN_FRAGMENT
    while position <= end:
        if text[position] not in first_chars:
            position += 1
            continue
        starts = offsets.get(text[position : position + MIN_FRAGMENT])
        if starts is None:
            position += 1
            continue
        longest = max(_common_run(text, position, secret, offset) for offset in starts)
        found.append((position, position + longest))
        position += longest
    return found


def _common_run(text: str, position: int, secret: str, offset: int) -> int:
    length = MIN_FRAGMENT
    while (
        position + length < len(text)
        and offset + length < len(secret)
        and text[position + length] == secret[offset + length]
    ):
        length += 1
    return length
