"""Each single record that once stopped the whole flow, for good, on the real broker.

Issue 9: one record of each kind below stopped the flow for every tenant, and again on
every restart (the resume re-read it). All of them go through one flow run here, each
between valid events; then the flow is SIGKILLed and restarted from its snapshots, and
must stay up and keep answering (no crash loop).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import string
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message

from splitpin.app.flow_process import stop
from splitpin.core.kafka.admin import create_topics, delete_topics
from splitpin.core.settings import Settings, load_settings
from splitpin.schemas import DeadLetter, Reply, RoutingDecision, decode
from splitpin.schemas.dead_letter import DeadLetterReason
from tests.flow_process import kill_hard, start_flow
from tests.hostile import (
    Hostile,
    Published,
    answered,
    dead,
    now_utc,
    publish,
    valid_event,
    value_of,
)
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

NOW = now_utc()
VERSION: frozenset[DeadLetterReason] = frozenset({"unknown_schema_version", "schema_violation"})
SKEW: frozenset[DeadLetterReason] = frozenset({"event_time_skew"})
UNREPRESENTABLE: frozenset[DeadLetterReason] = frozenset({"event_time_skew", "schema_violation"})
"""No datetime in UTC (year 0, year 10000): a type error or skew, either is precise."""
OVERSIZE_BYTES = 900_000
"""Accepted by the broker (message.max.bytes ~1 MB) but over any dead letter's limit once
base64-encoded whole."""
AFTER_2200 = 6
"""Events of the same tenant after the year-2200 one, each in its own budget hour."""
WAIT_S = 90.0


def _pill(
    name: str, field_name: str, value: object, reasons: frozenset[DeadLetterReason]
) -> Hostile:
    data = valid_event(f"pill-{name}", "c-pill", NOW, "where is my card?")
    data[field_name] = value
    return dead(name, orjson.dumps(data), reasons, key=b"c-pill")


def _oversize() -> Hostile:
    rng = random.Random(9)
    data = valid_event("pill-oversize", "c-pill", NOW, "")
    pad = OVERSIZE_BYTES - len(orjson.dumps(data))
    # Incompressible text, so neither the producer's nor the sink's lz4 shrinks it.
    data["text"] = "".join(rng.choices(string.ascii_letters + string.digits, k=pad))
    value = orjson.dumps(data)
    assert len(value) == OVERSIZE_BYTES
    return dead("oversize_900kb", value, ("oversize",), key=b"c-pill")


EVENT_PILLS: dict[str, Hostile] = {
    "schema_version_list": _pill("schema_version_list", "schema_version", [1], VERSION),
    "schema_version_object": _pill("schema_version_object", "schema_version", {"v": 1}, VERSION),
    "sent_at_year_1_plus_14": _pill(
        "sent_at_year_1_plus_14", "sent_at", "0001-01-01T00:00:00+14:00", UNREPRESENTABLE
    ),
    "sent_at_year_9999_minus_14": _pill(
        "sent_at_year_9999_minus_14", "sent_at", "9999-12-31T23:59:59-14:00", UNREPRESENTABLE
    ),
    "sent_at_year_9999_utc": _pill(
        "sent_at_year_9999_utc", "sent_at", "9999-12-31T23:59:59Z", SKEW
    ),
    "oversize_900kb": _oversize(),
    "sent_at_year_2200": dead(
        "sent_at_year_2200",
        orjson.dumps(
            valid_event(
                "pill-2200", "c-shop-0", NOW.replace(year=2200), "refund?", tenant_id="shopco"
            )
        ),
        SKEW,
        key=b"c-shop-0",
    ),
}
METRICS_PILLS: dict[str, Hostile] = {
    "metrics_schema_version_list": dead(
        "metrics_schema_version_list",
        orjson.dumps({"schema_version": [1], "tenant_id": "acme-bank"}),
        VERSION,
        key=b"acme-bank",
        topic="metrics",
    ),
    "metrics_schema_version_object": dead(
        "metrics_schema_version_object",
        orjson.dumps({"schema_version": {"v": 1}, "tenant_id": "acme-bank"}),
        VERSION,
        key=b"acme-bank",
        topic="metrics",
    ),
}
ONLY = {name for name in os.environ.get("SPLITPIN_TEST_PILLS", "").split(",") if name}
"""Run a subset (comma-separated names) to see which single pill stops a given build."""
if ONLY:
    EVENT_PILLS = {k: v for k, v in EVENT_PILLS.items() if k in ONLY}
    METRICS_PILLS = {k: v for k, v in METRICS_PILLS.items() if k in ONLY}
PILLS = {**EVENT_PILLS, **METRICS_PILLS}


def _records() -> tuple[list[Hostile], dict[str, list[str]]]:
    """Valid events around each pill; -> records, pill name -> the events that follow it."""
    records: list[Hostile] = [
        answered("ok-start", "c-ok", NOW - timedelta(seconds=60), "I am still waiting on my card?")
    ]
    after: dict[str, list[str]] = {}
    for n, (name, pill) in enumerate(EVENT_PILLS.items()):
        records.append(pill)
        if name == "sent_at_year_2200":
            # Same tenant, one per budget hour: a window frozen in 2200 would refuse them.
            follow = [
                answered(
                    f"shop-{k}",
                    f"c-shop-{k}",
                    NOW - timedelta(hours=AFTER_2200 - k),
                    "can I get a refund for my order?",
                    tenant_id="shopco",
                )
                for k in range(AFTER_2200)
            ]
        else:
            follow = [
                answered(
                    f"ok-{n}",
                    "c-ok",
                    NOW - timedelta(seconds=50 - n),
                    "What can I do if my card still hasn't arrived after 2 weeks?",
                )
            ]
        records += follow
        after[name] = [r.event_id for r in follow if r.event_id]
    valid_ids = [r.event_id for r in records if r.event_id]
    for name in METRICS_PILLS:
        after[name] = valid_ids  # usage is read alongside: every event after it must pass
    return [*METRICS_PILLS.values(), *records], after


@dataclass
class PillRun:
    published: dict[str, Published]
    after: dict[str, list[str]]
    letters: dict[tuple[str, int, int], DeadLetter]
    letter_bytes: dict[tuple[str, int, int], int]
    dead_letter_max_bytes: int
    decisions: dict[str, list[RoutingDecision]]
    finals: Counter[str]
    alive_first: bool
    restart_answered: bool
    alive_restart: bool
    log: Path
    notes: list[str] = field(default_factory=list)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _decisions(messages: list[Message]) -> dict[str, list[RoutingDecision]]:
    out: dict[str, list[RoutingDecision]] = {}
    for message in messages:
        decision = decode(RoutingDecision, value_of(message))
        out.setdefault(decision.event_id, []).append(decision)
    return out


def _sources(letters: list[Message]) -> set[tuple[str, int, int]]:
    decoded = (decode(DeadLetter, value_of(m)) for m in letters)
    return {(d.source_topic, d.source_partition, d.source_offset) for d in decoded}


def _finals(messages: list[Message]) -> Counter[str]:
    return Counter(
        reply.reply_id
        for reply in (decode(Reply, value_of(m)) for m in messages)
        if reply.kind == "final"
    )


@pytest.fixture(scope="module")
def pill_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PillRun]:
    """One flow run over every pill, then a SIGKILL and a restart from the snapshots."""
    settings: Settings = load_settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:12]}.",
        partitions=1,
        # Dated now: the production bound, not the suite's wide one for the factories' T0.
        max_past_skew_s=Settings.model_fields["max_past_skew_s"].default,
    )
    create_topics(settings)
    tmp = tmp_path_factory.mktemp("pills")
    recovery, log = tmp / "recovery", tmp / "flow.log"
    try:
        records, after = _records()
        landed = publish(settings, records)
        published = {p.record.category: p for p in landed if p.record.category in PILLS}
        valid_ids = {r.event_id for r in records if r.event_id}
        bootstrap = settings.bootstrap_servers

        pill_sources = {(p.topic, p.partition, p.offset) for p in published.values()}
        flow = start_flow(settings, recovery, log)
        try:

            def all_final(got: list[Message]) -> bool:
                return flow.poll() is not None or set(_finals(got)) >= valid_ids

            replies = read_until(bootstrap, settings.topic("replies"), all_final, WAIT_S)
            letters_msgs = read_until(
                bootstrap,
                settings.topic("dead_letter"),
                lambda got: flow.poll() is not None or _sources(got) >= pill_sources,
                30,
            )
            alive_first = flow.poll() is None
        finally:
            if flow.poll() is None:
                kill_hard(flow)

        # Restart from the snapshots: the pills are behind it or re-read, never fatal.
        restarted = start_flow(settings, recovery, log)
        try:
            publish(settings, [answered("after-restart", "c-ok", now_utc(), "hello, my card?")])
            got = read_until(
                bootstrap,
                settings.topic("decisions"),
                lambda m: restarted.poll() is not None or "after-restart" in _decisions(m),
                60,
            )
            restart_answered = "after-restart" in _decisions(got)
            time.sleep(3)  # a crash loop shows within a few seconds of the resume
            alive_restart = restarted.poll() is None
        finally:
            stop(restarted, signal.SIGTERM)

        decisions = _decisions(
            read_until(bootstrap, settings.topic("decisions"), lambda _: False, 3)
        )
        letters, sizes = {}, {}
        for message in letters_msgs:
            letter = decode(DeadLetter, value_of(message))
            where = (letter.source_topic, letter.source_partition, letter.source_offset)
            letters[where], sizes[where] = letter, len(value_of(message))
        yield PillRun(
            published,
            after,
            letters,
            sizes,
            settings.dead_letter_max_bytes,
            decisions,
            _finals(replies),
            alive_first,
            restart_answered,
            alive_restart,
            log,
        )
    finally:
        delete_topics(kafka_bootstrap, settings.all_topics().values())


@pytest.mark.parametrize("pill", sorted(PILLS))
def test_pill_is_dead_lettered_with_a_reason(pill_run: PillRun, pill: str) -> None:
    where = pill_run.published[pill]
    letter = pill_run.letters.get((where.topic, where.partition, where.offset))
    assert letter is not None, f"{pill} not dead-lettered; flow log:\n{pill_run.log_tail()}"
    assert letter.reason in where.record.reasons, (letter.reason, letter.detail)
    assert letter.detail
    assert letter.value_bytes == len(where.record.value or b"")


def test_oversize_dead_letter_fits_and_keeps_the_digest(pill_run: PillRun) -> None:
    if "oversize_900kb" not in PILLS:
        pytest.skip("not in SPLITPIN_TEST_PILLS")
    where = pill_run.published["oversize_900kb"]
    letter = pill_run.letters.get((where.topic, where.partition, where.offset))
    assert letter is not None, pill_run.log_tail()
    assert letter.truncated
    assert letter.value_sha256 == hashlib.sha256(where.record.value or b"").hexdigest()
    size = pill_run.letter_bytes[(where.topic, where.partition, where.offset)]
    assert size <= pill_run.dead_letter_max_bytes
    assert letter.value_b64 and len(letter.value_b64) > size // 2, "keeps as much as fits"


@pytest.mark.parametrize("pill", sorted(PILLS))
def test_every_valid_event_after_the_pill_is_answered_once(pill_run: PillRun, pill: str) -> None:
    for event_id in pill_run.after[pill]:
        assert pill_run.decisions.get(event_id), (
            f"{event_id} (after {pill}) has no decision; flow log:\n{pill_run.log_tail()}"
        )
        assert pill_run.finals[event_id] == 1, f"{event_id}: {pill_run.finals[event_id]} finals"


def test_year_2200_event_does_not_freeze_its_tenants_budget(pill_run: PillRun) -> None:
    if "sent_at_year_2200" not in PILLS:
        pytest.skip("not in SPLITPIN_TEST_PILLS")
    for event_id in pill_run.after["sent_at_year_2200"]:
        decisions = pill_run.decisions.get(event_id)
        assert decisions, pill_run.log_tail()
        decision = decisions[0]
        assert decision.action == "dispatch", decision.reasons
        assert not any(r.startswith("budget:") or "budget" in r for r in decision.reasons), (
            decision.reasons
        )


def test_flow_stays_up_through_every_pill(pill_run: PillRun) -> None:
    assert pill_run.alive_first, pill_run.log_tail()


def test_restart_from_snapshot_does_not_crash_loop(pill_run: PillRun) -> None:
    assert pill_run.restart_answered, pill_run.log_tail()
    assert pill_run.alive_restart, pill_run.log_tail()
