"""Model calls off the Bytewax worker thread.

Bytewax 0.21 runs operator logic synchronously on its worker thread, so one blocking call
stalls every step on that worker. Calls therefore run as coroutines on an asyncio loop in
a daemon thread: `submit` returns a `concurrent.futures.Future` at once, at most
`max_in_flight` coroutines hold a slot at a time (the rest wait, queued, for a slot), and
every call has a deadline. The worker polls futures (see operators/model_calls.py).

A call may start later (`delay_s`: a hedge timer; it waits without holding a slot) and be
cancelled at any time (`cancel`): the asyncio task is cancelled, mid-flight if need be. A
call that had already finished cannot be cancelled: its result stands (it was billed). One
cancelled after it took a slot (`started`) may have been billed too: a provider bills the
input it has read, whether or not the answer is ever collected.

One executor per process: Bytewax workers in one process share it, so the in-flight
limit is per process, which is what a provider's rate limit sees.

Submitting wakes the loop once per burst, not once per call: calls queue in an inbox and
only the first call after the loop last emptied it schedules the loop's drain (a wake-up
is a write to the loop's self-pipe; one per call cost the worker about 2 % of its time on
the whole-path bench). Calls still start in submission order, each as its own task.

Blocking work a call hands to a thread (`asyncio.to_thread`: the local fleet's retrieval
and responders, a prompt's preparation) runs on `threads` threads, not asyncio's default
of cpu_count + 4: on a small box more CPU-bound threads only take the GIL and the cores
from the worker thread, which then publishes decisions late (bench/README.md "Profile").
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class CallTimeoutError(Exception):
    """The call's deadline passed; the coroutine was cancelled."""


class _Started:
    """Whether a call took its slot: a flag set once on the loop, read by the worker. A
    `threading.Event` per call (a Condition and a lock) cost more than the rest of `submit`,
    and nothing ever waits on it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


class CallExecutor:
    """An event loop in a daemon thread with a bounded number of calls in flight."""

    def __init__(
        self, max_in_flight: int, *, name: str = "splitpin-calls", threads: int | None = None
    ) -> None:
        if max_in_flight < 1 or (threads is not None and threads < 1):
            msg = "max_in_flight and threads must be at least 1"
            raise ValueError(msg)
        self.max_in_flight = max_in_flight
        self._loop = asyncio.new_event_loop()
        if threads is not None:
            self._loop.set_default_executor(
                ThreadPoolExecutor(threads, thread_name_prefix=f"{name}-work")
            )
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queued = 0
        self._delayed = 0
        self._started: weakref.WeakKeyDictionary[Future[Any], _Started] = (
            weakref.WeakKeyDictionary()
        )
        self._inbox: list[tuple[Coroutine[Any, Any, Any], Future[Any]]] = []
        self._drain_scheduled = False
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        """Calls holding a slot right now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return self._queued

    @property
    def delayed(self) -> int:
        """Calls whose start time has not come yet (hedge timers)."""
        return self._delayed

    def submit(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        timeout_s: float | None = None,
        delay_s: float | None = None,
    ) -> Future[T]:
        """Schedule `call()` on the loop; the future fails with CallTimeoutError past the deadline.

        The deadline counts from the moment the call gets a slot: waiting in the queue is
        the operator's backlog, not the provider's slowness. With `delay_s` the call joins
        the queue only that much later (cancelling it before then costs nothing).
        """
        delay = delay_s if delay_s is not None and delay_s > 0 else None
        started = _Started()
        future: Future[T] = Future()
        with self._lock:
            self._started[future] = started
            self._inbox.append((self._run(call, timeout_s, delay, started), future))
            wake, self._drain_scheduled = not self._drain_scheduled, True
        if wake:  # else the drain already scheduled takes this call too
            self._loop.call_soon_threadsafe(self._drain)
        return future

    def _drain(self) -> None:
        """On the loop: start every queued call as a task, as `run_coroutine_threadsafe`
        would (the future ends as the task does; cancelling the future cancels the task)."""
        with self._lock:
            inbox, self._inbox, self._drain_scheduled = self._inbox, [], False
        for coroutine, future in inbox:
            task = self._loop.create_task(coroutine)
            task.add_done_callback(functools.partial(_settle, future))
            future.add_done_callback(functools.partial(_cancel_task, self._loop, task))

    @staticmethod
    def cancel(future: Future[T]) -> bool:
        """Stop a call (its task is cancelled on the loop); False when it had already
        finished, so its result, and what it billed, must still be accounted."""
        return future.cancel()

    def started(self, future: Future[T]) -> bool:
        """Whether the call took a slot and began (a provider may have read its prompt);
        False for one still delayed or queued, and for a future of another executor."""
        with self._lock:
            event = self._started.get(future)
        return event is not None and event.value

    async def _run(
        self,
        call: Callable[[], Awaitable[T]],
        timeout_s: float | None,
        delay_s: float | None,
        started: _Started | None = None,
    ) -> T:
        # Counted here, not in `submit`: a task cancelled before its first step never runs.
        if delay_s is not None:
            with self._lock:
                self._delayed += 1
            try:
                await asyncio.sleep(delay_s)
            finally:
                with self._lock:
                    self._delayed -= 1
        with self._lock:
            self._queued += 1
        try:
            await self._slots.acquire()
        except BaseException:
            with self._lock:
                self._queued -= 1
            raise
        try:
            with self._lock:
                self._queued -= 1
                self._in_flight += 1
            if started is not None:
                started.value = True
            try:
                if timeout_s is None:
                    return await call()
                try:
                    return await asyncio.wait_for(call(), timeout_s)
                except TimeoutError as exc:
                    msg = f"no result within {timeout_s:g} s"
                    raise CallTimeoutError(msg) from exc
            finally:
                with self._lock:
                    self._in_flight -= 1
        finally:
            self._slots.release()

    def run(self, call: Callable[[], Coroutine[object, object, T]]) -> T:
        """Run one coroutine to completion from a foreign thread (start-up and shutdown work)."""
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def close(self) -> None:
        """Cancel what is still running and release the loop (tests; processes just exit)."""

        async def cancel_all() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def _settle(future: Future[T], task: asyncio.Task[T]) -> None:
    """The task's outcome onto the worker's future (asyncio's `_set_concurrent_future_state`:
    a future already cancelled stays so)."""
    if task.cancelled():
        future.cancel()
    if not future.set_running_or_notify_cancel():
        return
    exception = task.exception()
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(task.result())


def _cancel_task(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], future: Future[Any]
) -> None:
    """A future cancelled by the worker cancels its task on the loop."""
    if future.cancelled() and not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)


_shared: dict[tuple[int, int | None], CallExecutor] = {}
_shared_lock = threading.Lock()


def shared_executor(max_in_flight: int, threads: int | None = None) -> CallExecutor:
    """The process-wide executor for a given limit and thread count (created on first use)."""
    with _shared_lock:
        executor = _shared.get((max_in_flight, threads))
        if executor is None:
            executor = CallExecutor(max_in_flight, threads=threads)
            _shared[(max_in_flight, threads)] = executor
        return executor
