"""Helpers for tests that talk to the session's real Kafka broker (see conftest.py)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from splitpin.core.kafka.broker import LocalBroker
from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.schemas import CostRecord, Reply, RoutingDecision, decode


@dataclass(frozen=True)
class KafkaBackend:
    """Which broker this test session uses; `broker` is set only for a LocalBroker."""

    bootstrap: str
    kind: Literal["env", "testcontainers", "local"]
    broker: LocalBroker | None = None


class TopicSettingsFactory(Protocol):
    """`topic_settings(partitions=1, **overrides)` -> Settings whose topics exist."""

    def __call__(self, partitions: int = 1, **overrides: object) -> Settings: ...


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (all held open while choosing)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Message]], bool],
    timeout_s: float,
    *,
    config: Mapping[str, Any] | None = None,
) -> list[Message]:
    """Read `topic` from the beginning until `done(records)` holds or the time runs out.

    Uses a throwaway consumer group and explicit assignment of every partition, so no
    group rebalance delays the read and no committed offset leaks into other tests.
    Returns what it got; the caller asserts on the count and contents. `config` takes
    `client_config(settings)` (security keys) for a secured broker.
    """
    consumer = Consumer(
        {
            **(config or {}),
            "bootstrap.servers": bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "logger": LIBRDKAFKA_LOGGER,
        }
    )
    records: list[Message] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10.0).topics[topic]
        if metadata.error is not None:
            msg = f"cannot read {topic}: {metadata.error}"
            raise AssertionError(msg)
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(metadata.partitions)]
        )
        deadline = time.monotonic() + timeout_s
        while not done(records) and time.monotonic() < deadline:
            batch = consumer.consume(
                num_messages=500, timeout=min(0.5, max(0.0, deadline - time.monotonic()))
            )
            for message in batch:
                error = message.error()
                if error is None:
                    records.append(message)
                elif error.code() != KafkaError._PARTITION_EOF:
                    msg = f"error reading {topic}: {error.str()}"
                    raise AssertionError(msg)
    finally:
        consumer.close()
    return records


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[Message]:
    """Read `topic` from the beginning until `expected` records arrived or time ran out."""
    return read_until(bootstrap, topic, lambda records: len(records) >= expected, timeout_s)


def publish_events(settings: Settings, events: Iterable[Mapping[str, Any]]) -> None:
    """Each event to the flow's events topic, keyed by its conversation (as the ingest
    door expects), then flushed: every one acknowledged before this returns."""
    producer = CheckedProducer(settings.bootstrap_servers)
    for event in events:
        key = str(event["conversation_id"]).encode()
        producer.produce(settings.topic("events"), orjson.dumps(event), key)
    producer.flush(15)


def final_reply_ids(messages: Iterable[Message]) -> set[str]:
    """Events that have their final reply among these `replies` records."""
    replies = (decode(Reply, m.value() or b"") for m in messages)
    return {r.reply_id for r in replies if r.kind == "final"}


def ended_event_ids(messages: Iterable[Message]) -> set[str]:
    """Events whose answering job has stated its last CostRecord among these `metrics`
    records (last_call): no call of theirs follows."""
    records = (decode(CostRecord, m.value() or b"") for m in messages)
    return {r.event_id for r in records if r.last_call}


def decisions_by_event(settings: Settings) -> dict[str, RoutingDecision]:
    """Every decision on the flow's `decisions` topic, by event id (read to its end)."""
    messages = read_to_end(settings.bootstrap_servers, settings.topic("decisions"))
    decisions = (decode(RoutingDecision, m.value() or b"") for m in messages)
    return {d.event_id: d for d in decisions}
