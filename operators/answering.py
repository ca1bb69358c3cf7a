"""Fast, then verified: the job that answers one dispatched event.

Per event (a `Dispatch` from the budget gate), as calls finish:

- refused by routing (overflow, budget): a clear final reply at once, no call;
- pinned (compliance tag or intent): one call to the pinned role; only its validated
  reply goes out, never a preliminary;
- otherwise the routed role (fast or long_context) answers first. On chat, an answer whose
  confidence clears `replies.preliminary_min_confidence` goes out as revision 0
  (preliminary, unverified); a lower confidence escalates. An unknown confidence (a remote
  model that offers no logprobs) gets no preliminary: the verifier looks first. Email
  never gets a preliminary.
  The verifier then re-ranks that candidate against its own reading and writes the final
  revision: `verified` when it agrees with the preliminary, `corrected` when not. Small
  talk has nothing to verify and its fast answer is final (unless `verify_trivial`).
  `replies.verify` may spare the verifier: under `below_confidence` a fast answer whose
  calibrated probability of being right reaches `verify_min_probability` is final at once
  (unverified); `audit` still verifies a hash-chosen `audit_fraction` of those and emits an
  AuditSample (did the verifier cite the same sources?). `replies.verifier_first` skips the
  wait for a fast answer that could not clear that bound whatever it says (the router is
  unsure): the verifier answers alone (`direct`) or races the fast pass (`hedge`);
- every answer is validated before it goes out (operators/validation.py). A failing one
  is withheld, recorded, and re-asked once of the pinned `reroute_role`; if that fails
  too, the safe reply is sent;
- a verification that times out follows `on_verification_timeout` and is recorded.

Each answered event therefore ends with exactly one `final` revision. A CostRecord goes
out per model call; the job's last one is marked `last_call` (the budget gate then
releases what the calls that never happened reserved). Identities are stable (reply_id +
revision, event_id + call id), so the duplicates a crash recovery re-emits are
recognisable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from splitpin.core import metrics
from splitpin.core.tokens import count_tokens
from splitpin.operators.context_guard import MESSAGE_OVERHEAD_TOKENS, fit_messages
from splitpin.operators.model_calls import CallFailed, JobStep, StreamingQuantile
from splitpin.operators.sampling import in_sample
from splitpin.operators.summaries import (
    Coverage,
    SharedCalls,
    SummaryCache,
    fit_summary,
    wants_model_summary,
)
from splitpin.operators.validation import Violation, validate_answer
from splitpin.providers import calibration
from splitpin.providers.base import (
    CONFIRM,
    Candidate,
    Message,
    ModelRequest,
    ModelResult,
    SourceDoc,
)
from splitpin.providers.prompting import customer_doc_ids
from splitpin.schemas.audit_sample import AuditSample
from splitpin.schemas.decisions import ModelRole, RoutingDecision
from splitpin.schemas.governance import GovernanceConfig, HedgeMode, RepliesConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure

log = logging.getLogger(__name__)

PRELIMINARY_REVISION = 0
FINAL_REVISION = 1
"""A reply's revision says its kind, whether or not a preliminary went out: after a crash
a re-issued remote call may decide differently about the preliminary, and reply_id +
revision must still name one record (docs/topics.md, "Reply contract")."""

CallPurpose = Literal["primary", "pinned", "verify", "reroute", "replan", "summary"]

DRAFT_OVERHEAD_TOKENS = 40
"""A draft's framing in the verifier's prompt: its number, confidence and cited ids."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A dispatched (or refused) decision with the prompt the guard planned for it."""

    decision: RoutingDecision
    messages: tuple[Message, ...]
    summary: str
    dispatched_at: float
    """Wall-clock seconds when the decision was made: time-to-reply metrics start here."""
    compacted: tuple[Message, ...] = ()
    """The in-window turns the guard compacted into `summary` (the summarizer's material)."""
    earlier_summary: str = ""
    """Digests of turns that left the conversation window (the material's older part)."""
    summary_limit: int = 0
    """The most tokens (routed role's tokenizer) a summary may take in the planned prompt."""


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One model call, picklable: snapshots keep it and a resume re-issues it."""

    purpose: CallPurpose
    request_id: str
    role: ModelRole
    tenant_id: str
    messages: tuple[Message, ...]
    summary: str
    max_tokens: int
    sources: tuple[SourceDoc, ...] | None
    """None: retrieve for the question first (the gateway does, off the worker thread)."""
    candidates: tuple[Candidate, ...] = ()
    timeout_s: float = 30.0
    intent: str | None = None
    """The router's confident intent: the gateway attaches its article first (if any)."""
    hedge: str | None = None
    """The channel of a verification started before the fast pass answered
    (replies.hedging); None: not a hedge."""
    summary_of: tuple[str, Coverage] | None = None
    """A summary call's conversation and coverage (operators/summaries.py): the same one in
    flight or done is shared, not made again."""
    intent_confidence: float | None = None
    """The router's probability for `intent`: a sure one narrows the prompt of
    knowledge.intent_sure_roles (ModelGateway; None: never narrowed)."""

    def request(self, sources: tuple[SourceDoc, ...]) -> ModelRequest:
        """The request as sent, once the sources are known."""
        return ModelRequest(
            request_id=self.request_id,
            role=self.role,
            tenant_id=self.tenant_id,
            messages=self.messages,
            summary=self.summary,
            max_tokens=self.max_tokens,
            sources=sources,
            candidates=self.candidates,
        )


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What the gateway returns for a spec: the request as sent, then a result or an error."""

    request: ModelRequest
    result: ModelResult | None
    error_kind: str | None = None
    error: str | None = None
    error_model: str | None = None
    shared: bool = False
    """Another job's identical summary call produced it: that job records its cost."""


@dataclass(frozen=True, slots=True)
class Escalation:
    """An answer handed to a stronger role; counted by the flow, not written to Kafka."""

    from_role: ModelRole
    to_role: ModelRole
    reason: Literal["low_confidence", "failed", "validation"]


@dataclass(frozen=True, slots=True)
class ReplyTiming:
    """Seconds from decision to emission of a reply, for the Prometheus histograms."""

    kind: Literal["preliminary", "final"]
    route: ModelRole
    seconds: float


AnswerOutput = Reply | CostRecord | ValidationFailure | Escalation | ReplyTiming | AuditSample

VerifyChoice = Literal["verify", "skip", "audit"]

AUDIT_SALT = "audit:"
"""Salts the event id before hashing, so the audit sample is independent of the canary's
(which hashes conversation ids the same way)."""


Probability = Callable[[ModelRole, float | None, str], float | None]
"""(role, raw confidence, provider) -> probability the answer is right; None: unknown."""


