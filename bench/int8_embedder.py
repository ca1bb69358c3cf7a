"""Static int8 variants of the router's MiniLM: speed, batch independence, accuracy.

Measured, not shipped (docs/classifier.md, "Static int8"). The shipped model runs every
MatMul in float32 (its int8 weights are folded at load). onnxruntime's *dynamic* int8 is
faster but computes activation scales per call, so a text's row depends on what shares its
call. *Static* quantization fixes the scales from calibration texts, which keeps rows
bit-identical whatever the batch. `build` writes the variants, `measure` compares them
with the shipped model in one process:

    .venv/bin/pip install onnx                      # build only; onnxruntime.quantization needs it
    PYTHONPATH=. .venv/bin/python bench/int8_embedder.py build --out /tmp/int8m
    PYTHONPATH=. .venv/bin/python bench/int8_embedder.py measure --models /tmp/int8m

Variants (QOperator format, per-channel int8 weights, uint8 activations, MinMax scales from
200 banking77 training texts and 100 CLINC150 training texts, none held out):
  w        the 36 MatMuls with weights; the 12 attention MatMuls stay float32
  w_f02    as w, with the second feed-forward MatMul of layers 0 and 2 in float32
  w_noffn2 as w, with the second feed-forward MatMul of every layer in float32

`measure` prints the time per call against the shipped model (medians of interleaved
repeats, so both see the same load), whether each row is bit-identical alone and in
batches of 2, 3, 5 and 13, the cosine of pooled embeddings to the shipped model's on the
1,003 held-out banking77 rows, and the router's intent accuracy on those rows with the
shipped heads (the heads were trained on float32 embeddings). Nothing here asserts on
timings (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bench.heldout import heldout_rows
from splitpin.core.router.classifier import Classifier
from splitpin.core.router.embedder import (
    MODEL_PACKAGE,
    MODEL_RESOURCE,
    MODEL_SHA256,
    Embedder,
    open_session,
    read_verified,
)
from splitpin.core.router.train import DEFAULT_DATA_DIR, load_training_data
from splitpin.core.settings import load_settings
from splitpin.core.stats import percentile

VARIANTS = ("w", "w_f02", "w_noffn2")
CALIBRATION = (200, 100)  # banking77 training texts, CLINC150 training texts
SHAPES = ((1, 8), (1, 16), (1, 32), (8, 16), (1, 64))
LENGTHS = (6, 9, 12, 16, 23)
BATCHES = (2, 3, 5, 13)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write fp32.onnx and the int8 variants")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    measure = sub.add_parser("measure", help="compare the variants with the shipped model")
    measure.add_argument("--models", type=Path, required=True, help="build's --out")
    measure.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    measure.add_argument("--repeats", type=int, default=60, help="timed calls per shape")
    measure.add_argument("--json", action="store_true", help="end with one JSON object line")
    return parser.parse_args(argv)


def calibration_ids(data_dir: Path, embedder: Embedder) -> list[list[int]]:
    """Token ids of the calibration texts (seeded; the held-out rows are not among them)."""
    data = load_training_data(data_dir)
    clinc = json.loads((data_dir / "clinc150" / "data.json").read_text())["train"]
    rng = random.Random(0)
    texts = rng.sample([t for t, _ in data.banking_train], CALIBRATION[0])
    texts += rng.sample([t for t, _ in clinc], CALIBRATION[1])
    return embedder.token_ids(texts)


def build(args: argparse.Namespace) -> int:
    import onnx  # type: ignore[import-not-found]  # build only (see the module doc)
    from onnxruntime.quantization import (  # type: ignore[import-not-found]
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / "fp32.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(fp32)  # the int8 weights folded to float32
    model = read_verified(MODEL_PACKAGE, MODEL_RESOURCE, MODEL_SHA256)
    ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    ids = calibration_ids(args.data_dir, Embedder.load())

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._rows = iter(ids)

        def get_next(self) -> dict[str, npt.NDArray[np.int64]] | None:
            row = next(self._rows, None)
            return None if row is None else feeds(np.array([row], dtype=np.int64))

    graph = onnx.load(str(fp32)).graph
    weights = {init.name for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    attention = [n.name for n in matmuls if not any(i in weights for i in n.input)]
    # The second feed-forward MatMul reads the GELU's output (its last op is a Mul).
    ffn2 = [
        n.name
        for n in matmuls
        if any(i in weights for i in n.input) and producer[n.input[0]].op_type == "Mul"
    ]
    keep_fp32 = {
        "w": attention,
        "w_f02": [*attention, ffn2[0], ffn2[2]],
        "w_noffn2": [*attention, *ffn2],
    }
    for name in VARIANTS:
        started = time.perf_counter()
        quantize_static(
            str(fp32),
            str(args.out / f"{name}.onnx"),
            Reader(),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep_fp32[name],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


def feeds(ids: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.int64]]:
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


def run(session: ort.InferenceSession, rows: Sequence[Sequence[int]]) -> Any:
    return session.run(None, feeds(np.array(rows, dtype=np.int64)))[0]


def batch_independent(session: ort.InferenceSession, by_length: dict[int, list[list[int]]]) -> bool:
    """Every row bit-identical alone and inside batches of 2, 3, 5 and 13 of its length."""
    for length in LENGTHS:
        rows = by_length[length][: max(BATCHES)]
        alone = [run(session, [row])[0] for row in rows]
        for size in BATCHES:
            for start in range(0, len(rows) - size + 1, size):
                out = run(session, rows[start : start + size])
                if not all(np.array_equal(out[k], alone[start + k]) for k in range(size)):
                    return False
    return True


def timings(sessions: dict[str, ort.InferenceSession], repeats: int) -> dict[str, list[float]]:
    """Median ms per call for each shape, the sessions interleaved call by call."""
    rng = np.random.default_rng(0)
    out: dict[str, list[float]] = {name: [] for name in sessions}
    for batch, length in SHAPES:
        ids = rng.integers(1000, 29000, size=(batch, length))
        ids[:, 0], ids[:, -1] = 101, 102
        for session in sessions.values():
            run(session, ids.tolist())
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                started = time.perf_counter()
                run(session, ids.tolist())
                samples[name].append((time.perf_counter() - started) * 1e3)
        for name in sessions:
            out[name].append(percentile(samples[name], 50))
    return out


def measure(args: argparse.Namespace) -> int:
    settings = load_settings()
    config = settings.governance.classifier.model_copy(update={"parallel_calls": 1})
    routing = settings.governance.routing
    shipped = Classifier.load(config, routing)
    model = read_verified(MODEL_PACKAGE, MODEL_RESOURCE, MODEL_SHA256)
    sessions = {"shipped": open_session(model, 1)}
    for name in VARIANTS:
        sessions[name] = open_session(str(args.models / f"{name}.onnx"), 1)
    data = load_training_data(args.data_dir)
    by_length: dict[int, list[list[int]]] = {}
    for row in shipped.embedder.token_ids([t for t, _ in data.banking_train[:4000]]):
        by_length.setdefault(len(row), []).append(row)
    rows, _ = heldout_rows(args.data_dir)
    texts = [row.text for row in rows]
    reference = shipped.embedder.embed(texts)
    times = timings(sessions, args.repeats)
    report: dict[str, dict[str, Any]] = {}
    for name, session in sessions.items():
        embedder = shipped.embedder.with_session(session, memo_size=0)
        classifier = shipped.with_embedder(embedder)
        right = sum(
            c.intent == row.intent
            for c, row in zip(classifier.classify_batch(texts), rows, strict=True)
        )
        cosine = (embedder.embed(texts) * reference).sum(axis=1)
        report[name] = {
            "ms_per_call": times[name],
            "ratio": [t / s for t, s in zip(times[name], times["shipped"], strict=True)],
            "batch_independent": batch_independent(session, by_length),
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "intent_accuracy": right / len(rows),
        }
    shapes = "  ".join(f"b{b}L{length:<3}" for b, length in SHAPES)
    print(f"time per call vs the shipped model (medians of {args.repeats} interleaved calls)")
    print(f"{'model':10} {shapes}  independent  cosine min/mean  intent acc.")
    for name, r in report.items():
        ratios = "  ".join(f"{x:6.2f}x" for x in r["ratio"])
        print(
            f"{name:10} {ratios}  {'yes' if r['batch_independent'] else 'NO':>11}"
            f"  {r['cosine_min']:.3f} / {r['cosine_mean']:.3f}"
            f"  {r['intent_accuracy']:.2%} of {len(rows)}"
        )
    print(f"shipped ms per call: {', '.join(f'{t:.2f}' for t in times['shipped'])}")
    if args.json:
        print(json.dumps(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return build(args) if args.command == "build" else measure(args)


if __name__ == "__main__":
    raise SystemExit(main())
