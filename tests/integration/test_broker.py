"""The real broker, the topic admin helpers and the CLI commands built on them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from splitpin.core.kafka.admin import (
    admin_client,
    broker_answers,
    create_topics,
    delete_topics,
    describe_topics,
    wait_for_broker,
)
from splitpin.core.kafka.broker import LocalBroker
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import REPO_ROOT, BrokerSettings, Settings
from splitpin.errors import BrokerError
from tests.conftest import unique_settings
from tests.kafka_helpers import KafkaBackend, TopicSettingsFactory, consume_all, free_ports

pytestmark = pytest.mark.integration

needs_java_and_maven = pytest.mark.skipif(
    shutil.which("java") is None or shutil.which("mvn") is None,
    reason="the local broker needs `java` and `mvn` on PATH",
)


def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partition counts straight from cluster metadata, independent of describe_topics."""
    topics = admin_client(bootstrap).list_topics(timeout=10).topics
    return {name: len(topics[name].partitions) for name in names if name in topics}


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitpin", *args],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_session_broker_answers_metadata(kafka_bootstrap: str) -> None:
    wait_for_broker(kafka_bootstrap, 10)
    assert broker_answers(kafka_bootstrap)
    assert admin_client(kafka_bootstrap).list_topics(timeout=10).brokers


def test_create_topics_makes_every_topic_and_is_idempotent(kafka_bootstrap: str) -> None:
    settings = unique_settings(kafka_bootstrap)
    names = list(settings.all_topics().values())
    assert len(names) == 10  # the flow's 7, replies.audit, governance and governance.audit
    try:
        first = create_topics(settings, partitions=3)
        assert first == [f"created {name} (3 partitions)" for name in names]
        assert partition_counts(kafka_bootstrap, names) == dict.fromkeys(names, 3)

        # A second run (even asking for other partitions) leaves existing topics alone.
        again = create_topics(settings, partitions=5)
        assert again == [f"exists {name} (3 partitions)" for name in names]
        assert partition_counts(kafka_bootstrap, names) == dict.fromkeys(names, 3)

        assert describe_topics(settings) == [f"{name}: 3 partitions" for name in names]
    finally:
        delete_topics(kafka_bootstrap, names)
    assert describe_topics(settings) == [f"{name}: missing" for name in names]


def test_create_topics_defaults_to_the_settings_partitions(kafka_bootstrap: str) -> None:
    settings = unique_settings(kafka_bootstrap, partitions=2)
    names = list(settings.all_topics().values())
    try:
        assert create_topics(settings) == [f"created {name} (2 partitions)" for name in names]
        assert partition_counts(kafka_bootstrap, names) == dict.fromkeys(names, 2)
    finally:
        delete_topics(kafka_bootstrap, names)


def test_create_topics_names_the_topic_the_broker_refused(kafka_bootstrap: str) -> None:
    # One broker cannot hold three replicas: Kafka refuses, and we say which topic.
    settings = unique_settings(kafka_bootstrap, replication_factor=3)
    with pytest.raises(BrokerError, match=r"cannot create topic t\w+\.\S+: .*[Rr]eplication"):
        create_topics(settings)
    assert describe_topics(settings) == [
        f"{name}: missing" for name in settings.all_topics().values()
    ]


def test_topic_settings_fixture_gives_fresh_usable_topics(
    topic_settings: TopicSettingsFactory,
) -> None:
    first = topic_settings(partitions=2)
    second = topic_settings()
    assert first.topic_prefix != second.topic_prefix
    topic = first.topic("events")
    assert partition_counts(first.bootstrap_servers, [topic]) == {topic: 2}

    producer = CheckedProducer(first.bootstrap_servers, delivery_timeout_ms=10_000)
    for i in range(10):
        producer.produce(topic, value=f"v{i}".encode(), key=f"k{i}".encode())
    assert producer.flush(15.0) == 10

    got = consume_all(first.bootstrap_servers, topic, expected=10, timeout_s=20.0)
    assert sorted((m.key(), m.value()) for m in got) == sorted(
        (f"k{i}".encode(), f"v{i}".encode()) for i in range(10)
    )
    assert consume_all(second.bootstrap_servers, second.topic("events"), 1, 1.0) == []


