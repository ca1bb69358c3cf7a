"""A Kafka sink that fails loudly instead of losing records.

Bytewax's stock KafkaSink ignores delivery reports and flushes without a timeout. This
sink produces each batch through CheckedProducer and returns from `write_batch` only once
Kafka acknowledged every record; otherwise DeliveryError stops the worker. Because a
snapshot is committed only after its epoch's writes returned, the restarted flow
re-produces anything that was not acknowledged: at-least-once, never lost.

`WRITES` counts the batches in Kafka's hands, so a shutdown (splitpin/app/runner.py) can wait
until those are acknowledged, and hold back new ones, before the process exits.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from splitpin.core import metrics
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.redaction import redact_bytes


class WriteGate:
    """Batches in progress, across this process's workers; `close` waits for them to end."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    def __enter__(self) -> None:
        with self._cond:
            while self._closed:  # shutting down: this batch waits for the exit
                self._cond.wait()
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def close(self, timeout_s: float) -> bool:
        """Hold back new batches; True once none is in progress, False at the timeout."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._active == 0, timeout_s)


WRITES = WriteGate()


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record bound for a topic; the key keeps per-conversation (or tenant) order."""

    topic: str
    key: bytes | None
    value: bytes


class _CheckedSinkPartition(StatelessSinkPartition[OutRecord]):
    def __init__(self, producer: CheckedProducer, flush_timeout_s: float) -> None:
        self._producer = producer
        self._flush_timeout_s = flush_timeout_s

    def write_batch(self, items: list[OutRecord]) -> None:
        with WRITES:
            for item in items:
                self._producer.produce(item.topic, redact_bytes(item.value), item.key)
            with metrics.SINK_FLUSH_SECONDS.time():
                self._producer.flush(self._flush_timeout_s)
        for topic, count in Counter(item.topic for item in items).items():
            metrics.count(metrics.SINK_RECORDS, topic, amount=count)

    def close(self) -> None:
        self._producer.flush(self._flush_timeout_s)


class CheckedKafkaSink(DynamicSink[OutRecord]):
    """One idempotent producer per worker; records carry their own topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        delivery_timeout_ms: int,
        flush_timeout_s: float,
        client: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._delivery_timeout_ms = delivery_timeout_ms
        self._flush_timeout_s = flush_timeout_s
        # Security and extra librdkafka keys (`security_config(settings.kafka)`).
        self._client = dict(client or {})

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CheckedSinkPartition:
        producer = CheckedProducer(
            self._bootstrap_servers, delivery_timeout_ms=self._delivery_timeout_ms, **self._client
        )
        return _CheckedSinkPartition(producer, self._flush_timeout_s)
