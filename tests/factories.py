"""Builders for test events: valid by default, overridable field by field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from splitpin.operators.ingest import RawRecord
from splitpin.schemas.decisions import RoutingDecision, TokenCounts

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
T0_PAST_SKEW_S = 10 * 365 * 86_400.0
"""`max_past_skew_s` for settings that ingest the factories' events: T0 is fixed and already
past, and records without a Kafka timestamp (TestingSource) are judged against the wall clock;
10 years keeps this suite valid until 2036 while the future bound stays the default."""


def event_dict(
    event_id: str = "e-1",
    conversation_id: str = "c-1",
    *,
    text: str = "My card has not arrived yet, what should I do?",
    channel: str = "chat",
    role: str = "customer",
    at_s: float = 0.0,
    tags: tuple[str, ...] = (),
    tenant_id: str = "acme-bank",
    **extra: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "conversation_id": conversation_id,
        "tenant_id": tenant_id,
        "channel": channel,
        "role": role,
        "text": text,
        "sent_at": (T0 + timedelta(seconds=at_s)).isoformat().replace("+00:00", "Z"),
        "tags": list(tags),
        "metadata": {},
    }
    data.update(extra)
    return data


def raw(data: dict[str, Any] | bytes, *, offset: int = 0, key: bytes | None = None) -> RawRecord:
    """A consumed record; keyed by the event's conversation_id unless told otherwise."""
    if isinstance(data, dict):
        value = orjson.dumps(data)
        key = key if key is not None else str(data.get("conversation_id", "")).encode() or None
    else:
        value = data
    return RawRecord(key=key, value=value, topic="events", partition=0, offset=offset)


def decision(event_id: str = "e-1", **overrides: Any) -> RoutingDecision:
    """A dispatched fast-role decision for `event_id` (conversation `c-<event_id>`)."""
    fields: dict[str, Any] = {
        "decision_id": event_id,
        "event_id": event_id,
        "conversation_id": f"c-{event_id}",
        "tenant_id": "acme-bank",
        "tenant_policy": "configured",
        "channel": "chat",
        "sent_at": T0,
        "session_id": f"c-{event_id}:{event_id}",
        "turn_index": 0,
        "action": "dispatch",
        "tier": "bounded",
        "role": "fast",
        "model": "claude-3-5-haiku",
        "model_version": "claude-3-5-haiku-20241022",
        "reasons": ("test",),
        "tokens": TokenCounts(
            encoding="cl100k_base", turn=8, conversation=8, window=8, compacted=0
        ),
    }
    fields.update(overrides)
    return RoutingDecision(**fields)


ROUTINE_QUESTIONS = (
    "Where is my new card? It has not arrived yet.",
    "How do I top up my account with a bank transfer?",
    "Why was I charged a fee for a card payment abroad?",
    "My transfer to a friend is still pending, why is that?",
    "How can I change the PIN of my card?",
    "What exchange rate do you use for payments in another currency?",
    "Can I get a refund for a payment that was charged twice?",
    "How long does a bank transfer from another bank take to arrive?",
    "Why was my card declined at the supermarket today?",
    "How do I activate my new card in the app?",
    "Is there a limit on how much cash I can withdraw at an ATM?",
    "I made a payment to the wrong account, can it be reversed?",
)
"""Routine banking questions, none compliance-bound, for tests that answer them on a broker."""
