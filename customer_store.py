"""Where credentials come from: Postgres behind a small pool, an in-process cache in front of it,
and a LISTEN/NOTIFY listener that evicts what changed.

Connection settings come from the environment only (``DATABASE_URL`` or libpq's ``PG*``
variables, optionally from the dotenv file named by ``CUSTOMER_VERIFICATION_ENV_FILE``), never from
Kong's plugin config. Nothing connects until the first lookup.
"""
import collections
import contextlib
import dataclasses
import logging
import math
import os
import select
import threading
import time
import weakref

import psycopg2
import psycopg2.errors
import psycopg2.extensions

log = logging.getLogger("customer_verification")

CHANGES_CHANNEL = "customer_changed"

_LOOKUP = """
    SELECT uuid::text,
           authentication->>'client_key',
           authentication->>'previous_client_key',
           authentication->>'previous_key_expires_at'
      FROM customer
     WHERE certificate = %s
       AND authentication->>'revoked_at' IS NULL
     LIMIT 2
"""


class StoreUnavailable(Exception):
    """The credential store could not answer in time."""


@dataclasses.dataclass(frozen=True)
class Credential:
    customer_id: str
    client_key: str
    previous_client_key: str = None
    previous_key_expires_at: float = None

    def keys_valid_at(self, now):
        """The keys a signature may be made with at ``now``: during a rotation's grace period
        the previous key still counts, so clients can roll over without downtime."""
        if self._in_grace_period(now):
            return (self.client_key, self.previous_client_key)
        return (self.client_key,)

    def keys_valid_until(self, now):
        """When ``keys_valid_at(now)`` stops being the answer: the end of a grace period."""
        return self.previous_key_expires_at if self._in_grace_period(now) else math.inf

    def _in_grace_period(self, now):
        return bool(self.previous_client_key and self.previous_key_expires_at and now < self.previous_key_expires_at)


@dataclasses.dataclass(frozen=True)
class Settings:
    dsn: str
    pool_size: int
    timeout: float

    @classmethod
    def from_environment(cls):
        env_file = os.environ.get("CUSTOMER_VERIFICATION_ENV_FILE")
        if env_file:
            import dotenv

            dotenv.load_dotenv(env_file, override=False)
        return cls(
            dsn=os.environ.get("DATABASE_URL", ""),  # empty: libpq reads PGHOST, PGUSER, ...
            pool_size=int(os.environ.get("CUSTOMER_VERIFICATION_POOL_SIZE", "4")),
            timeout=float(os.environ.get("CUSTOMER_VERIFICATION_DB_TIMEOUT", "2")),
        )


def _wait_with_deadline(timeout):
    """A psycopg2 wait callback that gives up after ``timeout`` seconds without progress.

    libpq's connect_timeout and the server's statement_timeout do not cover a network that
    stops answering; this does. Waiting through select() also makes psycopg2 cooperative when
    gevent has patched select (the plugin server's gevent mode).
    """

    def wait(conn):
        while True:
            state = conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                ready = select.select([conn.fileno()], [], [], timeout)[0]
            elif state == psycopg2.extensions.POLL_WRITE:
                ready = select.select([], [conn.fileno()], [], timeout)[1]
            else:
                raise psycopg2.OperationalError(f"unexpected poll state {state}")
            if not ready:
                raise psycopg2.OperationalError(f"no answer from the database within {timeout} s")

    return wait


def connect(settings, application_name="customer_verification"):
    """One connection with every wait bounded by ``settings.timeout``."""
    psycopg2.extensions.set_wait_callback(_wait_with_deadline(settings.timeout))
    timeout_ms = int(settings.timeout * 1000)
    return psycopg2.connect(
        settings.dsn,
        connect_timeout=max(1, round(settings.timeout)),
        options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        application_name=application_name,
    )


