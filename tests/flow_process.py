"""Run `splitpin run` as a real OS process, so tests can SIGKILL it and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from splitpin.settings import Settings


def flow_env(settings: Settings, recovery_dir: Path, **extra: str) -> dict[str, str]:
    """The test's settings, with fast snapshots and small batches so a kill lands mid-epoch."""
    fast = settings.model_copy(
        update={
            "recovery_dir": recovery_dir,
            "metrics_port": 0,
            "snapshot_interval_s": 0.5,
            "source_batch_size": 20,
        }
    )
    env = fast.child_env()
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        env.pop(key, None)  # hermetic: a developer's real keys never reach a test flow
    return {**env, **extra}


def start_flow(
    settings: Settings, recovery_dir: Path, log_path: Path, *args: str, **extra: str
) -> subprocess.Popen[bytes]:
    """`python -m splitpin run` in its own process group, output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "splitpin", "run", *args],
            env=flow_env(settings, recovery_dir, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no shutdown hooks, no final flush, no last snapshot."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@contextmanager
def running_flow(
    settings: Settings, recovery_dir: Path, log_path: Path, *args: str, **extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    process = start_flow(settings, recovery_dir, log_path, *args, **extra)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                kill_hard(process)
