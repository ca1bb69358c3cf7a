"""`splitpin run`: the routing dataflow under Bytewax, with recovery by default.

Before the flow is built, start-up fails fast (status 2, naming the setting or file) when
no broker answers, a topic is missing, the recovery state is damaged, or it is missing
while the output topics show this flow ran before (unless the operator says `--reset`).

SIGINT and SIGTERM stop the flow within `shutdown_timeout_s`. Python would deliver SIGINT
as a KeyboardInterrupt at whatever line the main thread runs, which in a one-worker run is
a Bytewax step: the step panics, and what happens next depends on where it landed. So the
signal handlers only wake a watcher thread (through `signal.set_wakeup_fd`, which works
even while the main thread is inside C code); it lets the sink's batch in progress be
acknowledged, holds back the next one, and exits. Nothing is lost: a snapshot is committed
only after its epoch's writes were acknowledged, so the restart resumes from the last one
and re-issues the model calls that were in flight.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from splitpin.app.recovery import StartMode, decide_start, read_state
from splitpin.core import metrics
from splitpin.core.governance_store import GovernanceFollower, effective_governance
from splitpin.core.kafka.admin import check_flow_topics, topic_record_counts
from splitpin.core.kafka.client_config import client_config
from splitpin.core.settings import Settings
from splitpin.flows.routing_flow import CanaryMode, build_flow
from splitpin.flows.sink import WRITES

log = logging.getLogger(__name__)

# Topics only this flow writes: a record there means it ran before. (routing.metrics is
# also an input that other producers may write, so it does not count.)
OWN_OUTPUTS = ("decisions", "replies", "validation_failures", "metrics_windowed", "dead_letter")


def ensure_recovery_dir(path: Path, partitions: int) -> None:
    """Create the recovery partitions on first run; later runs resume from them."""
    if path.is_dir() and any(path.glob("part-*.sqlite3")):
        return
    path.mkdir(parents=True, exist_ok=True)
    init_db_dir(path, partitions)
    log.info("initialised %d recovery partition(s) in %s", partitions, path)


def check_start(
    settings: Settings, *, recovery: bool, reset: bool, check_topics: bool = True
) -> StartMode | None:
    """Every start-up check, before anything is built; StartupError names what to fix.
    (A canary checks its topics itself: splitpin/app/canary.py.)"""
    if check_topics:
        check_flow_topics(settings)
    if not recovery:
        return None
    state = read_state(settings.recovery_dir)
    earlier: dict[str, int] = {}
    if not state.present:
        topics = [settings.topic(name) for name in OWN_OUTPUTS]
        earlier = topic_record_counts(
            settings.bootstrap_servers,
            topics,
            settings.startup_timeout_s,
            config=client_config(settings),
        )
    mode = decide_start(state, earlier, reset=reset)
    log.info("recovery: %s (%s)", mode.value, settings.recovery_dir)
    return mode


class ShutdownWatcher:
    """Turns SIGINT/SIGTERM into a bounded exit that waits for the sink's batch in progress.

    `exit` is `os._exit` in production (no interpreter teardown that could block on a
    thread or a Kafka client); tests of the plain logic pass their own.
    """

    def __init__(
        self,
        timeout_s: float,
        *,
        close_sink: Callable[[float], bool] = WRITES.close,
        exit: Callable[[int], object] = os._exit,
        reexec: Callable[[], object] | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._close_sink = close_sink
        self._exit = exit
        self._reexec = reexec or _reexec
        self._requested = threading.Event()

    def install(self) -> None:
        """Install the handlers (main thread only) and start the watcher thread."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _note_signal)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(
            target=self._watch, args=(read_fd,), name="splitpin-shutdown", daemon=True
        ).start()

    def _watch(self, read_fd: int) -> None:
        while True:
            for signum in os.read(read_fd, 64):
                if signum in (signal.SIGINT, signal.SIGTERM):
                    threading.Thread(
                        target=self.stop, args=(signal.Signals(signum),), daemon=True
                    ).start()

    def stop(self, sig: signal.Signals) -> None:
        """First signal: wait for the sink, then exit 0 (1 past the timeout). Second: exit now."""
        if self._requested.is_set():
            log.warning("%s again: exiting at once", sig.name)
            self._finish(1)
            return
        self._requested.set()
        log.warning(
            "%s: stopping (waiting up to %g s for the sink's batch in progress)",
            sig.name,
            self._timeout_s,
        )
        if self._close_sink(self._timeout_s):
            log.warning("stopped; the next start resumes from the last snapshot")
            self._finish(0)
        else:
            log.error(
                "the sink's batch was not acknowledged within %g s (SPLITPIN_SHUTDOWN_TIMEOUT_S); "
                "exiting anyway: the next start re-produces it from the last snapshot",
                self._timeout_s,
            )
            self._finish(1)

    def restart(self, version: str) -> None:
        """Another governance version was applied: stop at a safe point as for a signal (the
        sink's batch acknowledged, the next one held back), then run the same command again
        in this process (exec), which reads the new version at start-up and resumes from
        the last snapshot; state (ledgers, conversations) is the snapshot's."""
        if self._requested.is_set():
            return  # a stop is already under way
        self._requested.set()
        log.warning(
            "governance %s: restarting under it (waiting up to %g s for the sink's batch)",
            version,
            self._timeout_s,
        )
        if not self._close_sink(self._timeout_s):
            log.error("the sink's batch was not acknowledged; exiting instead of restarting")
            self._finish(1)
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        self._reexec()

    def _finish(self, status: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        self._exit(status)


def _reexec() -> None:
    """This process becomes the same command again (same pid, arguments, environment)."""
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler does nothing: the wakeup fd carries the signal."""


def tune_process(settings: Settings) -> None:
    """Process-wide interpreter settings for a flow process, once its flow is built.

    The GIL switch interval bounds how long the worker thread (decisions) waits behind the
    model-call threads. What is loaded by now (model, heads, config, knowledge bases,
    modules) lives as long as the process: collect once, then freeze it so the cyclic GC
    does not walk it again at every full collection, a ~50 ms pause on the worker thread
    (bench/README.md "Profile"). Here, not in `build_flow`: tests build flows in-process."""
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    gc.collect()
    gc.freeze()


def run_flow(
    settings: Settings,
    *,
    workers: int = 1,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    recovery: bool = True,
    tail: bool = True,
    reset: bool = False,
    canary: CanaryMode | None = None,
    cluster_source: str = "",
) -> None:
    """Validate config and the start-up conditions (fail fast, naming the fix), then run."""
    _ = settings.governance
    if process_id is not None and addresses:
        # Resolved by splitpin.app.cluster (flags, environment, hostfile or StatefulSet).
        log.warning(
            "cluster: process %d of %d (%s), %d worker(s) each%s",
            process_id,
            len(addresses),
            ";".join(addresses),
            workers,
            f"; {cluster_source}" if cluster_source else "",
        )
    watcher = ShutdownWatcher(settings.shutdown_timeout_s)
    watcher.install()
    check_start(settings, recovery=recovery, reset=reset, check_topics=canary is None)
    # The version in force is the governance topic's (`splitpin governance apply`); the
    # follower re-executes the process at a safe point when another one is applied.
    # A canary runs its candidate file, always.
    governance = settings.governance if canary is not None else effective_governance(settings)
    log.info("governance %s in force", governance.version_id())
    if canary is None and settings.governance_poll_s > 0:
        GovernanceFollower(settings, governance.version_id(), watcher.restart).start()
    flow = build_flow(settings, tail=tail, governance=governance, canary=canary)
    tune_process(settings)
    recovery_config = None
    if recovery:
        ensure_recovery_dir(settings.recovery_dir, settings.recovery_partitions)
        recovery_config = RecoveryConfig(
            settings.recovery_dir, timedelta(seconds=settings.backup_interval_s)
        )
    metrics.serve(settings.metrics_port)
    cli_main(
        flow,
        workers_per_process=workers,
        process_id=process_id,
        addresses=addresses,
        epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
        recovery_config=recovery_config,
    )
