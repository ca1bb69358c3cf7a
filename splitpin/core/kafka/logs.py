"""One logger for every librdkafka client splitpin creates, with repeats counted.

librdkafka prints its own logs (connection refused while a broker starts, coordinator
load in progress, ...) straight to stderr unless a Python logger is configured. Routing
them here lets the CLI show errors and hide routine retries; libraries stay silent
unless the application configures logging.

During a broker outage every client reports the same failure many times a second (a
24 s outage once wrote 1,075 ERROR lines). `RepeatFilter` passes the first line of a
kind, counts its repeats within a window, and then says so in one line.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LIBRDKAFKA_LOGGER = logging.getLogger("splitpin.core.kafka.librdkafka")
LIBRDKAFKA_LOGGER.addHandler(logging.NullHandler())

_NUMBERS = re.compile(r"\d+")
_SUMMARY = "rate_limit_summary"


@dataclass(slots=True)
class _Window:
    started: float
    level: int
    example: str
    repeats: int = 0


def kind_of(record: logging.LogRecord) -> tuple[int, str]:
    """Lines that differ only in numbers (ports, ms, counts) are one kind."""
    return record.levelno, _NUMBERS.sub("#", record.getMessage())


class RepeatFilter(logging.Filter):
    """Pass the first record of a kind; count repeats within `window_s`, then summarise.

    A summary line ("... repeated 1,020 times in the last 10 s") is logged through
    `logger` when a kind's window ends: on the next record, or on `flush` (called by a
    timer thread and at shutdown), so an outage that ends quietly is still counted.
    """

    def __init__(
        self,
        logger: logging.Logger,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._logger = logger
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[int, str], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        now = self._clock()
        self.flush(now)
        key = kind_of(record)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now, record.levelno, record.getMessage())
                return True
            window.repeats += 1
            return False

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Summarise and close every window that has ended (all of them with `force`)."""
        at = self._clock() if now is None else now
        with self._lock:
            ended = [
                (key, window)
                for key, window in self._windows.items()
                if force or at - window.started >= self._window_s
            ]
            for key, _ in ended:
                del self._windows[key]
        for _, window in ended:
            if window.repeats:
                self._logger.log(
                    window.level,
                    "%s (repeated %s times in the last %.0f s)",
                    window.example,
                    f"{window.repeats:,}",
                    max(at - window.started, 0.0),
                    extra={_SUMMARY: True},
                )


def limit_repeats(window_s: float, logger: logging.Logger = LIBRDKAFKA_LOGGER) -> RepeatFilter:
    """Install a RepeatFilter on `logger` with a daemon thread flushing it every window."""
    for existing in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
        logger.removeFilter(existing)
    repeat_filter = RepeatFilter(logger, window_s)
    logger.addFilter(repeat_filter)

    def tick() -> None:
        while True:
            time.sleep(window_s)
            repeat_filter.flush()

    threading.Thread(target=tick, name="splitpin-log-repeats", daemon=True).start()
    return repeat_filter
