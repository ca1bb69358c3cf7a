"""The routing brain in the running flow, on a real broker, with the real classifier.

Covers the issue's acceptance: compliance pinned, overflow prevented with nothing
dispatched, budget refusal with a reason, cache hits on repeats, and usage reconciliation
from the flow's own cost records on routing.metrics.
"""

from __future__ import annotations

import math
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.core.tokens import count_tokens
from splitpin.schemas import CostRecord, RoutingDecision, ValidationFailure, decode
from splitpin.schemas.replies import Reply
from tests.factories import event_dict
from tests.flow_process import running_flow
from tests.kafka_helpers import free_ports, read_until

pytestmark = pytest.mark.integration

INCIDENT_TOKENS = 131_072
THRIFTY_LIMIT = 0.1
"""Enough for two of the thrifty tenant's requests (every call they may make reserved at
its max_tokens: answer, verification, re-route; about $0.047 each)."""


def _governance(tmp_path: Path) -> Path:
    """The shipped config with the incident's 65,536-token long-context window and a
    tenant whose budget fits only a couple of requests."""
    data = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    for role in ("fast", "compliance", "verifier"):
        data["roles"][role].update(context_window=16_384, max_output_tokens=2_048)
    data["roles"]["long_context"].update(context_window=65_536, max_output_tokens=4_096)
    data["roles"]["summarizer"].update(context_window=65_536, max_output_tokens=4_096)
    data["budgets"]["tenants"]["thrifty"] = {"limit_usd": THRIFTY_LIMIT}
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _gauge(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def _text_of(tokens: int) -> str:
    text = "ledger" + " ledger" * (tokens - 1)
    assert count_tokens(text, "cl100k_base") == tokens
    return text


def test_routing_brain_on_the_broker(topic_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings(partitions=2)
    events = [
        # compliance: by intent (no tag) and by tag
        event_dict("cmp-0", "c-comp", text="I think my card has been compromised, someone used it"),
        event_dict("cmp-1", "c-tag", text="hello", tags=("compliance",)),
        # a repeat within the TTL reuses the decision
        event_dict("rep-0", "c-rep", text="How long does a transfer take?", at_s=0),
        event_dict("rep-1", "c-rep", text="how long does a transfer take", at_s=30),
        # the incident: 131,072 tokens over 8 turns -> compacted; one message of 131,072 -> refused
        *[
            event_dict(
                f"inc-{i}",
                "c-incident",
                text=_text_of(INCIDENT_TOKENS // 8),
                at_s=i,
                channel="email",
            )
            for i in range(8)
        ],
        event_dict("huge-0", "c-huge", text=_text_of(INCIDENT_TOKENS), channel="email"),
        # a tenant that can afford only a few requests
        *[
            event_dict(
                f"thr-{i}",
                f"c-thr-{i}",
                text="please explain the fees on my statement " * 40,
                tenant_id="thrifty",
            )
            for i in range(6)
        ],
    ]
    producer = CheckedProducer(settings.bootstrap_servers)
    for event in events:
        producer.produce(
            settings.topic("events"), orjson.dumps(event), event["conversation_id"].encode()
        )
    producer.flush(30)

    env = {
        "SPLITPIN_GOVERNANCE_PATH": str(_governance(tmp_path)),
        "SPLITPIN_MAX_EVENT_BYTES": str(2 * 1024 * 1024),
    }
    (metrics_port,) = free_ports(1)
    env["SPLITPIN_METRICS_PORT"] = str(metrics_port)
    with running_flow(settings, tmp_path / "recovery", tmp_path / "flow.log", **env) as flow:
        got = read_until(
            settings.bootstrap_servers,
            settings.topic("decisions"),
            lambda records: len(records) >= len(events),
            120,
        )
        # The flow answers the thrifty requests it dispatched and reports each call's
        # actual cost on routing.metrics, which it reads back to reconcile the budget.
        first_pass = [decode(RoutingDecision, m.value()) for m in got]
        dispatched = {
            d.event_id: d for d in first_pass if d.tenant_id == "thrifty" and d.action == "dispatch"
        }

        def answered(records: list[Any]) -> bool:
            finals = {decode(Reply, m.value()) for m in records}
            return {r.reply_id for r in finals if r.kind == "final"} >= set(dispatched)

        read_until(settings.bootstrap_servers, settings.topic("replies"), answered, 60)
        costs = [
            record
            for record in (
                decode(CostRecord, m.value())
                for m in read_to_end(settings.bootstrap_servers, settings.topic("metrics"))
            )
            if record.tenant_id == "thrifty"
        ]
        actual = math.fsum(c.cost_usd for c in costs)
        held = math.fsum(d.estimated_cost_usd for d in dispatched.values())
        remaining = None
        deadline = time.monotonic() + 30  # a guard against hanging, not a measurement
        while time.monotonic() < deadline:
            remaining = _gauge(metrics_port, "splitpin_budget_remaining_usd", tenant="thrifty")
            if remaining is not None and remaining > THRIFTY_LIMIT - held + 1e-9:
                break
            time.sleep(0.2)
        failures = read_until(
            settings.bootstrap_servers,
            settings.topic("validation_failures"),
            lambda r: len(r) >= 1,
            30,
        )
        assert flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]

    decisions = {d.event_id: d for d in (decode(RoutingDecision, m.value()) for m in got)}
    assert len(decisions) == len(events)

    # compliance pinned, by intent and by tag
    assert decisions["cmp-0"].role == "compliance" and decisions["cmp-0"].pinned
    assert decisions["cmp-0"].intent == "compromised_card"
    assert decisions["cmp-1"].role == "compliance" and decisions["cmp-1"].pinned

    # cache hit on the repeat
    assert decisions["rep-1"].cache_hit_of == "rep-0"
    assert decisions["rep-1"].role == decisions["rep-0"].role

    # the incident conversation fits by compaction; the single huge message is refused
    last = decisions["inc-7"]
    assert last.tokens.conversation >= INCIDENT_TOKENS
    assert last.action == "dispatch" and last.compacted_turns > 0
    assert last.prompt_tokens is not None and last.prompt_tokens + 4_096 <= 65_536
    huge = decisions["huge-0"]
    assert huge.action == "refuse" and huge.prompt_tokens is None
    overflow = [decode(ValidationFailure, m.value()) for m in failures]
    assert [(f.event_id, f.error) for f in overflow] == [("huge-0", "ContextOverflow")]
    assert "limit=65536" in overflow[0].detail

    # budget: some thrifty requests refused with the reason; reconciliation freed room
    thrifty = [decisions[f"thr-{i}"] for i in range(6)]
    refused = [d for d in thrifty if d.action == "refuse"]
    assert refused and all(
        any(r.startswith("budget: thrifty has $") for r in d.reasons) for d in refused
    )
    reserved = sum(d.estimated_cost_usd for d in thrifty if d.action == "dispatch")
    assert reserved <= THRIFTY_LIMIT
    # Reconciliation: each call's actual cost replaced its reservation, which freed room;
    # what calls never made (a re-route not needed) reserved stays held in the window.
    assert {c.event_id for c in costs} == set(dispatched)
    assert remaining is not None
    assert THRIFTY_LIMIT - reserved < remaining <= THRIFTY_LIMIT - actual + 1e-9
    assert 0 < actual < reserved

    # every decision carries the features and reasons that produced it
    assert all(d.reasons and "intent" in d.features for d in decisions.values())
