"""The incident's experiment: one heavy model for everything vs. split, measure, pin.

The same traffic (the sample: banking77, CLINC150 and ABCD conversations, chat and email,
compliance-tagged ones included) goes through two topologies in one process:

- single: `routing.force_role = compliance`: every request answered by the heavy role
  (the Claude 3.5 Sonnet class), one call, no preliminary;
- split: the shipped policy: the fast role answers routine requests, chat gets that as a
  preliminary reply, the verifier confirms or corrects it, compliance is pinned.

Both run on the local fleet with per-role latency emulation on (`providers.emulate`), so
the latencies and prices are **emulated** production profiles (config/governance.yaml),
while the answers, the routing and the token counts are real. Reported, from one run:

- time to first reply (decision emitted -> first reply emitted, in the flow's sink) on
  routine paths (not pinned), median and p95, and the split/single ratio;
- cost per conversation (sum of CostRecords), and the ratio;
- answer accuracy against the gold intent of banking77-derived events: the final reply's
  first citation names the article of that intent (and the first reply's, for split),
  overall and on compliance-pinned events.

    .venv/bin/python bench/incident.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from bytewax.testing import TestingSink, TestingSource, run_main

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import REPO_ROOT, Settings, load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.ingest import RawRecord
from splitpin.providers.knowledge_base import _package_kb, parse_articles
from splitpin.schemas import RoutingDecision, decode
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply

SAMPLE = REPO_ROOT / "data" / "sample" / "events.jsonl"


class StampedList(list[OutRecord]):
    """TestingSink's list, recording the wall time each record reached the sink."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.finals: set[str] = set()

    def append(self, item: OutRecord) -> None:
        self.times.append(time.time())
        if item.topic.endswith("conversations.replies") and b'"kind":"final"' in item.value:
            self.finals.add(decode(Reply, item.value).reply_id)
        super().append(item)

    def __iadd__(self, items: Any) -> StampedList:  # TestingSink writes batches with +=
        for item in items:
            self.append(item)
        return self


@dataclass
class Outcome:
    topology: str
    first_reply_s: dict[str, float]
    routine: set[str]
    pinned: set[str]
    chat: set[str]
    cost_by_conversation: dict[str, float]
    first_doc: dict[str, str | None]
    final_doc: dict[str, str | None]
    wall_s: float


