"""End to end on the real broker with the local model fleet: the sample traffic (chat and
email; trivial, bounded, extended and compliance), malformed records, a conversation
larger than every model's window and a message no window can hold.

Checks: every valid customer event ends with exactly one final reply; no delivered reply
cites a source that was not attached; the cost on routing.metrics is the sum of its
records and matches both the windowed aggregates and the Prometheus counters.
"""

from __future__ import annotations

import math
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from splitpin.app.replay import replay_file
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.providers.knowledge_base import _package_kb, parse_articles
from splitpin.schemas import DeadLetter, RoutingDecision, decode
from splitpin.schemas.metrics import CostRecord, WindowedCost
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import event_dict
from tests.flow_process import running_flow
from tests.governance_files import save_config, shipped_config
from tests.kafka_helpers import free_ports, read_until

pytestmark = pytest.mark.integration

SAMPLE = REPO_ROOT / "data" / "sample" / "events.jsonl"
MALFORMED = REPO_ROOT / "data" / "sample" / "malformed.jsonl"
PARAGRAPH = (
    "I am writing again about the transfer to my landlord that left my account on the "
    "first of the month and still has not arrived, and about the fee you charged for it. "
)


def small_windows(tmp_path: Path) -> Path:
    """Shipped config with windows small enough that one conversation outgrows them all."""
    config = shipped_config()
    windows = {
        "fast": (3000, 512),
        "long_context": (6000, 1024),
        "compliance": (4000, 512),
        "verifier": (4000, 512),
        "summarizer": (6000, 512),
    }
    for name, (window, output) in windows.items():
        config["roles"][name].update(context_window=window, max_output_tokens=output)
    config["conversation"]["window_tokens"] = 5000
    # Short windows, so the last one closes a few seconds after the last call.
    config["accounting"] = {"window_s": 5, "allowed_lateness_s": 2}
    return save_config(config, tmp_path)


def extra_events() -> list[dict[str, Any]]:
    """A 12-turn email thread of ~9k tokens, and one email no window can hold."""
    thread = [
        event_dict(
            f"huge-{n:02d}",
            "huge-thread",
            channel="email",
            text=f"Message {n}. " + PARAGRAPH * 20,
            at_s=3600 + n * 60,
        )
        for n in range(12)
    ]
    giant = event_dict(
        "giant-0", "giant", channel="email", text=PARAGRAPH * 260, at_s=7200
    )  # ~9.6k tokens alone: over every role's window even before any output
    return [*thread, giant]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return totals


