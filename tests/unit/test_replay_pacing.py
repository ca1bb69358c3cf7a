"""Replay pacing (a GCRA token bucket), line handling and --restamp, with an injected clock:
no sleeps."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitpin.app.replay import Pacer, ReplayResult, _lines, record_key, restamp, restamp_offset
from splitpin.errors import ConfigError
from tests.factories import T0, event_dict


class FakeClock:
    """A monotonic clock that only moves when slept on (plus any injected lag)."""

    def __init__(self, oversleep: float = 0.0) -> None:
        self.now = 100.0
        self.oversleep = oversleep
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds + self.oversleep


def _send_times(pacer: Pacer, clock: FakeClock, n: int) -> list[float]:
    times = []
    for _ in range(n):
        pacer.wait()
        times.append(clock.now)
    return times


def test_steady_rate_first_event_immediately() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    times = _send_times(pacer, clock, 9)
    assert times[0] == 100.0
    assert times == pytest.approx([100.0 + i * 0.25 for i in range(9)])
    assert len(clock.sleeps) == 8


def test_oversleeping_does_not_accumulate_drift() -> None:
    # every sleep wakes 30 ms late; a naive `sleep(1/rate)` would end 100 * 30 ms = 3 s late
    clock = FakeClock(oversleep=0.03)
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    times = _send_times(pacer, clock, 101)
    assert times[-1] - times[0] == pytest.approx(10.0 + 0.03, abs=1e-9)
    # each sleep is shortened by the previous wake-up's lateness
    assert clock.sleeps[1:] == pytest.approx([0.1 - 0.03] * 99)


def test_after_a_stall_no_catch_up_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(2.0, clock=clock, sleep=clock.sleep)
    _send_times(pacer, clock, 3)  # 100.0, 100.5, 101.0
    clock.now += 10.0  # the producer blocked for 10 s
    times = _send_times(pacer, clock, 3)
    # restart from now: one immediately, then the steady interval again
    assert times == pytest.approx([111.0, 111.5, 112.0])


def test_burst_allows_that_many_back_to_back_after_idle() -> None:
    clock = FakeClock()
    pacer = Pacer(1.0, burst=3, clock=clock, sleep=clock.sleep)
    times = _send_times(pacer, clock, 5)
    assert times == pytest.approx([100.0, 100.0, 100.0, 101.0, 102.0])


def test_reserve_is_pure_arithmetic_on_the_given_time() -> None:
    pacer = Pacer(5.0)
    assert pacer.reserve(0.0) == 0.0
    assert pacer.reserve(0.0) == pytest.approx(0.2)
    assert pacer.reserve(0.1) == pytest.approx(0.3)  # slot at 0.4
    assert pacer.reserve(5.0) == 0.0  # far behind: immediate, schedule restarts


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_bad_rate_is_a_config_error(rate: float) -> None:
    with pytest.raises(ConfigError, match="rate must be a positive number"):
        Pacer(rate)


def test_key_only_for_json_objects_with_a_string_conversation_id() -> None:
    assert record_key(b'{"conversation_id": "chat-0001", "text": "hi"}') == b"chat-0001"
    assert record_key(b'{"conversation_id": "  chat-0002 "}') == b"chat-0002"
    assert record_key(b'{"conversation_id": 7}') is None
    assert record_key(b'{"conversation_id": "   "}') is None
    assert record_key(b'{"event_id": "x"}') is None
    assert record_key(b'["conversation_id", "chat-0001"]') is None
    assert record_key(b'{"conversation_id": "chat-0001", "text": ') is None
    assert record_key(b"\xff\xfe not utf-8") is None


def test_lines_strip_only_the_line_ending(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}  \r\n\n  {"b"\n\t\nlast-no-newline ')
    assert list(_lines(path)) == [b'{"a": 1}  ', b"", b'  {"b"', b"\t", b"last-no-newline "]


def test_result_describe() -> None:
    result = ReplayResult(sent=10, keyed=9, unkeyed=1, seconds=2.0, topic="t", skipped_blank=1)
    text = result.describe()
    assert "replayed 10 events to t in 2.00s" in text
    assert "5.0/s" in text
    assert "9 keyed" in text
    assert "1 unkeyed" in text
    assert "1 blank line(s) skipped" in text


# --- --restamp: recorded traffic moved to now, gaps kept ----------------------------------

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def test_restamp_moves_the_earliest_event_to_now_and_keeps_the_gaps(tmp_path: Path) -> None:
    first = event_dict("e-1", at_s=0)
    later = event_dict("e-2")
    later["sent_at"] = (
        (T0 + timedelta(days=3, seconds=7.5)).astimezone(timezone(timedelta(hours=-5))).isoformat()
    )
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"\n".join([orjson.dumps(later), b"not json", orjson.dumps(first), b'{"sent_at": 5}'])
    )
    offset = restamp_offset(path, NOW)
    assert offset == NOW - T0
    shifted = [restamp(line, offset) for line in _lines(path)]
    assert shifted[1] == b"not json" and shifted[3] == b'{"sent_at": 5}'  # untouched
    assert orjson.loads(shifted[2])["sent_at"] == "2027-03-01T12:00:00Z"  # `Z` style kept
    moved = datetime.fromisoformat(orjson.loads(shifted[0])["sent_at"])
    assert moved.utcoffset() == timedelta(hours=-5)  # the sender's offset kept
    assert moved - NOW == timedelta(days=3, seconds=7.5)
    assert {k: v for k, v in orjson.loads(shifted[0]).items() if k != "sent_at"} == {
        k: v for k, v in later.items() if k != "sent_at"
    }


@given(st.lists(st.floats(min_value=0, max_value=30 * 86_400), min_size=1, max_size=20))
def test_restamp_shifts_every_event_by_one_offset(gaps: list[float]) -> None:
    lines = [orjson.dumps(event_dict(f"e-{i}", at_s=gap)) for i, gap in enumerate(gaps)]
    before = [datetime.fromisoformat(orjson.loads(line)["sent_at"]) for line in lines]
    offset = NOW - min(before)
    after = [
        datetime.fromisoformat(orjson.loads(restamp(line, offset))["sent_at"]) for line in lines
    ]
    assert min(after) == NOW
    assert [t - NOW for t in after] == [t - min(before) for t in before]


def test_restamp_leaves_a_line_alone_when_the_shift_leaves_datetime_range() -> None:
    line = orjson.dumps(event_dict(sent_at="9999-12-31T00:00:00Z"))
    assert restamp(line, timedelta(days=2)) == line
