"""`replies.verifier_first`: a fast answer that cannot clear `verify_min_probability`
(the router too unsure of the intent for the agreement map to reach the bound) is not
waited for: the verifier is asked at once.

The guarantees attacked: the prediction fires exactly when the best the policy could say
of a fast answer (the agreement map for one citing the router intent's article at full
confidence) is under the bound plus the margin, and only for an unpinned, verifiable,
local fast answer of a tenant that may use the verifier; everything else (pinned traffic,
small talk, tenants without the verifier, no intent or article, `verify: always`, a remote
fast role, the off value) keeps today's calls exactly. `direct` makes one call, the
verifier's, without a draft, and ends with exactly one final, verified reply, no
preliminary and no audit sample (the sample stays among confident fast answers); a failing
direct verifier falls back to the routed role; the budget gate reserved the call that is
made and releases the ones that are not; `hedge` starts both calls at once. With the
shipped maps, no answer the prediction skipped could have cleared the bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from splitpin.operators.answering import (
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
    audited,
    calibrated_given_router,
)
from splitpin.operators.budget import BudgetGate, TenantLedger, build_decision, build_dispatch
from splitpin.operators.model_calls import CallFailed
from splitpin.operators.model_gateway import ModelGateway
from splitpin.providers.base import Message, ModelResult, Usage
from splitpin.providers.registry import ProviderRegistry
from splitpin.schemas.audit_sample import AuditSample
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.governance import GovernanceConfig, VerifierFirstConfig
from splitpin.schemas.metrics import CostRecord
from tests.factories import T0, decision
from tests.routing_helpers import governance
from tests.unit.test_answering import SOURCES, answer, replies
from tests.unit.test_budget import FakeClock, _say

Mode = Literal["off", "direct", "hedge"]
MODES: tuple[Mode, ...] = ("off", "direct", "hedge")
BOUND = 0.8
ARTICLE = "InternalDoc-11"
probabilities = st.floats(min_value=0, max_value=1)


def gov_with(mode: Mode, margin: float = 0.0, **replies_: Any) -> GovernanceConfig:
    return governance(
        replies={
            "verify": "audit",
            "verify_min_probability": BOUND,
            "audit_fraction": 1.0,
            "hedging": {"enabled": False},
            "verifier_first": {"mode": mode, "margin": margin},
            **replies_,
        }
    )


def router_only(fast: float | None, router: float | None, agree: bool) -> float | None:
    """An agreement map that is the router's probability when the answer agrees (so the
    best a fast answer can reach is exactly the router's probability) and 0 when not."""
    return (router if agree else 0.0) if fast is not None else None


def policy_of(gov: GovernanceConfig, *, local: bool = True, **fields: Any) -> AnswerPolicy:
    return AnswerPolicy(
        gov,
        runner=_unused,
        clock=lambda: T0.timestamp() + 1.0,
        probability=lambda role, confidence, provider: confidence,
        intent_article=lambda tenant, intent: ARTICLE if intent != "no_article" else None,
        given_router=fields.pop("given_router", router_only),
        answers_locally=fields.pop("answers_locally", lambda role: local),
        **fields,
    )


def dispatch(event_id: str = "e-1", **overrides: Any) -> Dispatch:
    messages = (Message(role="user", content="my card has not arrived"),)
    overrides.setdefault("intent", "card_arrival")
    return Dispatch(decision(event_id, **overrides), messages, "", dispatched_at=T0.timestamp())


def first_calls(policy: AnswerPolicy, item: Dispatch) -> list[tuple[str, CallSpec]]:
    _, step = policy.open(item)
    return [*step.calls, *((c, s) for c, s, _ in step.delayed)]


Script = Callable[[CallSpec], ModelResult | CallFailed]