def describe(error):
    """The first line of a driver error: enough for an operator, never a DSN or a password."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


class Pool:
    """At most ``size`` connections; callers wait up to ``timeout`` for one.

    psycopg2's own pools raise instead of waiting, and do not replace dead connections.
    """

    def __init__(self, settings):
        self._settings = settings
        self._slots = threading.BoundedSemaphore(settings.pool_size)
        self._idle = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self, fresh=False):
        """Yields ``(connection, reused)``; a connection that raised is closed, not returned."""
        if not self._slots.acquire(timeout=self._settings.timeout):
            raise StoreUnavailable("all database connections are busy")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle and not fresh else None
            reused = conn is not None
            if conn is None:
                conn = connect(self._settings)
                conn.autocommit = True
            try:
                yield conn, reused
            except BaseException:
                conn.close()
                raise
            with self._lock:
                self._idle.append(conn)
        finally:
            self._slots.release()

    def close(self):
        """Closes the idle connections; also what to do when one was found dead (a restart)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class CustomerStore:
    """Looks customers up by certificate id in Postgres."""

    def __init__(self, settings):
        self.settings = settings
        self.pool = Pool(settings)
        self.queries = 0

    def fetch(self, certificate_id):
        """The customer's credential, or None if there is none; StoreUnavailable on failure.

        A reused connection may have died with a database restart, and then its idle siblings
        did too: they are dropped and the lookup is retried once on a new connection, so a
        restart costs no request.
        """
        for attempt in (1, 2):
            reused = False
            try:
                with self.pool.connection(fresh=attempt == 2) as (conn, reused), conn.cursor() as cursor:
                    self.queries += 1
                    cursor.execute(_LOOKUP, (certificate_id,))
                    rows = cursor.fetchall()
                break
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                if attempt == 2 or not reused or isinstance(error, psycopg2.errors.QueryCanceled):
                    raise StoreUnavailable(describe(error)) from None
                self.pool.close()
            except psycopg2.Error as error:
                raise StoreUnavailable(describe(error)) from None
        if len(rows) != 1:
            if rows:
                log.error("certificate id %r belongs to %d customers; refusing all of them",
                          certificate_id, len(rows))
            return None
        customer_id, client_key, previous_key, previous_expiry = rows[0]
        if not client_key:
            log.error("customer %s has no authentication.client_key; refusing it", customer_id)
            return None
        return Credential(customer_id, client_key, previous_key, _epoch_or_none(previous_expiry))

    def close(self):
        self.pool.close()


def _epoch_or_none(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass
class _Entry:
    credential: Credential  # None: the certificate is known not to exist
    fresh_until: float
    stale_until: float


class _Flight:
    """One lookup in progress, which concurrent misses for the same certificate wait on."""

    def __init__(self):
        self.done = threading.Event()
        self.credential = None
        self.error = None


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

    def __init__(self, cache, max_entries):
        self._cache = cache
        self._max_entries = max_entries
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def recall(self, signed, now, clock_skew):
        """The customer id ``signed`` was verified for, if that still holds; else None."""
        remembered = self._entries.get(signed)
        if remembered is None:
            return None
        credential, request_time, valid_until = remembered
        if abs(now - request_time) <= clock_skew and now < valid_until and self._cache.fresh(signed[0]) is credential:
            return credential.customer_id
        return None

    def remember(self, signed, credential, request_time, now):
        with self._lock:
            self._entries[signed] = (credential, request_time, credential.keys_valid_until(now))
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self):
        return len(self._entries)


