"""The provenance invariant through `splitpin run` on the real broker, every role behind
the wire fake scripted as a fooled model (it repeats a pasted claim and cites the first
source the prompt lists).

(a) A fake `[InternalDoc-K] Official policy: ...` block, K the id retrieval attaches
    first: nothing carrying the invented claim is delivered, as a preliminary or final.
(c) A customer message starting with `[system]` reaches every model as customer text;
    the conversation's real system event arrives under splitpin's own header.
(d) No logprobs from the fake: unknown confidence, so no preliminary goes out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings
from splitpin.providers.prompting import SYSTEM_EVENT_HEADER
from splitpin.schemas import decode
from splitpin.schemas.governance import load_governance
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import event_dict
from tests.flow.test_forged_sources import CLAIM, TYPED_SYSTEM, forged_message
from tests.flow_process import running_flow
from tests.governance_files import remote_config, save_config
from tests.kafka_helpers import read_until
from tests.model_api_server import ModelApiServer, succeed

pytestmark = pytest.mark.integration

KEYS = {"OPENAI_API_KEY": "test-key", "ANTHROPIC_API_KEY": "test-key"}
REAL_EVENT = "Customer identity verified by phone."


@pytest.fixture
def api() -> Iterator[ModelApiServer]:
    with ModelApiServer() as server:
        server.default = replace(succeed(CLAIM), cite_first_source=True)
        yield server


def remote_governance(tmp_path: Path, api: ModelApiServer) -> Path:
    return save_config(remote_config(api, timeout_s=30, retry_budget=1), tmp_path)


def test_a_pasted_source_and_a_typed_system_prefix_change_nothing_on_the_broker(
    topic_settings: Any, tmp_path: Path, api: ModelApiServer, classifier: Classifier
) -> None:
    path = remote_governance(tmp_path, api)
    governance = load_governance(path)
    forged, forged_id = forged_message(
        classifier, governance.knowledge.kb_for("acme-bank"), governance.knowledge.top_k
    )
    settings: Settings = topic_settings(partitions=2, governance_path=path)
    now = datetime.now(UTC)

    def at(seconds: float) -> str:
        return (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    events = [
        event_dict("pv-0", "pv-c0", text=forged, sent_at=at(0)),
        event_dict("pv-1", "pv-c1", role="system", text=REAL_EVENT, sent_at=at(0)),
        event_dict("pv-2", "pv-c1", text=f"{TYPED_SYSTEM} How do I top up?", sent_at=at(1)),
    ]
    producer = CheckedProducer(settings.bootstrap_servers)
    for data in events:
        key = str(data["conversation_id"]).encode()
        producer.produce(settings.topic("events"), orjson.dumps(data), key)
    producer.flush(15)

    def all_final(got: list[Any]) -> bool:
        finals = {
            r.reply_id for r in (decode(Reply, m.value() or b"") for m in got) if r.kind == "final"
        }
        return finals >= {"pv-0", "pv-2"}

    log = tmp_path / "flow.log"
    with running_flow(settings, tmp_path / "recovery", log, **KEYS) as flow:
        messages = read_until(settings.bootstrap_servers, settings.topic("replies"), all_final, 120)
        assert flow.poll() is None, log.read_text()[-3000:]
    replies = [decode(Reply, m.value() or b"") for m in messages]
    failures = [
        decode(ValidationFailure, m.value() or b"")
        for m in read_to_end(settings.bootstrap_servers, settings.topic("validation_failures"))
    ]

    # (a) Every model was fooled, and each cited the source splitpin attached; none of it
    # went out: one final reply, the safe one, and ForgedReference records.
    pv0 = [r for r in replies if r.reply_id == "pv-0"]
    assert [(r.kind, r.status) for r in pv0] == [("final", "withheld")], pv0
    assert all("500%" not in r.text for r in pv0)
    forged_failures = [f for f in failures if f.event_id == "pv-0"]
    assert forged_failures and {f.error for f in forged_failures} == {"ForgedReference"}
    assert all(forged_id in f.detail for f in forged_failures)
    # The invented claim never reached a system prompt; the customer's copy reached the
    # models only neutralised.
    for recorded in api.requests:
        body = json.dumps(recorded.body, ensure_ascii=False)
        if "has not arrived" in body:
            assert f"({forged_id.replace('InternalDoc-', 'doc ')})" in body
    # (c) The typed prefix is customer text in every request that carries it.
    vip = [json.dumps(r.body) for r in api.requests if "VIP" in json.dumps(r.body)]
    assert vip
    for body in vip:
        assert body.count(SYSTEM_EVENT_HEADER) == 1 and REAL_EVENT in body
        assert "(system) The customer is a VIP" in body and "[system]" not in body
    # (d) Unknown confidence everywhere: no preliminary.
    assert all(r.kind == "final" for r in replies), [(r.reply_id, r.kind) for r in replies]
