"""Governance changes: versions, diffs, maintenance windows, the governance topic and its audit.

Pure logic first (`diff`, `plan_change`, `next_window`), then the Kafka I/O: the compacted
`<prefix>governance` topic holds the config in force under key `current` (with the one it
replaced, for `rollback`) and a change held for a maintenance window under `pending`;
`<prefix>governance.audit` gets one GovernanceAudit per applied or held change. The flow
reads `current` at start-up (`effective_governance`), so a change applies on the next
(re)start and the recovery state (ledgers, conversation windows) is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from splitpin.core.kafka.client_config import client_config
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.errors import BrokerError, ConfigError, SplitpinError, describe_validation_error
from splitpin.schemas.audit import GovernanceAudit, GovernanceChange, GovernanceRecord
from splitpin.schemas.governance import WEEKDAYS, GovernanceConfig
from splitpin.schemas.wire import decode, encode

log = logging.getLogger(__name__)

CURRENT_KEY = b"current"
PENDING_KEY = b"pending"
AUDIT_KEY = b"governance"
READ_ATTEMPTS = 3
_SWAP_FIELDS = frozenset({"provider", "model", "version", "base_url"})
"""A change to one of these under roles.<role> changes which model answers that role."""


# --- pure logic ----------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> leaf value; mappings are descended, lists are compared whole."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _is_swap(path: str) -> bool:
    parts = path.split(".")
    return len(parts) >= 3 and parts[0] == "roles" and parts[2] in _SWAP_FIELDS


def diff(old: GovernanceConfig, new: GovernanceConfig) -> list[GovernanceChange]:
    """Every setting that differs, as dotted paths sorted by path (defaults filled in, so
    writing a default out or leaving it implicit is no change)."""
    before = flatten(old.model_dump(mode="json"))
    after = flatten(new.model_dump(mode="json"))
    return [
        GovernanceChange(path=path, old=before.get(path), new=after.get(path), swap=_is_swap(path))
        for path in sorted(before.keys() | after.keys())
        if before.get(path) != after.get(path)
    ]


def swapped_roles(changes: list[GovernanceChange]) -> list[str]:
    """Roles whose model, version, provider or endpoint changes (or that appear or vanish)."""
    return sorted({change.path.split(".")[1] for change in changes if change.swap})


def next_window(config: GovernanceConfig, now: datetime) -> datetime | None:
    """When the next maintenance window opens (now, if one is open); None without windows."""
    if config.in_maintenance_window(now):
        return now
    utc = now.astimezone(UTC).replace(second=0, microsecond=0)
    minute = utc.weekday() * 1440 + utc.hour * 60 + utc.minute
    waits = []
    for window in config.maintenance_windows:
        hours, minutes = (int(part) for part in window.start.split(":"))
        begin = WEEKDAYS.index(window.day) * 1440 + hours * 60 + minutes
        waits.append((begin - minute) % (7 * 1440))
    return utc + timedelta(minutes=min(waits)) if waits else None


@dataclass(frozen=True)
class ChangePlan:
    """What `governance apply` does with a candidate: apply it, hold it, or nothing."""

    action: Literal["apply", "hold", "noop"]
    changes: list[GovernanceChange]
    message: str


def plan_change(
    current: GovernanceConfig | None,
    candidate: GovernanceConfig,
    now: datetime,
    *,
    force: bool = False,
) -> ChangePlan:
    """A swap of any role's model or version applies only inside one of the *current*
    config's maintenance windows (a candidate cannot open its own window), unless forced."""
    if current is None:
        return ChangePlan("apply", [], f"first version {candidate.version_id()}")
    changes = diff(current, candidate)
    if not changes:
        return ChangePlan("noop", [], f"{candidate.version_id()} is already in force")
    swaps = swapped_roles(changes)
    if not swaps or force or current.in_maintenance_window(now):
        why = " (forced outside a maintenance window)" if swaps and force else ""
        return ChangePlan("apply", changes, f"{len(changes)} setting(s) changed{why}")
    opens = next_window(current, now)
    when = (
        f"the next maintenance window opens {opens:%a %Y-%m-%d %H:%M} UTC"
        if opens is not None
        else "no maintenance window is configured"
    )
    return ChangePlan(
        "hold",
        changes,
        f"held: swaps the model of role(s) {', '.join(swaps)} outside a maintenance window; "
        f"{when}. Apply it then, or now with --force.",
    )


