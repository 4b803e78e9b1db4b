"""A response cache in this process's memory (``memory://``), lost when the process ends.

Each process has its own: the workers of ``llmproxy serve --workers N`` do not share it (use
``sqlite:///`` or ``redis://`` for that).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from llmproxy.cache.base import CacheSettings, ResponseCache


class MemoryCache(ResponseCache):
    """Entries in an ordered dict, oldest written first, under one lock.

    An expired entry is dropped when it is read or when eviction reaches it; a value larger
    than ``max_bytes`` is not kept at all.
    """

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self._clock = self.settings.clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None (absent or expired)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                self._drop(key)
                return None
            return entry[1]

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds, evicting the oldest entries past the bounds."""
        settings = self.settings
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if len(value) > settings.max_bytes:
                return
            self._entries[key] = (self._clock() + ttl, value)
            self._bytes += len(value)
            while len(self._entries) > settings.max_entries or self._bytes > settings.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> tuple[int, int]:
        """Entries kept and their bytes."""
        with self._lock:
            return len(self._entries), self._bytes
