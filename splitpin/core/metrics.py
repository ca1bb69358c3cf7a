"""Prometheus metrics: one module so names, labels and buckets are defined once.

Names end in `_total` / `_seconds`; labels are bounded sets (reason codes, roles,
channels, topics): never a conversation, tenant-user or event id.

Model-call metrics carry the OpenTelemetry GenAI attributes as Prometheus labels, named
the way OpenTelemetry's Prometheus exporter translates them (dots become underscores):
`gen_ai.provider.name` -> `gen_ai_provider_name` (anthropic, openai, local),
`gen_ai.request.model` -> `gen_ai_request_model` (the role's pinned id; `local-<role>` for
the local fleet), `error.type` -> `error_type`. Their values come from the configured roles
(`declare_role`, called by the provider registry), so they stay bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, cast
from wsgiref.simple_server import make_server

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:
    from splitpin.schemas.metrics import CostRecord

WsgiEnviron = dict[str, Any]
WsgiStartResponse = Callable[..., Any]
WsgiApp = Callable[[WsgiEnviron, WsgiStartResponse], Iterable[bytes]]

# Before any metric exists: counters and histograms would each export a `_created` series
# (a timestamp per child) that no dashboard reads and that doubles the series count.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

PROVIDER = "gen_ai_provider_name"
REQUEST_MODEL = "gen_ai_request_model"
LOCAL_PROVIDER = "local"

# Buckets resolve the 15 ms decision budget finely and still show slow outliers.
DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)
# Model calls and replies take from milliseconds (local fleet) to tens of seconds (remote).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
FLUSH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

EVENTS_INGESTED = Counter(
    "splitpin_events_ingested_total", "Valid conversation events accepted.", ["channel"]
)
DEAD_LETTERS = Counter(
    "splitpin_dead_letters_total", "Input records sent to the dead-letter topic.", ["reason"]
)
DUPLICATE_EVENTS = Counter(
    "splitpin_duplicate_events_total", "Events whose event_id was already processed."
)
SESSIONS_STARTED = Counter(
    "splitpin_sessions_started_total", "Conversation sessions opened.", ["channel"]
)
CONVERSATIONS_EVICTED = Counter(
    "splitpin_conversations_evicted_total", "Idle conversation states dropped from memory."
)
ROUTING_DECISIONS = Counter(
    "splitpin_routing_decisions_total", "Routing decisions emitted.", ["role", "tier"]
)
DECISION_SECONDS = Histogram(
    "splitpin_decision_seconds",
    "Router overhead per event: state update + routing, excluding any model call.",
    buckets=DECISION_BUCKETS,
)
CACHE_HITS = Counter(
    "splitpin_cache_hits_total", "Repeated questions whose earlier decision was reused."
)
OVERFLOWS_PREVENTED = Counter(
    "splitpin_context_overflows_prevented_total",
    "Requests refused before dispatch because no role's window could hold them.",
)
VALIDATION_FAILURES = Counter(
    "splitpin_validation_failures_total", "Records written to the failures topic.", ["error"]
)
BUDGET_VERDICTS = Counter("splitpin_budget_verdicts_total", "Budget gate outcomes.", ["action"])
BUDGET_REMAINING = Gauge(
    "splitpin_budget_remaining_usd",
    "Budget left in the tenant's current window, within [0, limit]. tenant: a configured "
    "tenant id, or `other` for every unknown one (a bounded label set; never a user id).",
    ["tenant"],
)
BUDGET_RECONCILED = Counter(
    "splitpin_budget_reconciled_total", "Usage reports applied to tenant budgets."
)
SINK_RECORDS = Counter(
    "splitpin_sink_records_total", "Records acknowledged by Kafka, by topic.", ["topic"]
)
SINK_FLUSH_SECONDS = Histogram(
    "splitpin_sink_flush_seconds", "Time to get a batch acknowledged.", buckets=FLUSH_BUCKETS
)

MODEL_CALLS = Counter(
    "splitpin_model_calls_total",
    "Model calls that returned a result.",
    ["role", "model", PROVIDER, REQUEST_MODEL],
)
MODEL_CALL_SECONDS = Histogram(
    "splitpin_model_call_seconds",
    "Provider latency per call (emulated for the local fleet when emulation is on).",
    ["role", PROVIDER, REQUEST_MODEL],
    buckets=CALL_BUCKETS,
)
MODEL_TOKENS = Counter(
    "splitpin_model_tokens_total",
    "Tokens billed, by model and direction (in, out: gen_ai.token.type input, output).",
    ["model", "direction", PROVIDER, REQUEST_MODEL],
)
MODEL_COST = Counter(
    "splitpin_model_cost_usd_total",
    'Cost of model calls in USD; emulated="true" for the local fleet\'s list-price '
    "emulation, which no provider bills.",
    ["model", PROVIDER, REQUEST_MODEL, "emulated"],
)
REPLY_SECONDS = Histogram(
    "splitpin_reply_seconds",
    "From the routing decision to a reply's emission: time to preliminary and to final.",
    ["kind", "route"],
    buckets=CALL_BUCKETS,
)
VERIFICATION_PATHS = Counter(
    "splitpin_verification_paths_total",
    "How unpinned answers met the verifier: skip (a fast answer final unverified, its "
    "calibrated probability clearing replies.verify_min_probability), audit (verified "
    "although it cleared it), verify (verified: below the bound or unknown), direct "
    "(replies.verifier_first: the verifier answered alone, no fast call), hedge "
    "(replies.verifier_first: the verifier raced the fast pass from the start).",
    ["path"],
)
HEDGES = Counter(
    "splitpin_hedged_calls_total",
    "Hedged verifications: started (the verifier ran without waiting for the fast pass), "
    "won (its final came while the fast pass was still running), cancelled (a call of a "
    "hedged pair stopped because the other made it unnecessary).",
    ["channel", "outcome"],
)
ESCALATIONS = Counter(
    "splitpin_escalations_total",
    "Answers handed to a stronger role.",
    ["from_role", "to_role", "reason"],
)
CALLS_IN_FLIGHT = Gauge(
    "splitpin_model_calls_in_flight", "Model calls holding an executor slot in this process."
)
CALLS_QUEUED = Gauge(
    "splitpin_model_calls_queued",
    "Model calls waiting for an executor slot in this process (the queue is unbounded).",
)
MODEL_CALL_FAILURES = Counter(
    "splitpin_model_call_failures_total",
    "Remote model calls that ended without a result (retries spent), by provider, pinned "
    "model and error type (a fixed set, splitpin.providers.resilience.ErrorType).",
    [PROVIDER, REQUEST_MODEL, "error_type"],
)
MODEL_CALL_RETRIES = Counter(
    "splitpin_model_call_retries_total",
    "Retries of a remote model call, by provider, pinned model and the error type that "
    "caused them.",
    [PROVIDER, REQUEST_MODEL, "reason"],
)
BREAKER_STATE = Gauge(
    "splitpin_model_breaker_state",
    "Circuit breaker per pinned model: 0 closed, 1 half-open, 2 open.",
    ["model"],
)


_ROLES: dict[str, tuple[str, str]] = {}
"""role -> (provider, requested model) of the backend answering it in this process."""


def declare_role(role: str, provider: str, request_model: str) -> None:
    """Record which provider and pinned model answer `role` (the registry, at start-up)."""
    _ROLES[role] = (provider, request_model)


def gen_ai_labels(record: CostRecord) -> tuple[str, str]:
    """(provider, requested model) of a call: the local fleet's own when it answered
    (emulated), else the declared role's; an undeclared role falls back to its model."""
    if record.emulated:
        return LOCAL_PROVIDER, record.model
    return _ROLES.get(record.role, ("unknown", record.model))


