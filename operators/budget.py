"""Budget gate, keyed by tenant: a tenant's spend in a budget window never exceeds its limit.

All of a tenant's spend lives in one keyed state, so requests are admitted one at a time.
The invariant (docs/architecture.md, "A budget is a cap") rests on four rules:

- **Reserve the most a request can cost.** Every call the answering policy may make for
  the event (primary or pinned; verify; re-route: see operators/answering.py) is reserved
  at its input (the guard's counted prompt, plus the largest draft for the verifier,
  times `1 + budgets.input_token_margin`) and its output cap (`BudgetConfig.output_cap`,
  which is also the `max_tokens` sent), priced at the dearest role of its fallback chain.
  When the window cannot hold that, the request is downgraded to the cheapest allowed
  role whose reservation fits, or refused with the reason.
- **Windows on processing time.** The window is the gate's clock (wall clock in
  production), never the producer's `sent_at`, and it only moves forward.
- **Reconcile in the reservation's window.** Each window keeps its own committed spend:
  open reservations plus reconciled actual costs. A CostRecord settles its call's
  reservation in the window that reservation was made in (a late record never touches
  the current one); a record is applied at most once; a reservation stays open (and
  counted) across window rolls until its record arrives.
- **Release what a finished job did not use.** The answering job's last CostRecord says
  so (`last_call`, with `job_calls`, the ids of all its records): every other open slot
  of the event (calls that never happened, or failed with no record) stops counting;
  the slots in `job_calls` stay until their own records arrive, so a last record that
  overtakes its siblings never un-counts them. Releasing is idempotent (a re-stated or
  duplicated last record changes nothing more).

Amounts are whole nano-dollars, so "at or under the limit" is exact arithmetic.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, get_args

from bytewax.operators import StatefulLogic

from splitpin.core import metrics
from splitpin.core.summarizer import DIGEST_MAX_TOKENS, HEADER
from splitpin.core.tokens import count_tokens
from splitpin.operators.answering import DRAFT_OVERHEAD_TOKENS, CallPurpose, Dispatch
from splitpin.operators.context_guard import MESSAGE_OVERHEAD_TOKENS, PromptPlan
from splitpin.operators.conversation_state import MAX_DIGESTS, Turn
from splitpin.operators.prompt_messages import turn_messages
from splitpin.operators.routing import RoutePlan
from splitpin.operators.summaries import SUMMARIZER_ROLE, wants_model_summary
from splitpin.schemas.decisions import ModelRole, RoutingDecision
from splitpin.schemas.governance import GovernanceConfig, TenantBudget
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.normalize import normalize_tenant_id
from splitpin.schemas.validation import ValidationFailure

log = logging.getLogger(__name__)

MAX_OPEN_RESERVATIONS = 10_000
"""Events with open reservations per tenant; the oldest beyond this is closed with its
reserved amount kept as spent (conservative), bounding the state."""

SHADOW_LEDGER = "canary:shadow"
"""The one key a canary's budget gate keeps all its traffic under (one shadow budget)."""

NANOS_PER_USD = 1_000_000_000
CALL_PURPOSES: frozenset[str] = frozenset(get_args(CallPurpose)) - {"replan"}
"""Purposes whose record, once its slot is settled, is a duplicate. A `replan` (after a
provider's context-length error) takes the place of the primary, verify and re-route
calls, none of which cost anything or can follow: its record draws on the event's open
slots first (see INSTEAD_PURPOSES)."""
TERMINAL_PURPOSES: frozenset[str] = frozenset({"pinned", "reroute", "replan"})
"""No call follows these in operators/answering.py: a record of one written before
`last_call` existed ends the event (it releases every other slot)."""
INSTEAD_PURPOSES: frozenset[str] = frozenset({"replan"})
"""Calls made only instead of all the others: they reserve only what the others' sum
lacks of their own bound."""
BESIDE_PURPOSES: frozenset[str] = frozenset({"summary"})
"""Calls made before and beside all the others (the summarizer's): a re-plan replaces the
answering calls, never these, so they do not count towards what it may draw on."""


