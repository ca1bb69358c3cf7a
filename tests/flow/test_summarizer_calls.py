"""The summarizer role writes the summary of turns that left the window, through the flow.

A long conversation (the conversation window shrunk to 300 tokens so turns leave it
quickly) runs through the whole dataflow: classify, route, budget gate, answering calls
off the worker thread. Turns 3 and 6 push turns out of the window; turns 4 and 5 do not.
With the local fleet, exactly one summary call is made per change (its CostRecord, role
summarizer, `:summary`), turns 4 and 5 reuse it (no call of their own, though their prompts
carry the summary); every customer turn gets its final reply. With the summarizer behind a
failing endpoint (the wire fake answering 500), nothing is recorded for it and every turn
is still answered, on the extractive summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import load_settings
from splitpin.providers.prompting import SUMMARIZE_INSTRUCTIONS
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from tests.factories import T0_PAST_SKEW_S, event_dict, raw
from tests.governance_files import save_config, shipped_config
from tests.in_memory_flow import FlowOutput, run_in_memory
from tests.model_api_server import OPENAI_PATH, ModelApiServer, server_error

LONG = (
    "I ordered a new debit card last week because my old one is about to expire, and the "
    "app said it would arrive in three to five working days. It has not arrived yet and "
    "the delivery page shows nothing. I moved flat a month ago and updated my address in "
    "the app, so I wonder whether the card went to the new address or the old one. I need "
    "it for a trip on Friday. Could you tell me where the new card is and how long it will "
    "take? I have been a customer for years and this is the first time this has happened."
)
TURNS = (
    ("s-0", LONG),
    ("s-1", "Also: " + LONG),
    ("s-2", "Once more, in case it helps: " + LONG),  # s-0 leaves the window
    ("s-3", "Any news?"),  # nothing more leaves: the summary is reused
    ("s-4", "Thanks, waiting."),
    ("s-5", "Let me repeat the whole story: " + LONG),  # s-1 leaves too
)
PREFIX = "sum."


def write_governance(tmp_path: Path, **summarizer: Any) -> Path:
    config = shipped_config()
    config["conversation"]["window_tokens"] = 300
    config["context"]["summarizer"] = "model"
    config["context"]["summary_timeout_s"] = 10
    config["roles"]["summarizer"].update(summarizer)
    return save_config(config, tmp_path)


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    yield


def run_conversation(classifier: Classifier, governance_path: Path) -> FlowOutput:
    settings = load_settings(
        topic_prefix=PREFIX, governance_path=governance_path, max_past_skew_s=T0_PAST_SKEW_S
    )
    records = [
        raw(event_dict(event_id, "c-long", text=text, at_s=n * 20), offset=n)
        for n, (event_id, text) in enumerate(TURNS)
    ]
    return run_in_memory(settings, records, classifier)


def decoded(
    out: FlowOutput,
) -> tuple[dict[str, RoutingDecision], list[CostRecord], dict[str, Reply]]:
    decisions = {d.event_id: d for d in out.decoded(RoutingDecision, "decisions")}
    costs = out.decoded(CostRecord, "metrics")
    finals = [r for r in out.decoded(Reply, "replies") if r.kind == "final"]
    assert len(finals) == len({r.reply_id for r in finals}), "one final per event"
    return decisions, costs, {r.reply_id: r for r in finals}


def test_one_summary_call_per_window_change_reused_and_accounted(
    classifier: Classifier, tmp_path: Path, no_keys: None
) -> None:
    out = run_conversation(classifier, write_governance(tmp_path))
    decisions, costs, finals = decoded(out)
    assert set(finals) == {event_id for event_id, _ in TURNS}
    compacted = [decisions[event_id].compacted_turns for event_id, _ in TURNS]
    assert compacted == [0, 0, 1, 1, 1, 2], compacted
    assert not any(d.pinned for d in decisions.values()), "pinned traffic stays extractive"

    summaries = {c.record_id: c for c in costs if c.record_id.endswith(":summary")}
    assert set(summaries) == {"s-2:summary", "s-5:summary"}  # one per window change
    for record in summaries.values():
        assert record.role == "summarizer" and record.emulated and record.cost_usd > 0
        assert record.model == "local-summarizer"
    # The summary is a call of its job: the final reply counts it and its tokens.
    answered = {c.event_id: {x.record_id for x in costs if x.event_id == c.event_id} for c in costs}
    for event_id in ("s-2", "s-5"):
        assert finals[event_id].calls == len(answered[event_id])
    for event_id in ("s-3", "s-4"):  # same turns compacted: reused, nothing called for it
        assert f"{event_id}:summary" not in answered.get(event_id, set())
        assert finals[event_id].status != "withheld"


def test_a_failing_summarizer_falls_back_to_the_extractive_summary(
    classifier: Classifier, tmp_path: Path, no_keys: None
) -> None:
    with ModelApiServer() as api:
        api.default = server_error(500)
        path = write_governance(tmp_path, base_url=api.openai_url, retry_budget=0, timeout_s=5)
        out = run_conversation(classifier, path)
        requests = api.requests
    decisions, costs, finals = decoded(out)
    assert set(finals) == {event_id for event_id, _ in TURNS}
    assert all(r.status != "withheld" for r in finals.values()), finals
    assert not [c for c in costs if c.record_id.endswith(":summary")]
    assert all(c.role != "summarizer" for c in costs)
    # The summarizer was asked (and failed) for each window change; a failure is never
    # reused, so a turn over the same compacted turns may ask again, at most once each.
    summary_asks = [r for r in requests if r.path == OPENAI_PATH]
    assert 2 <= len(summary_asks) <= 4, len(summary_asks)
    for ask in summary_asks:
        system = ask.body["messages"][0]
        assert system["role"] == "system" and system["content"] == SUMMARIZE_INSTRUCTIONS
    assert decisions["s-5"].compacted_turns == 2
