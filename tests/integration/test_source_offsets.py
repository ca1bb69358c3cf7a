"""Where the flow's Kafka source (and `read_to_end`) start reading, on the real broker.

With no snapshot it looks up the partition's oldest kept record instead of assigning
OFFSET_BEGINNING (librdkafka resolves that only after a 500 ms back-off); it must read the
same records. A snapshot offset that retention has since passed resumes at the oldest
kept record: librdkafka's default reset would jump to the end and lose the rest.
"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Producer, TopicPartition

from splitpin.core.kafka.admin import admin_client, earliest_offset
from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.errors import BrokerError
from splitpin.flows.routing_flow import kafka_source
from tests.kafka_helpers import TopicSettingsFactory, free_ports

pytestmark = pytest.mark.integration

RECORDS = 10
DELETED = 4
"""Records 0-3 are deleted (the low watermark moves to 4), as retention would."""


def _topic_with_a_deleted_head(topic_settings: TopicSettingsFactory) -> tuple[str, str]:
    settings = topic_settings()
    topic = settings.topic("events")
    producer = CheckedProducer(settings.bootstrap_servers)
    for i in range(RECORDS):
        producer.produce(topic, f"record-{i}".encode(), b"k")
    producer.flush(30)
    admin = admin_client(settings.bootstrap_servers)
    admin.delete_records([TopicPartition(topic, 0, DELETED)])[TopicPartition(topic, 0)].result(30)
    return settings.bootstrap_servers, topic


def _read_to_eof(topic_settings: TopicSettingsFactory, topic: str, resume: int | None) -> list[str]:
    source = kafka_source(topic_settings(), topic, tail=False)
    part = source.build_part("in", f"0-{topic}", resume)
    values: list[str] = []
    try:
        for _ in range(10_000):
            try:
                batch = part.next_batch()
            except StopIteration:
                return values
            values += [m.value.decode() for m in batch if m.value is not None]  # type: ignore[union-attr]
    finally:
        part.close()
    pytest.fail(f"no end of partition after {values}")


def test_earliest_offset_is_the_low_watermark(topic_settings: TopicSettingsFactory) -> None:
    bootstrap, topic = _topic_with_a_deleted_head(topic_settings)
    assert earliest_offset(bootstrap, topic, 0, 10) == DELETED


def test_a_partition_without_snapshot_reads_every_kept_record(
    topic_settings: TopicSettingsFactory,
) -> None:
    _, topic = _topic_with_a_deleted_head(topic_settings)
    part = kafka_source(topic_settings(), topic, tail=False).build_part("in", f"0-{topic}", None)
    try:
        assert part.snapshot() == DELETED  # what Bytewax would store before any read
    finally:
        part.close()
    assert _read_to_eof(topic_settings, topic, None) == [
        f"record-{i}" for i in range(DELETED, RECORDS)
    ]


def test_a_snapshot_offset_retention_passed_resumes_at_the_oldest_kept_record(
    topic_settings: TopicSettingsFactory,
) -> None:
    _, topic = _topic_with_a_deleted_head(topic_settings)
    assert _read_to_eof(topic_settings, topic, 1) == [
        f"record-{i}" for i in range(DELETED, RECORDS)
    ]


def test_the_source_lists_and_builds_partitions_without_config_warnings(
    topic_settings: TopicSettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer-only reset key must reach the consumers only: an admin client given it
    logs a CONFWARN at every start."""
    settings = topic_settings(partitions=2)
    topic = settings.topic("events")
    source = kafka_source(settings, topic, tail=False)
    with caplog.at_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER.name):
        names = source.list_parts()
        parts = [source.build_part("in", name, None) for name in names]
        for part in parts:
            part.close()
    assert sorted(names) == [f"0-{topic}", f"1-{topic}"]
    assert [r.getMessage() for r in caplog.records if "CONFWARN" in r.getMessage()] == []


def test_earliest_offset_names_the_broker_that_did_not_answer() -> None:
    (port,) = free_ports(1)
    bootstrap = f"127.0.0.1:{port}"
    with pytest.raises(BrokerError, match=bootstrap):
        earliest_offset(bootstrap, "nothing-here", 0, 1.0)


def test_read_to_end_reads_the_kept_records_and_skips_an_emptied_partition(
    topic_settings: TopicSettingsFactory,
) -> None:
    """Partition 0 lost its head, partition 1 every record it had (low = high > 0): the
    reader returns what is kept and does not wait for records that can never come."""
    settings = topic_settings(partitions=2)
    topic = settings.topic("events")
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for i in range(RECORDS):
        producer.produce(topic, f"record-{i}".encode(), partition=0)
        producer.produce(topic, f"gone-{i}".encode(), partition=1)
    assert producer.flush(30) == 0
    admin = admin_client(settings.bootstrap_servers)
    cut = [TopicPartition(topic, 0, DELETED), TopicPartition(topic, 1, RECORDS)]
    for future in admin.delete_records(cut).values():
        future.result(30)
    values = [m.value() for m in read_to_end(settings.bootstrap_servers, topic, timeout_s=20)]
    assert values == [f"record-{i}".encode() for i in range(DELETED, RECORDS)]
