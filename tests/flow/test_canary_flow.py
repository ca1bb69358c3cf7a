"""The routing dataflow in canary mode under bytewax.testing: real stages, no Kafka.

Only sampled conversations (every turn) produce output, every output topic carries the
canary's prefix, its CostRecords are shadow, and a topic outside the prefix stops it.
"""

from __future__ import annotations

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings, load_settings
from splitpin.flows.routing_flow import CanaryMode, FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.sampling import ForeignTopicError, in_sample
from splitpin.schemas import CostRecord, RoutingDecision, decode
from splitpin.schemas.governance import CanaryConfig, GovernanceConfig
from tests.factories import T0_PAST_SKEW_S, event_dict, raw

FRACTION = 0.5
PRIMARY_EVENTS = "test.conversations.events"


@pytest.fixture
def settings() -> Settings:
    """The canary's settings: its prefix before the primary's (`test.`)."""
    return load_settings(topic_prefix="canary.test.", max_past_skew_s=T0_PAST_SKEW_S)


def _governance(settings: Settings) -> GovernanceConfig:
    canary = CanaryConfig(sample_fraction=FRACTION, shadow_budget_usd=50.0)
    return settings.governance.model_copy(update={"canary": canary})


def _run(settings: Settings, classifier: Classifier, prefix: str) -> list[OutRecord]:
    records = [
        raw(event_dict(f"c-{n}-{turn}", f"c-{n}", text=text, at_s=turn * 30), offset=i)
        for i, (turn, n, text) in enumerate(
            (turn, n, text)
            for turn, text in enumerate(("where is my card?", "it has been two weeks"))
            for n in range(8)
        )
    ]
    out: list[OutRecord] = []
    flow = build_flow(
        settings,
        inputs=FlowInputs(TestingSource(records)),
        sink=TestingSink(out),
        classifier=classifier,
        governance=_governance(settings),
        canary=CanaryMode(PRIMARY_EVENTS, prefix),
    )
    run_main(flow)
    return out


def test_canary_mirrors_sampled_conversations_to_its_own_topics(
    settings: Settings, classifier: Classifier
) -> None:
    out = _run(settings, classifier, "canary.test.")
    sampled = {f"c-{n}" for n in range(8) if in_sample(f"c-{n}", FRACTION)}
    assert 0 < len(sampled) < 8, "the fixture must sample some, not all"
    assert out and all(r.topic.startswith("canary.test.") for r in out)
    decisions = [
        decode(RoutingDecision, r.value) for r in out if r.topic == settings.topic("decisions")
    ]
    assert sorted(d.event_id for d in decisions) == sorted(
        f"{c}-{turn}" for c in sampled for turn in range(2)
    )
    costs = [decode(CostRecord, r.value) for r in out if r.topic == settings.topic("metrics")]
    assert costs and all(c.shadow for c in costs)


def test_a_topic_outside_the_prefix_stops_the_canary(
    settings: Settings, classifier: Classifier
) -> None:
    with pytest.raises(Exception) as raised:  # Bytewax wraps the step's error
        _run(settings, classifier, "elsewhere.")
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    assert any(isinstance(e, ForeignTopicError) for e in chain), chain
