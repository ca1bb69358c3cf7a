"""Model-written summaries of compacted turns: what may replace the extractive one, and reuse.

The guard plans every prompt with the extractive summary (splitpin/core/summarizer.py) and
records how long a summary may be in that prompt (`PromptPlan.summary_limit`). When
`context.summarizer` is `model`, the answering job first asks the `summarizer` role for a
summary of the same turns; its text replaces the extractive one only once cut to that
limit in the answering role's tokenizer, so no prompt grows past what the guard counted.

A conversation's summary covers a prefix of its session (turns compact oldest first), so
`(session_id, compacted turns)` names what it covers: the same pair reuses the cached text
without a call; a new pair (more turns fell out of the window) calls again. The cache is
per process and not snapshotted: after a restart the next dispatch calls once more.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from splitpin.core.tokens import count_tokens, encoding
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import ContextConfig, TenantBudget

SUMMARIZER_ROLE: ModelRole = "summarizer"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Coverage:
    """What a summary covers: the first `turns` compacted turns of one session."""

    session_id: str
    turns: int


def wants_model_summary(
    context: ContextConfig,
    tenant: TenantBudget,
    *,
    pinned: bool,
    compacted_turns: int,
    summary_limit: int,
) -> bool:
    """Whether a request may call the summarizer: the budget gate reserves the call and the
    answering job makes it under this one rule. Pinned (compliance) traffic keeps the
    extractive summary, so its conversation reaches no model but the pinned one; so does
    a tenant whose `allowed_roles` exclude the summarizer. Only turns the guard compacted
    out of this prompt are summarised (they are the material; without them there is
    nothing new to say)."""
    return (
        context.summarizer == "model"
        and not pinned
        and tenant.allows(SUMMARIZER_ROLE)
        and compacted_turns > 0
        and summary_limit > 0
    )


def fit_summary(text: str, limit: int, encoding_name: str) -> str | None:
    """`text` cut to at most `limit` tokens of `encoding_name` (at a token boundary, then
    re-counted, since a cut can re-tokenize differently); None when nothing useful fits."""
    text = text.strip()
    if not text or limit <= 0:
        return None
    if count_tokens(text, encoding_name) <= limit:
        return text
    enc = encoding(encoding_name)
    tokens = enc.encode(text, disallowed_special=())
    keep = limit
    while keep > 0:
        cut = enc.decode(tokens[:keep]).rstrip()
        if cut and count_tokens(cut, encoding_name) <= limit:
            return cut
        keep -= 1
    return None


@dataclass(slots=True)
class _Entry:
    coverage: Coverage
    text: str


class SummaryCache:
    """conversation_id -> the newest model-written summary and what it covers, LRU-bounded.

    Shared by the answering step's shards in one process (a conversation always lands on
    the same shard, but shards of several workers share the dict), hence the lock."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conversation_id: str, coverage: Coverage) -> str | None:
        """The cached summary if it covers exactly these turns; a stale one is not used."""
        with self._lock:
            entry = self._entries.get(conversation_id)
            if entry is None or entry.coverage != coverage:
                return None
            self._entries.move_to_end(conversation_id)
            return entry.text

    def put(self, conversation_id: str, coverage: Coverage, text: str) -> None:
        """Keep the summary unless a newer one (more turns covered, same session) is cached:
        a slow call finishing late must not replace a fresher summary."""
        if self._capacity == 0:
            return
        with self._lock:
            entry = self._entries.get(conversation_id)
            if (
                entry is not None
                and entry.coverage.session_id == coverage.session_id
                and entry.coverage.turns > coverage.turns
            ):
                return
            self._entries[conversation_id] = _Entry(coverage, text)
            self._entries.move_to_end(conversation_id)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class SharedCalls(Generic[T]):
    """At most one summary call per conversation and coverage, on the call executor's loop.

    Jobs of one conversation are opened back to back (a burst of turns) and may all find
    the cache empty while the first summary call is in flight. A call for a coverage that
    is in flight, or finished with an `ok` outcome, is awaited rather than made again; the
    caller learns it was shared, so only the first job records the call's cost. A follower
    that times out does not cancel the shared call (shielded); the first job's timeout does,
    so every call that may be billed belongs to a job that records it.

    Loop-confined: only coroutines on the executor's one loop thread touch it."""

    def __init__(self, capacity: int, ok: Callable[[T], bool]) -> None:
        self._capacity = max(1, capacity)
        self._ok = ok
        self._calls: OrderedDict[str, tuple[Coverage, asyncio.Future[T]]] = OrderedDict()

    async def run(
        self, conversation_id: str, coverage: Coverage, call: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """(the outcome, whether another job's call produced it)."""
        held = self._calls.get(conversation_id)
        if held is not None and held[0] == coverage and self._reusable(held[1]):
            return await asyncio.shield(held[1]), True
        task: asyncio.Future[T] = asyncio.ensure_future(call())
        self._calls[conversation_id] = (coverage, task)
        self._calls.move_to_end(conversation_id)
        while len(self._calls) > self._capacity:
            self._calls.popitem(last=False)
        return await task, False

    def _reusable(self, future: asyncio.Future[T]) -> bool:
        if not future.done():
            return True
        return not future.cancelled() and future.exception() is None and self._ok(future.result())
