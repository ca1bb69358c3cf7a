"""The routing dataflow.

conversations.events ─▶ ingest ─┬─▶ dead-letter
                                └─▶ classify (micro-batched ONNX)
                                    ─▶ key by conversation ─▶ state + cache + policy + guard
                                    ─▶ key by tenant ─┐
routing.metrics (CostRecord) ─▶ ingest ─▶ key by tenant ─┴─▶ budget gate
     ┌──────────────────────────────────────────────────────────┤
     │   routing.decisions, replies.validation-failures ◀───────┤
     │                                                          ▼ Dispatch
     │                        key by shard ─▶ answer (calls off-thread, fast then verified)
     └─ routing.metrics (CostRecord) ◀─┬─ conversations.replies, replies.validation-failures
                                       └─ metrics.windowed (per tenant x model x minute)

Every step whose code is ours runs under `splitpin.operators.isolation`: a record a step raises for
becomes a `processing_error` dead letter (or stops the flow if `on_processing_error` is
`stop`); the branches named `<step>-ok` take those failures to the dead-letter output.

With `answering` off (`SPLITPIN_ANSWERING=false`, a routing-only deployment) the answer
branch is not built: decisions go out as always, dispatches stop at the budget gate.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeGuard, TypeVar, cast

from bytewax import operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source, StatefulSourcePartition
from bytewax.outputs import Sink

from splitpin.core import metrics, tokens
from splitpin.core.kafka.admin import admin_client, earliest_offset
from splitpin.core.kafka.client_config import security_config
from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings
from splitpin.flows.sink import CheckedKafkaSink, OutRecord
from splitpin.operators.answering import (
    AnswerJob,
    AnswerOutput,
    AnswerPolicy,
    CallOutcome,
    CallSpec,
    Dispatch,
    Escalation,
    ReplyTiming,
)
from splitpin.operators.budget import (
    SHADOW_LEDGER,
    BudgetGate,
    BudgetInput,
    BudgetOutput,
    tenant_logic,
)
from splitpin.operators.call_executor import shared_executor
from splitpin.operators.classify import MemoizedClassifier, classify_events
from splitpin.operators.cost_windows import window_costs, windowable
from splitpin.operators.ingest import IngestLimits, RawRecord, parse_event, parse_record
from splitpin.operators.isolation import Failed, Isolation
from splitpin.operators.model_calls import CallPolicy, JobErrorHandler, model_calls, shard_of
from splitpin.operators.model_gateway import Completer, ModelGateway, SourceFinder
from splitpin.operators.routing import RoutePlan, Router, conversation_logic
from splitpin.operators.sampling import mark_shadow, mirrored, require_prefix
from splitpin.providers.setup import build_model_backends
from splitpin.schemas.audit_sample import AuditSample
from splitpin.schemas.dead_letter import DeadLetter
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord, WindowedCost
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from splitpin.schemas.wire import WireModel, encode

T = TypeVar("T")


OBSERVED_RECORD_IDS = 10_000
"""Cost record ids a worker remembers so a re-emitted record is observed once (a re-emit
follows its original within the same job, so a short memory suffices)."""


@dataclass(frozen=True)
class CanaryMode:
    """A canary topology (splitpin/app/canary.py); the flow's settings are the canary's (its
    prefix, the candidate governance). It reads the primary's `events_topic`, mirrors the
    candidate's `canary.sample_fraction` of conversations, marks its costs shadow, admits
    against one shadow budget and writes only to topics starting with `topic_prefix`."""

    events_topic: str
    topic_prefix: str


@dataclass(frozen=True)
class FlowInputs:
    """Sources for tests; production reads both topics from Kafka."""

    events: Source[RawRecord]
    usage: Source[RawRecord] | None = None


_KafkaItem = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]


class _EpochSignal(StatefulSourcePartition[_KafkaItem, int | None]):
    """Delegates to Bytewax's Kafka partition; its snapshot (once per closed epoch) tells
    `metrics.epoch_closed`, which turns /readyz on (Kubernetes readiness)."""

    def __init__(self, inner: StatefulSourcePartition[_KafkaItem, int | None]) -> None:
        self._inner = inner

    def next_batch(self) -> Iterable[_KafkaItem]:
        return self._inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> int | None:
        metrics.epoch_closed()
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _SignallingKafkaSource(KafkaSource):
    """Bytewax's Kafka source whose partitions signal closed epochs (`_EpochSignal`) and,
    with no snapshot, start at the offset `earliest_offset` looks up: the same records as
    OFFSET_BEGINNING, without librdkafka's 500 ms back-off before it resolves that itself."""

    def __init__(self, settings: Settings, topic: str, *, tail: bool) -> None:
        security = security_config(settings.kafka)
        config = {
            "logger": LIBRDKAFKA_LOGGER,
            # An offset the broker no longer holds (retention passed a snapshot's offset)
            # resumes at the oldest record kept, never at the end (librdkafka's default).
            "auto.offset.reset": "earliest",
            **security,
        }
        super().__init__(
            [settings.bootstrap_servers],
            [topic],
            tail=tail,
            batch_size=settings.source_batch_size,
            add_config=config,  # Bytewax passes it to its consumers and admin client alike
        )
        self._topic = topic
        self._bootstrap = settings.bootstrap_servers
        self._lookup_config = security
        self._timeout_s = settings.startup_timeout_s

    def list_parts(self) -> list[str]:
        """Bytewax's partition names ("<partition>-<topic>"), listed by splitpin's admin
        client: Bytewax's own would be given the consumer-only key above and warn."""
        client = admin_client(self._bootstrap, **self._lookup_config)
        topic = client.list_topics(self._topic, timeout=self._timeout_s).topics[self._topic]
        if topic.error is not None:
            msg = f"cannot list the partitions of {self._topic!r}: {topic.error.str()}"
            raise RuntimeError(msg)
        return [f"{index}-{self._topic}" for index in topic.partitions]

    def build_part(  # type: ignore[override]  # returns a wrapper, not Bytewax's private class
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _EpochSignal:
        if resume_state is None:
            index, topic = for_part.split("-", 1)
            resume_state = earliest_offset(
                self._bootstrap, topic, int(index), self._timeout_s, config=self._lookup_config
            )
        return _EpochSignal(super().build_part(step_id, for_part, resume_state))


def kafka_source(settings: Settings, topic: str, *, tail: bool) -> KafkaSource:
    """Offsets live in Bytewax snapshots (no consumer group), so a resume rewinds exactly.
    `topic` is the physical name (a canary reads the primary's events topic)."""
    return _SignallingKafkaSource(settings, topic, tail=tail)


def _raw(
    message: KafkaSourceMessage[bytes | None, bytes | None]
    | KafkaError[bytes | None, bytes | None],
) -> RawRecord:
    if isinstance(message, KafkaError):
        # The source is built with raise_on_errors=True (the default), so consumer errors
        # stop the flow inside the source; this only narrows the type.
        msg = f"unexpected consumer error in stream: {message.err}"
        raise TypeError(msg)
    timestamp = message.timestamp[1] if message.timestamp and message.timestamp[0] else None
    return RawRecord(
        key=message.key,
        value=message.value,
        topic=message.topic or "",
        partition=message.partition if message.partition is not None else -1,
        offset=message.offset if message.offset is not None else -1,
        timestamp_ms=timestamp,
    )


def _read(
    flow: Dataflow, step: str, settings: Settings, topic: str, tail: bool
) -> Stream[RawRecord]:
    consumed = op.input(f"{step}-in", flow, kafka_source(settings, topic, tail=tail))
    return op.map(f"{step}-raw", consumed, _raw)


def _describer(
    settings: Settings, events_topic: str | None = None
) -> Callable[[object], RawRecord | None]:
    """What a dead letter of a failed item holds: the record it stands for, re-encoded,
    keyed as on its topic; its partition and offset are unknown (-1) past ingest."""
    events_topic = events_topic or settings.topic("events")  # a canary's: the primary's
    metrics_topic = settings.topic("metrics")

    def describe(item: object) -> RawRecord | None:
        if isinstance(item, RawRecord):
            return item
        if isinstance(item, tuple) and item:  # a Classified
            item = item[0]
        if isinstance(item, RoutePlan):
            item = item.observation.event
        if isinstance(item, AnswerJob):
            item = item.dispatch
        if isinstance(item, Dispatch):
            item = item.decision
        if isinstance(item, ConversationEvent | RoutingDecision):
            return RawRecord(item.conversation_id.encode(), encode(item), events_topic, -1, -1)
        if isinstance(item, CostRecord):
            return RawRecord(item.tenant_id.encode(), encode(item), metrics_topic, -1, -1)
        if isinstance(item, WireModel):
            return RawRecord(None, encode(item), "", -1, -1)
        return None

    return describe


def _is_failed(item: object) -> TypeGuard[Failed]:
    return isinstance(item, Failed)


def _ok(step: str, up: Stream[T | Failed], dead: list[Stream[DeadLetter | Failed]]) -> Stream[T]:
    """The items `step` produced; its failures join the dead letters."""
    split = op.branch(f"{step}-ok", up, _is_failed)
    dead.append(split.trues)
    return cast("Stream[T]", split.falses)


def build_flow(
    settings: Settings,
    *,
    inputs: FlowInputs | None = None,
    sink: Sink[OutRecord] | None = None,
    classifier: Classifier | None = None,
    tail: bool = True,
    backends: tuple[Completer, SourceFinder] | None = None,
    router: Router | None = None,
    governance: GovernanceConfig | None = None,
    canary: CanaryMode | None = None,
) -> Dataflow:
    """Wire the stages. Tests pass TestingSources of RawRecords and a TestingSink, and may
    pass their own model backends (providers, retriever); else the governance config's.
    A test may pass its own Router (e.g. one that raises, to attack error isolation).
    `governance` is the version in force (the governance topic's, see `splitpin run`);
    default: the settings' file."""
    governance = governance or settings.governance
    router = router or Router(governance)
    shadow = governance.canary.shadow_budget_usd if canary is not None else None
    gate = BudgetGate(governance, shadow_limit_usd=shadow)
    loaded = classifier or Classifier.load(governance.classifier, governance.routing)
    # onnxruntime initialises lazily on the first run; pay that at start-up, not on the
    # first customer's message (the memo is bypassed, so no result is cached).
    loaded.classify_batch(["warm-up: where is my card?", "hi"])
    for name in router.encodings:  # BPE tables load on first use, also ~0.3 s each
        tokens.encoding(name)
    memoized = MemoizedClassifier(loaded, governance.classifier.memo_size)
    limits = IngestLimits.from_settings(settings)
    guard = Isolation(
        settings.on_processing_error,
        _describer(settings, canary.events_topic if canary is not None else None),
        max_bytes=settings.dead_letter_max_bytes,
    )

    flow = Dataflow("splitpin-routing")
    if inputs is None:
        events_in = canary.events_topic if canary is not None else settings.topic("events")
        raw_events = _read(flow, "events", settings, events_in, tail)
        usage_in = settings.topic("metrics")  # a canary's own: never a tenant's costs
        raw_usage: Stream[RawRecord] | None = _read(flow, "usage", settings, usage_in, tail)
    else:
        raw_events = op.input("events-in", flow, inputs.events)
        raw_usage = op.input("usage-in", flow, inputs.usage) if inputs.usage else None

    parsed = guard.map("ingest", raw_events, lambda record: parse_event(record, limits))
    split = op.branch("valid", parsed, lambda item: isinstance(item, ConversationEvent))
    events: Stream[ConversationEvent] = split.trues  # type: ignore[assignment]
    dead: list[Stream[DeadLetter | Failed]] = [split.falses]  # type: ignore[list-item]
    if canary is not None:  # whole conversations only, decided by a hash of their id
        share = governance.canary.sample_fraction
        events = op.filter("canary-sample", events, lambda e: mirrored(e, share))
        dead = [op.filter("canary-sample-dead", dead[0], lambda d: mirrored(d, share))]

    def classify_failed(event: ConversationEvent, exc: Exception) -> Failed:
        return guard.fail("classify", event, exc)

    classified = _ok(
        "classify", classify_events("classify", events, memoized, classify_failed), dead
    )
    by_conversation = op.key_on("by-conversation", classified, lambda item: item[0].conversation_id)
    conversations = guard.stateful("conversation", by_conversation, conversation_logic(router))
    routed = _ok("conversation", op.key_rm("unkey-conversation", conversations), dead)

    def observe_latency(plan: RoutePlan) -> RoutePlan:
        metrics.DECISION_SECONDS.observe(plan.elapsed_s)
        return plan

    budget_inputs: Stream[BudgetInput] = _ok(
        "decision-latency", guard.map("decision-latency", routed, observe_latency), dead
    )
    if raw_usage is not None:
        parsed_usage = guard.map(
            "ingest-usage",
            raw_usage,
            lambda record: parse_record(record, CostRecord, "tenant_id", limits, "occurred_at"),
        )
        usage_split = op.branch("valid-usage", parsed_usage, lambda x: isinstance(x, CostRecord))
        usage: Stream[CostRecord] = usage_split.trues  # type: ignore[assignment]
        dead.append(usage_split.falses)  # type: ignore[arg-type]
        budget_inputs = op.merge("budget-inputs", budget_inputs, usage)

    by_tenant = op.key_on(
        "by-tenant", budget_inputs, _tenant_of if canary is None else lambda _: SHADOW_LEDGER
    )

    tenants = guard.stateful("budget", by_tenant, tenant_logic(gate))
    outcomes: Stream[BudgetOutput] = _ok("budget", op.key_rm("unkey-tenant", tenants), dead)

    gated = op.branch("dispatched", outcomes, lambda item: isinstance(item, Dispatch))
    dispatches: Stream[Dispatch] = gated.trues  # type: ignore[assignment]
    decisions_topic = settings.topic("decisions")
    failures_topic = settings.topic("validation_failures")
    dead_letter_topic = settings.topic("dead_letter")

    def outcome_out(outcome: BudgetOutput) -> OutRecord:
        assert not isinstance(outcome, Dispatch)  # branched off above
        key = outcome.conversation_id.encode()
        if isinstance(outcome, RoutingDecision):
            metrics.count(metrics.ROUTING_DECISIONS, outcome.role, outcome.tier)
            return OutRecord(decisions_topic, key, encode(outcome))
        metrics.count(metrics.VALIDATION_FAILURES, outcome.error)
        return OutRecord(failures_topic, key, encode(outcome))

    def dead_letter_out(item: DeadLetter | Failed) -> OutRecord:
        letter = item.letter if isinstance(item, Failed) else item
        metrics.count(metrics.DEAD_LETTERS, letter.reason)
        key = base64.b64decode(letter.key_b64) if letter.key_b64 is not None else None
        return OutRecord(dead_letter_topic, key, encode(letter))

    encoded = [
        _ok("outcome-out", guard.map("outcome-out", gated.falses, outcome_out), dead),
    ]
    if settings.answering:
        encoded += _answer(settings, governance, dispatches, guard, dead, canary, loaded, backends)
    # Last: every step's failures are in `dead` by now. Encoding a DeadLetter cannot fail
    # (it is a validated model), and a failure here would have nowhere else to go.
    out = op.merge(
        "outputs",
        *encoded,
        op.map("dead-letter-out", op.merge("dead-letters", *dead), dead_letter_out),
    )
    if canary is not None:  # not isolated: a foreign topic stops the canary, loudly
        prefix = canary.topic_prefix

        def own_topic(record: OutRecord) -> OutRecord:
            require_prefix(record.topic, prefix)
            return record

        out = op.map("canary-topics", out, own_topic)
    op.output(
        "kafka-out",
        out,
        sink
        or CheckedKafkaSink(
            settings.bootstrap_servers,
            delivery_timeout_ms=settings.delivery_timeout_ms,
            flush_timeout_s=settings.sink_flush_timeout_s,
            client=security_config(settings.kafka),
        ),
    )
    return flow


def _answer(
    settings: Settings,
    governance: GovernanceConfig,
    dispatches: Stream[Dispatch],
    guard: Isolation,
    dead: list[Stream[DeadLetter | Failed]],
    canary: CanaryMode | None,
    classifier: Classifier,
    backends: tuple[Completer, SourceFinder] | None,
) -> list[Stream[OutRecord]]:
    """The answering stage: dispatched decisions become replies, costs and audit samples.
    Left out when `settings.answering` is off (a routing-only deployment)."""
    providers, retriever = backends or build_model_backends(governance, classifier)
    gateway = ModelGateway(governance, providers, retriever, frozenset(classifier.intent_labels))
    answer_policy = AnswerPolicy(
        governance,
        gateway.run,
        covers=gateway.covers,
        judges=gateway.judges,
        intent_article=gateway.intent_article,
        answers_locally=gateway.answers_locally,
    )
    calls = governance.providers
    executor = shared_executor(calls.max_in_flight, settings.call_threads)
    metrics.CALLS_IN_FLIGHT.set_function(lambda: executor.in_flight)
    metrics.CALLS_QUEUED.set_function(lambda: executor.queued)

    by_shard = op.key_on(
        "by-shard",
        dispatches,
        lambda d: shard_of(d.decision.conversation_id, calls.call_shards),
    )

    def job_failed(
        job_id: str | None, item: Dispatch | None, job: AnswerJob | None, exc: Exception
    ) -> tuple[list[AnswerOutput], Failed]:
        """One job died (not its shard): dead-letter it, and still end the customer's wait
        with the safe reply, since its decision already went out."""
        failed = guard.fail("answer", item if item is not None else job, exc)
        dispatch = item if item is not None else job.dispatch if job is not None else None
        if dispatch is None:
            return [], failed

        def abandon(dispatch: Dispatch) -> list[AnswerOutput]:
            return answer_policy.abandon(dispatch, job)

        # If even the safe reply raises, that is counted (step answer-abandon); the job's
        # one dead letter is `failed`.
        final = guard.guard_many("answer-abandon", abandon)(dispatch)
        return [x for x in final if not isinstance(x, Failed)], failed

    policy: CallPolicy[Dispatch, AnswerJob, CallSpec, CallOutcome, AnswerOutput] = answer_policy
    on_job_error: JobErrorHandler[Dispatch, AnswerJob, AnswerOutput] = job_failed
    per_shard = model_calls(
        "answer",
        by_shard,
        policy,
        lambda: executor,
        calls.poll_interval_ms / 1000,
        on_job_error=on_job_error,
    )
    answers: Stream[AnswerOutput] = _ok("answer", op.key_rm("unkey-shard", per_shard), dead)
    if canary is not None:
        answers = op.map("shadow-costs", answers, mark_shadow)  # type: ignore[arg-type]

    costs = op.filter_map(
        "call-costs", answers, lambda item: item if isinstance(item, CostRecord) else None
    )

    def check_windowable(record: CostRecord) -> CostRecord:
        if not windowable(record, governance.accounting):
            msg = f"occurred_at {record.occurred_at.isoformat()} is too close to datetime limits"
            raise OverflowError(msg)
        return record

    safe_costs = _ok("cost-windows-in", guard.map("cost-windows-in", costs, check_windowable), dead)
    windowed: Stream[WindowedCost] = _ok(
        "cost-windows",
        window_costs("cost-windows", safe_costs, governance.accounting, guard),
        dead,
    )

    failures_topic = settings.topic("validation_failures")
    replies_topic = settings.topic("replies")
    metrics_topic = settings.topic("metrics")
    windowed_topic = settings.topic("metrics_windowed")
    audit_topic = settings.topic("replies_audit")

    # A finished job may re-emit its last CostRecord marked last_call (same record_id):
    # Kafka consumers dedupe it, Prometheus counters must not count the call twice.
    observed: OrderedDict[str, None] = OrderedDict()

    def answer_out(item: AnswerOutput) -> list[OutRecord]:
        if isinstance(item, Reply):
            return [OutRecord(replies_topic, item.conversation_id.encode(), encode(item))]
        if isinstance(item, CostRecord):
            if item.record_id not in observed:
                metrics.observe_call(item)
                observed[item.record_id] = None
                if len(observed) > OBSERVED_RECORD_IDS:
                    observed.popitem(last=False)
            return [OutRecord(metrics_topic, item.tenant_id.encode(), encode(item))]
        if isinstance(item, ValidationFailure):
            metrics.count(metrics.VALIDATION_FAILURES, item.error)
            return [OutRecord(failures_topic, item.conversation_id.encode(), encode(item))]
        if isinstance(item, AuditSample):
            metrics.observe_audit(item.agreed)
            return [OutRecord(audit_topic, item.conversation_id.encode(), encode(item))]
        if isinstance(item, Escalation):
            metrics.count(metrics.ESCALATIONS, item.from_role, item.to_role, item.reason)
        elif isinstance(item, ReplyTiming):
            metrics.observe_reply(item.kind, item.route, item.seconds)
        return []

    def windowed_out(window: WindowedCost) -> OutRecord:
        return OutRecord(windowed_topic, window.tenant_id.encode(), encode(window))

    return [
        _ok("answer-out", guard.flat_map("answer-out", answers, answer_out), dead),
        _ok("windowed-out", guard.map("windowed-out", windowed, windowed_out), dead),
    ]


def _tenant_of(item: BudgetInput) -> str:
    return item.tenant_id if isinstance(item, CostRecord) else item.observation.event.tenant_id
