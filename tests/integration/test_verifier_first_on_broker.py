"""`replies.verifier_first: direct` through `splitpin run` on the real broker (local fleet).

The router's intent probability for the routine questions spans 0.39 to 0.99 (the shipped
heads), so at the bound 0.8 the agreement map says some fast answers cannot clear it
whatever they cite (router under ~0.72) and some can. Per event, from the decision on the
decisions topic and the shipped calibration: a predicted event is answered by the verifier
alone (no fast call, no preliminary, one verified final, its only CostRecord the
job's last, releasing the fast call's slot); any other routine event takes the fast pass
first as before; compliance-tagged events stay pinned to the compliance role; shopco, whose
budget excludes the verifier, keeps the fast pass for the same unsure question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from splitpin.core.settings import Settings
from splitpin.providers.calibration import fast_probability_given_router
from splitpin.schemas import CostRecord, Reply, decode
from tests.factories import ROUTINE_QUESTIONS, event_dict
from tests.governance_files import save_config, shipped_config
from tests.kafka_helpers import decisions_by_event, run_until_answered

pytestmark = pytest.mark.integration

BOUND = 0.8
COMPLIANCE = ("I need to dispute a transaction on my statement.",)
UNSURE = "Is there a limit on how much cash I can withdraw at an ATM?"
"""The router's intent probability is about 0.39: predictable, but shopco has no verifier."""


def test_an_unsure_router_sends_the_event_to_the_verifier_alone(
    topic_settings: Any, tmp_path: Path
) -> None:
    config = shipped_config()
    config["providers"]["mode"] = "local"
    config["replies"]["verifier_first"] = {"mode": "direct", "margin": 0.0}
    config["replies"].update(verify="audit", verify_min_probability=BOUND)
    config["replies"]["hedging"] = {"enabled": False}
    settings: Settings = topic_settings(partitions=2, governance_path=save_config(config, tmp_path))
    routine = {f"p-{n}": text for n, text in enumerate(ROUTINE_QUESTIONS)}
    pinned = {f"p-pin-{n}": text for n, text in enumerate(COMPLIANCE)}
    shopco = {"p-shop-0": UNSURE}
    asks = [
        event_dict(
            event_id,
            f"c-{event_id}",
            text=text,
            at_s=n,
            channel="email" if n % 3 == 0 else "chat",
            tags=("compliance",) if event_id in pinned else (),
            tenant_id="shopco" if event_id in shopco else "acme-bank",
        )
        for n, (event_id, text) in enumerate({**routine, **pinned, **shopco}.items())
    ]
    run = run_until_answered(settings, tmp_path, asks)
    decisions = decisions_by_event(settings)
    replies = [decode(Reply, m.value() or b"") for m in run.replies]
    records: dict[str, list[CostRecord]] = {}
    for message in run.costs:
        record = decode(CostRecord, message.value() or b"")
        records.setdefault(record.event_id, []).append(record)

    def calls(event_id: str) -> set[str]:
        return {r.record_id.rpartition(":")[2] for r in records.get(event_id, [])}

    predicted, kept = [], []
    for event_id in sorted(routine):
        decision = decisions[event_id]
        mine = [r for r in replies if r.reply_id == event_id]
        (final,) = [r for r in mine if r.kind == "final"]
        if decision.pinned or final.status == "clarify":
            continue  # the classifier's call, not this policy's
        assert (decision.role, decision.tier) == ("fast", "bounded"), decision
        assert decision.confidence is not None
        best = fast_probability_given_router(1.0, decision.confidence, True)
        assert best is not None
        if best < BOUND:
            predicted.append(event_id)
            assert calls(event_id) <= {"verify", "reroute"} and "verify" in calls(event_id)
            assert [r.kind for r in mine] == ["final"], mine  # no preliminary: no draft
            assert final.route in ("verifier", "compliance") and final.status != "corrected"
            last = [r for r in records[event_id] if r.last_call]
            assert last and set(last[-1].job_calls) == calls(event_id)  # primary released
        else:
            kept.append(event_id)
            assert "primary" in calls(event_id), (event_id, records.get(event_id))
    assert predicted and kept, (predicted, kept)  # both sides of the bound were seen
    for event_id in pinned:
        assert (decisions[event_id].role, decisions[event_id].pinned) == ("compliance", True)
        assert calls(event_id) == {"pinned"}
        (final,) = [r for r in replies if r.reply_id == event_id]
        assert (final.kind, final.route, final.status) == ("final", "compliance", "verified")
    shop = decisions["p-shop-0"]
    if not shop.pinned and shop.action == "dispatch":
        best = fast_probability_given_router(1.0, shop.confidence, True)
        assert best is not None and best < BOUND, shop  # predicted, were the verifier allowed
        assert "verify" not in calls("p-shop-0") and "primary" in calls("p-shop-0")
    print(f"\nverifier first: {len(predicted)} predicted, {len(kept)} fast pass first")
