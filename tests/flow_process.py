"""Run `splitpin run` as a real OS process, so tests can SIGKILL it and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, Message

from splitpin.settings import Settings


def flow_env(settings: Settings, recovery_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "SPLITPIN_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SPLITPIN_TOPIC_PREFIX": settings.topic_prefix,
        "SPLITPIN_RECOVERY_DIR": str(recovery_dir),
        "SPLITPIN_METRICS_PORT": "0",
        "SPLITPIN_SNAPSHOT_INTERVAL_S": "0.5",
        "SPLITPIN_SOURCE_BATCH_SIZE": "20",
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.update(extra)
    return env


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


def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Message]], bool],
    timeout_s: float,
) -> list[Message]:
    """Read `topic` from the beginning until `done(records)` holds or the time runs out."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(records):
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    records.append(message)
    finally:
        consumer.close()
    return records
