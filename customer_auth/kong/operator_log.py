"""What the operator must see, carried into Kong's error log at a level Kong keeps.

Kong copies what the plugin server prints into its error log at INFO, below its default
``log_level`` (notice), so a problem printed there is seen by no one. Every warning or error logged
on the ``customer_verification`` logger is therefore also queued here, and the plugin hands it to
``kong.log.warn``/``kong.log.err`` on the next request (one round trip, only on such requests).

A kind of problem is its message template: each kind gives at most one line per ``interval``
seconds, which says how many more of it were left out. Client mistakes are logged at INFO and
never reach this queue.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from customer_auth.core.terms import LOGGER_NAME as LOGGER_NAME  # where the queue listens

Line = tuple[str, str]  # (kong.log method, text)

KONG_LOG_METHOD = {
    logging.WARNING: "kong.log.warn",
    logging.ERROR: "kong.log.err",
    logging.CRITICAL: "kong.log.crit",
}


class _Kind:
    __slots__ = ("logged_at", "left_out", "pending")

    def __init__(self) -> None:
        self.logged_at = -float("inf")
        self.left_out = 0
        self.pending: Line | None = None  # waiting for a request


class OperatorLog(logging.Handler):
    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(level=logging.WARNING)
        self._interval = interval
        self._clock = clock
        self._kinds: collections.defaultdict[object, _Kind] = collections.defaultdict(_Kind)
        self._due: collections.deque[_Kind] = collections.deque()  # pending lines, oldest first
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        method = KONG_LOG_METHOD[
            min(max(record.levelno, logging.WARNING) // 10 * 10, logging.CRITICAL)
        ]
        text = f"{LOGGER_NAME}: {record.getMessage()}"  # never the traceback: it may quote anything
        with self._lock:
            kind = self._kinds[record.msg]
            if kind.pending is not None or self._clock() - kind.logged_at < self._interval:
                kind.left_out += 1
                return
            kind.pending = (method, text)
            self._due.append(kind)

    def __bool__(self) -> bool:
        return bool(self._due)  # read without the lock on every request: a stale answer only delays

    def take(self) -> Line | None:
        """The next line for Kong's error log as ``(kong.log method, text)``, or None."""
        with self._lock:
            if not self._due:
                return None
            kind = self._due.popleft()
            assert kind.pending is not None  # a due kind has its line
            (method, text), kind.pending = kind.pending, None
            kind.logged_at = self._clock()
            if kind.left_out:
                text += f" (+{kind.left_out} more like this not logged)"
                kind.left_out = 0
            return method, text


_installed: OperatorLog | None = None
_install_lock = threading.Lock()


def install() -> OperatorLog:
    """The process's operator log, attached to the plugin's logger once."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = OperatorLog()
            logging.getLogger(LOGGER_NAME).addHandler(_installed)
        return _installed
