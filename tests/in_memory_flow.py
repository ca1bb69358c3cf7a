"""The whole flow in memory (bytewax.testing, no Kafka), and its outputs by logical topic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from bytewax.testing import TestingSink, TestingSource, run_main
from pydantic import BaseModel

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.ingest import RawRecord
from splitpin.schemas import decode

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class FlowOutput:
    """What one in-memory run wrote, read by logical topic name (`Settings.topics`)."""

    settings: Settings
    records: list[OutRecord]

    def values(self, topic: str) -> list[bytes]:
        physical = self.settings.topic(topic)
        return [r.value for r in self.records if r.topic == physical]

    def decoded(self, model: type[M], topic: str) -> list[M]:
        return [decode(model, v) for v in self.values(topic)]


def run_in_memory(
    settings: Settings, records: Sequence[RawRecord], classifier: Classifier
) -> FlowOutput:
    """Run the real flow over `records` to the end of input and collect every output."""
    out: list[OutRecord] = []
    flow = build_flow(
        settings,
        inputs=FlowInputs(TestingSource(list(records))),
        sink=TestingSink(out),
        classifier=classifier,
    )
    run_main(flow)
    return FlowOutput(settings, out)