def calibrated_probability(
    role: ModelRole, confidence: float | None, provider: str
) -> float | None:
    """The shipped calibration (splitpin/providers/calibration.py): the local fleet's
    roles through their fitted isotonic maps, remote confidence as reported."""
    return calibration.probability_right(role, confidence, provider)


GivenRouter = Callable[[float | None, float | None, bool], float | None]
"""(fast raw confidence, router intent probability, the answer cites that intent's article)
-> probability the local fast answer is right; None: unknown."""


def calibrated_given_router(
    confidence: float | None, router_probability: float | None, cites_router_article: bool
) -> float | None:
    """The shipped agreement map (splitpin/providers/calibration.py); the fast map alone
    when the router's probability is unknown or the artifact predates the map."""
    return calibration.fast_probability_given_router(
        confidence, router_probability, cites_router_article
    )


def verifier_subset(
    sources: tuple[SourceDoc, ...], keep: set[str], others: int
) -> tuple[SourceDoc, ...]:
    """The sources whose doc id is in `keep` and the `others` best-ranked rest, in their
    attached order (replies.verifier_other_sources)."""
    kept = [doc for doc in sources if doc.doc_id in keep]
    kept += [doc for doc in sources if doc.doc_id not in keep][:others]
    return tuple(doc for doc in sources if doc in kept)


def verifier_keep(candidates: tuple[Candidate, ...], article: str | None) -> set[str]:
    """The articles a verifier must choose among whatever `verifier_subset` trims: every
    draft's citations and the router intent's article (None: none). Built only here, for
    the policy's trim of a draft's sources and the gateway's of a narrowed draft's search."""
    keep = {doc_id for candidate in candidates for doc_id in candidate.doc_ids}
    if article is not None:
        keep.add(article)
    return keep


def audited(event_id: str, fraction: float) -> bool:
    """True for the `fraction` of event ids in the audit sample: a hash, so the same on every
    worker, in every process and after a recovery re-issues the job."""
    return in_sample(AUDIT_SALT + event_id, fraction)


def verification_choice(
    replies: RepliesConfig, event_id: str, probability: float | None, *, pinned: bool
) -> VerifyChoice:
    """`replies.verify` for one fast answer: verify it, let it stand (skip), or verify it
    as part of the audit sample. Pinned traffic and unknown or low probabilities are
    always verified; `always` verifies everything."""
    if pinned or replies.verify == "always" or probability is None:
        return "verify"
    if probability < replies.verify_min_probability:
        return "verify"
    if replies.verify == "audit" and audited(event_id, replies.audit_fraction):
        return "audit"
    return "skip"


@dataclass
class AnswerJob:
    dispatch: Dispatch
    sources: tuple[SourceDoc, ...] | None = None
    preliminary: Reply | None = None
    draft: ModelResult | None = None
    """The routed role's answer, which a verifier may confirm rather than rewrite."""
    escalated: bool = False
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    emulated: bool = False
    tried: list[ModelRole] = field(default_factory=list)
    records: tuple[CostRecord, ...] = ()
    """Every CostRecord emitted so far (a class default, so older snapshots restore)."""
    audit: bool = False
    """A confident draft verified only as part of the audit sample (AuditSample on verify)."""
    probability: float | None = None
    """The draft's calibrated probability of being right (the verification policy's input)."""
    hedge_due: float | None = None
    """Wall-clock start of a hedged verification still racing the fast pass (None: none)."""
    in_flight: tuple[str, ...] = ()
    """Call ids started or scheduled and not yet answered (hedging: the loser's slot)."""
    ended: bool = False
    """The final went out; calls that end later are only settled (accounted)."""
    direct: bool = False
    """The verifier was asked first, without a fast draft (replies.verifier_first)."""


Step = JobStep[AnswerOutput, CallSpec]


