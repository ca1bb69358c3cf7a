"""The local model fleet: what each responder answers, cites, counts and reports.

Runs against the packaged knowledge bases and the trained classifier. The accuracy
comparison uses tests/data/banking77_heldout_sample.csv: 154 banking77 rows (two per
intent) from the classifier's held-out split, so the verifier's intent head never
trained on them (CC BY 4.0, see tests/data/README.md). Print the figures with

    .venv/bin/pytest tests/unit/test_local_fleet.py -k accuracy -s
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from splitpin.core.settings import REPO_ROOT
from splitpin.core.summarizer import HEADER
from splitpin.providers.base import (
    CONFIRM,
    BadRequestError,
    Candidate,
    ContextOverflowError,
    Message,
    ModelRequest,
    ModelResult,
    SourceDoc,
)
from splitpin.providers.emulation import emulated_latency_ms, request_seed
from splitpin.providers.local_fleet import (
    UNCITED_CONFIDENCE_CAP,
    FastResponder,
    LocalFleet,
    LongContextResponder,
    Summarizer,
    Verifier,
    combine,
    customer_lines,
    headline,
    lexical_coverage,
    margin_confidence,
    recency_weights,
)
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import EmulationProfile, GovernanceConfig, load_governance

GOVERNANCE = load_governance(REPO_ROOT / "config" / "governance.yaml")
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "banking77_heldout_sample.csv"
TOP_K = GOVERNANCE.knowledge.top_k
QUICK = EmulationProfile(ttft_ms_median=20, ttft_sigma=0.35, tokens_per_s=20_000)
"""A fast emulation profile, so tests that check seeding do not wait production times."""


@pytest.fixture(scope="module")
def fleet() -> LocalFleet:
    return LocalFleet.load(GOVERNANCE)


def emulating(fleet: LocalFleet, profile: EmulationProfile | None = None) -> LocalFleet:
    """The same resources with providers.emulate on (and, if given, one profile for all)."""
    update: dict[str, object] = {
        "providers": GOVERNANCE.providers.model_copy(update={"emulate": True})
    }
    if profile is not None:
        update["roles"] = {
            name: role.model_copy(update={"emulation": profile})
            for name, role in GOVERNANCE.roles.items()
        }
    governance = GovernanceConfig.model_validate(GOVERNANCE.model_copy(update=update).model_dump())
    return LocalFleet(governance, fleet.bases, fleet.embedder, fleet.classifier)


def ask(
    fleet: LocalFleet,
    role: ModelRole,
    messages: Sequence[tuple[str, str]] | str,
    *,
    kb: str = "banking77",
    sources: tuple[SourceDoc, ...] | None = None,
    candidates: tuple[Candidate, ...] = (),
    summary: str = "",
    request_id: str = "evt-1:0",
    max_tokens: int = 400,
) -> ModelResult:
    turns = [("user", messages)] if isinstance(messages, str) else list(messages)
    if sources is None:
        question = [text for who, text in turns if who == "user"][-1]
        sources = fleet.retriever.retrieve(kb, question, TOP_K)
    request = ModelRequest(
        request_id=request_id,
        role=role,
        tenant_id="shopco" if kb == "abcd" else "acme-bank",
        messages=tuple(Message(role=who, content=text) for who, text in turns),  # type: ignore[arg-type]
        summary=summary,
        max_tokens=max_tokens,
        sources=sources,
        candidates=candidates,
    )
    provider = fleet.provider(role, fleet.governance.roles[role])
    return asyncio.run(provider.complete(request))


def doc_for(fleet: LocalFleet, intent: str, kb: str = "banking77") -> str:
    article = fleet.bases[kb].article_for_intent(intent)
    assert article is not None
    return article.doc_id


def as_candidate(result: ModelResult) -> Candidate:
    return Candidate(
        text=result.text,
        doc_ids=tuple(c.doc_id for c in result.citations),
        confidence=result.confidence,
        model_version=result.model_version,
    )


# --- Pure pieces ----------------------------------------------------------------------


def test_margin_confidence_is_monotone_and_clipped() -> None:
    values = [margin_confidence(m, 0.03, 0.03) for m in (-1.0, 0.0, 0.03, 0.1, 5.0)]
    assert values == sorted(values)
    assert values[0] == 0.0 and values[2] == 0.5 and values[-1] == 1.0


def test_recency_weights_and_combined_queries() -> None:
    assert recency_weights(3).tolist() == [0.25, 0.5, 1.0]
    assert recency_weights(1).tolist() == [1.0]
    rows = np.eye(3, dtype=np.float32)
    combined = combine(rows, [0.0, 0.0, 2.0])
    assert combined.tolist() == [0.0, 0.0, 1.0]


def test_customer_lines_keep_what_the_customer_raised() -> None:
    summary = f"{HEADER}\n- user: My card is lost.\n- assistant: Blocked it.\n- user: Thanks."
    assert customer_lines(summary) == "My card is lost. Thanks."
    assert customer_lines("free text summary") == "free text summary"


def test_headline_keeps_questions_and_labels_topics() -> None:
    assert headline("When will my card arrive?") == "When will my card arrive?"
    assert headline("Card delivery") == "Card delivery:"


def test_lexical_coverage_weighs_rare_words(fleet: LocalFleet) -> None:
    kb = fleet.bases["abcd"]
    promo = kb.article_for_intent("Purchase Dispute / Promo Code Invalid")
    assert promo is not None
    words = kb.words[kb.index_of(promo.doc_id) or 0]
    assert lexical_coverage(frozenset({"promo", "code"}), words, kb) == 1.0
    assert lexical_coverage(frozenset(), words, kb) == 0.0
    assert 0.0 < lexical_coverage(frozenset({"promo", "zzzunseen"}), words, kb) < 1.0


def test_emulated_latency_is_seeded_by_request_id_not_salted_hash() -> None:
    profile = EmulationProfile(ttft_ms_median=600, ttft_sigma=0.35, tokens_per_s=65)
    a = emulated_latency_ms(profile, "evt-1:0", 100)
    assert a == emulated_latency_ms(profile, "evt-1:0", 100)
    assert a != emulated_latency_ms(profile, "evt-2:0", 100)
    # +65 tokens at 65 tok/s is one more second, the same TTFT draw
    assert emulated_latency_ms(profile, "evt-1:0", 165) == pytest.approx(a + 1000.0, abs=0.01)
    digest = hashlib.sha256(b"evt-1:0").digest()
    assert request_seed("evt-1:0") == int.from_bytes(digest[:8], "big")
    draws = sorted(emulated_latency_ms(profile, f"evt-{i}:0", 0) for i in range(401))
    assert 520 < draws[200] < 690  # the median TTFT is the profile's
    flat = EmulationProfile(ttft_ms_median=600, ttft_sigma=0.0, tokens_per_s=50)
    assert emulated_latency_ms(flat, "x", 25) == 1100.0


# --- The registry factory -------------------------------------------------------------


def test_each_role_gets_its_responder_named_local(fleet: LocalFleet) -> None:
    kinds = {
        "fast": FastResponder,
        "long_context": LongContextResponder,
        "compliance": Verifier,
        "verifier": Verifier,
        "summarizer": Summarizer,
    }
    for role, kind in kinds.items():
        provider = fleet.provider(role, GOVERNANCE.roles[role])  # type: ignore[arg-type]
        assert isinstance(provider, kind) and provider.name == "local"
        asyncio.run(provider.aclose())


# --- Responders -----------------------------------------------------------------------


def test_fast_answers_from_an_attached_article_and_cites_it(fleet: LocalFleet) -> None:
    question = "I ordered my card two weeks ago and it still hasn't arrived"
    sources = fleet.retriever.retrieve("banking77", question, TOP_K)
    result = ask(fleet, "fast", question, sources=sources)
    assert len(result.citations) == 1
    cited = result.citations[0]
    attached = {s.doc_id: s for s in sources}
    assert cited.doc_id in attached and cited.source == attached[cited.doc_id].source
    assert cited.doc_id == doc_for(fleet, "card_arrival")
    article = fleet.bases["banking77"].article(cited.doc_id)
    assert article is not None and result.text == article.answer
    assert result.provider == "local" and result.role == "fast" and not result.emulated
    sha = fleet.bases["banking77"].content_sha256[:12]
    assert result.model_version == f"local-fast@{sha}"
    assert 0.0 <= result.confidence <= 1.0


def test_usage_counts_prompt_and_answer_in_the_role_tokenizer(fleet: LocalFleet) -> None:
    question = "How do I top up my account by bank transfer?"
    with_sources = ask(fleet, "fast", question)
    assert with_sources.usage.tokens_in > 0 and with_sources.usage.tokens_out > 0
    one_source = fleet.retriever.retrieve("banking77", question, 1)
    fewer = ask(fleet, "fast", question, sources=one_source)
    assert fewer.usage.tokens_in < with_sources.usage.tokens_in  # sources are counted
    assert fewer.usage.tokens_out == with_sources.usage.tokens_out  # same article chosen
    truncated = ask(fleet, "fast", question, max_tokens=5)
    assert truncated.usage.tokens_out <= 5 and len(truncated.text) < len(with_sources.text)


def test_the_verifier_corrects_a_wrong_fast_answer_from_the_same_sources(
    fleet: LocalFleet,
) -> None:
    # A fixture question whose nearest article by embedding is the wrong one
    # (exchange_via_app); the trained intent head knows it is about the rate.
    question = "What method do you use for the exchange rate?"
    sources = fleet.retriever.retrieve("banking77", question, TOP_K)
    gold = doc_for(fleet, "exchange_rate")
    assert gold in {s.doc_id for s in sources}
    fast = ask(fleet, "fast", question, sources=sources)
    assert fast.citations[0].doc_id != gold
    verified = ask(fleet, "verifier", question, sources=sources, candidates=(as_candidate(fast),))
    assert verified.citations[0].doc_id == gold
    article = fleet.bases["banking77"].article(gold)
    assert article is not None
    assert verified.text == f"{article.title} {article.answer}"  # says what it answers
    assert verified.model_version.startswith("local-verifier@")
    assert verified.confidence > fast.confidence


def test_the_verifier_confirms_a_right_draft_in_one_word(fleet: LocalFleet) -> None:
    question = "I ordered my card two weeks ago and it still hasn't arrived"
    sources = fleet.retriever.retrieve("banking77", question, TOP_K)
    fast = ask(fleet, "fast", question, sources=sources)
    verified = ask(fleet, "verifier", question, sources=sources, candidates=(as_candidate(fast),))
    assert verified.text == CONFIRM
    assert verified.citations == fast.citations
    assert verified.usage.tokens_out < fast.usage.tokens_out // 10


def test_the_verifier_never_cites_a_document_that_was_not_attached(fleet: LocalFleet) -> None:
    question = "My card was stolen yesterday, please help"
    gold = doc_for(fleet, "lost_or_stolen_card")
    everything = fleet.retriever.retrieve("banking77", question, 77)
    others = tuple(s for s in everything if s.doc_id != gold)[:TOP_K]
    lying = Candidate(text="...", doc_ids=(gold,), confidence=1.0, model_version="x")
    result = ask(fleet, "verifier", question, sources=others, candidates=(lying,))
    assert [c.doc_id for c in result.citations] != [gold]
    assert {c.doc_id for c in result.citations} <= {s.doc_id for s in others}
    # and the trained head knows the right article is missing: confidence stays low
    assert result.confidence < 0.5

    for role in ("verifier", "compliance", "fast", "long_context"):
        bare = ask(fleet, role, question, sources=())  # type: ignore[arg-type]
        assert bare.citations == ()
        assert bare.confidence <= UNCITED_CONFIDENCE_CAP and bare.text


def test_the_verifier_reads_recent_turns_with_recency_weights(fleet: LocalFleet) -> None:
    turns = [
        ("user", "Hi, I was charged twice for the same coffee"),
        ("assistant", "Sorry to hear that, can you tell me more?"),
        ("user", "Yes, the same payment shows two times in the app"),
        ("assistant", "Thanks, one moment."),
        ("user", "Can you fix it?"),
    ]
    result = ask(
        fleet,
        "verifier",
        turns,
        sources=fleet.retriever.retrieve("banking77", "charged twice for the same payment", TOP_K),
    )
    assert result.citations[0].doc_id == doc_for(fleet, "transaction_charged_twice")


@pytest.mark.parametrize(
    ("question", "intent"),
    [
        (
            "I was charged for something I never ordered",
            "Purchase Dispute / Mistimed Billing Never Bought",
        ),
        (
            "The site rejects my promo code, it says invalid",
            "Purchase Dispute / Promo Code Invalid",
        ),
        ("I can't remember my username", "Account Access / Recover Username"),
    ],
)
def test_the_verifier_uses_embedding_and_word_overlap_for_abcd(
    fleet: LocalFleet, question: str, intent: str
) -> None:
    result = ask(fleet, "verifier", question, kb="abcd")
    assert result.citations[0].doc_id == doc_for(fleet, intent, "abcd")
    sha = fleet.bases["abcd"].content_sha256[:12]
    assert result.model_version == f"local-verifier@{sha}"


def test_long_context_acknowledges_the_earlier_topic(fleet: LocalFleet) -> None:
    summary = f"{HEADER}\n- user: I lost my card on the train yesterday.\n- assistant: Done."
    question = "Also, what exchange rate will I get when I pay in euros?"
    result = ask(fleet, "long_context", question, summary=summary)
    earlier = fleet.retriever.retrieve("banking77", customer_lines(summary), 1)[0]
    earlier_article = fleet.bases["banking77"].article(earlier.doc_id)
    assert earlier_article is not None
    assert earlier_article.intent in {"lost_or_stolen_card", "compromised_card"}
    assert result.text.startswith(f'Earlier in this conversation: "{earlier.title}".')
    cited = fleet.bases["banking77"].article(result.citations[0].doc_id)
    assert cited is not None and result.text.endswith(cited.answer)
    assert "exchange" in cited.intent
    assert result.model_version.startswith("local-long-context@")
    plain = ask(fleet, "long_context", question)  # no earlier context, nothing to acknowledge
    plain_article = fleet.bases["banking77"].article(plain.citations[0].doc_id)
    assert plain_article is not None and plain.text == plain_article.answer
    follow_up = ask(
        fleet,
        "long_context",
        [("user", "What rate do you use for euros?"), ("assistant", "..."), ("user", question)],
    )
    assert follow_up.text.startswith(("Following up on", "Earlier in this conversation"))


def test_summarizer_compacts_the_turns_without_citations(fleet: LocalFleet) -> None:
    turns = [
        ("user", "My card has not arrived. I ordered it two weeks ago."),
        ("assistant", "I am sorry. Let me check the delivery status."),
        ("user", "Thanks. Also, can I get a virtual card meanwhile?"),
    ]
    prior = f"{HEADER}\n- user: Hello, I need help with my account."
    result = ask(fleet, "summarizer", turns, sources=(), summary=prior)
    assert result.text.startswith(HEADER)
    assert "- user: My card has not arrived." in result.text
    assert "- user: Hello, I need help with my account." in result.text  # rolling
    assert result.citations == () and result.model_version == "local-summarizer@extractive-1"
    assert result.usage.tokens_out > 0


def test_typed_errors_for_impossible_requests(fleet: LocalFleet) -> None:
    with pytest.raises(BadRequestError, match="no customer message"):
        ask(fleet, "fast", [("assistant", "Hello!")], sources=())
    small = GOVERNANCE.roles["fast"].model_copy(
        update={"context_window": 300, "max_output_tokens": 100}
    )
    request = ModelRequest(
        request_id="r",
        role="fast",
        tenant_id="acme-bank",
        messages=(Message(role="user", content="card " * 400),),
        max_tokens=50,
    )
    with pytest.raises(ContextOverflowError):
        asyncio.run(fleet.provider("fast", small).complete(request))


# --- Determinism and emulation ----------------------------------------------------------


@pytest.mark.parametrize("role", ["fast", "verifier", "long_context", "summarizer"])
def test_same_request_same_bytes(fleet: LocalFleet, role: ModelRole) -> None:
    emulated = emulating(fleet, QUICK)
    turns = [
        ("user", "I topped up yesterday but it still shows pending"),
        ("assistant", "Let me look."),
        ("user", "How long does a top-up usually take?"),
    ]
    first = ask(emulated, role, turns, summary=f"{HEADER}\n- user: I moved to Spain.")
    again = ask(emulated, role, turns, summary=f"{HEADER}\n- user: I moved to Spain.")
    assert first.model_dump_json() == again.model_dump_json()  # latency included: emulated
    measured = [ask(fleet, role, turns) for _ in range(2)]
    a, b = (r.model_dump_json(exclude={"latency_ms"}) for r in measured)
    assert a == b  # without emulation only the measured latency differs


def test_emulation_sleeps_the_seeded_latency_and_labels_it(fleet: LocalFleet) -> None:
    profile = EmulationProfile(ttft_ms_median=120, ttft_sigma=0.0, tokens_per_s=10_000)
    emulated = emulating(fleet, profile)
    start = time.perf_counter()
    result = ask(emulated, "fast", "What is the exchange rate today?", request_id="evt-9:1")
    wall_ms = (time.perf_counter() - start) * 1000
    assert result.emulated
    assert result.latency_ms == emulated_latency_ms(profile, "evt-9:1", result.usage.tokens_out)
    assert wall_ms >= result.latency_ms - 5
    plain = ask(fleet, "fast", "What is the exchange rate today?", request_id="evt-9:1")
    assert not plain.emulated and plain.latency_ms < result.latency_ms
    no_profile = emulating(fleet)
    roles = {
        **no_profile.governance.roles,
        "fast": GOVERNANCE.roles["fast"].model_copy(update={"emulation": None}),
    }
    unprofiled = LocalFleet(
        no_profile.governance.model_copy(update={"roles": roles}),
        fleet.bases,
        fleet.embedder,
        fleet.classifier,
    )
    assert not ask(unprofiled, "fast", "What is the exchange rate today?").emulated


def test_concurrent_calls_overlap_their_sleeps(fleet: LocalFleet) -> None:
    """Compute runs in worker threads, so emulated waits overlap instead of queueing."""
    profile = EmulationProfile(ttft_ms_median=200, ttft_sigma=0.0, tokens_per_s=10_000)
    emulated = emulating(fleet, profile)
    provider = emulated.provider("fast", emulated.governance.roles["fast"])
    requests = [
        ModelRequest(
            request_id=f"evt-{i}:0",
            role="fast",
            tenant_id="acme-bank",
            messages=(Message(role="user", content=f"Is my top-up number {i} pending?"),),
            max_tokens=200,
            sources=fleet.retriever.retrieve("banking77", "top-up pending", TOP_K),
        )
        for i in range(4)
    ]

    async def run_all() -> list[ModelResult]:
        return await asyncio.gather(*(provider.complete(r) for r in requests))

    start = time.perf_counter()
    results = asyncio.run(run_all())
    wall_ms = (time.perf_counter() - start) * 1000
    assert all(r.emulated and r.latency_ms >= 200 for r in results)
    assert wall_ms < 600  # four 200 ms waits in sequence would take over 800 ms


# --- Accuracy: the verifier's extra work pays -----------------------------------------


def read_fixture() -> list[tuple[str, str]]:
    with FIXTURE.open(encoding="utf-8", newline="") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


def test_accuracy_verifier_beats_fast_on_heldout_banking77(fleet: LocalFleet) -> None:
    rows = read_fixture()
    assert len(rows) == 154 and len({c for _, c in rows}) == 77
    fast = fleet.provider("fast", GOVERNANCE.roles["fast"])
    verifier = fleet.provider("verifier", GOVERNANCE.roles["verifier"])

    async def run() -> tuple[int, int, int]:
        hits = [0, 0, 0]
        for i, (text, intent) in enumerate(rows):
            sources = fleet.retriever.retrieve("banking77", text, TOP_K)
            gold = doc_for(fleet, intent)
            request = ModelRequest(
                request_id=f"acc-{i}:0",
                role="fast",
                tenant_id="acme-bank",
                messages=(Message(role="user", content=text),),
                max_tokens=400,
                sources=sources,
            )
            first = await fast.complete(request)
            second = await verifier.complete(
                request.model_copy(
                    update={"role": "verifier", "candidates": (as_candidate(first),)}
                )
            )
            hits[0] += gold in {s.doc_id for s in sources}
            hits[1] += first.citations[0].doc_id == gold
            hits[2] += second.citations[0].doc_id == gold
        return hits[0], hits[1], hits[2]

    attached, fast_hits, verifier_hits = asyncio.run(run())
    n = len(rows)
    print(
        f"\nbanking77 held-out sample (n={n}): gold article attached (top-{TOP_K}) "
        f"{attached / n:.1%}; fast {fast_hits / n:.1%}; verifier {verifier_hits / n:.1%}"
    )
    assert verifier_hits > fast_hits
    assert verifier_hits <= attached  # it can only cite what was attached
