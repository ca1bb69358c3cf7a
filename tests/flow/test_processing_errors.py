"""The whole flow under bytewax.testing: a stage that raises for one record loses only it.

Real stages throughout; the only injected parts are a classifier and a router that raise
on a marked text (they stand for any bug a record could trigger), and the ingest skew
limits opened wide so records dated at the limits of `datetime` reach the later stages.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings, load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.cost_windows import EARLIEST, LATEST, window_costs, windowable
from splitpin.operators.ingest import RawRecord
from splitpin.operators.routing import Router
from splitpin.schemas import DeadLetter, Reply, RoutingDecision, decode
from tests.factories import event_dict, raw
from tests.unit.test_cost_windows import record as cost_record

PREFIX = "perr."


class PoisonClassifier(Classifier):
    """The real classifier, except that a batch holding POISON-C raises."""

    def __init__(self, real: Classifier) -> None:
        self.__dict__.update(real.__dict__)

    def classify_batch(self, texts: list[str]) -> list[Any]:
        if any("POISON-C" in text for text in texts):
            raise RuntimeError("classifier bug")
        return super().classify_batch(texts)


class PoisonRouter(Router):
    """Raises on POISON-R after the conversation state already took the turn."""

    def route(self, state, observation, classification):  # type: ignore[no-untyped-def]
        if "POISON-R" in observation.event.text:
            raise KeyError("router bug")
        return super().route(state, observation, classification)


def _settings(**overrides: object) -> Settings:
    # Skew limits wide open: what ingest would reject must not stop the later stages either.
    values: dict[str, object] = {
        "topic_prefix": PREFIX,
        "max_future_skew_s": 1e12,
        "max_past_skew_s": 1e12,
    }
    values.update(overrides)
    return load_settings(**values)


def _run(
    settings: Settings, records: list[RawRecord], classifier: Classifier, router: Router | None
) -> list[OutRecord]:
    out: list[OutRecord] = []
    flow = build_flow(
        settings,
        inputs=FlowInputs(TestingSource(records)),
        sink=TestingSink(out),
        classifier=classifier,
        router=router,
    )
    run_main(flow)
    return out


def _decoded(out: list[OutRecord], topic: str, model: Any) -> list[Any]:
    return [decode(model, r.value) for r in out if r.topic == PREFIX + topic]


def _count(step: str, error_type: str) -> float:
    labels = {"step": step, "error_type": error_type}
    return REGISTRY.get_sample_value("splitpin_processing_errors_total", labels) or 0.0


def test_poison_records_are_dead_lettered_and_the_conversation_goes_on(
    classifier: Classifier,
) -> None:
    settings = _settings()
    before = {
        "classify": _count("classify", "RuntimeError"),
        "conv": _count("conversation", "KeyError"),
    }
    records = [
        raw(event_dict("p-0", "p", text="where is my card?"), offset=0),
        raw(event_dict("p-1", "p", text="POISON-C what now", at_s=10), offset=1),
        raw(event_dict("q-0", "q", text="I was charged twice", at_s=11), offset=2),
        raw(event_dict("p-2", "p", text="POISON-R is it lost?", at_s=20), offset=3),
        raw(event_dict("p-3", "p", text="can you block it?", at_s=30), offset=4),
        # Passes ingest (skew limits open) and the budget; its cost records cannot be windowed.
        raw(event_dict("y-0", "y", sent_at="9999-12-31T23:59:59Z"), offset=6),
        raw(event_dict("p-4", "p", text="thanks", at_s=40), offset=7),
    ]
    out = _run(settings, records, PoisonClassifier(classifier), PoisonRouter(settings.governance))

    letters = _decoded(out, "conversations.dead-letter", DeadLetter)
    by_event: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        assert letter.reason == "processing_error"
        event_id = _value(letter)["event_id"]
        by_event.setdefault(event_id, []).append(letter)
    assert {k: [(x.step, x.error_type) for x in v] for k, v in by_event.items() if k != "y-0"} == {
        "p-1": [("classify", "RuntimeError")],
        "p-2": [("conversation", "KeyError")],
    }
    # y-0: each of its cost records is refused by the windows' input guard.
    assert {(x.step, x.error_type) for x in by_event["y-0"]} == {
        ("cost-windows-in", "OverflowError")
    }
    p1 = by_event["p-1"][0]
    source = (p1.source_topic, p1.source_partition, p1.source_offset)
    assert source == (PREFIX + "conversations.events", -1, -1)
    assert _value(p1)["text"] == "POISON-C what now"  # the record, re-encoded

    decisions = {d.event_id: d for d in _decoded(out, "routing.decisions", RoutingDecision)}
    assert set(decisions) == {"p-0", "q-0", "p-3", "p-4", "y-0"}
    # The poison turns left no trace in the conversation: p's turns are consecutive.
    assert [decisions[e].turn_index for e in ("p-0", "p-3", "p-4")] == [0, 1, 2]
    finals = [r for r in _decoded(out, "conversations.replies", Reply) if r.kind == "final"]
    assert sorted(r.reply_id for r in finals) == ["p-0", "p-3", "p-4", "q-0", "y-0"]

    assert _count("classify", "RuntimeError") - before["classify"] == 1
    assert _count("conversation", "KeyError") - before["conv"] == 1


def _value(letter: DeadLetter) -> dict[str, Any]:
    import base64

    import orjson

    assert letter.value_b64 is not None
    data: dict[str, Any] = orjson.loads(base64.b64decode(letter.value_b64))
    return data


def test_on_processing_error_stop_stops_the_flow_naming_the_step(classifier: Classifier) -> None:
    settings = _settings(on_processing_error="stop")
    records = [raw(event_dict("s-0", "s", text="POISON-R stop here"), offset=0)]
    with pytest.raises(Exception, match="conversation"):
        _run(settings, records, classifier, PoisonRouter(settings.governance))


def test_cost_windows_take_every_time_the_guard_lets_through() -> None:
    accounting = load_settings().governance.accounting
    margin = 2 * timedelta(seconds=accounting.window_s + accounting.allowed_lateness_s)
    margin += timedelta(days=1)
    times = [EARLIEST + margin, datetime(2026, 1, 1, tzinfo=UTC), LATEST - margin]
    records = [cost_record(f"r-{i}", occurred_at=at) for i, at in enumerate(times)]
    assert all(windowable(r, accounting) for r in records)
    out: list[Any] = []
    flow = Dataflow("edges")
    op.output(
        "out",
        window_costs("w", op.input("in", flow, TestingSource(records)), accounting),
        TestingSink(out),
    )
    run_main(flow)
    assert sorted(w.calls for w in out) == [1, 1, 1]
