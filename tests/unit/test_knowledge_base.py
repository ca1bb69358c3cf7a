"""Knowledge bases: strict loading, the packaged files, and deterministic retrieval."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpin.core.router.classifier import Classifier
from splitpin.core.router.embedder import Embedder
from splitpin.core.settings import REPO_ROOT
from splitpin.errors import ConfigError
from splitpin.providers.base import SourceDoc
from splitpin.providers.knowledge_base import (
    Article,
    KnowledgeBases,
    Retriever,
    content_words,
    doc_sort_key,
    parse_articles,
    rank,
)
from splitpin.schemas.governance import load_governance

GOVERNANCE = load_governance(REPO_ROOT / "config" / "governance.yaml")


def article(
    doc: int, intent: str, title: str, answer: str, kb: str = "banking77"
) -> dict[str, Any]:
    return {
        "doc_id": f"InternalDoc-{doc}",
        "kb": kb,
        "intent": intent,
        "title": title,
        "answer": answer,
        "policy_notes": [],
        "compliance": False,
    }


FIXTURE = [
    article(
        1, "card_arrival", "When will my new card arrive?", "Cards arrive within 5 working days."
    ),
    article(
        2,
        "lost_or_stolen_card",
        "What should I do if my card is lost or stolen?",
        "Freeze the card in the app straight away and order a replacement.",
    ),
    article(
        3,
        "exchange_rate",
        "What exchange rate do you use?",
        "We convert currencies at the live wholesale rate on weekdays.",
    ),
    article(
        4,
        "top_up_failed",
        "Why did my top-up fail?",
        "A top-up fails when your bank declines it; try another card.",
    ),
    article(
        10,
        "atm_support",
        "Which cash machines can I use?",
        "Any ATM showing the Mastercard logo accepts your card.",
    ),
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(max_seq_tokens=128, intra_op_threads=1)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kb")
    write_jsonl(directory / "banking77.jsonl", FIXTURE)
    return directory


@pytest.fixture(scope="module")
def fixture_bases(embedder: Embedder, fixture_dir: Path) -> KnowledgeBases:
    return KnowledgeBases.load(embedder, ("banking77",), directory=fixture_dir)


@pytest.fixture(scope="module")
def packaged(embedder: Embedder) -> KnowledgeBases:
    return KnowledgeBases.load(embedder)


# --- Loading --------------------------------------------------------------------------


def test_loads_articles_with_unit_embeddings_and_content_hash(
    fixture_bases: KnowledgeBases, fixture_dir: Path
) -> None:
    kb = fixture_bases["banking77"]
    assert [a.doc_id for a in kb.articles] == [f"InternalDoc-{n}" for n in (1, 2, 3, 4, 10)]
    assert kb.embeddings.shape == (5, 384) and kb.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(kb.embeddings, axis=1), 1.0, atol=1e-5)
    raw = (fixture_dir / "banking77.jsonl").read_bytes()
    assert kb.content_sha256 == hashlib.sha256(raw).hexdigest()
    card = kb.article("InternalDoc-1")
    assert card is not None and card.source == "kb:banking77/InternalDoc-1"
    assert kb.article_for_intent("exchange_rate") == kb.article("InternalDoc-3")
    assert kb.article("InternalDoc-99") is None


def test_source_text_carries_policy_notes() -> None:
    a = Article.model_validate(
        {**FIXTURE[0], "policy_notes": ["Check the address first."], "compliance": True}
    )
    doc = a.as_source(0.123456)
    assert doc.text.startswith(a.answer) and "- Check the address first." in doc.text
    assert doc.score == 0.1235 and doc.compliance and doc.source == a.source


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"doc_id": "InternalDoc-9", "kb": ', "not valid JSON"),
        (json.dumps({**FIXTURE[0], "doc_id": "InternalDoc-9", "title": ""}), "title"),
        (json.dumps({**FIXTURE[0], "doc_id": "Doc 9"}), "doc_id"),
        (json.dumps({**FIXTURE[0], "doc_id": "InternalDoc-9", "extra": 1}), "extra"),
        (json.dumps({**FIXTURE[0], "doc_id": "InternalDoc-9", "kb": "abcd"}), "kb is 'abcd'"),
        (json.dumps({**FIXTURE[0], "intent": "x"}), "doc_id InternalDoc-1 repeats line 1"),
        (json.dumps({**FIXTURE[0], "doc_id": "InternalDoc-9"}), "repeats line 1"),
    ],
)
def test_a_bad_line_is_a_config_error_naming_file_and_line(
    embedder: Embedder, tmp_path: Path, line: str, expected: str
) -> None:
    path = tmp_path / "banking77.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in FIXTURE[:2])
    path.write_text(good + "\n" + line + "\n", encoding="utf-8")  # a blank line 3 is fine
    with pytest.raises(ConfigError) as info:
        KnowledgeBases.load(embedder, ("banking77",), directory=tmp_path)
    message = str(info.value)
    assert f"{path}:4" in message and expected in message


def test_missing_or_empty_files_and_unknown_names_are_config_errors(
    embedder: Embedder, tmp_path: Path, fixture_bases: KnowledgeBases
) -> None:
    with pytest.raises(ConfigError, match="cannot read knowledge base"):
        KnowledgeBases.load(embedder, ("banking77",), directory=tmp_path)
    (tmp_path / "abcd.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no articles"):
        KnowledgeBases.load(embedder, ("abcd",), directory=tmp_path)
    with pytest.raises(ConfigError, match="unknown knowledge base 'abcd'"):
        fixture_bases["abcd"]
    with pytest.raises(ConfigError, match="unknown knowledge base"):
        Retriever(fixture_bases).retrieve("abcd", "refund", 3)


def test_parse_articles_is_usable_without_files() -> None:
    lines = [json.dumps(FIXTURE[0]), "", json.dumps(FIXTURE[1])]
    parsed = parse_articles(lines, "inline", "banking77")
    assert [a.intent for a in parsed] == ["card_arrival", "lost_or_stolen_card"]


def test_packaged_knowledge_bases_match_the_intents_they_answer(
    packaged: KnowledgeBases,
) -> None:
    banking, abcd = packaged["banking77"], packaged["abcd"]
    labels = set(Classifier.load(GOVERNANCE.classifier, GOVERNANCE.routing).intent_labels)
    assert {a.intent for a in banking.articles} == labels
    assert {a.doc_id for a in banking.articles} == {f"InternalDoc-{n}" for n in range(1, 78)}
    assert len(abcd.articles) == 55
    assert all(int(a.doc_id.split("-")[1]) >= 201 and " / " in a.intent for a in abcd.articles)
    assert sorted(packaged) == ["abcd", "banking77", "smalltalk"]
    ids = [a.doc_id for kb in packaged.values() for a in kb.articles]
    assert len(ids) == len(set(ids)), "doc ids are unique across every knowledge base"


@pytest.mark.parametrize(
    ("text", "intent"),
    [("hi there", "greeting"), ("thanks a lot!", "thank_you"), ("ok great", "ok")],
)
def test_small_talk_finds_its_reply(packaged: KnowledgeBases, text: str, intent: str) -> None:
    (top,) = Retriever(packaged).retrieve("smalltalk", text, 1)
    article = packaged["smalltalk"].article(top.doc_id)
    assert article is not None and article.intent == intent


# --- Retrieval ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "intent"),
    [
        ("I ordered a card ten days ago and it still hasn't come", "card_arrival"),
        ("someone stole my wallet with my card in it", "lost_or_stolen_card"),
        ("what rate do you use to convert euros to pounds?", "exchange_rate"),
        ("my top up didn't go through, why?", "top_up_failed"),
    ],
)
def test_fixture_retrieval_puts_the_right_intent_first(
    fixture_bases: KnowledgeBases, question: str, intent: str
) -> None:
    found = Retriever(fixture_bases).retrieve("banking77", question, 3)
    kb = fixture_bases["banking77"]
    assert len(found) == 3
    assert kb.article(found[0].doc_id) == kb.article_for_intent(intent)
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert all(d.source == f"kb:banking77/{d.doc_id}" for d in found)


@pytest.mark.parametrize(
    ("kb_name", "question", "intent"),
    [
        ("banking77", "My new card still hasn't arrived, when will it come?", "card_arrival"),
        ("banking77", "I think my card was stolen, what do I do?", "lost_or_stolen_card"),
        ("banking77", "How do I reset my passcode?", "passcode_forgotten"),
        ("abcd", "I forgot my password and can't log in", "Account Access / Recover Password"),
        ("abcd", "my promo code says it is invalid", "Purchase Dispute / Promo Code Invalid"),
        (
            "abcd",
            "I want to return a shirt that doesn't fit",
            "Product Defect / Return Due to Size",
        ),
    ],
)
def test_packaged_retrieval_finds_the_article_of_a_clear_question(
    packaged: KnowledgeBases, kb_name: str, question: str, intent: str
) -> None:
    found = Retriever(packaged).retrieve(kb_name, question, GOVERNANCE.knowledge.top_k)
    expected = packaged[kb_name].article_for_intent(intent)
    assert expected is not None
    assert expected.doc_id in [d.doc_id for d in found]


def test_retrieval_is_deterministic_and_ties_go_to_the_lower_doc_number(
    embedder: Embedder, tmp_path: Path
) -> None:
    same = {"title": "Which cash machines can I use?", "answer": "Any ATM with the logo."}
    rows = [
        {**article(10, "atm_a", **same)},
        {**article(2, "atm_b", **same)},
        article(3, "exchange_rate", "What exchange rate do you use?", "The live rate."),
    ]
    write_jsonl(tmp_path / "banking77.jsonl", rows)
    bases = KnowledgeBases.load(embedder, ("banking77",), directory=tmp_path)
    retriever = Retriever(bases)
    first = retriever.retrieve("banking77", "where can I take cash out?", 3)
    assert [d.doc_id for d in first[:2]] == ["InternalDoc-2", "InternalDoc-10"]
    assert first[0].score == first[1].score
    again = retriever.retrieve("banking77", "  where can I   take cash out? ", 3)
    assert again == first  # whitespace is not meaning; same sources, same order, same bytes
    assert retriever.retrieve("banking77", "cash", 10) == retriever.retrieve("banking77", "cash", 3)
    with pytest.raises(ValueError, match="top_k"):
        retriever.retrieve("banking77", "cash", 0)


def test_rank_and_sort_key_are_pure_and_total() -> None:
    assert doc_sort_key("InternalDoc-2") < doc_sort_key("InternalDoc-12")
    ids = ["InternalDoc-12", "InternalDoc-2", "InternalDoc-3"]
    assert rank([0.5, 0.5 + 1e-9, 0.7], ids) == [2, 1, 0]  # float noise is a tie
    assert rank([], []) == []


def test_content_words_drop_stopwords_and_plurals() -> None:
    assert content_words("Where are my refunds for the shoes?") == {"refund", "shoe"}
    assert "address" in content_words("my address")


def test_resolve_only_trusts_loaded_articles(fixture_bases: KnowledgeBases) -> None:
    kb = fixture_bases["banking77"]
    doc = kb.articles[0].as_source(0.9)
    assert fixture_bases.resolve(doc) == (kb, 0)
    assert fixture_bases.resolve(doc.model_copy(update={"source": "kb:abcd/InternalDoc-1"})) is None
    assert fixture_bases.resolve(doc.model_copy(update={"doc_id": "InternalDoc-2"})) is None
    other = SourceDoc(doc_id="X-1", title="t", text="x", source="https://example.com", score=0.1)
    assert fixture_bases.resolve(other) is None