def drive(
    policy: AnswerPolicy, item: Dispatch, script: Script
) -> tuple[list[AnswerOutput], list[str]]:
    """Run the job to its end, calls answered in order; everything emitted, purposes called."""
    job, step = policy.open(item)
    out: list[AnswerOutput] = list(step.emit)
    called: list[str] = []
    queue = list(step.calls)
    while queue:
        call_id, spec = queue.pop(0)
        called.append(call_id)
        got = script(spec)
        outcome = got if isinstance(got, CallFailed) else CallOutcome(spec.request(SOURCES), got)
        step = policy.advance(job, call_id, outcome)
        out += step.emit
        queue += step.calls
    assert step.done
    return out, called


async def _unused(spec: CallSpec) -> Any:
    raise AssertionError("the tests supply outcomes themselves")


# --- the rule ----------------------------------------------------------------------------


def test_a_bare_yaml_off_is_the_off_value() -> None:
    assert VerifierFirstConfig.model_validate({"mode": False}).mode == "off"


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    margin=st.floats(min_value=0, max_value=0.2),
    router=st.none() | probabilities,
    channel=st.sampled_from(["chat", "email"]),
    pinned=st.booleans(),
    tier=st.sampled_from(["trivial", "bounded"]),
    tenant=st.sampled_from(["acme-bank", "shopco"]),
    intent=st.sampled_from(["card_arrival", "none", "no_article", None]),
    local=st.booleans(),
    verify=st.sampled_from(["audit", "below_confidence", "always"]),
)
def test_only_an_answer_that_cannot_clear_the_bound_changes_the_first_calls(
    mode: Mode,
    margin: float,
    router: float | None,
    channel: str,
    pinned: bool,
    tier: str,
    tenant: str,
    intent: str | None,
    local: bool,
    verify: str,
) -> None:
    """shopco's budget excludes the verifier (config/governance.yaml): today's path."""
    role: dict[str, Any] = (
        {"role": "compliance", "pinned": True, "model": "claude-3-5-sonnet"} if pinned else {}
    )
    item = dispatch(
        confidence=router, channel=channel, tier=tier, tenant_id=tenant, intent=intent, **role
    )
    calls = first_calls(policy_of(gov_with(mode, margin, verify=verify), local=local), item)
    today = first_calls(policy_of(gov_with("off", margin, verify=verify), local=local), item)
    assert [c for c, _ in today] == ["pinned" if pinned else "primary"]
    predicted = (
        mode != "off"
        and verify != "always"
        and local
        and not pinned
        and tier != "trivial"
        and tenant == "acme-bank"
        and intent == "card_arrival"
        and router is not None
        and router < BOUND + margin
    )
    if not predicted:
        assert [(c, s.role, s.hedge) for c, s in calls] == [(c, s.role, s.hedge) for c, s in today]
    elif mode == "direct":
        ((call_id, spec),) = calls
        assert (call_id, spec.role, spec.candidates, spec.hedge) == ("verify", "verifier", (), None)
    else:
        assert [(c, s.role) for c, s in calls] == [("primary", "fast"), ("verify", "verifier")]
        assert dict(calls)["verify"].hedge == channel


@settings(max_examples=300, deadline=None)
@given(router=probabilities, fast=probabilities, agree=st.booleans())
def test_with_the_shipped_maps_a_skipped_fast_answer_could_not_have_cleared_the_bound(
    router: float, fast: float, agree: bool
) -> None:
    """Margin 0 is exact: when the prediction fires, the policy would have verified every
    answer the fast role could have given (any confidence, citing any article)."""
    policy = policy_of(gov_with("direct"), given_router=calibrated_given_router)
    item = dispatch(confidence=router)
    if [c for c, _ in first_calls(policy, item)] == ["verify"]:
        judged = calibrated_given_router(fast, router, agree)
        assert judged is not None and judged < BOUND


# --- direct, to the end -----------------------------------------------------------------


def _cites(confidence: float = 0.9) -> Script:
    return lambda spec: answer(spec, ARTICLE, confidence)


