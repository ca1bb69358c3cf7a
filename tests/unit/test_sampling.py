"""The canary's guarantees as plain logic (operators/sampling.py, the shadow budget gate):
whole conversations sampled by a hash of their id, a prefix no output escapes, shadow costs
that never reach a tenant's ledger, and one shadow budget that caps all canary traffic."""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.operators.budget import BudgetGate, TenantLedger
from splitpin.operators.isolation import Failed
from splitpin.operators.routing import RoutePlan
from splitpin.operators.sampling import (
    ForeignTopicError,
    in_sample,
    mark_shadow,
    mirrored,
    require_prefix,
    sample_point,
)
from splitpin.schemas.dead_letter import DeadLetter
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.metrics import CostRecord
from tests.factories import event_dict
from tests.routing_helpers import Conversation, governance

IDS = st.text(min_size=1, max_size=40)
FRACTIONS = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def _reference_point(conversation_id: str) -> float:
    """The documented mapping, written independently: sha256, first 8 bytes, over 2**64."""
    digest = hashlib.sha256(conversation_id.encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest[:16], 16) / 2**64


@given(IDS)
def test_point_is_the_documented_hash_in_unit_interval(conversation_id: str) -> None:
    point = sample_point(conversation_id)
    assert 0.0 <= point < 1.0
    assert point == _reference_point(conversation_id)


@given(IDS, FRACTIONS, FRACTIONS)
def test_sample_is_monotone_and_bounded(conversation_id: str, a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert not in_sample(conversation_id, 0.0)
    assert in_sample(conversation_id, 1.0)
    if in_sample(conversation_id, low):  # growing the fraction only adds conversations
        assert in_sample(conversation_id, high)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=50)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([f"c-{n}" for n in range(12)]),
            st.sampled_from(["hi", "where is my card", "refund please"]),
        )
    ),
    FRACTIONS,
)
def test_every_turn_of_a_sampled_conversation_and_none_of_the_others(
    turns: list[tuple[str, str]], fraction: float
) -> None:
    kept: dict[str, list[bool]] = defaultdict(list)
    for n, (conversation_id, text) in enumerate(turns):
        event = ConversationEvent.model_validate(
            event_dict(f"{conversation_id}-{n}", conversation_id, text=text)
        )
        kept[conversation_id].append(mirrored(event, fraction))
    for conversation_id, verdicts in kept.items():
        assert set(verdicts) == {in_sample(conversation_id, fraction)}


def test_share_of_conversations_matches_the_fraction() -> None:
    ids = [f"conv-{n}" for n in range(20_000)]
    for fraction in (0.01, 0.1, 0.5, 0.9):
        share = sum(in_sample(i, fraction) for i in ids) / len(ids)
        assert abs(share - fraction) < 0.015, (fraction, share)


@given(st.one_of(st.none(), IDS), FRACTIONS)
def test_dead_letters_follow_their_record_key(key: str | None, fraction: float) -> None:
    letter = DeadLetter(
        reason="not_json",
        detail="x",
        source_topic="events",
        source_partition=0,
        source_offset=0,
        key_b64=None if key is None else base64.b64encode(key.encode("utf-8")).decode(),
        value_b64="",
        value_bytes=0,
    )
    expected = key is not None and in_sample(key, fraction)
    assert mirrored(letter, fraction) == expected
    assert mirrored(Failed(letter), fraction) == expected  # a record ingest raised for


@given(st.text(max_size=10), st.text(max_size=30))
def test_a_topic_outside_the_prefix_is_refused(prefix: str, topic: str) -> None:
    if prefix and topic.startswith(prefix):
        require_prefix(topic, prefix)
    else:
        with pytest.raises(ForeignTopicError):
            require_prefix(topic, prefix)


def _cost(record_id: str, tenant: str, cost: float, *, shadow: bool) -> CostRecord:
    return CostRecord(
        record_id=record_id,
        event_id=record_id.rpartition(":")[0],
        tenant_id=tenant,
        role="fast",
        model="m",
        model_version="m-1",
        tokens_in=1,
        tokens_out=1,
        cost_usd=cost,
        latency_ms=1.0,
        occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
        shadow=shadow,
    )


