"""Evaluate the classifier on a labelled file: accuracy, macro-F1, decision latency.

Two formats, as the public data sets ship them:

* banking77: CSV with the header `text,category`, one labelled message per row;
* clinc150: a JSON object whose values are lists of `[text, intent]` pairs (e.g. CLINC150's
  `val` and `oos_val` together); every pair counts, intent `oos` means out of scope.

Latency is measured per message, one `classify` call at a time, because that is the
budget the flow has per event (p99 under 15 ms); throughput under micro-batching is
bench/decision_latency.py's job.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from splitpin.core.router.classifier import Classification, Classifier
from splitpin.core.router.heads import OOS_LABEL
from splitpin.core.stats import percentile
from splitpin.errors import SplitpinError

WARMUP_MESSAGES = 20


class Format(StrEnum):
    banking77 = "banking77"
    clinc150 = "clinc150"


class LabelledFileError(SplitpinError):
    """A labelled file is malformed; the message names the line or field."""


Pair = tuple[str, str]


def read_banking77_csv(path: Path) -> list[Pair]:
    """(text, category) rows of a `text,category` CSV; LabelledFileError names the line."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        msg = f"cannot read {path}: {exc}"
        raise LabelledFileError(msg) from exc
    pairs: list[Pair] = []
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                msg = f"{path}: empty file, expected the header `text,category`"
                raise LabelledFileError(msg)
            if [h.strip() for h in header] != ["text", "category"]:
                msg = f"{path}:1: header is {header!r}, expected `text,category`"
                raise LabelledFileError(msg)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != 2:
                    msg = f"{path}:{line}: expected 2 fields (text,category), got {len(row)}"
                    raise LabelledFileError(msg)
                text, category = row
                if not category.strip():
                    msg = f"{path}:{line}: field `category` is empty"
                    raise LabelledFileError(msg)
                pairs.append((text, category.strip()))
        except csv.Error as exc:
            msg = f"{path}:{reader.line_num}: malformed CSV: {exc}"
            raise LabelledFileError(msg) from exc
        except UnicodeDecodeError as exc:
            msg = f"{path}: not UTF-8 text: {exc}"
            raise LabelledFileError(msg) from exc
    if not pairs:
        msg = f"{path}: no labelled rows after the header"
        raise LabelledFileError(msg)
    return pairs


def read_clinc150_json(path: Path) -> list[Pair]:
    """Every [text, intent] pair of every list in the object; errors name `key[index]`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"cannot read {path}: {exc}"
        raise LabelledFileError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{path}: not UTF-8 text: {exc}"
        raise LabelledFileError(msg) from exc
    except json.JSONDecodeError as exc:
        msg = f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        raise LabelledFileError(msg) from exc
    if not isinstance(raw, dict):
        msg = f"{path}: expected a JSON object of lists of [text, intent], got {type(raw).__name__}"
        raise LabelledFileError(msg)
    pairs: list[Pair] = []
    for key, items in raw.items():
        if not isinstance(items, list):
            msg = f"{path}: field {key!r} must be a list of [text, intent] pairs"
            raise LabelledFileError(msg)
        for i, item in enumerate(items):
            ok = (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(x, str) for x in item)
                and bool(item[1].strip())
            )
            if not ok:
                msg = f"{path}: {key}[{i}] must be [text, intent] (two strings), got {item!r}"
                raise LabelledFileError(msg)
            pairs.append((item[0], item[1].strip()))
    if not pairs:
        msg = f"{path}: no [text, intent] pairs"
        raise LabelledFileError(msg)
    return pairs


def read_labelled(path: Path, fmt: Format) -> list[Pair]:
    return read_banking77_csv(path) if fmt is Format.banking77 else read_clinc150_json(path)


# --- metrics ---------------------------------------------------------------------------


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    _same_length(gold, pred)
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Unweighted mean F1 over every label seen in gold or predictions (as scikit-learn)."""
    _same_length(gold, pred)
    labels = sorted(set(gold) | set(pred))
    if not labels:
        return 0.0
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, pred, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def out_of_scope_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """CLINC150's figures: in-scope accuracy (an in-scope text called `oos` is wrong),
    out-of-scope recall and precision, and accuracy over everything."""
    _same_length(gold, pred)
    in_scope = [(g, p) for g, p in zip(gold, pred, strict=True) if g != OOS_LABEL]
    oos_gold = sum(g == OOS_LABEL for g in gold)
    oos_pred = sum(p == OOS_LABEL for p in pred)
    oos_hit = sum(g == OOS_LABEL and p == OOS_LABEL for g, p in zip(gold, pred, strict=True))
    return {
        "in_scope_accuracy": sum(g == p for g, p in in_scope) / len(in_scope) if in_scope else 0.0,
        "oos_recall": oos_hit / oos_gold if oos_gold else 0.0,
        "oos_precision": oos_hit / oos_pred if oos_pred else 0.0,
        "accuracy": accuracy(gold, pred),
    }


