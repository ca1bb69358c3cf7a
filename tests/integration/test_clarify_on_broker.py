"""The clarify reply through `splitpin run` on the real broker (local fleet).

An out-of-scope message to a tenant whose knowledge base the router's intents describe
(acme-bank: banking77) gets one final reply, status `clarify`, the configured text, no
citation, no model call and no cost. The same message to a tenant whose KB the router does
not describe (shopco: ABCD) is answered from retrieval with a citation, and an in-scope
banking question to acme-bank gets a cited, verified answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from splitpin.core.settings import Settings
from splitpin.schemas import CostRecord, Reply, decode
from tests.factories import event_dict
from tests.governance_files import save_config, shipped_config
from tests.kafka_helpers import decisions_by_event, run_until_answered

pytestmark = pytest.mark.integration

OUT_OF_SCOPE = (
    "How tall is Mount Everest?",
    "What year did the Roman empire fall?",
    "Who won the football world cup in 2018?",
)
IN_SCOPE = (
    "Where is my new card? It has not arrived yet.",
    "How do I top up my account with a bank transfer?",
)


def local_governance(tmp_path: Path) -> Path:
    config = shipped_config()
    config["providers"]["mode"] = "local"
    return save_config(config, tmp_path)


def test_out_of_scope_gets_clarify_without_a_call_in_scope_gets_a_cited_answer(
    topic_settings: Any, tmp_path: Path
) -> None:
    settings: Settings = topic_settings(partitions=2, governance_path=local_governance(tmp_path))
    events: dict[str, tuple[str, str]] = {}  # event_id -> (tenant, text)
    for n, text in enumerate(OUT_OF_SCOPE):
        events[f"oos-bank-{n}"] = ("acme-bank", text)
        events[f"oos-shop-{n}"] = ("shopco", text)
    for n, text in enumerate(IN_SCOPE):
        events[f"in-bank-{n}"] = ("acme-bank", text)
    answered = {e for e in events if not e.startswith("oos-bank")}
    run = run_until_answered(
        settings,
        tmp_path,
        (
            event_dict(event_id, f"c-{event_id}", text=text, at_s=n, tenant_id=tenant)
            for n, (event_id, (tenant, text)) in enumerate(events.items())
        ),
        ended=answered,  # a clarification makes no call, so no CostRecord ends its job
    )
    decisions = decisions_by_event(settings)
    replies = [decode(Reply, m.value() or b"") for m in run.replies]
    calls = [decode(CostRecord, m.value() or b"") for m in run.costs]
    clarify = settings.governance.replies.clarify_reply

    for event_id in events:
        decision = decisions[event_id]
        mine = [r for r in replies if r.reply_id == event_id]
        made = [c for c in calls if c.event_id == event_id]
        (final,) = [r for r in mine if r.kind == "final"]
        if event_id.startswith("oos"):
            # The router's verdict is the premise: without it this test says nothing.
            assert decision.features["out_of_scope"] is True, decision.reasons
            assert not decision.pinned and decision.tier != "trivial", decision.reasons
        if event_id.startswith("oos-bank"):
            assert [(r.kind, r.status, r.text, r.citations) for r in mine] == [
                ("final", "clarify", clarify, ())
            ]
            assert (final.calls, final.cost_usd, final.tokens_in) == (0, 0.0, 0)
            assert made == []  # no fast call, no verifier call
        elif event_id.startswith("oos-shop"):  # ABCD: the router cannot judge its scope
            assert final.status != "clarify" and final.citations, final
            assert all(c.source.startswith("kb:abcd/") for c in final.citations)
            assert made, final  # a model answered (shopco's budget may leave out the verifier)
        else:
            assert not decision.features["out_of_scope"], decision.reasons
            # Verified, corrected, or final from a confident fast pass (the shipped audit
            # policy): an answer with a citation either way, never a clarification.
            assert final.status in ("verified", "corrected", "unverified"), final
            assert final.citations, final
            assert all(c.source.startswith("kb:banking77/") for c in final.citations)
            if final.status != "unverified":
                assert any(c.record_id.endswith(":verify") for c in made), made