def render_changes(changes: list[GovernanceChange]) -> list[str]:
    """One line per change: `path: old -> new`, swaps marked."""

    def show(value: Any) -> str:
        return "(absent)" if value is None else orjson.dumps(value).decode()

    return [f"{'* ' if c.swap else '  '}{c.path}: {show(c.old)} -> {show(c.new)}" for c in changes]


def record_config(
    record: GovernanceRecord, field: Literal["config", "previous_config"]
) -> GovernanceConfig | None:
    """The config a record carries, validated again (the topic is not trusted blindly)."""
    raw = record.config if field == "config" else record.previous_config
    if raw is None:
        return None
    try:
        return GovernanceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(f"governance topic {field}", exc)) from exc


# --- the topics ----------------------------------------------------------------------


def read_records(settings: Settings, timeout_s: float = 30.0) -> dict[bytes, GovernanceRecord]:
    """The latest record per key on the governance topic (a tombstone removes its key)."""
    latest: dict[bytes, GovernanceRecord] = {}
    topic = settings.topic("governance")
    config = client_config(settings)
    for attempt in range(READ_ATTEMPTS):
        try:
            messages = read_to_end(settings.bootstrap_servers, topic, timeout_s, config=config)
            break
        except BrokerError:  # e.g. a leader moving (right after the topic was created)
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(0.5)
    for message in messages:
        key, value = message.key(), message.value()
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = decode(GovernanceRecord, value)
    return latest


def current_record(settings: Settings) -> GovernanceRecord | None:
    return read_records(settings).get(CURRENT_KEY)


def still_pending(records: dict[bytes, GovernanceRecord]) -> GovernanceRecord | None:
    """The held change, unless a later apply or rollback overtook it (it was held against
    the version in force, and nothing was applied after it)."""
    pending, current = records.get(PENDING_KEY), records.get(CURRENT_KEY)
    if pending is None or current is None:
        return pending
    if pending.previous_version != current.version or current.applied_at > pending.applied_at:
        return None
    return pending


def effective_governance(settings: Settings) -> GovernanceConfig:
    """The config in force: the governance topic's `current`, else the file's (first run)."""
    record = current_record(settings)
    config = record_config(record, "config") if record is not None else None
    return config if config is not None else settings.governance


def changed_version(in_force: str, records: dict[bytes, GovernanceRecord]) -> str | None:
    """The topic's current version when it is not the one in force (else None)."""
    current = records.get(CURRENT_KEY)
    return current.version if current is not None and current.version != in_force else None


class GovernanceFollower:
    """A daemon thread per flow process: polls the governance topic and calls `on_change`
    once when another version was applied, so the process can move to it at a safe point."""

    def __init__(
        self, settings: Settings, in_force: str, on_change: Callable[[str], object]
    ) -> None:
        self._settings = settings
        self._in_force = in_force
        self._on_change = on_change
        self._stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="splitpin-governance", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._settings.governance_poll_s):
            try:
                version = changed_version(self._in_force, read_records(self._settings))
            except (SplitpinError, ValueError) as exc:  # broker away, bad record: try again
                log.warning("cannot read the governance topic: %s", exc)
                continue
            if version is not None:
                log.warning("governance %s applied (in force: %s)", version, self._in_force)
                self._on_change(version)
                return


