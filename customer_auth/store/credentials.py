"""The process's credential store: one pool, one listener, the caches of its plugin instances, and
the nonce store of replay protection."""

from __future__ import annotations

import os
import threading
import weakref

from customer_auth.errors import StoreUnavailable
from customer_auth.store.cache import CredentialCache
from customer_auth.store.changes import ChangeListener
from customer_auth.store.connection import Settings
from customer_auth.store.customers import CustomerStore
from customer_auth.store.nonces import NonceStore

CacheSettings = tuple[float, float, float, int]  # ttl, negative_ttl, stale_ttl, max_entries


class Credentials:
    """The process's credential store: one pool and one listener, shared by every plugin
    instance's cache, created on first use."""

    _shared: Credentials | None = None
    _shared_lock = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        self.store = CustomerStore(settings)
        # connects to the primary only once a protected route asks
        self.nonces = NonceStore(settings)
        # settings -> CredentialCache
        self._caches: weakref.WeakValueDictionary[CacheSettings, CredentialCache] = (
            weakref.WeakValueDictionary()
        )
        self._caches_lock = threading.Lock()
        self.listener = ChangeListener(settings, self._changed, on_lost=self.store.close)

    @classmethod
    def shared(cls) -> Credentials:
        """The process's store. A process forked from one that had it (a pre-forking server such
        as gunicorn) gets its own: a connection or a listener thread does not survive a fork."""
        with cls._shared_lock:
            if cls._shared is None or cls._shared.pid != os.getpid():
                cls._shared = cls(Settings.from_environment())
                cls._shared.listener.start()
                # Lookups made before LISTEN are cleared once it takes effect; waiting for it
                # (once per process, bounded) spares the first requests that second lookup.
                cls._shared.listener.listening.wait(cls._shared.store.settings.timeout)
            return cls._shared

    def cache(
        self, ttl: float, negative_ttl: float, stale_ttl: float, max_entries: int
    ) -> CredentialCache:
        """The cache for these settings, shared by every plugin instance that has them: Kong
        starts an instance per plugin entity in each of its workers, and a certificate should
        cost one lookup per TTL, not one per instance."""
        settings = (ttl, negative_ttl, stale_ttl, max_entries)
        with self._caches_lock:
            cache = self._caches.get(settings)
            if cache is None:
                cache = self._caches[settings] = CredentialCache(self.store.fetch, *settings)
        return cache

    def health(self) -> str:
        """ "up" while the store answers; "degraded" while it fails but cached customers can still
        be verified within their stale window; else "down". Why is for the log, not for here."""
        try:
            self.store.probe()
        except StoreUnavailable:
            with self._caches_lock:
                caches = list(self._caches.values())
            return (
                "degraded"
                if any(cache.usable_while_the_store_fails() for cache in caches)
                else "down"
            )
        return "up"

    def _changed(self, certificate_id: str | None, wal_position: int) -> None:
        # First the floor, then the eviction: a lookup that misses the cache after it must not
        # take a lagging standby's word for the changed certificate.
        self.store.replay_floors.raise_to(certificate_id, wal_position)
        self._evict(certificate_id)

    def _evict(self, certificate_id: str | None) -> None:
        with self._caches_lock:
            caches = list(self._caches.values())
        for cache in caches:
            cache.evict(certificate_id)

    def close(self) -> None:
        self.listener.stop()
        self.store.close()
        self.nonces.close()
