"""The answer branch stops redoing the decision's work, and changes no number doing so.

The router embeds a message whitespace-normalised and cut to its input length; the local
fleet embeds the raw turn, retrieval the recent turns joined. The embedder now finds a
remembered row by token ids when the text differs, and the classifier remembers the intent
head's row per input text, which the verifier asks for at every job. Each shortcut must
give, bit for bit, what computing again gives (replays must reproduce every reply), and
must actually skip the work (else it buys nothing): both are checked here against the
real model. The budget gate derives each plan's call bounds once; the policy checks
remember their first match; `has_visible` settles printable ASCII in one search.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.router.classifier import Classifier, model_input
from splitpin.core.router.embedder import Embedder
from splitpin.core.router.heads import TextFeaturizer
from splitpin.operators.validation import validate_answer
from splitpin.providers.base import ModelResult, Usage
from splitpin.schemas.governance import ClassifierConfig, PolicyCheck, RoutingConfig
from splitpin.schemas.wire import has_visible, is_visible

WORDS = [
    "my", "card", "was", "stolen", "and", "someone", "used", "it", "abroad", "why",
    "charged", "twice", "transfer", "pending", "top", "up", "failed", "PIN", "fee", "ATM",
]  # fmt: skip
SPACES = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n "])


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str]:
    """One message and another spelling of it: other whitespace, leading and trailing."""
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=160))
    a = " ".join(words)
    gaps = draw(st.lists(SPACES, min_size=len(words) + 1, max_size=len(words) + 1))
    b = gaps[0] + "".join(w + g for w, g in zip(words, gaps[1:], strict=True))
    return a, b


@pytest.fixture(scope="module")
def plain() -> Embedder:
    """No memo at all: what the transformer computes."""
    return Embedder.load(max_seq_tokens=128, intra_op_threads=1, memo_size=0)


@pytest.fixture
def counted() -> Iterator[tuple[Embedder, list[int]]]:
    memo = Embedder.load(max_seq_tokens=128, intra_op_threads=1, memo_size=64)
    runs: list[int] = []
    compute = memo._run
    memo._run = lambda ids: runs.append(len(ids)) or compute(ids)  # type: ignore[method-assign]
    yield memo, runs


@settings(max_examples=25, deadline=None)
@given(pair=spellings())
def test_another_spelling_is_served_by_token_ids_bit_for_bit(
    plain: Embedder, pair: tuple[str, str]
) -> None:
    memo = Embedder.load(max_seq_tokens=128, intra_op_threads=1, memo_size=8)
    runs: list[int] = []
    compute = memo._run
    memo._run = lambda ids: runs.append(len(ids)) or compute(ids)  # type: ignore[method-assign]
    first, other = pair
    row = memo.embed([first])[0]
    again = memo.embed([other])[0]
    assert sum(runs) == 1, "the second spelling ran the transformer again"
    assert np.array_equal(again, plain.embed([other])[0])
    assert np.array_equal(row, plain.embed([first])[0])


def test_the_router_cut_and_the_raw_turn_share_one_row(
    plain: Embedder, counted: tuple[Embedder, list[int]]
) -> None:
    """What the flow does: the classifier embeds `model_input` (normalised, cut), the
    fleet the raw email; retrieval a join whose first turn already fills 128 tokens."""
    memo, runs = counted
    email = "Dear team,\n\n" + "  ".join(["my card payment was declined at the shop"] * 60)
    cut = model_input(email, 128)
    assert cut != email
    memo.embed([cut])
    rows = memo.embed([email, f"{email} and what about my transfer?"])
    assert sum(runs) == 1
    assert np.array_equal(rows, plain.embed([email, f"{email} and what about my transfer?"]))


def test_a_new_text_in_a_mixed_batch_is_still_computed(
    plain: Embedder, counted: tuple[Embedder, list[int]]
) -> None:
    memo, runs = counted
    memo.embed(["I lost my card"])
    texts = ["I  lost my card", "top up failed", "\nI lost my card\n", "top up failed"]
    out = memo.embed(texts)
    assert sum(runs) == 1 + 2  # the two "top up failed" (same call: both computed, as before)
    assert np.array_equal(out, plain.embed(texts))


@pytest.fixture(scope="module")
def fresh_classifier() -> Classifier:
    return Classifier.load(ClassifierConfig(), RoutingConfig())


@pytest.fixture
def featurized(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the n-gram featurizer transforms from now on (clear it to start counting)."""
    texts: list[str] = []
    transform = TextFeaturizer.transform

    def spy(self: TextFeaturizer, text: str):  # type: ignore[no-untyped-def]
        texts.append(text)
        return transform(self, text)

    monkeypatch.setattr(TextFeaturizer, "transform", spy)
    return texts


