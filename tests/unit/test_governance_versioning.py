"""Governance versions, diffs and maintenance windows: the pure logic of `splitpin governance`.

The version id must be a function of the validated settings only (key order, YAML style,
spelled-out defaults and the `name` label do not count) and must change with any value;
the diff must name exactly the changed paths; a window must contain exactly its minutes.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.core import governance_store as store
from splitpin.core.settings import REPO_ROOT
from splitpin.schemas.audit import GovernanceAudit, GovernanceChange, GovernanceRecord
from splitpin.schemas.governance import (
    WEEKDAYS,
    GovernanceConfig,
    MaintenanceWindow,
    load_governance,
)
from splitpin.schemas.wire import decode, encode

SHIPPED = REPO_ROOT / "config" / "governance.yaml"
BASE = load_governance(SHIPPED)
BASE_JSON: dict[str, Any] = BASE.model_dump(mode="json")
LEAVES = store.flatten(BASE_JSON)
NUMERIC_PATHS = sorted(
    path for path, value in LEAVES.items() if isinstance(value, int | float) and value
)
# A Monday, 00:00 UTC.
MONDAY = datetime(2026, 11, 30, tzinfo=UTC)


def _shuffled(value: Any, rnd: random.Random) -> Any:
    """The same mapping with every level's keys in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {key: _shuffled(sub, rnd) for key, sub in items}
    if isinstance(value, list):
        return [_shuffled(sub, rnd) for sub in value]
    return value


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for part in head:
        data = data[part]
    data[last] = value


def _with(**updates: Any) -> GovernanceConfig:
    data = BASE.model_dump(mode="json")
    for path, value in updates.items():
        _set(data, path.replace("__", "."), value)
    return GovernanceConfig.model_validate(data)


# --- version id ------------------------------------------------------------------------


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    flow=st.sampled_from([False, True, None]),
    indent=st.integers(2, 6),
    name=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
)
def test_version_id_ignores_key_order_yaml_style_and_name(
    tmp_path: Path, seed: int, flow: bool | None, indent: int, name: str | None
) -> None:
    data = _shuffled(BASE_JSON, random.Random(seed))
    data["name"] = name
    path = tmp_path / "candidate.yaml"
    path.write_text(
        yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, indent=indent),
        encoding="utf-8",
    )
    reloaded = load_governance(path)
    assert reloaded.version_id() == BASE.version_id()
    assert reloaded.name == name


def test_spelled_out_defaults_are_the_same_version(tmp_path: Path) -> None:
    """The shipped file omits most defaults; the full dump spells them all out."""
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(BASE_JSON), encoding="utf-8")
    shipped = store.flatten(yaml.safe_load(SHIPPED.read_text()))
    assert len(shipped) < len(store.flatten(BASE_JSON))
    assert load_governance(path).version_id() == BASE.version_id()


@settings(max_examples=60)
@given(index=st.integers(0, len(NUMERIC_PATHS) - 1), factor=st.sampled_from([0.5, 0.9, 2]))
def test_any_value_change_changes_the_version_and_diff_names_exactly_it(
    index: int, factor: float
) -> None:
    path = NUMERIC_PATHS[index]
    old = LEAVES[path]
    new = type(old)(old * factor) if isinstance(old, int) else old * factor
    if new == old:
        new = old + 1
    data = BASE.model_dump(mode="json")
    _set(data, path, new)
    try:
        changed = GovernanceConfig.model_validate(data)
    except ValueError:
        return  # out of the field's bounds: not a config anyone can apply
    assert changed.version_id() != BASE.version_id()
    changes = store.diff(BASE, changed)
    assert [(c.path, c.old, c.new) for c in changes] == [(path, old, new)]


def test_version_id_format_and_memo_is_per_instance() -> None:
    version = BASE.version_id()
    assert version.startswith("sha256:")
    assert len(version) == len("sha256:") + 12
    assert int(version.removeprefix("sha256:"), 16) >= 0
    # model_copy makes a new (frozen) instance: its id is computed afresh, never the memo's.
    copy = BASE.model_copy(update={"require_version_pins": False})
    assert copy.version_id() != version
    assert BASE.version_id() == version


# --- diff ------------------------------------------------------------------------------


def test_diff_of_a_config_with_itself_is_empty() -> None:
    assert store.diff(BASE, BASE) == []


