"""The routing brain in the running flow, on a real broker, with the real classifier.

Covers the issue's acceptance: compliance pinned, overflow prevented with nothing
dispatched, budget refusal with a reason, cache hits on repeats, and usage reconciliation
arriving on routing.metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import yaml

from schemas import CostRecord, RoutingDecision, ValidationFailure, decode, encode
from splitpin.kafka.producer import CheckedProducer
from splitpin.settings import REPO_ROOT, Settings
from splitpin.tokens import count_tokens
from tests.factories import event_dict
from tests.flow_process import running_flow
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

INCIDENT_TOKENS = 131_072


def _governance(tmp_path: Path) -> Path:
    """The shipped config with the incident's 65,536-token long-context window and a
    tenant whose budget fits only a couple of requests."""
    data = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    for role in ("fast", "compliance", "verifier"):
        data["roles"][role].update(context_window=16_384, max_output_tokens=2_048)
    data["roles"]["long_context"].update(context_window=65_536, max_output_tokens=4_096)
    data["roles"]["summarizer"].update(context_window=65_536, max_output_tokens=4_096)
    data["budgets"]["tenants"]["thrifty"] = {"limit_usd": 0.004}
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


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
    with running_flow(settings, tmp_path / "recovery", tmp_path / "flow.log", **env) as flow:
        got = read_until(
            settings.bootstrap_servers,
            settings.topic("decisions"),
            lambda records: len(records) >= len(events),
            120,
        )
        # Actual usage for the thrifty request that was dispatched (which one depends on
        # partition order) arrives on routing.metrics and replaces its reservation.
        first_pass = [decode(RoutingDecision, m.value()) for m in got]
        dispatched = next(
            d for d in first_pass if d.tenant_id == "thrifty" and d.action == "dispatch"
        )
        record = CostRecord(
            record_id=f"{dispatched.event_id}:0",
            event_id=dispatched.event_id,
            tenant_id="thrifty",
            role=dispatched.role,
            model=dispatched.model,
            model_version=dispatched.model_version,
            tokens_in=1,
            tokens_out=1,
            cost_usd=0.0,
            latency_ms=1.0,
            occurred_at=dispatched.sent_at,
        )
        producer.produce(settings.topic("metrics"), encode(record), b"thrifty")
        producer.flush(15)
        # The report and the next event travel on different topics, so nothing orders them;
        # give the flow (which polls every few ms) time to apply the report first.
        time.sleep(3)
        late = event_dict("thr-late", "c-thr-late", text="what is my balance", tenant_id="thrifty")
        producer.produce(settings.topic("events"), orjson.dumps(late), b"c-thr-late")
        producer.flush(15)
        got = read_until(
            settings.bootstrap_servers,
            settings.topic("decisions"),
            lambda records: len(records) >= len(events) + 1,
            60,
        )
        failures = read_until(
            settings.bootstrap_servers,
            settings.topic("validation_failures"),
            lambda r: len(r) >= 1,
            30,
        )
        assert flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]

    decisions = {d.event_id: d for d in (decode(RoutingDecision, m.value()) for m in got)}
    assert len(decisions) == len(events) + 1

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
    assert sum(d.estimated_cost_usd for d in thrifty if d.action == "dispatch") <= 0.004
    assert decisions["thr-late"].action == "dispatch"

    # every decision carries the features and reasons that produced it
    assert all(d.reasons and "intent" in d.features for d in decisions.values())
