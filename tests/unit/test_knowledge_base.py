"""Knowledge bases: the file format and its strict loading, tenants' own files named in
the governance config, the on-disk embedding cache, the packaged files, and deterministic
retrieval."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.core.router.classifier import Classifier
from splitpin.core.router.embedder import Embedder
from splitpin.core.settings import REPO_ROOT
from splitpin.errors import ConfigError
from splitpin.providers.base import SourceDoc
from splitpin.providers.knowledge_base import (
    Article,
    ArticleLine,
    EmbeddingCache,
    KnowledgeBases,
    Retriever,
    check_kb_files,
    content_words,
    default_cache_dir,
    doc_sort_key,
    parse_articles,
    rank,
)
from splitpin.schemas.governance import KnowledgeConfig, load_governance

GOVERNANCE = load_governance(REPO_ROOT / "config" / "governance.yaml")


def article(doc: int, intent: str, title: str, answer: str) -> dict[str, Any]:
    """One line of the KB file format (docs/knowledge_bases.md)."""
    return {"id": f"InternalDoc-{doc}", "title": title, "text": answer, "intent": intent}


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
    line = {**FIXTURE[0], "policy_notes": ["Check the address first."], "compliance": True}
    a = Article.from_line(ArticleLine.model_validate(line), "banking77")
    doc = a.as_source(0.123456)
    assert doc.text.startswith(a.answer) and "- Check the address first." in doc.text
    assert doc.score == 0.1235 and doc.compliance and doc.source == a.source


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "InternalDoc-9", "title": ', "not valid JSON"),
        (json.dumps({**FIXTURE[0], "id": "InternalDoc-9", "title": ""}), "title"),
        (json.dumps({**FIXTURE[0], "id": "Doc 9"}), "id"),
        (json.dumps({**FIXTURE[0], "id": "ACME-9"}), "id"),  # one id form: see the doc
        (json.dumps({**FIXTURE[0], "id": "InternalDoc-9", "extra": 1}), "extra"),
        (json.dumps({**FIXTURE[0], "id": "InternalDoc-9", "kb": "abcd"}), "kb"),  # old format
        (json.dumps({k: v for k, v in FIXTURE[0].items() if k != "text"}), "text"),
        (json.dumps({**FIXTURE[0], "id": "InternalDoc-9", "compliance": "yes"}), "compliance"),
        (json.dumps({**FIXTURE[0], "intent": "x"}), "id InternalDoc-1 repeats line 1"),
        (json.dumps({**FIXTURE[0], "id": "InternalDoc-9"}), "repeats line 1"),
        ("[1, 2]", "dictionary"),
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
    assert all(int(a.doc_id.split("-")[1]) >= 201 for a in abcd.articles)
    assert all(a.intent is not None and " / " in a.intent for a in abcd.articles)
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


# --- The file format, property-based ---------------------------------------------------

_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
).filter(str.strip)
_LINE = st.fixed_dictionaries(
    {"title": _TEXT, "text": _TEXT},
    optional={"intent": _TEXT, "compliance": st.booleans(), "policy_notes": st.lists(_TEXT)},
)


@given(
    lines=st.lists(_LINE, min_size=1, max_size=8),
    numbers=st.lists(st.integers(0, 10**6), min_size=8, max_size=8, unique=True),
)
def test_any_valid_file_loads_article_for_article(
    lines: list[dict[str, Any]], numbers: list[int]
) -> None:
    rows = [{"id": f"InternalDoc-{n}", **row} for n, row in zip(numbers, lines, strict=False)]
    intents = [r["intent"] for r in rows if "intent" in r]
    if len(intents) != len(set(intents)):
        with pytest.raises(ConfigError, match="repeats line"):
            parse_articles([json.dumps(r) for r in rows], "f.jsonl", "acme-faq")
        return
    parsed = parse_articles([json.dumps(r) for r in rows], "f.jsonl", "acme-faq")
    assert [(a.doc_id, a.title, a.answer, a.intent) for a in parsed] == [
        (r["id"], r["title"], r["text"], r.get("intent")) for r in rows
    ]
    assert all(
        a.compliance is r.get("compliance", False) for a, r in zip(parsed, rows, strict=True)
    )
    assert all(a.source == f"kb:acme-faq/{a.doc_id}" for a in parsed)


@given(
    good=st.integers(0, 6),
    blanks=st.integers(0, 3),
    bad=st.sampled_from(['{"id": ', '{"id": "InternalDoc-1"}', "null", '"text"']),
)
def test_the_first_bad_line_is_named_by_its_number(good: int, blanks: int, bad: str) -> None:
    rows = [json.dumps(article(100 + i, f"i{i}", "t", "a")) for i in range(good)]
    lines = [*rows, *([""] * blanks), bad, json.dumps(FIXTURE[0])]
    with pytest.raises(ConfigError) as info:
        parse_articles(lines, "tenant.jsonl", "acme-faq")
    assert f"tenant.jsonl:{good + blanks + 1}:" in str(info.value)
    assert "tenant.jsonl:" not in str(info.value).replace(f"tenant.jsonl:{good + blanks + 1}:", "")


def test_intent_is_optional_and_only_given_intents_must_be_unique() -> None:
    rows = [
        {"id": "InternalDoc-5001", "title": "A", "text": "a"},
        {**FIXTURE[1], "id": "InternalDoc-5002"},
    ]
    rows.append({"id": "InternalDoc-5003", "title": "C", "text": "c"})
    parsed = parse_articles([json.dumps(r) for r in rows], "x", "acme")
    assert [a.intent for a in parsed] == [None, "lost_or_stolen_card", None]


# --- Tenants' own files in the governance config ----------------------------------------


def _governance_with(tmp_path: Path, knowledge: dict[str, Any]) -> Path:
    data = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    data["knowledge"] = {**data["knowledge"], **knowledge}
    path = tmp_path / "conf" / "governance.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_relative_kb_paths_resolve_against_the_governance_file(tmp_path: Path) -> None:
    path = _governance_with(
        tmp_path, {"bases": {"acme-faq": "kb/acme.jsonl"}, "tenants": {"acme-bank": "acme-faq"}}
    )
    knowledge = load_governance(path).knowledge
    assert knowledge.bases == {"acme-faq": tmp_path / "conf" / "kb" / "acme.jsonl"}
    assert knowledge.kb_for("acme-bank") == "acme-faq" and knowledge.kb_for("x") == "banking77"


def test_a_relative_governance_path_still_gives_an_absolute_kb_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resolved path is passed on (governance topic, other processes): not cwd-bound."""
    _governance_with(tmp_path, {"bases": {"acme-faq": "acme.jsonl"}})
    monkeypatch.chdir(tmp_path)
    bases = load_governance(Path("conf/governance.yaml")).knowledge.bases
    assert bases == {"acme-faq": tmp_path / "conf" / "acme.jsonl"}


