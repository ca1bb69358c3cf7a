"""Helpers for tests that talk to the session's real Kafka broker (see conftest.py)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from splitpin.core.kafka.broker import LocalBroker
from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.schemas import CostRecord, Reply, RoutingDecision, decode
from tests.flow_process import running_flow


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


FLOW_LOG = "flow.log"
"""The flow's log file inside `run_until_answered`'s `work_dir`."""


@dataclass(frozen=True)
class AnsweredRun:
    """What `run_until_answered` read while the flow was up."""

    replies: list[Message]
    costs: list[Message]
    also: dict[str, list[Message]]
    """By topic name (`settings.topic(name)`), in the order asked."""
    log: Path


def run_until_answered(
    settings: Settings,
    work_dir: Path,
    events: Iterable[Mapping[str, Any]] = (),
    *,
    finals: Set[str] | None = None,
    ended: Set[str] | None = None,
    while_running: Callable[[], object] | None = None,
    also: Sequence[tuple[str, Callable[[list[Message]], bool], float]] = (),
    settle_s: float = 0.0,
) -> AnsweredRun:
    """Publish `events`, run `splitpin run` until every one is answered, read the topics back.

    The scaffold of the broker tests that judge whole answers: the events go out before the
    flow starts (`while_running` runs once it has started, for traffic that must be timed);
    `replies` is read until every id in `finals` (default: the events' ids) has its final
    reply, `metrics` until every id in `ended` (default: `finals`) has its job's last
    CostRecord; after `settle_s` (a hedge's loser may bill just after the final) `metrics`
    is read again; then each `also` topic until its predicate holds or its seconds run out.
    A missing final or a flow that died fails here with the log's tail. Recovery state and
    the log live in `work_dir`.
    """
    published = list(events)
    if published:
        publish_events(settings, published)
    want = set(finals) if finals is not None else {str(e["event_id"]) for e in published}
    stop = set(ended) if ended is not None else want
    bootstrap = settings.bootstrap_servers
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / FLOW_LOG
    with running_flow(settings, work_dir / "recovery", log) as flow:
        if while_running is not None:
            while_running()
        replies = read_until(
            bootstrap, settings.topic("replies"), lambda g: final_reply_ids(g) >= want, 120
        )
        assert final_reply_ids(replies) >= want, log.read_text()[-3000:]
        costs = read_until(
            bootstrap, settings.topic("metrics"), lambda g: ended_event_ids(g) >= stop, 60
        )
        if settle_s:
            time.sleep(settle_s)
            got = len(costs)
            costs = read_until(bootstrap, settings.topic("metrics"), lambda g: len(g) >= got, 30)
        read = {
            name: read_until(bootstrap, settings.topic(name), done, timeout_s)
            for name, done, timeout_s in also
        }
        assert flow.poll() is None, log.read_text()[-3000:]
    return AnsweredRun(replies=replies, costs=costs, also=read, log=log)
