"""A governance change mid-stream, on the real broker.

Three phases of one stream (the same conversations throughout) through one running flow
process: v1 in force; v2 applied (and a model swap outside the maintenance window held);
rollback to v1. The flow follows the governance topic and, on a new version, re-executes
itself at a safe point, resuming its recovery state under the new version. Every decision,
reply and cost record says which version produced it; nothing is lost; a duplicate exists
only where at-least-once allows it (re-emitted after a switch); conversation state
survives the changes (turn indexes continue).
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Message
from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

from splitpin.core import governance_store as store
from splitpin.core.kafka.admin import admin_client
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.schemas import CostRecord, Reply, RoutingDecision, decode
from splitpin.schemas.audit import GovernanceAudit
from splitpin.schemas.governance import GovernanceConfig, load_governance
from tests.factories import event_dict
from tests.flow_process import running_flow
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

CONVERSATIONS = 6
PER_PHASE = 24
# The v1 window is Sunday 02:00-04:00 UTC; Monday noon is outside it.
OUTSIDE_WINDOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _configs(tmp_path: Path) -> tuple[Path, GovernanceConfig, GovernanceConfig, GovernanceConfig]:
    data = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())
    data["name"] = "v1"
    data["maintenance_windows"] = [{"day": "sun", "start": "02:00", "duration_min": 120}]
    v1_path = tmp_path / "v1.yaml"
    v1_path.write_text(yaml.safe_dump(data))
    data["name"] = "v2"
    data.setdefault("budgets", {}).setdefault("default", {})["limit_usd"] = 25.0
    v2_path = tmp_path / "v2.yaml"
    v2_path.write_text(yaml.safe_dump(data))
    data["name"] = "v3-swap"
    data["roles"]["fast"]["version"] = "claude-3-5-haiku-20250101"
    v3_path = tmp_path / "v3.yaml"
    v3_path.write_text(yaml.safe_dump(data))
    return v1_path, load_governance(v1_path), load_governance(v2_path), load_governance(v3_path)


def _value(message: Message) -> bytes:
    value = message.value()
    assert value is not None
    return value


def _publish(settings: Settings, phase: str, phase_index: int) -> set[str]:
    producer = CheckedProducer(settings.bootstrap_servers)
    ids = set()
    for i in range(PER_PHASE):
        conversation = f"conv-{i % CONVERSATIONS}"
        turn = phase_index * (PER_PHASE // CONVERSATIONS) + i // CONVERSATIONS
        event_id = f"{phase}-{i:03d}"
        data = event_dict(
            event_id,
            conversation,
            text=f"turn {turn}: my card payment was declined, why?",
            at_s=turn * 20,
        )
        producer.produce(settings.topic("events"), orjson.dumps(data), conversation.encode())
        ids.add(event_id)
    producer.flush(15)
    return ids


def _decisions_covering(settings: Settings, ids: set[str]) -> list[RoutingDecision]:
    def covered(got: list) -> bool:  # type: ignore[type-arg]
        return {decode(RoutingDecision, _value(m)).event_id for m in got} >= ids

    messages = read_until(settings.bootstrap_servers, settings.topic("decisions"), covered, 120)
    return [decode(RoutingDecision, _value(m)) for m in messages]


def _wait_in_force(log: Path, version: str, timeout_s: float = 60) -> None:
    """Until the flow process logged that it (re)started under `version`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and f"governance {version} in force" in log.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"the flow never ran under {version}: {log.read_text()[-3000:]}")


