"""A seeded generator of hostile records, and the bookkeeping that accounts for each one.

Every record says what must become of it: dead-lettered (with one of a few acceptable
reasons), answered (a valid customer event: one decision, exactly one final reply),
observed (a valid agent or system turn: never dead-lettered, nobody answers it) or a
duplicate (a retried event_id, absorbed by the conversation's idempotency). Producing
records through `publish` returns their partition and offset, so a dead letter is
matched to its source by coordinates, never by content that ingest may have truncated.
"""

from __future__ import annotations

import csv
import random
import string
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from confluent_kafka import KafkaError, Message, Producer

from splitpin.core.kafka.producer import producer_config
from splitpin.core.settings import REPO_ROOT, Settings
from splitpin.schemas.dead_letter import DeadLetterReason
from tests.factories import event_dict

Expect = Literal["dead_letter", "answered", "observed", "duplicate"]

BANKING77_SAMPLE = REPO_ROOT / "tests" / "data" / "banking77_heldout_sample.csv"

TYPE_REASONS: frozenset[DeadLetterReason] = frozenset({"schema_violation"})
VERSION_REASONS: frozenset[DeadLetterReason] = frozenset(
    {"unknown_schema_version", "schema_violation"}
)
SKEW_REASONS: frozenset[DeadLetterReason] = frozenset({"event_time_skew"})
UNREPRESENTABLE_REASONS: frozenset[DeadLetterReason] = frozenset(
    {"event_time_skew", "schema_violation"}
)
"""An instant that is no datetime in UTC may be refused as a type error or as skew."""

# Values of the wrong JSON type for any field; nested objects and arrays included.
WRONG_TYPES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1.5,
    2**63,
    "",
    [],
    ["a", 1],
    {},
    {"nested": {"deeper": [1, {"x": None}]}},
)
REQUIRED_FIELDS = (
    "schema_version",
    "event_id",
    "conversation_id",
    "tenant_id",
    "channel",
    "role",
    "text",
    "sent_at",
)
HEAVY = frozenset({"oversize", "huge_field_near_limit"})
HEAVY_KEEP = 0.2
"""Share of the heavy categories' draws that are kept (about 60 each in 10,000)."""
INVISIBLE = ("\u200b", "\ufeff", "\u2060", "\u200c", "\u200d", "\u00a0", "\u3000", " \t\n")


@dataclass(frozen=True)
class Hostile:
    """One record to publish and what must become of it."""

    category: str
    expect: Expect
    value: bytes | None
    key: bytes | None = None
    topic: Literal["events", "metrics"] = "events"
    reasons: frozenset[DeadLetterReason] = frozenset()
    """Acceptable dead-letter reasons (expect == "dead_letter")."""
    event_id: str | None = None
    """For answered/duplicate records: the event whose decision and final reply count."""


