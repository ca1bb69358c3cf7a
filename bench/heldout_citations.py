"""Does the final reply cite the right article, on questions the router never trained on?

The banking77 rows that `splitpin router train` holds out become one-question
conversations of tenant acme-bank (knowledge base banking77) through `bench/heldout.py`'s
builder, the same traffic as `bench/incident.py` (chat and email, compliance-bound intents
untagged; `--email-share 0` for chat only). They go through the whole flow (bytewax.testing,
no Kafka) answered by the local fleet without emulated latency, and the figure is the share
of final replies whose first citation is the article of the row's gold intent (a `clarify`
or `withheld` final cites nothing and counts as wrong: every row is an in-scope question).

`--part evaluation` keeps only the half of the rows that `splitpin router calibrate` (and
anything fitted here) never saw (docs/calibration.md): report on it when constants were fitted
on the other half.

`--explain` also classifies every miss, offline, with the flow's own pieces (classifier,
clarify rule, gateway retrieval, fast responder, verifier; no Bytewax): a false clarify,
small talk, the gold article not attached, or the verifier choosing another attached
article, split by the score term that moved it. Rows where the offline replay and the flow
disagree (validation rewrites, timeouts) are counted apart.

    PYTHONPATH=. .venv/bin/python bench/heldout_citations.py [--limit N] [--part evaluation]
        [--email-share 0.28] [--explain] [--offline] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from bytewax.testing import TestingSink, TestingSource, run_main

from bench.heldout import EMAIL_SHARE, Traffic, build_traffic, heldout_rows
from splitpin.core.router.classifier import Classifier
from splitpin.core.router.train import DEFAULT_DATA_DIR
from splitpin.core.settings import REPO_ROOT, Settings, load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.answering import CallSpec
from splitpin.operators.ingest import RawRecord
from splitpin.operators.model_gateway import ModelGateway
from splitpin.providers.base import Candidate, Message, ModelRequest, ModelResult
from splitpin.providers.knowledge_base import _package_kb, parse_articles
from splitpin.providers.local_fleet import (
    RECENT_USER_TURNS,
    W_COS,
    W_HEAD,
    FastResponder,
    LocalFleet,
    ScoreParts,
    Verifier,
    combine,
    combine_parts,
    pick,
    recency_weights,
    user_turns,
)
from splitpin.providers.prompting import quoted_request
from splitpin.schemas import decode
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.replies import Reply
from splitpin.schemas.wire import encode


class Finals(list[OutRecord]):
    """TestingSink's list, counting final replies so the input can end when all are in."""

    def __init__(self) -> None:
        super().__init__()
        self.finals: dict[str, Reply] = {}

    def __iadd__(self, items: Any) -> Finals:  # type: ignore[override,misc]  # TestingSink: +=
        for item in items:
            if item.topic.endswith("conversations.replies") and b'"kind":"final"' in item.value:
                reply = decode(Reply, item.value)
                self.finals[reply.reply_id] = reply
            self.append(item)
        return self


def governance_file(directory: Path, overrides: dict[str, Any]) -> Path:
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    config.setdefault("providers", {}).update(emulate=False, max_in_flight=256)
    config["budgets"] = {"default": {"limit_usd": 1000.0}}  # spend is not under test
    path = directory / "governance.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_flow(settings: Settings, classifier: Classifier, traffic: Traffic) -> dict[str, Reply]:
    """Every event through the whole flow; the final reply per event id."""
    now = datetime.now(UTC)  # the flow refuses events far from now
    records = [
        RawRecord(
            key=None,
            value=encode(e.model_copy(update={"sent_at": now + timedelta(milliseconds=n)})),
            topic="events",
            partition=0,
            offset=n,
        )
        for n, e in enumerate(traffic.events)
    ]
    out = Finals()

    def feed() -> Iterator[RawRecord | TestingSource.PAUSE]:
        yield from records
        while len(out.finals) < len(records):
            yield TestingSource.PAUSE(timedelta(milliseconds=20))

    flow = build_flow(
        settings,
        inputs=FlowInputs(TestingSource(feed())),
        sink=TestingSink(out),
        classifier=classifier,
    )
    run_main(flow)
    return out.finals


# --- Explain: where the misses come from (offline, the flow's own pieces) -------------