@pytest.mark.parametrize(
    ("knowledge", "expected"),
    [
        ({"tenants": {"acme-bank": "acme-faq"}}, "knowledge.tenants.acme-bank: 'acme-faq'"),
        ({"default_kb": "nope"}, "knowledge.default_kb: 'nope'"),
        ({"bases": {"banking77": "b.jsonl"}}, "shipped knowledge base"),
        ({"bases": {"a/b": "b.jsonl"}}, "knowledge.bases"),
    ],
)
def test_unknown_or_badly_named_bases_stop_start_up(
    tmp_path: Path, knowledge: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match="governance config") as info:
        load_governance(_governance_with(tmp_path, knowledge))
    assert expected in str(info.value)


def test_check_kb_files_names_file_and_line(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", FIXTURE)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(FIXTURE[0]) + "\n" + '{"id": "InternalDoc-2"}\n', encoding="utf-8")
    assert check_kb_files(KnowledgeConfig(bases={"good": good})) == {"good": 5}
    with pytest.raises(ConfigError, match=f"{bad}:2:"):
        check_kb_files(KnowledgeConfig(bases={"good": good, "bad": bad}))
    with pytest.raises(ConfigError, match="cannot read knowledge base"):
        check_kb_files(KnowledgeConfig(bases={"gone": tmp_path / "gone.jsonl"}))


def test_config_validate_checks_the_kb_files(tmp_path: Path) -> None:
    path = _governance_with(
        tmp_path, {"bases": {"acme-faq": "acme.jsonl"}, "tenants": {"acme-bank": "acme-faq"}}
    )
    kb = path.parent / "acme.jsonl"

    def validate() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "splitpin", "config", "validate", str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    write_jsonl(kb, FIXTURE)
    ok = validate()
    assert ok.returncode == 0, ok.stderr
    assert f"knowledge base acme-faq: 5 articles ({kb})" in ok.stdout
    kb.write_text(json.dumps(FIXTURE[0]) + "\n\n" + '{"id": "InternalDoc-7", "title": "t"}\n')
    broken = validate()
    assert broken.returncode == 2 and f"{kb}:3:" in broken.stderr and "text" in broken.stderr


# --- The embedding cache ----------------------------------------------------------------


def test_cache_lives_under_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "splitpin" / "embeddings"
    assert EmbeddingCache().directory == default_cache_dir()


def test_cache_miss_then_hit_gives_the_same_embeddings(
    embedder: Embedder, fixture_dir: Path, tmp_path: Path
) -> None:
    cache = EmbeddingCache(tmp_path)
    first = KnowledgeBases.load(embedder, ("banking77",), directory=fixture_dir, cache=cache)
    assert (cache.hits, cache.misses, cache.corrupt) == (0, 1, 0)
    assert len(list(tmp_path.glob("*.npz"))) == 1 and not list(tmp_path.glob("*.tmp"))
    again = KnowledgeBases.load(embedder, ("banking77",), directory=fixture_dir, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(first["banking77"].embeddings, again["banking77"].embeddings)


def test_cache_key_follows_file_bytes_and_embedder_identity(embedder: Embedder) -> None:
    key = EmbeddingCache.key("a" * 64, embedder.info)
    assert key == EmbeddingCache.key("a" * 64, embedder.info)
    assert key != EmbeddingCache.key("b" * 64, embedder.info)
    other = dataclasses.replace(embedder.info, max_seq_tokens=64)
    assert key != EmbeddingCache.key("a" * 64, other)


def test_an_edited_file_is_embedded_afresh(embedder: Embedder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    kb = write_jsonl(tmp_path / "acme.jsonl", FIXTURE)
    KnowledgeBases.load(embedder, (), files={"acme": kb}, cache=cache)
    write_jsonl(kb, [*FIXTURE[:4], {**FIXTURE[4], "text": "Only our own ATMs take your card."}])
    edited = KnowledgeBases.load(embedder, (), files={"acme": kb}, cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    expected = embedder.embed([a.embedding_text for a in edited["acme"].articles])
    assert np.allclose(edited["acme"].embeddings, expected, atol=1e-6)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_corrupt_cache_entry_is_recomputed_never_trusted(
    embedder: Embedder,
    fixture_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    """Whatever happens to the entry (truncated, a byte flipped, garbage, a well-formed
    entry with the wrong shape, non-unit rows or another file's matrix copied under this
    key), loading gives exactly the freshly computed embeddings and rewrites the entry."""
    directory = tmp_path_factory.mktemp("cache")
    cache = EmbeddingCache(directory)
    fresh = KnowledgeBases.load(embedder, ("banking77",), directory=fixture_dir, cache=cache)
    expected = fresh["banking77"].embeddings
    (entry,) = directory.glob("*.npz")
    key = entry.stem
    raw = entry.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "shape", "scale", "copy"]))
    if how == "truncate":
        entry.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    elif how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        flipped = bytes([raw[at] ^ data.draw(st.integers(1, 255))])
        entry.write_bytes(raw[:at] + flipped + raw[at + 1 :])
    elif how == "garbage":
        entry.write_bytes(data.draw(st.binary(max_size=200)))
    elif how == "copy":  # another 5-article file's sound entry, renamed to this key
        other = [{**row, "text": row["text"] + " Ask us anything."} for row in FIXTURE]
        other_dir = tmp_path_factory.mktemp("other")
        write_jsonl(other_dir / "banking77.jsonl", other)
        KnowledgeBases.load(embedder, ("banking77",), directory=other_dir, cache=cache)
        (copied,) = (p for p in directory.glob("*.npz") if p.stem != key)
        copied.replace(entry)
    else:  # well-formed, digest consistent, but the wrong matrix
        wrong = expected[:-1] if how == "shape" else expected * np.float32(2.0)
        digest = hashlib.sha256(np.ascontiguousarray(wrong).tobytes()).hexdigest()
        np.savez(entry, embeddings=wrong, sha256=np.array(digest), key=np.array(key))
    hits = cache.hits
    loaded = KnowledgeBases.load(embedder, ("banking77",), directory=fixture_dir, cache=cache)
    assert np.array_equal(loaded["banking77"].embeddings, expected)
    if cache.hits == hits:  # detected (a flipped byte in zip metadata may be harmless)
        assert cache.corrupt == 1
        KnowledgeBases.load(embedder, ("banking77",), directory=fixture_dir, cache=cache)
        assert cache.hits == hits + 1  # rewritten: the next start trusts it again
    else:
        assert how == "flip"


def test_an_unwritable_cache_only_costs_time(
    embedder: Embedder, fixture_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = EmbeddingCache(blocker / "cache")
    bases = KnowledgeBases.load(embedder, ("banking77",), directory=fixture_dir, cache=cache)
    assert bases["banking77"].embeddings.shape == (5, 384) and cache.misses == 1
