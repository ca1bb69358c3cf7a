"""`splitpin router calibrate`: fit the confidence maps on rows training never saw.

Data (no test split is read): the 1,003 banking77 rows `splitpin router train` holds out,
split into two deterministic stratified halves (providers/calibration.halves); CLINC150
`val` + `oos_val` split the same way for the domain head. The first half fits, the second
only measures:

* the local fleet's fast, verifier and long_context responders answer each banking77 row
  from its top-k retrieved articles, as in the flow (the verifier with the fast answer as
  candidate; long_context with an earlier question of another intent in the conversation),
  and an isotonic map raw confidence -> P(cited article is the gold intent's) is fitted
  per role; compliance uses the verifier's responder, so it gets the verifier's map;
* the router's intent head (banking77 halves) and domain head (CLINC150 halves) each get
  the temperature minimising the negative log-likelihood;
* the agreement map (format 2): the fast responder answers each routine row (not pinned as
  compliance, not small talk) on the sources the flow's gateway builds (the router's
  confident intent's article first; that article and top_k_when_intent_sure - 1 others
  when the intent is sure, knowledge.intent_sure_min_confidence), and P(right | fast
  probability, router intent probability, cites the router intent's article) is fitted in
  the form cross-validation prefers.

Writes `calibration.json` beside the heads (with the sha256 of every input, the command,
and the evaluation-half figures) and, with `--plot`, a reliability diagram.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from splitpin.core.router.classifier import Classifier, model_input, resolve_artifacts_dir
from splitpin.core.router.heads import (
    ECE_BINS,
    MANIFEST,
    LinearHead,
    TextFeaturizer,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    read_bundle,
    reliability_bins,
    sha256_file,
    softmax,
)
from splitpin.core.router.train import load_training_data
from splitpin.operators.answering import CallSpec
from splitpin.operators.model_gateway import ModelGateway
from splitpin.providers.base import Candidate, Message, ModelRequest, ModelResult, SourceDoc
from splitpin.providers.calibration import (
    CALIBRATION_FILE,
    CALIBRATION_FORMAT,
    PLATT,
    AgreementMap,
    IsotonicMap,
    fit_agreement_cv,
    fit_isotonic_cv,
    halves,
)
from splitpin.providers.local_fleet import (
    FastResponder,
    LocalFleet,
    LongContextResponder,
    Verifier,
)
from splitpin.schemas.governance import GovernanceConfig

Echo = Callable[[str], object]
KB_NAME = "banking77"
TENANT = "calibration"
MAX_TOKENS = 400
FITTED_ROLES = ("fast", "verifier", "long_context")
NOISE_DRAWS = 200
AGREEMENT_BOUNDS = (0.8, 0.9, 0.95)
"""verify_min_probability values whose accepted share and accuracy the record reports."""
SHARED_MAPS = {"compliance": "verifier"}
"""Roles answered by another role's responder: same requests, same confidence, same map."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Raw confidences and whether each answer was right, for one map."""

    confidence: npt.NDArray[np.float64]
    correct: npt.NDArray[np.float64]


def _fast_request(request_id: str, text: str, sources: tuple[SourceDoc, ...]) -> ModelRequest:
    """The fast role's first call on one held-out question, as the flow sends it."""
    return ModelRequest(
        request_id=f"{request_id}:0",
        role="fast",
        tenant_id=TENANT,
        messages=(Message(role="user", content=text),),
        max_tokens=MAX_TOKENS,
        sources=sources,
    )


