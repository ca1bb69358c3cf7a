"""Routing: a classified turn plus its conversation state becomes a RoutePlan.

Policy (governance `routing`): compliance (a pinning tag, compared without case or
surrounding space, or a compliance intent the classifier is sure enough of in the whole
message or in any one of its pieces) goes to the pinned role whatever the size; small
talk in a short conversation to the trivial role; short bounded requests to `fast`; extended
conversations to `long_context`. Then the context-window guard: the prompt the role would
receive is counted in its tokenizer; a role whose window is too small is replaced by one
that fits (unless pinned), else older turns are compacted into a summary, else the request
is refused with ContextOverflow and no model is called.

The short-circuit cache keeps only the unpinned choice, keyed by the normalised text and
tags; the pin is decided again from every event (its tags and its own classification), so
no cached choice can lift a pin.

Only customer turns are routed: agent and system turns update the state but nobody
expects a model to answer them.
"""

from __future__ import annotations

import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulLogic

from splitpin.core import metrics
from splitpin.core.router.classifier import Classification
from splitpin.operators.classify import Classified
from splitpin.operators.context_guard import Overflow, PromptPlan, PromptTurn, plan_prompt
from splitpin.operators.conversation_state import (
    ConversationState,
    ConversationTracker,
    Turn,
    TurnObservation,
)
from splitpin.schemas.decisions import FeatureValue, ModelRole, Tier
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.normalize import normalize_tag

_NORMALIZE = re.compile(r"[^\w]+")


