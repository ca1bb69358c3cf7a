"""A bounded, thread-safe least-recently-used memo.

For values that are a pure function of their key, so a hit is exactly what computing again
would give: the embedder's rows (by text and by token ids) and the intent head's rows (by
model input) share it. Reads and writes take one lock per call, not per key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruMemo(Generic[K, V]):
    """At most `size` entries (0: remembers nothing); the least recently used go first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """Each key's value (None: not remembered); a hit becomes the most recently used."""
        found: list[V | None] = []
        with self._lock:
            for key in keys:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                found.append(value)
        return found

    def put_many(self, items: Iterable[tuple[K, V]]) -> None:
        """Remember each pair as the most recently used, then forget beyond `size`."""
        if self.size <= 0:
            return
        with self._lock:
            for key, value in items:
                self._items[key] = value
                self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
