"""Which Bytewax cluster process this is: process id, every process's address, workers.

A StatefulSet gives each pod a stable name `<statefulset>-<ordinal>` and a headless
Service gives each a stable DNS name, so a pod can work out its own identity without a
per-pod command line. The names of the variables mirror Bytewax's own `bytewax.run` and
its Helm chart (`BYTEWAX_PROCESS_ID`, `BYTEWAX_ADDRESSES`, `BYTEWAX_WORKERS_PER_PROCESS`,
`BYTEWAX_POD_NAME` + `BYTEWAX_STATEFULSET_NAME`, `BYTEWAX_HOSTFILE_PATH`), so a manifest
written for Bytewax works unchanged. Precedence, first found wins, separately for each
value:

- process id: `--process-id` > `SPLITPIN_PROCESS_ID` > `BYTEWAX_PROCESS_ID` > the pod
  ordinal (`BYTEWAX_POD_NAME`, else `HOSTNAME`, minus `BYTEWAX_STATEFULSET_NAME-`);
- addresses: `--addresses` > `SPLITPIN_ADDRESSES` > `BYTEWAX_ADDRESSES` > a hostfile
  (`--hostfile` > `BYTEWAX_HOSTFILE_PATH`, one `host:port` a line) > the StatefulSet
  (`BYTEWAX_STATEFULSET_NAME` x `BYTEWAX_REPLICAS` pods behind the headless Service
  `BYTEWAX_HEADLESS_SERVICE`, default the StatefulSet's name as in Bytewax's chart, in
  `BYTEWAX_POD_NAMESPACE` when set, on `SPLITPIN_CLUSTER_PORT`);
- workers per process: `--workers` > `SPLITPIN_WORKERS` > `BYTEWAX_WORKERS_PER_PROCESS` > 1.

Anything inconsistent (an id without addresses or the reverse, an id outside the address
list, a pod name that is not `<statefulset>-<ordinal>`, a malformed or repeated address)
is a ConfigError naming the variable, which `splitpin run` turns into exit status 2:
a process that guessed would join the wrong cluster or wait forever for a peer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from splitpin.errors import ConfigError

# The port Bytewax's Helm chart gives the cluster's processes; SPLITPIN_CLUSTER_PORT overrides.
BYTEWAX_CHART_PORT = 9999

_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class ClusterIdentity:
    """This process's place in the cluster; `process_id` None means a single process."""

    process_id: int | None
    addresses: tuple[str, ...] | None
    workers: int
    source: str  # where the id and addresses came from, for the start-up log