def test_the_verifier_reads_the_routers_intent_rows(
    fresh_classifier: Classifier, featurized: list[str]
) -> None:
    """Turns the router classified are scored by the intent head once, not per job; the
    rows are the ones a classifier that never saw them computes."""
    turns = [
        "my card was stolen yesterday",
        "why was I  charged twice for the same payment?",
        "Dear team,\n\nmy transfer is still pending. Can you check? Thanks",
    ]
    reference = fresh_classifier.intent_probabilities(turns)
    classifier = Classifier.load(ClassifierConfig(), RoutingConfig())
    classifier.classify_batch(turns)
    featurized.clear()
    for _ in range(3):  # three jobs of the conversation score the same recent turns
        assert np.array_equal(classifier.intent_probabilities(turns), reference)
    assert featurized == []
    extra = classifier.intent_probabilities([*turns, "top up failed"])
    assert featurized == ["top up failed"]
    assert np.array_equal(extra, fresh_classifier.intent_probabilities([*turns, "top up failed"]))


def test_intent_rows_are_forgotten_beyond_the_memo_size(featurized: list[str]) -> None:
    classifier = Classifier.load(ClassifierConfig(embedding_memo_size=2), RoutingConfig())
    featurized.clear()
    classifier.intent_probabilities(["a card", "a fee", "a PIN"])
    classifier.intent_probabilities(["a card"])  # the oldest of three, with room for two
    assert featurized == ["a card", "a fee", "a PIN", "a card"]


CHECKS = (
    PolicyCheck(name="asks-pin", pattern=r"\b(?:your|the)\s+PIN\b", error="PolicyViolation"),
    PolicyCheck(name="card-number", pattern=r"\b\d(?:[ -]?\d){12,18}\b", error="DataLeak"),
)
REPLY_TEXT = st.lists(
    st.sampled_from(["Tell me ", "your PIN", " 4111 1111 1111 1111", "the ", "pin", ". ", "7"]),
    max_size=12,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=REPLY_TEXT, repeat=st.integers(1, 3))
def test_policy_violations_are_those_a_fresh_search_finds(text: str, repeat: int) -> None:
    result = ModelResult(
        request_id="r",
        role="fast",
        text=text or "ok",
        citations=(),
        usage=Usage(tokens_in=1, tokens_out=1),
        latency_ms=1.0,
        model_version="m",
        provider="local",
    )
    expected = []
    for check in CHECKS:
        match = re.compile(check.pattern, re.IGNORECASE).search(result.text)
        if match is not None:
            expected.append((check.name, f"matched {match.group(0)!r} at {match.start()}"))
    for _ in range(repeat):  # the second search of a text is the remembered one
        found = validate_answer(result, (), require_citation=False, policy_checks=CHECKS)
        assert [(v.check, v.detail) for v in found] == expected


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=40))
def test_has_visible_is_the_per_character_rule(text: str) -> None:
    assert has_visible(text) == any(is_visible(c) for c in text)


@pytest.mark.parametrize(
    "text", ["", " ", "\u200b\u2060\ufeff", "\u3000\u00a0", "\U000e0020", " a", "\u200b!"]
)
def test_has_visible_edge_cases(text: str) -> None:
    assert has_visible(text) == any(is_visible(c) for c in text)


