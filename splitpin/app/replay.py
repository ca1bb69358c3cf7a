"""Publish a JSONL file of events to Kafka, optionally paced, without touching the bytes.

Replay feeds the flow exactly what is in the file: each line goes out as-is (only its line
ending removed), so a malformed line reaches the flow malformed and exercises the
dead-letter path instead of being "fixed" or rejected here. Lines that parse as a JSON object
with a string `conversation_id` are keyed by it, which is what keeps one conversation's
events in order on one partition; anything else is sent without a key.

`restamp=True` is the one exception: ingest refuses events whose `sent_at` is far from the
record's Kafka timestamp (event_time_skew), so recorded traffic is moved to now. Every line
with a readable `sent_at` is shifted by the same offset (its earliest event becomes now, the
gaps between events are kept) and re-serialised; every other line still goes out untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from splitpin.core.kafka.client_config import security_config
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import Settings
from splitpin.errors import ConfigError


@dataclass(frozen=True)
class ReplayResult:
    """What a replay delivered; every record counted here was acknowledged by Kafka."""

    sent: int
    keyed: int
    unkeyed: int
    seconds: float
    topic: str
    skipped_blank: int = 0

    def describe(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else float("inf")
        blank = f", {self.skipped_blank} blank line(s) skipped" if self.skipped_blank else ""
        return (
            f"replayed {self.sent} events to {self.topic} in {self.seconds:.2f}s "
            f"({rate:.1f}/s; {self.keyed} keyed by conversation_id, {self.unkeyed} unkeyed{blank})"
        )


class Pacer:
    """Token bucket in its virtual-scheduling form (GCRA) for a steady `rate` per second.

    Each send is due one interval after the previous due time, not after the previous
    (late) wake-up, so sleep overshoot does not accumulate into drift. After a stall, at most
    `burst` events go out back to back; the schedule then restarts from now rather than
    racing to make up the lost time.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not math.isfinite(rate) or rate <= 0:
            msg = f"rate must be a positive number of events per second, got {rate}"
            raise ConfigError(msg)
        if burst < 1:
            msg = f"burst must be at least 1, got {burst}"
            raise ConfigError(msg)
        self.interval = 1.0 / rate
        self._tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._tat = -math.inf  # theoretical arrival time: when the next send is due

    def reserve(self, now: float) -> float:
        """Claim the next slot at time `now`; return how long to wait before using it."""
        tat = max(self._tat, now)
        self._tat = tat + self.interval
        return max(0.0, tat - self._tolerance - now)

    def wait(self) -> None:
        """Block until the next event may be sent."""
        delay = self.reserve(self._clock())
        if delay > 0:
            self._sleep(delay)


def _lines(path: Path) -> Iterator[bytes]:
    """The file's lines, each without its line ending (LF or CRLF) and otherwise untouched."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.endswith(b"\r\n"):
                yield raw[:-2]
            elif raw.endswith(b"\n"):
                yield raw[:-1]
            else:
                yield raw


def record_key(value: bytes) -> bytes | None:
    """`conversation_id` of a JSON object line, or None for anything else."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    conversation_id = data.get("conversation_id")
    if not isinstance(conversation_id, str) or not conversation_id.strip():
        return None
    # The flow strips it (splitpin.schemas.events.Identifier); key on the same value so every event
    # of a conversation lands on the same partition.
    return conversation_id.strip().encode()


def _sent_at(value: bytes) -> tuple[dict[str, Any], datetime] | None:
    """The JSON object of a line and its `sent_at`, when it has one with a timezone."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sent_at"), str):
        return None
    try:
        at = datetime.fromisoformat(data["sent_at"])
    except ValueError:
        return None
    return (data, at) if at.utcoffset() is not None else None


def event_time_span(path: Path) -> tuple[datetime, datetime] | None:
    """Earliest and latest readable `sent_at` in the file (None if there is none)."""
    times = [parsed[1] for parsed in map(_sent_at, _lines(path)) if parsed is not None]
    return (min(times), max(times)) if times else None


def restamp_offset(path: Path, now: datetime) -> timedelta:
    """The shift that makes the file's earliest event happen at `now`."""
    span = event_time_span(path)
    return timedelta(0) if span is None else now - span[0]


def restamp(value: bytes, offset: timedelta) -> bytes:
    """`value` with its `sent_at` moved by `offset` (same UTC offset and `Z` style), or
    untouched when it has no readable `sent_at` or the shift leaves datetime's range."""
    parsed = _sent_at(value)
    if parsed is None:
        return value
    data, at = parsed
    try:
        shifted = (at + offset).isoformat()
        if data["sent_at"][-1] in "Zz" and at.utcoffset() == timedelta(0):
            shifted = shifted.removesuffix("+00:00") + "Z"
        return orjson.dumps({**data, "sent_at": shifted})
    except (OverflowError, TypeError):  # TypeError: an int orjson cannot write (> 64 bits)
        return value


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def replay_file(
    settings: Settings,
    path: Path,
    *,
    rate: float | None = None,
    topic: str | None = None,
    restamp_to: datetime | None = None,
) -> ReplayResult:
    """Publish every non-blank line of `path` to `topic` (default: the events topic).

    With `restamp_to`, event times are shifted so the earliest is that instant (see the
    module docstring).

    Raises DeliveryError if any record is not acknowledged within the bounded flush: a
    replay that silently lost events would make every downstream figure wrong.
    """
    target = topic or settings.topic("events")
    pacer = Pacer(rate) if rate is not None else None
    producer = CheckedProducer(
        settings.bootstrap_servers,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        **security_config(settings.kafka),
    )
    offset = None if restamp_to is None else restamp_offset(path, restamp_to)
    keyed = unkeyed = blank = 0
    started = time.monotonic()
    with tqdm(total=_count_lines(path), unit="ev", desc=target, disable=None) as bar:
        for value in _lines(path):
            bar.update(1)
            if not value.strip():
                blank += 1
                continue
            if offset is not None:
                value = restamp(value, offset)
            key = record_key(value)
            if pacer is not None:
                pacer.wait()
            producer.produce(target, value, key)
            if key is None:
                unkeyed += 1
            else:
                keyed += 1
        sent = producer.flush(settings.sink_flush_timeout_s)
    return ReplayResult(
        sent=sent,
        keyed=keyed,
        unkeyed=unkeyed,
        seconds=time.monotonic() - started,
        topic=target,
        skipped_blank=blank,
    )
