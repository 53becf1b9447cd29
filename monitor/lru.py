"""`BoundedLru`: a least-recently-used map of at most ``size`` entries (0: remembers nothing).

Shared by the caches of the reward-model scorer, the prompt embedder and the sentence classifier.
Not locked: each owner holds its own lock around the calls, as wide as its work needs.

>>> cache = BoundedLru(2)
>>> cache.put("a", 1); cache.put("b", 2); cache.get("a"); cache.put("c", 3)
1
>>> sorted(cache.get_many(["a", "b", "c"]).items())
[('a', 1), ('c', 3)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"cache_size must be >= 0, got {size}")
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The cached values among ``keys``, each looked up once."""
        found = {}
        for key in dict.fromkeys(keys):
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    def put(self, key: K, value: V) -> None:
        """Remember ``value``; the least recently used entry goes when the map is full."""
        if self.size == 0:
            return
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