def test_admission_derives_each_plans_call_bounds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allow path priced the plan, then derived its bounds again to reserve them; a
    downgrade sorted the alternatives by a key that derived them per plan again."""
    from splitpin.operators.budget import BudgetGate, TenantLedger
    from tests.routing_helpers import Conversation, governance

    gov = governance(budgets={"tenants": {"acme-bank": {"limit_usd": 1.0}}, "window_s": 3600})
    gate = BudgetGate(gov, lambda: 1_800_000_000.0)
    derived: list[str] = []
    bounds = BudgetGate.call_bounds

    def spy(self: BudgetGate, plan, **kw):  # type: ignore[no-untyped-def]
        derived.append(plan.role)
        return bounds(self, plan, **kw)

    monkeypatch.setattr(BudgetGate, "call_bounds", spy)
    ledger = TenantLedger()
    routed = Conversation(gov).say("my card has not arrived yet")
    assert routed is not None
    verdict = gate.admit(ledger, routed)
    assert verdict.action == "allow" and derived == [verdict.plan.role]  # type: ignore[union-attr]
    derived.clear()
    long = Conversation(gov, "c-2").say("statement line " * 1500)  # long_context, or downgrade
    assert long is not None and long.plan is not None
    window = ledger.current
    assert window is not None
    ledger.spend(window).actual = round(0.9999 * 1e9)  # room for almost nothing
    verdict = gate.admit(ledger, long)
    assert verdict.action == "refuse"  # every alternative was priced: none fits
    roles = [p.role for p in (long.plan, *long.alternatives)]
    assert len(roles) == len(set(roles)) > 1
    assert sorted(derived) == sorted(roles), "a plan's bounds were derived twice"


DOC_TEXT = st.lists(
    st.sampled_from(
        ["InternalDoc-7", "Internal Doc 12", "\uff3bInternalDoc-3\uff3d", "\u200b", "doc", " "]
    ),
    max_size=10,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=DOC_TEXT)
def test_remembered_doc_ids_are_a_fresh_scan(text: str) -> None:
    from splitpin.providers.prompting import mentioned_doc_ids

    fresh = mentioned_doc_ids.__wrapped__(text)
    assert mentioned_doc_ids(text) == fresh
    assert mentioned_doc_ids(text) == fresh  # the remembered one


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["primary", "summary", "verify", "reroute", "replan", "pinned"]),
            st.sampled_from(["fast", "long_context", "compliance", "summarizer"]),
            st.integers(0, 300_000),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_remembered_call_bounds_are_the_priced_ones(calls: list[tuple[str, str, int]]) -> None:
    from splitpin.operators.budget import BudgetGate
    from tests.routing_helpers import governance

    gate = BudgetGate(governance())
    for purpose, role, counted in [*calls, *calls]:  # the second pass is remembered
        assert gate._bound(purpose, role, counted) == gate._priced(purpose, role, counted)  # type: ignore[arg-type]
    dearer = governance(roles={"fast": {"price_in_per_mtok": 99.0}})
    gate.governance = dearer  # a new version: nothing remembered from the old one is used
    for purpose, role, counted in calls:
        priced = BudgetGate(dearer)._priced(purpose, role, counted)  # type: ignore[arg-type]
        assert gate._bound(purpose, role, counted) == priced  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(
    moment=st.datetimes(
        timezones=st.one_of(st.just(UTC), st.timezones()),
        min_value=datetime(1, 1, 1),  # hypothesis takes naive bounds
        max_value=datetime(9999, 12, 31, 23, 59, 59),
    )
)
def test_the_utc_fast_path_accepts_exactly_what_the_round_trip_does(moment: datetime) -> None:
    from splitpin.schemas.wire import _representable_in_utc

    try:
        in_utc = moment.astimezone(UTC)
        datetime.fromtimestamp(in_utc.timestamp(), UTC)
    except (OverflowError, ValueError, OSError):
        with pytest.raises(ValueError, match="cannot be represented in UTC"):
            _representable_in_utc(moment)
    else:
        assert _representable_in_utc(moment) is moment
