"""What classifying first-seen text costs, turn by turn, in the order the benchmarks publish it.

`flow_throughput.py`'s phase 2 publishes the sample's customer turns in time order at R/s
to a fresh process, so every turn of the first pass is text the classifier has never seen
(no memo can answer it). This replays that pass in process with the shipped classifier
config: one `classify_batch` per turn, as the flow does at a trickle, and prints the
time per turn and per stretch of the sample next to the time those turns take to arrive.
Where a stretch needs more classification than its arrival time, a flow at that rate
builds a backlog there however fast the rest of it is: that bounds the decision p99.

`--heldout` classifies instead the 1,003 held-out banking77 questions `whole_path.py`
publishes (its first copy, which no memo can answer) in batches of `--batch`, and prints
the transformer rows, the wall time and the CPU time (every thread) they cost: the floor
under that bench's wall time.

    PYTHONPATH=. .venv/bin/python bench/first_seen.py [--rate 100] [--json]
    PYTHONPATH=. .venv/bin/python bench/first_seen.py --heldout [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path

from bench.flow_throughput import SAMPLE_EVENTS, load_templates
from bench.heldout import heldout_rows
from splitpin.core.router.classifier import Classifier, pieces
from splitpin.core.router.embedder import open_session
from splitpin.core.router.heads import normalize
from splitpin.core.router.train import DEFAULT_DATA_DIR
from splitpin.core.settings import load_settings
from splitpin.core.stats import nearest_rank

STRETCH = 25
"""Turns per stretch in the table: a quarter of a second of arrivals at 100/s."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=100.0, help="arrival rate R (100/s)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    parser.add_argument(
        "--heldout", action="store_true", help="the held-out questions of whole_path.py instead"
    )
    parser.add_argument("--batch", type=int, default=100, help="with --heldout: texts per call")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="another ONNX file for the transformer (e.g. bench/int8_embedder.py build's), "
        "with the shipped tokenizer and heads",
    )
    return parser.parse_args(argv)


def cpu_s() -> float:
    """User + system seconds of this process, every thread (the ONNX pool's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def heldout_pass(args: argparse.Namespace, classifier: Classifier, max_seq_tokens: int) -> int:
    rows, _ = heldout_rows(args.data_dir)
    texts = [row.text for row in rows]
    extra = sum(len(pieces(normalize(t), max_seq_tokens)) for t in texts)
    wall, cpu = time.perf_counter(), cpu_s()
    for start in range(0, len(texts), max(args.batch, 1)):
        classifier.classify_batch(texts[start : start + args.batch])
    wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
    print(
        f"{len(texts)} held-out banking77 questions, first seen, batches of {args.batch}: "
        f"{len(texts) + extra} transformer rows at most ({extra} pieces for the pin scan)"
    )
    per_question_ms = cpu / len(texts) * 1e3
    print(f"wall {wall:.2f} s, CPU {cpu:.2f} s (every thread), {per_question_ms:.2f} ms/question")
    if args.json:
        print(json.dumps({"questions": len(texts), "pieces": extra, "wall_s": wall, "cpu_s": cpu}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    config = settings.governance.classifier
    classifier = Classifier.load(config, settings.governance.routing)
    if args.model is not None:
        session = open_session(str(args.model), config.intra_op_threads)
        embedder = classifier.embedder.with_session(session, memo_size=config.embedding_memo_size)
        classifier = classifier.with_embedder(embedder)
    classifier.classify_batch(["warm-up: where is my card?", "hi"])  # as build_flow does
    if args.heldout:
        return heldout_pass(args, classifier, config.max_seq_tokens)
    turns = load_templates(Path(SAMPLE_EVENTS))
    seconds: list[float] = []
    for turn in turns:
        started = time.perf_counter()
        classifier.classify_batch([turn["text"]])
        seconds.append(time.perf_counter() - started)
    n = len(seconds)
    ms = [s * 1e3 for s in seconds]
    print(
        f"{n} customer turns of {SAMPLE_EVENTS}, first seen, classifier intra_op_threads="
        f"{config.intra_op_threads} parallel_calls={config.parallel_calls}; "
        f"arrivals at {args.rate:g}/s"
    )
    print(
        f"per turn: p50 {nearest_rank(ms, 50):.1f} ms, p90 {nearest_rank(ms, 90):.1f}, "
        f"p99 {nearest_rank(ms, 99):.1f}, max {max(ms):.1f}; "
        f"total {sum(seconds):.2f} s for {n / args.rate:.2f} s of arrivals"
    )
    print(f"{'turns':>9} {'pieces':>7} {'classify s':>10} {'arrive s':>9}  backlog")
    stretches = []
    for lo in range(0, n, STRETCH):
        part = seconds[lo : lo + STRETCH]
        work = sum(part)
        arrive = len(part) / args.rate
        count = sum(len(pieces(t["text"], config.max_seq_tokens)) for t in turns[lo : lo + STRETCH])
        stretches.append({"first": lo, "turns": len(part), "pieces": count, "classify_s": work})
        flag = "  <- more work than arrival time" if work > arrive else ""
        print(f"{lo:>4}-{lo + len(part) - 1:<4} {count:>7} {work:>10.2f} {arrive:>9.2f}{flag}")
    if args.json:
        print(json.dumps({"rate": args.rate, "seconds": seconds, "stretches": stretches}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
