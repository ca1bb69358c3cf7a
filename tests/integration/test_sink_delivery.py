"""A record Kafka refuses must stop the flow loudly, never vanish (real broker)."""

from __future__ import annotations

import random
import time

import pytest
from bytewax.testing import TestingSource, run_main
from confluent_kafka.admin import AdminClient, NewTopic

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import Settings
from splitpin.errors import DeliveryError
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import CheckedKafkaSink, OutRecord
from tests.factories import event_dict, raw
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


def _shrink_topic(bootstrap: str, topic: str, max_bytes: int) -> None:
    """Recreate `topic` so the broker rejects records larger than `max_bytes`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([topic]).values():
        future.result()
    for _ in range(50):
        futures = admin.create_topics(
            [NewTopic(topic, 1, 1, config={"max.message.bytes": str(max_bytes)})]
        )
        try:
            for future in futures.values():
                future.result()
            return
        except Exception as exc:  # deletion is asynchronous: retry while it completes
            if "marked for deletion" not in str(exc) and "already exists" not in str(exc):
                raise
            time.sleep(0.2)
    pytest.fail(f"could not recreate {topic}")


def test_acknowledged_records_arrive_with_their_keys(topic_settings) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings()
    sink = CheckedKafkaSink(
        settings.bootstrap_servers, delivery_timeout_ms=10_000, flush_timeout_s=15
    ).build("out", 0, 1)
    topic = settings.topic("decisions")
    sink.write_batch([OutRecord(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(20)])
    sink.close()
    got = consume_all(settings.bootstrap_servers, topic, 20, 20.0)
    assert sorted((m.key(), m.value()) for m in got) == sorted(
        (f"k{i}".encode(), f"v{i}".encode()) for i in range(20)
    )


def test_broker_rejection_raises_from_write_batch(topic_settings) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings()
    topic = settings.topic("decisions")
    _shrink_topic(settings.bootstrap_servers, topic, 256)
    sink = CheckedKafkaSink(
        settings.bootstrap_servers, delivery_timeout_ms=10_000, flush_timeout_s=15
    ).build("out", 0, 1)
    with pytest.raises(DeliveryError, match=r"too large|MSG_SIZE_TOO_LARGE"):
        # Incompressible bytes: the producer compresses, and 2 KB of one letter would fit.
        sink.write_batch([OutRecord(topic, b"k", random.Random(0).randbytes(4096))])


def test_unreachable_broker_raises_within_the_bounded_flush() -> None:
    producer = CheckedProducer("127.0.0.1:9", delivery_timeout_ms=1_500)
    producer.produce("nowhere", b"value", b"key")
    with pytest.raises(DeliveryError, match=r"1 record\(s\) not delivered"):
        producer.flush(10.0)


def test_flow_stops_when_a_decision_cannot_be_delivered(topic_settings, classifier) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = topic_settings()
    _shrink_topic(settings.bootstrap_servers, settings.topic("decisions"), 256)
    source = TestingSource([raw(event_dict("e-1", "c-1"))])
    with pytest.raises(Exception) as excinfo:  # Bytewax wraps the worker's exception
        run_main(build_flow(settings, inputs=FlowInputs(source), classifier=classifier))
    chain = []
    error: BaseException | None = excinfo.value
    while error is not None:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    assert any("DeliveryError" in link or "not delivered" in link for link in chain), chain