def _fleet_samples(
    fleet: LocalFleet, rows: Sequence[tuple[str, str]], prefix: str
) -> dict[str, Sample]:
    """Run fast -> verifier, and long_context, on each row, as the flow would."""
    kb = fleet.bases[KB_NAME]
    top_k = fleet.governance.knowledge.top_k
    roles = fleet.governance.roles
    fast = FastResponder("fast", roles["fast"], fleet)
    verifier = Verifier("verifier", roles["verifier"], fleet)
    long_context = LongContextResponder("long_context", roles["long_context"], fleet)
    out: dict[str, tuple[list[float], list[float]]] = {r: ([], []) for r in FITTED_ROLES}

    def record(role: str, confidence: float | None, doc_ids: Sequence[str], gold: str) -> None:
        out[role][0].append(float(confidence or 0.0))
        out[role][1].append(float(bool(doc_ids) and doc_ids[0] == gold))

    for i, (text, intent) in enumerate(rows):
        article = kb.article_for_intent(intent)
        if article is None:
            continue
        gold = article.doc_id
        sources = fleet.retriever.retrieve(KB_NAME, text, top_k)
        request = _fast_request(f"{prefix}-{i}", text, sources)
        first, _ = fast.respond(request)
        first_ids = tuple(c.doc_id for c in first.citations)
        record("fast", first.confidence, first_ids, gold)
        candidate = Candidate(
            text=first.text,
            doc_ids=first_ids,
            confidence=first.confidence,
            model_version="local-fast",
        )
        second, _ = verifier.respond(
            request.model_copy(update={"role": "verifier", "candidates": (candidate,)})
        )
        record("verifier", second.confidence, [c.doc_id for c in second.citations], gold)
        # An earlier question of another intent: the conversation moved on to this one.
        earlier = next(
            (
                rows[(i + k) % len(rows)][0]
                for k in range(1, len(rows))
                if rows[(i + k) % len(rows)][1] != intent
            ),
            "",
        )
        turns = (
            Message(role="user", content=earlier),
            Message(role="assistant", content="Happy to help with that."),
            Message(role="user", content=text),
        )
        third, _ = long_context.respond(
            request.model_copy(update={"role": "long_context", "messages": turns})
        )
        record("long_context", third.confidence, [c.doc_id for c in third.citations], gold)
    return {
        role: Sample(np.asarray(c, dtype=np.float64), np.asarray(y, dtype=np.float64))
        for role, (c, y) in out.items()
    }


@dataclass(frozen=True, slots=True)
class AgreementSample:
    """Per routine row: the fast answer's raw confidence, the router's intent probability,
    whether the answer cites that intent's article, whether it is right."""

    confidence: npt.NDArray[np.float64]
    router: npt.NDArray[np.float64]
    agree: npt.NDArray[np.bool_]
    correct: npt.NDArray[np.float64]


class _NoCalls:
    """The gateway builds prompts here; the responders are called directly."""

    async def complete(self, request: ModelRequest) -> ModelResult:
        raise AssertionError("calibration makes no provider call through the gateway")


def fast_pass_sources(
    gateway: ModelGateway, text: str, intent: str, intent_confidence: float
) -> tuple[SourceDoc, ...]:
    """The fast pass's sources for a one-question conversation, built by the flow's own
    gateway: the router's article first when its intent clears
    knowledge.intent_attach_min_confidence, only knowledge.top_k_when_intent_sure when it
    clears knowledge.intent_sure_min_confidence (AnswerPolicy.attach_intent, `_call`)."""
    bound = gateway.governance.knowledge.intent_attach_min_confidence
    attached = intent if intent != "none" and intent_confidence >= bound else None
    spec = CallSpec(
        purpose="primary",
        request_id="calibration:primary",
        role="fast",
        tenant_id=TENANT,
        messages=(Message(role="user", content=text),),
        summary="",
        max_tokens=MAX_TOKENS,
        sources=None,
        intent=attached,
        intent_confidence=intent_confidence,
    )
    return gateway.sources_for(spec)