@dataclass(frozen=True)
class Replay:
    """One event replayed offline: what the router said, what was attached, what was chosen."""

    event_id: str
    gold: str
    router_intent: str
    router_confidence: float
    out_of_scope: bool
    oos_score: float
    trivial: bool
    pinned: bool
    attached: tuple[str, ...]  # intents of the attached articles, in order
    fast: str | None  # intent of the fast answer's article (None: pinned, no fast pass)
    fast_confidence: float
    parts: tuple[ScoreParts, ...]  # the verifier's evidence per attached article
    cited: str | None  # intent the offline replay's final cites (None: clarify / uncited)

    def choice(self, w_cos: float, w_head: float, w_cand: float) -> str | None:
        """The verifier's pick under other weights (same evidence)."""
        if not self.parts:
            return self.cited
        scores = [
            w_cos * p.cosine + w_head * (p.head or 0.0) + w_cand * p.support for p in self.parts
        ]
        best = max(range(len(scores)), key=lambda i: (round(scores[i], 6), -i))
        return self.attached[best]


class _NoCalls:
    """The replay uses the gateway's retrieval only; responders are called directly."""

    async def complete(self, request: ModelRequest) -> ModelResult:
        raise AssertionError("the replay makes no provider call")


def replay(governance: GovernanceConfig, fleet: LocalFleet, traffic: Traffic) -> list[Replay]:
    """The flow's decisions for one-question conversations, without Bytewax: classify, the
    clarify rule, the gateway's retrieval (intent article first), fast, then the verifier
    with the fast answer as candidate (pinned: the compliance role alone)."""
    classifier = fleet.classifier
    gateway = ModelGateway(
        governance, _NoCalls(), fleet.retriever, frozenset(classifier.intent_labels)
    )
    kb = fleet.bases[governance.knowledge.kb_for("acme-bank")]
    intent_of = {a.doc_id: a.intent for a in kb.articles}
    fast = fleet.provider("fast", governance.roles["fast"])
    verifier = fleet.provider("verifier", governance.roles["verifier"])
    assert isinstance(fast, FastResponder) and isinstance(verifier, Verifier)
    bound = governance.knowledge.intent_attach_min_confidence
    out: list[Replay] = []
    texts = [e.text for e in traffic.events]
    for event, c in zip(traffic.events, classifier.classify_batch(texts), strict=True):
        gold = traffic.gold[event.event_id]
        pinned, trivial = c.compliance, c.trivial
        judged = gateway.judges(event.tenant_id)
        common = (event.event_id, gold, c.intent, c.intent_confidence, c.out_of_scope)
        head = (c.out_of_scope_score, trivial, pinned)
        if not pinned and (trivial or (c.out_of_scope and judged)):
            out.append(Replay(*common, *head, (), None, 0.0, (), None))
            continue
        intent = c.intent if c.intent != "none" and c.intent_confidence >= bound else None
        messages = (Message(role="user", content=event.text),)
        spec = CallSpec(
            "primary",
            f"{event.event_id}:primary",
            "fast",
            event.tenant_id,
            messages,
            "",
            400,
            None,
            intent=intent,
        )
        sources = gateway.sources_for(spec)
        attached = tuple(str(intent_of.get(s.doc_id)) for s in sources)
        request = spec.request(sources)
        fast_intent, fast_conf = None, 0.0
        candidates: tuple[Candidate, ...] = ()
        if not pinned:
            answer, _ = fast.respond(request)
            fast_intent = intent_of.get(answer.citations[0].doc_id) if answer.citations else None
            fast_conf = answer.confidence
            candidates = (
                Candidate(
                    text=answer.text,
                    doc_ids=tuple(x.doc_id for x in answer.citations),
                    confidence=answer.confidence,
                    model_version="local-fast",
                ),
            )
        vreq = quoted_request(request.model_copy(update={"candidates": candidates}))
        turns = user_turns(vreq)[-RECENT_USER_TURNS:]
        weights = recency_weights(len(turns))
        query = combine(fleet.embedder.embed(turns), weights)
        options = fleet.options(vreq, query)
        parts, _ = verifier.score_parts(vreq, options, turns, weights, query)
        best, _ = pick(options, [combine_parts(p) for p in parts])
        cited = intent_of.get(options.items[best].doc_id)
        out.append(Replay(*common, *head, attached, fast_intent, fast_conf, tuple(parts), cited))
    return out