@dataclass
class AnswerPolicy:
    """The two-phase reply policy; `runner` makes one call (retrieval + provider)."""

    governance: GovernanceConfig
    runner: Callable[[CallSpec], Awaitable[CallOutcome]]
    clock: Callable[[], float] = time.time
    probability: Probability = calibrated_probability
    """The verification policy's input; tests of the policy's logic pass their own."""
    covers: Callable[[str, str], bool] | None = None
    """(tenant_id, intent) -> does the tenant's KB have that intent's article
    (ModelGateway.covers); None: unknown, only out-of-scope messages get the clarify reply."""
    judges: Callable[[str], bool] | None = None
    """tenant_id -> is the tenant's KB keyed by the router's intents (ModelGateway.judges).
    The router's out-of-scope verdict is about its own domains: for a tenant whose KB is
    about something else (ABCD, a tenant's own articles) it says nothing, so such a tenant
    is answered from retrieval rather than told its question is out of scope. None: judge
    every tenant."""
    summaries: SummaryCache | None = None
    """Model-written summaries per conversation (operators/summaries.py); None: one is made
    from `context.summary_cache_entries`."""
    latencies: dict[str, StreamingQuantile] = field(default_factory=dict)
    """Per role: recent fast-pass latencies, for the hedge timer (replies.hedging)."""
    intent_article: Callable[[str, str], str | None] | None = None
    """(tenant_id, intent) -> the doc id of that intent's article in the tenant's KB
    (ModelGateway.intent_article). None: the router's agreement is not weighed and the
    answer's own calibrated confidence decides (as `replies.verify_evidence: fast`)."""
    given_router: GivenRouter = calibrated_given_router
    """The verification policy's input when the router's agreement is weighed."""
    answers_locally: Callable[[ModelRole], bool] = lambda role: True
    """role -> whether the local fleet answers it, as the provider registry decided when it
    built the providers (ModelGateway.answers_locally). The agreement map judges only the
    local fast role's answers, so only then can `replies.verifier_first` predict them.
    Default: every role local (a policy built without providers, as in unit tests)."""

    def __post_init__(self) -> None:
        if self.summaries is None:
            self.summaries = SummaryCache(self.governance.context.summary_cache_entries)
        self._summary_calls: SharedCalls[CallOutcome] = SharedCalls(
            self.governance.context.summary_cache_entries,
            lambda outcome: outcome.result is not None and bool(outcome.result.text.strip()),
        )
        if self.governance.replies.verify != "always" and self.probability is (
            calibrated_probability
        ):
            calibration.packaged_calibration()  # missing or stale maps fail at start-up
        self.fast_is_local: bool = self.answers_locally("fast")  # the registry never changes

    # --- CallPolicy -----------------------------------------------------------------

    def job_id(self, item: Dispatch) -> str:
        return item.decision.event_id

    def open(self, item: Dispatch) -> tuple[AnswerJob, Step]:
        job = AnswerJob(item)
        decision = item.decision
        if decision.action == "refuse":
            text = self.governance.replies.refusal_reply
            reply = self._reply(job, "final", "refused", text, None, decision.role)
            return job, Step(emit=[reply, *self._timing(job, reply)], done=True)
        clarify = self._clarify(job)
        if clarify is not None:
            return job, clarify
        summary_call = self._summary_first(job)
        if summary_call is not None:
            return job, Step(calls=[summary_call])
        return job, self._first_call(job)

    def _first_call(self, job: AnswerJob) -> Step:
        decision = job.dispatch.decision
        purpose: CallPurpose = "pinned" if decision.pinned else "primary"
        if decision.tier == "trivial" and not decision.pinned:
            job.sources = ()  # small talk: nothing to look up, nothing to cite
        predicted = self._verifier_first(job)
        if predicted == "direct":
            direct = self._direct(job)
            if direct is not None:
                metrics.count(metrics.VERIFICATION_PATHS, "direct")
                return direct
        elif predicted == "hedge":
            metrics.count(metrics.VERIFICATION_PATHS, "hedge")
        step = Step(calls=[self._call(job, purpose, decision.role)])
        return self._hedged(job, step, "immediate" if predicted == "hedge" else None)

    # --- predicted verification (replies.verifier_first) ----------------------------

    def _verifier_first(self, job: AnswerJob) -> Literal["off", "direct", "hedge"]:
        """`replies.verifier_first` for this event: "off" (the fast pass first, as before)
        unless it is an unpinned, verifiable fast-role event of a tenant that may use the
        verifier, and the fast answer cannot reach the risk target (`_best_fast_probability`
        under `verify_min_probability + margin`): then waiting for it only adds its
        latency to the verifier's."""
        replies = self.governance.replies
        first = replies.verifier_first
        decision = job.dispatch.decision
        tenant = self.governance.budgets.for_tenant(decision.tenant_id)
        if (
            first.mode == "off"
            or replies.verify == "always"  # every answer is verified: nothing to predict
            or decision.pinned
            or decision.role != "fast"
            or (decision.tier == "trivial" and not replies.verify_trivial)
            or not tenant.allows(replies.verifier_role)
        ):
            return "off"
        best = self._best_fast_probability(decision)
        if best is None or best >= replies.verify_min_probability + first.margin:
            return "off"
        return first.mode

    def _best_fast_probability(self, decision: RoutingDecision) -> float | None:
        """The most `_probability_right` could say of a local fast answer to this decision,
        known before the call: the agreement map for an answer citing the router intent's
        article at full confidence (both maps are monotone). None when the answer would not
        be judged with the router (no intent, no article, `verify_evidence: fast`): then
        nothing is predicted."""
        intent = decision.intent
        if (
            not self.fast_is_local
            or self.intent_article is None
            or self.governance.replies.verify_evidence != "fast_and_router"
            or intent in (None, "none")
            or decision.confidence is None
        ):
            return None
        assert intent is not None  # checked just above
        if self.intent_article(decision.tenant_id, intent) is None:
            return None
        return self.given_router(1.0, decision.confidence, True)

    def _direct(self, job: AnswerJob) -> Step | None:
        """The verifier as the answering call, without a draft: its answer is final and
        verified, as in a single-model topology. None when its window cannot hold the
        planned prompt (the fast pass goes first, as before). The budget gate reserved the
        verify call for every unpinned event its tenant lets use the verifier."""
        verifier = self.governance.replies.verifier_role
        messages, fits = self._messages_for(verifier, job.dispatch, ())
        if not fits:
            return None
        job.direct = True
        return Step(calls=[self._call(job, "verify", verifier, messages=messages)])

    def _summary_first(self, job: AnswerJob) -> tuple[str, CallSpec] | None:
        """When the prompt carries compacted turns and `context.summarizer` is `model`: the
        cached summary of exactly these turns replaces the extractive one (None: go on), or
        the summarizer is called first (its call, before any answer)."""
        dispatch = job.dispatch
        decision = dispatch.decision
        tenant = self.governance.budgets.for_tenant(decision.tenant_id)
        if not wants_model_summary(
            self.governance.context,
            tenant,
            pinned=decision.pinned,
            compacted_turns=len(dispatch.compacted),
            summary_limit=dispatch.summary_limit if dispatch.summary else 0,
        ):
            return None
        assert self.summaries is not None  # __post_init__
        coverage = Coverage(decision.session_id, decision.compacted_turns)
        cached = self.summaries.get(decision.conversation_id, coverage)
        if cached is not None and self._use_summary(job, cached):
            return None
        config = self.governance.roles["summarizer"]
        context = self.governance.context
        spec = CallSpec(
            purpose="summary",
            request_id=f"{decision.event_id}:summary",
            role="summarizer",
            tenant_id=decision.tenant_id,
            messages=dispatch.compacted,
            summary=dispatch.earlier_summary,
            max_tokens=min(self.governance.budgets.output_cap(config), context.summary_max_tokens),
            sources=(),  # nothing to retrieve: the summarizer reads the turns only
            timeout_s=context.summary_timeout_s,
            summary_of=(decision.conversation_id, coverage),
        )
        return "summary", spec

    def _use_summary(self, job: AnswerJob, text: str) -> bool:
        """Put a model-written summary in the job's prompt if, cut to the guard's limit in
        the routed role's tokenizer, anything is left; else keep the extractive one."""
        dispatch = job.dispatch
        encoding = self.governance.roles[dispatch.decision.role].tokenizer
        fitted = fit_summary(text, dispatch.summary_limit, encoding)
        if fitted is None:
            return False
        job.dispatch = replace(dispatch, summary=fitted)
        return True

    def _after_summary(
        self, job: AnswerJob, outcome: CallOutcome | CallFailed, result: ModelResult | None
    ) -> Step:
        """The summary (cached for the next events covering the same turns) or, when the
        call failed, timed out or wrote nothing usable, the extractive one; then answer."""
        decision = job.dispatch.decision
        if result is not None and self._use_summary(job, result.text):
            assert self.summaries is not None  # __post_init__
            coverage = Coverage(decision.session_id, decision.compacted_turns)
            self.summaries.put(decision.conversation_id, coverage, result.text)
        else:
            error, detail = _failure_of(outcome)
            log.info("summary for %s: extractive (%s: %s)", decision.event_id, error, detail)
        return self._first_call(job)

    def confident_intent(self, decision: RoutingDecision) -> str | None:
        """The router's intent when it clears `knowledge.intent_min_confidence`."""
        bound = self.governance.knowledge.intent_min_confidence
        if decision.intent is None or decision.intent == "none" or decision.confidence is None:
            return None
        return decision.intent if decision.confidence >= bound else None

    def attach_intent(self, decision: RoutingDecision) -> str | None:
        """The router's intent whose article is attached first: it clears
        `knowledge.intent_attach_min_confidence`, lower than the "not covered" bound: one
        more candidate for the verifier costs little (docs/local_fleet.md, held-out misses)."""
        bound = self.governance.knowledge.intent_attach_min_confidence
        if decision.intent is None or decision.intent == "none" or decision.confidence is None:
            return None
        return decision.intent if decision.confidence >= bound else None

    def _clarify(self, job: AnswerJob) -> Step | None:
        """An out-of-scope message, or a confident intent the tenant's KB does not cover,
        gets `replies.clarify_reply` at once (status `clarify`, no model call, no cost)
        rather than an answer from whichever article happens to be nearest. Pinned traffic
        and small talk keep their paths."""
        decision = job.dispatch.decision
        if decision.pinned or decision.tier == "trivial":
            return None
        intent = self.confident_intent(decision)
        uncovered = (
            intent is not None
            and self.covers is not None
            and not self.covers(decision.tenant_id, intent)
        )
        out_of_scope = decision.features.get("out_of_scope") is True and (
            self.judges is None or self.judges(decision.tenant_id)
        )
        if not out_of_scope and not uncovered:
            return None
        text = self.governance.replies.clarify_reply
        reply = self._reply(job, "final", "clarify", text, None, decision.role)
        return Step(emit=[reply, *self._timing(job, reply)], done=True)

    def advance(self, job: AnswerJob, call_id: str, outcome: CallOutcome | CallFailed) -> Step:
        purpose: CallPurpose = call_id  # type: ignore[assignment]  # ids are purposes
        emit: list[AnswerOutput] = []
        result = None
        if isinstance(outcome, CallOutcome):
            if job.sources is None and purpose != "summary":
                job.sources = outcome.request.sources
            elif purpose == "verify" and outcome.result is not None and job.sources is not None:
                # A verifier of a narrowed draft retrieved afresh (_verifier_sources): what
                # it was attached is valid for its answer too.
                seen = {doc.doc_id for doc in job.sources}
                fresh = [doc for doc in outcome.request.sources if doc.doc_id not in seen]
                job.sources = (*job.sources, *fresh)
            result = outcome.result
            if result is not None and not outcome.shared:
                emit.append(self._cost(job, purpose, result))
        waiting = self._hedge_fell_through(job, purpose, result)
        if waiting is not None:
            return waiting
        if purpose == "summary":
            step = self._after_summary(job, outcome, result)
            step = Step(emit=[*emit, *step.emit], calls=step.calls, done=step.done)
        elif purpose == "primary":
            step = self._after_primary(job, outcome, result, emit)
        elif purpose == "verify":
            step = self._after_verify(job, outcome, result, emit)
        else:
            step = self._after_final_call(job, purpose, outcome, result, emit)
        return self._mark_last_call(job, self._hedge_step(job, purpose, result, step))

    def _mark_last_call(self, job: AnswerJob, step: Step) -> Step:
        """A finished job's last CostRecord says so (`last_call`, with the ids of all its
        calls), so the budget gate releases what the calls that never happened reserved.
        When the step that finishes the job has no record (its call failed), the job's
        latest record is stated again, marked: a duplicate by record_id, which every
        consumer of routing.metrics already counts once. A job with no record releases
        nothing (its reservation ends with its window)."""
        if not step.done or not job.records:
            return step
        last = job.records[-1]
        marked = last.model_copy(update={"last_call": True, "job_calls": self._job_calls(job)})
        job.records = (*job.records[:-1], marked)
        emit = list(step.emit)
        at = next((n for n, item in enumerate(emit) if item is last), None)
        if at is None:
            emit.append(marked)
        else:
            emit[at] = marked
        return replace(step, emit=emit)

    async def run(self, spec: CallSpec) -> CallOutcome:
        hedge = getattr(spec, "hedge", None)  # a spec from an older snapshot has no slot
        if hedge is not None:
            metrics.count(metrics.HEDGES, hedge, "started")
        if spec.summary_of is not None:
            conversation_id, coverage = spec.summary_of
            runner = self.runner
            outcome, shared = await self._summary_calls.run(
                conversation_id, coverage, lambda: runner(spec)
            )
            return replace(outcome, shared=True) if shared else outcome
        return await self.runner(spec)

    # --- hedging (replies.hedging) --------------------------------------------------

    def _hedged(self, job: AnswerJob, step: Step, mode: HedgeMode | None = None) -> Step:
        """The first call of an unpinned, verifiable answer, plus the verifier without a
        draft: at once, or once the fast pass is slower than its latency quantile. The
        budget gate reserved both calls; the first valid final wins (`_hedge_step`).
        `mode`: replies.verifier_first's `immediate`; None: replies.hedging's."""
        replies = self.governance.replies
        decision = job.dispatch.decision
        mode = mode or replies.hedging.mode(decision.channel)
        verifier = replies.verifier_role
        tenant = self.governance.budgets.for_tenant(decision.tenant_id)
        if (
            mode == "off"
            or decision.pinned
            or decision.role == verifier
            or (decision.tier == "trivial" and not replies.verify_trivial)
            or not tenant.allows(verifier)
        ):
            return step
        messages, fits = self._messages_for(verifier, job.dispatch, ())
        if not fits:
            return step
        call_id, spec = self._call(job, "verify", verifier, messages=messages)
        job.tried.pop()  # not tried yet: re-plans and re-routes still see the routed role last
        hedge = (call_id, replace(spec, hedge=decision.channel))
        job.in_flight = _with(job.in_flight, *(c for c, _ in step.calls), call_id)
        if mode == "immediate":
            job.hedge_due = self.clock()
            return replace(step, calls=[*step.calls, hedge])
        delay = self._latency(decision.role).value()
        job.hedge_due = self.clock() + delay
        return replace(step, delayed=[(*hedge, delay)])

    def _latency(self, role: ModelRole) -> StreamingQuantile:
        """The role's recent latencies (seconds), the hedge timer's quantile."""
        hedging = self.governance.replies.hedging
        estimate = self.latencies.get(role)
        if estimate is None:
            estimate = self.latencies[role] = StreamingQuantile(
                hedging.quantile,
                hedging.prior_s,
                window=hedging.window,
                min_samples=hedging.min_samples,
            )
        return estimate

    def _hedge_fell_through(
        self, job: AnswerJob, purpose: CallPurpose, result: ModelResult | None
    ) -> Step | None:
        """A hedged verification that failed while the fast pass still runs: no reply
        yet; the job goes on as if unhedged (the draft, when it comes, is verified)."""
        if purpose != "verify" or job.hedge_due is None or result is not None:
            return None
        if "primary" not in job.in_flight:
            return None  # the draft is in: the failure is the verification's, as unhedged
        job.hedge_due = None
        job.in_flight = _without(job.in_flight, purpose)
        return Step()

    def _hedge_step(
        self, job: AnswerJob, purpose: CallPurpose, result: ModelResult | None, step: Step
    ) -> Step:
        """Fold a racing hedge into the step and track the calls in flight. The fast pass
        first: before the timer, the hedge is called off and verification runs as unhedged
        (with the draft); after it, the verifier already at work is not asked again. The
        verifier first: the fast pass is cancelled. A done step cancels whatever is left
        (operators/model_calls.py)."""
        channel = job.dispatch.decision.channel
        if purpose == "primary" and result is not None:
            self._latency(result.role).observe(result.latency_ms / 1000)
        if job.hedge_due is not None and purpose == "primary":
            if self.clock() < job.hedge_due:  # the timer has not fired: no race after all
                job.hedge_due = None
                step = replace(step, cancel=[*step.cancel, "verify"])
            else:
                step = replace(step, calls=[c for c in step.calls if c[0] != "verify"])
        elif job.hedge_due is not None and purpose == "verify":
            job.hedge_due = None
            if "primary" in job.in_flight:
                if step.done:
                    metrics.count(metrics.HEDGES, channel, "won")
                step = replace(step, cancel=[*step.cancel, "primary"])
        # A done step's cancelled calls keep their slot until `settle` says if they billed.
        gone = (purpose,) if step.done else (purpose, *step.cancel)
        job.in_flight = _with(
            _without(job.in_flight, *gone),
            *(c for c, _ in step.calls),
            *(c for c, _, _ in step.delayed),
        )
        if step.done:
            job.ended = True
            job.hedge_due = None
        return step

    def _job_calls(self, job: AnswerJob) -> tuple[str, ...]:
        """Ids of the job's records and of its calls still in flight (a hedge's loser keeps
        its slot until `settle` says whether it billed)."""
        recorded = tuple(r.record_id.rpartition(":")[2] for r in job.records)
        return _with(recorded, *job.in_flight)

    def settle(
        self,
        job: AnswerJob,
        call_id: str,
        outcome: CallOutcome | CallFailed,
        spec: object = None,
    ) -> list[AnswerOutput]:
        """A call the job stopped waiting for: its cost if it billed (a CostRecord like any
        call's; for one cancelled after it started, the estimate `_cancelled_cost`); once
        the job has ended, its last record is stated again with the calls that really have
        records, so the budget gate releases the loser's slot or settles it with the cost."""
        purpose: CallPurpose = call_id  # type: ignore[assignment]  # ids are purposes
        if job.ended:  # else `_hedge_step` already let it go (a new call may reuse the id)
            job.in_flight = _without(job.in_flight, call_id)
        out: list[AnswerOutput] = []
        if isinstance(outcome, CallOutcome) and outcome.result is not None:
            out.append(self._cost(job, purpose, outcome.result))
        if isinstance(outcome, CallFailed) and outcome.reason == "cancelled":
            metrics.count(metrics.HEDGES, job.dispatch.decision.channel, "cancelled")
            if outcome.started and job.ended and isinstance(spec, CallSpec):
                out.append(self._cancelled_cost(job, purpose, spec))
        if job.ended and job.records:
            last = job.records[-1]
            marked = last.model_copy(update={"last_call": True, "job_calls": self._job_calls(job)})
            job.records = (*job.records[:-1], marked)
            out = [r for r in out if r is not last] + [marked]
        return out

    def timeout_s(self, spec: CallSpec) -> float:
        return spec.timeout_s

    def abandon(self, item: Dispatch, job: AnswerJob | None) -> list[AnswerOutput]:
        """The final reply of a job that died after its decision: the safe reply, withheld
        (superseding its preliminary, if one went out), so the customer is not left waiting."""
        job = job or AnswerJob(item)
        return list(self._safe(job, item.decision.role, []).emit)

    # --- phases ---------------------------------------------------------------------

    def _after_primary(
        self,
        job: AnswerJob,
        outcome: CallOutcome | CallFailed,
        result: ModelResult | None,
        emit: list[AnswerOutput],
    ) -> Step:
        replies = self.governance.replies
        decision = job.dispatch.decision
        verifier = replies.verifier_role
        tenant = self.governance.budgets.for_tenant(decision.tenant_id)
        if result is None:
            if _overflowed(outcome):
                return self._after_overflow(job, "primary", outcome, emit)
            if not tenant.allows(verifier):
                error, detail = _failure_of(outcome)
                model = _model_of(outcome)
                emit.append(
                    self._failure(job, "primary", "model-call", error, detail, model, "replaced")
                )
                return self._safe(job, decision.role, emit)
            job.escalated = True
            emit.append(Escalation(decision.role, verifier, "failed"))
            return Step(emit=emit, calls=[self._call(job, "verify", verifier)])
        violations = self._validate(job, result, require_citation=False)
        if violations:
            return self._reroute(job, "primary", result, violations, emit)
        unverified = (decision.tier == "trivial" and not replies.verify_trivial) or not (
            tenant.allows(verifier)
        )
        if unverified:  # small talk, or a tenant whose budget excludes the verifier
            final = self._reply(job, "final", "unverified", result.text, result, result.role)
            emit += [final, *self._timing(job, final)]
            return Step(emit=emit, done=True)
        if replies.verify != "always":  # `always` needs no calibration, so loads none
            job.probability = self._probability_right(decision, result)
        choice = verification_choice(
            replies, decision.event_id, job.probability, pinned=decision.pinned
        )
        if not decision.pinned:
            metrics.count(metrics.VERIFICATION_PATHS, choice)
        if choice == "skip":  # confident enough for the risk target: final as it stands
            final = self._reply(job, "final", "unverified", result.text, result, result.role)
            emit += [final, *self._timing(job, final)]
            return Step(emit=emit, done=True)
        job.audit = choice == "audit"
        job.draft = result
        # Unknown confidence (a remote model that gave no logprobs) is not "confident": no
        # preliminary goes out before the verifier has looked; it is not an escalation either,
        # since the verifier reads every such answer anyway.
        measured = result.confidence
        confident = measured is not None and measured >= replies.preliminary_min_confidence
        if decision.channel == "chat" and confident:
            job.preliminary = self._reply(
                job, "preliminary", "unverified", result.text, result, result.role
            )
            emit += [job.preliminary, *self._timing(job, job.preliminary)]
        elif measured is not None and not confident:
            job.escalated = True
            emit.append(Escalation(result.role, verifier, "low_confidence"))
        candidate = Candidate(
            text=result.text,
            doc_ids=_doc_ids(result),
            confidence=result.confidence,
            model_version=result.model_version,
        )
        messages, fits = self._messages_for(verifier, job.dispatch, (candidate,))
        if not fits:
            # The verifier's window cannot hold even the newest message (a long email that
            # only the long-context role can read): its answer is final, marked unverified.
            final = self._reply(job, "final", "unverified", result.text, result, result.role)
            return Step(emit=[*emit, final, *self._timing(job, final)], done=True)
        call_id, spec = self._call(job, "verify", verifier, (candidate,), messages=messages)
        spec = replace(spec, sources=self._verifier_sources(decision, spec))
        return Step(emit=emit, calls=[(call_id, spec)])

    def _probability_right(self, decision: RoutingDecision, result: ModelResult) -> float | None:
        """The verification policy's input. A local fast answer, when the router named an
        intent whose article the tenant's KB holds and `replies.verify_evidence` is
        `fast_and_router`: the agreement map's P(right | its confidence, the router's
        intent probability, whether its first citation is that article). Otherwise the
        answering role's calibrated confidence alone."""
        intent = decision.intent
        article = None
        if (
            self.intent_article is not None
            and self.governance.replies.verify_evidence == "fast_and_router"
            and result.role == "fast"
            and result.provider == calibration.LOCAL_PROVIDER
            and intent not in (None, "none")
        ):
            assert intent is not None  # checked just above
            article = self.intent_article(decision.tenant_id, intent)
        if article is None:
            return self.probability(result.role, result.confidence, result.provider)
        cited = _doc_ids(result)
        agree = bool(cited) and cited[0] == article
        return self.given_router(result.confidence, decision.confidence, agree)

    def _verifier_sources(
        self, decision: RoutingDecision, spec: CallSpec
    ) -> tuple[SourceDoc, ...] | None:
        """`replies.verifier_other_sources`: the articles the verifier must choose among
        (the draft's citations, the router intent's article) and the n best-ranked others,
        in their attached order; None or unknown sources: all of them. A draft whose prompt
        was narrowed to a sure intent's article (knowledge.intent_sure_min_confidence): None,
        the gateway retrieves the full top_k for the verifier and trims it the same way."""
        others = self.governance.replies.verifier_other_sources
        if decision.intent not in (None, "none") and self.governance.knowledge.narrows(
            decision.role, decision.confidence
        ):
            return None
        sources = spec.sources
        if others is None or sources is None:
            return sources
        article = None
        if self.intent_article is not None and decision.intent not in (None, "none"):
            article = self.intent_article(decision.tenant_id, decision.intent or "")
        return verifier_subset(sources, verifier_keep(spec.candidates, article), others)

    def _messages_for(
        self, role: ModelRole, dispatch: Dispatch, candidates: tuple[Candidate, ...]
    ) -> tuple[tuple[Message, ...], bool]:
        """The planned turns refitted to `role` beside its drafts, and whether they fit."""
        config = self.governance.roles[role]
        drafts = sum(
            count_tokens(c.text, config.tokenizer) + DRAFT_OVERHEAD_TOKENS for c in candidates
        )
        return fit_messages(
            dispatch.messages, dispatch.summary, config, self.governance.context, reserved=drafts
        )

    def _after_verify(
        self,
        job: AnswerJob,
        outcome: CallOutcome | CallFailed,
        result: ModelResult | None,
        emit: list[AnswerOutput],
    ) -> Step:
        replies = self.governance.replies
        if result is None and job.direct:
            # The verifier asked first failed: the job goes on as if nothing had been
            # predicted (the routed role answers, and is verified if it must be).
            job.direct = False
            error, detail = _failure_of(outcome)
            decision = job.dispatch.decision
            log.info("verifier first for %s failed (%s: %s)", decision.event_id, error, detail)
            return Step(emit=emit, calls=[self._call(job, "primary", decision.role)])
        if result is None:
            error, detail = _failure_of(outcome)
            check, name = "verification", "VerificationFailed"
            if error == "timeout":
                name = "VerificationTimeout"
            elif _overflowed(outcome):  # recorded as such; the verification is not re-sent
                check, name = "context-window", "ContextOverflow"
            keep = (
                replies.on_verification_timeout == "release_preliminary"
                and job.preliminary is not None
            )
            emit.append(
                self._failure(
                    job,
                    "verify",
                    check,
                    name,
                    detail,
                    _model_of(outcome),
                    "released_unverified" if keep else "replaced",
                )
            )
            if keep and job.draft is not None:  # the preliminary was the draft: release it
                draft = job.draft
                final = self._reply(job, "final", "unverified", draft.text, draft, draft.role)
                return Step(emit=[*emit, final, *self._timing(job, final)], done=True)
            return self._safe(job, replies.verifier_role, emit)
        if result.text.strip() == CONFIRM and job.draft is not None:
            # The verifier's tokens and version; the draft's words and citations.
            result = result.model_copy(
                update={"text": job.draft.text, "citations": job.draft.citations}
            )
        if job.audit and job.draft is not None:
            emit.append(self._audit_sample(job, job.draft, result))
        pinned_needed = replies.verifier_role in replies.require_citation_roles
        violations = self._validate(job, result, require_citation=pinned_needed)
        if violations:
            return self._reroute(job, "verify", result, violations, emit)
        return self._final(job, result, emit)

    def _after_final_call(
        self,
        job: AnswerJob,
        purpose: CallPurpose,
        outcome: CallOutcome | CallFailed,
        result: ModelResult | None,
        emit: list[AnswerOutput],
    ) -> Step:
        role = job.tried[-1]
        if result is None:
            if _overflowed(outcome):
                return self._after_overflow(job, purpose, outcome, emit)
            error, detail = _failure_of(outcome)
            emit.append(
                self._failure(
                    job, purpose, "model-call", error, detail, _model_of(outcome), "replaced"
                )
            )
            return self._safe(job, role, emit)
        if purpose == "replan":
            # The routed role's stand-in: validated like a primary answer, and final but
            # unverified (the verifier's window is not the one that held this prompt).
            violations = self._validate(job, result, require_citation=False)
            if violations:
                emit += self._violations(job, purpose, violations, result, "replaced")
                return self._safe(job, result.role, emit)
            final = self._reply(job, "final", "unverified", result.text, result, result.role)
            return Step(emit=[*emit, final, *self._timing(job, final)], done=True)
        violations = self._validate(job, result, require_citation=True)
        if violations:
            emit += self._violations(job, purpose, violations, result, "replaced")
            return self._safe(job, result.role, emit)
        return self._final(job, result, emit)

    def _after_overflow(
        self,
        job: AnswerJob,
        purpose: CallPurpose,
        outcome: CallOutcome | CallFailed,
        emit: list[AnswerOutput],
    ) -> Step:
        """The provider said the prompt is too long: the guard's count fell short for that
        window (a tokenizer it only approximates). Recorded as ContextOverflow, then re-planned
        once, for an unpinned primary only, to a role with a larger window that the guard
        says holds the whole counted prompt; else refused. Never re-sent as is."""
        failed = job.tried[-1]
        model = _model_of(outcome) or self.governance.roles[failed].pinned_id
        window = max(
            (r.context_window for r in self.governance.roles.values() if r.pinned_id == model),
            default=self.governance.roles[failed].context_window,
        )
        _, detail = _failure_of(outcome)
        target = self._replan_role(job, window) if purpose == "primary" else None
        if target is None:
            counted = self._counted_prompt(job, failed)
            detail += f"; counted {counted} tokens, no allowed role with a larger window holds it"
        else:
            detail += f"; re-planned to {target} ({self.governance.roles[target].context_window})"
        action: Literal["rerouted", "refused"] = "refused" if target is None else "rerouted"
        emit.append(
            self._failure(job, purpose, "context-window", "ContextOverflow", detail, model, action)
        )
        if target is None:
            text = self.governance.replies.refusal_reply
            final = self._reply(job, "final", "refused", text, None, failed)
            return Step(emit=[*emit, final, *self._timing(job, final)], done=True)
        job.escalated = True
        emit.append(Escalation(failed, target, "failed"))
        return Step(emit=emit, calls=[self._call(job, "replan", target)])

    def _replan_role(self, job: AnswerJob, overflowed_window: int) -> ModelRole | None:
        """The first role in `context.fit_order`, not yet tried and allowed for the tenant,
        whose window is larger than the one that overflowed and holds every planned turn."""
        dispatch = job.dispatch
        if dispatch.decision.pinned:
            return None  # a pinned request is answered by its pinned role or not at all
        tenant = self.governance.budgets.for_tenant(dispatch.decision.tenant_id)
        for name in self.governance.context.fit_order:
            config = self.governance.roles.get(name)
            if config is None or name in job.tried or not tenant.allows(name):
                continue
            if config.context_window <= overflowed_window:
                continue
            kept, fits = fit_messages(
                dispatch.messages, dispatch.summary, config, self.governance.context
            )
            if fits and len(kept) == len(dispatch.messages):
                return name
        return None

    def _counted_prompt(self, job: AnswerJob, role: ModelRole) -> int:
        """The planned prompt as the guard counts it for `role` (for the failure's detail)."""
        enc = self.governance.roles[role].tokenizer
        dispatch = job.dispatch
        turns = sum(
            count_tokens(m.content, enc) + MESSAGE_OVERHEAD_TOKENS for m in dispatch.messages
        )
        summary = count_tokens(dispatch.summary, enc) if dispatch.summary else 0
        return self.governance.context.system_prompt_tokens + summary + turns

    def _reroute(
        self,
        job: AnswerJob,
        purpose: CallPurpose,
        result: ModelResult,
        violations: list[Violation],
        emit: list[AnswerOutput],
    ) -> Step:
        target = self.governance.replies.reroute_role
        tenant = self.governance.budgets.for_tenant(job.dispatch.decision.tenant_id)
        can_reroute = target not in job.tried and tenant.allows(target)
        action: Literal["rerouted", "replaced"] = "rerouted" if can_reroute else "replaced"
        emit += self._violations(job, purpose, violations, result, action)
        if not can_reroute:
            return self._safe(job, result.role, emit)
        job.escalated = True
        emit.append(Escalation(result.role, target, "validation"))
        return Step(emit=emit, calls=[self._call(job, "reroute", target)])

    def _final(self, job: AnswerJob, result: ModelResult, emit: list[AnswerOutput]) -> Step:
        status: Literal["verified", "corrected"] = "verified"
        if job.preliminary is not None and _doc_ids(result) != _doc_ids(job.preliminary):
            status = "corrected"
        final = self._reply(job, "final", status, result.text, result, result.role)
        return Step(emit=[*emit, final, *self._timing(job, final)], done=True)

    def _audit_sample(self, job: AnswerJob, draft: ModelResult, check: ModelResult) -> AuditSample:
        """Did the verifier cite what the confident fast answer cited? (The measurement.)"""
        decision = job.dispatch.decision
        confidence = draft.confidence or 0.0
        return AuditSample(
            event_id=decision.event_id,
            conversation_id=decision.conversation_id,
            tenant_id=decision.tenant_id,
            channel=decision.channel,
            fast_role=draft.role,
            fast_model=draft.model_version,
            verifier_model=check.model_version,
            agreed=set(_doc_ids(draft)) == set(_doc_ids(check)),
            fast_doc_ids=_doc_ids(draft),
            verifier_doc_ids=_doc_ids(check),
            fast_confidence=confidence,
            fast_probability=job.probability if job.probability is not None else confidence,
            config_version=self.governance.version_id(),
        )

    def _safe(self, job: AnswerJob, role: ModelRole, emit: list[AnswerOutput]) -> Step:
        text = self.governance.replies.safe_reply
        final = self._reply(job, "final", "withheld", text, None, role)
        return Step(emit=[*emit, final, *self._timing(job, final)], done=True)

    # --- records --------------------------------------------------------------------

    def _call(
        self,
        job: AnswerJob,
        purpose: CallPurpose,
        role: ModelRole,
        candidates: tuple[Candidate, ...] = (),
        *,
        messages: tuple[Message, ...] | None = None,
    ) -> tuple[str, CallSpec]:
        job.tried.append(role)
        dispatch = job.dispatch
        decision = dispatch.decision
        config = self.governance.roles[role]
        if purpose == "verify":
            timeout = self.governance.replies.verification_timeout_s
        else:
            timeout = self._chain_deadline_s(role)
        if messages is None:
            messages = dispatch.messages
            if role != decision.role:  # the guard planned the prompt for the routed role
                messages, _ = self._messages_for(role, dispatch, candidates)
        spec = CallSpec(
            purpose=purpose,
            request_id=f"{decision.event_id}:{purpose}",
            role=role,
            tenant_id=decision.tenant_id,
            messages=messages,
            summary=dispatch.summary,
            max_tokens=self.governance.budgets.output_cap(config),
            sources=job.sources,
            candidates=candidates,
            timeout_s=timeout,
            intent=None if decision.tier == "trivial" else self.attach_intent(decision),
            intent_confidence=decision.confidence,
        )
        return purpose, spec

    def _chain_deadline_s(self, role: ModelRole) -> float:
        """Every attempt of the role and its fallbacks, with the longest backoffs between."""
        resilience = self.governance.providers.resilience
        total = 0.0
        for name in (role, *self.governance.roles[role].fallback):
            config = self.governance.roles[name]
            attempts = config.retry_budget + 1
            total += attempts * config.timeout_s + config.retry_budget * resilience.backoff_max_s
        return total

    def _validate(
        self, job: AnswerJob, result: ModelResult, *, require_citation: bool
    ) -> list[Violation]:
        replies = self.governance.replies
        need = (
            require_citation
            or job.dispatch.decision.pinned
            or result.role in replies.require_citation_roles
        )
        return validate_answer(
            result,
            job.sources or (),
            require_citation=need,
            policy_checks=replies.policy_checks,
            pinned_to=self.governance.compliance_roles() if job.dispatch.decision.pinned else None,
            customer_ids=_customer_ids(job.dispatch),
        )

    def _cost(self, job: AnswerJob, purpose: CallPurpose, result: ModelResult) -> CostRecord:
        config = self.governance.roles[result.role]
        return self._record(
            job,
            purpose,
            result.role,
            model=_model_name(config.model, result),
            model_version=result.model_version,
            tokens_in=result.usage.tokens_in,
            tokens_out=result.usage.tokens_out,
            latency_ms=round(result.latency_ms, 3),
            emulated=result.provider == "local",
        )

    def _cancelled_cost(self, job: AnswerJob, purpose: CallPurpose, spec: CallSpec) -> CostRecord:
        """What a call cancelled in flight may have cost: a provider bills the prompt it
        has read whether or not its answer is collected. Estimated from above (the guard's
        planned prompt, `_counted_prompt`: instructions and sources at their full reserve)
        and marked `estimated`; output generated before the cancel is not known, so not
        counted (docs/architecture.md, "Hedged verification")."""
        config = self.governance.roles[spec.role]
        return self._record(
            job,
            purpose,
            spec.role,
            model=config.model,
            model_version=config.pinned_id,
            tokens_in=self._counted_prompt(job, spec.role),
            tokens_out=0,
            latency_ms=0.0,
            estimated=True,
        )

    def _record(
        self,
        job: AnswerJob,
        purpose: CallPurpose,
        role: ModelRole,
        *,
        model: str,
        model_version: str,
        tokens_in: int,
        tokens_out: int,
        latency_ms: float,
        emulated: bool = False,
        estimated: bool = False,
    ) -> CostRecord:
        """One call's CostRecord at the role's price, added to the job's totals."""
        decision = job.dispatch.decision
        cost = self.governance.roles[role].cost_usd(tokens_in, tokens_out)
        job.calls += 1
        job.tokens_in += tokens_in
        job.tokens_out += tokens_out
        job.cost_usd += cost
        job.emulated |= emulated
        record = CostRecord(
            record_id=f"{decision.event_id}:{purpose}",
            event_id=decision.event_id,
            tenant_id=decision.tenant_id,
            role=role,
            model=model,
            model_version=model_version,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=round(cost, 9),
            latency_ms=latency_ms,
            escalated=job.escalated and purpose != "primary",
            emulated=emulated,
            estimated=estimated,
            occurred_at=decision.sent_at,
            config_version=self.governance.version_id(),
        )
        job.records = (*job.records, record)
        return record

    def _violations(
        self,
        job: AnswerJob,
        purpose: CallPurpose,
        violations: list[Violation],
        result: ModelResult,
        action: Literal["rerouted", "replaced"],
    ) -> list[AnswerOutput]:
        return [
            self._failure(job, purpose, v.check, v.error, v.detail, result.model_version, action)
            for v in violations
        ]

    def _failure(
        self,
        job: AnswerJob,
        purpose: CallPurpose,
        check: str,
        error: str,
        detail: str,
        model: str | None,
        action: Literal["withheld", "rerouted", "replaced", "refused", "released_unverified"],
    ) -> ValidationFailure:
        decision = job.dispatch.decision
        return ValidationFailure(
            failure_id=f"{decision.event_id}:{purpose}:{check}",
            event_id=decision.event_id,
            conversation_id=decision.conversation_id,
            tenant_id=decision.tenant_id,
            check=check,
            error=error,
            detail=detail,
            model=model,
            action=action,
        )

    def _reply(
        self,
        job: AnswerJob,
        kind: Literal["preliminary", "final"],
        status: Literal["verified", "unverified", "corrected", "withheld", "refused", "clarify"],
        text: str,
        result: ModelResult | None,
        route: ModelRole,
    ) -> Reply:
        decision = job.dispatch.decision
        config = self.governance.roles[route]
        preliminary = job.preliminary if kind == "final" else None
        now = self.clock()
        sent = decision.sent_at.timestamp()
        return Reply(
            reply_id=decision.event_id,
            revision=FINAL_REVISION if kind == "final" else PRELIMINARY_REVISION,
            kind=kind,
            status=status,
            conversation_id=decision.conversation_id,
            tenant_id=decision.tenant_id,
            channel=decision.channel,
            text=text,
            citations=result.citations if result is not None else (),
            model=_model_name(config.model, result) if result is not None else config.model,
            model_version=result.model_version if result is not None else config.pinned_id,
            route=route,
            confidence=(result.confidence or 0.0) if result is not None else 0.0,  # 0: unknown
            tokens_in=job.tokens_in,
            tokens_out=job.tokens_out,
            cost_usd=round(job.cost_usd, 9),
            latency_ms=round(max(0.0, now - sent) * 1000, 3),
            supersedes=preliminary.revision if preliminary is not None else None,
            escalated=job.escalated,
            calls=job.calls,
            emulated=job.emulated,
            config_version=self.governance.version_id(),
        )

    def _timing(self, job: AnswerJob, reply: Reply) -> list[ReplyTiming]:
        seconds = max(0.0, self.clock() - job.dispatch.dispatched_at)
        return [ReplyTiming(reply.kind, reply.route, seconds)]