@dataclass(frozen=True)
class Outcome:
    """What a CLI command did, for its output."""

    action: Literal["applied", "held", "rolled_back", "noop"]
    from_version: str | None
    to_version: str
    changes: list[GovernanceChange]
    message: str


def _publish(
    settings: Settings,
    *,
    current: GovernanceRecord | None,
    target: GovernanceConfig,
    action: Literal["applied", "held", "rolled_back"],
    command: str,
    changes: list[GovernanceChange],
    message: str,
    forced: bool,
    now: datetime,
) -> None:
    """The governance record (current or pending), then its audit record; both acknowledged."""
    producer = CheckedProducer(settings.bootstrap_servers, **client_config(settings))
    previous = record_config(current, "config") if current is not None else None
    record = GovernanceRecord(
        version=target.version_id(),
        name=target.name,
        config=target.model_dump(mode="json"),
        previous_version=previous.version_id() if previous is not None else None,
        previous_config=previous.model_dump(mode="json") if previous is not None else None,
        applied_at=now,
        command=command,
    )
    key = PENDING_KEY if action == "held" else CURRENT_KEY
    producer.produce(settings.topic("governance"), encode(record), key)
    audit = GovernanceAudit(
        audit_id=f"{record.version}@{now.isoformat()}",
        action=action,
        at=now,
        command=command,
        from_version=record.previous_version,
        to_version=record.version,
        to_name=target.name,
        forced=forced,
        changes=tuple(changes),
        message=message,
    )
    # One key: the whole trail lands in one partition, in the order it happened.
    producer.produce(settings.topic("governance_audit"), encode(audit), AUDIT_KEY)
    producer.flush(settings.startup_timeout_s)


def apply_config(
    settings: Settings,
    candidate: GovernanceConfig,
    *,
    command: str,
    force: bool = False,
    now: datetime | None = None,
) -> Outcome:
    """Apply `candidate` (or hold it for a maintenance window), with its audit record."""
    at = now or datetime.now(UTC)
    record = current_record(settings)
    current = record_config(record, "config") if record is not None else None
    plan = plan_change(current, candidate, at, force=force)
    from_version = current.version_id() if current is not None else None
    to_version = candidate.version_id()
    if plan.action == "noop":
        return Outcome("noop", from_version, to_version, [], plan.message)
    action: Literal["applied", "held"] = "applied" if plan.action == "apply" else "held"
    _publish(
        settings,
        current=record,
        target=candidate,
        action=action,
        command=command,
        changes=plan.changes,
        message=plan.message,
        forced=force,
        now=at,
    )
    return Outcome(action, from_version, to_version, plan.changes, plan.message)


def rollback(settings: Settings, *, command: str, now: datetime | None = None) -> Outcome:
    """Back to the version before the current one, in one step. Not window-gated: going
    back to the last known-good version is the escape hatch."""
    at = now or datetime.now(UTC)
    record = current_record(settings)
    if record is None:
        msg = "nothing to roll back: no governance version was applied yet"
        raise ConfigError(msg)
    current = record_config(record, "config")
    previous = record_config(record, "previous_config")
    if current is None or previous is None:
        msg = f"nothing to roll back: {record.version} is the first applied version"
        raise ConfigError(msg)
    changes = diff(current, previous)
    message = f"rolled back from {current.version_id()} to {previous.version_id()}"
    _publish(
        settings,
        current=record,
        target=previous,
        action="rolled_back",
        command=command,
        changes=changes,
        message=message,
        forced=False,
        now=at,
    )
    return Outcome("rolled_back", current.version_id(), previous.version_id(), changes, message)


def read_audit(settings: Settings, timeout_s: float = 30.0) -> list[GovernanceAudit]:
    """The audit trail in the order it was written."""
    messages = read_to_end(
        settings.bootstrap_servers, settings.topic("governance_audit"), timeout_s
    )
    values = [message.value() for message in messages]
    return [decode(GovernanceAudit, value) for value in values if value is not None]