@dataclass(frozen=True)
class Published:
    record: Hostile
    topic: str
    partition: int
    offset: int


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def banking77_texts(path: Path = BANKING77_SAMPLE) -> list[str]:
    """Real customer questions held out of the classifier's training data."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle) if row["text"].strip()]


def valid_event(
    event_id: str,
    conversation_id: str,
    sent_at: datetime,
    text: str,
    **fields: Any,
) -> dict[str, Any]:
    """A valid event (tests/factories.py) dated `sent_at`, which must be near its Kafka time."""
    return event_dict(event_id, conversation_id, text=text, sent_at=iso(sent_at), **fields)


def answered(
    event_id: str, conversation_id: str, sent_at: datetime, text: str, **fields: Any
) -> Hostile:
    data = valid_event(event_id, conversation_id, sent_at, text, **fields)
    return Hostile(
        "valid",
        "answered",
        orjson.dumps(data),
        conversation_id.encode(),
        event_id=event_id,
    )


def dead(
    category: str,
    value: bytes | None,
    reasons: Iterable[DeadLetterReason],
    key: bytes | None = b"c-hostile",
    topic: Literal["events", "metrics"] = "events",
) -> Hostile:
    return Hostile(category, "dead_letter", value, key, topic, frozenset(reasons))


@dataclass
class HostileCorpus:
    """Builds the corpus: `build(hostile, valid)` returns the records in publishing order.

    `now` must be close to the time of publishing: ingest checks `sent_at` against the
    record's broker timestamp (max_future_skew_s / max_past_skew_s).
    """

    seed: int
    now: datetime
    max_event_bytes: int
    unknown_tenant_dead_letters: bool = True
    tenant: str = "acme-bank"
    texts: Sequence[str] = field(default_factory=banking77_texts)
    rng: random.Random = field(init=False)
    _serial: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def build(self, hostile: int, valid: int) -> list[Hostile]:
        """`hostile` records that must be dead-lettered, mixed with about `valid` good ones."""
        makers = self._makers()
        records: list[Hostile] = []
        while len(records) < hostile - len(makers):
            record = self.rng.choice(makers)()
            # Records near the size limit cost the broker ~90 KB each as dead letters.
            if record.category not in HEAVY or self.rng.random() < HEAVY_KEEP:
                records.append(record)
        records += [make() for make in makers]  # every category at least once
        self.rng.shuffle(records)
        good = self._valid(valid)
        # Interleave: good events spread evenly through the hostile ones, in their order
        # (a conversation's turns and retries must keep their relative order).
        out: list[Hostile] = []
        step = max(1, len(records) // max(1, len(good)))
        pending = iter(good)
        for n, record in enumerate(records):
            if n % step == 0 and (turn := next(pending, None)) is not None:
                out.append(turn)
            out.append(record)
        out.extend(pending)
        return out

    # --- valid traffic ----------------------------------------------------------------

    def _valid(self, count: int) -> list[Hostile]:
        """Conversations of 1-3 turns: customer questions, some agent/system turns, some
        retries (same event_id, same key), some unkeyed (a missing key is accepted)."""
        out: list[Hostile] = []
        conversation = 0
        while sum(r.expect == "answered" for r in out) < count:
            conversation += 1
            cid = f"hc-{self.seed}-{conversation:04d}"
            channel = "email" if conversation % 7 == 0 else "chat"
            at = self.now - timedelta(seconds=self.rng.uniform(60, 600))
            for turn in range(self.rng.randint(1, 3)):
                at += timedelta(seconds=self.rng.uniform(1, 20))
                eid = f"{cid}-{turn}"
                role = "customer" if turn == 0 or self.rng.random() < 0.8 else "agent"
                if self.rng.random() < 0.05:
                    role = "system"
                text = self.rng.choice(self.texts)
                record = answered(eid, cid, at, text, channel=channel, role=role)
                if role != "customer":
                    record = replace(record, category="valid_non_customer", expect="observed")
                if self.rng.random() < 0.05:
                    record = replace(record, category="valid_unkeyed", key=None)
                out.append(record)
                if role == "customer" and self.rng.random() < 0.08:
                    retried = self.rng.choice([record.value, self._retry_text(record)])
                    out.append(
                        replace(
                            record, category="duplicate_event_id", value=retried, expect="duplicate"
                        )
                    )
        return out

    def _retry_text(self, record: Hostile) -> bytes:
        data = orjson.loads(record.value or b"{}")
        data["text"] = "a retry with other words: " + data["text"]
        return orjson.dumps(data)

    # --- hostile categories -----------------------------------------------------------

    def _base(self, **changes: Any) -> dict[str, Any]:
        self._serial += 1
        data = valid_event(
            f"h-{self.seed}-{self._serial}",
            "c-hostile",
            self.now - timedelta(seconds=self.rng.uniform(0, 300)),
            self.rng.choice(self.texts),
            tenant_id=self.tenant,
        )
        data.update(changes)
        return data

    def _json(self, category: str, reasons: Iterable[DeadLetterReason], **changes: Any) -> Hostile:
        return dead(category, orjson.dumps(self._base(**changes)), reasons)

    def _makers(self) -> list[Any]:
        r = self.rng
        m: list[Any] = [
            # not_json / invalid_utf8 / not_an_object / tombstones
            lambda: dead("garbage_bytes", self._garbage(), ("not_json", "invalid_utf8")),
            lambda: dead(
                "truncated_json", orjson.dumps(self._base())[: r.randint(1, 60)], ("not_json",)
            ),
            lambda: dead(
                "invalid_utf8",
                b'{"text": "' + bytes([r.randint(0x80, 0xFF)]) + b'"}',
                ("invalid_utf8",),
            ),
            lambda: dead("overlong_utf8", b'{"t": "\xc0\xaf"}', ("invalid_utf8",)),
            lambda: dead(
                "not_an_object",
                orjson.dumps(r.choice([[1], "s", 3, None, True, []])),
                ("not_an_object",),
            ),
            lambda: dead("tombstone", None, ("not_json",), key=r.choice([None, b"c-hostile"])),
            lambda: dead("empty_value", b"", ("not_json",)),
            lambda: dead("deep_nesting", b"[" * 2000 + b"]" * 2000, ("not_json", "not_an_object")),
            # schema_version of every wrong kind
            lambda: self._json("schema_version_list", VERSION_REASONS, schema_version=[1]),
            lambda: self._json("schema_version_object", VERSION_REASONS, schema_version={"v": 1}),
            lambda: self._json(
                "schema_version_other",
                VERSION_REASONS,
                schema_version=r.choice([0, 2, 7, -1, "1", 1.0, 1.5, None, True, 2**64 - 1]),
            ),
            lambda: dead(
                "schema_version_missing",
                orjson.dumps({k: v for k, v in self._base().items() if k != "schema_version"}),
                ("schema_violation", "unknown_schema_version"),
            ),
            # fields: missing, null, wrong types, nested objects
            lambda: dead(
                "field_missing",
                orjson.dumps(self._drop(r.choice(REQUIRED_FIELDS[1:]))),
                TYPE_REASONS,
            ),
            lambda: self._json("field_null", TYPE_REASONS, **{r.choice(REQUIRED_FIELDS[1:]): None}),
            lambda: self._json(
                "field_wrong_type",
                TYPE_REASONS,
                **{r.choice(REQUIRED_FIELDS[1:]): r.choice(WRONG_TYPES[1:])},
            ),
            lambda: self._json(
                "tags_wrong",
                TYPE_REASONS,
                tags=r.choice([["x" * 65], [1], "compliance", [None], {"a": 1}]),
            ),
            lambda: self._json(
                "metadata_wrong", TYPE_REASONS, metadata=r.choice([[1], "m", 5, None])
            ),
            lambda: self._json("unknown_field", TYPE_REASONS, injected=r.choice(WRONG_TYPES)),
            lambda: self._json(
                "bad_enum",
                TYPE_REASONS,
                **r.choice([{"channel": "sms"}, {"role": "bot"}, {"channel": "CHAT"}]),
            ),
            # sent_at: numeric, naive, garbage
            lambda: self._json(
                "sent_at_numeric",
                TYPE_REASONS,
                sent_at=r.choice([0, 1.5, 1764151200, "1764151200", "0", -1]),
            ),
            lambda: self._json(
                "sent_at_naive", TYPE_REASONS, sent_at=self.now.replace(tzinfo=None).isoformat()
            ),
            lambda: self._json(
                "sent_at_garbage",
                TYPE_REASONS,
                sent_at=r.choice(["yesterday", "2026-13-45T00:00:00Z", ""]),
            ),
            # sent_at that validates but lies far from the broker timestamp
            lambda: self._json(
                "sent_at_extreme",
                SKEW_REASONS,
                sent_at=r.choice(
                    ["9999-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]
                ),
            ),
            lambda: self._json(
                "sent_at_unrepresentable",  # in UTC: year 0 and year 10000
                UNREPRESENTABLE_REASONS,
                sent_at=r.choice(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]),
            ),
            lambda: self._json(
                "sent_at_skewed",
                SKEW_REASONS,
                sent_at=iso(self.now + timedelta(days=r.choice([-1, 1]) * r.uniform(30, 3000))),
            ),
            # text: blank, invisible-only
            lambda: self._json("text_blank", TYPE_REASONS, text=r.choice(["", " ", "\n\t", "   "])),
            lambda: self._json(
                "text_invisible",
                TYPE_REASONS,
                text="".join(r.choice(INVISIBLE) for _ in range(r.randint(1, 9))),
            ),
            # keys
            lambda: dead(
                "key_mismatch",
                orjson.dumps(self._base()),
                ("key_mismatch",),
                key=r.choice([b"other", b"\xff\xfe", b"c-hostile "]),
            ),
            # sizes
            lambda: dead(
                "oversize", self._padded(self.max_event_bytes + r.randint(1, 4096)), ("oversize",)
            ),
            lambda: self._json(
                "huge_field_near_limit", TYPE_REASONS, event_id="e" * (self.max_event_bytes - 800)
            ),
        ]
        if self.unknown_tenant_dead_letters:
            m.append(
                lambda: self._json(
                    "unknown_tenant", ("unknown_tenant",), tenant_id=f"nobody-{r.randint(0, 99)}"
                )
            )
        # the flow also reads routing.metrics: hostile usage records
        m += [
            lambda: dead(
                "metrics_garbage",
                self._garbage(),
                ("not_json", "invalid_utf8"),
                key=b"acme-bank",
                topic="metrics",
            ),
            lambda: dead(
                "metrics_schema_version_list",
                orjson.dumps(
                    {"schema_version": r.choice([[1], {"v": 1}]), "tenant_id": "acme-bank"}
                ),
                VERSION_REASONS,
                key=b"acme-bank",
                topic="metrics",
            ),
            lambda: dead(
                "metrics_not_object", b"[]", ("not_an_object",), key=b"acme-bank", topic="metrics"
            ),
            lambda: dead(
                "metrics_wrong_types",
                orjson.dumps({"schema_version": 1, "record_id": 5, "tenant_id": "acme-bank"}),
                TYPE_REASONS,
                key=b"acme-bank",
                topic="metrics",
            ),
        ]
        return m

    def _drop(self, name: str) -> dict[str, Any]:
        data = self._base()
        data.pop(name)
        return data

    def _garbage(self) -> bytes:
        n = self.rng.randint(1, 200)
        if self.rng.random() < 0.5:
            return bytes(self.rng.getrandbits(8) for _ in range(n))
        return "".join(self.rng.choice(string.printable) for _ in range(n)).encode() + b"{"

    def _padded(self, size: int) -> bytes:
        """A valid-looking event of exactly `size` bytes (the text is padded)."""
        data = self._base(text="")
        empty = len(orjson.dumps(data))
        data["text"] = "p" * max(1, size - empty)
        return orjson.dumps(data)


def near_limit_valid(
    event_id: str, conversation_id: str, sent_at: datetime, max_bytes: int
) -> Hostile:
    """A valid customer event just under the size limit (a huge string that is allowed)."""
    data = valid_event(event_id, conversation_id, sent_at, "")
    words = ("card ", "payment ", "declined ", "refund ", "transfer ")
    text_len = max_bytes - len(orjson.dumps(data)) - 16
    data["text"] = "".join(words[i % len(words)] for i in range(text_len // 8))[:text_len]
    value = orjson.dumps(data)
    assert len(value) <= max_bytes
    return Hostile(
        "valid_near_limit", "answered", value, conversation_id.encode(), event_id=event_id
    )


# --- publishing and accounting --------------------------------------------------------


def publish(
    settings: Settings, records: Sequence[Hostile], timeout_s: float = 60
) -> list[Published]:
    """Produce every record (tombstones included) and return where each landed, in order."""
    producer = Producer(
        producer_config(settings.bootstrap_servers, 60_000, **{"message.max.bytes": 2_000_000})
    )
    landed: list[Published | None] = [None] * len(records)
    failures: list[str] = []
    lock = threading.Lock()

    def report(index: int) -> Any:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            with lock:
                if err is not None:
                    failures.append(f"{records[index].category}: {err.str()}")
                    return
                landed[index] = Published(
                    records[index],
                    str(msg.topic()),
                    int(msg.partition() or 0),
                    int(msg.offset() or 0),
                )

        return on_delivery

    for index, record in enumerate(records):
        while True:
            try:
                producer.produce(
                    settings.topic(record.topic),
                    value=record.value,
                    key=record.key,
                    on_delivery=report(index),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(timeout_s)
    assert left == 0 and not failures, f"{left} undelivered; failures: {failures[:5]}"
    out = [p for p in landed if p is not None]
    assert len(out) == len(records)
    return out


@dataclass
class Accounting:
    """What became of each published record."""

    dead_lettered: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    observed: int = 0
    duplicates: int = 0
    lost: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def summary(self, total: int) -> str:
        by_reason = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_lettered.items()))
        return (
            f"records={total} dead_lettered={sum(self.dead_lettered.values())} "
            f"({by_reason}) answered={self.answered} observed_non_customer={self.observed} "
            f"duplicates_absorbed={self.duplicates} lost={len(self.lost)} "
            f"misrouted={len(self.wrong)}"
        )


def account(
    published: Sequence[Published],
    letters: dict[tuple[str, int, int], list[str]],
    decisions: dict[str, int],
    finals: dict[str, int],
) -> Accounting:
    """Match every record to its outcome.

    `letters`: (source topic, partition, offset) -> reasons; `decisions` and `finals`:
    event_id -> how many decisions / final replies carry it.
    """
    out = Accounting()
    for item in published:
        record = item.record
        where = (item.topic, item.partition, item.offset)
        reasons = letters.get(where, [])
        name = f"{record.category}@{item.topic}[{item.partition}]:{item.offset}"
        if record.expect == "dead_letter":
            if not reasons:
                out.lost.append(name)
            elif not set(reasons) <= record.reasons:
                out.wrong.append(f"{name}: {reasons}, expected one of {sorted(record.reasons)}")
            else:
                out.dead_lettered[reasons[0]] += 1
            continue
        if reasons:
            out.wrong.append(f"{name}: valid record dead-lettered as {reasons}")
            continue
        if record.expect == "observed":
            out.observed += 1
            continue
        assert record.event_id is not None
        got = (decisions.get(record.event_id, 0), finals.get(record.event_id, 0))
        if got == (0, 0):
            out.lost.append(name)
        elif got[0] < 1 or got[1] != 1:
            out.wrong.append(f"{name}: {got[0]} decisions, {got[1]} final replies")
        elif record.expect == "duplicate":
            out.duplicates += 1
        else:
            out.answered += 1
    return out


def governance_file(path: Path, **sections: dict[str, Any]) -> Path:
    """The shipped governance config with some sections deep-updated, written to `path`."""
    data = yaml.safe_load((REPO_ROOT / "config" / "governance.yaml").read_text())

    def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(data, sections)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def value_of(message: Message) -> bytes:
    """A consumed record's value; the flow's outputs never are tombstones."""
    value = message.value()
    assert value is not None, f"tombstone on {message.topic()}"
    return bytes(value)


def now_utc() -> datetime:
    return datetime.now(UTC)