@settings(max_examples=60, deadline=None)
@given(
    router=st.floats(min_value=0, max_value=BOUND, exclude_max=True),
    channel=st.sampled_from(["chat", "email"]),
    event_id=st.text(min_size=1, max_size=20),
)
def test_direct_is_one_verified_final_from_the_verifier_alone(
    router: float, channel: str, event_id: str
) -> None:
    """audit_fraction 1.0: every confident fast answer would be audited, yet a direct
    event has no fast answer, so there is nothing to audit."""
    item = dispatch(event_id, confidence=router, channel=channel)
    out, called = drive(policy_of(gov_with("direct")), item, _cites())
    assert called == ["verify"]
    (final,) = replies(out)
    assert (final.kind, final.status, final.route, final.calls) == (
        "final",
        "verified",
        "verifier",
        1,
    )
    assert final.supersedes is None
    assert not [s for s in out if isinstance(s, AuditSample)]
    (record,) = [r for r in out if isinstance(r, CostRecord)]
    assert record.last_call and record.job_calls == ("verify",)


def test_a_confident_router_keeps_the_fast_pass_and_its_audit_sample() -> None:
    chosen = next(f"e-{n}" for n in range(100) if audited(f"e-{n}", 1.0))
    item = dispatch(chosen, confidence=0.9)
    out, called = drive(policy_of(gov_with("direct")), item, _cites(0.95))
    assert called == ["primary", "verify"]
    assert [s.event_id for s in out if isinstance(s, AuditSample)] == [chosen]


def test_a_failed_direct_verifier_falls_back_to_the_routed_role() -> None:
    """The verifier asked first fails: the fast pass answers and, unable to clear the
    bound, is verified once more; exactly one final either way."""
    seen: list[str] = []

    def script(spec: CallSpec) -> ModelResult | CallFailed:
        if spec.purpose == "verify" and "primary" not in seen:
            seen.append("failed verify")
            return CallFailed("timeout", "scripted")
        seen.append(spec.purpose)
        return answer(spec, ARTICLE, 0.9)

    item = dispatch(confidence=0.3)
    out, called = drive(policy_of(gov_with("direct")), item, script)
    assert called == ["verify", "primary", "verify"]
    finals = [r for r in replies(out) if r.kind == "final"]
    assert [(r.status, r.route) for r in finals] == [("verified", "verifier")]

    def both_fail(spec: CallSpec) -> ModelResult | CallFailed:
        if spec.purpose == "verify":
            return CallFailed("timeout", "scripted")
        return answer(spec, ARTICLE, 0.4)

    out, called = drive(policy_of(gov_with("direct")), item, both_fail)
    assert called == ["verify", "primary", "verify"]
    assert [(r.kind, r.status) for r in replies(out)] == [("final", "withheld")]


def test_direct_without_room_in_the_verifier_window_keeps_the_fast_pass() -> None:
    gov = gov_with("direct")
    small = gov.model_copy(
        update={
            "roles": {
                **gov.roles,
                "verifier": gov.roles["verifier"].model_copy(update={"context_window": 64}),
            }
        }
    )
    assert [c for c, _ in first_calls(policy_of(small), dispatch(confidence=0.1))] == ["primary"]


@pytest.mark.parametrize("mode", ["auto", "local"])
@pytest.mark.parametrize("key", [None, "sk-ant-test-key"])
def test_the_fast_role_is_local_exactly_when_the_registry_made_it_so(
    mode: str, key: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy asks the registry the flow built (through the gateway), not the process
    environment: a key only the process sees, not the registry, changes nothing."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-only-the-process-sees-this")
    gov = governance(
        providers={"mode": mode}, replies={"verifier_first": {"mode": "direct", "margin": 0.0}}
    )
    env = {} if key is None else {"ANTHROPIC_API_KEY": key}
    registry = ProviderRegistry.build(gov, env=env, local=lambda name, role: object())
    gateway = ModelGateway(gov, registry, retriever=None)  # type: ignore[arg-type]
    policy = policy_of(gov, answers_locally=gateway.answers_locally)
    local = key is None or mode == "local"  # a key in auto mode: the API answers the role
    assert registry.describe()["fast"].startswith("local") is local
    assert policy.fast_is_local is local
    # What it changes: an unsure router sends the event to the verifier alone only when the
    # local fleet's answer is the one the agreement map predicts.
    first = [c for c, _ in first_calls(policy, dispatch(confidence=0.1))]
    assert first == (["verify"] if local else ["primary"])
    assert not gateway.answers_locally("no-such-role")  # type: ignore[arg-type]


