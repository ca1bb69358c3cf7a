"""Process identity: flags > SPLITPIN_* > BYTEWAX_* > hostfile > StatefulSet; bad input exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitpin.app.cluster import BYTEWAX_CHART_PORT, resolve_cluster
from splitpin.errors import ConfigError

hosts = st.lists(
    st.from_regex(r"[a-z][a-z0-9\-]{0,10}:[1-9][0-9]{0,3}", fullmatch=True),
    min_size=1,
    max_size=6,
    unique=True,
)


@st.composite
def sources(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, object], int, tuple[str, ...]]:
    """Several sources set at once, each with a distinct (id, addresses); the expected winner."""
    env: dict[str, str] = {}
    kwargs: dict[str, object] = {}
    lists = draw(st.lists(hosts, min_size=4, max_size=4))
    ids = [draw(st.integers(0, len(addresses) - 1)) for addresses in lists]
    use = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    expected_id: int | None = None
    expected_hosts: tuple[str, ...] | None = None
    if use[0]:
        kwargs["process_id"], kwargs["addresses"] = ids[0], ";".join(lists[0])
        expected_id, expected_hosts = ids[0], tuple(lists[0])
    if use[1]:
        env["SPLITPIN_PROCESS_ID"], env["SPLITPIN_ADDRESSES"] = str(ids[1]), ";".join(lists[1])
        if expected_id is None:
            expected_id, expected_hosts = ids[1], tuple(lists[1])
    if use[2] or expected_id is None:
        env["BYTEWAX_PROCESS_ID"], env["BYTEWAX_ADDRESSES"] = str(ids[2]), ";".join(lists[2])
        if expected_id is None:
            expected_id, expected_hosts = ids[2], tuple(lists[2])
    assert expected_hosts is not None
    return env, kwargs, expected_id, expected_hosts


@given(sources())
def test_the_first_source_in_precedence_wins(
    case: tuple[dict[str, str], dict[str, object], int, tuple[str, ...]],
) -> None:
    env, kwargs, expected_id, expected_hosts = case
    found = resolve_cluster(env, **kwargs)  # type: ignore[arg-type]
    assert (found.process_id, found.addresses) == (expected_id, expected_hosts)


@given(st.integers(1, 20), st.data())
def test_statefulset_pod_ordinal_and_headless_service(replicas: int, data: st.DataObject) -> None:
    ordinal = data.draw(st.integers(0, replicas - 1))
    env = {
        "BYTEWAX_STATEFULSET_NAME": "splitpin-flow",
        "HOSTNAME": f"splitpin-flow-{ordinal}",
        "BYTEWAX_REPLICAS": str(replicas),
        "BYTEWAX_POD_NAMESPACE": "support",
    }
    found = resolve_cluster(env)
    assert found.process_id == ordinal
    assert found.addresses is not None and len(found.addresses) == replicas
    assert found.addresses[ordinal] == (
        f"splitpin-flow-{ordinal}.splitpin-flow.support.svc.cluster.local:{BYTEWAX_CHART_PORT}"
    )
    service = resolve_cluster(
        {**env, "BYTEWAX_HEADLESS_SERVICE": "flow-peers", "SPLITPIN_CLUSTER_PORT": "2101"}
    )
    assert service.addresses is not None
    assert service.addresses[0] == "splitpin-flow-0.flow-peers.support.svc.cluster.local:2101"


def test_bytewax_pod_name_beats_hostname_and_hostfile_beats_statefulset(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile.txt"
    hostfile.write_text("a-0.peers:9999\n\n a-1.peers:9999 \na-2.peers:9999\n")
    env = {
        "BYTEWAX_STATEFULSET_NAME": "a",
        "BYTEWAX_POD_NAME": "a-2",
        "HOSTNAME": "a-0",
        "BYTEWAX_REPLICAS": "5",
        "BYTEWAX_HOSTFILE_PATH": str(hostfile),
    }
    found = resolve_cluster(env)
    assert found.process_id == 2
    assert found.addresses == ("a-0.peers:9999", "a-1.peers:9999", "a-2.peers:9999")
    other = tmp_path / "other.txt"
    other.write_text("x:1\ny:2\nz:3\n")
    assert resolve_cluster(env, hostfile=other).addresses == ("x:1", "y:2", "z:3")


def test_nothing_set_is_a_single_process_and_workers_follow_precedence() -> None:
    assert resolve_cluster({}).process_id is None
    assert resolve_cluster({}).workers == 1
    assert resolve_cluster({"BYTEWAX_WORKERS_PER_PROCESS": "3"}).workers == 3
    assert (
        resolve_cluster({"BYTEWAX_WORKERS_PER_PROCESS": "3", "SPLITPIN_WORKERS": "2"}).workers == 2
    )
    assert resolve_cluster({"SPLITPIN_WORKERS": "2"}, workers=4).workers == 4
    # Kubernetes renders an unset optional value as "": that is "not set", not an error.
    assert (
        resolve_cluster({"SPLITPIN_PROCESS_ID": "", "SPLITPIN_ADDRESSES": " "}).process_id is None
    )


@pytest.mark.parametrize(
    ("env", "kwargs", "named"),
    [
        ({"SPLITPIN_PROCESS_ID": "1"}, {}, "SPLITPIN_PROCESS_ID"),
        ({"SPLITPIN_ADDRESSES": "a:1;b:2"}, {}, "SPLITPIN_ADDRESSES"),
        ({"SPLITPIN_PROCESS_ID": "one", "SPLITPIN_ADDRESSES": "a:1"}, {}, "SPLITPIN_PROCESS_ID"),
        ({"SPLITPIN_PROCESS_ID": "-1", "SPLITPIN_ADDRESSES": "a:1"}, {}, "SPLITPIN_PROCESS_ID"),
        ({"SPLITPIN_PROCESS_ID": "2", "SPLITPIN_ADDRESSES": "a:1;b:2"}, {}, "SPLITPIN_PROCESS_ID"),
        ({"BYTEWAX_PROCESS_ID": "0", "BYTEWAX_ADDRESSES": "a:1;a:1"}, {}, "BYTEWAX_ADDRESSES"),
        ({"SPLITPIN_PROCESS_ID": "0", "SPLITPIN_ADDRESSES": "a;b:2"}, {}, "SPLITPIN_ADDRESSES"),
        ({"SPLITPIN_PROCESS_ID": "0", "SPLITPIN_ADDRESSES": "a:99999"}, {}, "SPLITPIN_ADDRESSES"),
        ({}, {"process_id": 3, "addresses": "a:1;b:2"}, "--process-id"),
        ({}, {"process_id": 0, "addresses": ";"}, "--addresses"),
        (
            {"BYTEWAX_STATEFULSET_NAME": "flow", "HOSTNAME": "web-1", "BYTEWAX_REPLICAS": "2"},
            {},
            "HOSTNAME",
        ),
        (
            {"BYTEWAX_STATEFULSET_NAME": "flow", "BYTEWAX_POD_NAME": "flow-x"},
            {},
            "BYTEWAX_POD_NAME",
        ),
        (
            {"BYTEWAX_STATEFULSET_NAME": "flow", "HOSTNAME": "flow-0", "BYTEWAX_REPLICAS": "0"},
            {},
            "BYTEWAX_REPLICAS",
        ),
        (
            {"BYTEWAX_STATEFULSET_NAME": "flow", "HOSTNAME": "flow-3", "BYTEWAX_REPLICAS": "3"},
            {},
            "BYTEWAX_STATEFULSET_NAME",
        ),
        ({"BYTEWAX_STATEFULSET_NAME": "flow", "HOSTNAME": "flow-0"}, {}, "BYTEWAX_REPLICAS"),
        ({"SPLITPIN_WORKERS": "0"}, {}, "SPLITPIN_WORKERS"),
        (
            {"BYTEWAX_HOSTFILE_PATH": "/nonexistent/hosts", "SPLITPIN_PROCESS_ID": "0"},
            {},
            "BYTEWAX_HOSTFILE_PATH",
        ),
    ],
)
def test_inconsistent_input_names_the_variable(
    env: dict[str, str], kwargs: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        resolve_cluster(env, **kwargs)  # type: ignore[arg-type]


def test_splitpin_run_exits_2_naming_the_variable(tmp_path: Path) -> None:
    """The CLI path: the error is reported before anything connects to Kafka."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPLITPIN_", "BYTEWAX_"))}
    env.update(
        SPLITPIN_PROCESS_ID="2",
        SPLITPIN_ADDRESSES="127.0.0.1:1;127.0.0.1:2",
        SPLITPIN_BOOTSTRAP_SERVERS="127.0.0.1:1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "splitpin", "run", "--no-recovery"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "SPLITPIN_PROCESS_ID" in done.stdout + done.stderr