def test_cli_topics_create_and_list(kafka_bootstrap: str) -> None:
    settings = unique_settings(kafka_bootstrap)
    names = list(settings.all_topics().values())
    env = {
        "SPLITPIN_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SPLITPIN_TOPIC_PREFIX": settings.topic_prefix,
    }
    try:
        created = run_cli(["topics", "create", "--partitions", "2"], env)
        assert created.returncode == 0, created.stderr
        assert created.stdout.splitlines() == [f"created {name} (2 partitions)" for name in names]
        again = run_cli(["topics", "create"], env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == [f"exists {name} (2 partitions)" for name in names]
        listed = run_cli(["topics", "list"], env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [f"{name}: 2 partitions" for name in names]
    finally:
        delete_topics(kafka_bootstrap, names)


def test_session_local_broker_status_logs_and_cli(kafka_backend: KafkaBackend) -> None:
    broker = kafka_backend.broker
    if broker is None:
        pytest.skip(f"the session broker comes from {kafka_backend.kind}, not LocalBroker")
    status = broker.status()
    pid = int(broker.paths.pid_file.read_text())
    assert (status.running, status.answering, status.pid) == (True, True, pid)
    assert status.bootstrap == kafka_backend.bootstrap
    assert status.describe() == (
        f"broker running (pid {pid}), answering at {status.bootstrap}; "
        f"log: {broker.paths.server_log}"
    )
    assert broker.start().startswith(f"broker already running (pid {pid})")

    # The slf4j binding is resolved with the broker, so it logs through log4j2 (not NOP).
    libs = {p.name for p in broker.libs_dir.glob("*.jar")}
    core = next(n for n in libs if n.startswith("log4j-core-"))
    assert core.replace("log4j-core-", "log4j-slf4j-impl-") in libs
    assert "Kafka Server started" in broker.paths.server_log.read_text()
    assert "NOP" not in broker.paths.broker_out.read_text()

    settings = broker.settings
    env = {
        "SPLITPIN_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SPLITPIN_BROKER__HOST": settings.host,
        "SPLITPIN_BROKER__PORT": str(settings.port),
        "SPLITPIN_BROKER__CONTROLLER_PORT": str(settings.controller_port),
        "SPLITPIN_BROKER__STATE_DIR": str(settings.state_dir),
        "SPLITPIN_BROKER__JAR_CACHE_DIR": str(settings.jar_cache_dir),
    }
    cli_status = run_cli(["broker", "status"], env)
    assert cli_status.returncode == 0, cli_status.stderr
    assert cli_status.stdout.strip() == status.describe()
    cli_start = run_cli(["broker", "start"], env)
    assert cli_start.returncode == 0, cli_start.stderr
    assert cli_start.stdout.startswith(f"broker already running (pid {pid})")


@needs_java_and_maven
def test_local_broker_restarts_on_its_data(tmp_path: Path) -> None:
    """Stop/start keeps topics and the cluster id: storage is formatted on first start only."""
    port, controller_port = free_ports(2)
    broker = LocalBroker(
        BrokerSettings(
            port=port, controller_port=controller_port, state_dir=tmp_path, start_timeout_s=120
        )
    )
    settings = unique_settings(broker.bootstrap)
    try:
        assert broker.start().startswith("broker started (pid ")
        meta = broker.paths.formatted_marker.read_text()
        create_topics(settings, partitions=2)
        stopped = broker.stop()
        assert stopped.startswith("broker stopped (pid ")
        assert "killed" not in stopped  # SIGTERM was enough: a clean shutdown
        assert not broker.paths.pid_file.exists()
        down = broker.status()
        assert (down.running, down.answering) == (False, False)
        assert broker.stop().startswith("broker not running")

        assert broker.start().startswith("broker started (pid ")
        assert broker.paths.formatted_marker.read_text() == meta
        assert describe_topics(settings) == [
            f"{name}: 2 partitions" for name in settings.all_topics().values()
        ]
    finally:
        broker.stop()
    assert not broker.status().running


@needs_java_and_maven
def test_concurrent_jar_resolution_into_a_fresh_cache(tmp_path: Path) -> None:
    broker = LocalBroker(BrokerSettings(state_dir=tmp_path / "s", jar_cache_dir=tmp_path / "j"))
    results: list[Path | BaseException] = []

    def resolve() -> None:
        try:
            results.append(broker.resolve_jars())
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert results == [broker.libs_dir, broker.libs_dir]
    jars = {p.name for p in broker.libs_dir.glob("*.jar")}
    assert {
        "kafka_2.13-4.1.1.jar",
        "kafka-clients-4.1.1.jar",
        "log4j-slf4j-impl-2.24.3.jar",
    } <= jars
    marker = (broker.libs_dir.parent / ".resolved").read_text().split()
    assert sorted(marker) == sorted(jars)


@needs_java_and_maven
def test_maven_failure_is_reported_with_its_output(tmp_path: Path) -> None:
    broker = LocalBroker(
        BrokerSettings(
            kafka_version="0.0.0-splitpin-missing",
            state_dir=tmp_path / "s",
            jar_cache_dir=tmp_path / "j",
        )
    )
    with pytest.raises(BrokerError) as raised:
        broker.resolve_jars()
    message = str(raised.value)
    assert message.startswith(
        "Maven could not resolve org.apache.kafka:kafka_2.13:0.0.0-splitpin-missing (exit 1):"
    )
    assert "0.0.0-splitpin-missing" in message.split(":\n", 1)[1]  # mvn's own words follow
    assert not (broker.libs_dir.parent / ".resolved").exists()


def test_settings_from_fixture_are_plain_settings(topic_settings: TopicSettingsFactory) -> None:
    settings = topic_settings(partitions=1, max_event_bytes=1024)
    assert isinstance(settings, Settings)
    assert settings.max_event_bytes == 1024
    assert describe_topics(settings) == [
        f"{name}: 1 partition" for name in settings.all_topics().values()
    ]


@needs_java_and_maven
def test_a_broker_that_dies_while_starting_is_reported_with_its_output(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    broker = LocalBroker(
        BrokerSettings(port=port, controller_port=controller_port, state_dir=tmp_path, heap="1k")
    )
    with pytest.raises(BrokerError) as raised:
        broker.start()
    message = str(raised.value)
    assert message.startswith(f"the broker process exited before answering at {broker.bootstrap}")
    assert f"last lines of {broker.paths.broker_out}" in message
    assert "Too small maximum heap" in message  # the JVM's own complaint, from broker.out
    assert not broker.paths.pid_file.exists()
    assert not broker.status().running
