"""The Prometheus counters move with what the flow actually emitted."""

from __future__ import annotations

from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from tests.factories import T0_PAST_SKEW_S, event_dict, raw


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_counters_follow_outputs(classifier: Classifier) -> None:
    before = {
        "fast": _value("splitpin_routing_decisions_total", role="fast", tier="bounded"),
        "compliance": _value("splitpin_routing_decisions_total", role="compliance", tier="bounded"),
        "not_json": _value("splitpin_dead_letters_total", reason="not_json"),
        "dupes": _value("splitpin_duplicate_events_total"),
        "decisions": _value("splitpin_decision_seconds_count"),
    }
    records = [
        raw(event_dict("m-0", "m", text="where is my card"), offset=0),
        raw(event_dict("m-0", "m", text="where is my card"), offset=1),
        raw(event_dict("n-0", "n", text="card stolen", tags=("compliance",)), offset=2),
        raw(b"nope", offset=3),
    ]
    out: list[OutRecord] = []
    settings = load_settings(topic_prefix="metrics.", max_past_skew_s=T0_PAST_SKEW_S)
    inputs = FlowInputs(TestingSource(records))
    run_main(build_flow(settings, inputs=inputs, sink=TestingSink(out), classifier=classifier))

    topics = sorted(record.topic.removeprefix("metrics.") for record in out)
    # m-0 (chat; the router is unsure, so the verifier answers it alone: replies.verifier_first):
    # decision, 1 call, final; n-0 (pinned): decision, 1 call, final; the dead letter; one
    # windowed cost per (tenant, model, minute).
    assert topics.count("routing.decisions") == 2
    assert topics.count("conversations.replies") == 2
    assert topics.count("routing.metrics") == 2
    assert topics.count("conversations.dead-letter") == 1
    fast = _value("splitpin_routing_decisions_total", role="fast", tier="bounded")
    compliance = _value("splitpin_routing_decisions_total", role="compliance", tier="bounded")
    assert fast - before["fast"] == 1
    assert compliance - before["compliance"] == 1
    assert _value("splitpin_dead_letters_total", reason="not_json") - before["not_json"] == 1
    assert _value("splitpin_duplicate_events_total") - before["dupes"] == 1
    assert _value("splitpin_decision_seconds_count") - before["decisions"] == 2