def category(r: Replay) -> str:
    if r.cited == r.gold:
        return "right"
    if r.out_of_scope and not r.trivial and not r.pinned and not r.attached:
        ok = "router intent right" if r.router_intent == r.gold else "router intent wrong"
        return f"false clarify (out of scope; {ok})"
    if r.trivial:
        return "routed as small talk (nothing attached)"
    if r.gold not in r.attached:
        return "gold article not attached"
    # Attached but not chosen: which term moved the verifier away from it?
    head_only = r.choice(0.0, 1.0, 0.0)
    no_vote = r.choice(W_COS, W_HEAD, 0.0)
    if no_vote == r.gold:
        return "verifier: fast candidate's vote (W_CAND) moved it off gold"
    if head_only == r.gold:
        return "verifier: cosine term (W_COS) moved it off gold"
    return "verifier: intent head prefers another attached article"


def explain_table(
    replays: Sequence[Replay], finals: dict[str, Reply] | None, intent_of: dict[str, str | None]
) -> list[str]:
    lines = []
    counts: Counter[str] = Counter(category(r) for r in replays)
    n = len(replays)
    lines.append(f"| cause (offline replay, n={n}) | rows | share |")
    lines.append("| --- | --- | --- |")
    for name, k in counts.most_common():
        lines.append(f"| {name} | {k} | {100 * k / n:.2f} % |")
    if finals is not None:
        differ = 0
        kinds: Counter[str] = Counter()
        for r in replays:
            reply = finals[r.event_id]
            doc = reply.citations[0].doc_id if reply.citations else None
            flow_cited = intent_of.get(doc or "")
            if flow_cited != r.cited:
                differ += 1
                kinds[reply.status] += 1
        detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        lines.append(f"flow final differs from the offline replay: {differ} ({detail or '-'})")
    router = sum(r.router_intent == r.gold for r in replays)
    attached = sum(r.gold in r.attached for r in replays if r.attached)
    with_sources = sum(1 for r in replays if r.attached)
    lines.append(f"router intent alone right: {router} = {100 * router / n:.2f} %")
    lines.append(f"gold attached when something was: {attached}/{with_sources}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N held-out rows only")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="banking77/...")
    parser.add_argument("--part", choices=("all", "calibration", "evaluation"), default="all")
    parser.add_argument("--email-share", type=float, default=EMAIL_SHARE)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="governance override"
    )
    parser.add_argument("--explain", action="store_true", help="classify the misses")
    parser.add_argument("--offline", action="store_true", help="explain only: no flow run")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    rows, duplicates = heldout_rows(args.data_dir, args.part)
    rows = rows[: args.limit]
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    intent_of = {
        a.doc_id: a.intent
        for a in parse_articles(
            _package_kb("banking77")[0].decode().splitlines(), "kb", "banking77"
        )
    }
    with tempfile.TemporaryDirectory(prefix="splitpin-heldout-") as tmp:
        settings = load_settings(
            topic_prefix="bench.", governance_path=governance_file(Path(tmp), overrides)
        )
        governance = settings.governance
        traffic = build_traffic(
            rows, governance.routing.compliance_intents, email_share=args.email_share
        )
        fleet = LocalFleet.load(governance)
        print(
            f"banking77 held-out rows ({args.part}): {len(rows)} ({duplicates} dropped: text also "
            f"in training); email share {args.email_share}"
        )
        finals = None
        summary: dict[str, Any] = {}
        if not args.offline:
            started = time.perf_counter()
            finals = run_flow(settings, fleet.classifier, traffic)
            wall = time.perf_counter() - started
            right = 0
            statuses: Counter[str] = Counter()
            for event in traffic.events:
                reply = finals[event.event_id]
                statuses[reply.status] += 1
                doc = reply.citations[0].doc_id if reply.citations else None
                right += intent_of.get(doc or "") == traffic.gold[event.event_id]
            share = right / len(rows)
            print(
                f"final replies citing the gold intent's article: {right} = {100 * share:.2f} %"
                f"  (wall {wall:.0f} s)"
            )
            print("final statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
            summary = {"rows": len(rows), "right": right, "share": share}
            summary["statuses"] = dict(statuses)
        if args.explain or args.offline:
            replays = replay(governance, fleet, traffic)
            print("\n".join(explain_table(replays, finals, intent_of)))
            causes = Counter(category(r) for r in replays)
            summary = {**(summary if finals is not None else {}), "causes": dict(causes)}
            if finals is None:
                summary.update(rows=len(rows), right=causes["right"])
    if args.json:
        print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
