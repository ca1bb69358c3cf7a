"""The test's settings as a `splitpin run` child process (see splitpin/app/flow_process.py)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from splitpin.app import flow_process
from splitpin.app.flow_process import kill_hard
from splitpin.core.settings import Settings
from tests.factories import T0_PAST_SKEW_S

__all__ = ["flow_env", "kill_hard", "running_flow", "start_flow"]


def flow_env(settings: Settings, recovery_dir: Path, **extra: str) -> dict[str, str]:
    """The test's settings, with fast snapshots and small batches so a kill lands mid-epoch."""
    fast = settings.model_copy(
        update={
            "recovery_dir": recovery_dir,
            "metrics_port": 0,
            "snapshot_interval_s": 0.5,
            "source_batch_size": 20,
            # The factories' fixed, past T0 must not be event_time_skew (see T0_PAST_SKEW_S);
            # a test that sets its own bound keeps it.
            "max_past_skew_s": settings.max_past_skew_s
            if "max_past_skew_s" in settings.model_fields_set
            else T0_PAST_SKEW_S,
        }
    )
    env = fast.child_env()
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        env.pop(key, None)  # hermetic: a developer's real keys never reach a test flow
    return {**env, **extra}


def start_flow(
    settings: Settings, recovery_dir: Path, log_path: Path, *args: str, **extra: str
) -> subprocess.Popen[bytes]:
    return flow_process.start_flow(flow_env(settings, recovery_dir, **extra), log_path, *args)


@contextmanager
def running_flow(
    settings: Settings, recovery_dir: Path, log_path: Path, *args: str, **extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = flow_env(settings, recovery_dir, **extra)
    with flow_process.running_flow(env, log_path, *args, stop_signal=signal.SIGTERM) as process:
        yield process