def _agreement_samples(
    fleet: LocalFleet, classifier: Classifier, rows: Sequence[tuple[str, str]], prefix: str
) -> AgreementSample:
    """The fast pass as the flow makes it (`fast_pass_sources`). Rows the router pins
    (compliance) or settles as small talk are left out: the verification policy never
    sees them."""
    kb = fleet.bases[KB_NAME]
    gateway = ModelGateway(fleet.governance, _NoCalls(), fleet.retriever)
    fast = FastResponder("fast", fleet.governance.roles["fast"], fleet)
    classes = classifier.classify_batch([text for text, _ in rows])
    out: tuple[list[float], list[float], list[bool], list[float]] = ([], [], [], [])
    for i, ((text, intent), found) in enumerate(zip(rows, classes, strict=True)):
        gold = kb.article_for_intent(intent)
        if gold is None or found.compliance or found.trivial:
            continue
        router_article = kb.article_for_intent(found.intent)
        sources = fast_pass_sources(gateway, text, found.intent, found.intent_confidence)
        result, _ = fast.respond(_fast_request(f"{prefix}-{i}", text, sources))
        cited = result.citations[0].doc_id if result.citations else None
        out[0].append(float(result.confidence or 0.0))
        out[1].append(float(found.intent_confidence))
        out[2].append(router_article is not None and cited == router_article.doc_id)
        out[3].append(float(cited == gold.doc_id))
    return AgreementSample(
        np.asarray(out[0], dtype=np.float64),
        np.asarray(out[1], dtype=np.float64),
        np.asarray(out[2], dtype=np.bool_),
        np.asarray(out[3], dtype=np.float64),
    )


def _at_bounds(probability: npt.NDArray[np.float64], correct: npt.NDArray[np.float64]) -> Any:
    """Per bound: the share of rows a policy with that verify_min_probability would accept
    unverified, and the accuracy of that accepted share (None when it is empty)."""
    out = {}
    for bound in AGREEMENT_BOUNDS:
        accepted = probability >= bound
        share = float(accepted.mean()) if accepted.size else 0.0
        right = float(correct[accepted].mean()) if accepted.any() else None
        out[str(bound)] = {
            "accepted_share": round(share, 4),
            "accepted_accuracy": None if right is None else round(right, 4),
        }
    return out


def _agreement_figures(
    fast_map: IsotonicMap, fitted: AgreementMap, sample: AgreementSample
) -> dict[str, Any]:
    """The evaluation half: calibration of the fast map alone vs the agreement map on the
    same answers, and what each would accept at each bound."""
    alone = fast_map.apply(sample.confidence)
    joint = fitted.apply(alone, sample.router, sample.agree)
    figures = _figures(Sample(alone, sample.correct), joint)
    figures["agree_share"] = round(float(sample.agree.mean()), 4)
    figures["accuracy_when_agree"] = round(float(sample.correct[sample.agree].mean()), 4)
    figures["accuracy_when_not"] = round(float(sample.correct[~sample.agree].mean()), 4)
    figures["at_bound_fast_alone"] = _at_bounds(alone, sample.correct)
    figures["at_bound_agreement"] = _at_bounds(joint, sample.correct)
    return figures


def _logits(
    head: LinearHead,
    featurizer: TextFeaturizer,
    embeddings: npt.NDArray[np.float32],
    texts: Sequence[str],
) -> npt.NDArray[np.float64]:
    return np.stack(
        [head.logits(e, featurizer.transform(t)) for e, t in zip(embeddings, texts, strict=True)]
    )


def ece_noise_floor(confidence: npt.ArrayLike, draws: int = NOISE_DRAWS) -> float:
    """The mean ECE of perfectly calibrated outcomes (y ~ Bernoulli(confidence), seeded) on a
    sample of this size: differences in ECE below it are sampling noise, not calibration."""
    c = np.asarray(confidence, dtype=np.float64)
    rng = np.random.default_rng(0)
    total = sum(expected_calibration_error(c, rng.random(len(c)) < c) for _ in range(draws))
    return total / draws