def _nanos_up(usd: float) -> int:
    return math.ceil(usd * NANOS_PER_USD)


def _nanos_down(usd: float) -> int:
    return math.floor(usd * NANOS_PER_USD)


def _usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


@dataclass(frozen=True, slots=True)
class CallBound:
    """The most one call may cost: its input and capped output at the dearest link."""

    purpose: CallPurpose
    role: ModelRole
    tokens_in: int
    tokens_out: int
    max_cost_usd: float

    @property
    def nanos(self) -> int:
        return _nanos_up(self.max_cost_usd)


@dataclass
class WindowSpend:
    """One budget window of one tenant, in nano-dollars."""

    reserved: int = 0
    """Open reservations made in this window and not yet settled."""
    actual: int = 0
    """Reconciled actual costs of calls reserved in this window."""

    @property
    def committed(self) -> int:
        return self.reserved + self.actual


@dataclass
class Reservation:
    window_start: float
    open: dict[str, int]
    """Call purpose -> nano-dollars still reserved for that call."""


@dataclass
class TenantLedger:
    current: float | None = None
    """Start (epoch seconds, processing time) of the newest window: it never moves back."""
    windows: dict[float, WindowSpend] = field(default_factory=dict)
    reservations: OrderedDict[str, Reservation] = field(default_factory=OrderedDict)
    reconciled: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """record_ids already applied: a CostRecord re-emitted after a crash is counted once."""
    unmatched_usd: float = 0.0
    """Cost of records with no open reservation (already settled, evicted, or unknown):
    their spend is already counted by the reservation that covered them."""

    def spend(self, window: float) -> WindowSpend:
        return self.windows.setdefault(window, WindowSpend())

    @property
    def spent_usd(self) -> float:
        """Committed spend (reservations + actuals) in the current window."""
        if self.current is None or self.current not in self.windows:
            return 0.0
        return _usd(self.windows[self.current].committed)


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Literal["allow", "downgrade", "refuse"]
    plan: PromptPlan | None
    cost_usd: float
    """The reservation (0 when refused): the sum of `calls`' bounds, except that a call
    made only instead of the others (a re-plan) adds only what their sum lacks."""
    reason: str | None = None
    calls: tuple[CallBound, ...] = ()


BOUNDS_MEMO = 4096
"""Call bounds a gate remembers (a few hundred bytes each); past that it starts afresh."""


