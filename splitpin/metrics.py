"""Prometheus metrics: one module so names, labels and buckets are defined once.

Names end in `_total` / `_seconds`; labels are bounded sets (reason codes, roles,
channels, topics): never a conversation, tenant-user or event id.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Buckets resolve the 15 ms decision budget finely and still show slow outliers.
DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)
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
    "Budget left in the tenant's current window (tenants are few; never a user id).",
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


@cache
def _child(counter: Counter, labels: tuple[str, ...]) -> Counter:
    return counter.labels(*labels)


def count(counter: Counter, *labels: str, amount: float = 1.0) -> None:
    """Increment a labelled counter; children are cached because `labels()` is per-event
    hot-path work (label validation under a lock) and our label sets are small and fixed."""
    _child(counter, labels).inc(amount)


def serve(port: int) -> None:
    """Expose the default registry (ours and Bytewax's own) on `port`; 0 disables it."""
    if port:
        start_http_server(port)