def test_diff_reports_pins_prices_budgets_thresholds_and_flags_only_swaps() -> None:
    candidate = _with(
        roles__fast__version="claude-3-5-haiku-20250101",
        roles__compliance__model="claude-3-7-sonnet",
        roles__compliance__version="claude-3-7-sonnet-20250219",
        roles__long_context__price_out_per_mtok=7.5,
        budgets__default__limit_usd=20.0,
        routing__fast_max_tokens=1024,
    )
    changes = {c.path: c for c in store.diff(BASE, candidate)}
    assert set(changes) == {
        "roles.fast.version",
        "roles.compliance.model",
        "roles.compliance.version",
        "roles.long_context.price_out_per_mtok",
        "budgets.default.limit_usd",
        "routing.fast_max_tokens",
    }
    assert {p for p, c in changes.items() if c.swap} == {
        "roles.fast.version",
        "roles.compliance.model",
        "roles.compliance.version",
    }
    assert changes["routing.fast_max_tokens"].old == BASE.routing.fast_max_tokens
    assert changes["routing.fast_max_tokens"].new == 1024
    assert store.swapped_roles(list(changes.values())) == ["compliance", "fast"]
    lines = store.render_changes(store.diff(BASE, candidate))
    assert '* roles.fast.version: "claude-3-5-haiku-20241022" -> "claude-3-5-haiku-20250101"' in (
        lines
    )


# --- maintenance windows ---------------------------------------------------------------


windows = st.builds(
    MaintenanceWindow,
    day=st.sampled_from(WEEKDAYS),
    start=st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59)),
    duration_min=st.integers(1, 3 * 1440),
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 3), max_value=datetime(2099, 12, 28), timezones=st.just(UTC)
)


