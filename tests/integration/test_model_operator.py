"""The model operator on the real broker: calls overlap within the limit, never stall the
stream, and survive a SIGKILL.

Every role is pointed, through its configured provider's real SDK client (Anthropic for
the Claude roles, OpenAI-compatible for the others), at the fake model API in this
process, which answers after a delay and records how many requests it holds at once.
No assertion is on elapsed time: only on counts and order.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.schemas import RoutingDecision, decode
from splitpin.schemas.replies import Reply
from tests.factories import event_dict
from tests.flow_process import kill_hard, running_flow, start_flow
from tests.governance_files import remote_config, save_config
from tests.kafka_helpers import read_until
from tests.model_api_server import ModelApiServer, grounded

pytestmark = pytest.mark.integration

LIMIT = 4
QUESTIONS = (
    "my card has not arrived yet",
    "how do I top up by bank transfer",
    "why was I charged a fee for a cash withdrawal",
    "can I change my PIN at an ATM",
    "the exchange rate on my payment looks wrong",
)


@pytest.fixture
def api() -> Iterator[ModelApiServer]:
    with ModelApiServer() as server:
        yield server


KEYS = {"OPENAI_API_KEY": "test-key", "ANTHROPIC_API_KEY": "test-key"}


def remote_governance(tmp_path: Path, api: ModelApiServer, max_in_flight: int) -> Path:
    """config/governance.yaml with every role answered by the fake API, over its own SDK."""
    config = remote_config(api, max_in_flight=max_in_flight, timeout_s=30, retry_budget=1)
    return save_config(config, tmp_path)


def publish(settings: Settings, count: int) -> list[str]:
    producer = CheckedProducer(settings.bootstrap_servers)
    ids = []
    for n in range(count):
        conversation = f"op-{n % (count // 2):02d}"
        event_id = f"{conversation}-{n // (count // 2)}"
        text = QUESTIONS[n % len(QUESTIONS)]
        data = event_dict(event_id, conversation, text=text, at_s=n)
        producer.produce(settings.topic("events"), orjson.dumps(data), conversation.encode())
        ids.append(event_id)
    producer.flush(15)
    return ids


def finals_cover(ids: list[str]) -> Any:
    def covered(got: list[Any]) -> bool:
        finals = {r.reply_id for r in map(_reply, got) if r.kind == "final"}
        return finals >= set(ids)

    return covered


def _reply(message: Any) -> Reply:
    return decode(Reply, message.value())


def test_calls_overlap_within_the_limit_and_decisions_keep_flowing(
    topic_settings: Any, tmp_path: Path, api: ModelApiServer
) -> None:
    api.default = grounded(delay_s=0.2)
    governance = remote_governance(tmp_path, api, LIMIT)
    settings: Settings = topic_settings(partitions=3, governance_path=governance)
    with running_flow(settings, tmp_path / "recovery", tmp_path / "flow.log", **KEYS) as flow:
        ids = publish(settings, 40)
        replies = read_until(
            settings.bootstrap_servers, settings.topic("replies"), finals_cover(ids), 180
        )
        assert flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
    decisions = read_to_end(settings.bootstrap_servers, settings.topic("decisions"))

    print(f"requests: {api.count()}, most held at once: {api.most_held} (limit {LIMIT})")
    # Short chat questions are answered by fast and verifier: both Claude roles, so every
    # request went over the Anthropic wire protocol (OpenAI's is covered elsewhere).
    assert {r.path for r in api.requests} == {"/v1/messages"}
    assert api.most_held == LIMIT, "calls overlap up to the limit and never beyond it"
    assert {decode(RoutingDecision, m.value()).event_id for m in decisions} == set(ids)
    # Order, not time: when the last decision came out, most answers were still pending.
    last_decision_ms = max(m.timestamp()[1] for m in decisions)
    finals = [m for m in replies if _reply(m).kind == "final"]
    answered_by_then = sum(1 for m in finals if m.timestamp()[1] <= last_decision_ms)
    print(f"final replies out when the last decision was emitted: {answered_by_then}/40")
    assert answered_by_then < len(ids) // 2


def test_calls_in_flight_at_a_crash_get_their_results_after_restart(
    topic_settings: Any, tmp_path: Path, api: ModelApiServer
) -> None:
    api.default = grounded(delay_s=1.5)
    governance = remote_governance(tmp_path, api, LIMIT)
    settings: Settings = topic_settings(partitions=3, governance_path=governance)
    recovery, log = tmp_path / "recovery", tmp_path / "flow.log"
    first = start_flow(settings, recovery, log, **KEYS)
    ids = publish(settings, 12)
    read_until(
        settings.bootstrap_servers,
        settings.topic("decisions"),
        lambda got: len(got) >= len(ids),
        120,
    )
    deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
    while api.count() < LIMIT + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let a snapshot (every 0.5 s) capture the calls in flight
    kill_hard(first)
    before = read_to_end(settings.bootstrap_servers, settings.topic("replies"))
    answered_before = {r.reply_id for r in map(_reply, before) if r.kind == "final"}
    assert len(answered_before) < len(ids), "the kill must land while calls are in flight"

    api.default = grounded(delay_s=0.05)
    with running_flow(settings, recovery, log, **KEYS) as second:
        replies = read_until(
            settings.bootstrap_servers, settings.topic("replies"), finals_cover(ids), 120
        )
        assert second.poll() is None, log.read_text()[-3000:]
    assert "re-issuing them" in log.read_text(), "the restart re-issued the calls in flight"

    # A consumer that keeps the highest revision per reply_id sees one final per event.
    latest: dict[str, Reply] = {}
    copies: dict[tuple[str, int], int] = defaultdict(int)
    for reply in map(_reply, replies):
        copies[(reply.reply_id, reply.revision)] += 1
        if reply.reply_id not in latest or reply.revision >= latest[reply.reply_id].revision:
            latest[reply.reply_id] = reply
    assert set(latest) == set(ids)
    assert all(reply.kind == "final" for reply in latest.values())
    print(
        f"answered before the kill: {len(answered_before)}/{len(ids)}; "
        f"duplicate revisions after restart: {sum(n - 1 for n in copies.values())}"
    )
