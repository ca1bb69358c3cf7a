"""Does the final reply cite the right article, on questions the router never trained on?

Every banking77 row that `splitpin router train` holds out (splitpin/core/router/train.py:
10 % of `train.csv` per intent, seed 0; 1,003 rows) becomes a one-turn chat conversation
of tenant acme-bank (knowledge base banking77). The rows go through the whole flow
(bytewax.testing, no Kafka) answered by the local fleet without emulated latency, and the
figure is the share of final replies whose first citation is the article of the row's
gold intent (a `clarify` or `withheld` final cites nothing and counts as wrong).

    PYTHONPATH=. .venv/bin/python bench/heldout_citations.py [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from bytewax.testing import TestingSink, TestingSource, run_main

from splitpin.core.router.classifier import Classifier
from splitpin.core.router.train import load_training_data
from splitpin.core.settings import REPO_ROOT, load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.ingest import RawRecord
from splitpin.providers.knowledge_base import _package_kb, parse_articles
from splitpin.schemas import decode
from splitpin.schemas.replies import Reply

DATA_DIR = REPO_ROOT.parent / "shared" / "data"


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


def governance_file(directory: Path, intent_min_confidence: float | None) -> Path:
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    if intent_min_confidence is not None:
        config["knowledge"]["intent_min_confidence"] = intent_min_confidence
    config.setdefault("providers", {}).update(emulate=False, max_in_flight=256)
    config["budgets"] = {"default": {"limit_usd": 1000.0}}  # spend is not under test
    path = directory / "governance.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def events(rows: list[tuple[str, str]]) -> list[bytes]:
    out = []
    start = datetime.now(UTC) - timedelta(hours=1)  # ingest refuses events far from now
    for n, (text, _) in enumerate(rows):
        event = {
            "schema_version": 1,
            "event_id": f"heldout-{n:04d}",
            "conversation_id": f"heldout-{n:04d}",
            "tenant_id": "acme-bank",
            "channel": "chat",
            "role": "customer",
            "text": text,
            "sent_at": (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"),
            "tags": [],
        }
        out.append(orjson.dumps(event))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N held-out rows only")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="banking77/, clinc150/")
    parser.add_argument(
        "--intent-min-confidence", type=float, default=None, help="override the config's"
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    rows = load_training_data(args.data_dir).banking_val[: args.limit]
    intent_of = {
        a.doc_id: a.intent
        for a in parse_articles(
            _package_kb("banking77")[0].decode().splitlines(), "kb", "banking77"
        )
    }
    with tempfile.TemporaryDirectory(prefix="splitpin-heldout-") as tmp:
        settings = load_settings(
            topic_prefix="bench.",
            governance_path=governance_file(Path(tmp), args.intent_min_confidence),
        )
        governance = settings.governance
        classifier = Classifier.load(governance.classifier, governance.routing)
        records = [
            RawRecord(key=None, value=value, topic="events", partition=0, offset=n)
            for n, value in enumerate(events(rows))
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
        started = time.perf_counter()
        run_main(flow)
        wall = time.perf_counter() - started
    right = 0
    statuses: Counter[str] = Counter()
    for n, (_, gold) in enumerate(rows):
        reply = out.finals[f"heldout-{n:04d}"]
        statuses[reply.status] += 1
        doc = reply.citations[0].doc_id if reply.citations else None
        right += intent_of.get(doc or "") == gold
    share = right / len(rows)
    print(
        f"banking77 held-out rows: {len(rows)}; final replies citing the gold intent's article: "
        f"{right} = {100 * share:.2f} %  (wall {wall:.0f} s)"
    )
    print("final statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    if args.json:
        print(
            json.dumps(
                {"rows": len(rows), "right": right, "share": share, "statuses": dict(statuses)}
            )
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
