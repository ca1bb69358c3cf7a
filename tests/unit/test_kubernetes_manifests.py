"""deploy/kubernetes/ holds together offline: every object is well-formed (and passes the
Kubernetes OpenAPI schemas when `kubernetes-validate` is installed), the pieces refer to
each other correctly, and what the pods are given is what `splitpin run` needs: the
cluster identity resolves to the headless Service's names, the settings and the mounted
governance config load, the probes reach the readiness endpoint."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from splitpin.app.cluster import resolve_cluster
from splitpin.core import metrics
from splitpin.core.settings import REPO_ROOT, load_settings
from splitpin.flows.routing_flow import kafka_source

K8S = REPO_ROOT / "deploy" / "kubernetes"
NAMESPACE = "support"
FLOW_LABELS = {"app.kubernetes.io/name": "splitpin", "app.kubernetes.io/component": "flow"}
# What `splitpin run` in a pod cannot do without (the rest has working defaults).
FLOW_NEEDS = {
    "SPLITPIN_BOOTSTRAP_SERVERS",
    "SPLITPIN_RECOVERY_DIR",
    "SPLITPIN_RECOVERY_PARTITIONS",
    "SPLITPIN_METRICS_PORT",
    "SPLITPIN_GOVERNANCE_PATH",
    "SPLITPIN_CLUSTER_PORT",
    "BYTEWAX_POD_NAME",
    "BYTEWAX_POD_NAMESPACE",
    "BYTEWAX_STATEFULSET_NAME",
    "BYTEWAX_HEADLESS_SERVICE",
    "BYTEWAX_REPLICAS",
}
SECRET_KEYS = {
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "SPLITPIN_KAFKA__SASL_USERNAME",
    "SPLITPIN_KAFKA__SASL_PASSWORD",
}

Obj = dict[str, Any]


def _resources() -> list[str]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return list(kustomization["resources"])


def _load() -> list[Obj]:
    return [
        doc
        for name in _resources()
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc is not None
    ]


OBJECTS = _load()


def one(kind: str, name: str | None = None) -> Obj:
    found = [o for o in OBJECTS if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def services() -> list[Obj]:
    return [o for o in OBJECTS if o["kind"] == "Service"]


def headless() -> Obj:
    return next(s for s in services() if s["spec"].get("clusterIP") == "None")


def metrics_service() -> Obj:
    return next(s for s in services() if s["spec"].get("clusterIP") != "None")


def statefulset() -> Obj:
    return one("StatefulSet")


def pod_spec() -> Obj:
    spec: Obj = statefulset()["spec"]["template"]["spec"]
    return spec


def flow_container() -> Obj:
    return next(c for c in pod_spec()["containers"] if c["name"] == "flow")


def all_containers() -> Iterator[Obj]:
    for obj in OBJECTS:
        template = obj.get("spec", {}).get("template", {})
        spec = template.get("spec", {})
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def literal_env(container: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def container_env(container: Obj, pod_name: str, *, replicas: int | None = None) -> dict[str, str]:
    """The environment Kubernetes would give `container` in pod `pod_name` (no Secret keys:
    the template has none, and every reference to it is optional)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        configmap = one("ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in configmap["data"].items()})
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    if replicas is not None:
        env["BYTEWAX_REPLICAS"] = str(replicas)
    return env


def port_of(container: Obj, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"{container['name']} exposes no port named {name!r}: {ports}"
    return int(ports[name])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- structure ----------------------------------------------------------------------------


def test_every_file_is_listed_and_every_object_is_well_formed() -> None:
    listed = set(_resources())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = {o["kind"] for o in OBJECTS}
    assert {
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "Job",
    } <= kinds
    for obj in OBJECTS:
        assert isinstance(obj.get("apiVersion"), str), obj
        assert isinstance(obj.get("kind"), str), obj
        assert obj["metadata"]["name"], obj
        assert "namespace" not in obj["metadata"], "the namespace is the overlay's choice"
    names = [(o["kind"], o["metadata"]["name"]) for o in OBJECTS]
    assert len(names) == len(set(names))


def test_statefulset_forms_a_cluster_through_the_headless_service() -> None:
    sts, svc = statefulset(), headless()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    # Pods not yet ready must resolve: readiness needs a closed epoch, which needs all peers.
    assert svc["spec"]["publishNotReadyAddresses"] is True
    # OrderedReady would start pod 1 only once pod 0 is ready, which it never gets alone.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["updateStrategy"]["type"] == "OnDelete"
    env = literal_env(flow_container())
    assert env["BYTEWAX_STATEFULSET_NAME"] == sts["metadata"]["name"]
    assert env["BYTEWAX_HEADLESS_SERVICE"] == svc["metadata"]["name"]
    assert int(env["BYTEWAX_REPLICAS"]) == sts["spec"]["replicas"]
    cluster_port = port_of(flow_container(), "cluster")
    assert int(env["SPLITPIN_CLUSTER_PORT"]) == cluster_port
    assert any(p["targetPort"] in ("cluster", cluster_port) for p in svc["spec"]["ports"])


def test_selectors_match_labels() -> None:
    sts = statefulset()
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert matches(sts["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(FLOW_LABELS, pod_labels)
    for svc in services():
        assert matches(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
    pdb = one("PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    job = one("Job")
    assert not matches(
        sts["spec"]["selector"]["matchLabels"], job["spec"]["template"]["metadata"]["labels"]
    )
    monitor = one("ServiceMonitor")
    selected = [
        s
        for s in services()
        if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert selected == [metrics_service()], (
        "the ServiceMonitor must select only the metrics Service"
    )


def test_probes_and_scrapes_reach_ports_the_container_exposes() -> None:
    flow = flow_container()
    metrics_port = port_of(flow, "metrics")
    assert int(literal_env(flow)["SPLITPIN_METRICS_PORT"]) == metrics_port
    probes = {k: flow[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for probe in probes.values():
        port = probe["port"]
        assert port == metrics_port or port_of(flow, port) == metrics_port
    assert probes["readinessProbe"]["path"] == metrics.READY_PATH
    assert probes["livenessProbe"]["path"] == metrics.LIVE_PATH
    svc_ports = {p["name"]: p for p in metrics_service()["spec"]["ports"]}
    for port in svc_ports.values():
        assert port["targetPort"] in ("metrics", metrics_port)
    for endpoint in one("ServiceMonitor")["spec"]["endpoints"]:
        assert endpoint["port"] in svc_ports
        assert endpoint.get("path", "/metrics") == "/metrics"


def test_secret_is_a_template_and_every_reference_is_optional() -> None:
    secret = one("Secret")
    assert not secret.get("data") and not secret.get("stringData"), "no values in the repo"
    documented = (K8S / "secret.yaml").read_text()
    referenced: set[str] = set()
    for container in all_containers():
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                continue
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["optional"] is True, f"{var['name']}: a missing key must not stop the pod"
            assert var["name"] == ref["key"]
            assert ref["key"] in documented
            referenced.add(ref["key"])
    assert referenced == SECRET_KEYS


def test_recovery_is_one_shared_volume_seen_by_init_and_flow() -> None:
    pvc = one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "volumeClaimTemplates" not in statefulset()["spec"]
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    claims = [v for v in volumes.values() if "persistentVolumeClaim" in v]
    assert [c["persistentVolumeClaim"]["claimName"] for c in claims] == [pvc["metadata"]["name"]]
    init = next(c for c in pod_spec()["initContainers"] if c["name"] == "recovery-init")
    for container in (init, flow_container()):
        env = literal_env(container)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[env["SPLITPIN_RECOVERY_DIR"]] == claims[0]["name"]
        assert (
            env["SPLITPIN_RECOVERY_PARTITIONS"]
            == literal_env(flow_container())["SPLITPIN_RECOVERY_PARTITIONS"]
        )
    for container in pod_spec()["initContainers"] + pod_spec()["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes


def _materialise(tmp: Path) -> dict[str, str]:
    """Lay the flow container's ConfigMap mounts out under `tmp`; returns the mount path ->
    local path map (for rewriting paths in its environment)."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    rewrites: dict[str, str] = {}
    for mount in flow_container()["volumeMounts"]:
        source = volumes[mount["name"]]
        local = tmp / mount["name"]
        rewrites[mount["mountPath"]] = str(local)
        if "configMap" not in source:
            continue
        data = one("ConfigMap", source["configMap"]["name"])["data"]
        items = source["configMap"].get("items") or [{"key": k, "path": k} for k in data]
        assert {i["key"] for i in items} == set(data), "every ConfigMap key is mounted"
        for item in items:
            target = local / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
    return rewrites


def test_flow_environment_is_complete_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings, the mounted governance file and its knowledge bases validate exactly as
    `splitpin run` would load them in pod 0."""
    env = container_env(flow_container(), f"{statefulset()['metadata']['name']}-0")
    assert set(env) >= FLOW_NEEDS, FLOW_NEEDS - set(env)
    rewrites = _materialise(tmp_path)
    governance = Path(env["SPLITPIN_GOVERNANCE_PATH"])
    assert str(governance.parent) in rewrites, "the governance file is on a mounted volume"
    for key, value in list(env.items()):
        for mount, local in rewrites.items():
            if value == mount or value.startswith(mount + "/"):
                env[key] = local + value[len(mount) :]
    for key in list(os.environ):
        if key.startswith(("SPLITPIN_", "BYTEWAX_")) or key == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.metrics_port == port_of(flow_container(), "metrics")
    assert settings.governance_file == Path(env["SPLITPIN_GOVERNANCE_PATH"])
    loaded = settings.governance  # validates every knowledge.bases file too
    bases = loaded.knowledge.bases
    assert bases, "the example tenant knowledge base is wired in"
    for path in bases.values():
        assert path.is_file(), f"{path} is named in governance.yaml but not mounted"


@given(replicas=st.integers(min_value=1, max_value=64), data=st.data())
def test_every_pod_resolves_its_ordinal_and_the_headless_addresses(
    replicas: int, data: st.DataObject
) -> None:
    """For any replica count, pod <sts>-<i> is process i of a cluster whose addresses are
    the pods' stable names behind the headless Service, on the exposed cluster port."""
    sts = statefulset()["metadata"]["name"]
    ordinal = data.draw(st.integers(min_value=0, max_value=replicas - 1))
    env = container_env(flow_container(), f"{sts}-{ordinal}", replicas=replicas)
    identity = resolve_cluster(env)
    assert identity.process_id == ordinal
    port = port_of(flow_container(), "cluster")
    domain = f"{headless()['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert identity.addresses == tuple(f"{sts}-{i}.{domain}:{port}" for i in range(replicas))


def test_recovery_init_creates_the_partitions_once_and_peers_wait_for_them(
    tmp_path: Path,
) -> None:
    """The init container's own script: pod 0 creates every partition, pod 1 then passes."""
    init = next(c for c in pod_spec()["initContainers"] if c["name"] == "recovery-init")
    sts = statefulset()["metadata"]["name"]
    partitions = int(literal_env(init)["SPLITPIN_RECOVERY_PARTITIONS"])
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    for ordinal in (0, 1):
        env = container_env(init, f"{sts}-{ordinal}")
        env.update(SPLITPIN_RECOVERY_DIR=str(tmp_path / "recovery"), PATH=path)
        done = subprocess.run(
            init["command"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert len(list((tmp_path / "recovery").glob("part-*.sqlite3"))) == partitions


def test_topics_job_creates_topics_with_the_shared_settings() -> None:
    job = one("Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["splitpin", "topics", "create"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert container["envFrom"] == flow_container()["envFrom"]
    env = container_env(container, "job")
    assert int(env["SPLITPIN_PARTITIONS"]) >= int(literal_env(flow_container())["BYTEWAX_REPLICAS"])


# --- offline tools ------------------------------------------------------------------------


def _kustomize() -> list[Obj]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_kustomize_renders_every_object_with_the_pinned_image() -> None:
    rendered = _kustomize()
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in OBJECTS
    )
    images = {
        c["image"]
        for o in rendered
        for c in _containers(o.get("spec", {}).get("template", {}).get("spec", {}))
    }
    assert len(images) == 1
    assert next(iter(images)).count(":") == 1


def _containers(spec: Obj) -> Iterable[Obj]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_objects_pass_the_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (PyPI) is not installed; structural checks above still run",
    )
    target = kubernetes_validate.latest_version() if version == "latest" else version
    for obj in OBJECTS:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: no schema in Kubernetes' OpenAPI; checked structurally above
        kubernetes_validate.validate(obj, target, strict=True)


# --- the readiness signal the probes read -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def test_readyz_turns_ready_only_after_an_epoch_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Served beside /metrics: live at once, ready only after a source partition's snapshot
    (Bytewax calls it once per closed epoch), through the flow's own Kafka source."""
    monkeypatch.setattr(metrics, "_first_epoch", type(metrics._first_epoch)())
    port = _free_port()
    metrics.serve(port)
    assert _get(port, metrics.LIVE_PATH)[0] == 200
    assert _get(port, metrics.READY_PATH)[0] == 503
    status, body = _get(port, "/metrics")
    assert status == 200
    assert b"splitpin_input_snapshots_total" in body
    before = REGISTRY.get_sample_value("splitpin_input_snapshots_total") or 0.0

    source = kafka_source(load_settings(), "k8s-readiness-probe", tail=True)
    part = source.build_part("in", "0-k8s-readiness-probe", 42)
    try:
        assert _get(port, metrics.READY_PATH)[0] == 503  # built, no epoch closed yet
        assert part.snapshot() == 42  # the offset Bytewax stores, unchanged by the wrapper
    finally:
        part.close()
    assert _get(port, metrics.READY_PATH) == (200, b"ok\n")
    assert REGISTRY.get_sample_value("splitpin_input_snapshots_total") == before + 1


@given(
    path=st.sampled_from([metrics.LIVE_PATH, metrics.READY_PATH, "/metrics", "/"])
    | st.text(alphabet="/abdeilmrstvyz?", min_size=1, max_size=12),
    ready=st.booleans(),
)
def test_health_paths_never_shadow_metrics(path: str, ready: bool) -> None:
    """Only /livez and /readyz are answered by the health app; every other path is the
    metrics app's, and /readyz says 200 exactly when an epoch closed."""
    event = type(metrics._first_epoch)()
    if ready:
        event.set()
    calls: list[str] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"metrics"]

    statuses: list[str] = []
    original = metrics._first_epoch
    metrics._first_epoch = event
    try:
        body = metrics._health_app(inner)(
            {"PATH_INFO": path}, lambda status, headers: statuses.append(status)
        )
    finally:
        metrics._first_epoch = original
    if path == metrics.LIVE_PATH:
        assert (statuses, calls) == (["200 OK"], [])
    elif path == metrics.READY_PATH:
        assert statuses == (["200 OK"] if ready else ["503 Service Unavailable"])
        assert calls == []
    else:
        assert calls == [path]
        assert list(body) == [b"metrics"]


def test_the_configmap_governance_is_the_shipped_one_plus_its_knowledge_base() -> None:
    """The ConfigMap carried an older policy (verify: always, an untuned out-of-scope
    threshold) while config/governance.yaml moved on: a deploy ran what no bench measured.
    Only `knowledge.bases` may differ (the ConfigMap mounts an example tenant base)."""
    mounted = yaml.safe_load(one("ConfigMap", "splitpin-governance")["data"]["governance.yaml"])
    shipped = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    assert mounted["knowledge"].pop("bases"), "the example base is wired in"
    shipped["knowledge"].pop("bases")
    assert mounted == shipped
