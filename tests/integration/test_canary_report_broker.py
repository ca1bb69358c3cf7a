"""`splitpin canary report` on the real broker: the hand-checked fixture written to a
primary's and a canary's topics reads back to the very same comparison, the time range
cuts by the events' Kafka timestamps, and `canary watch` publishes its windows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from splitpin.app.canary_report import (
    COMPARISON_TOPIC,
    canary_settings,
    load_labels,
    read_comparison,
    to_json,
    watch,
)
from splitpin.core.kafka.admin import create_topics, delete_topics
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.operators.comparison import compare
from splitpin.schemas.governance import PromotionCriteria
from tests.factories import T0, event_dict
from tests.unit.test_canary_report import FIXTURE, _lines, _side

BASE_MS = int(T0.timestamp() * 1000)
SIDE_TOPICS = {
    "decisions": "decisions",
    "replies": "replies",
    "metrics": "metrics",
    "validation-failures": "validation_failures",
}


def _publish(settings: Settings, canary: Settings) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for row in _lines(FIXTURE / "events.jsonl"):
        event = event_dict(row["event_id"], row["conversation_id"], at_s=row["timestamp_ms"] / 1000)
        producer.produce(
            settings.topic("events"),
            orjson.dumps(event),
            row["conversation_id"].encode(),
            timestamp=BASE_MS + row["timestamp_ms"],
        )
    for side, target in (("primary", settings), ("canary", canary)):
        for file, name in SIDE_TOPICS.items():
            for row in _lines(FIXTURE / side / f"{file}.jsonl"):
                record: dict[str, Any] = row.get("record", row)
                stamp = BASE_MS + row["timestamp_ms"] if "record" in row else BASE_MS + 9000
                producer.produce(target.topic(name), orjson.dumps(record), timestamp=stamp)
    assert producer.flush(30) == 0


def test_report_reads_both_topologies_back_to_the_fixture_figures(
    topic_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = topic_settings()
    canary = canary_settings(settings)
    names = [canary.topic(n) for n in SIDE_TOPICS.values()]
    create_topics(canary, names=names)
    try:
        _publish(settings, canary)
        labels = load_labels(FIXTURE / "labels.jsonl")
        read = read_comparison(settings, labels=labels)
        expected = compare(_side("primary"), _side("canary"), PromotionCriteria(), labels)
        assert to_json(read) == to_json(expected)
        assert read.overall.compared == 5
        # [since, until) on the events' Kafka timestamps: e1 (1000), e2 (2000), e3 (3000).
        since = T0.fromtimestamp((BASE_MS + 1000) / 1000, T0.tzinfo)
        until = T0.fromtimestamp((BASE_MS + 3500) / 1000, T0.tzinfo)
        cut = read_comparison(settings, since=since, until=until)
        assert cut.overall.primary.events == 3
        assert [r.route for r in cut.routes] == ["fast"]
    finally:
        delete_topics(settings.bootstrap_servers, names)


def test_watch_publishes_each_closed_window(topic_settings: Callable[..., Settings]) -> None:
    settings = topic_settings().model_copy(update={"metrics_port": 0})
    canary = canary_settings(settings)
    names = [canary.topic(n) for n in SIDE_TOPICS.values()]
    create_topics(canary, names=names)
    out = canary.topic_prefix + COMPARISON_TOPIC
    done = threading.Event()
    lines: list[str] = []
    worker = threading.Thread(
        target=watch, kwargs={"settings": settings, "echo": lines.append, "stop": done.is_set}
    )
    try:
        _publish(settings, canary)
        # Every fixture reply lies in the 300 s window starting at BASE_MS (T0 is 09:00):
        # it closes once both topics carry a reply stamped past its end plus the 60 s grace.
        late = _lines(FIXTURE / "primary" / "replies.jsonl")[-1]["record"]
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
        for topic in (settings.topic("replies"), canary.topic("replies")):
            producer.produce(
                topic, orjson.dumps({**late, "reply_id": "e-late"}), timestamp=BASE_MS + 400_000
            )
        assert producer.flush(30) == 0
        worker.start()
        deadline = time.monotonic() + 60
        records: list[Any] = []
        while not records and time.monotonic() < deadline:
            time.sleep(1)
            if lines:  # the output topic exists once the watcher printed its first line
                records = [
                    orjson.loads(m.value() or b"")
                    for m in read_to_end(settings.bootstrap_servers, out)
                ]
        [record] = records
        assert (record["window_start_ms"], record["window_end_ms"]) == (BASE_MS, BASE_MS + 300_000)
        # Live, from the replies alone: the same five joined finals and 4/5 agreeing.
        assert record["overall"]["compared"] == 5
        assert record["overall"]["agreement"] == 0.8
        assert record["verdict"] == "HOLD"
    finally:
        done.set()
        worker.join(30)
        delete_topics(settings.bootstrap_servers, [*names, out])
