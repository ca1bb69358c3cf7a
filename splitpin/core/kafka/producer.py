"""A producer that never loses a record silently.

librdkafka reports delivery asynchronously; a plain `produce()` + `flush()` ignores
failures and can wait forever. This wrapper uses the idempotent producer with
`acks=all`, records every delivery report, bounds the flush, and raises DeliveryError
if anything was not acknowledged, so the caller (the Bytewax sink, replay) fails loudly
and retries from its last snapshot or checkpoint. A refused login (wrong SASL password)
would otherwise only show as records expiring after `delivery.timeout.ms`; the flush
raises as soon as librdkafka reports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from splitpin.core.kafka.client_config import AuthWatch, auth_failure
from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.errors import DeliveryError


def producer_config(
    bootstrap_servers: str, delivery_timeout_ms: int, **extra: Any
) -> dict[str, Any]:
    """The one producer configuration splitpin uses everywhere.

    `extra` (security keys from `client_config(settings)`, overrides) is applied last.
    """
    config: dict[str, Any] = {
        "logger": LIBRDKAFKA_LOGGER,
        "enable.idempotence": True,  # implies acks=all, bounded in-flight, no reordering on retry
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "delivery.timeout.ms": delivery_timeout_ms,
    }
    config.update(extra)
    config["bootstrap.servers"] = bootstrap_servers
    return config


@dataclass
class _DeliveryLedger:
    """Delivery reports collected by librdkafka's callback thread (poll/flush)."""

    pending: int = 0
    delivered: int = 0
    failures: list[str] = field(default_factory=list)

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self.pending -= 1
        if err is None:
            self.delivered += 1
        else:
            self.failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")


class CheckedProducer:
    """`produce` many records, then `flush` raises unless every one was acknowledged.

    `extra` takes `client_config(settings)` (security keys) and any producer override.
    """

    def __init__(
        self, bootstrap_servers: str, *, delivery_timeout_ms: int = 30_000, **extra: Any
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._auth = AuthWatch()
        self._producer = Producer(
            producer_config(
                bootstrap_servers, delivery_timeout_ms, **{"error_cb": self._auth, **extra}
            )
        )
        self._ledger = _DeliveryLedger()

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one record; waits (serving callbacks) while librdkafka's queue is full."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, on_delivery=self._ledger.on_delivery
                )
            except BufferError:
                self._producer.poll(0.1)
                continue
            except KafkaException as exc:
                msg = f"cannot produce to {topic}: {exc}"
                raise DeliveryError(msg) from exc
            self._ledger.pending += 1
            self._producer.poll(0)
            return

    def flush(self, timeout_s: float) -> int:
        """Wait at most `timeout_s` for every queued record; return how many were delivered.

        Raises DeliveryError naming the failures, or how many records were still unacknowledged
        when the time ran out.
        """
        deadline = time.monotonic() + timeout_s
        while self._ledger.pending > 0 and time.monotonic() < deadline:
            self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
            if self._auth.error is not None:
                raise DeliveryError(auth_failure(self._bootstrap_servers, self._auth.error))
        ledger, self._ledger = self._ledger, _DeliveryLedger(pending=self._ledger.pending)
        if ledger.failures:
            shown = "; ".join(ledger.failures[:5])
            more = f" (+{len(ledger.failures) - 5} more)" if len(ledger.failures) > 5 else ""
            msg = f"{len(ledger.failures)} record(s) not delivered: {shown}{more}"
            raise DeliveryError(msg)
        if ledger.pending > 0:
            msg = f"{ledger.pending} record(s) unacknowledged after a {timeout_s:.1f}s flush"
            raise DeliveryError(msg)
        return ledger.delivered