def test_governance_change_mid_stream_is_versioned_held_and_rolled_back(  # type: ignore[no-untyped-def]
    topic_settings, tmp_path: Path
) -> None:
    v1_path, v1, v2, v3 = _configs(tmp_path)
    # The flow's file stays v1 throughout: what it runs must come from the topic.
    settings: Settings = topic_settings(
        partitions=1, governance_path=v1_path, governance_poll_s=0.5, log_level="INFO"
    )
    recovery_dir, log = tmp_path / "recovery", tmp_path / "flow.log"
    versions = {"a": v1.version_id(), "b": v2.version_id(), "c": v1.version_id()}
    assert len({v1.version_id(), v2.version_id(), v3.version_id()}) == 3

    resource = ConfigResource("topic", settings.topic("governance"))
    admin = admin_client(settings.bootstrap_servers)  # kept alive until the result is in
    described = admin.describe_configs([resource])[resource].result(10)
    assert described["cleanup.policy"].value == "compact"
    assert store.apply_config(settings, v1, command="test apply v1").action == "applied"
    with running_flow(settings, recovery_dir, log) as flow:
        pid = flow.pid
        _wait_in_force(log, v1.version_id())
        ids_a = _publish(settings, "a", 0)
        _decisions_covering(settings, ids_a)

        applied = store.apply_config(settings, v2, command="test apply v2", now=OUTSIDE_WINDOW)
        assert applied.action == "applied"  # a budget change is not window-gated
        assert [c.path for c in applied.changes] == ["budgets.default.limit_usd", "name"]
        held = store.apply_config(settings, v3, command="test apply v3", now=OUTSIDE_WINDOW)
        assert held.action == "held"
        assert "fast" in held.message
        assert "--force" in held.message
        records = store.read_records(settings)
        assert records[store.CURRENT_KEY].version == v2.version_id()
        pending = store.still_pending(records)
        assert pending is not None
        assert pending.version == v3.version_id()
        _wait_in_force(log, v2.version_id())
        ids_b = _publish(settings, "b", 1)
        _decisions_covering(settings, ids_b)

        back = store.rollback(settings, command="test rollback")
        assert (back.from_version, back.to_version) == (v2.version_id(), v1.version_id())
        assert store.still_pending(store.read_records(settings)) is None
        assert store.effective_governance(settings).version_id() == v1.version_id()
        # The same process moved to v1 again (the second time it logs v1 in force).
        deadline = time.monotonic() + 60
        while log.read_text().count(f"governance {v1.version_id()} in force") < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        ids_c = _publish(settings, "c", 2)
        decisions = _decisions_covering(settings, ids_c | ids_b | ids_a)

        def finals_for_c(got: list) -> bool:  # type: ignore[type-arg]
            replies = [decode(Reply, _value(m)) for m in got]
            return {r.reply_id for r in replies if r.kind == "final"} >= ids_c

        replies = [
            decode(Reply, _value(m))
            for m in read_until(
                settings.bootstrap_servers, settings.topic("replies"), finals_for_c, 120
            )
        ]
        assert flow.poll() is None, log.read_text()[-3000:]
        assert flow.pid == pid  # never restarted from outside: it re-executed itself
    held_restarts = log.read_text().count(f"governance {v3.version_id()} in force")
    assert held_restarts == 0, "the held swap never ran"

    # Every event decided; the first decision of each (one partition: topic order) carries
    # its phase's version; a later copy is an at-least-once re-emission after a switch.
    by_event: dict[str, list[RoutingDecision]] = defaultdict(list)
    for decision in decisions:
        by_event[decision.event_id].append(decision)
    expected = ids_a | ids_b | ids_c
    assert set(by_event) == expected
    for event_id, copies in by_event.items():
        assert copies[0].config_version == versions[event_id[0]], event_id
    duplicated = {e for e, copies in by_event.items() if len(copies) > 1}
    assert not duplicated & ids_c, "no switch after the last phase: no duplicates there"
    print(f"decisions: {len(decisions)} for {len(expected)} events; re-emitted: {len(duplicated)}")
    # State survived both changes: each conversation's turns are contiguous across phases.
    turns: dict[str, set[int]] = defaultdict(set)
    for copies in by_event.values():
        turns[copies[0].conversation_id].add(copies[0].turn_index)
    assert all(found == set(range(3 * PER_PHASE // CONVERSATIONS)) for found in turns.values())

    # Replies and cost records say which version produced them too.
    finals = {r.reply_id: r for r in replies if r.kind == "final" and r.reply_id in ids_c}
    assert set(finals) == ids_c
    assert {r.config_version for r in finals.values()} == {v1.version_id()}
    costs = [
        decode(CostRecord, _value(m))
        for m in read_until(
            settings.bootstrap_servers, settings.topic("metrics"), lambda got: bool(got), 30
        )
    ]
    assert costs
    assert all(c.config_version in {v1.version_id(), v2.version_id()} for c in costs)

    # The audit trail: what, when, from which version to which, by which command.
    audits = store.read_audit(settings)
    trail = [(a.action, a.from_version, a.to_version, a.command) for a in audits]
    assert trail == [
        ("applied", None, v1.version_id(), "test apply v1"),
        ("applied", v1.version_id(), v2.version_id(), "test apply v2"),
        ("held", v2.version_id(), v3.version_id(), "test apply v3"),
        ("rolled_back", v2.version_id(), v1.version_id(), "test rollback"),
    ]
    swap = next(a for a in audits if a.action == "held")
    assert isinstance(swap, GovernanceAudit)
    assert {c.path for c in swap.changes if c.swap} == {"roles.fast.version"}


def test_cli_holds_forces_reports_and_rolls_back(  # type: ignore[no-untyped-def]
    topic_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from splitpin.app.governance_cli import HELD_EXIT, governance_app

    v1_path, v1, _, v3 = _configs(tmp_path)
    settings: Settings = topic_settings(partitions=1, governance_path=v1_path)
    for name, value in settings.child_env({}).items():
        monkeypatch.setenv(name, value)
    cli = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = cli.invoke(governance_app, list(args))
        return result.exit_code, result.output

    assert run("apply", str(v1_path))[0] == 0
    if v1.in_maintenance_window(datetime.now(UTC)):  # the CLI judges by the wall clock
        pytest.skip("the wall clock is inside the test's maintenance window (Sun 02-04 UTC)")
    code, out = run("apply", str(tmp_path / "v3.yaml"))
    assert code == HELD_EXIT, out
    assert "* roles.fast.version:" in out
    code, out = run("status", "--json")
    status = orjson.loads(out)
    assert (status["current"], status["pending"]) == (v1.version_id(), v3.version_id())
    assert run("apply", str(tmp_path / "v3.yaml"), "--force")[0] == 0
    assert orjson.loads(run("status", "--json")[1])["pending"] is None
    code, out = run("rollback")
    assert code == 0, out
    assert orjson.loads(run("status", "--json")[1])["current"] == v1.version_id()
    actions = [(a.action, a.forced) for a in store.read_audit(settings)]
    assert actions == [
        ("applied", False),
        ("held", False),
        ("applied", True),
        ("rolled_back", False),
    ]
