"""Read a topic from the beginning to its current end (high watermarks), then stop."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from splitpin.core.kafka.client_config import AuthWatch, auth_failure
from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.errors import BrokerError


def read_to_end(
    bootstrap_servers: str,
    topic: str,
    timeout_s: float = 60.0,
    *,
    config: Mapping[str, Any] | None = None,
) -> list[Message]:
    """Every record now in `topic`, in per-partition order; raises if the end is not reached.

    `config` takes `client_config(settings)` (security keys).
    """
    watch = AuthWatch()
    consumer = Consumer(
        {
            **(config or {}),
            "error_cb": watch,
            "bootstrap.servers": bootstrap_servers,
            "logger": LIBRDKAFKA_LOGGER,
            "group.id": f"splitpin-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            # Retention may delete past the low watermark read below before the first
            # fetch: go on from the oldest record kept, never from the end.
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in partitions
        }
        ends = {p: high for p, (_low, high) in marks.items()}
        remaining = {p for p, (low, high) in marks.items() if high > low}
        # The low watermark as a number: OFFSET_BEGINNING would cost librdkafka's 500 ms
        # back-off before the first fetch (bench/first_fetch.py), at every start-up.
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in remaining])
        records: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                msg = f"timed out reading {topic}: partitions {sorted(remaining)} not at their end"
                raise BrokerError(msg)
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                records.append(message)
                partition, offset = message.partition(), message.offset()
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    remaining.discard(partition)
        return records
    except KafkaException as exc:
        consumer.poll(0)  # serves error_cb: a refused login shows only there
        if watch.error is not None:
            raise BrokerError(auth_failure(bootstrap_servers, watch.error)) from None
        msg = f"cannot read {topic}: {exc}"
        raise BrokerError(msg) from exc
    finally:
        consumer.close()
