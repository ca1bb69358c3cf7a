"""The door on a real broker: Kafka's own timestamps drive the skew check, and the dead
letter of any record the broker accepts can be produced back to it.

Ingest runs in-process on records read back from the broker (their CreateTime stamped by
the producer's client), and every dead letter is produced to the dead-letter topic with
the same producer configuration as the flow's sink. On the old code the schema_version
list raised TypeError, and the 900 KB record's dead letter (its value whole in base64,
~1.2 MB) was refused with MSG_SIZE_TOO_LARGE.
"""

from __future__ import annotations

import base64
import hashlib
import random
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.operators.ingest import IngestLimits, RawRecord, parse_event
from splitpin.schemas import ConversationEvent, DeadLetter, decode, encode
from tests.factories import event_dict
from tests.kafka_helpers import TopicSettingsFactory

pytestmark = pytest.mark.integration

BIG_BYTES = 900_000
"""Under the broker's and producer's ~1 MB message.max.bytes; over it in base64."""


def _raw(message: Message) -> RawRecord:
    kind, ms = message.timestamp()
    return RawRecord(
        key=message.key(),
        value=message.value(),
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else int(ms),
    )


def _event(event_id: str, sent_at: datetime, **extra: Any) -> bytes:
    return orjson.dumps(event_dict(event_id, "c-door", sent_at=sent_at.isoformat(), **extra))


def test_skew_and_oversize_dead_letters_on_a_real_broker(
    topic_settings: TopicSettingsFactory,
) -> None:
    settings: Settings = topic_settings(partitions=1, max_past_skew_s=7 * 86_400.0)
    limits = IngestLimits.from_settings(settings)
    now = datetime.now(UTC)
    rng = random.Random(9)
    big = orjson.dumps(event_dict("big", "c-door", text="")).replace(
        b'"text":""',
        b'"text":"' + "".join(rng.choices(string.ascii_letters, k=BIG_BYTES)).encode() + b'"',
    )
    sent = {
        b"ok": _event("ok", now, tags=["Compliance "], tenant_id="ShopCo"),
        b"future": _event("future", now + timedelta(days=2)),
        b"past": _event("past", now - timedelta(days=8)),
        b"version-list": _event("version-list", now, schema_version=[1]),
        b"big": big,
    }
    producer = CheckedProducer(settings.bootstrap_servers)
    for value in sent.values():
        producer.produce(settings.topic("events"), value, b"c-door")
    assert producer.flush(30) == len(sent)

    messages = read_to_end(settings.bootstrap_servers, settings.topic("events"))
    results = [parse_event(_raw(message), limits) for message in messages]
    assert len(results) == len(sent)
    by_value = dict(zip((m.value() for m in messages), results, strict=True))

    ok = by_value[sent[b"ok"]]
    assert isinstance(ok, ConversationEvent)
    assert (ok.tags, ok.tenant_id) == (("compliance",), "shopco")
    letters = {name: by_value[value] for name, value in sent.items() if name != b"ok"}
    reasons = {name: getattr(letter, "reason", None) for name, letter in letters.items()}
    assert reasons == {
        b"future": "event_time_skew",
        b"past": "event_time_skew",
        b"version-list": "schema_violation",
        b"big": "oversize",
    }
    assert "Kafka timestamp" in letters[b"future"].detail  # type: ignore[union-attr]

    # Produced as the sink does (value, under the original key): the broker takes them all.
    for letter in letters.values():
        assert isinstance(letter, DeadLetter)
        key = base64.b64decode(letter.key_b64) if letter.key_b64 is not None else None
        producer.produce(settings.topic("dead_letter"), encode(letter), key)
    assert producer.flush(30) == len(letters)

    back = [
        decode(DeadLetter, m.value() or b"")
        for m in read_to_end(settings.bootstrap_servers, settings.topic("dead_letter"))
    ]
    (big_letter,) = [letter for letter in back if letter.reason == "oversize"]
    assert big_letter.truncated and big_letter.value_bytes == len(big)
    assert big_letter.value_sha256 == hashlib.sha256(big).hexdigest()
    assert big.startswith(base64.b64decode(big_letter.value_b64 or ""))
    assert len(encode(big_letter)) <= settings.dead_letter_max_bytes
