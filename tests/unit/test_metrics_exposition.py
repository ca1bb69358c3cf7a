"""What /metrics serves is valid Prometheus text and never labels by an identifier."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY, generate_latest

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from tests.factories import event_dict, raw

FORBIDDEN_LABELS = {"conversation_id", "event_id", "tenant_id", "user_id", "session_id"}


@pytest.fixture(scope="module")
def exposition(classifier: Classifier) -> bytes:
    out: list[OutRecord] = []
    records = [raw(event_dict("x-0", "x")), raw(b"not json", offset=1)]
    flow = build_flow(
        load_settings(),
        inputs=FlowInputs(TestingSource(records)),
        sink=TestingSink(out),
        classifier=classifier,
    )
    run_main(flow)
    return generate_latest(REGISTRY)


def test_no_identifier_is_a_label(exposition: bytes) -> None:
    assert b"splitpin_events_ingested_total" in exposition
    for family in REGISTRY.collect():
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), (family.name, sample.labels)


def test_splitpin_metrics_are_exposed(exposition: bytes) -> None:
    text = exposition.decode()
    for name in (
        "splitpin_routing_decisions_total",
        "splitpin_dead_letters_total",
        "splitpin_decision_seconds_bucket",
    ):
        assert name in text


def test_promtool_accepts_the_exposition(exposition: bytes) -> None:
    if shutil.which("promtool") is None:
        pytest.skip(
            "promtool (Debian package `prometheus`) is not installed; ./dev test installs it"
        )
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