def normalize(text: str) -> str:
    """Case, punctuation and spacing do not make a question new."""
    return _NORMALIZE.sub(" ", text.casefold()).strip()


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """The policy's answer before the guard; what the short-circuit cache keeps."""

    tier: Tier
    role: ModelRole
    pinned: bool
    reasons: tuple[str, ...]
    intent: str | None
    confidence: float | None
    features: dict[str, FeatureValue]


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A routed turn: the choice, the prompt plan (None if refused) and what else would fit."""

    observation: TurnObservation
    choice: RouteChoice
    plan: PromptPlan | None
    overflow: Overflow | None = None
    alternatives: tuple[PromptPlan, ...] = ()
    """Other roles whose window fits, for the budget gate to downgrade to (never if pinned)."""
    reasons: tuple[str, ...] = ()
    cache_hit_of: str | None = None
    earlier_summarised_turns: int = 0
    """Turns that had already left the conversation window (summarised in every prompt)."""
    elapsed_s: float = 0.0
    window: tuple[Turn, ...] = ()
    """The conversation's recent turns at this point; the prompt's messages come from them."""
    left: tuple[Turn, ...] = ()
    """The newest turns that left the conversation window, in full (summarizer material)."""
    earlier_digests: tuple[str, ...] = ()
    """Digests of older turns no longer held in full (the summarizer's prior summary)."""


CacheKey = str
"""Normalised text and sorted normalised tags: a choice is reused only under the same tags."""


def cache_key(event: ConversationEvent) -> CacheKey:
    tags = sorted({normalize_tag(t) for t in event.tags})
    return "\x1f".join([normalize(event.text), *tags])


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    event_id: str
    sent_at: datetime
    choice: RouteChoice


@dataclass
class Router:
    """The pure routing stage; one per worker, built from the governance config."""

    governance: GovernanceConfig
    encodings: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        routing_encoding = self.governance.routing.token_encoding
        role_encodings = (role.tokenizer for role in self.governance.roles.values())
        self.encodings = tuple(dict.fromkeys([routing_encoding, *role_encodings]))

    def tracker(self) -> ConversationTracker:
        routing = self.governance.routing
        return ConversationTracker(
            self.governance.conversation, routing.token_encoding, self.encodings
        )

    def route(
        self, state: ConversationState, observation: TurnObservation, classification: Classification
    ) -> RoutePlan | None:
        """Plan one turn; None for turns nobody answers (agent, system)."""
        if observation.event.role != "customer":
            return None
        started = time.perf_counter()
        key = cache_key(observation.event)
        cached = self._cache_lookup(state, key, observation.event.sent_at)
        if cached is not None:
            base, hit_of = cached.choice, cached.event_id
        else:
            base, hit_of = self.base_choice(observation, classification), None
            self._cache_store(state, key, observation.event, base)
        # Never cached: the pin always follows this event's tags and classification.
        choice = self.pin(base, observation.event, classification)
        plan = self.guard(state, choice)
        return RoutePlan(
            observation=observation,
            choice=choice,
            plan=plan.plan,
            overflow=plan.overflow,
            alternatives=plan.alternatives,
            reasons=plan.reasons,
            cache_hit_of=hit_of,
            earlier_summarised_turns=state.compacted_turns,
            elapsed_s=observation.elapsed_s + time.perf_counter() - started,
            window=tuple(state.window),
            left=tuple(state.left),
            earlier_digests=state.earlier_digests(),
        )

    def choose(self, observation: TurnObservation, classification: Classification) -> RouteChoice:
        """The routing policy, before any window is checked."""
        return self.pin(
            self.base_choice(observation, classification), observation.event, classification
        )

    def base_choice(
        self, observation: TurnObservation, classification: Classification
    ) -> RouteChoice:
        """Tier and role by size and small talk, never pinned: what the cache may keep."""
        routing = self.governance.routing
        size = observation.tokens.conversation
        tier: Tier
        role: ModelRole
        reasons: list[str] = []
        if size >= routing.fast_max_tokens:
            tier, role = "extended", "long_context"
            reasons.append(
                f"tokens.conversation={size} >= fast_max_tokens={routing.fast_max_tokens}: "
                "extended -> long_context"
            )
        elif classification.trivial:
            tier, role = "trivial", routing.trivial_role
            why = (
                f"rule {classification.rule}"
                if classification.rule
                else (f"{classification.domain_intent} p={classification.domain_confidence:.2f}")
            )
            reasons.append(f"trivial ({why}) -> {role}")
        else:
            tier, role = "bounded", "fast"
            reasons.append(
                f"tokens.conversation={size} < fast_max_tokens={routing.fast_max_tokens}: "
                "bounded -> fast"
            )
        if classification.out_of_scope:
            reasons.append(f"out of scope (score {classification.out_of_scope_score:.2f})")
        return RouteChoice(
            tier=tier,
            role=role,
            pinned=False,
            reasons=tuple(reasons),
            intent=classification.intent,
            confidence=round(classification.intent_confidence, 4),
            features=classification.features(),
        )

    def pin(
        self, base: RouteChoice, event: ConversationEvent, classification: Classification
    ) -> RouteChoice:
        """Apply the pins of this very event: force_role, a pinning tag (normalised), or a
        compliance-bound message or piece. The one place a pin is decided."""
        routing = self.governance.routing
        pins = {normalize_tag(tag): role for tag, role in routing.tag_pins.items()}
        tags = sorted({normalize_tag(tag) for tag in event.tags})
        pinned_by = next((tag for tag in tags if tag in pins), None)
        reasons = list(base.reasons)
        role: ModelRole
        if routing.force_role is not None:
            role = routing.force_role
            reasons.append(f"single-model topology: routing.force_role pins {role}")
        elif pinned_by is not None:
            role = pins[pinned_by]
            reasons.append(f"tag:{pinned_by} pins role {role} regardless of size")
        elif classification.compliance:
            role = routing.compliance_role
            if classification.unscanned_pieces:
                reasons.append(
                    f"compliance unscanned: {classification.unscanned_pieces} pieces > "
                    f"classifier.max_pieces={self.governance.classifier.max_pieces} "
                    f"(fail closed) pins role {role}"
                )
            else:
                where = (
                    f"piece {classification.compliance_piece} of the message"
                    if classification.compliance_piece is not None
                    else f"intent {classification.intent}"
                )
                reasons.append(
                    f"compliance {where} (mass {classification.compliance_score:.2f} >= "
                    f"{routing.compliance_min_confidence}) pins role {role}"
                )
        else:
            return base
        return replace(
            base,
            role=role,
            pinned=True,
            reasons=tuple(reasons),
            features=classification.features(),
        )

    def guard(self, state: ConversationState, choice: RouteChoice) -> _Guarded:
        """Fit the chosen role's window, switching role or compacting as the policy allows."""
        gov = self.governance
        turns = [PromptTurn(t.role, t.text, t.counts) for t in state.window]
        digests = list(state.digests)

        def attempt(role: ModelRole, compact: bool) -> PromptPlan | Overflow | None:
            return plan_prompt(
                role, gov.roles[role], gov.context, turns, digests, allow_compaction=compact
            )

        others: tuple[ModelRole, ...] = ()
        if not choice.pinned:
            others = tuple(r for r in gov.context.fit_order if r != choice.role)
        first = attempt(choice.role, compact=False)
        reasons: list[str] = []
        chosen: PromptPlan | None = first if isinstance(first, PromptPlan) else None
        if chosen is None:
            limit = gov.roles[choice.role].context_window
            for other in others:
                candidate = attempt(other, compact=False)
                if isinstance(candidate, PromptPlan):
                    reasons.append(
                        f"{choice.role} window {limit} too small for the conversation; "
                        f"{other} (window {candidate.limit}) fits {candidate.prompt_tokens} tokens"
                    )
                    chosen = candidate
                    break
        if chosen is None:
            for role in (choice.role, *others):
                candidate = attempt(role, compact=True)
                if isinstance(candidate, PromptPlan):
                    summarizer = gov.roles["summarizer"]
                    how = (
                        f"extractive, rewritten by the model if it fits "
                        f"{candidate.summary_limit} tokens"
                        if gov.context.summarizer == "model" and not choice.pinned
                        else "extractive, local"
                    )
                    reasons.append(
                        f"compacted {candidate.compacted_turns} older turn(s) into a "
                        f"{candidate.summary_tokens}-token summary (summarizer role "
                        f"{summarizer.pinned_id}, {how}) to fit {role} window "
                        f"{candidate.limit}"
                    )
                    chosen = candidate
                    break
        if chosen is None:
            overflow = first if isinstance(first, Overflow) else attempt(choice.role, True)
            assert isinstance(overflow, Overflow)  # every other outcome returned above
            reasons.append(
                f"ContextOverflow: tokens={overflow.needed_tokens} limit={overflow.limit} "
                f"({choice.role}); not dispatched"
            )
            return _Guarded(None, overflow, (), tuple(reasons))
        if state.compacted_turns:
            reasons.append(
                f"{state.compacted_turns} older turn(s) summarised outside the "
                f"{gov.conversation.window_tokens}-token conversation window"
            )
        reasons.append(f"prompt {chosen.prompt_tokens} tokens fits {chosen.role} {chosen.limit}")
        alternatives = tuple(
            candidate
            for role in others
            if role != chosen.role
            and isinstance(candidate := attempt(role, compact=True), PromptPlan)
        )
        return _Guarded(chosen, None, alternatives, tuple(reasons))

    def _cache_lookup(
        self, state: ConversationState, key: CacheKey, sent_at: datetime
    ) -> _CacheEntry | None:
        entry: _CacheEntry | None = state.cache.get(key)
        ttl = timedelta(seconds=self.governance.cache.ttl_s)
        if entry is None or sent_at - entry.sent_at > ttl:
            return None
        return entry

    def _cache_store(
        self, state: ConversationState, key: CacheKey, event: ConversationEvent, choice: RouteChoice
    ) -> None:
        capacity = self.governance.cache.max_entries
        if capacity == 0:
            return
        state.cache[key] = _CacheEntry(event.event_id, event.sent_at, choice)
        state.cache.move_to_end(key)
        while len(state.cache) > capacity:
            state.cache.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Guarded:
    plan: PromptPlan | None
    overflow: Overflow | None
    alternatives: tuple[PromptPlan, ...]
    reasons: tuple[str, ...]


# --- Bytewax wrapper -------------------------------------------------------------------


class _ConversationLogic(StatefulLogic[Classified, RoutePlan, bytes]):
    """One conversation: its state, its cache; routes each new customer turn."""

    def __init__(self, router: Router, tracker: ConversationTracker, resume: bytes | None) -> None:
        self._router = router
        self._tracker = tracker
        self._state: ConversationState | None = None
        self._evict_at: datetime | None = None
        if resume is not None:
            self._state, self._evict_at = pickle.loads(resume)

    def on_item(self, value: Classified) -> tuple[list[RoutePlan], bool]:
        event, classification, classify_s = value
        self._state, observation = self._tracker.observe(self._state, event)
        idle = timedelta(seconds=self._tracker.idle_eviction_s(event.channel))
        self._evict_at = datetime.now(UTC) + idle
        if observation is None:
            metrics.DUPLICATE_EVENTS.inc()
            return [], StatefulLogic.RETAIN
        metrics.count(metrics.EVENTS_INGESTED, event.channel)
        if observation.new_session:
            metrics.count(metrics.SESSIONS_STARTED, event.channel)
        plan = self._router.route(self._state, observation, classification)
        if plan is None:
            return [], StatefulLogic.RETAIN
        plan = replace(plan, elapsed_s=plan.elapsed_s + classify_s)
        if plan.cache_hit_of is not None:
            metrics.CACHE_HITS.inc()
        return [plan], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[RoutePlan], bool]:
        metrics.CONVERSATIONS_EVICTED.inc()
        return [], StatefulLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return self._evict_at

    def snapshot(self) -> bytes:
        # Pickled bytes are immutable, as Bytewax requires of snapshots, and cheaper
        # than a deepcopy of the window.
        return pickle.dumps((self._state, self._evict_at), protocol=pickle.HIGHEST_PROTOCOL)


def conversation_logic(
    router: Router,
) -> Callable[[bytes | None], StatefulLogic[Classified, RoutePlan, bytes]]:
    """The builder of the per-conversation logic (keyed by conversation_id upstream; one
    RoutePlan per new customer turn), for the flow to run under its error isolation."""
    tracker = router.tracker()

    def build(resume: bytes | None) -> StatefulLogic[Classified, RoutePlan, bytes]:
        return _ConversationLogic(router, tracker, resume)

    return build
