"""`splitpin run`: the routing dataflow under Bytewax, with recovery by default."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from flows.routing_flow import build_flow
from splitpin import metrics
from splitpin.settings import Settings

log = logging.getLogger(__name__)


def ensure_recovery_dir(path: Path, partitions: int) -> None:
    """Create the recovery partitions on first run; later runs resume from them."""
    if path.is_dir() and any(path.glob("part-*.sqlite3")):
        return
    path.mkdir(parents=True, exist_ok=True)
    init_db_dir(path, partitions)
    log.info("initialised %d recovery partition(s) in %s", partitions, path)


def run_flow(
    settings: Settings,
    *,
    workers: int = 1,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    recovery: bool = True,
    tail: bool = True,
) -> None:
    """Validate config first (fail at start-up, naming the field), then run until done."""
    _ = settings.governance
    flow = build_flow(settings, tail=tail)
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
