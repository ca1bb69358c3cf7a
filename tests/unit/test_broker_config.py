"""The local broker's generated files and its no-broker-needed behaviour."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from splitpin.core.kafka.admin import wait_for_broker
from splitpin.core.kafka.broker import (
    DEPENDENCY_PLUGIN_VERSION,
    BrokerStatus,
    LocalBroker,
    log4j_binding_for,
    render_log4j2_properties,
    render_pom,
    render_server_properties,
)
from splitpin.core.settings import REPO_ROOT, BrokerSettings
from splitpin.errors import BrokerError
from tests.kafka_helpers import free_ports

POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def parse_properties(text: str) -> dict[str, str]:
    """key=value lines (Java properties as we write them), failing on duplicate keys."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a property line: {line!r}"
        assert key.strip() not in props, f"duplicate key {key}"
        props[key.strip()] = value.strip()
    return props


def test_server_properties_describe_a_single_node_kraft_cluster(tmp_path: Path) -> None:
    settings = BrokerSettings(host="127.0.0.1", port=29092, controller_port=29093)
    props = parse_properties(render_server_properties(settings, tmp_path / "data"))
    assert props == {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:29093",
        "listeners": "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:29092",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": (tmp_path / "data").as_posix(),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
    }


def test_server_properties_bracket_ipv6_hosts(tmp_path: Path) -> None:
    settings = BrokerSettings(host="::1", port=1, controller_port=2)
    props = parse_properties(render_server_properties(settings, tmp_path))
    assert props["listeners"] == "PLAINTEXT://[::1]:1,CONTROLLER://[::1]:2"
    assert props["controller.quorum.voters"] == "1@[::1]:2"
    assert LocalBroker(settings.model_copy(update={"state_dir": tmp_path})).bootstrap == "[::1]:1"


def test_log4j2_config_writes_the_server_log_in_the_log_dir(tmp_path: Path) -> None:
    props = parse_properties(render_log4j2_properties(tmp_path / "logs"))
    assert props["appender.server.fileName"] == (tmp_path / "logs" / "server.log").as_posix()
    assert props["appender.server.type"] == "RollingFile"
    assert props["rootLogger.appenderRef.server.ref"] == props["appender.server.name"]
    assert props["rootLogger.level"] == "INFO"


def test_pom_pins_kafka_the_binding_and_the_dependency_plugin() -> None:
    root = ET.fromstring(render_pom("4.1.1", ("log4j-slf4j-impl", "2.24.3")))
    deps = {
        (
            d.findtext("m:groupId", namespaces=POM_NS),
            d.findtext("m:artifactId", namespaces=POM_NS),
        ): (d.findtext("m:version", namespaces=POM_NS))
        for d in root.iterfind("m:dependencies/m:dependency", POM_NS)
    }
    assert deps == {
        ("org.apache.kafka", "kafka_2.13"): "4.1.1",
        ("org.apache.logging.log4j", "log4j-slf4j-impl"): "2.24.3",
    }
    plugin = root.find("m:build/m:plugins/m:plugin", POM_NS)
    assert plugin is not None
    assert plugin.findtext("m:artifactId", namespaces=POM_NS) == "maven-dependency-plugin"
    assert plugin.findtext("m:version", namespaces=POM_NS) == DEPENDENCY_PLUGIN_VERSION
    only_kafka = ET.fromstring(render_pom("4.1.1"))
    assert len(list(only_kafka.iterfind("m:dependencies/m:dependency", POM_NS))) == 1


@pytest.mark.parametrize(
    ("jars", "expected"),
    [
        (["slf4j-api-1.7.36.jar", "log4j-api-2.24.3.jar"], ("log4j-slf4j-impl", "2.24.3")),
        (["slf4j-api-2.0.16.jar", "log4j-api-2.25.1.jar"], ("log4j-slf4j2-impl", "2.25.1")),
        (["slf4j-api-1.7.36.jar", "log4j-api-2.24.3.jar", "log4j-slf4j-impl-2.24.3.jar"], None),
        (["kafka-clients-4.1.1.jar"], None),
    ],
)
def test_log4j_binding_matches_the_resolved_jars(
    tmp_path: Path, jars: list[str], expected: tuple[str, str] | None
) -> None:
    for name in jars:
        (tmp_path / name).touch()
    assert log4j_binding_for(tmp_path) == expected