def _reference_contains(window: MaintenanceWindow, now: datetime) -> bool:
    """By calendar arithmetic: the window's opening this week or the week before."""
    hours, minutes = (int(x) for x in window.start.split(":"))
    week_start = (now - timedelta(days=now.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    for weeks_back in (0, 1):
        opens = week_start + timedelta(
            days=WEEKDAYS.index(window.day) - 7 * weeks_back, hours=hours, minutes=minutes
        )
        if (
            opens
            <= now.replace(second=0, microsecond=0)
            < opens + timedelta(minutes=window.duration_min)
        ):
            return True
    return False


@settings(max_examples=300)
@given(window=windows, now=instants)
def test_window_contains_exactly_its_minutes(window: MaintenanceWindow, now: datetime) -> None:
    assert window.contains(now) == _reference_contains(window, now)


@given(window=windows, now=instants, offset_h=st.integers(-12, 14))
def test_window_is_judged_in_utc_whatever_the_offset(
    window: MaintenanceWindow, now: datetime, offset_h: int
) -> None:
    local = now.astimezone(timezone(timedelta(hours=offset_h)))
    assert window.contains(local) == window.contains(now)


@settings(max_examples=100)
@given(ws=st.lists(windows, min_size=1, max_size=3), now=instants)
def test_next_window_is_the_first_open_minute(ws: list[MaintenanceWindow], now: datetime) -> None:
    config = BASE.model_copy(update={"maintenance_windows": tuple(ws)})
    opens = store.next_window(config, now)
    assert opens is not None
    assert config.in_maintenance_window(opens)
    if opens != now:
        assert not config.in_maintenance_window(opens - timedelta(minutes=1))
        assert opens - now < timedelta(days=7)


def test_no_windows_means_no_next_window() -> None:
    config = BASE.model_copy(update={"maintenance_windows": ()})
    assert store.next_window(config, MONDAY) is None


def test_window_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="start"):
        MaintenanceWindow(day="mon", start="24:00", duration_min=60)
    with pytest.raises(ValueError, match="duration_min"):
        MaintenanceWindow(day="mon", start="01:00", duration_min=0)


# --- plan_change -----------------------------------------------------------------------

SUNDAY_WINDOW = (MaintenanceWindow(day="sun", start="02:00", duration_min=120),)
CURRENT = BASE.model_copy(update={"maintenance_windows": SUNDAY_WINDOW})
INSIDE = MONDAY + timedelta(days=6, hours=2, minutes=30)  # Sunday 02:30
OUTSIDE = MONDAY + timedelta(hours=12)


def _swap_of(config: GovernanceConfig) -> GovernanceConfig:
    fast = config.roles["fast"].model_copy(update={"version": "claude-3-5-haiku-20250101"})
    return config.model_copy(update={"roles": {**config.roles, "fast": fast}})


def test_a_swap_outside_a_window_is_held_with_the_next_opening() -> None:
    plan = store.plan_change(CURRENT, _swap_of(CURRENT), OUTSIDE)
    assert plan.action == "hold"
    assert "fast" in plan.message
    assert "Sun 2026-12-06 02:00 UTC" in plan.message
    assert "--force" in plan.message


def test_a_swap_inside_a_window_or_forced_applies() -> None:
    assert store.plan_change(CURRENT, _swap_of(CURRENT), INSIDE).action == "apply"
    forced = store.plan_change(CURRENT, _swap_of(CURRENT), OUTSIDE, force=True)
    assert forced.action == "apply"
    assert "forced" in forced.message


def test_a_candidate_cannot_open_its_own_window() -> None:
    always = (MaintenanceWindow(day="mon", start="00:00", duration_min=7 * 1440),)
    candidate = _swap_of(CURRENT).model_copy(update={"maintenance_windows": always})
    assert store.plan_change(CURRENT, candidate, OUTSIDE).action == "hold"


def test_without_windows_a_swap_is_always_held() -> None:
    current = BASE.model_copy(update={"maintenance_windows": ()})
    plan = store.plan_change(current, _swap_of(current), INSIDE)
    assert plan.action == "hold"
    assert "no maintenance window is configured" in plan.message


@given(now=instants)
def test_a_change_without_swaps_applies_at_any_time(now: datetime) -> None:
    candidate = CURRENT.model_copy(
        update={"routing": CURRENT.routing.model_copy(update={"fast_max_tokens": 999})}
    )
    assert store.plan_change(CURRENT, candidate, now).action == "apply"
    assert store.plan_change(CURRENT, CURRENT, now).action == "noop"
    assert store.plan_change(None, candidate, now).action == "apply"


# --- wire records ----------------------------------------------------------------------


def test_records_round_trip_and_carry_a_valid_config() -> None:
    record = GovernanceRecord(
        version=BASE.version_id(),
        name=BASE.name,
        config=BASE.model_dump(mode="json"),
        previous_version=None,
        applied_at=MONDAY,
        command="splitpin governance apply x.yaml",
    )
    again = decode(GovernanceRecord, encode(record))
    assert again == record
    config = store.record_config(again, "config")
    assert config is not None
    assert config.version_id() == record.version
    assert store.record_config(again, "previous_config") is None
    audit = GovernanceAudit(
        audit_id="a",
        action="held",
        at=MONDAY,
        command="c",
        from_version=None,
        to_version=record.version,
        changes=(GovernanceChange(path="roles.fast.version", old="a", new="b", swap=True),),
        message="held",
    )
    assert decode(GovernanceAudit, encode(audit)) == audit


# --- following the topic ---------------------------------------------------------------


def _record(version: str, at: datetime, previous: str | None = None) -> GovernanceRecord:
    return GovernanceRecord(
        version=version,
        config={},
        previous_version=previous,
        applied_at=at,
        command="c",
    )


def test_a_flow_moves_only_when_current_names_another_version() -> None:
    current = _record("sha256:aaaaaaaaaaaa", MONDAY)
    assert store.changed_version("sha256:aaaaaaaaaaaa", {}) is None
    assert store.changed_version("sha256:aaaaaaaaaaaa", {store.CURRENT_KEY: current}) is None
    held = _record("sha256:bbbbbbbbbbbb", MONDAY, previous="sha256:aaaaaaaaaaaa")
    records = {store.CURRENT_KEY: current, store.PENDING_KEY: held}
    assert store.changed_version("sha256:aaaaaaaaaaaa", records) is None, "held is not applied"
    assert store.still_pending(records) == held
    assert store.changed_version("sha256:cccccccccccc", records) == "sha256:aaaaaaaaaaaa"


def test_a_pending_change_is_dropped_once_overtaken() -> None:
    held = _record("sha256:bbbbbbbbbbbb", MONDAY, previous="sha256:aaaaaaaaaaaa")
    later = _record("sha256:dddddddddddd", MONDAY + timedelta(hours=1), "sha256:aaaaaaaaaaaa")
    assert store.still_pending({store.CURRENT_KEY: later, store.PENDING_KEY: held}) is None
    applied = _record("sha256:bbbbbbbbbbbb", MONDAY + timedelta(hours=1), "sha256:aaaaaaaaaaaa")
    assert store.still_pending({store.CURRENT_KEY: applied, store.PENDING_KEY: held}) is None


def test_restart_waits_for_the_sink_then_reexecutes_once() -> None:
    from splitpin.app.runner import ShutdownWatcher

    calls: list[str] = []

    def close_sink(timeout_s: float) -> bool:
        calls.append("close")
        return True

    watcher = ShutdownWatcher(
        1.0,
        close_sink=close_sink,
        exit=lambda status: calls.append(f"exit {status}"),
        reexec=lambda: calls.append("exec"),
    )
    watcher.restart("sha256:aaaaaaaaaaaa")
    watcher.restart("sha256:bbbbbbbbbbbb")  # a stop or restart is already under way
    assert calls == ["close", "exec"]

    stuck = ShutdownWatcher(
        1.0,
        close_sink=lambda timeout_s: False,
        exit=lambda status: calls.append(f"exit {status}"),
        reexec=lambda: calls.append("exec"),
    )
    stuck.restart("sha256:aaaaaaaaaaaa")
    assert calls[-1] == "exit 1", "an unacknowledged batch is never re-executed past"
