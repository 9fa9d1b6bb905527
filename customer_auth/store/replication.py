"""Trusting a hot standby's answer: how far it must have replayed the primary's WAL.

A standby may lag the primary by any amount (its replay can even be paused). When the change
listener hears of a change on the primary it notes the primary's WAL position; until a standby has
replayed past that position, its answer about that certificate predates the change, and the
lookup must ask the primary instead. Positions are bytes of WAL (``pg_lsn - '0/0'``).
"""

from __future__ import annotations

import threading

# Beyond this many certificates waiting for standbys to catch up, they are folded into one
# position for everything: bounded memory, at the cost of a few more lookups on the primary.
MAX_CERTIFICATES = 10000


class ReplayFloors:
    def __init__(self, max_certificates: int = MAX_CERTIFICATES) -> None:
        self._max_certificates = max_certificates
        self._everything = 0  # for a change to everything (a cleared cache, a TRUNCATE)
        self._by_certificate: dict[str, int] = {}
        self._lock = threading.Lock()

    def raise_to(self, certificate_id: str | None, wal_position: int) -> None:
        """A change to ``certificate_id`` (None: to everything) is in the WAL before
        ``wal_position``."""
        with self._lock:
            if certificate_id is None:
                self._everything = max(self._everything, wal_position)
                return
            self._by_certificate[certificate_id] = max(
                self._by_certificate.get(certificate_id, 0), wal_position
            )
            if len(self._by_certificate) > self._max_certificates:
                self._everything = max(self._everything, *self._by_certificate.values())
                self._by_certificate.clear()

    def required(self, certificate_id: str) -> int:
        """How far a standby must have replayed for its answer about ``certificate_id`` to count."""
        return max(self._everything, self._by_certificate.get(certificate_id, 0))

    def reached(self, certificate_id: str, replayed: int) -> None:
        """A standby has replayed to ``replayed``: what it passed need not be remembered."""
        with self._lock:
            if self._by_certificate.get(certificate_id, replayed + 1) <= replayed:
                del self._by_certificate[certificate_id]

    def __len__(self) -> int:
        return len(self._by_certificate)