def observe_call(record: CostRecord) -> None:
    """One model call's cost record into the call, token and cost counters."""
    provider, request_model = gen_ai_labels(record)
    count(MODEL_CALLS, record.role, record.model, provider, request_model)
    child(MODEL_CALL_SECONDS, record.role, provider, request_model).observe(
        record.latency_ms / 1000
    )
    count(MODEL_TOKENS, record.model, "in", provider, request_model, amount=record.tokens_in)
    count(MODEL_TOKENS, record.model, "out", provider, request_model, amount=record.tokens_out)
    emulated = "true" if record.emulated else "false"
    count(MODEL_COST, record.model, provider, request_model, emulated, amount=record.cost_usd)


def observe_reply(kind: str, route: str, seconds: float) -> None:
    child(REPLY_SECONDS, kind, route).observe(seconds)


M = TypeVar("M", bound=MetricWrapperBase)


@cache
def _child(metric: MetricWrapperBase, labels: tuple[str, ...]) -> Any:
    return metric.labels(*labels)


def child(metric: M, *labels: str) -> M:
    """`metric.labels(*labels)`, remembered: `labels()` is per-event hot-path work (label
    validation under a lock, ~1 us against ~0.2 us here) and our label sets are small
    and fixed."""
    return cast(M, _child(metric, labels))