@dataclass
class BudgetGate:
    governance: GovernanceConfig
    clock: Callable[[], float] = time.time
    """Processing time, epoch seconds: injectable for tests, the wall clock in production."""
    shadow_limit_usd: float | None = None
    """A canary's gate: ONE ledger (the flow keys all its traffic alike) held to this limit
    instead of the tenants' (their allowed roles still apply); it reconciles only shadow
    CostRecords, and a tenant's gate (None) only non-shadow ones."""
    _bounds: dict[tuple[CallPurpose, ModelRole, int], CallBound] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """`_bound` results of this governance (`_bounds_of`): every admission prices four or
    five calls per plan, and a refused one every alternative, at recurring token counts."""
    _bounds_of: GovernanceConfig | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def shadow(self) -> bool:
        return self.shadow_limit_usd is not None

    def limit_usd(self, tenant: TenantBudget) -> float:
        return tenant.limit_usd if self.shadow_limit_usd is None else self.shadow_limit_usd

    def admit(self, ledger: TenantLedger, routed: RoutePlan) -> Verdict:
        event = routed.observation.event
        tenant = self.governance.budgets.for_tenant(event.tenant_id)
        window = self._roll(ledger)
        limit_usd = self.limit_usd(tenant)
        limit = _nanos_down(limit_usd)
        remaining = max(0, limit - ledger.spend(window).committed)
        if routed.plan is None:
            return Verdict("refuse", None, 0.0, "context overflow: nothing dispatched")
        pinned = routed.choice.pinned

        # Each plan's bounds once: the allow path asked for them twice, and sorting the
        # alternatives re-derived them per comparison key (pure functions of the plan).
        bounds: dict[int, tuple[CallBound, ...]] = {}

        def calls(plan: PromptPlan) -> tuple[CallBound, ...]:
            known = bounds.get(id(plan))
            if known is None:
                summary = summary_material(routed, plan, self.governance)
                known = self.call_bounds(plan, pinned=pinned, tenant=tenant, summary=summary)
                bounds[id(plan)] = known
            return known

        def cost(plan: PromptPlan) -> int:
            return sum(_amounts(calls(plan)).values())

        allowed = tenant.allowed_roles
        chosen = routed.plan
        candidates = [p for p in routed.alternatives if allowed is None or p.role in allowed]
        chosen_allowed = allowed is None or chosen.role in allowed
        if chosen_allowed and cost(chosen) <= remaining:
            return self._reserve(ledger, window, event.event_id, "allow", chosen, calls(chosen))

        affordable = sorted(
            (p for p in candidates if cost(p) <= remaining), key=lambda p: (cost(p), p.role)
        )
        owner = "the canary" if self.shadow else event.tenant_id
        budget_note = (
            f"{'shadow budget' if self.shadow else 'budget'}: {owner} has "
            f"${_usd(remaining):.6f} of ${limit_usd:.2f} left in the window from {_when(window)}"
        )
        if chosen_allowed:
            why = f"{budget_note}; {chosen.role} would reserve ${_usd(cost(chosen)):.6f}"
        else:
            why = f"role {chosen.role} is not allowed for tenant {event.tenant_id}"
        if affordable and not pinned:
            best = affordable[0]
            return self._reserve(
                ledger,
                window,
                event.event_id,
                "downgrade",
                best,
                calls(best),
                f"{why}; downgraded to {best.role}",
            )
        if pinned:
            return Verdict("refuse", None, 0.0, f"{why}; the role is pinned")
        if not chosen_allowed:
            why = f"{why}; {budget_note}"
        return Verdict("refuse", None, 0.0, f"{why}; no allowed role is affordable")

    def call_bounds(
        self,
        plan: PromptPlan,
        *,
        pinned: bool,
        tenant: TenantBudget,
        summary: tuple[int, int] | None = None,
    ) -> tuple[CallBound, ...]:
        """Every call operators/answering.py may make for a request planned as `plan`.
        `summary`: the summarizer's material, (turns, tokens in its tokenizer), from
        `summary_material`; None: assume some, at an upper bound (the whole window and
        the held turns, twice)."""
        gov = self.governance
        replies = gov.replies
        if summary is None:
            held = gov.conversation.window_tokens + gov.conversation.summary_source_tokens
            summary = (1 if plan.summary else 0, 2 * (held + MAX_DIGESTS * DIGEST_MAX_TOKENS))
        summarise = wants_model_summary(
            gov.context,
            tenant,
            pinned=pinned,
            compacted_turns=summary[0],
            summary_limit=plan.summary_limit if plan.summary else 0,
        )
        # A model-written summary may be as long as the guard's limit, not the extractive one.
        prompt = plan.max_prompt_tokens if summarise else plan.prompt_tokens
        bounds = [self._bound("pinned" if pinned else "primary", plan.role, prompt)]
        if pinned:  # one call; a failure or violation gets the safe reply
            return tuple(bounds)
        if summarise:
            counted = gov.context.system_prompt_tokens + summary[1]
            bounds.append(self._bound("summary", SUMMARIZER_ROLE, counted))
        if tenant.allows(replies.verifier_role):  # after an answer, or instead of a failed one
            draft = gov.budgets.output_cap(gov.roles[plan.role]) + DRAFT_OVERHEAD_TOKENS
            bounds.append(self._bound("verify", replies.verifier_role, prompt + draft))
        if tenant.allows(replies.reroute_role) and replies.reroute_role != plan.role:
            bounds.append(self._bound("reroute", replies.reroute_role, prompt))
        # A provider's context-length error on the primary re-plans it, once, to a
        # fit_order role with a larger window, with the whole planned prompt.
        replans = [
            self._bound("replan", name, prompt)
            for name in gov.context.fit_order
            if name != plan.role and name in gov.roles and tenant.allows(name)
        ]
        if replans:
            bounds.append(max(replans, key=lambda b: b.max_cost_usd))
        return tuple(bounds)

    def reservation_usd(self, plan: PromptPlan, *, pinned: bool, tenant_id: str) -> float:
        """What admitting `plan` reserves: the sum of its calls' bounds."""
        tenant = self.governance.budgets.for_tenant(tenant_id)
        return _usd(sum(_amounts(self.call_bounds(plan, pinned=pinned, tenant=tenant)).values()))

    def _bound(self, purpose: CallPurpose, role_name: ModelRole, counted_in: int) -> CallBound:
        """A pure function of its arguments and the governance: remembered (`_bounds`)."""
        if self._bounds_of is not self.governance:
            self._bounds.clear()
            self._bounds_of = self.governance
        key = (purpose, role_name, counted_in)
        known = self._bounds.get(key)
        if known is None:
            if len(self._bounds) >= BOUNDS_MEMO:
                self._bounds.clear()
            known = self._bounds[key] = self._priced(purpose, role_name, counted_in)
        return known

    def _priced(self, purpose: CallPurpose, role_name: ModelRole, counted_in: int) -> CallBound:
        roles = self.governance.roles
        budgets = self.governance.budgets
        role = roles[role_name]
        tokens_in = budgets.input_bound(counted_in)
        tokens_out = budgets.output_cap(role)  # what is sent; a fallback clamps further
        chain = [roles[link] for link in (role_name, *role.fallback) if link in roles]
        cost = max(link.cost_usd(tokens_in, tokens_out) for link in chain)
        return CallBound(purpose, role_name, tokens_in, tokens_out, cost)

    def reconcile(self, ledger: TenantLedger, record: CostRecord) -> None:
        """The call's actual cost replaces its reservation, in the reservation's window; the
        job's last record (`last_call`) also releases its calls that never happened."""
        if record.shadow != self.shadow:
            return  # a shadow cost never reaches a tenant's ledger, nor a real one the canary's
        if record.record_id not in ledger.reconciled:
            ledger.reconciled[record.record_id] = None
            while len(ledger.reconciled) > MAX_OPEN_RESERVATIONS:
                ledger.reconciled.popitem(last=False)
            self._settle(ledger, record)
        if record.last_call:  # also when stated again on a record already applied
            self._release(ledger, record.event_id, keep=frozenset(record.job_calls))
        self._prune(ledger)

    def _settle(self, ledger: TenantLedger, record: CostRecord) -> None:
        """Apply one record, once: its cost replaces its own call's reservation."""
        reservation = ledger.reservations.get(record.event_id)
        prefix, _, purpose = record.record_id.rpartition(":")
        if prefix != record.event_id:
            purpose = ""
        if reservation is None or (purpose in CALL_PURPOSES and purpose not in reservation.open):
            ledger.unmatched_usd += record.cost_usd  # covered by a settled or closed reservation
            return
        spend = ledger.spend(reservation.window_start)
        cost = round(record.cost_usd * NANOS_PER_USD)  # records carry 9 decimals
        own = reservation.open.pop(purpose, 0)
        spend.reserved -= own
        spend.actual += cost
        excess = cost - own
        for other in list(reservation.open):  # a call over its bound draws on its siblings
            if excess <= 0:
                break
            take = min(excess, reservation.open[other])
            reservation.open[other] -= take
            spend.reserved -= take
            excess -= take
        if excess > 0:
            log.warning(
                "budget: %s cost $%.9f more than its reservation (tenant %s)",
                record.record_id,
                _usd(excess),
                record.tenant_id,
            )
        if purpose in TERMINAL_PURPOSES and not record.last_call:  # written before last_call
            spend.reserved -= sum(reservation.open.values())
            reservation.open.clear()
        if not reservation.open:
            del ledger.reservations[record.event_id]

    def _release(self, ledger: TenantLedger, event_id: str, *, keep: frozenset[str]) -> None:
        """The event's job has ended: every open call slot not in `keep` (the calls that
        have a CostRecord, still to arrive) will never be billed and stops counting."""
        reservation = ledger.reservations.get(event_id)
        if reservation is None:
            return
        spend = ledger.spend(reservation.window_start)
        for purpose in [p for p in reservation.open if p not in keep]:
            spend.reserved -= reservation.open.pop(purpose)
        if not reservation.open:
            del ledger.reservations[event_id]

    def remaining_usd(self, ledger: TenantLedger, tenant_id: str) -> float:
        """What the current window still admits, in [0, limit] (the gauge's value)."""
        limit = self.limit_usd(self.governance.budgets.for_tenant(tenant_id))
        return min(limit, max(0.0, limit - ledger.spent_usd))

    def _reserve(
        self,
        ledger: TenantLedger,
        window: float,
        event_id: str,
        action: Literal["allow", "downgrade"],
        plan: PromptPlan,
        calls: tuple[CallBound, ...],
        reason: str | None = None,
    ) -> Verdict:
        self._close(ledger, event_id)  # a repeated admission never un-counts the first
        open_ = _amounts(calls)
        ledger.spend(window).reserved += sum(open_.values())
        ledger.reservations[event_id] = Reservation(window, open_)
        while len(ledger.reservations) > MAX_OPEN_RESERVATIONS:
            self._close(ledger, next(iter(ledger.reservations)))
        total = sum(open_.values())
        return Verdict(action, plan, _usd(total), reason, calls)

    def _close(self, ledger: TenantLedger, event_id: str) -> None:
        """Forget a reservation, keeping its open amount as spent in its window."""
        reservation = ledger.reservations.pop(event_id, None)
        if reservation is None:
            return
        spend = ledger.spend(reservation.window_start)
        held = sum(reservation.open.values())
        spend.reserved -= held
        spend.actual += held

    def _roll(self, ledger: TenantLedger) -> float:
        """The current window on the gate's clock; it never moves back."""
        window_s = self.governance.budgets.window_s
        now = self.clock()
        start = math.floor(now / window_s) * window_s if math.isfinite(now) else math.nan
        if math.isfinite(start) and (ledger.current is None or start > ledger.current):
            ledger.current = float(start)
            self._prune(ledger)
        if ledger.current is None:
            ledger.current = 0.0
        ledger.spend(ledger.current)
        return ledger.current

    def _prune(self, ledger: TenantLedger) -> None:
        """Past windows matter only while a reservation there is open."""
        for start in [w for w, s in ledger.windows.items() if w != ledger.current]:
            if ledger.windows[start].reserved <= 0:
                del ledger.windows[start]


