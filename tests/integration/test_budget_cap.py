"""A budget is a cap, through the real flow on a real broker with a remote model API.

The issue's burst: 500 events of one tenant whose limit is $0.05, stamped an hour apart
(so windows on `sent_at` would admit the limit once per hour), every role answered by
the wire-protocol fake over its real SDK client with answers as long as max_tokens allows
(1,200 tokens asked for), each citing a document it was not given, so every answer fails
validation and is re-routed. The CostRecords on `routing.metrics` are what was really
spent: divided by the limit, at most 1.0. Today's main gave 3.6.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.schemas import decode
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from tests.factories import T0, event_dict
from tests.flow_process import running_flow
from tests.governance_files import remote_config, save_config
from tests.kafka_helpers import read_until
from tests.model_api_server import ModelApiServer, grounded, succeed

pytestmark = pytest.mark.integration

EVENTS = 500
LIMIT_USD = 0.05
ASKED_OUTPUT_TOKENS = 1_200
KEYS = {"OPENAI_API_KEY": "test-key", "ANTHROPIC_API_KEY": "test-key"}
QUESTIONS = (
    "my card has not arrived yet",
    "how do I top up by bank transfer",
    "why was I charged a fee for a cash withdrawal",
    "can I change my PIN at an ATM",
    "the exchange rate on my payment looks wrong",
)
# Cites a document splitpin never attached: validation withholds it and re-routes.
INVENTED = "Our policy covers this in full.\nReferences: 1) InternalDoc-99999"


@pytest.fixture
def api() -> Iterator[ModelApiServer]:
    with ModelApiServer() as server:
        server.default = succeed(INVENTED, tokens_out=ASKED_OUTPUT_TOKENS)
        yield server


def capped_governance(
    tmp_path: Path, api: ModelApiServer, output_cap: int | None, limit_usd: float = LIMIT_USD
) -> Path:
    """The shipped config, every role on the fake API, acme-bank limited to `limit_usd`."""
    config = remote_config(api, max_in_flight=16, timeout_s=30, retry_budget=0)
    config["budgets"]["tenants"]["acme-bank"] = {"limit_usd": limit_usd}
    if output_cap is not None:
        config["budgets"]["max_output_tokens_per_call"] = output_cap
    return save_config(config, tmp_path)


def publish_burst(settings: Settings, numbers: range) -> list[str]:
    producer = CheckedProducer(settings.bootstrap_servers)
    ids = []
    for n in numbers:
        conversation = f"burst-{n:03d}"
        data = event_dict(f"{conversation}-0", conversation, text=QUESTIONS[n % len(QUESTIONS)])
        data["sent_at"] = (T0 + timedelta(hours=n % 24)).isoformat()  # an hour apart
        producer.produce(settings.topic("events"), orjson.dumps(data), conversation.encode())
        ids.append(data["event_id"])
    producer.flush(30)
    return ids


@pytest.mark.parametrize("output_cap", [None, 128], ids=["shipped-cap", "cap-128"])
def test_a_burst_with_long_answers_and_reroutes_spends_at_most_the_limit(
    topic_settings: Any, tmp_path: Path, api: ModelApiServer, output_cap: int | None
) -> None:
    """With the shipped per-call cap (1,024) one event's reservation nearly fills $0.05;
    with a cap of 128 several events are admitted, answered and re-routed at once."""
    settings: Settings = topic_settings(
        partitions=3, governance_path=capped_governance(tmp_path, api, output_cap)
    )
    log = tmp_path / "flow.log"
    ids: list[str] = []
    with running_flow(settings, tmp_path / "recovery", log, **KEYS) as flow:

        def all_final(got: list[Any]) -> bool:
            if flow.poll() is not None:
                return True  # the flow died: stop waiting, the assertion below says why
            finals = {r.reply_id for r in (decode(Reply, m.value()) for m in got)}
            return finals >= set(ids)

        # Two waves: the second is admitted against what the first's usage released.
        for wave in (range(EVENTS // 2), range(EVENTS // 2, EVENTS)):
            ids += publish_burst(settings, wave)
            read_until(settings.bootstrap_servers, settings.topic("replies"), all_final, 240)
            assert flow.poll() is None, log.read_text()[-3000:]
    replies = [
        decode(Reply, m.value() or b"")
        for m in read_to_end(settings.bootstrap_servers, settings.topic("replies"))
    ]
    records = {
        r.record_id: r
        for r in (
            decode(CostRecord, m.value() or b"")
            for m in read_to_end(settings.bootstrap_servers, settings.topic("metrics"))
        )
    }
    failures = [
        decode(ValidationFailure, m.value() or b"")
        for m in read_to_end(settings.bootstrap_servers, settings.topic("validation_failures"))
    ]
    finals = {r.reply_id for r in replies if r.kind == "final"}
    assert finals == set(ids), "every event ends with one final reply"

    spent = sum(r.cost_usd for r in records.values())
    ratio = spent / LIMIT_USD
    rerouted = [f for f in failures if f.action == "rerouted"]
    refused = sum(1 for r in replies if r.kind == "final" and r.status == "refused")
    sent_max = {int(r.body.get("max_tokens") or 0) for r in api.requests}
    print(
        f"\nbudget cap: {len(records)} calls for {EVENTS} events ({refused} refused, "
        f"{len(rerouted)} re-routed), max_tokens sent {sorted(sent_max)}, "
        f"spent ${spent:.6f} of ${LIMIT_USD:.2f}: spend/limit = {ratio:.3f}"
    )
    assert records, "some calls were admitted and made"
    assert any(r.record_id.endswith(":reroute") for r in records.values()), "re-routes happened"
    assert all(r.tokens_out <= (output_cap or 1_024) for r in records.values())
    assert ratio <= 1.0


SHORT_QUESTIONS = 24
SHORT_LIMIT_USD = 0.25
RECONCILE_WAIT_S = 2.0
"""After a final reply, time for its CostRecords to travel routing.metrics to the gate."""


def test_a_tenant_gets_as_many_short_answers_as_its_actual_spend_allows(
    topic_settings: Any, tmp_path: Path
) -> None:
    """Identical short chat questions, one after another, each answered and verified with
    a short cited answer: a short question reserves about $0.0465 (primary, verifier,
    re-route) and costs a fraction of a cent. The job's last CostRecord releases the
    re-route it never made, so a $0.25 tenant gets every one answered; old code kept that
    slot counted until the window ended and answered only the first 10 or so.
    `pytest -s` prints the figures."""
    with ModelApiServer() as api:
        api.default = grounded()
        governance_path = capped_governance(tmp_path, api, None, SHORT_LIMIT_USD)
        settings: Settings = topic_settings(partitions=3, governance_path=governance_path)
        producer = CheckedProducer(settings.bootstrap_servers)
        finals: dict[str, Reply] = {}
        with running_flow(settings, tmp_path / "recovery", tmp_path / "flow.log", **KEYS) as flow:
            for n in range(SHORT_QUESTIONS):
                conversation = f"short-{n:03d}"
                data = event_dict(f"{conversation}-0", conversation, text=QUESTIONS[0])
                producer.produce(
                    settings.topic("events"), orjson.dumps(data), conversation.encode()
                )
                producer.flush(30)

                def answered(got: list[Any], event_id: str = data["event_id"]) -> bool:
                    if flow.poll() is not None:
                        return True
                    replies = (decode(Reply, m.value() or b"") for m in got)
                    finals.update({r.reply_id: r for r in replies if r.kind == "final"})
                    return event_id in finals

                read_until(settings.bootstrap_servers, settings.topic("replies"), answered, 60)
                assert flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
                time.sleep(RECONCILE_WAIT_S)
    records = {
        r.record_id: r
        for r in (
            decode(CostRecord, m.value() or b"")
            for m in read_to_end(settings.bootstrap_servers, settings.topic("metrics"))
        )
    }
    assert len(finals) == SHORT_QUESTIONS, "every question got its final reply"
    served = [r for r in finals.values() if r.status != "refused"]
    spent = sum(r.cost_usd for r in records.values())
    print(
        f"\nbudget release: {len(served)} of {SHORT_QUESTIONS} short questions answered "
        f"under a ${SHORT_LIMIT_USD:.2f} limit ({len(records)} calls, spent ${spent:.6f})"
    )
    assert spent <= SHORT_LIMIT_USD
    assert {r.status for r in served} <= {"verified", "corrected"}
    assert len(served) == SHORT_QUESTIONS