def _figures(before: Sample, after_conf: npt.ArrayLike) -> dict[str, Any]:
    after = np.asarray(after_conf, dtype=np.float64)
    return {
        "ece_noise_floor": round(ece_noise_floor(after), 4),
        "n": len(before.correct),
        "accuracy": round(float(before.correct.mean()), 4),
        "mean_confidence_before": round(float(before.confidence.mean()), 4),
        "mean_confidence_after": round(float(after.mean()), 4),
        "ece_before": round(expected_calibration_error(before.confidence, before.correct), 4),
        "ece_after": round(expected_calibration_error(after, before.correct), 4),
        "bins_before": reliability_bins(before.confidence, before.correct),
        "bins_after": reliability_bins(after, before.correct),
    }


def calibrate(
    data_dir: Path,
    governance: GovernanceConfig,
    *,
    out_dir: Path | None = None,
    command: str = "splitpin router calibrate",
    plot: Path | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Fit everything on the calibration halves, measure on the evaluation halves, write
    calibration.json into `out_dir` (default: the configured heads' folder)."""
    directory = out_dir or resolve_artifacts_dir(governance.classifier.artifacts_dir)
    data = load_training_data(data_dir)
    banking = data.banking_val
    b_fit, b_eval = halves([t for t, _ in banking], [c for _, c in banking])
    clinc = data.clinc_val
    c_fit, c_eval = halves([t for t, _ in clinc], [c for _, c in clinc])
    echo(
        f"banking77 held-out {len(banking)} rows -> {len(b_fit)} fit / {len(b_eval)} eval; "
        f"CLINC150 val+oos_val {len(clinc)} -> {len(c_fit)} / {len(c_eval)}"
    )

    fleet = LocalFleet.load(governance)
    bundle = read_bundle(directory)
    max_seq = governance.classifier.max_seq_tokens

    temperatures: dict[str, float] = {}
    head_figures: dict[str, Any] = {}
    for name, head, rows, fit_idx, eval_idx in (
        ("intent", bundle.intent, banking, b_fit, b_eval),
        ("domain", bundle.domain, clinc, c_fit, c_eval),
    ):
        texts = [model_input(t, max_seq) for t, _ in rows]
        embeddings = fleet.embedder.embed(texts)
        logits = _logits(head, bundle.featurizer, embeddings, texts)
        index = {label: i for i, label in enumerate(head.labels)}
        labels = np.array([index[c] for _, c in rows], dtype=np.intp)
        t = fit_temperature(logits[fit_idx], labels[fit_idx])
        temperatures[name] = t
        ev_logits, ev_labels = logits[eval_idx], labels[eval_idx]
        raw = softmax(ev_logits)
        scaled = softmax(ev_logits, t)
        correct = (raw.argmax(axis=1) == ev_labels).astype(np.float64)
        figures = _figures(Sample(raw.max(axis=1), correct), scaled.max(axis=1))
        figures["nll_before"] = round(negative_log_likelihood(ev_logits, ev_labels), 4)
        figures["nll_after"] = round(negative_log_likelihood(ev_logits, ev_labels, t), 4)
        head_figures[name] = figures
        echo(
            f"{name} head: T={t}; eval ECE {figures['ece_before']} -> {figures['ece_after']}, "
            f"NLL {figures['nll_before']} -> {figures['nll_after']} "
            f"(ECE noise floor {figures['ece_noise_floor']})"
        )

    fit_rows = [banking[i] for i in b_fit]
    eval_rows = [banking[i] for i in b_eval]
    fit_samples = _fleet_samples(fleet, fit_rows, "calibrate-fit")
    eval_samples = _fleet_samples(fleet, eval_rows, "calibrate-eval")
    maps: dict[str, IsotonicMap] = {}
    role_figures: dict[str, Any] = {}
    for role in FITTED_ROLES:
        fitted, choice = fit_isotonic_cv(fit_samples[role].confidence, fit_samples[role].correct)
        maps[role] = fitted
        sample = eval_samples[role]
        role_figures[role] = _figures(sample, fitted.apply(sample.confidence))
        role_figures[role]["method"] = (
            "platt" if choice == PLATT else f"isotonic, min_count {choice}"
        )
        role_figures[role]["fit_n"] = len(fit_samples[role].correct)
        echo(
            f"{role}: {role_figures[role]['method']}, {len(fitted.x)} knots; "
            f"eval accuracy {role_figures[role]['accuracy']}, "
            f"ECE {role_figures[role]['ece_before']} -> {role_figures[role]['ece_after']} "
            f"(noise floor {role_figures[role]['ece_noise_floor']})"
        )
    for role, source in SHARED_MAPS.items():
        maps[role] = maps[source]

    classifier = Classifier(fleet.embedder, bundle, governance.classifier, governance.routing)
    agree_fit = _agreement_samples(fleet, classifier, fit_rows, "calibrate-agree-fit")
    agree_eval = _agreement_samples(fleet, classifier, eval_rows, "calibrate-agree-eval")
    agreement, brier = fit_agreement_cv(
        maps["fast"].apply(agree_fit.confidence),
        agree_fit.router,
        agree_fit.agree,
        agree_fit.correct,
    )
    agreement_figures = _agreement_figures(maps["fast"], agreement, agree_eval)
    agreement_figures["method"] = agreement.score
    agreement_figures["cv_brier"] = brier
    agreement_figures["fit_n"] = len(agree_fit.correct)
    echo(
        f"agreement: {agreement.score} (cv Brier {brier}); eval n {agreement_figures['n']}, "
        f"accuracy {agreement_figures['accuracy']}, ECE fast alone "
        f"{agreement_figures['ece_before']} -> {agreement_figures['ece_after']}; at 0.9 "
        f"accepts {agreement_figures['at_bound_agreement']['0.9']} "
        f"(fast alone {agreement_figures['at_bound_fast_alone']['0.9']})"
    )

    heads_manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    document: dict[str, Any] = {
        "format": CALIBRATION_FORMAT,
        "command": command,
        "inputs": data.inputs,
        "heads": {
            "manifest_sha256": sha256_file(directory / MANIFEST),
            "files": heads_manifest.get("files", {}),
        },
        "knowledge_base": {KB_NAME: fleet.bases[KB_NAME].content_sha256},
        "split": {
            "method": "per label, rows ordered by sha256(text), alternately fit/eval",
            "banking77_heldout": {"fit": len(b_fit), "eval": len(b_eval)},
            "clinc150_val": {"fit": len(c_fit), "eval": len(c_eval)},
        },
        "ece_bins": ECE_BINS,
        "shared_maps": SHARED_MAPS,
        "temperatures": temperatures,
        "maps": {role: m.to_json() for role, m in sorted(maps.items())},
        "agreement": agreement.to_json(),
        "figures": {
            "heads": head_figures,
            "roles": role_figures,
            "agreement": agreement_figures,
        },
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CALIBRATION_FILE).write_text(
        json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    if plot is not None:
        reliability_plot(document["figures"], plot)
        echo(f"wrote {plot}")
    return document


def reliability_plot(figures: dict[str, Any], path: Path) -> Path:
    """One reliability diagram per map: accuracy against mean confidence per bin."""
    from matplotlib.figure import Figure

    panels = [(f"router {k} head", v) for k, v in figures["heads"].items()]
    panels += [(f"fleet {k}", v) for k, v in figures["roles"].items()]
    if "agreement" in figures:
        panels.append(("fast x router intent", figures["agreement"]))
    figure = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, fig) in zip(axes, panels, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        names = (
            ("fast alone", "agreement")
            if fig is figures.get("agreement")
            else ("raw", "calibrated")
        )
        for key, label in zip(("bins_before", "bins_after"), names, strict=True):
            pts = [(c, a) for n, c, a in fig[key] if n]
            ece = fig["ece_before" if key == "bins_before" else "ece_after"]
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{label} (ECE {ece:.3f})")
        ax.set_title(f"{title} (n={fig['n']})", fontsize="medium")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize="x-small")
    axes[0].set_ylabel("accuracy in bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110)
    return path
