"""The incident, replayed: the fast model cites `InternalDoc-42`, which was never attached.

The fast role is pointed (OpenAI-compatible SDK client) at the fake model API, scripted to
answer every request with that invented reference; the other roles are the local fleet.
Nothing citing the invented document may be delivered, not even as a preliminary reply;
each failure is recorded and the request re-routed to the pinned role.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import load_settings
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import T0_PAST_SKEW_S, event_dict, raw
from tests.governance_files import one_role_at_api, save_config
from tests.in_memory_flow import run_in_memory
from tests.model_api_server import ModelApiServer, succeed

INVENTED = "Your card is on its way.\nReferences: 1) InternalDoc-42"


@pytest.fixture
def api() -> Iterator[ModelApiServer]:
    with ModelApiServer() as server:
        server.default = succeed(INVENTED)
        yield server


def test_a_reply_citing_an_unattached_document_is_never_delivered(
    api: ModelApiServer,
    classifier: Classifier,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = one_role_at_api(api, "fast", retry_budget=0)
    # The incident's path, one call after another: a hedged verifier racing the fast call
    # may finish first (tests/integration/test_hedging_on_broker.py covers that race).
    config["replies"]["hedging"]["enabled"] = False
    path = save_config(config, tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    settings = load_settings(
        topic_prefix="inv.", governance_path=path, max_past_skew_s=T0_PAST_SKEW_S
    )
    questions = ["my card has not arrived", "how do I top up by bank transfer"]
    records = [
        raw(event_dict(f"inv-{n}", f"c-{n}", text=text, channel=channel), offset=n)
        for n, (text, channel) in enumerate(
            [(questions[0], "chat"), (questions[1], "chat"), (questions[0], "email")]
        )
    ]
    out = run_in_memory(settings, records, classifier)
    replies = out.decoded(Reply, "replies")
    failures = out.decoded(ValidationFailure, "validation_failures")
    costs = out.decoded(CostRecord, "metrics")

    assert api.count() == 3, "one fast call per event, no retries of a deterministic failure"
    assert all(c.doc_id != "InternalDoc-42" for r in replies for c in r.citations)
    assert all(r.kind == "final" for r in replies), "the invented answer never went out"
    assert {r.reply_id for r in replies} == {"inv-0", "inv-1", "inv-2"}
    assert all(r.route == "compliance" and r.status == "verified" for r in replies)
    assert all(r.citations and r.citations[0].source.startswith("kb:") for r in replies)
    assert len(failures) == 3
    for failure in failures:
        assert (failure.check, failure.error, failure.action) == (
            "citation-sources",
            "MissingReference",
            "rerouted",
        )
        assert "InternalDoc-42" in failure.detail
        assert failure.model == "claude-3-5-haiku-20241022"
    assert sorted(c.record_id.split(":")[1] for c in costs) == ["primary"] * 3 + ["reroute"] * 3
