"""Hedged verification through `splitpin run` on the real broker, latency emulated.

Email only ever shows the verified reply, so with `replies.hedging` on the verifier starts
with the fast pass instead of after it. The same email traffic runs through two flows,
hedging off then on (the local fleet sleeping per the roles' emulation profiles); each
event must get exactly one final, every call that billed has its CostRecord, and the last
statement of each job names exactly those calls. The time to the final (Kafka timestamps:
reply minus event) is printed with -s; timings are not asserted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import Settings
from splitpin.core.stats import nearest_rank, percentile
from splitpin.schemas import CostRecord, Reply, decode
from tests.factories import ROUTINE_QUESTIONS, event_dict
from tests.governance_files import save_config, shipped_config
from tests.kafka_helpers import FLOW_LOG, final_reply_ids, read_until, run_until_answered

pytestmark = pytest.mark.integration

QUESTIONS = ROUTINE_QUESTIONS[:10]
GAP_S = 0.4
"""Between events: a steady trickle, so no call waits for a slot and times are the calls'."""


def hedging_governance(tmp_path: Path, *, enabled: bool) -> Path:
    config = shipped_config()
    config["providers"].update(mode="local", emulate=True)
    config["replies"]["hedging"] = {"enabled": enabled, "email": "immediate"}
    folder = tmp_path / f"governance-{'on' if enabled else 'off'}"
    folder.mkdir()
    return save_config(config, folder)


def run_email(topic_settings: Any, tmp_path: Path, *, enabled: bool) -> dict[str, float]:
    """One flow, one warm-up event, then the questions as emails; seconds to each final."""
    path = hedging_governance(tmp_path, enabled=enabled)
    settings: Settings = topic_settings(partitions=2, governance_path=path)
    producer = CheckedProducer(settings.bootstrap_servers)  # one, kept warm between events
    topic = settings.topic("events")
    name = "on" if enabled else "off"

    def send(event_id: str, text: str, at_s: float) -> None:
        data = event_dict(event_id, f"c-{event_id}", text=text, channel="email", at_s=at_s)
        producer.produce(topic, orjson.dumps(data), f"c-{event_id}".encode())
        producer.flush(15)

    ids = {f"h-{name}-{n}" for n in range(len(QUESTIONS))}
    work = tmp_path / f"run-{name}"

    def traffic() -> None:
        send(f"warm-{name}", QUESTIONS[0], 0)  # the flow is up once this is answered
        warm = read_until(
            settings.bootstrap_servers,
            settings.topic("replies"),
            lambda g: f"warm-{name}" in final_reply_ids(g),
            120,
        )
        assert f"warm-{name}" in final_reply_ids(warm), (work / FLOW_LOG).read_text()[-3000:]
        for n, text in enumerate(QUESTIONS):
            send(f"h-{name}-{n}", text, n + 1)
            time.sleep(GAP_S)

    run = run_until_answered(
        settings,
        work,
        finals=ids,
        ended=ids | {f"warm-{name}"},
        while_running=traffic,
        settle_s=1.0,  # a hedge's loser may settle just after the final
        also=[("events", lambda g: len(g) > len(ids), 30)],
    )
    replies_in, costs_in, events_in = run.replies, run.costs, run.also["events"]

    sent = {}
    for message in events_in:
        event = orjson.loads(message.value() or b"")
        sent[event["event_id"]] = message.timestamp()[1] / 1000
    finals: dict[str, list[tuple[Reply, float]]] = {}
    for message in replies_in:
        reply = decode(Reply, message.value() or b"")
        if reply.reply_id in ids:
            assert reply.kind == "final", reply  # email: never a preliminary
            finals.setdefault(reply.reply_id, []).append((reply, message.timestamp()[1] / 1000))
    records: dict[str, list[CostRecord]] = {}
    for message in costs_in:
        record = decode(CostRecord, message.value() or b"")
        records.setdefault(record.event_id, []).append(record)

    seconds: dict[str, float] = {}
    for event_id in sorted(ids):
        # Exactly one final (a recovery could repeat it with the same identity; none here).
        assert len({(r.reply_id, r.revision) for r, _ in finals[event_id]}) == 1
        reply, at = finals[event_id][0]
        assert reply.status in ("verified", "corrected", "unverified", "withheld"), reply
        mine = records[event_id]
        billed = {r.record_id.rpartition(":")[2] for r in mine}
        assert billed <= {"primary", "verify", "reroute", "replan"}
        last = [r for r in mine if r.last_call]
        assert last and set(last[-1].job_calls) == billed, (event_id, mine)
        for at_n, record in enumerate(mine):  # no record after a statement that left it out
            if record.last_call:
                later = {r.record_id.rpartition(":")[2] for r in mine[at_n + 1 :]}
                assert later <= set(record.job_calls), (event_id, mine)
        if enabled:
            assert "verify" in billed or reply.status == "withheld", (event_id, mine)
        seconds[event_id] = at - sent[event_id]
    return seconds


def test_hedged_email_gets_its_final_with_every_call_accounted(
    topic_settings: Any, tmp_path: Path
) -> None:
    off = list(run_email(topic_settings, tmp_path, enabled=False).values())
    on = list(run_email(topic_settings, tmp_path, enabled=True).values())
    print(
        f"\nemail time to final, {len(on)} events each (emulated latency):"
        f"\n  hedging off: p50 {percentile(off, 50):.2f} s, p95 {nearest_rank(off, 95):.2f} s"
        f"\n  hedging on:  p50 {percentile(on, 50):.2f} s, p95 {nearest_rank(on, 95):.2f} s"
    )