# --- the budget -------------------------------------------------------------------------


def test_the_gate_reserved_the_direct_call_and_releases_the_fast_one() -> None:
    gov = governance(
        budgets={"tenants": {"acme-bank": {"limit_usd": 1.0}}, "window_s": 3600},
        replies={
            "hedging": {"enabled": False},
            "verifier_first": {"mode": "direct", "margin": 0.0},
        },
    )
    gate = BudgetGate(gov, FakeClock())
    ledger = TenantLedger()
    routed = _say(gov, "where is my card")
    verdict = gate.admit(ledger, routed)
    made = build_decision(routed, verdict, gov)[0]
    assert isinstance(made, RoutingDecision) and made.role == "fast" and not made.pinned
    made = made.model_copy(update={"confidence": 0.3, "intent": "card_arrival"})
    (held,) = ledger.reservations.values()
    reserved_verify = held.open["verify"]
    policy = policy_of(gov)
    job, step = policy.open(build_dispatch(routed, made, verdict.plan))
    ((call_id, spec),) = step.calls
    assert call_id == "verify"
    result = answer(spec, ARTICLE).model_copy(update={"usage": Usage(tokens_in=900, tokens_out=60)})
    done = policy.advance(job, call_id, CallOutcome(spec.request(SOURCES), result))
    assert done.done
    (record,) = [r for r in done.emit if isinstance(r, CostRecord)]
    assert record.last_call and record.job_calls == ("verify",)
    assert round(record.cost_usd * 1e9) <= reserved_verify  # the call made was reserved
    gate.reconcile(ledger, record)
    assert not ledger.reservations  # primary, re-route and re-plan slots released
    window = ledger.spend(gate._roll(ledger))
    assert window.reserved == 0 and window.committed == round(record.cost_usd * 1e9)


# --- the metric ---------------------------------------------------------------------------

PATHS = ("skip", "verify", "audit", "direct", "hedge")


def _paths() -> dict[str, float]:
    return {
        p: REGISTRY.get_sample_value("splitpin_verification_paths_total", {"path": p}) or 0.0
        for p in PATHS
    }


@settings(max_examples=60, deadline=None)
@given(
    router=probabilities,
    fast=probabilities,
    fraction=st.sampled_from([0.0, 0.5, 1.0]),
    event_id=st.text(min_size=1, max_size=12),
)
def test_every_unpinned_job_counts_the_one_path_its_calls_took(
    router: float, fast: float, fraction: float, event_id: str
) -> None:
    """`splitpin_verification_paths_total` names what happened: direct exactly when the
    verifier alone was called, skip when the fast answer was final alone, verify or audit
    (audit only for the hash-chosen sample) when both were called."""
    policy = policy_of(gov_with("direct", audit_fraction=fraction))
    before = _paths()
    _, called = drive(policy, dispatch(event_id, confidence=router), _cites(fast))
    after = _paths()
    moved = {p: after[p] - before[p] for p in PATHS if after[p] != before[p]}
    assert sum(moved.values()) == 1
    (path,) = moved
    expected = {
        ("verify",): "direct",
        ("primary",): "skip",
        ("primary", "verify"): "audit" if path == "audit" else "verify",
    }[tuple(called)]
    assert path == expected
    if path == "audit":
        assert audited(event_id, fraction)


def test_pinned_jobs_are_not_counted_as_a_path() -> None:
    before = _paths()
    drive(policy_of(gov_with("direct")), dispatch(confidence=0.1, pinned=True), _cites())
    assert _paths() == before
