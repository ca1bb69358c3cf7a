"""Extractive compaction of older turns: what the guard plans with, and the fallback.

Each older turn contributes its first sentence, newest turns first, within a token budget.
Deterministic, so a replay reproduces the same prompt plan. With `context.summarizer:
model` the summarizer role rewrites it at answer time (operators/summaries.py); this text
stays when that call fails or times out, and the local fleet's summarizer writes it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from splitpin.core.tokens import count_tokens, encoding

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
DIGEST_MAX_TOKENS = 48
HEADER = "Summary of earlier turns:"


def digest(role: str, text: str, encoding_name: str) -> str:
    """One line per turn: its first sentence, capped, so long emails stay short."""
    first = _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0]
    tokens = encoding(encoding_name).encode(first, disallowed_special=())
    if len(tokens) > DIGEST_MAX_TOKENS:
        first = encoding(encoding_name).decode(tokens[:DIGEST_MAX_TOKENS]) + " ..."
    return f"- {role}: {first}"


def summarize(digests: Iterable[str], max_tokens: int, encoding_name: str) -> tuple[str, int]:
    """Keep the newest digests that fit in `max_tokens`; returns (summary, its tokens)."""
    kept: list[str] = []
    used = count_tokens(HEADER, encoding_name) + 1
    for line in reversed(list(digests)):
        cost = count_tokens(line, encoding_name) + 1
        if used + cost > max_tokens:
            break
        kept.append(line)
        used += cost
    if not kept:
        return "", 0
    return "\n".join([HEADER, *reversed(kept)]), used
