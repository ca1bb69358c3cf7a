"""A real Apache Kafka broker (KRaft, combined broker+controller) run from Maven Central jars.

Where no Docker engine exists, this is how splitpin gets a genuine broker for the CLI, the
demo and the tests: Maven resolves `org.apache.kafka:kafka_2.13` (plus a log4j binding for
slf4j, which the broker's POM leaves out, so it logs instead of falling back to slf4j NOP)
into a per-version cache once per machine, and `kafka.Kafka` runs detached with its state,
pid file and logs under `BrokerSettings.state_dir`.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from splitpin.core.kafka.admin import broker_answers, wait_for_broker
from splitpin.core.settings import BrokerSettings
from splitpin.errors import BrokerError

DEPENDENCY_PLUGIN_VERSION = "3.8.1"
# Used only when the resolved Kafka jars do not reveal their log4j version.
FALLBACK_LOG4J_VERSION = "2.24.3"
MVN_TIMEOUT_S = 900.0
TOOL_TIMEOUT_S = 120.0
STOP_GRACE_S = 30.0
_RESOLVED_MARKER = ".resolved"
_NODE_ID = 1

# Starts the broker in the background and prints its pid: the broker is then nobody's
# child in Python, so it outlives the CLI and never shows up as an unwaited Popen.
_LAUNCHER = 'out="$1"; shift; "$@" >>"$out" 2>&1 </dev/null & echo $!'


def host_port(host: str, port: int) -> str:
    """`host:port`, bracketing IPv6 literals as Kafka and librdkafka expect."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_server_properties(settings: BrokerSettings, data_dir: Path) -> str:
    """server.properties for a single-node KRaft cluster (one process, both roles).

    Replication factors are 1 because there is only one broker; auto-creation is off so
    only `splitpin topics create` makes topics.
    """
    broker = host_port(settings.host, settings.port)
    controller = host_port(settings.host, settings.controller_port)
    listeners = [f"PLAINTEXT://{broker}", f"CONTROLLER://{controller}"]
    advertised = [f"PLAINTEXT://{broker}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    sasl: dict[str, str] = {}
    if settings.sasl_port is not None:
        # A SASL_PLAINTEXT listener (PLAIN) for clients; the controller and inter-broker
        # traffic stay on PLAINTEXT, which a one-node local broker does not need to secure.
        sasl_address = host_port(settings.host, settings.sasl_port)
        listeners.append(f"SASL_PLAINTEXT://{sasl_address}")
        advertised.append(f"SASL_PLAINTEXT://{sasl_address}")
        protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
        users = " ".join(f'user_{name}="{pw}"' for name, pw in settings.sasl_users.items())
        sasl = {
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            ),
        }
    props = {
        "process.roles": "broker,controller",
        "node.id": str(_NODE_ID),
        "controller.quorum.voters": f"{_NODE_ID}@{controller}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(protocols),
        "inter.broker.listener.name": "PLAINTEXT",
        **sasl,
        "log.dirs": data_dir.as_posix(),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
    }
    lines = ["# Written by `splitpin broker start`; rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j2_properties(log_dir: Path) -> str:
    """log4j2 configuration: INFO to a size-capped server.log, so a long demo cannot fill a disk."""
    log = (log_dir / "server.log").as_posix()
    return "\n".join(
        [
            "# Written by `splitpin broker start`.",
            "status = warn",
            "appender.server.type = RollingFile",
            "appender.server.name = server",
            f"appender.server.fileName = {log}",
            f"appender.server.filePattern = {log}.%i",
            "appender.server.layout.type = PatternLayout",
            "appender.server.layout.pattern = [%d] %p %m (%c)%n",
            "appender.server.policies.type = Policies",
            "appender.server.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.server.policies.size.size = 50MB",
            "appender.server.strategy.type = DefaultRolloverStrategy",
            "appender.server.strategy.max = 3",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.server.ref = server",
            "logger.request.name = kafka.request.logger",
            "logger.request.level = WARN",
            "",
        ]
    )


def render_pom(kafka_version: str, log4j_binding: tuple[str, str] | None = None) -> str:
    """A throwaway POM whose runtime dependencies are exactly the broker's classpath.

    `log4j_binding` is (artifactId, version) of the log4j slf4j binding to add.
    """
    deps = [("org.apache.kafka", "kafka_2.13", kafka_version)]
    if log4j_binding is not None:
        deps.append(("org.apache.logging.log4j", *log4j_binding))
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by splitpin to resolve the local Kafka broker's jars; not a build. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>splitpin.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>{kafka_version}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def log4j_binding_for(libs: Path) -> tuple[str, str] | None:
    """The slf4j->log4j2 binding matching the jars in `libs`, or None if none is needed.

    Kafka 4.x ships log4j2 but no binding in its POM; the binding must match both the
    log4j version (same release train) and the slf4j major version (1.x vs 2.x API).
    """
    names = [p.name for p in libs.glob("*.jar")]
    if any(n.startswith(("log4j-slf4j-impl-", "log4j-slf4j2-impl-")) for n in names):
        return None
    slf4j = next((m for n in names if (m := re.fullmatch(r"slf4j-api-(\d+)\..*\.jar", n))), None)
    if slf4j is None:
        return None
    log4j = next((m for n in names if (m := re.fullmatch(r"log4j-api-(.+)\.jar", n))), None)
    version = log4j.group(1) if log4j else FALLBACK_LOG4J_VERSION
    artifact = "log4j-slf4j2-impl" if int(slf4j.group(1)) >= 2 else "log4j-slf4j-impl"
    return artifact, version


@dataclass(frozen=True)
class BrokerPaths:
    """Where a broker keeps its files; everything lives under `state_dir`."""

    state_dir: Path

    @property
    def server_properties(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.state_dir / "log4j2.properties"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def broker_out(self) -> Path:
        return self.log_dir / "broker.out"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / ".lock"

    @property
    def formatted_marker(self) -> Path:
        """KRaft's storage tool writes this on format; its presence means 'formatted'."""
        return self.data_dir / "meta.properties"


@dataclass(frozen=True)
class BrokerStatus:
    """What `splitpin broker status` reports."""

    running: bool
    answering: bool
    pid: int | None
    bootstrap: str
    log_path: Path

    def describe(self) -> str:
        """One line for an operator: what runs, whether it answers, where to look."""
        if self.running and self.answering:
            return (
                f"broker running (pid {self.pid}), answering at {self.bootstrap}; "
                f"log: {self.log_path}"
            )
        if self.running:
            return (
                f"broker process running (pid {self.pid}) but not answering at {self.bootstrap} "
                f"(still starting, or stuck); log: {self.log_path}"
            )
        if self.answering:
            return (
                f"broker not running from this state dir, but another Kafka broker "
                f"answers at {self.bootstrap}"
            )
        return f"broker not running (nothing answers at {self.bootstrap}); log: {self.log_path}"


class LocalBroker:
    """Resolve, start, stop and inspect one local KRaft broker described by BrokerSettings."""

    def __init__(self, settings: BrokerSettings) -> None:
        # Absolute paths: the broker runs with its state dir as cwd, and the pid check
        # matches the server.properties path in the process's command line.
        self.settings = settings.model_copy(
            update={
                "state_dir": settings.state_dir.expanduser().resolve(),
                "jar_cache_dir": settings.jar_cache_dir.expanduser().resolve(),
            }
        )
        self.paths = BrokerPaths(self.settings.state_dir)

    @property
    def bootstrap(self) -> str:
        return host_port(self.settings.host, self.settings.port)

    @property
    def sasl_bootstrap(self) -> str | None:
        """`host:port` of the SASL_PLAINTEXT listener, when one is configured."""
        port = self.settings.sasl_port
        return None if port is None else host_port(self.settings.host, port)

    def _where(self) -> str:
        sasl = self.sasl_bootstrap
        return self.bootstrap + (f" (SASL_PLAINTEXT/PLAIN at {sasl})" if sasl else "")

    @property
    def libs_dir(self) -> Path:
        return self.settings.jar_cache_dir / self.settings.kafka_version / "libs"

    def resolve_jars(self) -> Path:
        """Resolve the broker's classpath with Maven once per version; return the libs dir.

        A marker is written only after success, so an interrupted resolution is redone;
        a file lock makes concurrent callers (parallel test sessions) wait for one another.
        """
        version_dir = self.libs_dir.parent
        marker = version_dir / _RESOLVED_MARKER
        if marker.exists() and self.libs_dir.is_dir():
            return self.libs_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            msg = (
                "Maven (`mvn`) is not on PATH; the local Kafka broker's jars are resolved with "
                "it from Maven Central (install it, e.g. `apt-get install maven`)"
            )
            raise BrokerError(msg)
        version_dir.mkdir(parents=True, exist_ok=True)
        with _locked(version_dir / ".lock"):
            if marker.exists() and self.libs_dir.is_dir():
                return self.libs_dir
            marker.unlink(missing_ok=True)
            if self.libs_dir.exists():
                shutil.rmtree(self.libs_dir)  # a previous attempt died half-way
            self._copy_dependencies(mvn, render_pom(self.settings.kafka_version))
            binding = log4j_binding_for(self.libs_dir)
            if binding is not None:
                self._copy_dependencies(mvn, render_pom(self.settings.kafka_version, binding))
            jars = sorted(p.name for p in self.libs_dir.glob("*.jar"))
            tmp = marker.with_suffix(".tmp")
            tmp.write_text("\n".join(jars) + "\n")
            tmp.replace(marker)
        return self.libs_dir

    def start(self) -> str:
        """Start the broker detached and wait until it answers; idempotent."""
        paths = self.paths
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(paths.lock_file):
            pid = self._running_pid()
            if pid is not None:
                if not broker_answers(self.bootstrap):
                    self._wait_ready(pid, kill_on_failure=False)
                return (
                    f"broker already running (pid {pid}) at {self._where()}; "
                    f"log: {paths.server_log}"
                )
            paths.pid_file.unlink(missing_ok=True)
            self._check_ports_free()
            java = shutil.which("java")
            if java is None:
                msg = "`java` is not on PATH; the local Kafka broker needs a Java 17+ runtime"
                raise BrokerError(msg)
            libs = self.resolve_jars()
            paths.log_dir.mkdir(parents=True, exist_ok=True)
            paths.server_properties.write_text(
                render_server_properties(self.settings, paths.data_dir)
            )
            paths.log4j_config.write_text(render_log4j2_properties(paths.log_dir))
            java_cp = [java, "-cp", f"{libs}/*"]
            if not paths.formatted_marker.exists():
                self._format_storage(java_cp)
            pid = self._spawn(
                [
                    *java_cp,
                    f"-Xmx{self.settings.heap}",
                    f"-Dlog4j2.configurationFile={paths.log4j_config}",
                    "kafka.Kafka",
                    str(paths.server_properties),
                ]
            )
            paths.pid_file.write_text(f"{pid}\n")
            self._wait_ready(pid, kill_on_failure=True)
        return f"broker started (pid {pid}) at {self._where()}; log: {paths.server_log}"

    def stop(self) -> str:
        """SIGTERM (Kafka shuts down cleanly), SIGKILL after a grace period; idempotent."""
        paths = self.paths
        if not paths.state_dir.exists():
            return f"broker not running (no state in {paths.state_dir})"
        with _locked(paths.lock_file):
            pid = self._running_pid()
            if pid is None:
                paths.pid_file.unlink(missing_ok=True)
                return f"broker not running (state dir {paths.state_dir})"
            killed = not self._terminate(pid)
            paths.pid_file.unlink(missing_ok=True)
        return f"broker stopped (pid {pid}{', killed after SIGTERM timed out' if killed else ''})"

    def status(self) -> BrokerStatus:
        """Whether our process is alive and whether anything answers on the broker's port."""
        pid = self._running_pid()
        return BrokerStatus(
            running=pid is not None,
            answering=broker_answers(self.bootstrap),
            pid=pid,
            bootstrap=self.bootstrap,
            log_path=self.paths.server_log,
        )

    # -- internals ---------------------------------------------------------------------

    def _copy_dependencies(self, mvn: str, pom: str) -> None:
        version_dir = self.libs_dir.parent
        pom_path = version_dir / "pom.xml"
        pom_path.write_text(pom)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom_path),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.libs_dir}",
            "-DincludeScope=runtime",
        ]
        coords = f"org.apache.kafka:kafka_2.13:{self.settings.kafka_version}"
        try:
            proc = subprocess.run(
                cmd,
                cwd=version_dir,
                capture_output=True,
                text=True,
                timeout=MVN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            msg = f"Maven did not resolve {coords} within {MVN_TIMEOUT_S:.0f}s"
            raise BrokerError(msg) from exc
        if proc.returncode != 0:
            tail = _last_lines(proc.stdout + proc.stderr, 40)
            msg = f"Maven could not resolve {coords} (exit {proc.returncode}):\n{tail}"
            raise BrokerError(msg)

    def _format_storage(self, java_cp: list[str]) -> None:
        """Give the data dir a fresh cluster id; done once, later starts reuse the data.

        The tool logs only errors (log4j2's default), to the output captured here, so
        server.log holds nothing but the broker's own log.
        """
        tool = [*java_cp, "kafka.tools.StorageTool"]
        cluster_id = self._run_tool([*tool, "random-uuid"]).strip().splitlines()[-1].strip()
        self._run_tool([*tool, "format", "-t", cluster_id, "-c", str(self.paths.server_properties)])

    def _run_tool(self, cmd: list[str]) -> str:
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.paths.state_dir,
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            msg = f"`{' '.join(cmd[-3:])}` did not finish within {TOOL_TIMEOUT_S:.0f}s"
            raise BrokerError(msg) from exc
        if proc.returncode != 0 or not proc.stdout.strip():
            tail = _last_lines(proc.stdout + proc.stderr, 30)
            msg = f"Kafka's StorageTool failed (exit {proc.returncode}):\n{tail}"
            raise BrokerError(msg)
        return proc.stdout

    def _spawn(self, cmd: list[str]) -> int:
        """Launch `cmd` detached in a new session, output to broker.out; return its pid."""
        proc = subprocess.run(
            ["/bin/sh", "-c", _LAUNCHER, "splitpin-broker", str(self.paths.broker_out), *cmd],
            cwd=self.paths.state_dir,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
            check=False,
        )
        try:
            return int(proc.stdout.strip())
        except ValueError as exc:
            msg = f"could not launch the broker: {_last_lines(proc.stdout + proc.stderr, 10)}"
            raise BrokerError(msg) from exc

    def _wait_ready(self, pid: int, *, kill_on_failure: bool) -> None:
        try:
            wait_for_broker(
                self.bootstrap, self.settings.start_timeout_s, alive=lambda: self._is_ours(pid)
            )
        except BrokerError as exc:
            if kill_on_failure:
                self._terminate(pid, grace_s=5.0)
                self.paths.pid_file.unlink(missing_ok=True)
            msg = f"{exc}\n{self._log_tails()}"
            raise BrokerError(msg) from exc

    def _terminate(self, pid: int, grace_s: float = STOP_GRACE_S) -> bool:
        """SIGTERM then SIGKILL; True if the process exited before the grace period ended."""
        _signal(pid, signal.SIGTERM)
        if _wait_gone(pid, grace_s):
            return True
        _signal(pid, signal.SIGKILL)
        if not _wait_gone(pid, 10.0):
            msg = f"broker pid {pid} survived SIGKILL"
            raise BrokerError(msg)
        return False

    def _running_pid(self) -> int | None:
        """The pid from the pid file if that process is alive and is this broker."""
        try:
            pid = int(self.paths.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        """Alive, and (where /proc exists) really our kafka.Kafka, not a recycled pid."""
        if not _alive(pid):
            return False
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return True
        return b"kafka.Kafka" in args and str(self.paths.server_properties).encode() in args

    def _check_ports_free(self) -> None:
        ports = [("broker", self.settings.port), ("controller", self.settings.controller_port)]
        if self.settings.sasl_port is not None:
            ports.append(("SASL", self.settings.sasl_port))
        for name, port in ports:
            if _port_in_use(self.settings.host, port):
                msg = (
                    f"{name} port {self.settings.host}:{port} is already in use by another "
                    f"process (no broker from {self.paths.state_dir} is running); choose free "
                    f"ports with SPLITPIN_BROKER__PORT / SPLITPIN_BROKER__CONTROLLER_PORT / "
                    "SPLITPIN_BROKER__SASL_PORT"
                )
                raise BrokerError(msg)

    def _log_tails(self) -> str:
        parts = []
        for path in (self.paths.broker_out, self.paths.server_log):
            if path.exists():
                parts.append(f"--- last lines of {path} ---\n{_last_lines(_read_tail(path), 25)}")
        return "\n".join(parts) or f"(no log written under {self.paths.log_dir})"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held across processes for the `with` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (an unreaped broker is not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        with suppress(ChildProcessError):  # reap it if it happens to be our child
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same as the JVM's listener: a port in TIME_WAIT from a just-stopped broker is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _read_tail(path: Path, max_bytes: int = 64 * 1024) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        return handle.read().decode("utf-8", errors="replace")


def _last_lines(text: str, count: int) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[-count:]) if lines else "(no output)"
