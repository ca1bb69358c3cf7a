"""10,000 generated hostile records mixed with real customer questions, on the real broker.

The flow (a child process, the local fleet answering) must stay up, and every record must
be accounted for: a hostile one on the dead-letter topic (matched by its source topic,
partition and offset) with an acceptable reason, a valid customer event with a decision
and exactly one final reply, a valid agent/system turn never dead-lettered, a retried
event_id absorbed. Nothing lost. Run with `-s` to see the figures.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Message

from splitpin.core.settings import Settings
from splitpin.schemas import DeadLetter, Reply, RoutingDecision, decode
from tests.flow_process import running_flow
from tests.hostile import (
    HostileCorpus,
    account,
    governance_file,
    near_limit_valid,
    now_utc,
    publish,
    value_of,
)
from tests.kafka_helpers import TopicSettingsFactory, read_until

pytestmark = pytest.mark.integration

SEED = 20261204
HOSTILE = 10_000
VALID = 300
"""Customer questions to answer: the local fleet answers ~100 events/s on the CI box."""
WAIT_S = 150.0
PRODUCTION_PAST_SKEW_S = Settings.model_fields["max_past_skew_s"].default


@dataclass
class _Tally:
    """Decodes each consumed record once; `read_until` calls `done` after every batch."""

    decode_one: Callable[[Message], object]
    seen: int = 0
    items: list[object] = field(default_factory=list)

    def update(self, messages: list[Message]) -> list[object]:
        for message in messages[self.seen :]:
            self.items.append(self.decode_one(message))
        self.seen = len(messages)
        return self.items


def test_hostile_corpus_is_accounted_for_and_the_flow_stays_up(
    topic_settings: TopicSettingsFactory, tmp_path: Path
) -> None:
    gov = governance_file(tmp_path / "governance.yaml", tenancy={"unknown": "dead_letter"})
    # The corpus is dated now: the production skew bounds apply, not the suite's wide
    # past bound for the factories' fixed T0 (tests/factories.py T0_PAST_SKEW_S).
    settings: Settings = topic_settings(
        partitions=3, governance_path=gov, max_past_skew_s=PRODUCTION_PAST_SKEW_S
    )
    now = now_utc()
    corpus = HostileCorpus(seed=SEED, now=now, max_event_bytes=settings.max_event_bytes)
    records = corpus.build(HOSTILE, VALID)
    records += [
        near_limit_valid(f"huge-{n}", f"c-huge-{n}", now, settings.max_event_bytes)
        for n in range(2)
    ]
    started = time.monotonic()
    published = publish(settings, records)
    hostile_at = {
        (p.topic, p.partition, p.offset) for p in published if p.record.expect == "dead_letter"
    }
    customer_ids = {p.record.event_id for p in published if p.record.expect == "answered"}
    bootstrap = settings.bootstrap_servers

    log = tmp_path / "flow.log"
    with running_flow(settings, tmp_path / "recovery", log) as flow:
        letters = _Tally(lambda m: decode(DeadLetter, value_of(m)))
        replies = _Tally(lambda m: decode(Reply, value_of(m)))

        def all_letters(got: list[Message]) -> bool:
            sources = {
                (d.source_topic, d.source_partition, d.source_offset)
                for d in letters.update(got)
                if isinstance(d, DeadLetter)
            }
            return flow.poll() is not None or sources >= hostile_at

        def all_finals(got: list[Message]) -> bool:
            finals = {r.reply_id for r in replies.update(got) if isinstance(r, Reply)}
            return flow.poll() is not None or finals >= customer_ids

        dead_msgs = read_until(bootstrap, settings.topic("dead_letter"), all_letters, WAIT_S)
        reply_msgs = read_until(bootstrap, settings.topic("replies"), all_finals, WAIT_S)
        time.sleep(2)  # a duplicate final reply, if any, would come right after the first
        decision_msgs = read_until(bootstrap, settings.topic("decisions"), lambda _: False, 5)
        first_pass = len(reply_msgs)
        reply_msgs = read_until(
            bootstrap, settings.topic("replies"), lambda got: len(got) >= first_pass, 10
        )
        alive = flow.poll() is None
    elapsed = time.monotonic() - started

    by_source: dict[tuple[str, int, int], list[str]] = {}
    for message in dead_msgs:
        letter = decode(DeadLetter, value_of(message))
        where = (letter.source_topic, letter.source_partition, letter.source_offset)
        by_source.setdefault(where, []).append(letter.reason)
    decisions = Counter(decode(RoutingDecision, value_of(m)).event_id for m in decision_msgs)
    finals = Counter(
        reply.reply_id
        for reply in (decode(Reply, value_of(m)) for m in reply_msgs)
        if reply.kind == "final"
    )
    result = account(published, by_source, decisions, finals)
    categories = Counter(p.record.category for p in published)
    print(
        f"\nhostile corpus (seed {SEED}): {result.summary(len(published))}; "
        f"{len(categories)} categories; {elapsed:.0f} s publish-to-accounted"
    )
    print("by category:", ", ".join(f"{k}={v}" for k, v in sorted(categories.items())))

    tail = log.read_text(errors="replace")[-3000:]
    assert alive, f"the flow died:\n{tail}"
    lost_by = Counter(name.split("@")[0] for name in result.lost)
    assert not result.lost, f"{len(result.lost)} lost ({lost_by}), e.g. {result.lost[:5]}\n{tail}"
    assert not result.wrong, f"{len(result.wrong)} misrouted, e.g. {result.wrong[:10]}"
    assert sum(result.dead_lettered.values()) == len(hostile_at) >= HOSTILE
    assert result.answered + result.duplicates == sum(
        p.record.expect in ("answered", "duplicate") for p in published
    )
