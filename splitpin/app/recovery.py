"""Start-up checks of the recovery state, so losing or damaging it is never silent.

Bytewax resumes from the SQLite partitions in the recovery directory. Without them it
starts from the beginning of every input topic: each earlier decision is re-emitted and
each model call paid again. That is right for a first run and wrong after an accident,
and the two look alike from inside the directory, so the output topics decide: if they
already hold this flow's records, starting without state needs the operator's explicit
`--reset`. A damaged partition file would end in a bare Rust panic ("file is not a
database"); it is checked here first so the error names the file and the remedy.

Plain Python (sqlite3), no Bytewax or Kafka: the caller passes what the topics hold.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from splitpin.errors import StartupError

log = logging.getLogger(__name__)

PARTITION_GLOB = "part-*.sqlite3"
# The tables Bytewax 0.21's `init_db_dir` creates in every partition.
BYTEWAX_TABLES = frozenset({"parts", "exs", "fronts", "commits", "snaps"})


class StartMode(Enum):
    RESUME = "resume"
    """Recovery partitions exist: Bytewax resumes from their last snapshot."""
    FIRST_RUN = "first_run"
    """No state and no earlier output: start from the beginning of the inputs."""
    RESET = "reset"
    """No state but earlier output, and the operator said --reset: start over knowingly."""


@dataclass(frozen=True, slots=True)
class RecoveryState:
    directory: Path
    partitions: tuple[Path, ...]

    @property
    def present(self) -> bool:
        return bool(self.partitions)


def read_state(directory: Path) -> RecoveryState:
    """The partition files in `directory` (none when it is missing or empty)."""
    if not directory.is_dir():
        return RecoveryState(directory, ())
    return RecoveryState(directory, tuple(sorted(directory.glob(PARTITION_GLOB))))


def check_partition(path: Path) -> None:
    """Raise StartupError naming `path` unless it is a sound Bytewax recovery partition."""
    try:
        connection = sqlite3.connect(path)
        # A damaged page may hold any bytes where SQLite expects UTF-8 text.
        connection.text_factory = lambda raw: raw.decode("utf-8", "replace")
        try:
            tables = {
                str(row[0])
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            problems = [str(row[0]) for row in connection.execute("PRAGMA quick_check")]
        finally:
            connection.close()
    except (sqlite3.Error, UnicodeDecodeError) as exc:  # SQLite's own message may be garbled
        raise StartupError(_damaged(path, str(exc))) from exc
    if problems != ["ok"]:
        raise StartupError(_damaged(path, "; ".join(problems[:3])))
    if missing := BYTEWAX_TABLES - tables:
        raise StartupError(_damaged(path, f"tables missing: {', '.join(sorted(missing))}"))


def decide_start(
    state: RecoveryState, earlier_output: Mapping[str, int], *, reset: bool
) -> StartMode:
    """Resume, start a first run, or (after --reset) start over; else refuse loudly.

    `earlier_output` maps each output topic this flow alone writes to the number of
    records it holds. Partition files are checked before anything resumes from them.
    """
    if state.present:
        for path in state.partitions:
            check_partition(path)
        return StartMode.RESUME
    found = {topic: count for topic, count in earlier_output.items() if count > 0}
    if not found:
        return StartMode.FIRST_RUN
    if reset:
        log.warning(
            "--reset: starting without recovery state in %s although %s; every input is "
            "processed again from the beginning",
            state.directory,
            _describe(found),
        )
        return StartMode.RESET
    msg = (
        f"refusing to start without recovery state: {state.directory} holds no "
        f"{PARTITION_GLOB} files, but {_describe(found)}, so this flow ran before. "
        "Starting over would re-process every input from the beginning (decisions "
        "re-emitted, model calls paid again). Restore the recovery directory (or point "
        "SPLITPIN_RECOVERY_DIR at it), or pass `splitpin run --reset` (SPLITPIN_RESET=1) "
        "to start over deliberately."
    )
    raise StartupError(msg)


def _describe(found: Mapping[str, int]) -> str:
    return ", ".join(f"{topic} holds {count:,} record(s)" for topic, count in found.items())


def _damaged(path: Path, detail: str) -> str:
    return (
        f"damaged recovery partition {path}: {detail}. Restore it from a backup, or move "
        f"the whole directory {path.parent} away and start with `splitpin run --reset` "
        "(which re-processes every input from the beginning)."
    )
