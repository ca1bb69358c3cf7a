"""A canary beside the primary on the real broker (issue 12, item 1).

Two copies of the same events: on copy B only a primary runs (the reference); on copy A a
primary and a canary (`splitpin run --canary`) run together. The primary's outputs on A
equal B's (every field but timings); the canary mirrors exactly the sampled conversations,
writes only to its prefix, its costs are shadow and stay within its one shadow budget
(sized so that one request fits and the backlog does not: refusals appear); and after a
SIGKILL of the canary, the primary goes on answering.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from splitpin.app.canary import plan_canary
from splitpin.core.kafka.admin import delete_topics
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import Settings
from tests.factories import event_dict
from tests.flow_process import kill_hard, running_flow, start_flow
from tests.governance_files import save_config, shipped_config
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

CONVERSATIONS = 16
TURNS = 2
LATE = 4  # events published after the canary is killed
FRACTION = 0.5
PREFIX = "canary."
TIMEOUT_S = 90.0
TEXTS = (
    "My card has not arrived yet, what should I do?",
    "It was sent two weeks ago, can you check where it is?",
    "Thanks, and how do I activate it once it arrives?",
)


def _sampled(conversation_id: str) -> bool:
    """Written from the spec, not from operators/sampling.py."""
    digest = hashlib.sha256(conversation_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < FRACTION


def _events(turns: range, conversations: int = CONVERSATIONS) -> list[tuple[bytes, bytes, str]]:
    out = []
    for turn in turns:
        for n in range(conversations):
            conversation = f"cv-{n:02d}"
            event_id = f"{conversation}-{turn}"
            data = event_dict(event_id, conversation, text=TEXTS[turn], at_s=turn * 30)
            out.append((conversation.encode(), orjson.dumps(data), event_id))
    return out


def _publish(settings: Settings, events: list[tuple[bytes, bytes, str]]) -> None:
    producer = CheckedProducer(settings.bootstrap_servers)
    for key, value, _ in events:
        producer.produce(settings.topic("events"), value, key)
    producer.flush(15)


def _values(messages: list[Message]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages]


def _finals_cover(event_ids: set[str]) -> Any:
    def done(messages: list[Message]) -> bool:
        finals = {v["reply_id"] for v in _values(messages) if v["kind"] == "final"}
        return finals >= event_ids

    return done


def _by_id(records: list[dict[str, Any]], *key: str, drop: tuple[str, ...] = ()) -> dict:  # type: ignore[type-arg]
    """Records by their identifying fields, timings dropped; re-emitted copies must agree."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        kept = {k: v for k, v in record.items() if k not in drop}
        ident = tuple(record[k] for k in key)
        assert out.setdefault(ident, kept) == kept, f"{ident} re-emitted differently"
    return out


def _wait_for_topic(bootstrap: str, topic: str, timeout_s: float) -> None:
    """The canary creates its topics as it starts: wait for them before reading."""
    client = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while topic not in client.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{topic} was not created"
        time.sleep(0.2)


def _without_hedging(folder: Path) -> Path:
    """The shipped config with hedging off: which call wins a hedge's race depends on
    timing, and this test compares the replies of two runs (hedging: test_hedging*.py)."""
    folder.mkdir()
    config = shipped_config()
    config["replies"]["hedging"]["enabled"] = False
    return save_config(config, folder)


