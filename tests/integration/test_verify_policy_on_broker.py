"""`replies.verify: audit` through `splitpin run` on the real broker (local fleet).

With the bound at 0 every fast answer with a known confidence (the local fleet always
gives one) is confident, so exactly the events in the audit sample (a hash of the event id,
half of them here) may call the verifier: the others finish on the fast answer alone. The
audit topic gets one record per audited event; compliance-tagged events are still pinned
and answered only by the compliance role.

At the shipped bound (0.9) with every confident answer audited, the policy's input is the
agreement map (`replies.verify_evidence: fast_and_router`): an answer is confident exactly
when P(right | its confidence, the decision's intent probability, whether it cites that
intent's article) clears the bound, and the audit records carry that probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from splitpin.core.settings import Settings
from splitpin.operators.answering import audited
from splitpin.providers.calibration import fast_probability_given_router, probability_right
from splitpin.providers.knowledge_base import _package_kb, parse_articles
from splitpin.schemas import CostRecord, Reply, decode
from splitpin.schemas.audit_sample import AuditSample
from tests.factories import ROUTINE_QUESTIONS, event_dict
from tests.governance_files import save_config, shipped_config
from tests.kafka_helpers import decisions_by_event, run_until_answered

pytestmark = pytest.mark.integration

FRACTION = 0.5
QUESTIONS = ROUTINE_QUESTIONS
COMPLIANCE = (
    "Can you help me with something on my account please?",
    "I need to dispute a transaction on my statement.",
)


def audit_governance(tmp_path: Path, bound: float = 0.0, fraction: float = FRACTION) -> Path:
    config = shipped_config()
    config["replies"].update(verify="audit", verify_min_probability=bound, audit_fraction=fraction)
    config["providers"]["mode"] = "local"
    return save_config(config, tmp_path)


def test_audit_mode_verifies_only_the_audit_sample_and_records_it(
    topic_settings: Any, tmp_path: Path
) -> None:
    settings: Settings = topic_settings(partitions=2, governance_path=audit_governance(tmp_path))
    routine = {f"v-{n}": text for n, text in enumerate(QUESTIONS)}
    pinned = {f"v-pin-{n}": text for n, text in enumerate(COMPLIANCE)}
    sample = {e for e in routine if audited(e, FRACTION)}
    assert 0 < len(sample) < len(routine)  # the test sees both sides of the sample
    run = run_until_answered(
        settings,
        tmp_path,
        (
            event_dict(
                event_id,
                f"c-{event_id}",
                text=text,
                at_s=n,
                tags=("compliance",) if event_id in pinned else (),
            )
            for n, (event_id, text) in enumerate({**routine, **pinned}.items())
        ),
        also=[("replies_audit", lambda g: len(g) >= len(sample), 30)],
    )
    decisions = decisions_by_event(settings)
    replies = [decode(Reply, m.value() or b"") for m in run.replies]
    calls = {
        (r.event_id, r.record_id.rpartition(":")[2])
        for r in (decode(CostRecord, m.value() or b"") for m in run.costs)
    }
    audits = [decode(AuditSample, m.value() or b"") for m in run.also["replies_audit"]]

    # The classifier may pin a routine-looking question too: it is then checked as pinned.
    pinned_ids = set(pinned) | {e for e in routine if decisions[e].pinned}
    unpinned = set(routine) - pinned_ids
    sample &= unpinned
    assert sample and unpinned - sample  # both sides of the sample are seen
    for event_id in sorted(unpinned):
        decision = decisions[event_id]
        assert decision.tier != "trivial", decision
        verified = (event_id, "verify") in calls
        assert verified == (event_id in sample), (event_id, decision.reasons)
        (final,) = [r for r in replies if r.reply_id == event_id and r.kind == "final"]
        if event_id in sample:
            assert final.route == "verifier" and final.status in ("verified", "corrected")
        else:  # the fast answer stood alone: one call, no preliminary before it
            assert (final.route, final.status, final.calls) == (decision.role, "unverified", 1)
            assert [r.kind for r in replies if r.reply_id == event_id] == ["final"]
    assert sorted(a.event_id for a in audits) == sorted(sample)  # one record per audited event
    for record in audits:
        assert record.fast_probability >= 0.0 and record.config_version is not None
        assert record.agreed == (set(record.fast_doc_ids) == set(record.verifier_doc_ids))
    for event_id in sorted(pinned_ids):
        assert (decisions[event_id].role, decisions[event_id].pinned) == ("compliance", True)
        mine = [r for r in replies if r.reply_id == event_id]
        assert [(r.kind, r.route, r.status) for r in mine] == [("final", "compliance", "verified")]
        assert (event_id, "pinned") in calls and (event_id, "verify") not in calls
    agreed = sum(a.agreed for a in audits)
    print(f"\naudit: {len(sample)}/{len(routine)} audited, {agreed} agreed")


def _article_of_intent() -> dict[str, str]:
    articles = parse_articles(_package_kb("banking77")[0].decode().splitlines(), "kb", "banking77")
    return {a.intent: a.doc_id for a in articles if a.intent}


def test_the_router_agreement_decides_what_skips_the_verifier(
    topic_settings: Any, tmp_path: Path
) -> None:
    bound = 0.9
    path = audit_governance(tmp_path, bound=bound, fraction=1.0)
    # The fast pass sees the full search: narrowed to a sure intent's one article, the local
    # fast answer is sure on its own (no runner-up), so the map would add nothing to see.
    config = yaml.safe_load(path.read_text())
    config["knowledge"]["intent_sure_min_confidence"] = None
    path.write_text(yaml.safe_dump(config))
    settings: Settings = topic_settings(partitions=2, governance_path=path)
    ids = {f"g-{n}" for n in range(len(QUESTIONS))}
    # Every job has ended (its last CostRecord is out); audit records leave with the
    # verified final, so a short settle reads all of them.
    run = run_until_answered(
        settings,
        tmp_path,
        (event_dict(f"g-{n}", f"c-g-{n}", text=text, at_s=n) for n, text in enumerate(QUESTIONS)),
        also=[("replies_audit", lambda g: False, 3)],
    )
    decisions = decisions_by_event(settings)
    replies = [decode(Reply, m.value() or b"") for m in run.replies]
    audit_in = run.also["replies_audit"]
    audits = {a.event_id: a for a in (decode(AuditSample, m.value() or b"") for m in audit_in)}
    article = _article_of_intent()
    unpinned = {e for e in ids if not decisions[e].pinned and decisions[e].tier != "trivial"}
    assert unpinned
    beyond_fast_alone = 0
    for event_id in sorted(unpinned):
        decision = decisions[event_id]
        routed = [r for r in replies if r.reply_id == event_id]
        if event_id in audits:  # confident: its probability, recomputed, clears the bound
            record = audits[event_id]
            cites = bool(record.fast_doc_ids) and record.fast_doc_ids[0] == article.get(
                decision.intent or ""
            )
            expected = fast_probability_given_router(
                record.fast_confidence, decision.confidence, cites
            )
            assert record.fast_probability == expected and expected is not None
            assert expected >= bound
            alone = probability_right("fast", record.fast_confidence)
            beyond_fast_alone += alone is not None and alone < bound
        else:  # below the bound: verified, and a chat preliminary shows the draft was unsure
            assert routed[-1].route == "verifier", routed
            for draft in (r for r in routed if r.kind == "preliminary"):
                cites = bool(draft.citations) and draft.citations[0].doc_id == article.get(
                    decision.intent or ""
                )
                p = fast_probability_given_router(draft.confidence, decision.confidence, cites)
                assert p is not None and p < bound, (event_id, p)
    assert audits  # some answers are confident ...
    assert beyond_fast_alone  # ... that the fast answer's own confidence would not have let stand
    print(f"\nagreement: {len(audits)}/{len(unpinned)} confident, {beyond_fast_alone} thanks to it")
