"""The shutdown path's plain logic: wait for the sink's batch in progress, bounded."""

from __future__ import annotations

import signal
import threading
import time

from splitpin.app.runner import ShutdownWatcher
from splitpin.flows.sink import WriteGate


def test_close_waits_for_the_batch_in_progress_and_holds_back_the_next() -> None:
    gate = WriteGate()
    started, release, second_entered = threading.Event(), threading.Event(), threading.Event()

    def batch() -> None:
        with gate:
            started.set()
            release.wait(5)

    def next_batch() -> None:
        with gate:
            second_entered.set()

    threading.Thread(target=batch, daemon=True).start()
    started.wait(5)
    assert gate.close(0.05) is False, "a batch in Kafka's hands is waited for"
    threading.Thread(target=next_batch, daemon=True).start()
    release.set()
    assert gate.close(5) is True
    assert not second_entered.wait(0.2), "no new batch starts once closing"


def test_a_stop_exits_0_when_the_sink_is_idle_and_1_past_the_timeout() -> None:
    exits: list[int] = []
    ShutdownWatcher(1.0, close_sink=lambda _: True, exit=exits.append).stop(signal.SIGTERM)
    ShutdownWatcher(1.0, close_sink=lambda _: False, exit=exits.append).stop(signal.SIGINT)
    assert exits == [0, 1]


def test_a_second_signal_exits_at_once() -> None:
    exits: list[int] = []
    blocked = threading.Event()

    def stuck_sink(timeout_s: float) -> bool:
        blocked.set()
        time.sleep(timeout_s)
        return False

    watcher = ShutdownWatcher(30.0, close_sink=stuck_sink, exit=exits.append)
    threading.Thread(target=watcher.stop, args=(signal.SIGINT,), daemon=True).start()
    blocked.wait(5)
    started = time.monotonic()
    watcher.stop(signal.SIGINT)
    assert exits == [1] and time.monotonic() - started < 1.0