def test_status_descriptions_tell_the_four_cases_apart(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    up = BrokerStatus(running=True, answering=True, pid=7, bootstrap="h:1", log_path=log)
    assert up.describe().startswith("broker running (pid 7), answering at h:1")
    stuck = BrokerStatus(running=True, answering=False, pid=7, bootstrap="h:1", log_path=log)
    assert "not answering" in stuck.describe()
    other = BrokerStatus(running=False, answering=True, pid=None, bootstrap="h:1", log_path=log)
    assert "another Kafka broker answers at h:1" in other.describe()
    down = BrokerStatus(running=False, answering=False, pid=None, bootstrap="h:1", log_path=log)
    assert down.describe().startswith("broker not running (nothing answers at h:1)")


def test_relative_state_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = LocalBroker(BrokerSettings(state_dir=Path("rel"), jar_cache_dir=Path("jars")))
    assert broker.paths.server_properties == tmp_path / "rel" / "server.properties"
    assert broker.libs_dir == tmp_path / "jars" / "4.1.1" / "libs"


def test_resolve_jars_without_maven_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    broker = LocalBroker(BrokerSettings(state_dir=tmp_path / "s", jar_cache_dir=tmp_path / "j"))
    with pytest.raises(BrokerError, match=r"Maven \(`mvn`\) is not on PATH"):
        broker.resolve_jars()
    assert not (tmp_path / "j" / "4.1.1" / ".resolved").exists()


def test_resolved_jars_are_reused_without_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = LocalBroker(BrokerSettings(state_dir=tmp_path / "s", jar_cache_dir=tmp_path / "j"))
    broker.libs_dir.mkdir(parents=True)
    (broker.libs_dir.parent / ".resolved").write_text("kafka_2.13-4.1.1.jar\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert broker.resolve_jars() == broker.libs_dir


def test_start_refuses_a_port_another_process_holds(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    broker = LocalBroker(
        BrokerSettings(port=port, controller_port=controller_port, state_dir=tmp_path / "s")
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", controller_port))
        squatter.listen()
        with pytest.raises(BrokerError, match=rf"controller port 127.0.0.1:{controller_port}"):
            broker.start()
    assert not broker.paths.pid_file.exists()


def test_stale_pid_file_is_not_trusted_nor_killed(tmp_path: Path) -> None:
    """A pid file naming some other live process (pid reuse) must not make us signal it."""
    (port,) = free_ports(1)
    broker = LocalBroker(BrokerSettings(port=port, state_dir=tmp_path))
    broker.paths.pid_file.write_text(f"{os.getpid()}\n")
    status = broker.status()
    assert (status.running, status.answering, status.pid) == (False, False, None)
    assert broker.stop().startswith("broker not running")
    assert not broker.paths.pid_file.exists()


def test_stop_without_any_state_is_a_no_op(tmp_path: Path) -> None:
    broker = LocalBroker(BrokerSettings(state_dir=tmp_path / "never-started"))
    assert broker.stop().startswith("broker not running")
    assert not broker.paths.state_dir.exists()


def test_wait_for_broker_gives_up_on_a_silent_port() -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=rf"no Kafka broker answered at 127.0.0.1:{port} within"):
        wait_for_broker(f"127.0.0.1:{port}", 1.5)
    assert time.monotonic() - started < 10


def test_wait_for_broker_stops_early_when_the_process_died() -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="exited before answering"):
        wait_for_broker(f"127.0.0.1:{port}", 60, alive=lambda: False)
    assert time.monotonic() - started < 5


def test_cli_broker_status_exits_1_when_nothing_runs(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    env = {
        **os.environ,
        "SPLITPIN_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "SPLITPIN_BROKER__PORT": str(port),
        "SPLITPIN_BROKER__CONTROLLER_PORT": str(controller_port),
        "SPLITPIN_BROKER__STATE_DIR": str(tmp_path),
    }
    cli = [sys.executable, "-m", "splitpin", "broker"]
    status = subprocess.run(
        [*cli, "status"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 1, status.stderr
    assert status.stdout.startswith(f"broker not running (nothing answers at 127.0.0.1:{port})")
    stop = subprocess.run(
        [*cli, "stop"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.startswith("broker not running")
