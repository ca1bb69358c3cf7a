"""The running flow process on a real broker: malformed input never stops it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import Settings
from splitpin.schemas import DeadLetter, RoutingDecision, decode
from tests.factories import event_dict
from tests.flow_process import running_flow
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

MALFORMED: dict[str, tuple[bytes | None, bytes]] = {
    "not_json": (b"c-bad", b"this is not json"),
    "invalid_utf8": (b"c-bad", b'{"text": "\xff\xfe"}'),
    "not_an_object": (None, b'"just a string"'),
    "wrong_types": (b"c-bad", orjson.dumps({**event_dict("w", "c-bad"), "text": ["a"]})),
    "missing_fields": (b"c-bad", orjson.dumps({"schema_version": 1, "event_id": "m"})),
    "empty_text": (b"c-bad", orjson.dumps(event_dict("x", "c-bad", text=""))),
    "unknown_version": (b"c-bad", orjson.dumps({**event_dict("u", "c-bad"), "schema_version": 7})),
    "oversize": (b"c-bad", orjson.dumps(event_dict("o", "c-bad", text="y" * 5000))),
    "naive_sent_at": (
        b"c-bad",
        orjson.dumps({**event_dict("n", "c-bad"), "sent_at": "2026-11-02T09:00:00"}),
    ),
}
EXPECTED_REASON = {
    "not_json": "not_json",
    "invalid_utf8": "invalid_utf8",
    "not_an_object": "not_an_object",
    "wrong_types": "schema_violation",
    "missing_fields": "schema_violation",
    "empty_text": "schema_violation",
    "unknown_version": "unknown_schema_version",
    "oversize": "oversize",
    "naive_sent_at": "schema_violation",
}


def test_malformed_battery_dead_letters_and_the_flow_keeps_running(
    topic_settings,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings: Settings = topic_settings(partitions=2)
    events_topic = settings.topic("events")
    producer = CheckedProducer(settings.bootstrap_servers)
    # Valid traffic before, between and after the malformed records.
    producer.produce(events_topic, orjson.dumps(event_dict("ok-0", "c-ok")), b"c-ok")
    for key, value in MALFORMED.values():
        producer.produce(events_topic, value, key)
    producer.produce(events_topic, orjson.dumps(event_dict("ok-1", "c-ok", at_s=5)), b"c-ok")
    producer.flush(15)

    log = tmp_path / "flow.log"
    with running_flow(
        settings, tmp_path / "recovery", log, SPLITPIN_MAX_EVENT_BYTES="4096"
    ) as flow:
        letters = read_until(
            settings.bootstrap_servers,
            settings.topic("dead_letter"),
            lambda got: len(got) >= len(MALFORMED),
            60,
        )
        # After the whole battery, the same process still answers new events.
        producer.produce(events_topic, orjson.dumps(event_dict("ok-2", "c-ok", at_s=9)), b"c-ok")
        producer.flush(15)
        decisions = read_until(
            settings.bootstrap_servers,
            settings.topic("decisions"),
            lambda got: len(got) >= 3,
            60,
        )
        assert flow.poll() is None, log.read_text()[-3000:]

    reasons = sorted(decode(DeadLetter, m.value()).reason for m in letters)
    assert reasons == sorted(EXPECTED_REASON.values())
    for message in letters:
        letter = decode(DeadLetter, message.value())
        assert letter.source_topic == events_topic
        assert letter.source_offset >= 0 and letter.detail
    ids = [decode(RoutingDecision, m.value()).event_id for m in decisions]
    assert ids == ["ok-0", "ok-1", "ok-2"]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (.ci/run installs it)")
def test_events_from_kcat_are_processed_like_any_other(
    topic_settings,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings: Settings = topic_settings()
    lines = [
        orjson.dumps(event_dict("kc-0", "c-kcat", text="hello from kcat")),
        orjson.dumps(event_dict("kc-1", "c-kcat", text="stolen card", tags=("compliance",))),
        b"kcat garbage",
    ]
    subprocess.run(
        ["kcat", "-P", "-b", settings.bootstrap_servers, "-t", settings.topic("events")],
        input=b"\n".join(lines) + b"\n",
        check=True,
        timeout=30,
    )
    with running_flow(settings, tmp_path / "recovery", tmp_path / "flow.log"):
        decisions = read_until(
            settings.bootstrap_servers, settings.topic("decisions"), lambda got: len(got) >= 2, 60
        )
        letters = read_until(
            settings.bootstrap_servers, settings.topic("dead_letter"), lambda got: len(got) >= 1, 30
        )
    roles = {
        decode(RoutingDecision, m.value()).event_id: decode(RoutingDecision, m.value()).role
        for m in decisions
    }
    assert roles == {"kc-0": "fast", "kc-1": "compliance"}
    assert [decode(DeadLetter, m.value()).reason for m in letters] == ["not_json"]