def governance_file(directory: Path, single: bool) -> Path:
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    providers = config.setdefault("providers", {})
    providers.update(emulate=True, max_in_flight=512)
    # Budgets are not under test here: neither topology may be refused for spend.
    config["budgets"] = {"default": {"limit_usd": 1000.0}}
    if single:
        config["routing"]["force_role"] = "compliance"
    path = directory / ("single.yaml" if single else "split.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def run_topology(name: str, governance: Path, classifier: Classifier) -> Outcome:
    settings: Settings = load_settings(topic_prefix="bench.", governance_path=governance)
    lines = [line for line in SAMPLE.read_text().splitlines() if line.strip()]
    records = [
        RawRecord(key=None, value=line.encode(), topic="events", partition=0, offset=n)
        for n, line in enumerate(lines)
    ]
    customers = sum(1 for line in lines if orjson.loads(line)["role"] == "customer")
    out = StampedList()

    def feed() -> Iterator[RawRecord | TestingSource.PAUSE]:
        """The sample, then no end of input until every customer event has its final
        reply: at end of input the answering step drains its calls in one activation,
        which would stamp every outstanding reply with the drain's end."""
        yield from records
        while len(out.finals) < customers:
            yield TestingSource.PAUSE(timedelta(milliseconds=20))

    flow = build_flow(
        settings,
        inputs=FlowInputs(TestingSource(feed())),
        sink=TestingSink(out),
        classifier=classifier,
    )
    started = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - started

    decided: dict[str, float] = {}
    first: dict[str, float] = {}
    routine: set[str] = set()
    pinned: set[str] = set()
    chat: set[str] = set()
    conversation_of: dict[str, str] = {}
    cost: dict[str, float] = defaultdict(float)
    first_doc: dict[str, str | None] = {}
    final_doc: dict[str, str | None] = {}
    for at, record in zip(out.times, out, strict=True):
        topic = record.topic.removeprefix("bench.")
        if topic == "routing.decisions":
            decision = decode(RoutingDecision, record.value)
            decided[decision.event_id] = at
            conversation_of[decision.event_id] = decision.conversation_id
            (pinned if decision.pinned else routine).add(decision.event_id)
            if decision.channel == "chat":
                chat.add(decision.event_id)
        elif topic == "conversations.replies":
            reply = decode(Reply, record.value)
            doc = reply.citations[0].doc_id if reply.citations else None
            if reply.reply_id not in first:
                first[reply.reply_id] = at
                first_doc[reply.reply_id] = doc
            if reply.kind == "final":
                final_doc[reply.reply_id] = doc
        elif topic == "routing.metrics":
            cost_record = decode(CostRecord, record.value)
            cost[cost_record.event_id] += cost_record.cost_usd
    by_conversation: dict[str, float] = defaultdict(float)
    for event_id, usd in cost.items():
        by_conversation[conversation_of[event_id]] += usd
    return Outcome(
        topology=name,
        first_reply_s={e: first[e] - decided[e] for e in first if e in decided},
        routine=routine,
        pinned=pinned,
        chat=chat,
        cost_by_conversation=dict(by_conversation),
        first_doc=first_doc,
        final_doc=final_doc,
        wall_s=wall,
    )


def gold_intents() -> dict[str, str]:
    gold = {}
    for line in SAMPLE.read_text().splitlines():
        if not line.strip():
            continue
        event = orjson.loads(line)
        meta = event.get("metadata", {})
        if event["role"] == "customer" and meta.get("source") == "banking77" and meta.get("intent"):
            gold[event["event_id"]] = meta["intent"]
    return gold


def accuracy(docs: dict[str, str | None], gold: dict[str, str], among: set[str]) -> float:
    intent_of = {
        a.doc_id: a.intent
        for a in parse_articles(
            _package_kb("banking77")[0].decode().splitlines(), "kb", "banking77"
        )
    }
    scored = [e for e in gold if e in among and e in docs]
    if not scored:
        return float("nan")
    right = sum(1 for e in scored if intent_of.get(docs[e] or "") == gold[e])
    return right / len(scored)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def summarize(
    outcome: Outcome,
    gold: dict[str, str],
    routine_ids: set[str],
    compliance_ids: set[str],
    chat_ids: set[str],
) -> dict[str, float]:
    """Routine and compliance are the split policy's classes, applied to both topologies."""
    routine = [s for e, s in outcome.first_reply_s.items() if e in routine_ids]
    chat = [s for e, s in outcome.first_reply_s.items() if e in routine_ids & chat_ids]
    email = [s for e, s in outcome.first_reply_s.items() if e in routine_ids - chat_ids]
    answered = routine_ids | compliance_ids
    return {
        "routine_events": len(routine),
        "first_reply_p50_s": statistics.median(routine),
        "first_reply_p95_s": pct(routine, 0.95),
        "chat_first_reply_p50_s": statistics.median(chat),
        "chat_first_reply_p95_s": pct(chat, 0.95),
        "email_first_reply_p50_s": statistics.median(email),
        "email_first_reply_p95_s": pct(email, 0.95),
        "cost_per_conversation_usd": statistics.fmean(outcome.cost_by_conversation.values()),
        "accuracy_first_reply": accuracy(outcome.first_doc, gold, answered),
        "accuracy_final": accuracy(outcome.final_doc, gold, answered),
        "accuracy_final_compliance": accuracy(outcome.final_doc, gold, compliance_ids),
        "compliance_events_scored": len([e for e in gold if e in compliance_ids]),
        "wall_s": outcome.wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    settings = load_settings()
    governance = settings.governance
    classifier = Classifier.load(governance.classifier, governance.routing)
    gold = gold_intents()
    with tempfile.TemporaryDirectory(prefix="splitpin-incident-") as tmp:
        outcomes = {}
        for name, single in (("single", True), ("split", False)):
            print(f"running the {name} topology (emulated latency and prices) ...", file=sys.stderr)
            outcomes[name] = run_topology(name, governance_file(Path(tmp), single), classifier)
    routine_ids, compliance_ids = outcomes["split"].routine, outcomes["split"].pinned
    chat_ids = outcomes["split"].chat
    results = {
        name: summarize(outcome, gold, routine_ids, compliance_ids, chat_ids)
        for name, outcome in outcomes.items()
    }
    split, single = results["split"], results["single"]
    ratios = {
        "first_reply_p50": split["first_reply_p50_s"] / single["first_reply_p50_s"],
        "first_reply_p95": split["first_reply_p95_s"] / single["first_reply_p95_s"],
        "chat_first_reply_p50": split["chat_first_reply_p50_s"] / single["chat_first_reply_p50_s"],
        "chat_first_reply_p95": split["chat_first_reply_p95_s"] / single["chat_first_reply_p95_s"],
        "email_first_reply_p50": split["email_first_reply_p50_s"]
        / single["email_first_reply_p50_s"],
        "cost_per_conversation": split["cost_per_conversation_usd"]
        / single["cost_per_conversation_usd"],
        "accuracy_final": split["accuracy_final"] / single["accuracy_final"],
        "accuracy_final_compliance": split["accuracy_final_compliance"]
        / single["accuracy_final_compliance"],
    }
    print("EMULATED latency and prices (local fleet imitating the production profiles)")
    print(f"{'figure':32} {'single':>10} {'split':>10} {'split/single':>13}")
    rows = [
        ("routine first reply p50 (s)", "first_reply_p50_s", "first_reply_p50"),
        ("routine first reply p95 (s)", "first_reply_p95_s", "first_reply_p95"),
        ("  chat: first reply p50 (s)", "chat_first_reply_p50_s", "chat_first_reply_p50"),
        ("  chat: first reply p95 (s)", "chat_first_reply_p95_s", "chat_first_reply_p95"),
        ("  email: first reply p50 (s)", "email_first_reply_p50_s", "email_first_reply_p50"),
        ("cost per conversation (USD)", "cost_per_conversation_usd", "cost_per_conversation"),
        ("accuracy, final reply", "accuracy_final", "accuracy_final"),
        ("accuracy, compliance final", "accuracy_final_compliance", "accuracy_final_compliance"),
    ]
    for label, key, ratio in rows:
        print(f"{label:32} {single[key]:>10.4f} {split[key]:>10.4f} {ratios[ratio]:>13.3f}")
    print(
        f"{'accuracy, first reply':32} {single['accuracy_first_reply']:>10.4f} "
        f"{split['accuracy_first_reply']:>10.4f}"
    )
    print(
        f"routine events {split['routine_events']}; compliance events scored "
        f"{split['compliance_events_scored']}; wall s single {single['wall_s']:.1f} "
        f"split {split['wall_s']:.1f}"
    )
    if args.json:
        print(json.dumps({"emulated": True, "single": single, "split": split, "ratios": ratios}))


if __name__ == "__main__":
    main()
