"""Shared fixtures: one real Kafka broker per test session, fresh topics per test.

The broker is, in order of preference: the one named by `KAFKA_BOOTSTRAP_SERVERS` (CI
with a service container, or a developer's own); a testcontainers Kafka when a Docker
engine answers; otherwise splitpin's own LocalBroker (real Apache Kafka from Maven
Central jars) on free ports, so the suite runs with a genuine broker everywhere.
"""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from splitpin.core.kafka.admin import create_topics, delete_topics, wait_for_broker
from splitpin.core.kafka.broker import LocalBroker
from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import BrokerSettings, Settings, load_settings
from tests.factories import T0_PAST_SKEW_S
from tests.kafka_helpers import KafkaBackend, TopicSettingsFactory, free_ports

# testcontainers' KafkaContainer drives Confluent's image scripts; this is its tested default.
TESTCONTAINERS_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
BROKER_READY_TIMEOUT_S = 120.0


def docker_answers(timeout_s: float = 2.0) -> bool:
    """True only if a Docker engine answers `/_ping` quickly; never hangs the session.

    Plain unix/tcp endpoints are pinged with the standard library (the docker client
    leaks a socket when the engine is absent); anything else (TLS, ssh) asks the client.
    """
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    address: str | tuple[str, int]
    if host.startswith("unix://"):
        address = host.removeprefix("unix://")
        if not Path(address).exists():
            return False
        family = socket.AF_UNIX
    elif host.startswith("tcp://") and not os.environ.get("DOCKER_TLS_VERIFY"):
        name, _, port = host.removeprefix("tcp://").rstrip("/").rpartition(":")
        address, family = (name, int(port)), socket.AF_INET
    else:
        return _docker_client_pings(timeout_s)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(256).split(b"\r\n", 1)[0]
    except (OSError, ValueError):
        return False
    return status_line.startswith(b"HTTP/1.") and b" 200" in status_line


def _docker_client_pings(timeout_s: float) -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "no usable engine": fall back to LocalBroker
        return False


def _kafka_container() -> Any:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.10 kept it at the old, now deprecated, path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.kafka import KafkaContainer
    return KafkaContainer(TESTCONTAINERS_KAFKA_IMAGE).with_kraft()


@pytest.fixture(scope="session")
def kafka_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBackend]:
    """The session's broker; a LocalBroker it started is stopped at the end."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_for_broker(external, BROKER_READY_TIMEOUT_S)
        yield KafkaBackend(external, "env")
        return
    if docker_answers():
        with _kafka_container() as container:
            bootstrap = str(container.get_bootstrap_server())
            wait_for_broker(bootstrap, BROKER_READY_TIMEOUT_S)
            yield KafkaBackend(bootstrap, "testcontainers")
        return
    port, controller_port = free_ports(2)
    # Jars stay in the default per-machine cache (resolved once); state is per session.
    broker = LocalBroker(
        BrokerSettings(
            port=port,
            controller_port=controller_port,
            state_dir=tmp_path_factory.mktemp("kafka-broker"),
            start_timeout_s=BROKER_READY_TIMEOUT_S,
        )
    )
    broker.start()
    try:
        yield KafkaBackend(broker.bootstrap, "local", broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_backend: KafkaBackend) -> str:
    """`host:port` of the session's real broker."""
    return kafka_backend.bootstrap


def unique_settings(bootstrap: str, partitions: int = 1, **overrides: object) -> Settings:
    """Settings whose topic names no other test uses (a random prefix)."""
    values: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "topic_prefix": f"t{uuid.uuid4().hex[:12]}.",
        "partitions": partitions,
        # The factories' events are dated T0 (2026-11-02), now in the past: without this
        # they would be dead-lettered as event_time_skew. A test of the skew overrides it.
        "max_past_skew_s": T0_PAST_SKEW_S,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def topic_settings(kafka_bootstrap: str) -> Iterator[TopicSettingsFactory]:
    """Factory: `topic_settings(partitions=1, **overrides)` -> Settings with its topics created.

    Each call gets its own topic prefix, so tests never see each other's records; the
    topics are deleted afterwards to keep the session broker small.
    """
    made: list[Settings] = []

    def make(partitions: int = 1, **overrides: object) -> Settings:
        settings = unique_settings(kafka_bootstrap, partitions, **overrides)
        create_topics(settings)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        delete_topics(kafka_bootstrap, settings.all_topics().values())


@pytest.fixture(scope="session")
def classifier() -> Classifier:
    """The real shipped classifier (MiniLM ONNX + trained heads), loaded once per session."""
    governance = load_settings().governance
    return Classifier.load(governance.classifier, governance.routing)