def _candidate(path: Path, shadow_budget_usd: float, base: Path) -> Path:
    raw = yaml.safe_load(base.read_text())
    raw["canary"] = {
        **(raw.get("canary") or {}),
        "sample_fraction": FRACTION,
        "shadow_budget_usd": shadow_budget_usd,
        "topic_prefix": PREFIX,
    }
    # One budget window for the whole test (a window boundary would refill the budget).
    raw.setdefault("budgets", {})["window_s"] = 30 * 86_400
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_canary_beside_the_primary(topic_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = _without_hedging(tmp_path / "base")
    with_canary: Settings = topic_settings(governance_path=base)
    reference: Settings = topic_settings(governance_path=base)
    bootstrap = with_canary.bootstrap_servers
    early, late = _events(range(TURNS)), _events(range(TURNS, TURNS + 1), LATE)
    early_ids = {event_id for _, _, event_id in early}
    all_ids = early_ids | {event_id for _, _, event_id in late}
    sampled = {event_id for key, _, event_id in early if _sampled(key.decode())}
    assert 0 < len(sampled) < len(early_ids), "the fixture must sample some, not all"
    for settings in (with_canary, reference):
        _publish(settings, early)

    logs = {name: tmp_path / f"{name}.log" for name in ("reference", "primary", "canary")}
    with running_flow(reference, tmp_path / "rec-ref", logs["reference"]) as ref_flow:
        # The reference's decisions size the shadow budget: the dearest sampled request
        # fits (so the first admission is certain), two do not (so the backlog is refused).
        ref_decisions = read_until(
            bootstrap,
            reference.topic("decisions"),
            lambda got: {v["event_id"] for v in _values(got)} >= early_ids,
            TIMEOUT_S,
        )
        estimates = [
            v["estimated_cost_usd"] for v in _values(ref_decisions) if v["event_id"] in sampled
        ]
        shadow_budget = round(max(estimates) * 1.2, 6)
        assert 2 * min(estimates) > shadow_budget, estimates
        candidate = _candidate(tmp_path / "candidate.yaml", shadow_budget, base)
        plan = plan_canary(with_canary, candidate)
        canary_topics = plan.output_topics()
        extra = {
            "SPLITPIN_CANARY_RECOVERY_DIR": str(tmp_path / "rec-canary"),
            "SPLITPIN_CANARY_METRICS_PORT": "0",
        }
        try:
            with running_flow(
                with_canary, tmp_path / "rec-primary", logs["primary"], **extra
            ) as primary:
                canary = start_flow(
                    with_canary,
                    tmp_path / "rec-primary",
                    logs["canary"],
                    "--canary",
                    str(candidate),
                    **extra,
                )
                try:
                    _wait_for_topic(bootstrap, PREFIX + with_canary.topic("replies"), TIMEOUT_S)
                    canary_decisions = read_until(
                        bootstrap,
                        PREFIX + with_canary.topic("decisions"),
                        lambda got: {v["event_id"] for v in _values(got)} >= sampled,
                        TIMEOUT_S,
                    )
                    canary_replies = read_until(
                        bootstrap,
                        PREFIX + with_canary.topic("replies"),
                        _finals_cover(sampled),
                        TIMEOUT_S,
                    )
                    assert canary.poll() is None, logs["canary"].read_text()[-3000:]
                finally:
                    if canary.poll() is None:
                        kill_hard(canary)
                # The canary is gone; the primary goes on answering new turns.
                _publish(with_canary, late)
                _publish(reference, late)
                primary_replies = read_until(
                    bootstrap, with_canary.topic("replies"), _finals_cover(all_ids), TIMEOUT_S
                )
                ref_replies = read_until(
                    bootstrap, reference.topic("replies"), _finals_cover(all_ids), TIMEOUT_S
                )
                assert primary.poll() is None, logs["primary"].read_text()[-3000:]
                assert ref_flow.poll() is None, logs["reference"].read_text()[-3000:]
                outputs = {}
                for name, settings in (("primary", with_canary), ("reference", reference)):
                    outputs[name] = {
                        topic: _values(
                            read_until(bootstrap, settings.topic(topic), lambda got: False, 3.0)
                        )
                        for topic in ("decisions", "metrics", "validation_failures", "dead_letter")
                    }
                canary_costs = _values(
                    read_until(bootstrap, PREFIX + with_canary.topic("metrics"), lambda g: False, 3)
                )
        finally:
            delete_topics(bootstrap, canary_topics)

    # 1. The primary with a canary beside it answered exactly as the reference did.
    reply_fields = ("reply_id", "revision")
    assert _by_id(_values(primary_replies), *reply_fields, drop=("latency_ms",)) == _by_id(
        _values(ref_replies), *reply_fields, drop=("latency_ms",)
    )
    primary_out, ref_out = outputs["primary"], outputs["reference"]
    assert _by_id(primary_out["decisions"], "event_id") == _by_id(ref_out["decisions"], "event_id")
    assert _by_id(primary_out["metrics"], "record_id", drop=("latency_ms",)) == _by_id(
        ref_out["metrics"], "record_id", drop=("latency_ms",)
    )
    assert _by_id(primary_out["validation_failures"], "failure_id") == _by_id(
        ref_out["validation_failures"], "failure_id"
    )
    assert not primary_out["dead_letter"] and not ref_out["dead_letter"]
    assert not any(v["shadow"] for v in primary_out["metrics"])
    assert all(v["action"] == "dispatch" for v in primary_out["decisions"])

    # 2. The canary mirrored whole sampled conversations, and nothing else.
    decisions = _by_id(_values(canary_decisions), "event_id")
    assert {event_id for (event_id,) in decisions} == sampled
    assert {v["reply_id"] for v in _values(canary_replies)} <= sampled

    # 3. Shadow costs, one shadow budget: some admitted, the rest refused with the reason,
    # and what was spent stays within the budget in each window it touched.
    assert canary_costs and all(v["shadow"] for v in canary_costs)
    assert {v["event_id"] for v in canary_costs} <= sampled
    refused = [v for v in decisions.values() if v["action"] == "refuse"]
    admitted = [v for v in decisions.values() if v["action"] == "dispatch"]
    assert admitted, "the first request fits the shadow budget"
    assert refused, "the backlog does not"
    assert all(any("shadow budget: the canary" in r for r in v["reasons"]) for v in refused)
    spent = sum(
        v["cost_usd"] for v in _by_id(canary_costs, "record_id", drop=("latency_ms",)).values()
    )
    assert spent <= shadow_budget
    print(
        f"sampled {len(sampled)}/{len(early_ids)} events; canary admitted {len(admitted)}, "
        f"refused {len(refused)}; shadow spend ${spent:.6f} of ${shadow_budget:.6f}"
    )
