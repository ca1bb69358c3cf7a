"""On a real broker: a record that makes a stage raise is dead-lettered, not a crash loop.

The flow runs in process (`run_main`, reading the test's own Kafka topics to their end,
with Bytewax recovery in a temporary directory) three times over the same input:

1. `on_processing_error=stop`: the poison turn stops the flow, before its epoch commits,
   exactly as any uncaught error did before isolation existed;
2. `dead_letter` (the default), resuming from that recovery state: it re-reads the poison
   record (the crash-loop situation), dead-letters it and answers everything else;
3. `stop` again, resuming: the poison is behind the committed snapshot, nothing raises.

Two poisons: a router that raises on a marked text after the conversation state took
the turn (standing for any stage bug), and a real record no stage was built for:
`sent_at` 9999-12-31T23:59:59Z (ingest's skew limits opened wide so it reaches the
cost windows, whose wake-up time overflowed on the main branch before isolation).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import Settings
from splitpin.flows.routing_flow import build_flow
from splitpin.operators.routing import Router
from splitpin.schemas import DeadLetter, Reply, RoutingDecision, decode
from tests.factories import event_dict
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration


class PoisonRouter(Router):
    def route(self, state, observation, classification):  # type: ignore[no-untyped-def]
        if "POISON" in observation.event.text:
            raise KeyError("router bug")
        return super().route(state, observation, classification)


def _run(settings: Settings, classifier: Classifier, recovery: Path, on_error: str) -> None:
    run_settings = settings.model_copy(update={"on_processing_error": on_error})
    flow = build_flow(
        run_settings, tail=False, classifier=classifier, router=PoisonRouter(settings.governance)
    )
    run_main(
        flow,
        epoch_interval=timedelta(seconds=0.5),
        recovery_config=RecoveryConfig(str(recovery)),
    )


def _payload(letter: DeadLetter) -> dict[str, Any]:
    assert letter.value_b64 is not None
    data: dict[str, Any] = orjson.loads(base64.b64decode(letter.value_b64))
    return data


def test_poison_record_is_dead_lettered_and_a_resume_does_not_die_again(
    topic_settings,  # type: ignore[no-untyped-def]
    classifier: Classifier,
    tmp_path: Path,
) -> None:
    settings: Settings = topic_settings(partitions=1, max_future_skew_s=1e12, max_past_skew_s=1e12)
    now = datetime.now(UTC).replace(microsecond=0)

    def at(seconds: int) -> str:
        return (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    events = [
        event_dict("c-0", "c", text="where is my card?", sent_at=at(0)),
        event_dict("c-1", "c", text="POISON is it lost?", sent_at=at(1)),
        event_dict("y-0", "y", text="I was charged twice", sent_at="9999-12-31T23:59:59Z"),
        event_dict("c-2", "c", text="can you block it?", sent_at=at(2)),
    ]
    producer = CheckedProducer(settings.bootstrap_servers)
    for event in events:
        producer.produce(
            settings.topic("events"), orjson.dumps(event), event["conversation_id"].encode()
        )
    producer.flush(15)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    with pytest.raises(Exception, match="conversation"):
        _run(settings, classifier, recovery, "stop")
    _run(settings, classifier, recovery, "dead_letter")
    _run(settings, classifier, recovery, "stop")  # the poison is behind the snapshot now

    bootstrap = settings.bootstrap_servers
    letters = [
        decode(DeadLetter, m.value())
        for m in read_until(bootstrap, settings.topic("dead_letter"), lambda got: len(got) >= 3, 30)
    ]
    steps = {(_payload(x)["event_id"], x.step, x.error_type) for x in letters}
    assert all(x.reason == "processing_error" for x in letters)
    assert steps == {
        ("c-1", "conversation", "KeyError"),
        ("y-0", "cost-windows-in", "OverflowError"),
    }
    decisions = {
        d.event_id: d
        for d in (
            decode(RoutingDecision, m.value())
            for m in read_until(
                bootstrap, settings.topic("decisions"), lambda got: len(got) >= 3, 30
            )
        )
    }
    assert set(decisions) == {"c-0", "c-2", "y-0"}
    assert [decisions["c-0"].turn_index, decisions["c-2"].turn_index] == [0, 1]

    def all_final(got: list[Any]) -> bool:
        finals = {r.reply_id for r in (decode(Reply, m.value()) for m in got) if r.kind == "final"}
        return finals >= {"c-0", "c-2", "y-0"}

    replies = read_until(bootstrap, settings.topic("replies"), all_final, 30)
    assert all_final(replies)