def _int(value: str, name: str, *, minimum: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        msg = f"{name}={value!r} is not an integer"
        raise ConfigError(msg) from None
    if number < minimum:
        msg = f"{name}={number} must be >= {minimum}"
        raise ConfigError(msg)
    return number


def _env(env: Mapping[str, str], name: str) -> str | None:
    """A set, non-blank variable (Kubernetes renders an unset optional value as "")."""
    value = env.get(name)
    return value if value is not None and value.strip() else None


def parse_addresses(raw: str, name: str) -> tuple[str, ...]:
    """`host:port;host:port` (blank entries ignored); each once and well-formed."""
    return check_addresses([part.strip() for part in raw.split(";") if part.strip()], name)


def check_addresses(addresses: list[str], name: str) -> tuple[str, ...]:
    if not addresses:
        msg = f"{name} lists no addresses"
        raise ConfigError(msg)
    for address in addresses:
        match = _ADDRESS.match(address)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            msg = f"{name}: {address!r} is not host:port"
            raise ConfigError(msg)
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        msg = f"{name} lists {', '.join(repeated)} more than once"
        raise ConfigError(msg)
    return tuple(addresses)


def read_hostfile(path: Path, name: str) -> tuple[str, ...]:
    """Bytewax's hostfile: one `host:port` a line, blank lines ignored."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        msg = f"{name}: cannot read hostfile {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    return check_addresses([line.strip() for line in lines if line.strip()], f"{name} ({path})")


def pod_ordinal(env: Mapping[str, str]) -> tuple[int, str] | None:
    """The StatefulSet ordinal from the pod name, or None outside a StatefulSet."""
    statefulset = _env(env, "BYTEWAX_STATEFULSET_NAME")
    if statefulset is None:
        return None
    name = "BYTEWAX_POD_NAME" if _env(env, "BYTEWAX_POD_NAME") else "HOSTNAME"
    pod = _env(env, name)
    if pod is None:
        msg = "BYTEWAX_STATEFULSET_NAME is set but neither BYTEWAX_POD_NAME nor HOSTNAME is"
        raise ConfigError(msg)
    pod = pod.strip().split(".", 1)[0]  # a HOSTNAME may be fully qualified
    prefix = f"{statefulset.strip()}-"
    ordinal = pod.removeprefix(prefix)
    if not pod.startswith(prefix) or not ordinal.isdigit():
        msg = (
            f"{name}={pod!r} is not '{prefix}<ordinal>' "
            f"(BYTEWAX_STATEFULSET_NAME={statefulset.strip()!r})"
        )
        raise ConfigError(msg)
    return int(ordinal), f"pod ordinal from {name}"


def statefulset_addresses(env: Mapping[str, str]) -> tuple[str, ...] | None:
    """Every pod's DNS name behind the headless Service, or None without BYTEWAX_REPLICAS."""
    statefulset = _env(env, "BYTEWAX_STATEFULSET_NAME")
    replicas_raw = _env(env, "BYTEWAX_REPLICAS")
    if statefulset is None or replicas_raw is None:
        return None
    replicas = _int(replicas_raw, "BYTEWAX_REPLICAS", minimum=1)
    service = (_env(env, "BYTEWAX_HEADLESS_SERVICE") or statefulset).strip()
    namespace = _env(env, "BYTEWAX_POD_NAMESPACE")
    domain = f"{service}.{namespace.strip()}.svc.cluster.local" if namespace else service
    port_raw = _env(env, "SPLITPIN_CLUSTER_PORT")
    port = _int(port_raw, "SPLITPIN_CLUSTER_PORT", minimum=1) if port_raw else BYTEWAX_CHART_PORT
    addresses = [f"{statefulset.strip()}-{i}.{domain}:{port}" for i in range(replicas)]
    return check_addresses(addresses, "BYTEWAX_STATEFULSET_NAME/BYTEWAX_REPLICAS")


def _process_id(flag: int | None, env: Mapping[str, str]) -> tuple[int, str] | None:
    if flag is not None:
        if flag < 0:
            msg = f"--process-id={flag} must be >= 0"
            raise ConfigError(msg)
        return flag, "--process-id"
    for name in ("SPLITPIN_PROCESS_ID", "BYTEWAX_PROCESS_ID"):
        raw = _env(env, name)
        if raw is not None:
            return _int(raw, name, minimum=0), name
    return pod_ordinal(env)


def _addresses(
    flag: str | None, hostfile: Path | None, env: Mapping[str, str]
) -> tuple[tuple[str, ...], str] | None:
    if flag is not None:
        return parse_addresses(flag, "--addresses"), "--addresses"
    for name in ("SPLITPIN_ADDRESSES", "BYTEWAX_ADDRESSES"):
        raw = _env(env, name)
        if raw is not None:
            return parse_addresses(raw, name), name
    if hostfile is not None:
        return read_hostfile(hostfile, "--hostfile"), f"hostfile {hostfile}"
    path = _env(env, "BYTEWAX_HOSTFILE_PATH")
    if path is not None:
        return read_hostfile(Path(path.strip()), "BYTEWAX_HOSTFILE_PATH"), f"hostfile {path}"
    found = statefulset_addresses(env)
    return (found, "StatefulSet BYTEWAX_STATEFULSET_NAME x BYTEWAX_REPLICAS") if found else None


def _workers(flag: int | None, env: Mapping[str, str]) -> int:
    if flag is not None:
        if flag < 1:
            msg = f"--workers={flag} must be >= 1"
            raise ConfigError(msg)
        return flag
    for name in ("SPLITPIN_WORKERS", "BYTEWAX_WORKERS_PER_PROCESS"):
        raw = _env(env, name)
        if raw is not None:
            return _int(raw, name, minimum=1)
    return 1


def resolve_cluster(
    env: Mapping[str, str],
    *,
    process_id: int | None = None,
    addresses: str | None = None,
    hostfile: Path | None = None,
    workers: int | None = None,
) -> ClusterIdentity:
    """This process's identity from the flags and the environment (see the module doc)."""
    count = _workers(workers, env)
    found_id = _process_id(process_id, env)
    found_addresses = _addresses(addresses, hostfile, env)
    if found_id is None and found_addresses is None:
        return ClusterIdentity(None, None, count, "no cluster settings")
    if found_id is None:
        assert found_addresses is not None  # narrowing: both None returned above
        msg = (
            f"addresses come from {found_addresses[1]} but no process id is set: pass "
            "--process-id or set SPLITPIN_PROCESS_ID (or BYTEWAX_POD_NAME + "
            "BYTEWAX_STATEFULSET_NAME)"
        )
        raise ConfigError(msg)
    if found_addresses is None:
        msg = (
            f"process id {found_id[0]} comes from {found_id[1]} but no addresses are set: pass "
            "--addresses or set SPLITPIN_ADDRESSES (or BYTEWAX_HOSTFILE_PATH, or "
            "BYTEWAX_REPLICAS with BYTEWAX_STATEFULSET_NAME)"
        )
        raise ConfigError(msg)
    (pid, id_source), (hosts, hosts_source) = found_id, found_addresses
    if pid >= len(hosts):
        msg = (
            f"process id {pid} (from {id_source}) is outside the {len(hosts)} address(es) "
            f"from {hosts_source}: ids run from 0 to {len(hosts) - 1}"
        )
        raise ConfigError(msg)
    return ClusterIdentity(pid, hosts, count, f"id from {id_source}, addresses from {hosts_source}")