def test_sample_traffic_end_to_end(topic_settings: Any, tmp_path: Path) -> None:
    settings: Settings = topic_settings(
        partitions=3, governance_path=small_windows(tmp_path), max_event_bytes=65536
    )
    (metrics_port,) = free_ports(1)
    valid = [orjson.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    valid += extra_events()
    customer_ids = {e["event_id"] for e in valid if e["role"] == "customer"}
    assert len(valid) + len(MALFORMED.read_text().splitlines()) >= 500

    with running_flow(
        settings,
        tmp_path / "recovery",
        tmp_path / "flow.log",
        SPLITPIN_METRICS_PORT=str(metrics_port),
    ) as flow:
        replay_file(settings, SAMPLE)
        replay_file(settings, MALFORMED)
        producer = CheckedProducer(settings.bootstrap_servers)
        for event in extra_events():
            key = event["conversation_id"].encode()
            producer.produce(settings.topic("events"), orjson.dumps(event), key)
        producer.flush(15)

        def all_final(got: list[Any]) -> bool:
            finals = {r.reply_id for r in (decode(Reply, m.value()) for m in got)}
            return finals >= customer_ids

        replies = [
            decode(Reply, m.value())
            for m in read_until(
                settings.bootstrap_servers, settings.topic("replies"), all_final, 400
            )
        ]
        statements = [
            decode(CostRecord, m.value())
            for m in read_to_end(settings.bootstrap_servers, settings.topic("metrics"))
        ]
        # A hedged job restates its last record (same record_id, now last_call) once its
        # loser is settled; every consumer counts a record_id once.
        by_id: dict[str, CostRecord] = {}
        for statement in statements:
            first = by_id.setdefault(statement.record_id, statement)
            if first is not statement:
                assert statement.last_call and statement.cost_usd == first.cost_usd, statement
        costs = list(by_id.values())
        total = math.fsum(c.cost_usd for c in costs)

        def windows_closed(got: list[Any]) -> bool:
            summed = math.fsum(decode(WindowedCost, m.value()).cost_usd for m in got)
            return math.isclose(summed, total, rel_tol=1e-9)

        read_until(
            settings.bootstrap_servers, settings.topic("metrics_windowed"), windows_closed, 90
        )
        prometheus = scrape(metrics_port)
        assert flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]

    def read(topic: str) -> list[bytes]:
        return [m.value() for m in read_to_end(settings.bootstrap_servers, settings.topic(topic))]

    decisions = [decode(RoutingDecision, v) for v in read("decisions")]
    failures = [decode(ValidationFailure, v) for v in read("validation_failures")]
    letters = [decode(DeadLetter, v) for v in read("dead_letter")]
    windowed = [decode(WindowedCost, v) for v in read("metrics_windowed")]

    # Every valid customer event: exactly one final revision, above any preliminary.
    finals = Counter(r.reply_id for r in replies if r.kind == "final")
    assert set(finals) == customer_ids and set(finals.values()) == {1}
    by_reply: dict[str, list[Reply]] = defaultdict(list)
    for reply in replies:
        by_reply[reply.reply_id].append(reply)
    for revisions in by_reply.values():
        final = next(r for r in revisions if r.kind == "final")
        assert final.revision == max(r.revision for r in revisions)

    # No delivered reply cites a source that was not attached (a retrieved KB article).
    bases = {
        name: {
            a.doc_id for a in parse_articles(_package_kb(name)[0].decode().splitlines(), name, name)
        }
        for name in ("banking77", "abcd")
    }
    for reply in replies:
        for citation in reply.citations:
            kb, _, doc_id = citation.source.removeprefix("kb:").partition("/")
            assert doc_id == citation.doc_id and doc_id in bases[kb], reply

    # The traffic had every shape the brief names.
    tiers = Counter(d.tier for d in decisions)
    assert {"trivial", "bounded", "extended"} <= set(tiers)
    assert any(d.pinned and d.role == "compliance" for d in decisions)
    assert {r.channel for r in replies} == {"chat", "email"}
    assert any(r.kind == "preliminary" for r in replies)
    assert len(letters) == len(MALFORMED.read_text().splitlines())
    huge = [d for d in decisions if d.conversation_id == "huge-thread"]
    assert max(d.compacted_turns for d in huge) > 0 and all(d.action == "dispatch" for d in huge)
    assert any(f.error == "ContextOverflow" and f.event_id == "giant-0" for f in failures)
    giant = next(r for r in replies if r.reply_id == "giant-0")
    assert giant.status == "refused"

    # Cost: records = windowed aggregates = Prometheus counters.
    assert len(statements) - len(costs) <= sum(1 for c in statements if c.last_call)
    assert total > 0
    assert math.isclose(math.fsum(w.cost_usd for w in windowed), total, rel_tol=1e-9)
    assert math.isclose(prometheus["splitpin_model_cost_usd_total"], total, rel_tol=1e-6)
    assert prometheus["splitpin_model_calls_total"] == len(costs)
    print(
        f"events {len(valid)} valid + {len(letters)} malformed; replies {len(replies)} "
        f"({sum(r.kind == 'preliminary' for r in replies)} preliminary); calls {len(costs)}; "
        f"cost ${total:.4f}; failures {Counter(f.error for f in failures)}; tiers {tiers}"
    )