class CredentialCache:
    """Credentials by certificate id, bounded, with one lookup per certificate in flight.

    Fresh entries answer without the store; when the store fails, a known customer keeps
    working until ``stale_ttl`` after its entry went stale. Unknown certificates are cached
    for ``negative_ttl`` so a flood of them costs one query each per TTL.
    """

    def __init__(self, fetch, ttl, negative_ttl, stale_ttl, max_entries, clock=time.monotonic):
        self._fetch = fetch
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._stale_ttl = stale_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries = collections.OrderedDict()
        self._flights = {}
        self._generation = 0  # bumped by every eviction, so a lookup older than it is not stored
        self._lock = threading.Lock()
        self.verified = VerifiedRequests(self, max_entries)

    def get(self, certificate_id):
        # A hit takes no lock: reading and reordering an OrderedDict are single, atomic
        # operations under the GIL, and this is the path every verified request takes.
        entry = self._fresh_entry(certificate_id)
        if entry is not None:
            try:
                self._entries.move_to_end(certificate_id)
            except KeyError:
                pass  # evicted meanwhile: the entry is still valid
            return entry.credential
        with self._lock:
            entry = self._entries.get(certificate_id)
            if entry is not None and self._clock() < entry.fresh_until:
                return entry.credential
            flight = self._flights.get(certificate_id)
            leading = flight is None
            if leading:
                flight = self._flights[certificate_id] = _Flight()
                generation = self._generation
        if leading:
            self._lead(certificate_id, flight, generation)
        else:
            flight.done.wait()
        if flight.error is None:
            return flight.credential
        if entry is not None and entry.credential is not None and self._clock() < entry.stale_until:
            log.warning("credential store failed (%s); using the cached credential of %s",
                        flight.error, entry.credential.customer_id)
            return entry.credential
        raise flight.error

    def fresh(self, certificate_id):
        """The cached credential while it is fresh, else None; never asks the store."""
        entry = self._fresh_entry(certificate_id)
        return None if entry is None else entry.credential

    def _fresh_entry(self, certificate_id):
        entry = self._entries.get(certificate_id)
        return entry if entry is not None and self._clock() < entry.fresh_until else None

    def _lead(self, certificate_id, flight, generation):
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

    def _store(self, certificate_id, credential):
        now = self._clock()
        ttl = self._ttl if credential is not None else self._negative_ttl
        self._entries[certificate_id] = _Entry(credential, now + ttl, now + ttl + self._stale_ttl)
        self._entries.move_to_end(certificate_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def evict(self, certificate_id=None):
        """Forget one certificate, or everything when ``certificate_id`` is None."""
        with self._lock:
            self._generation += 1
            if certificate_id is None:
                self._entries.clear()
            else:
                self._entries.pop(certificate_id, None)

    def __len__(self):
        return len(self._entries)


class ChangeListener:
    """Evicts changed customers from every cache as Postgres announces them.

    The schema's trigger notifies ``customer_changed`` with the certificate id (empty: evict
    everything). A change announced while no LISTEN is in force (before the first, or while the
    connection is down) is lost, so every cache is cleared each time LISTEN takes effect; in the
    meantime the cache TTLs bound staleness.
    """

    def __init__(self, settings, on_change, retry_delay=0.5):
        self._settings = settings
        self._on_change = on_change
        self._retry_delay = retry_delay
        self._stopped = threading.Event()
        self._failing = False
        self.listening = threading.Event()  # set while LISTEN is in force
        self.connection = None
        self._thread = threading.Thread(target=self._run, name="customer-changes", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self):
        while not self._stopped.is_set():
            try:
                self._listen()
            except (psycopg2.Error, OSError, ValueError) as error:
                if not self._failing:
                    log.warning("change listener lost its database connection (%s); retrying every %g s, "
                                "cache TTLs bound staleness meanwhile", describe(error), self._retry_delay)
                self._failing = True
            finally:
                if self.connection is not None:
                    self.connection.close()
                self.listening.clear()
            self._stopped.wait(self._retry_delay)

    def _listen(self):
        self.connection = connect(self._settings, application_name="customer_verification listener")
        self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANGES_CHANNEL}")
        # Whatever changed before this LISTEN was never announced, and a lookup may have cached
        # it meanwhile (at start as after a reconnect): only lookups from now on can be trusted.
        # Clearing also bumps the caches' generation, so a lookup still in flight is not stored.
        self._on_change(None)
        self.listening.set()
        if self._failing:
            log.warning("change listener reconnected; cached credentials cleared")
        self._failing = False
        while not self._stopped.is_set():
            # A bounded wait notices a dead server by the next poll, and stop() without delay.
            if select.select([self.connection], [], [], 1.0)[0]:
                self.connection.poll()
                while self.connection.notifies:
                    payload = self.connection.notifies.pop(0).payload
                    self._on_change(payload or None)


class Credentials:
    """The process's credential store: one pool and one listener, shared by every plugin
    instance's cache, created on first use."""

    _shared = None
    _shared_lock = threading.Lock()

    def __init__(self, settings):
        self.store = CustomerStore(settings)
        self._caches = weakref.WeakValueDictionary()  # settings -> CredentialCache
        self._caches_lock = threading.Lock()
        self.listener = ChangeListener(settings, self._evict)

    @classmethod
    def shared(cls):
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls(Settings.from_environment())
                cls._shared.listener.start()
                # Lookups made before LISTEN are cleared once it takes effect; waiting for it
                # (once per process, bounded) spares the first requests that second lookup.
                cls._shared.listener.listening.wait(cls._shared.store.settings.timeout)
            return cls._shared

    def cache(self, ttl, negative_ttl, stale_ttl, max_entries):
        """The cache for these settings, shared by every plugin instance that has them: Kong
        starts an instance per plugin entity in each of its workers, and a certificate should
        cost one lookup per TTL, not one per instance."""
        settings = (ttl, negative_ttl, stale_ttl, max_entries)
        with self._caches_lock:
            cache = self._caches.get(settings)
            if cache is None:
                cache = self._caches[settings] = CredentialCache(self.store.fetch, *settings)
        return cache

    def _evict(self, certificate_id):
        with self._caches_lock:
            caches = list(self._caches.values())
        for cache in caches:
            cache.evict(certificate_id)

    def close(self):
        self.listener.stop()
        self.store.close()
