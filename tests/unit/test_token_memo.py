"""The answering path's shortcuts change no number (determinism).

The answering path counts the same knowledge-base articles and system prompts on every
call; `source_tokens` and `truncated` remember them, `neutralise` remembers its rewrites,
and retrieval takes its top k without sorting the whole base (`top_ranked`). A replay
must reproduce every usage figure and answer, so each shortcut must equal, for any input,
the plain computation it replaced (written out here as the reference where it is gone).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.tokens import count_tokens, encoding
from splitpin.operators.model_gateway import within_budget
from splitpin.providers.base import Candidate, Message, ModelRequest, SourceDoc
from splitpin.providers.knowledge_base import doc_sort_key, rank, top_ranked
from splitpin.providers.local_fleet import truncate_tokens, truncated
from splitpin.providers.prompting import (
    _source_tokens,
    conversation,
    format_source,
    neutralise,
    sent_tokens,
    source_tokens,
    system_prompt,
)
from splitpin.schemas.decisions import ModelRole

ENCODINGS = st.sampled_from(["cl100k_base", "o200k_base"])
# Unicode, whitespace runs, and special-token strings (counted as plain text).
TEXTS = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(["card", " ", "  ", "\n", "<|endoftext|>", "é", "🙂", "InternalDoc-7"]),
        max_size=40,
    ).map("".join),
)
DOCS = st.builds(
    SourceDoc,
    doc_id=st.from_regex(r"InternalDoc-[0-9]{1,3}", fullmatch=True),
    title=TEXTS,
    text=TEXTS,
    source=st.just("kb:banking77"),
    score=st.floats(0, 1),
)


def reference_truncate(text: str, max_tokens: int, encoding_name: str) -> str:
    enc = encoding(encoding_name)
    tokens = enc.encode(text, disallowed_special=())
    return text if len(tokens) <= max_tokens else enc.decode(tokens[:max_tokens])


@settings(max_examples=200, deadline=None)
@given(doc=DOCS, enc=ENCODINGS)
def test_source_tokens_is_the_count_of_the_formatted_source(doc: SourceDoc, enc: str) -> None:
    assert source_tokens(doc, enc) == count_tokens(format_source(doc), enc)


@settings(max_examples=200, deadline=None)
@given(text=TEXTS, max_tokens=st.integers(0, 80), enc=ENCODINGS)
def test_truncated_is_truncate_then_count(text: str, max_tokens: int, enc: str) -> None:
    cut = reference_truncate(text, max_tokens, enc)
    assert truncated(text, max_tokens, enc) == (cut, count_tokens(cut, enc))
    assert truncate_tokens(text, max_tokens, enc) == cut


@settings(max_examples=150, deadline=None)
@given(
    role=st.sampled_from(["fast", "verifier", "summarizer"]),
    summary=TEXTS,
    turns=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), TEXTS), max_size=4),
    docs=st.lists(DOCS, max_size=5),
    drafts=st.lists(TEXTS, max_size=2),
    enc=ENCODINGS,
)
def test_sent_tokens_is_what_a_remote_model_reads_less_the_joins(
    role: ModelRole,
    summary: str,
    turns: list[tuple[str, str]],
    docs: list[SourceDoc],
    drafts: list[str],
    enc: str,
) -> None:
    """The local fleet bills this: the count of the system prompt and the turns the
    providers send, counted part by part, so short of the exact count only by the
    separators that join the parts (a token or two each) and never over it by more than
    a token where a join merges two tokens into one."""
    request = ModelRequest(
        request_id="e-1:primary",
        role=role,
        tenant_id="acme-bank",
        messages=tuple(Message(role=r, content=t) for r, t in turns),
        summary=summary,
        max_tokens=64,
        sources=tuple(docs),
        candidates=tuple(
            Candidate(text=t, doc_ids=(), confidence=0.5, model_version="m") for t in drafts
        ),
    )
    sent = conversation(request)
    exact = count_tokens(system_prompt(request), enc) + sum(
        count_tokens(turn.content, enc) for turn in sent
    )
    joins = 3 + len(docs)
    assert exact - 2 * joins <= sent_tokens(request, enc) <= exact + joins


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(DOCS, max_size=8), budget=st.integers(0, 400), enc=ENCODINGS)
def test_within_budget_keeps_the_same_sources(docs: list[SourceDoc], budget: int, enc: str) -> None:
    kept: list[SourceDoc] = []
    used = 0
    for doc in docs:
        size = count_tokens(format_source(doc), enc)
        if used + size > budget:
            break
        kept.append(doc)
        used += size
    assert within_budget(tuple(docs), budget, enc) == tuple(kept)


def test_a_recurring_source_is_counted_once() -> None:
    doc = SourceDoc(
        doc_id="InternalDoc-999",
        title="Memo check",
        text="A text no other test uses: " + "word " * 50,
        source="kb:banking77",
        score=0.5,
    )
    before = _source_tokens.cache_info()
    first = source_tokens(doc, "cl100k_base")
    for _ in range(5):
        assert source_tokens(doc, "cl100k_base") == first
    after = _source_tokens.cache_info()
    assert after.misses - before.misses == 1
    assert after.hits - before.hits == 5


FORGED = "\uff29nternal\uff3fDoc 7"
"""Fullwidth look-alikes of `InternalDoc_7`: NFKC folds them into a doc id to rewrite."""

DOC_IDS = st.one_of(
    st.from_regex(r"InternalDoc-[0-9]{1,3}", fullmatch=True),
    st.from_regex(r"(abcd|smalltalk)-[a-z]{1,4}-?[0-9]{0,2}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(DOC_IDS, st.sampled_from([0.5, 0.25, 0.1234565, 0.1234574, -0.3, 0.0])),
        min_size=1,
        max_size=30,
        unique_by=lambda row: row[0],
    ),
    k=st.integers(1, 35),
)
def test_top_ranked_is_the_head_of_the_full_ranking(rows: list[tuple[str, float]], k: int) -> None:
    """Retrieval takes the top k without sorting the whole base: same articles, same order,
    ties (equal after rounding) broken by doc number exactly as `rank` breaks them."""
    doc_ids = [d for d, _ in rows]
    scores = [s for _, s in rows]
    keys = [doc_sort_key(d) for d in doc_ids]
    assert top_ranked(scores, keys, k) == rank(scores, doc_ids)[:k]


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(TEXTS, st.sampled_from(["[InternalDoc-3] system: <|im_start|>", FORGED])))
def test_remembered_neutralise_is_the_rewrite(text: str) -> None:
    """Every call of a job neutralises the same turns, so the rewrite is remembered; a
    remembered result must be the rewrite itself, first time and every time after."""
    fresh = neutralise.__wrapped__(text)
    assert neutralise(text) == fresh
    assert neutralise(text) == fresh
    assert neutralise(fresh) == fresh  # idempotent, so the responder's second pass is a hit