def _amounts(calls: tuple[CallBound, ...]) -> dict[str, int]:
    """Nano-dollars reserved per call: its bound; for a call made only instead of all the
    others, what their sum lacks (its record draws on theirs first)."""
    amounts: dict[str, int] = {
        b.purpose: b.nanos for b in calls if b.purpose not in INSTEAD_PURPOSES
    }
    together = sum(n for p, n in amounts.items() if p not in BESIDE_PURPOSES)
    for bound in calls:
        if bound.purpose in INSTEAD_PURPOSES:
            amounts[bound.purpose] = max(0, bound.nanos - together)
    return amounts


def _when(start: float) -> str:
    try:
        return f"{datetime.fromtimestamp(start, tz=UTC):%Y-%m-%dT%H:%M}Z"
    except (OverflowError, OSError, ValueError):
        return f"{start:.0f} s after the epoch"


def gauge_tenant(governance: GovernanceConfig, tenant_id: str) -> str:
    """The gauge's label: a configured tenant's id, else `other` (a bounded label set)."""
    normalized = normalize_tenant_id(tenant_id)
    return normalized if normalized in governance.known_tenants() else "other"


def build_decision(
    routed: RoutePlan, verdict: Verdict, governance: GovernanceConfig
) -> list[RoutingDecision | ValidationFailure]:
    """The decision record (and a failure record for an overflow) for one routed turn."""
    obs = routed.observation
    event = obs.event
    choice = routed.choice
    plan = verdict.plan
    role_name = plan.role if plan is not None else choice.role
    role = governance.roles[role_name]
    reasons = [*choice.reasons, *routed.reasons]
    if routed.cache_hit_of is not None:
        reasons.append(f"cache: same question as {routed.cache_hit_of}, decision reused")
    if verdict.reason is not None:
        reasons.append(verdict.reason)
    # Ingest dead-letters unknown tenants when tenancy.unknown says so; one that got here
    # anyway (None) was served under the defaults, which is what the decision says.
    policy = governance.tenant_policy(event.tenant_id) or "default"
    decision = RoutingDecision(
        decision_id=event.event_id,
        event_id=event.event_id,
        conversation_id=event.conversation_id,
        tenant_id=event.tenant_id,
        tenant_policy=policy,
        channel=event.channel,
        sent_at=event.sent_at,
        session_id=obs.session_id,
        turn_index=obs.turn_index,
        action="refuse" if verdict.action == "refuse" else "dispatch",
        tier=choice.tier,
        intent=choice.intent,
        confidence=choice.confidence,
        role=role_name,
        model=role.model,
        model_version=role.pinned_id,
        pinned=choice.pinned,
        reasons=tuple(reasons),
        tokens=obs.tokens,
        prompt_tokens=plan.prompt_tokens if plan is not None else None,
        compacted_turns=(
            plan.compacted_turns + routed.earlier_summarised_turns if plan is not None else 0
        ),
        cache_hit_of=routed.cache_hit_of,
        estimated_cost_usd=round(verdict.cost_usd, 9),
        features=choice.features,
        config_version=governance.version_id(),
    )
    out: list[RoutingDecision | ValidationFailure] = [decision]
    if routed.overflow is not None:
        overflow = routed.overflow
        out.append(
            ValidationFailure(
                failure_id=f"{event.event_id}:context-window",
                event_id=event.event_id,
                conversation_id=event.conversation_id,
                tenant_id=event.tenant_id,
                check="context-window",
                error="ContextOverflow",
                detail=(
                    f"tokens={overflow.needed_tokens} limit={overflow.limit} for role "
                    f"{overflow.role}: the newest message alone does not fit; not dispatched"
                ),
                model=governance.roles[overflow.role].pinned_id,
                action="refused",
            )
        )
    return out


