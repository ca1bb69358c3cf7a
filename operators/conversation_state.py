"""Per-conversation token state: sessions, a window of recent turns, idempotency.

The logic is event-time only (gaps are measured between `sent_at` values), so replaying
the same events from a snapshot reproduces the same observations byte for byte. Wall
clock is used for one thing: evicting idle conversations from memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from splitpin.core.summarizer import digest
from splitpin.core.tokens import count_tokens
from splitpin.schemas.decisions import TokenCounts
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import ConversationConfig

MAX_DIGESTS = 64
"""Digests of turns that left the window; the summary keeps the newest that fit its budget."""


class Turn(NamedTuple):
    """One turn kept verbatim in the recent window (the text later feeds the prompt).

    A NamedTuple rather than a dataclass: snapshots pickle every window each epoch, and
    tuples pickle several times faster.
    """

    event_id: str
    role: str
    text: str
    tokens: int
    sent_at: datetime
    counts: dict[str, int]
    """Tokens in every encoding a role uses, counted once so the guard never recounts."""


@dataclass
class ConversationState:
    """Everything remembered about one conversation. Pickled into Bytewax snapshots."""

    conversation_id: str
    session_id: str
    session_started_at: datetime
    last_sent_at: datetime
    turn_count: int = 0
    session_tokens: int = 0
    compacted_turns: int = 0
    compacted_tokens: int = 0
    window: deque[Turn] = field(default_factory=deque)
    window_tokens: int = 0
    digests: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_DIGESTS))
    """One line per turn that left the window: the material of the compacted summary."""
    left: deque[Turn] = field(default_factory=deque)
    """The newest turns that left the window, in full, up to `summary_source_tokens` and
    MAX_DIGESTS turns: what the summarizer role reads (their digests are in `digests` too)."""
    left_tokens: int = 0
    seen: OrderedDict[str, int] = field(default_factory=OrderedDict)
    """event_id -> its token count: the token snapshot that makes a retried event a no-op."""
    cache: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    """Normalized text -> the routing outcome reused for a repeat (operators/routing.py)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Snapshots from before `left` existed restore with it empty."""
        self.__dict__.update(state)
        self.__dict__.setdefault("left", deque())
        self.__dict__.setdefault("left_tokens", 0)

    def earlier_digests(self) -> tuple[str, ...]:
        """Digests of the turns that left the window and are no longer held in full."""
        held = len(self.left)
        return tuple(self.digests)[: max(0, len(self.digests) - held)]


@dataclass(frozen=True, slots=True)
class TurnObservation:
    """The state of the conversation right after one new turn; what routing decides on."""

    event: ConversationEvent
    session_id: str
    turn_index: int
    new_session: bool
    tokens: TokenCounts
    elapsed_s: float = 0.0
    """Router time spent on this turn so far (for the decision-latency histogram only)."""


class ConversationTracker:
    """Folds events into ConversationState; pure apart from token counting."""

    def __init__(
        self, config: ConversationConfig, encoding: str, extra_encodings: Iterable[str] = ()
    ) -> None:
        self._config = config
        self._encoding = encoding
        self._encodings = tuple(dict.fromkeys([encoding, *extra_encodings]))

    def observe(
        self, state: ConversationState | None, event: ConversationEvent
    ) -> tuple[ConversationState, TurnObservation | None]:
        """Apply one event. Returns the new state and None when the event_id was seen."""
        if state is not None and event.event_id in state.seen:
            state.seen.move_to_end(event.event_id)
            return state, None
        new_session = state is None or self._gap_exceeded(state, event)
        if state is None or new_session:
            state = self._new_session(event, previous=state)
        started = time.perf_counter()
        counts = {name: count_tokens(event.text, name) for name in self._encodings}
        tokens = counts[self._encoding]
        self._append(state, event, tokens, counts)
        observation = TurnObservation(
            event=event,
            session_id=state.session_id,
            turn_index=state.turn_count - 1,
            new_session=new_session,
            tokens=TokenCounts(
                encoding=self._encoding,
                turn=tokens,
                conversation=state.session_tokens,
                window=state.window_tokens,
                compacted=state.compacted_tokens,
            ),
            elapsed_s=time.perf_counter() - started,
        )
        return state, observation

    def idle_eviction_s(self, channel: str) -> float:
        """Wall-clock idle time after which a conversation's state may be dropped."""
        gap = self._config.session_gap_s["email" if channel == "email" else "chat"]
        return gap * self._config.idle_eviction_factor

    def _gap_exceeded(self, state: ConversationState, event: ConversationEvent) -> bool:
        gap = (event.sent_at - state.last_sent_at).total_seconds()
        return gap > self._config.session_gap_s[event.channel]

    def _new_session(
        self, event: ConversationEvent, previous: ConversationState | None
    ) -> ConversationState:
        # Idempotency must outlive the session: a retry can arrive after a new session began.
        seen = previous.seen if previous is not None else OrderedDict()
        return ConversationState(
            conversation_id=event.conversation_id,
            session_id=f"{event.conversation_id}/{event.event_id}",
            session_started_at=event.sent_at,
            last_sent_at=event.sent_at,
            seen=seen,
        )  # the cache, like the window, belongs to the session and starts empty

    def _append(
        self,
        state: ConversationState,
        event: ConversationEvent,
        tokens: int,
        counts: dict[str, int],
    ) -> None:
        state.turn_count += 1
        state.session_tokens += tokens
        state.last_sent_at = max(state.last_sent_at, event.sent_at)
        state.window.append(
            Turn(event.event_id, event.role, event.text, tokens, event.sent_at, counts)
        )
        state.window_tokens += tokens
        # Keep the newest turn even if it alone exceeds the window; compact older ones.
        while state.window_tokens > self._config.window_tokens and len(state.window) > 1:
            dropped = state.window.popleft()
            state.window_tokens -= dropped.tokens
            state.compacted_turns += 1
            state.compacted_tokens += dropped.tokens
            state.digests.append(digest(dropped.role, dropped.text, self._encoding))
            state.left.append(dropped)
            state.left_tokens += dropped.tokens
            while state.left and (
                state.left_tokens > self._config.summary_source_tokens
                or len(state.left) > MAX_DIGESTS
            ):
                state.left_tokens -= state.left.popleft().tokens
        state.seen[event.event_id] = tokens
        while len(state.seen) > self._config.dedupe_capacity:
            state.seen.popitem(last=False)