def test_mark_shadow_touches_only_cost_records() -> None:
    record = _cost("e:primary", "acme-bank", 0.1, shadow=False)
    marked = mark_shadow(record)
    assert isinstance(marked, CostRecord) and marked.shadow
    assert marked.model_copy(update={"shadow": False}) == record
    assert mark_shadow("other") == "other"


TENANTS = ("acme-bank", "globex", "initech")
SHADOW_LIMITS = (0.01, 0.05, 0.1, 0.2)
# Tenants' own limits are far above the shadow one: only the shadow budget can bind.
GOV = governance(budgets={"default": {"limit_usd": 1000.0}, "window_s": 3600})


def _plans() -> list[RoutePlan]:
    plans = []
    for n, tenant in enumerate(TENANTS):
        for m, text in enumerate(("where is my card", "why was my transfer declined")):
            routed = Conversation(GOV, f"s-{n}-{m}").say(text, tenant_id=tenant)
            assert routed is not None and routed.plan is not None
            plans.append(routed)
    return plans


PLANS = _plans()
MAX_RESERVATION_USD = max(
    BudgetGate(GOV).reservation_usd(p.plan, pinned=False, tenant_id=p.observation.event.tenant_id)
    for p in PLANS
    if p.plan is not None
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60, deadline=None)
@given(
    st.sampled_from(SHADOW_LIMITS),
    st.lists(
        st.tuples(st.integers(0, len(PLANS) - 1), st.booleans(), st.floats(0, 0.02)),
        min_size=1,
        max_size=40,
    ),
)
def test_one_shadow_budget_caps_all_tenants_and_ignores_real_costs(
    limit: float, steps: list[tuple[int, bool, float]]
) -> None:
    gate = BudgetGate(GOV, clock=lambda: 7200.0, shadow_limit_usd=limit)
    ledger = TenantLedger()  # the flow keys every canary item alike: one ledger
    limit_nanos = int(limit * 1e9)
    admitted = 0
    for n, (index, real_cost, cost) in enumerate(steps):
        plan = PLANS[index]
        event_id = f"{plan.observation.event.event_id}-{n}"
        event = plan.observation.event.model_copy(update={"event_id": event_id})
        routed = replace(plan, observation=replace(plan.observation, event=event))
        before = {w: (s.reserved, s.actual) for w, s in ledger.windows.items()}
        if real_cost:  # a tenant's (non-shadow) record must change nothing here
            gate.reconcile(ledger, _cost(f"{event_id}:primary", "acme-bank", cost, shadow=False))
            assert {w: (s.reserved, s.actual) for w, s in ledger.windows.items()} == before
        verdict = gate.admit(ledger, routed)
        if verdict.action == "refuse":
            assert verdict.reason is not None and "shadow budget: the canary" in verdict.reason
        else:
            admitted += 1
        assert ledger.windows[7200.0].committed <= limit_nanos
        assert 0.0 <= gate.remaining_usd(ledger, "globex") <= limit
    if limit >= MAX_RESERVATION_USD:  # the first admission always fits
        assert admitted >= 1


def test_a_tenants_gate_never_counts_a_shadow_record() -> None:
    gate = BudgetGate(GOV, clock=lambda: 7200.0)
    ledger = TenantLedger()
    verdict = gate.admit(ledger, PLANS[0])
    assert verdict.action == "allow"
    committed = ledger.windows[7200.0].committed
    event_id = PLANS[0].observation.event.event_id
    gate.reconcile(ledger, _cost(f"{event_id}:primary", "acme-bank", 0.0, shadow=True))
    assert ledger.windows[7200.0].committed == committed  # the reservation stays
    assert event_id in ledger.reservations
    gate.reconcile(ledger, _cost(f"{event_id}:primary", "acme-bank", 0.0, shadow=False))
    assert ledger.windows[7200.0].committed < committed
