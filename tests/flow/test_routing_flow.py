"""The whole routing dataflow under bytewax.testing: no Kafka, real stages."""

from __future__ import annotations

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings, load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.ingest import RawRecord
from splitpin.schemas import DeadLetter, RoutingDecision, decode
from tests.factories import T0_PAST_SKEW_S, event_dict, raw


@pytest.fixture
def settings() -> Settings:
    return load_settings(topic_prefix="test.", max_event_bytes=8192, max_past_skew_s=T0_PAST_SKEW_S)


def _run(settings: Settings, records: list[RawRecord], classifier: Classifier) -> list[OutRecord]:
    out: list[OutRecord] = []
    inputs = FlowInputs(TestingSource(records))
    run_main(build_flow(settings, inputs=inputs, sink=TestingSink(out), classifier=classifier))
    return out


DECISIONS = "test.routing.decisions"


def _by_topic(out: list[OutRecord], topic: str) -> list[OutRecord]:
    return [record for record in out if record.topic == topic]


def test_events_become_decisions_and_garbage_dead_letters(
    settings: Settings, classifier: Classifier
) -> None:
    records = [
        raw(event_dict("a-0", "a", text="hi, my card is missing"), offset=0),
        raw(b"{broken", offset=1),
        raw(event_dict("b-0", "b", text="my card was stolen", tags=("compliance",)), offset=2),
        raw(event_dict("a-1", "a", text="any news?", at_s=60), offset=3),
        raw(event_dict("a-1", "a", text="any news?", at_s=60), offset=4),  # retried
        raw(event_dict("a-2", "a", text="thanks", role="agent", at_s=90), offset=5),
    ]
    out = _run(settings, records, classifier)
    decisions = [decode(RoutingDecision, r.value) for r in _by_topic(out, "test.routing.decisions")]
    letters = [
        decode(DeadLetter, r.value) for r in _by_topic(out, "test.conversations.dead-letter")
    ]

    assert sorted(d.event_id for d in decisions) == ["a-0", "a-1", "b-0"]
    by_id = {d.event_id: d for d in decisions}
    assert by_id["b-0"].role == "compliance"
    assert by_id["a-1"].turn_index == 1
    assert by_id["a-1"].tokens.conversation > by_id["a-0"].tokens.conversation
    assert all(
        r.key == d.conversation_id.encode()
        for r, d in zip(_by_topic(out, "test.routing.decisions"), decisions, strict=True)
    )
    assert [(x.reason, x.source_offset) for x in letters] == [("not_json", 1)]


def test_conversation_order_is_kept_under_many_workers(
    settings: Settings, classifier: Classifier
) -> None:
    records = [
        raw(event_dict(f"{c}-{i}", c, text=f"message {i}", at_s=i), offset=n)
        for n, (c, i) in enumerate((c, i) for i in range(20) for c in ("x", "y", "z"))
    ]
    out: list[OutRecord] = []
    inputs = FlowInputs(TestingSource(records))
    flow = build_flow(settings, inputs=inputs, sink=TestingSink(out), classifier=classifier)
    from bytewax.testing import cluster_main

    cluster_main(flow, [], 0, worker_count_per_proc=3)
    decisions = [decode(RoutingDecision, r.value) for r in _by_topic(out, DECISIONS)]
    assert len(decisions) == 60
    for conversation in ("x", "y", "z"):
        turns = [d.turn_index for d in decisions if d.conversation_id == conversation]
        assert turns == list(range(20))


def test_decisions_are_byte_identical_when_replayed(
    settings: Settings, classifier: Classifier
) -> None:
    records = [
        raw(event_dict(f"r-{i}", "r", text="hello " * i, at_s=i), offset=i) for i in range(1, 8)
    ]
    first = _by_topic(_run(settings, records, classifier), DECISIONS)
    second = _by_topic(_run(settings, records, classifier), DECISIONS)
    assert len(first) == 7
    assert [r.value for r in first] == [r.value for r in second]
    assert all(orjson.loads(r.value)["schema_version"] == 1 for r in first)


def test_answering_off_publishes_the_same_decisions_and_nothing_else(
    settings: Settings, classifier: Classifier
) -> None:
    """A routing-only deployment (`answering: false`): every decision as with answering
    on, byte for byte, and no reply, cost, audit or windowed record: no model is called."""
    records = [
        raw(event_dict("q-0", "q", text="my card has not arrived yet"), offset=0),
        raw(event_dict("p-0", "p", text="my card was stolen", tags=("compliance",)), offset=1),
        raw(event_dict("q-1", "q", text="how long does delivery take?", at_s=30), offset=2),
        raw(b"{broken", offset=3),
    ]
    answering = _run(settings, records, classifier)
    routing_only = _run(settings.model_copy(update={"answering": False}), records, classifier)

    def topics(out: list[OutRecord]) -> set[str]:
        return {record.topic for record in out}

    assert {"test.conversations.replies", "test.routing.metrics"} <= topics(answering)
    assert topics(routing_only) == {DECISIONS, "test.conversations.dead-letter"}
    assert sorted(r.value for r in _by_topic(routing_only, DECISIONS)) == sorted(
        r.value for r in _by_topic(answering, DECISIONS)
    )
    assert len(_by_topic(routing_only, DECISIONS)) == 3


def test_answering_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPIN_ANSWERING", "false")
    assert load_settings().answering is False
    assert load_settings().child_env()["SPLITPIN_ANSWERING"] == "False"
    monkeypatch.delenv("SPLITPIN_ANSWERING")
    assert load_settings().answering is True
