"""Credentials kept in memory in front of the store, and requests verified lately."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from customer_auth import metrics
from customer_auth.core.credential import Credential
from customer_auth.core.expiring import ExpiringMap
from customer_auth.core.terms import LOGGER_NAME
from customer_auth.errors import StoreUnavailable

log = logging.getLogger(LOGGER_NAME)

Signed = tuple[str, str, str]  # a v1 request's three header values: certificate, time, signature


@dataclasses.dataclass
class _Entry:
    credential: Credential | None  # None: the certificate is known not to exist
    fresh_until: float
    stale_until: float


class _Flight:
    """One lookup in progress, which concurrent misses for the same certificate wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.credential: Credential | None = None
        self.error: StoreUnavailable | None = None


class VerifiedRequests:
    """Signed requests accepted lately, by their three header values as sent
    (certificate id, request time, signature).

    A client signs all its requests of one second alike, so a busy client sends the same values
    many times. A repeat is accepted here with a lookup instead of parsing, a credential lookup
    and a hash. It counts only while its time is within the clock skew, while the cache holds
    the very credential it was verified with and holds it fresh (a changed, revoked, evicted or
    expired one is another object or none), and, if a rotated-out key was still valid then,
    until that key's grace period ends. Only verified requests get in, so nobody can fill it
    without a key; beyond ``max_entries`` the oldest leave first.
    """

    def __init__(self, cache: CredentialCache, max_entries: int) -> None:
        self._cache = cache
        self._entries = ExpiringMap(max_entries)  # values -> (credential, request time)

    def recall(self, signed: Signed, now: float, clock_skew: float) -> str | None:
        """The customer id ``signed`` was verified for, if that still holds; else None."""
        found, remembered = self._entries.lookup(signed, now)
        if not found:
            return None
        credential, request_time = remembered
        fresh = self._cache.fresh(signed[0])
        if abs(now - request_time) <= clock_skew and fresh is not None and fresh is credential:
            metrics.CACHE_HIT.inc()
            return fresh.customer_id
        return None

    def remember(
        self, signed: Signed, credential: Credential, request_time: int, now: float
    ) -> None:
        self._entries.put(signed, (credential, request_time), credential.keys_valid_until(now))

    def __len__(self) -> int:
        return len(self._entries)


class CredentialCache:
    """Credentials by certificate id, bounded, with one lookup per certificate in flight.

    Fresh entries answer without the store; when the store fails, a known customer keeps
    working until ``stale_ttl`` after its entry went stale. Unknown certificates are cached
    for ``negative_ttl`` so a flood of them costs one query each per TTL, in a bound of their
    own: any number of them never pushes a known customer out.
    """

    def __init__(
        self,
        fetch: Callable[[str], Credential | None],
        ttl: float,
        negative_ttl: float,
        stale_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._stale_ttl = stale_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._known: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # customers
        # certificates known not to exist
        self._unknown: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._generation = 0  # bumped by every eviction, so a lookup older than it is not stored
        self._lock = threading.Lock()
        self.verified = VerifiedRequests(self, max_entries)

    def get(self, certificate_id: str) -> Credential | None:
        # A hit takes no lock: reading and reordering an OrderedDict are single, atomic
        # operations under the GIL, and this is the path every verified request takes.
        entry = self._fresh_entry(certificate_id)
        if entry is not None:
            try:
                self._known.move_to_end(certificate_id)
            except KeyError:
                pass  # evicted meanwhile, or an unknown certificate: the entry is still valid
            metrics.CACHE_HIT.inc()
            return entry.credential
        with self._lock:
            entry = self._known.get(certificate_id) or self._unknown.get(certificate_id)
            if entry is not None and self._clock() < entry.fresh_until:
                metrics.CACHE_HIT.inc()
                return entry.credential
            metrics.CACHE_MISS.inc()
            known = self._flights.get(certificate_id)
            leading = known is None
            flight = self._flights[certificate_id] = known or _Flight()
            generation = self._generation
        if leading:
            self._lead(certificate_id, flight, generation)
        else:
            flight.done.wait()
        if flight.error is None:
            return flight.credential
        if entry is not None and entry.credential is not None and self._clock() < entry.stale_until:
            log.warning(
                "credential store failed (%s); answering from expired cache entries (within "
                "stale_ttl)",
                flight.error,
            )
            metrics.CACHE_STALE.inc()
            return entry.credential
        raise flight.error

    def cached(self, certificate_id: str) -> tuple[bool, Credential | None]:
        """``(True, credential or None)`` when a fresh entry answers without the store, else
        ``(False, None)``: a caller that must not block can tell a miss from an unknown."""
        entry = self._fresh_entry(certificate_id)
        return (False, None) if entry is None else (True, entry.credential)

    def fresh(self, certificate_id: str) -> Credential | None:
        """The cached credential while it is fresh, else None; never asks the store."""
        entry = self._fresh_entry(certificate_id)
        return None if entry is None else entry.credential

    def _fresh_entry(self, certificate_id: str) -> _Entry | None:
        entry = self._known.get(certificate_id) or self._unknown.get(certificate_id)
        return entry if entry is not None and self._clock() < entry.fresh_until else None

    def _lead(self, certificate_id: str, flight: _Flight, generation: int) -> None:
        try:
            flight.credential = self._fetch(certificate_id)
        except StoreUnavailable as error:
            flight.error = error
        finally:
            with self._lock:
                del self._flights[certificate_id]
                if flight.error is None and generation == self._generation:
                    self._store(certificate_id, flight.credential)
            flight.done.set()

    def _store(self, certificate_id: str, credential: Credential | None) -> None:
        now = self._clock()
        ttl = self._ttl if credential is not None else self._negative_ttl
        entries, other = (
            (self._known, self._unknown) if credential is not None else (self._unknown, self._known)
        )
        other.pop(certificate_id, None)
        entries[certificate_id] = _Entry(credential, now + ttl, now + ttl + self._stale_ttl)
        entries.move_to_end(certificate_id)
        while len(entries) > self._max_entries:
            entries.popitem(last=False)

    def usable_while_the_store_fails(self) -> int:
        """How many customers ``get`` would still answer from memory if the store failed now."""
        now = self._clock()
        with self._lock:
            return sum(1 for entry in self._known.values() if now < entry.stale_until)

    def evict(self, certificate_id: str | None = None) -> None:
        """Forget one certificate, or everything when ``certificate_id`` is None."""
        with self._lock:
            self._generation += 1
            if certificate_id is None:
                self._known.clear()
                self._unknown.clear()
            else:
                self._known.pop(certificate_id, None)
                self._unknown.pop(certificate_id, None)

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)
