"""`replies.verify: audit` through `splitpin run` on the real broker (local fleet).

With the bound at 0 every fast answer with a known confidence (the local fleet always
gives one) is confident, so exactly the events in the audit sample (a hash of the event id,
half of them here) may call the verifier: the others finish on the fast answer alone. The
audit topic gets one record per audited event; compliance-tagged events are still pinned
and answered only by the compliance role.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.operators.answering import audited
from splitpin.schemas import CostRecord, Reply, RoutingDecision, decode
from splitpin.schemas.audit_sample import AuditSample
from tests.factories import event_dict
from tests.flow_process import running_flow
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

FRACTION = 0.5
QUESTIONS = (
    "Where is my new card? It has not arrived yet.",
    "How do I top up my account with a bank transfer?",
    "Why was I charged a fee for a card payment abroad?",
    "My transfer to a friend is still pending, why is that?",
    "How can I change the PIN of my card?",
    "What exchange rate do you use for payments in another currency?",
    "Can I get a refund for a payment that was charged twice?",
    "How long does a bank transfer from another bank take to arrive?",
    "Why was my card declined at the supermarket today?",
    "How do I activate my new card in the app?",
    "Is there a limit on how much cash I can withdraw at an ATM?",
    "I made a payment to the wrong account, can it be reversed?",
)
COMPLIANCE = (
    "Can you help me with something on my account please?",
    "I need to dispute a transaction on my statement.",
)


def audit_governance(tmp_path: Path) -> Path:
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    config["replies"].update(verify="audit", verify_min_probability=0.0, audit_fraction=FRACTION)
    config["providers"]["mode"] = "local"
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_audit_mode_verifies_only_the_audit_sample_and_records_it(
    topic_settings: Any, tmp_path: Path
) -> None:
    settings: Settings = topic_settings(partitions=2, governance_path=audit_governance(tmp_path))
    routine = {f"v-{n}": text for n, text in enumerate(QUESTIONS)}
    pinned = {f"v-pin-{n}": text for n, text in enumerate(COMPLIANCE)}
    sample = {e for e in routine if audited(e, FRACTION)}
    assert 0 < len(sample) < len(routine)  # the test sees both sides of the sample
    producer = CheckedProducer(settings.bootstrap_servers)
    for n, (event_id, text) in enumerate({**routine, **pinned}.items()):
        tags = ("compliance",) if event_id in pinned else ()
        data = event_dict(event_id, f"c-{event_id}", text=text, at_s=n, tags=tags)
        producer.produce(settings.topic("events"), orjson.dumps(data), f"c-{event_id}".encode())
    producer.flush(15)
    ids = set(routine) | set(pinned)

    def finals(got: list[Any]) -> set[str]:
        return {
            r.reply_id for r in (decode(Reply, m.value() or b"") for m in got) if r.kind == "final"
        }

    def all_costed(got: list[Any]) -> bool:
        records = (decode(CostRecord, m.value() or b"") for m in got)
        return {r.event_id for r in records if r.last_call} >= ids

    log = tmp_path / "flow.log"
    with running_flow(settings, tmp_path / "recovery", log) as flow:
        bootstrap = settings.bootstrap_servers
        replies_in = read_until(
            bootstrap, settings.topic("replies"), lambda g: finals(g) >= ids, 120
        )
        costs_in = read_until(bootstrap, settings.topic("metrics"), all_costed, 60)
        audit_in = read_until(
            bootstrap, settings.topic("replies_audit"), lambda g: len(g) >= len(sample), 30
        )
        assert flow.poll() is None, log.read_text()[-3000:]
    decisions = {
        d.event_id: d
        for d in (
            decode(RoutingDecision, m.value() or b"")
            for m in read_to_end(settings.bootstrap_servers, settings.topic("decisions"))
        )
    }
    replies = [decode(Reply, m.value() or b"") for m in replies_in]
    calls = {
        (r.event_id, r.record_id.rpartition(":")[2])
        for r in (decode(CostRecord, m.value() or b"") for m in costs_in)
    }
    audits = [decode(AuditSample, m.value() or b"") for m in audit_in]

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
