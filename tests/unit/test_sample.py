"""The sample-traffic builder (on a tiny fixture corpus) and the shipped sample file.

Nothing here reads ../shared/data except the freshness check, which skips without it.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections import defaultdict
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest

from splitpin.app import sample
from splitpin.app.sample import (
    CHAT_SESSION_GAP,
    COMPLIANCE_INTENTS,
    HUGE_CONVERSATION_TOKENS,
    LONG_CONVERSATION_TOKENS,
    MAX_EVENT_BYTES,
    START,
    build_sample,
    sample_stats,
)
from splitpin.core.settings import REPO_ROOT
from splitpin.core.tokens import count_tokens
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.wire import decode

SHIPPED = REPO_ROOT / "data" / "sample" / "events.jsonl"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

BANKING = {
    "card_arrival": ["I am still waiting on my card?", "When will my new card arrive"],
    "exchange_rate": ["What exchange rates do you use?", "How do you set your exchange rates?"],
    "top_up_failed": ["My top up failed, why?", "The top-up did not work."],
    "transfer_not_received_by_recipient": ["My friend has not received my transfer."],
    "lost_or_stolen_card": ["Someone stole my card!", "I lost my card yesterday."],
    "compromised_card": ["I think my card details were stolen online."],
    # in train.csv but not in categories.json: must never be used
    "verify_my_identity": ["How do I verify my identity?"],
}
CATEGORIES = [i for i in BANKING if i != "verify_my_identity"]
CLINC_TRAIN = [
    ["hello there", "greeting"],
    ["hi, how are you", "greeting"],
    ["thanks so much", "thank_you"],
    ["bye for now", "goodbye"],
    ["are you a real person", "are_you_a_bot"],
    ["what is my checking balance", "balance"],
    ["i lost my credit card", "report_lost_card"],
    ["book a flight to paris", "book_flight"],
]
CLINC_DOMAINS = {
    "small_talk": ["greeting", "thank_you", "goodbye", "are_you_a_bot"],
    "banking": ["balance"],
    "credit_cards": ["report_lost_card"],
    "travel": ["book_flight"],
}
OOS_TRAIN = [["what size wipers does this car take", "oos"], ["how tall is everest", "oos"]]
DIALOGUES: list[dict[str, Any]] = [
    {
        "convo_id": 11,
        "scenario": {
            "personal": {"customer_name": "ada lovelace"},
            "flow": "product_defect",
            "subflow": "return_size",
        },
        "original": [
            ["agent", "Hi, how can I help you?"],
            ["customer", "I need to return some jeans, they are the wrong size."],
            ["action", "Account has been pulled up for Ada Lovelace."],
            ["agent", "Sure, may I have your order ID?"],
            ["customer", "Order ID: 123"],
            ["customer", "Thanks for all the help today."],
        ],
        "delexed": [],
    },
    {
        "convo_id": 12,
        "scenario": {
            "personal": {"customer_name": "alan t"},
            "flow": "shipping_issue",
            "subflow": "status",
        },
        "original": [["customer", "Where is my package?"], ["agent", "It ships tomorrow."]],
        "delexed": [],
    },
]


def _fixture_data(root: Path) -> Path:
    """A data dir with the shared layout and a handful of rows per file."""
    (root / "banking77").mkdir(parents=True)
    with (root / "banking77" / "train.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "category"])
        for intent, texts in BANKING.items():
            writer.writerows([text, intent] for text in texts)
    (root / "banking77" / "categories.json").write_text(json.dumps(CATEGORIES))
    (root / "clinc150").mkdir()
    data = {"train": CLINC_TRAIN, "val": [], "oos_train": OOS_TRAIN, "oos_val": []}
    (root / "clinc150" / "data.json").write_text(json.dumps(data))
    (root / "clinc150" / "domains.json").write_text(json.dumps(CLINC_DOMAINS))
    (root / "abcd").mkdir()
    (root / "abcd" / "abcd_sample.json").write_text(json.dumps(DIALOGUES))
    return root


def _read(path: Path) -> list[ConversationEvent]:
    return [decode(ConversationEvent, line) for line in path.read_bytes().splitlines()]


def _by_conversation(events: list[ConversationEvent]) -> dict[str, list[ConversationEvent]]:
    grouped: dict[str, list[ConversationEvent]] = defaultdict(list)
    for event in events:
        grouped[event.conversation_id].append(event)
    return grouped


def _tokens(events: list[ConversationEvent]) -> int:
    return sum(count_tokens(e.text, "cl100k_base") for e in events)


def _check_structure(events: list[ConversationEvent]) -> dict[str, list[ConversationEvent]]:
    """Requirements every generated file meets, whatever corpus it came from."""
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)), "event ids must be unique"
    assert [e.sent_at for e in events] == sorted(e.sent_at for e in events), "global time order"
    convs = _by_conversation(events)
    for cid, turns in convs.items():
        assert re.fullmatch(r"(chat|email)-\d{4}", cid)
        assert [e.event_id for e in turns] == [f"{cid}-{n:03d}" for n in range(1, len(turns) + 1)]
        assert {e.channel for e in turns} == {cid.split("-")[0]}
        assert len({e.tenant_id for e in turns}) == 1
        assert len({e.tags for e in turns}) == 1, "tags are per conversation"
        intents = {e.metadata.get("intent") for e in turns if e.metadata["source"] == "banking77"}
        tagged = turns[0].tags == ("compliance",)
        assert tagged == bool(intents & set(COMPLIANCE_INTENTS)), cid
        for e in turns:
            assert e.sent_at.utcoffset() == timedelta(0)
            assert e.sent_at >= START
            assert e.metadata["source"] in {"banking77", "clinc150", "abcd", "template"}
            if e.metadata["source"] == "template":
                assert e.role == "agent"
    return convs


@pytest.fixture(scope="module")
def fixture_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sample.SampleStats]:
    root = tmp_path_factory.mktemp("sample")
    data_dir = _fixture_data(root / "data")
    out = root / "out" / "events.jsonl"
    return out, build_sample(data_dir, out, seed=3, conversations=24)


def test_fixture_build_is_valid_and_meets_the_requirements(
    fixture_build: tuple[Path, sample.SampleStats],
) -> None:
    out, stats = fixture_build
    events = _read(out)
    convs = _check_structure(events)

    assert len(convs) == 24
    assert stats.events == len(events)
    assert stats == sample_stats(out, events)
    assert set(stats.conversations) == {"chat", "email"}
    assert stats.compliance_conversations >= 1
    assert stats.chat_session_gaps >= 1
    # two long acme-bank threads (one over 8,192) and the shopco escalation thread
    totals = {cid: _tokens(turns) for cid, turns in convs.items()}
    long_ids = [cid for cid, n in totals.items() if n > LONG_CONVERSATION_TOKENS]
    assert stats.long_conversations == len(long_ids) >= 3
    assert stats.max_conversation_tokens == max(totals.values()) > HUGE_CONVERSATION_TOKENS
    assert all(cid.startswith("email-") for cid in long_ids)
    assert {convs[cid][0].tenant_id for cid in long_ids} == {"acme-bank", "shopco"}
    assert all(len(line) <= MAX_EVENT_BYTES for line in out.read_bytes().splitlines())
    assert f"{stats.events} events in 24 conversations" in stats.describe()


def test_labels_point_at_real_rows_and_respect_categories(
    fixture_build: tuple[Path, sample.SampleStats],
) -> None:
    out, _ = fixture_build
    events = _read(out)
    banking_rows = [(t, i) for i, texts in BANKING.items() for t in texts]
    for e in events:
        source = e.metadata["source"]
        if source == "banking77":
            rows = e.metadata["rows"]
            assert isinstance(rows, list)
            for row in rows:
                assert isinstance(row, int)
                text, intent = banking_rows[row]
                assert text.rstrip(".?!") in e.text
                if row == rows[0]:
                    assert e.metadata["intent"] == intent
            assert e.metadata["intent"] != "verify_my_identity"  # not in categories.json
        elif source == "clinc150":
            assert e.metadata["intent"] not in {"report_lost_card", "book_flight"}
            pool = OOS_TRAIN if e.metadata["split"] == "oos_train" else CLINC_TRAIN
            rows = e.metadata["rows"]
            assert isinstance(rows, list)
            assert isinstance(rows[0], int)
            assert pool[rows[0]][0] in e.text
    assert any(e.metadata.get("domain") == "small_talk" for e in events)


def test_abcd_dialogues_replay_as_shopco_chats(
    fixture_build: tuple[Path, sample.SampleStats],
) -> None:
    out, _ = fixture_build
    convs = _by_conversation(_read(out))
    shop_chats = [
        t for t in convs.values() if t[0].tenant_id == "shopco" and t[0].channel == "chat"
    ]
    replayed = {t[0].metadata["convo_id"]: [(e.role, e.text) for e in t] for t in shop_chats}
    for dialogue in DIALOGUES:
        spoken = [(s, text) for s, text in dialogue["original"] if s != "action"]
        assert replayed[dialogue["convo_id"]] == spoken
    first = next(t for t in shop_chats if t[0].metadata["convo_id"] == 11)
    assert first[0].metadata == {
        "source": "abcd",
        "convo_id": 11,
        "flow": "product_defect",
        "subflow": "return_size",
    }
    # the first dialogue's customer escalates by email afterwards, pasting the chat
    escalation = next(
        t for t in convs.values() if t[0].tenant_id == "shopco" and t[0].channel == "email"
    )
    assert "Customer: Order ID: 123" in escalation[0].text
    assert escalation[0].sent_at > first[-1].sent_at


def test_chat_and_email_timing(fixture_build: tuple[Path, sample.SampleStats]) -> None:
    out, _ = fixture_build
    for turns in _by_conversation(_read(out)).values():
        steps = [b.sent_at - a.sent_at for a, b in itertools.pairwise(turns)]
        if turns[0].channel == "chat":
            # seconds to minutes, except a deliberate new session after > 30 min
            assert all(
                timedelta(0) < s <= timedelta(minutes=12) or s > CHAT_SESSION_GAP for s in steps
            )
        else:
            assert all(timedelta(hours=2) <= s <= timedelta(hours=30) for s in steps)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    data_dir = _fixture_data(tmp_path / "data")
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    build_sample(data_dir, a, seed=11, conversations=12)
    build_sample(data_dir, b, seed=11, conversations=12)
    build_sample(data_dir, c, seed=12, conversations=12)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file is renamed into place"


def test_too_few_conversations_is_refused(tmp_path: Path) -> None:
    data_dir = _fixture_data(tmp_path / "data")
    with pytest.raises(ValueError, match="conversations must be at least"):
        build_sample(data_dir, tmp_path / "x.jsonl", conversations=3)
    assert not (tmp_path / "x.jsonl").exists()


def test_module_entry_point_regenerates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = _fixture_data(tmp_path / "data")
    out = tmp_path / "events.jsonl"
    sample.main(
        ["--data-dir", str(data_dir), "--out", str(out), "--seed", "5", "--conversations", "15"]
    )
    assert "in 15 conversations" in capsys.readouterr().out
    assert len(_by_conversation(_read(out))) == 15


# -- the shipped file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> list[ConversationEvent]:
    return _read(SHIPPED)  # every line must decode, or this raises


def test_shipped_sample_meets_the_requirements(shipped: list[ConversationEvent]) -> None:
    convs = _check_structure(shipped)
    stats = sample_stats(SHIPPED, shipped)

    assert 400 <= stats.events <= 600
    assert stats.conversations["chat"] > 0
    assert stats.conversations["email"] > 0
    assert {e.tenant_id for e in shipped} == {"acme-bank", "shopco"}
    assert {e.role for e in shipped} == {"customer", "agent"}
    assert stats.compliance_conversations >= 3
    assert {e.channel for e in shipped if e.tags} == {"chat", "email"}
    assert stats.long_conversations >= 3
    assert stats.max_conversation_tokens > HUGE_CONVERSATION_TOKENS
    assert stats.chat_session_gaps >= 1
    assert all(len(line) <= MAX_EVENT_BYTES for line in SHIPPED.read_bytes().splitlines())
    sources = {e.metadata["source"] for e in shipped}
    assert sources == {"banking77", "clinc150", "abcd", "template"}
    assert any(e.metadata.get("intent") == "oos" for e in shipped)
    assert any(e.metadata.get("intent") == "greeting" for e in shipped)
    multi_turn = [t for t in convs.values() if len(t) >= 3]
    assert len(multi_turn) >= 30
    # email threads span days
    assert any(
        t[-1].sent_at - t[0].sent_at > timedelta(days=2)
        for t in convs.values()
        if t[0].channel == "email"
    )
    assert shipped[0].sent_at.astimezone(UTC).date() == START.date()


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_shipped_sample_is_what_the_builder_produces(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    build_sample(SHARED_DATA, out)
    assert out.read_bytes() == SHIPPED.read_bytes(), "run `python -m splitpin.app.sample`"
