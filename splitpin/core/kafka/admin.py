"""Kafka admin helpers: wait for a broker, create/describe/delete splitpin's topics.

Topics are created explicitly (the local broker runs with auto-creation off) so that a
typo in a topic name fails loudly instead of silently creating a one-partition topic.
Every confluent_kafka exception is translated into BrokerError here. Every client takes
the security settings (`client_config`); a refused login fails at once, saying so, instead
of surfacing as a metadata timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # not re-exported by confluent_kafka.admin for mypy

from splitpin.core.kafka.client_config import AuthWatch, auth_failure, client_config
from splitpin.core.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.core.settings import Settings
from splitpin.errors import BrokerError, ConfigError, StartupError

ADMIN_TIMEOUT_S = 30.0
_POLL_S = 0.2
_METADATA_SLICE_S = 2.0
"""Metadata requests are cut into slices this long so a refused login is noticed quickly."""

ClientConfig = Mapping[str, Any]
"""Extra librdkafka keys (security, `SPLITPIN_KAFKA__EXTRA`): `client_config(settings)`."""


def admin_client(bootstrap: str, **extra: Any) -> AdminClient:
    """An AdminClient that logs through `LIBRDKAFKA_LOGGER` and reconnects quickly.

    `extra` (security keys from `client_config`, an `error_cb`) is applied last.
    """
    config: dict[str, Any] = {
        "logger": LIBRDKAFKA_LOGGER,
        # The default backoff grows to 10 s, which would delay noticing a fresh broker.
        "reconnect.backoff.max.ms": 500,
    }
    config.update(extra)
    config["bootstrap.servers"] = bootstrap
    try:
        return AdminClient(config)
    except KafkaException as exc:
        msg = f"cannot create a Kafka admin client for {bootstrap}: {_reason(exc)}"
        raise BrokerError(msg) from exc


class _Admin:
    """An admin client with the AuthWatch that hears its refused logins."""

    def __init__(self, bootstrap: str, config: ClientConfig | None) -> None:
        self.bootstrap = bootstrap
        self.watch = AuthWatch()
        self.client = admin_client(bootstrap, **{**(config or {}), "error_cb": self.watch})

    def list_topics(self, timeout_s: float) -> Any:
        """Cluster metadata; raises BrokerError at once when the login is refused, else
        KafkaException when nothing answered within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.client.list_topics(timeout=max(min(remaining, _METADATA_SLICE_S), 0.1))
            except KafkaException:
                self.client.poll(0)  # serves error_cb: was it a refused login?
                if self.watch.error is not None:
                    raise BrokerError(auth_failure(self.bootstrap, self.watch.error)) from None
                if time.monotonic() >= deadline:
                    raise


def broker_answers(
    bootstrap: str, timeout_s: float = 2.0, *, config: ClientConfig | None = None
) -> bool:
    """True if a broker at `bootstrap` returns metadata listing at least one broker."""
    try:
        metadata = _Admin(bootstrap, config).list_topics(timeout_s)
    except (KafkaException, BrokerError):
        return False
    return bool(metadata.brokers)


def wait_for_broker(
    bootstrap: str,
    timeout_s: float,
    *,
    alive: Callable[[], bool] | None = None,
    config: ClientConfig | None = None,
) -> None:
    """Block until a broker answers metadata requests, or raise BrokerError.

    `alive`, when given, is checked between attempts so a broker process that died
    while starting fails fast instead of after the whole timeout.
    """
    client = _Admin(bootstrap, config)
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
            metadata = client.list_topics(min(2.0, max(remaining, 0.1)))
        except KafkaException as exc:
            last = _reason(exc)
            continue
        if metadata.brokers:
            return
        last = "metadata listed no brokers"
        time.sleep(_POLL_S)


def check_flow_topics(
    settings: Settings, timeout_s: float | None = None, names: Iterable[str] | None = None
) -> None:
    """Fail fast unless a broker answers and every topic the flow uses (or `names`) exists.

    librdkafka retries an unreachable bootstrap forever, so without this a wrong
    `SPLITPIN_BOOTSTRAP_SERVERS` leaves the flow running silently, doing nothing.
    Raises StartupError naming the setting (or the missing topics and the remedy).
    """
    wait_s = settings.startup_timeout_s if timeout_s is None else timeout_s
    bootstrap = settings.bootstrap_servers
    client = _Admin(bootstrap, client_config(settings))
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            metadata = client.list_topics(max(remaining, 0.1))
        except KafkaException as exc:
            last = _reason(exc)
            continue
        except BrokerError as exc:  # a refused login: no point waiting any longer
            raise StartupError(str(exc)) from None
        if metadata.brokers:
            break
        last = "metadata listed no brokers"
        time.sleep(_POLL_S)
    else:
        msg = (
            f"no Kafka broker answered at {bootstrap} within {wait_s:g} s ({last}); check "
            "SPLITPIN_BOOTSTRAP_SERVERS (or KAFKA_BOOTSTRAP_SERVERS) and "
            "SPLITPIN_KAFKA__SECURITY_PROTOCOL; "
            "SPLITPIN_STARTUP_TIMEOUT_S sets this wait"
        )
        raise StartupError(msg)
    wanted = settings.all_topics().values() if names is None else names
    missing = [name for name in wanted if name not in metadata.topics]
    if missing:
        msg = (
            f"topic(s) missing on {bootstrap}: {', '.join(missing)}; create them with "
            "`splitpin topics create` (with the same SPLITPIN_TOPIC_PREFIX and "
            "SPLITPIN_TOPICS__* settings)"
        )
        raise StartupError(msg)


