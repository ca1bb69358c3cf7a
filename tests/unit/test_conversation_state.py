"""Conversation state: sessions by event-time gap, the token window, idempotency."""

from __future__ import annotations

import pickle

from splitpin.core.tokens import count_tokens
from splitpin.operators.conversation_state import ConversationState, ConversationTracker
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import ConversationConfig
from tests.factories import event_dict

CONFIG = ConversationConfig(
    window_tokens=60,
    session_gap_s={"chat": 1800, "email": 86400},
    dedupe_capacity=4,
)


def _event(
    i: int, *, at_s: float, channel: str = "chat", text: str = "hello there"
) -> ConversationEvent:
    return ConversationEvent.model_validate(
        event_dict(f"e-{i}", "c-1", at_s=at_s, channel=channel, text=text)
    )


def _fold(tracker: ConversationTracker, events: list[ConversationEvent]) -> ConversationState:
    state = None
    for event in events:
        state, _ = tracker.observe(state, event)
    assert state is not None
    return state


def test_tokens_accumulate_per_session() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    state, first = tracker.observe(None, _event(1, at_s=0, text="my card is lost"))
    state, second = tracker.observe(state, _event(2, at_s=30, text="please help quickly"))
    assert first is not None and second is not None
    expected_1 = count_tokens("my card is lost", "cl100k_base")
    expected_2 = count_tokens("please help quickly", "cl100k_base")
    assert first.tokens.turn == expected_1
    assert second.tokens.conversation == expected_1 + expected_2
    assert (first.turn_index, second.turn_index) == (0, 1)
    assert first.new_session and not second.new_session
    assert second.session_id == first.session_id == "c-1/e-1"


def test_retried_event_is_not_recounted() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    state, _ = tracker.observe(None, _event(1, at_s=0))
    tokens_before = state.session_tokens
    state, again = tracker.observe(state, _event(1, at_s=0))
    assert again is None
    assert state.session_tokens == tokens_before
    assert state.turn_count == 1


def test_chat_gap_starts_new_session_but_email_gap_is_longer() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    state, _ = tracker.observe(None, _event(1, at_s=0))
    state, late_chat = tracker.observe(state, _event(2, at_s=1801))
    assert late_chat is not None and late_chat.new_session
    assert late_chat.turn_index == 0
    assert late_chat.tokens.conversation == late_chat.tokens.turn

    email_state, _ = tracker.observe(None, _event(1, at_s=0, channel="email"))
    email_state, next_day = tracker.observe(email_state, _event(2, at_s=3600 * 5, channel="email"))
    assert next_day is not None and not next_day.new_session


def test_idempotency_survives_a_new_session() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    state = _fold(tracker, [_event(1, at_s=0), _event(2, at_s=4000)])
    _, retried = tracker.observe(state, _event(1, at_s=0))
    assert retried is None


def test_window_keeps_recent_turns_and_compacts_older_ones() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    text = "one two three four five six seven eight nine ten"  # 10 tokens
    state = _fold(tracker, [_event(i, at_s=i, text=text) for i in range(10)])
    assert state.window_tokens <= CONFIG.window_tokens
    assert state.window_tokens + state.compacted_tokens == state.session_tokens
    assert len(state.window) + state.compacted_turns == 10
    assert state.window[-1].event_id == "e-9"


def test_a_single_turn_larger_than_the_window_is_kept() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    state, obs = tracker.observe(None, _event(1, at_s=0, text="word " * 500))
    assert obs is not None
    assert len(state.window) == 1
    assert obs.tokens.window == obs.tokens.turn > CONFIG.window_tokens


def test_dedupe_memory_is_bounded() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    state = _fold(tracker, [_event(i, at_s=i) for i in range(10)])
    assert list(state.seen) == ["e-6", "e-7", "e-8", "e-9"]


def test_state_round_trips_through_pickle_for_snapshots() -> None:
    tracker = ConversationTracker(CONFIG, "cl100k_base")
    state = _fold(tracker, [_event(i, at_s=i) for i in range(3)])
    restored = pickle.loads(pickle.dumps(state))
    _, a = tracker.observe(state, _event(7, at_s=10))
    _, b = tracker.observe(restored, _event(7, at_s=10))
    assert a is not None and b is not None
    assert a.tokens == b.tokens and a.turn_index == b.turn_index
