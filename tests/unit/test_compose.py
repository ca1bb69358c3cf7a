"""docker-compose.yml, the Dockerfile and Prometheus' config agree with each other."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import splitpin.core.metrics  # noqa: F401  (registers splitpin's metrics)
from splitpin.core.settings import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
FLOWS = ["flow-0", "flow-1"]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    return dict(compose["services"])


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def compose_command() -> list[str] | None:
    """`docker compose` (plugin) if it works, else standalone `docker-compose`, else None."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for candidate in candidates:
        if shutil.which(candidate[0]) is None:
            continue
        probe = subprocess.run(
            [*candidate, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return candidate
    return None


def test_all_services_are_declared(services: dict[str, Any]) -> None:
    assert {"kafka", "topics", *FLOWS, "prometheus"} <= set(services)


def test_kafka_is_a_healthchecked_single_node_kraft_broker(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = kafka["environment"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    # Every advertised listener has a protocol mapping and a matching listener.
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    for advertised in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        assert advertised.split("://")[0] in listeners & set(protocols)


def test_topics_runs_once_kafka_is_healthy(services: dict[str, Any]) -> None:
    topics = services["topics"]
    assert topics["command"] == ["splitpin", "topics", "create"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics["environment"]["SPLITPIN_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert topics["restart"] == "no"


def test_flow_processes_form_one_consistent_cluster(services: dict[str, Any]) -> None:
    commands = [services[name]["command"] for name in FLOWS]
    addresses = {option(command, "--addresses") for command in commands}
    assert len(addresses) == 1, "every process must get the same address list"
    hosts = [address.split(":")[0] for address in addresses.pop().split(";")]
    assert hosts == FLOWS, "process N's address must be the service flow-N"
    for index, (name, command) in enumerate(zip(FLOWS, commands, strict=True)):
        assert command[:2] == ["splitpin", "run"]
        assert option(command, "--process-id") == str(index)
        assert services[name]["hostname"] == name

    envs = [services[name]["environment"] for name in FLOWS]
    assert all(env["SPLITPIN_BOOTSTRAP_SERVERS"] == "kafka:9092" for env in envs)
    assert all(env["SPLITPIN_METRICS_PORT"] == "9464" for env in envs)
    # Snapshots are shared: the same directory on the same named volume in both processes.
    recovery = {env["SPLITPIN_RECOVERY_DIR"] for env in envs}
    assert len(recovery) == 1
    mounts = [set(services[name]["volumes"]) for name in FLOWS]
    assert mounts[0] == mounts[1]
    recovery_dir = recovery.pop()
    assert any(m.endswith(f":{recovery_dir}") and not m.startswith(".") for m in mounts[0])
    for name in FLOWS:
        depends = services[name]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_both_flow_processes(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounted = {
        v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"] if v.startswith("./")
    }
    config_path = REPO_ROOT / "deploy" / "prometheus.yml"
    assert mounted["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    config = yaml.safe_load(config_path.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        f"{name}:{services[name]['environment']['SPLITPIN_METRICS_PORT']}" for name in FLOWS
    }
    assert targets == expected


def test_promtool_accepts_the_prometheus_config() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package `prometheus`) is not installed")
    result = subprocess.run(
        ["promtool", "check", "config", str(REPO_ROOT / "deploy" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_the_wheel_and_installs_only_it() -> None:
    """Two stages: the wheel is built from the sources, the runtime image installs just it
    (tests/unit/test_wheel_contents.py checks that wheel), as an unprivileged user."""
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    froms = [line for line in lines if line.startswith("FROM")]
    assert froms == ["FROM python:3.11-slim AS build", "FROM python:3.11-slim"]
    assert "RUN pip wheel --no-deps --wheel-dir /wheels ." in lines
    assert "COPY --from=build /wheels /wheels" in lines
    assert "RUN pip install /wheels/*.whl && rm -rf /wheels" in lines
    runtime = lines[lines.index("FROM python:3.11-slim") :]
    assert "USER splitpin" in runtime
    assert not any(line.startswith("COPY ") and "--from=build" not in line for line in runtime)
    assert any("tokens.encoding" in line for line in runtime)  # encodings seeded at build
    assert (REPO_ROOT / "config" / "governance.yaml").is_file()
    # Every COPY source exists, so the build cannot break on a renamed directory.
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_compose_mounts_the_governance_file_it_points_at() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    env = compose["x-flow-env"]
    assert env["SPLITPIN_GOVERNANCE_PATH"] == "/app/config/governance.yaml"
    assert "./config:/app/config:ro" in compose["x-flow"]["volumes"]


def test_docker_compose_validates_the_file() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither the `docker compose` plugin nor `docker-compose` is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_paths_are_relative_to_the_repo() -> None:
    # A bind mount that points outside the repository would not exist on another machine.
    compose = yaml.safe_load(COMPOSE.read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).resolve().is_relative_to(REPO_ROOT)
                assert (REPO_ROOT / source).exists(), source


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:

    dashboard = json.loads((REPO_ROOT / "deploy/grafana/dashboards/splitpin.json").read_text())
    queried = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bsplitpin_\w+", target["expr"])
    }
    exposed = {
        sample.name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        for family in REGISTRY.collect()
        for sample in family.samples
    } | {family.name + "_total" for family in REGISTRY.collect() if family.type == "counter"}
    exposed |= {family.name for family in REGISTRY.collect()}
    assert queried and queried <= exposed, sorted(queried - exposed)