# --- Bytewax wrapper -------------------------------------------------------------------

BudgetInput = RoutePlan | CostRecord
BudgetOutput = RoutingDecision | ValidationFailure | Dispatch


def build_dispatch(
    routed: RoutePlan, decision: RoutingDecision, plan: PromptPlan | None
) -> Dispatch:
    """What the model stage needs besides the decision: the planned prompt's turns."""
    included = plan.included_turns if plan is not None else 0
    turns = routed.window[len(routed.window) - included :] if included else ()
    messages = turn_messages(turns)
    summary = plan.summary if plan is not None else ""
    return Dispatch(
        decision,
        messages,
        summary,
        dispatched_at=time.time(),
        compacted=turn_messages(_compacted(routed, plan)),
        earlier_summary=earlier_summary(routed.earlier_digests),
        summary_limit=plan.summary_limit if plan is not None else 0,
    )


def _compacted(routed: RoutePlan, plan: PromptPlan | None) -> tuple[Turn, ...]:
    """Every turn `plan`'s summary stands for that is still held in full: those that left
    the conversation window (newest, `RoutePlan.left`), then the window's turns the guard
    left out of the prompt."""
    if plan is None or not plan.summary:
        return ()
    dropped = routed.window[: len(routed.window) - plan.included_turns]
    return (*routed.left, *dropped)


