"""The demo's per-route report, from hand-built records and timestamps (no Kafka)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from splitpin.app.report import (
    REFUSED,
    Stamped,
    Summary,
    format_seconds,
    plot_latencies,
    render_table,
    route_label,
    summarize,
)
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import T0, decision

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def event(
    event_id: str, *, at_ms: int | None, role: str = "customer"
) -> Stamped[ConversationEvent]:
    record = ConversationEvent(
        event_id=event_id,
        conversation_id=f"c-{event_id}",
        tenant_id="acme-bank",
        channel="chat",
        role=role,
        text="where is my card?",
        sent_at=T0,
    )
    return Stamped(record, at_ms)


def reply(
    event_id: str,
    kind: Literal["preliminary", "final"],
    at_ms: int | None,
    *,
    escalated: bool = False,
    revision: int | None = None,
) -> Stamped[Reply]:
    record = Reply(
        reply_id=event_id,
        revision=revision if revision is not None else (0 if kind == "preliminary" else 1),
        kind=kind,
        status="unverified" if kind == "preliminary" else "verified",
        conversation_id=f"c-{event_id}",
        tenant_id="acme-bank",
        channel="chat",
        text="answer",
        model="local-fast",
        model_version="local-fast@test",
        route="fast",
        confidence=0.9,
        tokens_in=10,
        tokens_out=5,
        cost_usd=0.0,
        latency_ms=0.0,
        escalated=escalated,
    )
    return Stamped(record, at_ms)


def cost(event_id: str, call: str, usd: float, *, escalated: bool = False) -> CostRecord:
    return CostRecord(
        record_id=f"{event_id}:{call}",
        event_id=event_id,
        tenant_id="acme-bank",
        role="fast",
        model="local-fast",
        model_version="local-fast@test",
        tokens_in=10,
        tokens_out=5,
        cost_usd=usd,
        latency_ms=1.0,
        occurred_at=T0,
        escalated=escalated,
    )


def failure(event_id: str, check: str) -> ValidationFailure:
    return ValidationFailure(
        failure_id=f"{event_id}:primary:{check}",
        event_id=event_id,
        conversation_id=f"c-{event_id}",
        tenant_id="acme-bank",
        check=check,
        error="PolicyViolation",
        detail="matched",
        action="rerouted",
    )


@pytest.fixture
def summary() -> Summary:
    """Two fast chats, an escalated long-context email, a pinned compliance turn, a refusal."""
    events = [
        event("f1", at_ms=1_000),
        event("f2", at_ms=2_000),
        event("f2", at_ms=9_000),  # retried under the same id: timed from the first
        event("l1", at_ms=3_000),
        event("p1", at_ms=4_000),
        event("r1", at_ms=5_000),
        event("a1", at_ms=5_500, role="agent"),  # not routed, not a customer event
    ]
    decisions = [
        decision("f1"),
        decision("f2"),
        decision("l1", role="long_context", channel="email"),
        decision("p1", role="compliance", pinned=True),
        decision("r1", action="refuse"),
    ]
    replies = [
        reply("f1", "preliminary", 1_100),
        reply("f1", "final", 1_500),
        reply("f2", "preliminary", 2_300),
        reply("f2", "final", 4_000),
        reply("l1", "final", 13_000, escalated=True, revision=1),
        reply("p1", "final", 4_800, revision=1),
        reply("r1", "final", 5_010, revision=1),
        reply("zz", "final", 6_000, revision=1),  # no decision: reported, in no row
    ]
    costs = [
        cost("f1", "primary", 0.001),
        cost("f1", "verify", 0.004),
        cost("f1", "verify", 0.004),  # re-emitted after a recovery: same record_id
        cost("f2", "primary", 0.002),
        cost("l1", "primary", 0.02),
        cost("l1", "verify", 0.01, escalated=True),
        cost("p1", "pinned", 0.005),
    ]
    failures = [failure("l1", "citation-sources"), failure("l1", "citation-sources")]
    return summarize(events, decisions, replies, costs, failures)


def test_route_labels_name_the_role_the_pin_and_refusals() -> None:
    assert route_label(decision("e")) == "fast"
    assert route_label(decision("e", role="compliance", pinned=True)) == "compliance (pinned)"
    assert route_label(decision("e", action="refuse", role="long_context")) == REFUSED


def test_rows_group_by_route_with_times_costs_escalations_and_failures(summary: Summary) -> None:
    rows = {row.route: row for row in summary.routes}
    assert [row.route for row in summary.routes] == [
        "fast",
        "long_context",
        "compliance (pinned)",
        REFUSED,
    ]
    fast = rows["fast"]
    assert (fast.events, fast.answered) == (2, 2)
    assert fast.to_preliminary_s == pytest.approx((0.1, 0.3))
    assert fast.to_final_s == pytest.approx((0.5, 2.0))
    assert fast.cost_usd == pytest.approx(0.007)  # the duplicate verify call counted once
    assert fast.escalations == 0
    long_context = rows["long_context"]
    assert long_context.to_preliminary_s == ()
    assert long_context.to_final_s == pytest.approx((10.0,))
    assert long_context.cost_usd == pytest.approx(0.03)
    assert long_context.escalations == 1
    assert long_context.validation_failures == 1  # same failure_id twice: one failure
    assert rows[REFUSED].to_final_s == pytest.approx((0.01,))
    assert rows[REFUSED].cost_usd == 0


def test_totals_and_the_one_final_reply_check(summary: Summary) -> None:
    total = summary.total
    assert (total.events, total.answered) == (5, 5)
    assert total.cost_usd == pytest.approx(0.042)
    assert (total.escalations, total.validation_failures) == (1, 1)
    assert len(total.to_final_s) == 5
    assert summary.valid_customer_events == 5
    assert (summary.exactly_one_final, summary.no_final, summary.several_finals) == (5, 0, 0)
    assert summary.unmatched == {"replies": 1}


def test_missing_and_duplicate_finals_fail_the_check() -> None:
    events = [event("a", at_ms=0), event("b", at_ms=0), event("c", at_ms=None)]
    replies = [reply("b", "final", 10), reply("b", "final", 20), reply("c", "final", 30)]
    summary = summarize(events, [decision(e) for e in "abc"], replies, [], [])
    assert (summary.exactly_one_final, summary.no_final, summary.several_finals) == (1, 1, 1)
    fast = summary.routes[0]
    assert fast.answered == 2
    assert fast.to_final_s == pytest.approx((0.01,))  # the first of b's two finals
    assert summary.untimed == 1  # c's event has no timestamp
    table = render_table(summary)
    assert "check: 1/3 valid customer events have exactly one final reply" in table
    assert "(1 with none, 1 with more than one)" in table
    assert "replies without a timestamp to measure (not in p50/p95): 1" in table


def test_table_is_aligned_and_shows_dashes_without_preliminaries(summary: Summary) -> None:
    table = render_table(summary)
    lines = table.splitlines()
    header, rule = lines[0], lines[1]
    assert header.split()[:3] == ["route", "events", "answered"]
    body = lines[: lines.index("")]
    assert {len(line) for line in body} == {len(rule)}  # every row as wide as the header
    long_context = next(line for line in body if line.startswith("long_context "))
    cells = long_context.split()
    assert cells[:5] == ["long_context", "1", "1", "-", "-"]
    assert cells[5:7] == ["10.00s", "10.00s"]
    assert cells[7:] == ["0.0300", "1", "1"]
    totals = next(line for line in body if line.startswith("total "))
    assert totals.split()[1:3] == ["5", "5"]
    assert "check: 5/5 valid customer events have exactly one final reply (ok)" in table
    assert "not matched to any decision (in no row): 1 replies" in table


def test_seconds_read_as_milliseconds_below_one_second() -> None:
    assert format_seconds(0.0456) == "46ms"
    assert format_seconds(2.345) == "2.35s"
    assert format_seconds(250.0) == "250s"


def test_plot_is_a_png_at_the_given_path(summary: Summary, tmp_path: Path) -> None:
    target = tmp_path / "plots" / "latency.png"
    written = plot_latencies(summary, target)
    assert written == target
    assert target.read_bytes().startswith(PNG_MAGIC)
    assert target.stat().st_size > 10_000


def test_plot_without_any_reply_still_writes_a_png(tmp_path: Path) -> None:
    empty = summarize([], [], [], [], [])
    written = plot_latencies(empty, tmp_path / "empty.png")
    assert written.read_bytes().startswith(PNG_MAGIC)
    assert render_table(empty).splitlines()[-1].startswith("check: 0/0")


def test_plot_defaults_to_the_working_directory(
    summary: Summary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    written = plot_latencies(summary)
    assert (tmp_path / written).is_file()
    assert written.name == "demo-latency.png"
