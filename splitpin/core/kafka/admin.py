"""Kafka admin helpers: wait for a broker, create/describe/delete splitpin's topics.

Topics are created explicitly (the local broker runs with auto-creation off) so that a
typo in a topic name fails loudly instead of silently creating a one-partition topic.
Every confluent_kafka exception is translated into BrokerError here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # not re-exported by confluent_kafka.admin for mypy

from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.core.settings import Settings
from splitpin.errors import BrokerError, ConfigError, StartupError

ADMIN_TIMEOUT_S = 30.0
_POLL_S = 0.2


def admin_client(bootstrap: str, **extra: Any) -> AdminClient:
    """An AdminClient that logs through `LIBRDKAFKA_LOGGER` and reconnects quickly."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": LIBRDKAFKA_LOGGER,
        # The default backoff grows to 10 s, which would delay noticing a fresh broker.
        "reconnect.backoff.max.ms": 500,
    }
    config.update(extra)
    try:
        return AdminClient(config)
    except KafkaException as exc:
        msg = f"cannot create a Kafka admin client for {bootstrap}: {_reason(exc)}"
        raise BrokerError(msg) from exc


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True if a broker at `bootstrap` returns metadata listing at least one broker."""
    try:
        metadata = admin_client(bootstrap).list_topics(timeout=timeout_s)
    except (KafkaException, BrokerError):
        return False
    return bool(metadata.brokers)


def wait_for_broker(
    bootstrap: str, timeout_s: float, *, alive: Callable[[], bool] | None = None
) -> None:
    """Block until a broker answers metadata requests, or raise BrokerError.

    `alive`, when given, is checked between attempts so a broker process that died
    while starting fails fast instead of after the whole timeout.
    """
    client = admin_client(bootstrap)
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        if alive is not None and not alive():
            msg = f"the broker process exited before answering at {bootstrap}"
            raise BrokerError(msg)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            msg = f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s ({last})"
            raise BrokerError(msg)
        try:
            metadata = client.list_topics(timeout=min(2.0, max(remaining, 0.1)))
        except KafkaException as exc:
            last = _reason(exc)
            continue
        if metadata.brokers:
            return
        last = "metadata listed no brokers"
        time.sleep(_POLL_S)


def check_flow_topics(settings: Settings, timeout_s: float | None = None) -> None:
    """Fail fast unless a broker answers and every topic the flow uses exists.

    librdkafka retries an unreachable bootstrap forever, so without this a wrong
    `SPLITPIN_BOOTSTRAP_SERVERS` leaves the flow running silently, doing nothing.
    Raises StartupError naming the setting (or the missing topics and the remedy).
    """
    wait_s = settings.startup_timeout_s if timeout_s is None else timeout_s
    bootstrap = settings.bootstrap_servers
    client = admin_client(bootstrap)
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            metadata = client.list_topics(timeout=max(remaining, 0.1))
        except KafkaException as exc:
            last = _reason(exc)
            continue
        if metadata.brokers:
            break
        last = "metadata listed no brokers"
        time.sleep(_POLL_S)
    else:
        msg = (
            f"no Kafka broker answered at {bootstrap} within {wait_s:g} s ({last}); check "
            "SPLITPIN_BOOTSTRAP_SERVERS (or KAFKA_BOOTSTRAP_SERVERS); "
            "SPLITPIN_STARTUP_TIMEOUT_S sets this wait"
        )
        raise StartupError(msg)
    missing = [name for name in settings.all_topics().values() if name not in metadata.topics]
    if missing:
        msg = (
            f"topic(s) missing on {bootstrap}: {', '.join(missing)}; create them with "
            "`splitpin topics create` (with the same SPLITPIN_TOPIC_PREFIX and "
            "SPLITPIN_TOPICS__* settings)"
        )
        raise StartupError(msg)


def topic_record_counts(
    bootstrap: str, topics: Iterable[str], timeout_s: float = ADMIN_TIMEOUT_S
) -> dict[str, int]:
    """Topic -> records it holds now (high minus low watermark, summed over partitions).

    Reads watermarks only (no group, nothing consumed), so it is cheap at start-up.
    """
    names = list(topics)
    client = admin_client(bootstrap)
    listed = _list_topics(client, bootstrap, timeout_s)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "logger": LIBRDKAFKA_LOGGER,
            "group.id": "splitpin-watermarks",  # required; never joined, nothing committed
            "enable.auto.commit": False,
        }
    )
    counts: dict[str, int] = {}
    try:
        for name in names:
            topic = listed.get(name)
            partitions = topic.partitions if topic is not None else {}
            total = 0
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(name, partition), timeout=timeout_s, cached=False
                )
                total += max(0, high - low)
            counts[name] = total
    except KafkaException as exc:
        msg = f"cannot read the watermarks of {names} at {bootstrap}: {_reason(exc)}"
        raise BrokerError(msg) from exc
    finally:
        consumer.close()
    return counts


def create_topics(settings: Settings, partitions: int | None = None) -> list[str]:
    """Create every splitpin topic that does not exist yet; one human line per topic.

    Existing topics are left alone (their partition count is reported, not changed).
    Returns only once every created topic has a leader, so producing right after works.
    """
    count = settings.partitions if partitions is None else partitions
    if count < 1:
        msg = f"partitions must be at least 1, got {count}"
        raise ConfigError(msg)
    bootstrap = settings.bootstrap_servers
    client = admin_client(bootstrap)
    names = list(settings.all_topics().values())
    existing = _partition_counts(client, bootstrap)
    missing = [name for name in names if name not in existing]
    created: set[str] = set()
    if missing:
        new_topics = [
            NewTopic(name, num_partitions=count, replication_factor=settings.replication_factor)
            for name in missing
        ]
        futures = client.create_topics(
            new_topics, operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if _code(exc) == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # created concurrently by someone else: that is fine
                msg = f"cannot create topic {name}: {_reason(exc)}"
                raise BrokerError(msg) from exc
            created.add(name)
        _await_leaders(client, bootstrap, created)
        existing = _partition_counts(client, bootstrap)
    return [
        f"{'created' if name in created else 'exists'} {name} ({_partitions(existing[name])})"
        for name in names
    ]


def describe_topics(settings: Settings) -> list[str]:
    """One line per splitpin topic: its partition count, or `missing`."""
    bootstrap = settings.bootstrap_servers
    counts = _partition_counts(admin_client(bootstrap), bootstrap)
    return [
        f"{name}: {_partitions(counts[name])}" if name in counts else f"{name}: missing"
        for name in settings.all_topics().values()
    ]


def delete_topics(bootstrap: str, names: Iterable[str], timeout_s: float = ADMIN_TIMEOUT_S) -> None:
    """Delete topics (missing ones are ignored) and wait until metadata no longer lists them."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    client = admin_client(bootstrap)
    futures = client.delete_topics(wanted, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if _code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            msg = f"cannot delete topic {name}: {_reason(exc)}"
            raise BrokerError(msg) from exc
    _wait_until(
        lambda: set(wanted) & set(_partition_counts(client, bootstrap)),
        timeout_s,
        f"topics still listed {timeout_s:.0f}s after deletion",
    )


def _wait_until(pending: Callable[[], set[str]], timeout_s: float, failure: str) -> None:
    """Poll `pending()` until it is empty; past the deadline raise BrokerError naming it."""
    deadline = time.monotonic() + timeout_s
    while left := pending():
        if time.monotonic() >= deadline:
            msg = f"{failure}: {sorted(left)}"
            raise BrokerError(msg)
        time.sleep(_POLL_S)


def _list_topics(client: AdminClient, bootstrap: str, timeout_s: float) -> dict[str, Any]:
    """Topic name -> metadata, with a broker that does not answer as a BrokerError."""
    try:
        return dict(client.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        msg = f"no Kafka broker answered at {bootstrap}: {_reason(exc)}"
        raise BrokerError(msg) from exc


def _partition_counts(client: AdminClient, bootstrap: str) -> dict[str, int]:
    """Topic -> partition count for every topic the cluster lists."""
    topics = _list_topics(client, bootstrap, ADMIN_TIMEOUT_S)
    return {str(name): len(topic.partitions) for name, topic in topics.items()}


def _await_leaders(
    client: AdminClient, bootstrap: str, names: set[str], timeout_s: float = ADMIN_TIMEOUT_S
) -> None:
    """Wait until every partition of `names` has a leader (creation is asynchronous)."""

    def leaderless() -> set[str]:
        topics = _list_topics(client, bootstrap, min(5.0, timeout_s))
        return {name for name in names if not _has_leaders(topics.get(name))}

    _wait_until(
        leaderless, timeout_s, f"topics created but without a leader after {timeout_s:.0f}s"
    )


def _has_leaders(topic: Any) -> bool:
    if topic is None or topic.error is not None or not topic.partitions:
        return False
    return all(p.error is None and p.leader >= 0 for p in topic.partitions.values())


def _partitions(count: int) -> str:
    return f"{count} partition{'' if count == 1 else 's'}"


def _code(exc: KafkaException) -> int | None:
    err = exc.args[0] if exc.args else None
    return int(err.code()) if isinstance(err, KafkaError) else None


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return str(err.str()) if isinstance(err, KafkaError) else str(exc)