def earlier_summary(digests: tuple[str, ...]) -> str:
    """Digests of turns that left the conversation window, as the summarizer's prior summary."""
    return "\n".join([HEADER, *digests]) if digests else ""


def summary_material(
    routed: RoutePlan, plan: PromptPlan, governance: GovernanceConfig
) -> tuple[int, int]:
    """The summarizer's material for `plan`: (turns held in full, tokens in its tokenizer
    of what the summary call sends besides the system prompt: those turns and the digests
    of older ones)."""
    encoding = governance.roles[SUMMARIZER_ROLE].tokenizer
    compacted = _compacted(routed, plan)
    tokens = sum(
        (turn.counts.get(encoding) or count_tokens(turn.text, encoding)) + MESSAGE_OVERHEAD_TOKENS
        for turn in compacted
    )
    earlier = earlier_summary(routed.earlier_digests)
    if earlier:
        tokens += count_tokens(earlier, encoding) + MESSAGE_OVERHEAD_TOKENS
    return len(compacted), tokens


class _TenantLogic(StatefulLogic[BudgetInput, BudgetOutput, bytes]):
    def __init__(self, gate: BudgetGate, resume: bytes | None) -> None:
        self._gate = gate
        self._ledger = TenantLedger() if resume is None else _restore(gate, resume)

    def on_item(self, value: BudgetInput) -> tuple[list[BudgetOutput], bool]:
        if isinstance(value, CostRecord):
            self._gate.reconcile(self._ledger, value)
            metrics.BUDGET_RECONCILED.inc()
            self._report_remaining(value.tenant_id)
            return [], StatefulLogic.RETAIN
        verdict = self._gate.admit(self._ledger, value)
        tenant_id = value.observation.event.tenant_id
        # Remaining budget depends on how tenants' events from different partitions
        # interleave, which a replay does not reproduce: a gauge, not a decision field.
        self._report_remaining(tenant_id)
        out: list[BudgetOutput] = list(build_decision(value, verdict, self._gate.governance))
        decision = out[0]
        assert isinstance(decision, RoutingDecision)
        out.append(build_dispatch(value, decision, verdict.plan))
        metrics.count(metrics.BUDGET_VERDICTS, verdict.action)
        if value.overflow is not None:
            metrics.OVERFLOWS_PREVENTED.inc()
        return out, StatefulLogic.RETAIN

    def _report_remaining(self, tenant_id: str) -> None:
        label = "shadow" if self._gate.shadow else gauge_tenant(self._gate.governance, tenant_id)
        remaining = self._gate.remaining_usd(self._ledger, tenant_id)
        metrics.child(metrics.BUDGET_REMAINING, label).set(remaining)

    def snapshot(self) -> bytes:
        return pickle.dumps(self._ledger, protocol=pickle.HIGHEST_PROTOCOL)


def _restore(gate: BudgetGate, resume: bytes) -> TenantLedger:
    """A snapshot's ledger; one from before per-window ledgers keeps its spend as spent
    in the current window (conservative), its open reservations folded in."""
    ledger = pickle.loads(resume)
    if isinstance(ledger, TenantLedger) and "windows" in vars(ledger):
        return ledger
    old = vars(ledger) if hasattr(ledger, "__dict__") else {}
    fresh = TenantLedger()
    window = gate._roll(fresh)
    fresh.spend(window).actual = _nanos_up(float(old.get("spent_usd", 0.0)))
    return fresh


def tenant_logic(
    gate: BudgetGate,
) -> Callable[[bytes | None], StatefulLogic[BudgetInput, BudgetOutput, bytes]]:
    """The builder of the per-tenant logic (keyed by tenant_id upstream: RoutePlans to admit,
    CostRecords to reconcile), for the flow to run under its error isolation."""

    def build(resume: bytes | None) -> StatefulLogic[BudgetInput, BudgetOutput, bytes]:
        return _TenantLogic(gate, resume)

    return build
