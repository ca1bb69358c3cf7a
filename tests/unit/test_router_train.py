"""`splitpin router train` on a tiny data set written here (no ../shared needed)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from splitpin.core.router.classifier import Classifier
from splitpin.core.router.heads import read_bundle
from splitpin.core.router.train import KNN_K, KNN_WEIGHT, stratified_split, train
from splitpin.schemas.governance import ClassifierConfig, RoutingConfig

BANKING = {
    "lost_or_stolen_card": [
        "I lost my card",
        "my card was stolen",
        "someone stole my card",
        "I can't find my card",
        "my wallet with my card is gone",
        "card stolen last night",
        "I misplaced my card",
        "lost card, please block it",
        "my bank card has been stolen",
        "I think I lost my card",
        "thief took my card",
        "where is my card, I lost it",
    ],
    "exchange_rate": [
        "what is the exchange rate",
        "how much is a euro in dollars",
        "exchange rate for yen",
        "what rate do you use to convert currency",
        "current euro rate",
        "pound to euro rate",
        "how are exchange rates calculated",
        "is the exchange rate good today",
        "dollar rate",
        "what rate will I get for francs",
        "conversion rate please",
        "exchange rates today",
    ],
    "card_arrival": [
        "when will my card arrive",
        "my new card has not arrived",
        "card delivery status",
        "still waiting for my card",
        "how long until my card comes",
        "has my card been sent",
        "where is my new card in the mail",
        "card not delivered yet",
        "tracking my card",
        "my card should have arrived by now",
        "when does the card get here",
        "card in the post",
    ],
}
CLINC_TRAIN = {
    "greeting": ["hello there friend", "hi how are you", "good morning to you", "hey what's up"],
    "thank_you": ["thanks a lot for that", "thank you very much", "many thanks friend"],
    "goodbye": ["bye for now", "goodbye my friend", "see you later then"],
    "yes": ["yes that is right", "correct, yes", "yes please do"],
    "no": ["no that is wrong", "no, not at all", "nope that's incorrect"],
    "tell_joke": ["tell me a joke", "say something funny", "do you know any jokes"],
    "balance": ["what is my balance", "how much money do I have", "check my account balance"],
    "oos": [
        "how tall is mount everest",
        "what is the capital of peru",
        "who painted the mona lisa",
    ],
}
CLINC_VAL = {
    "greeting": ["hello!! how's it going"],
    "tell_joke": ["tell me something funny please"],
    "balance": ["how much is in my account"],
    "oos": ["what is the boiling point of mercury"],
}


def _write_data(root: Path) -> Path:
    data = root / "data"
    (data / "banking77").mkdir(parents=True)
    (data / "clinc150").mkdir()
    with (data / "banking77" / "train.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for label, texts in BANKING.items():
            writer.writerows([t, label] for t in texts)
    (data / "banking77" / "categories.json").write_text(json.dumps(sorted(BANKING)))

    def pairs(groups: dict[str, list[str]], oos: bool) -> list[list[str]]:
        return [[t, k] for k, ts in groups.items() if (k == "oos") == oos for t in ts]

    clinc = {
        "train": pairs(CLINC_TRAIN, oos=False),
        "oos_train": pairs(CLINC_TRAIN, oos=True),
        "val": pairs(CLINC_VAL, oos=False),
        "oos_val": pairs(CLINC_VAL, oos=True),
    }
    (data / "clinc150" / "data.json").write_text(json.dumps(clinc))
    domains = {
        "small_talk": ["greeting", "thank_you", "goodbye", "tell_joke"],
        "meta": ["yes", "no"],
        "banking": ["balance"],
    }
    (data / "clinc150" / "domains.json").write_text(json.dumps(domains))
    return data


def test_stratified_split_is_seeded_and_per_label() -> None:
    labels = ["a"] * 20 + ["b"] * 10 + ["c"]
    train_idx, held = stratified_split(labels, 0.1, seed=0)
    assert stratified_split(labels, 0.1, seed=0) == (train_idx, held)
    assert sorted(train_idx + held) == list(range(len(labels)))
    assert [labels[i] for i in held].count("a") == 2
    assert [labels[i] for i in held].count("b") == 1
    assert "c" not in [labels[i] for i in held]  # a single example stays in training
    assert stratified_split(labels, 0.1, seed=1) != (train_idx, held)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("train")
    data = _write_data(root)
    echoed: list[str] = []
    train(
        data,
        root / "out",
        classifier=ClassifierConfig(),
        routing=RoutingConfig(compliance_intents=("lost_or_stolen_card",)),
        command="splitpin router train --test",
        cache_dir=root / "cache",
        progress=False,
        echo=echoed.append,
    )
    return data, root, echoed


def test_manifest_records_inputs_command_and_figures(
    trained: tuple[Path, Path, list[str]],
) -> None:
    data, root, echoed = trained
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["command"] == "splitpin router train --test"
    recorded = {i["path"]: i["sha256"] for i in manifest["inputs"]}
    for rel in ("banking77/train.csv", "clinc150/data.json", "clinc150/domains.json"):
        assert recorded[rel] == hashlib.sha256((data / rel).read_bytes()).hexdigest()
    assert manifest["labels"]["intent"] == sorted(BANKING)
    assert "oos" in manifest["labels"]["domain"]
    assert "tell_joke" in manifest["labels"]["trivial_intents"]
    assert {"numpy", "onnxruntime", "scikit-learn"} <= set(manifest["versions"])
    assert set(manifest["validation"]) == {"banking77_heldout", "clinc150_val"}
    assert manifest["validation"]["banking77_heldout"]["messages"] == 3
    assert any("computed, cached" in line for line in echoed)


def test_trained_artifacts_classify(trained: tuple[Path, Path, list[str]]) -> None:
    _, root, _ = trained
    classifier = Classifier.load(
        ClassifierConfig(artifacts_dir=root / "out"),
        RoutingConfig(compliance_intents=("lost_or_stolen_card",)),
    )
    c = classifier.classify("help, somebody stole my bank card")
    assert c.intent == "lost_or_stolen_card" and c.compliance
    assert classifier.classify("when is my card going to arrive").intent == "card_arrival"


def test_the_shipped_recipe_has_no_neighbour_vote(trained: tuple[Path, Path, list[str]]) -> None:
    _, root, _ = trained
    bundle = read_bundle(root / "out")
    assert bundle.intent.neighbours is None
    assert bundle.manifest["hyperparameters"]["intent_neighbour_vote"] is None


def test_intent_head_carries_its_neighbour_vote_chosen_without_held_out_rows(
    trained: tuple[Path, Path, list[str]],
) -> None:
    data, root, _ = trained
    train(
        data,
        root / "voting",
        classifier=ClassifierConfig(),
        routing=RoutingConfig(compliance_intents=("lost_or_stolen_card",)),
        command="splitpin router train --neighbour-vote --test",
        cache_dir=root / "cache",
        progress=False,
        neighbour_vote=True,
    )
    bundle = read_bundle(root / "voting")
    vote = bundle.intent.neighbours
    assert vote is not None and bundle.intent.neighbour_weight == KNN_WEIGHT
    assert vote.k == KNN_K and len(vote.labels) == len(_train_rows())  # every training row
    assert bundle.domain.neighbours is None
    hyper = bundle.manifest["hyperparameters"]
    assert "held-out" not in hyper["intent"]["selection"].split(";")[0]
    assert "CV" in hyper["intent_neighbour_vote"]["selection"]
    # A training row's own phrasing is its nearest neighbour: the vote names its intent.
    label = {name: i for i, name in enumerate(bundle.intent.labels)}
    embedder = Classifier.load(
        ClassifierConfig(artifacts_dir=root / "voting"),
        RoutingConfig(compliance_intents=("lost_or_stolen_card",)),
    ).embedder
    text, intent = _train_rows()[0]
    p = vote.proba(embedder.embed([text])[0], len(label))
    assert int(np.argmax(p)) == label[intent]


def _train_rows() -> list[tuple[str, str]]:
    """The rows the fixture's split trains on (as train.py splits them)."""
    pairs = [(t, label) for label, texts in BANKING.items() for t in texts]
    train_idx, _ = stratified_split([label for _, label in pairs], 0.1, seed=0)
    return [pairs[i] for i in train_idx]


def test_retraining_hits_the_cache_and_is_byte_identical(
    trained: tuple[Path, Path, list[str]],
) -> None:
    data, root, _ = trained
    echoed: list[str] = []
    train(
        data,
        root / "again",
        classifier=ClassifierConfig(),
        routing=RoutingConfig(compliance_intents=("lost_or_stolen_card",)),
        command="splitpin router train --test",
        cache_dir=root / "cache",
        progress=False,
        echo=echoed.append,
    )
    assert any("from cache" in line for line in echoed)
    for name in ("heads.npz", "vocab.json", "manifest.json"):
        assert (root / "again" / name).read_bytes() == (root / "out" / name).read_bytes()