def _same_length(gold: Sequence[str], pred: Sequence[str]) -> None:
    if len(gold) != len(pred):
        msg = f"{len(gold)} gold labels but {len(pred)} predictions"
        raise ValueError(msg)


# --- evaluation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvalReport:
    format: Format
    messages: int
    metrics: dict[str, float]
    latency_ms: dict[str, float] = field(default_factory=dict)
    unknown_labels: tuple[str, ...] = ()
    rule_hits: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "format": self.format.value,
            "messages": self.messages,
            **{k: round(v, 4) for k, v in self.metrics.items()},
            **({"latency_ms": self.latency_ms} if self.latency_ms else {}),
            "rule_hits": self.rule_hits,
            "unknown_labels": list(self.unknown_labels),
        }

    def lines(self) -> list[str]:
        """Human-readable report, one figure per line."""
        out = [f"format: {self.format.value}  messages: {self.messages}"]
        for name, value in self.metrics.items():
            out.append(f"{name:<20} {100 * value:6.2f} %")
        if self.latency_ms:
            lat = self.latency_ms
            out.append(
                f"{'decision latency':<20} p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms"
                f"  max {lat['max']:.2f} ms  (per message, one at a time)"
            )
        out.append(f"{'rule hits':<20} {self.rule_hits}")
        if self.unknown_labels:
            shown = ", ".join(self.unknown_labels[:10])
            extra = len(self.unknown_labels) - 10
            more = f" (+{extra} more)" if extra > 0 else ""
            out.append(f"warning: labels the classifier does not know: {shown}{more}")
        return out


def predicted_label(c: Classification, fmt: Format) -> str:
    return c.intent if fmt is Format.banking77 else c.domain_intent


def evaluate(
    classifier: Classifier,
    pairs: Sequence[Pair],
    fmt: Format,
    *,
    measure_latency: bool = True,
) -> EvalReport:
    """Classify every pair; with measure_latency each message is classified and timed alone
    (after a few untimed warm-up calls), otherwise in batches of 64 for speed."""
    texts = [t for t, _ in pairs]
    gold = [g for _, g in pairs]
    latencies: list[float] = []
    if measure_latency:
        for text in texts[:WARMUP_MESSAGES]:
            classifier.classify(text)
        results = []
        for text in texts:
            start = time.perf_counter()
            results.append(classifier.classify(text))
            latencies.append(time.perf_counter() - start)
    else:
        results = []
        for start in range(0, len(texts), 64):
            results.extend(classifier.classify_batch(texts[start : start + 64]))
    pred = [predicted_label(c, fmt) for c in results]
    if fmt is Format.banking77:
        metrics = {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred)}
        known = set(classifier.intent_labels)
    else:
        metrics = {**out_of_scope_metrics(gold, pred), "macro_f1": macro_f1(gold, pred)}
        known = set(classifier.domain_labels)
    latencies_ms = [s * 1000.0 for s in latencies]
    latency = (
        {
            "p50": round(percentile(latencies_ms, 50), 3),
            "p99": round(percentile(latencies_ms, 99), 3),
            "max": round(max(latencies_ms), 3),
        }
        if latencies_ms
        else {}
    )
    return EvalReport(
        format=fmt,
        messages=len(pairs),
        metrics=metrics,
        latency_ms=latency,
        unknown_labels=tuple(sorted(set(gold) - known)),
        rule_hits=sum(c.rule is not None for c in results),
    )