def _customer_ids(dispatch: Dispatch) -> frozenset[str]:
    """Doc ids the customer named, in the prompt's turns and summary and in the compacted
    turns themselves: a model-written summary must not launder one into a citation."""
    said = (*dispatch.compacted, *dispatch.messages)
    return customer_doc_ids(said, f"{dispatch.summary}\n{dispatch.earlier_summary}")


def _with(ids: tuple[str, ...], *more: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*ids, *more)))


def _without(ids: tuple[str, ...], *gone: str) -> tuple[str, ...]:
    return tuple(i for i in ids if i not in gone)


def _model_name(configured: str, result: ModelResult) -> str:
    """The local fleet is not the configured model: say so rather than borrow its name."""
    return f"local-{result.role}" if result.provider == "local" else configured


def _doc_ids(answer: ModelResult | Reply) -> tuple[str, ...]:
    return tuple(c.doc_id for c in answer.citations)


def _failure_of(outcome: CallOutcome | CallFailed) -> tuple[str, str]:
    if isinstance(outcome, CallFailed):
        return outcome.reason, outcome.detail
    return outcome.error_kind or "error", outcome.error or "no result"


def _overflowed(outcome: CallOutcome | CallFailed) -> bool:
    """The provider refused the prompt as too long (providers.base.ContextOverflowError)."""
    return isinstance(outcome, CallOutcome) and outcome.error_kind == "context_overflow"


def _model_of(outcome: CallOutcome | CallFailed) -> str | None:
    return outcome.error_model if isinstance(outcome, CallOutcome) else None