def topic_record_counts(
    bootstrap: str,
    topics: Iterable[str],
    timeout_s: float = ADMIN_TIMEOUT_S,
    *,
    config: ClientConfig | None = None,
) -> dict[str, int]:
    """Topic -> records it holds now (high minus low watermark, summed over partitions).

    Reads watermarks only (no group, nothing consumed), so it is cheap at start-up.
    """
    names = list(topics)
    client = _Admin(bootstrap, config)
    listed = _list_topics(client, timeout_s)
    consumer = _watermark_consumer(bootstrap, config)
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


def earliest_offset(
    bootstrap: str,
    topic: str,
    partition: int,
    timeout_s: float = ADMIN_TIMEOUT_S,
    *,
    config: ClientConfig | None = None,
) -> int:
    """The offset of the oldest record `partition` keeps (its low watermark).

    Why: a consumer assigned OFFSET_BEGINNING resolves it itself, and librdkafka does that
    only after a 500 ms back-off; asking first and assigning the number starts the first
    fetch at once (bench/first_fetch.py). BrokerError when nothing answers.
    """
    consumer = _watermark_consumer(bootstrap, config)
    try:
        low, _high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s, cached=False
        )
    except KafkaException as exc:
        msg = f"cannot read the watermarks of {topic}[{partition}] at {bootstrap}: {_reason(exc)}"
        raise BrokerError(msg) from exc
    finally:
        consumer.close()
    return int(low)


def _watermark_consumer(bootstrap: str, config: ClientConfig | None) -> Consumer:
    """A consumer that only reads watermarks: no group joined, nothing committed."""
    return Consumer(
        {
            **(config or {}),
            "bootstrap.servers": bootstrap,
            "logger": LIBRDKAFKA_LOGGER,
            "group.id": "splitpin-watermarks",  # required; never joined, nothing committed
            "enable.auto.commit": False,
        }
    )


def create_topics(
    settings: Settings, partitions: int | None = None, names: Iterable[str] | None = None
) -> list[str]:
    """Create every splitpin topic (or only `names`) that does not exist yet; one human
    line per topic.

    Existing topics are left alone (their partition count is reported, not changed).
    Returns only once every created topic has a leader, so producing right after works.
    """
    count = settings.partitions if partitions is None else partitions
    if count < 1:
        msg = f"partitions must be at least 1, got {count}"
        raise ConfigError(msg)
    client = _Admin(settings.bootstrap_servers, client_config(settings))
    names = list(settings.all_topics().values() if names is None else names)
    existing = _partition_counts(client)
    missing = [name for name in names if name not in existing]
    created: set[str] = set()
    if missing:
        # The governance topic keeps only the latest record per key (current, pending).
        compacted = {settings.topic("governance")}
        new_topics = [
            NewTopic(
                name,
                num_partitions=count,
                replication_factor=settings.replication_factor,
                config={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name in missing
        ]
        futures = client.client.create_topics(
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
        _await_leaders(client, created)
        existing = _partition_counts(client)
    return [
        f"{'created' if name in created else 'exists'} {name} ({_partitions(existing[name])})"
        for name in names
    ]


def describe_topics(settings: Settings) -> list[str]:
    """One line per splitpin topic: its partition count, or `missing`."""
    counts = _partition_counts(_Admin(settings.bootstrap_servers, client_config(settings)))
    return [
        f"{name}: {_partitions(counts[name])}" if name in counts else f"{name}: missing"
        for name in settings.all_topics().values()
    ]


def delete_topics(
    bootstrap: str,
    names: Iterable[str],
    timeout_s: float = ADMIN_TIMEOUT_S,
    *,
    config: ClientConfig | None = None,
) -> None:
    """Delete topics (missing ones are ignored) and wait until metadata no longer lists them."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    client = _Admin(bootstrap, config)
    futures = client.client.delete_topics(
        wanted, operation_timeout=timeout_s, request_timeout=timeout_s
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if _code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            msg = f"cannot delete topic {name}: {_reason(exc)}"
            raise BrokerError(msg) from exc
    _wait_until(
        lambda: set(wanted) & set(_partition_counts(client)),
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


def _list_topics(client: _Admin, timeout_s: float) -> dict[str, Any]:
    """Topic name -> metadata, with a broker that does not answer as a BrokerError."""
    try:
        return dict(client.list_topics(timeout_s).topics)
    except KafkaException as exc:
        msg = f"no Kafka broker answered at {client.bootstrap}: {_reason(exc)}"
        raise BrokerError(msg) from exc


def _partition_counts(client: _Admin) -> dict[str, int]:
    """Topic -> partition count for every topic the cluster lists."""
    topics = _list_topics(client, ADMIN_TIMEOUT_S)
    return {str(name): len(topic.partitions) for name, topic in topics.items()}


def _await_leaders(client: _Admin, names: set[str], timeout_s: float = ADMIN_TIMEOUT_S) -> None:
    """Wait until every partition of `names` has a leader (creation is asynchronous)."""

    def leaderless() -> set[str]:
        topics = _list_topics(client, min(5.0, timeout_s))
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
