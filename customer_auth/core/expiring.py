"""The one bounded, expiring map behind the runtime's small memories: recently verified requests
(cache.py), Kong consumers (consumers.py) and seen nonces (nonces.py)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable
from typing import Any


class ExpiringMap:
    """Values kept until their expiry, at most ``max_entries``: the least recently written leave
    first. A read takes no lock (one dict lookup); a write does."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: collections.OrderedDict[Hashable, tuple[Any, float]]
        self._entries = collections.OrderedDict()  # key -> (value, expires at)
        self._lock = threading.Lock()

    def lookup(self, key: Hashable, now: float) -> tuple[bool, Any]:
        """``(True, value)`` while the value has not expired at ``now``; else ``(False, None)``."""
        entry = self._entries.get(key)
        if entry is None or now >= entry[1]:
            return False, None
        return True, entry[0]

    def put(self, key: Hashable, value: Any, expires_at: float) -> None:
        with self._lock:
            self._entries[key] = (value, expires_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
