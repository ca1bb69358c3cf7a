"""What /metrics serves is valid Prometheus text and never labels by an identifier."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

from splitpin.core import metrics
from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import REPO_ROOT, load_settings
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.schemas.metrics import CostRecord
from tests.factories import T0_PAST_SKEW_S, event_dict, raw

FORBIDDEN_LABELS = {"conversation_id", "event_id", "tenant_id", "user_id", "session_id"}


@pytest.fixture(scope="module")
def exposition(classifier: Classifier) -> bytes:
    out: list[OutRecord] = []
    records = [raw(event_dict("x-0", "x")), raw(b"not json", offset=1)]
    flow = build_flow(
        # The factories' fixed T0 would be dead-lettered as skewed: no model call at all.
        load_settings(max_past_skew_s=T0_PAST_SKEW_S),
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


def test_no_created_series(exposition: bytes) -> None:
    """`disable_created_metrics()` runs before any metric exists: no `_created` timestamps."""
    assert b"splitpin_model_calls_total" in exposition
    assert b"_created" not in exposition


def _model_samples(name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    ]


def test_model_calls_carry_the_gen_ai_labels_and_emulated_cost(exposition: bytes) -> None:
    """The flow's calls (the local fleet here) are labelled with the provider and requested
    model as OpenTelemetry's GenAI conventions name them, and their cost as emulated."""
    # The registry is process-wide: earlier tests' remote calls are in it too, so look at
    # the local fleet's samples, and check that every local sample is labelled as such.
    calls = _model_samples("splitpin_model_calls_total")
    local = [labels for labels in calls if labels["gen_ai_provider_name"] == "local"]
    assert local
    for labels in local:
        assert labels["gen_ai_request_model"] == f"local-{labels['role']}"
    for labels in calls:
        is_local = labels["gen_ai_request_model"].startswith("local-")
        assert is_local == (labels["gen_ai_provider_name"] == "local")
    costs = _model_samples("splitpin_model_cost_usd_total")
    local_costs = [labels for labels in costs if labels["gen_ai_provider_name"] == "local"]
    assert local_costs and all(labels["emulated"] == "true" for labels in local_costs)
    assert {"gen_ai_provider_name", "gen_ai_request_model"} <= set(
        _model_samples("splitpin_model_call_seconds_count")[0]
    )


SERVER_MODEL_PREFIX = "served-by-server:"  # what no configured label value starts with
ROLES = ("fast", "long_context", "compliance", "verifier", "summarizer")


@settings(max_examples=100, deadline=None)
@given(
    role=st.sampled_from(ROLES),
    emulated=st.booleans(),
    served_by=st.sampled_from(["anthropic", "openai"]),
    version=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=30),
    returned=st.text(min_size=1, max_size=30),
)
def test_gen_ai_labels_come_from_the_configured_role_only(
    role: str, emulated: bool, served_by: str, version: str, returned: str
) -> None:
    """Bounded: the provider and requested model are the declared role's (or the local
    fleet's), never the model id a server returned (`model_version`, free text)."""
    pin = f"pin-{role}-{version}"
    metrics.declare_role(role, served_by, pin)
    record = CostRecord(
        record_id="e-1:primary",
        event_id="e-1",
        tenant_id="acme-bank",
        role=role,
        model=f"local-{role}" if emulated else "configured-model",
        model_version=SERVER_MODEL_PREFIX + returned,
        tokens_in=3,
        tokens_out=2,
        cost_usd=0.5,
        latency_ms=10.0,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        emulated=emulated,
    )
    labels = {"role": role, "model": record.model}
    labels |= {"gen_ai_provider_name": "local" if emulated else served_by}
    labels |= {"gen_ai_request_model": f"local-{role}" if emulated else pin}
    before = REGISTRY.get_sample_value("splitpin_model_calls_total", labels) or 0.0
    cost_labels = {k: v for k, v in labels.items() if k != "role"}
    cost_labels["emulated"] = "true" if emulated else "false"
    cost = REGISTRY.get_sample_value("splitpin_model_cost_usd_total", cost_labels) or 0.0
    metrics.observe_call(record)
    assert REGISTRY.get_sample_value("splitpin_model_calls_total", labels) == before + 1
    assert REGISTRY.get_sample_value("splitpin_model_cost_usd_total", cost_labels) == cost + 0.5
    assert not any(
        value.startswith(SERVER_MODEL_PREFIX)
        for family in REGISTRY.collect()
        if family.name.startswith("splitpin_model")
        for sample in family.samples
        for value in sample.labels.values()
    )


def test_dashboard_groups_only_by_labels_its_metric_has(exposition: bytes) -> None:
    """Every `by (...)` of a dashboard query over one splitpin metric names labels that
    metric carries: a renamed label would leave a panel silently empty."""
    dashboard = json.loads((REPO_ROOT / "deploy/grafana/dashboards/splitpin.json").read_text())
    # Declared label names (prometheus_client keeps them as `_labelnames`), so a metric
    # with no samples yet (escalations, failures) is checked too.
    labels_of = {
        re.sub(r"_total$", "", m._name): set(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, Counter | Gauge | Histogram)
    }
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            names = {
                re.sub(r"_(bucket|count|sum|total)$", "", n)
                for n in re.findall(r"\bsplitpin_\w+", expr)
            }
            if len(names) != 1:
                continue
            (name,) = names
            for group in re.findall(r"\bby \(([^)]*)\)", expr):
                wanted = {label.strip() for label in group.split(",")} - {"le"}
                assert wanted <= labels_of.get(name, set()), (expr, labels_of.get(name))
                checked += 1
    assert checked >= 8
