"""`splitpin run` as a child process: for the demo, and for tests that SIGKILL and restart it.

Its own session (process group), so a signal reaches the flow and not the caller.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

STOP_TIMEOUT_S = 30.0


def start_flow(env: Mapping[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`python -m splitpin run ARGS` in `env`, output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "splitpin", "run", *args],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no shutdown hooks, no final flush, no last snapshot."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT_S)


def stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGINT) -> None:
    """Ask the flow to stop (`sig`), SIGKILL if it has not within STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_hard(process)


@contextmanager
def running_flow(
    env: Mapping[str, str],
    log_path: Path,
    *args: str,
    stop_signal: signal.Signals = signal.SIGINT,
) -> Iterator[subprocess.Popen[bytes]]:
    process = start_flow(env, log_path, *args)
    try:
        yield process
    finally:
        stop(process, stop_signal)
