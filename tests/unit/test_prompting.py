"""The shared prompt and the citations read back from an answer."""

from __future__ import annotations

from providers.base import Candidate, Message, ModelRequest, SourceDoc
from providers.prompting import (
    INSTRUCTIONS,
    NO_SOURCES,
    conversation,
    parse_citations,
    system_prompt,
)
from schemas.replies import Citation

CARD = SourceDoc(
    doc_id="InternalDoc-3",
    title="Card delivery",
    text="Cards arrive within  5 working days.\nTrack them in the app.",
    source="kb:banking77/InternalDoc-3",
    score=0.82,
)
FEES = SourceDoc(
    doc_id="InternalDoc-12",
    title="Top-up fees",
    text="Top-ups by bank transfer are free.",
    source="kb:banking77/InternalDoc-12",
    score=0.61,
)


def _request(
    *messages: tuple[str, str],
    sources: tuple[SourceDoc, ...] = (CARD, FEES),
    summary: str = "",
    candidates: tuple[Candidate, ...] = (),
) -> ModelRequest:
    turns = messages or (("user", "Where is my card?"),)
    return ModelRequest(
        request_id="e-1:0",
        role="fast",
        tenant_id="acme-bank",
        messages=tuple(Message(role=role, content=text) for role, text in turns),
        summary=summary,
        max_tokens=256,
        sources=sources,
        candidates=candidates,
    )


def test_system_prompt_lists_sources_with_their_doc_ids() -> None:
    prompt = system_prompt(_request())
    assert prompt.startswith(INSTRUCTIONS)
    assert "References: 1) InternalDoc-" in prompt
    assert (
        "[InternalDoc-3] Card delivery: Cards arrive within 5 working days. Track them in the app."
        in prompt
    )
    assert "[InternalDoc-12] Top-up fees: Top-ups by bank transfer are free." in prompt
    assert prompt.index("InternalDoc-3]") < prompt.index("InternalDoc-12]")


def test_system_prompt_says_when_there_are_no_sources() -> None:
    prompt = system_prompt(_request(sources=()))
    assert NO_SOURCES in prompt
    assert "[InternalDoc-" not in prompt.replace(INSTRUCTIONS, "")


def test_system_prompt_carries_the_summary_and_draft_answers() -> None:
    draft = Candidate(
        text="It ships in a week.", doc_ids=("InternalDoc-3",), confidence=0.4, model_version="m"
    )
    prompt = system_prompt(
        _request(summary="Summary of earlier turns:\n- user: ordered a card", candidates=(draft,))
    )
    assert "Summary of earlier turns:\n- user: ordered a card" in prompt
    assert "1) (confidence 0.40, cites InternalDoc-3) It ships in a week." in prompt


def test_conversation_merges_runs_and_starts_with_the_customer() -> None:
    request = _request(
        ("assistant", "Hi, how can I help?"),
        ("user", "My card."),
        ("user", "It has not arrived."),
        ("assistant", "Sorry to hear that."),
        ("user", "Where is it?"),
    )
    turns = conversation(request)
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert turns[0].content == "My card.\n\nIt has not arrived."
    assert "Hi, how can I help?" in system_prompt(request)


def test_citations_from_the_references_line_in_order() -> None:
    text = "Your card is on its way.\nReferences: 1) InternalDoc-12 2) InternalDoc-3"
    assert parse_citations(text, (CARD, FEES)) == (
        Citation(doc_id="InternalDoc-12", source="kb:banking77/InternalDoc-12"),
        Citation(doc_id="InternalDoc-3", source="kb:banking77/InternalDoc-3"),
    )


def test_inline_and_references_are_deduplicated_in_order_of_appearance() -> None:
    text = (
        "Cards take 5 days [InternalDoc-3]; top-ups are free [InternalDoc-12, InternalDoc-3].\n"
        "References:\n1) InternalDoc-3\n2) InternalDoc-12"
    )
    assert [c.doc_id for c in parse_citations(text, (CARD, FEES))] == [
        "InternalDoc-3",
        "InternalDoc-12",
    ]


def test_unattached_doc_is_kept_with_an_empty_source() -> None:
    text = "See [InternalDoc-99].\nReferences: 1) InternalDoc-3 2) InternalDoc-99"
    assert parse_citations(text, (CARD,)) == (
        Citation(doc_id="InternalDoc-99", source=""),
        Citation(doc_id="InternalDoc-3", source="kb:banking77/InternalDoc-3"),
    )


def test_spelling_variants_match_the_attached_doc() -> None:
    text = "**References:** 1) internaldoc-03"
    assert parse_citations(text, (CARD,)) == (
        Citation(doc_id="InternalDoc-3", source="kb:banking77/InternalDoc-3"),
    )


def test_no_citations() -> None:
    assert parse_citations("I could not find that, let me escalate.", (CARD,)) == ()
    # A bare mention in prose, outside brackets and before any References line, is not a cite.
    assert parse_citations("InternalDoc-3 does not cover this.", (CARD,)) == ()