def count(counter: Counter, *labels: str, amount: float = 1.0) -> None:
    """Increment a labelled counter."""
    child(counter, *labels).inc(amount)


LIVE_PATH = "/livez"
READY_PATH = "/readyz"
INPUT_SNAPSHOTS = Counter(
    "splitpin_input_snapshots_total",
    "Input partition snapshots taken in this process: one per owned Kafka partition per "
    "closed epoch; /readyz turns 200 at the first.",
)
_first_epoch = threading.Event()


def epoch_closed() -> None:
    """A source partition was snapshotted: this process has joined the cluster and closed
    an epoch, so /readyz answers 200 from now on (Kubernetes' readiness probe)."""
    INPUT_SNAPSHOTS.inc()
    _first_epoch.set()


def _health_app(metrics_app: WsgiApp) -> WsgiApp:
    """/livez: the process serves (the flow thread is not blocked from HTTP); /readyz: 200
    only after the first closed epoch, else 503; anything else is the metrics app."""

    def app(environ: WsgiEnviron, start_response: WsgiStartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == LIVE_PATH or (path == READY_PATH and _first_epoch.is_set()):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == READY_PATH:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"no epoch closed yet\n"]
        return metrics_app(environ, start_response)

    return app


def serve(port: int) -> None:
    """Expose the default registry (ours and Bytewax's own) on `port`, with /livez and
    /readyz beside /metrics; 0 disables it."""
    if port:
        server = make_server(
            "0.0.0.0",  # all interfaces: probes and scrapes come from outside the pod
            port,
            _health_app(make_wsgi_app()),
            ThreadingWSGIServer,
            handler_class=_SilentHandler,
        )
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


LATE_COST_RECORDS = Counter(
    "splitpin_cost_records_late_total",
    "CostRecords that arrived after their window closed.",
    ["model"],
)
PROCESSING_ERRORS = Counter(
    "splitpin_processing_errors_total",
    "Records a step's logic raised for (dead-lettered as processing_error, or the flow "
    "stopped), by step and exception type.",
    ["step", "error_type"],
)
CANARY_AGREEMENT = Gauge(
    "splitpin_canary_agreement_ratio",
    "`splitpin canary watch`, last closed window: share of final replies where canary and "
    "primary cite the same sources. route: the primary's route label or `overall`.",
    ["route"],
)
CANARY_P95_RATIO = Gauge(
    "splitpin_canary_p95_ratio",
    "Last closed window: canary / primary time to final reply, p95 (+Inf: primary was 0).",
    ["route"],
)
CANARY_COST_RATIO = Gauge(
    "splitpin_canary_cost_ratio",
    "Last closed window: canary / primary cost per conversation.",
    ["route"],
)
AUDITS = Counter(
    "splitpin_audit_total",
    "`replies.verify: audit`: confident fast answers verified anyway, by whether the "
    'verifier cited the same sources (agreed="true") or not.',
    ["agreed"],
)
AUDIT_AGREEMENT = Gauge(
    "splitpin_audit_agreement_ratio",
    "Share of audited fast answers the verifier agreed with, since this process started: "
    "the live accuracy of the answers the fast path finishes alone.",
)
_audit_counts = [0, 0]
"""[audited, agreed] in this process, for the running ratio."""


def observe_audit(agreed: bool) -> None:
    """One audited answer into the counter pair and the running agreement ratio."""
    count(AUDITS, "true" if agreed else "false")
    _audit_counts[0] += 1
    _audit_counts[1] += agreed
    AUDIT_AGREEMENT.set(_audit_counts[1] / _audit_counts[0])
