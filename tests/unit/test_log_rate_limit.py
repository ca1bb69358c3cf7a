"""Repeated Kafka client errors are counted, not printed: none vanish, few lines result."""

from __future__ import annotations

import logging
import re
import uuid

from hypothesis import given
from hypothesis import strategies as st

from splitpin.core.kafka.logs import RepeatFilter

WINDOW_S = 10.0
SUMMARY = re.compile(r"\(repeated ([\d,]+) times in the last (\d+) s\)$")
MESSAGES = [
    "FAIL [thrd:127.0.0.1:{n}/bootstrap]: Connect failed: Connection refused (after {n}ms)",
    "ERROR [rdkafka#producer-{n}] 1/1 brokers are down",
    "FAIL [thrd:GroupCoordinator]: Disconnected (after {n}ms in state UP)",
]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _logger() -> tuple[logging.Logger, _Capture, list[float]]:
    logger = logging.getLogger(f"test.repeats.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    capture = _Capture()
    logger.addHandler(capture)
    now = [0.0]
    logger.addFilter(RepeatFilter(logger, WINDOW_S, clock=lambda: now[0]))
    return logger, capture, now


steps = st.lists(
    st.tuples(st.floats(0, 3 * WINDOW_S), st.integers(0, len(MESSAGES) - 1), st.integers(0, 999)),
    max_size=300,
)


@given(steps=steps)
def test_every_record_is_printed_or_counted(steps: list[tuple[float, int, int]]) -> None:
    logger, capture, now = _logger()
    for gap, kind, number in steps:
        now[0] += gap
        logger.error(MESSAGES[kind].format(n=number))
    repeat_filter = next(f for f in logger.filters if isinstance(f, RepeatFilter))
    repeat_filter.flush(force=True)
    summaries = [SUMMARY.search(line) for line in capture.lines]
    counted = sum(int(m.group(1).replace(",", "")) for m in summaries if m)
    printed = sum(1 for m in summaries if m is None)
    assert printed + counted == len(steps)
    # At most one printed line and one summary per kind per window that saw records.
    windows = int(sum(gap for gap, _, _ in steps) // WINDOW_S) + 1
    assert len(capture.lines) <= 2 * len(MESSAGES) * windows


def test_an_outage_burst_becomes_two_lines() -> None:
    logger, capture, now = _logger()
    for n in range(1_021):
        now[0] = n * 0.005  # 1,021 errors within ~5 s, as in the 24 s outage burst
        logger.error(MESSAGES[0].format(n=n % 7))
    now[0] = WINDOW_S
    next(f for f in logger.filters if isinstance(f, RepeatFilter)).flush()
    assert len(capture.lines) == 2
    assert capture.lines[1].endswith("(repeated 1,020 times in the last 10 s)")


def test_summary_and_first_line_pass_through_a_level_filtered_logger() -> None:
    logger, capture, _ = _logger()
    logger.warning("WARNING kind")
    logger.warning("WARNING kind")
    logger.error("WARNING kind")  # another level is another kind
    assert capture.lines == ["WARNING kind", "WARNING kind"]
