"""Hears changes to the customer table (LISTEN/NOTIFY) and evicts them from the caches."""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable

import psycopg2

from customer_auth import metrics
from customer_auth.core.terms import LOGGER_NAME
from customer_auth.errors import CustomerAuthError
from customer_auth.store.connection import LISTENER, Connection, Settings, connect, describe

log = logging.getLogger(LOGGER_NAME)

CHANGES_CHANNEL = "customer_changed"
# The listener's echo channel: a notification it sends itself proves its LISTEN holds (_echo).
HEARTBEAT_CHANNEL = "customer_verification_heartbeat"

# Seconds of silence after which the listener checks its connection. With the database timeout
# (default 2 s, plus the half second a dead network is given) and the 1 s poll, a dead
# connection is replaced within about 7.5 s.
HEARTBEAT_INTERVAL = 4.0

# The primary's WAL position in bytes, at or past the end of every change committed so far. The
# insert position counts, since an asynchronous commit may not be written yet. At the very start
# of a WAL page it points past the page header (24 bytes, 40 on a segment's first page), where no
# record can end, while a standby's replay position stops at the end of the last record: the
# header is taken off, or an idle primary would hold every lookup on itself.
WAL_POSITION = """
    SELECT CASE WHEN mod(position, segment) = 40 THEN position - 40
                WHEN mod(position, page) = 24 THEN position - 24
                ELSE position END
      FROM (SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint AS position,
                   current_setting('wal_block_size')::bigint AS page,
                   pg_size_bytes(current_setting('wal_segment_size')) AS segment) AS wal
"""


class NoEcho(CustomerAuthError):
    """The listener's own notification did not come back: its LISTEN no longer holds."""


class ChangeListener:
    """Evicts changed customers from every cache as Postgres announces them.

    The schema's trigger notifies ``customer_changed`` with the certificate id (empty: evict
    everything); ``on_change(certificate_id or None, wal_position)`` hears each, with the primary's
    WAL position once it was committed (a hot standby must replay past it before its answer about
    that certificate counts). NOTIFY reaches sessions on the primary only, so the listener always
    connects to the primary, whatever the order of hosts. A change announced while no LISTEN is in
    force (before the first, or while the connection is down) is lost, so every cache is cleared
    each time LISTEN takes effect; in the meantime the cache TTLs bound staleness.
    """

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[str | None, int], None],
        on_lost: Callable[[], None] = lambda: None,
        retry_delay: float = 0.5,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._settings = settings
        self._on_change = on_change
        self._on_lost = on_lost
        self._retry_delay = retry_delay
        self._heartbeat_interval = heartbeat_interval
        self._stopped = threading.Event()
        self._failing = False
        self.listening = threading.Event()  # set while LISTEN is in force
        self.connection: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="customer-changes", daemon=True)

    def start(self) -> ChangeListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._listen()
            except NoEcho as error:
                self._lost(
                    "change listener heard no answer to its heartbeat (%s): its connection died "
                    "silently, or it goes through a pool that does not keep a session (PgBouncer "
                    "pool_mode=transaction cannot hold a LISTEN: give "
                    "CUSTOMER_VERIFICATION_LISTENER_URL "
                    "a direct or session-mode URL); reconnecting every %g s",
                    error,
                    self._retry_delay,
                )
            except (psycopg2.Error, OSError, ValueError) as error:
                self._lost(
                    "change listener lost its database connection (%s); retrying every %g s, "
                    "cache TTLs bound staleness meanwhile",
                    describe(error),
                    self._retry_delay,
                )
            finally:
                if self.connection is not None:
                    self.connection.close()
                self.listening.clear()
                metrics.LISTENER_CONNECTED.set(0)
            self._stopped.wait(self._retry_delay)

    def _lost(self, message: str, *args: object) -> None:
        """The connection is lost: one warning per outage, and the lookup pool's idle
        connections dropped with it."""
        if not self._failing:
            log.warning(message, *args)
            # What took this connection (a restart, a NAT that forgot it) most likely took the
            # idle ones of the lookup pool too: they go now, not one timeout per request later.
            self._on_lost()
        self._failing = True

    def _listen(self) -> None:
        self.connection = connection = connect(
            self._settings, LISTENER, application_name="customer_verification listener"
        )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANGES_CHANNEL}; LISTEN {HEARTBEAT_CHANNEL}")
        self._confirm_listening(connection)
        # Whatever changed before this LISTEN was never announced, and a lookup may have cached
        # it meanwhile (at start as after a reconnect): only lookups from now on can be trusted.
        # Clearing also bumps the caches' generation, so a lookup still in flight is not stored.
        self._on_change(None, _wal_position(connection))
        self.listening.set()
        metrics.LISTENER_CONNECTED.set(1)
        if self._failing:
            log.warning("change listener reconnected; cached credentials cleared")
        else:
            log.info("change listener listening on %s", CHANGES_CHANNEL)
        self._failing = False
        heard_at = time.monotonic()
        while not self._stopped.is_set():
            # A bounded wait notices a dead server by the next poll, and stop() without delay.
            if select.select([connection], [], [], 1.0)[0]:
                connection.poll()
                heard_at = time.monotonic()
            elif time.monotonic() - heard_at >= self._heartbeat_interval:
                # A half-open connection (a NAT or load balancer forgot it, a partition) brings
                # no error, only silence: the echo, or the wait callback's deadline, tells.
                self._echo(connection, connection)
                heard_at = time.monotonic()
            self._announce(connection, _take_changes(connection))

    def _confirm_listening(self, listener: Connection) -> None:
        """A notification sent from another session must reach this one while it is idle.

        Through a pool that lends a server session per transaction (PgBouncer's
        pool_mode=transaction) every query works, but between them the LISTEN is on a session
        nobody reads: the pool drops what it hears. Only such a test tells.
        """
        sender = connect(
            self._settings, LISTENER, application_name="customer_verification listener check"
        )
        try:
            sender.autocommit = True
            self._echo(listener, sender)
        finally:
            sender.close()

    def _echo(self, listener: Connection, sender: Connection) -> None:
        """Notifies the heartbeat channel through ``sender`` and waits for it on ``listener``,
        within the database timeout; NoEcho if it does not come."""
        token = f"{listener.get_backend_pid()}-{time.monotonic_ns()}"
        with sender.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (HEARTBEAT_CHANNEL, token))
        deadline = time.monotonic() + self._settings.timeout
        while not any(
            n.channel == HEARTBEAT_CHANNEL and n.payload == token for n in listener.notifies
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoEcho(f"none within {self._settings.timeout:g} s")
            if select.select([listener], [], [], remaining)[0]:
                listener.poll()

    def _announce(self, connection: Connection, changes: list[str | None]) -> None:
        if changes:
            wal_position = _wal_position(connection)  # after the commits: at or past each change
            for certificate_id in changes:
                self._on_change(certificate_id, wal_position)


def _take_changes(connection: Connection) -> list[str | None]:
    changes = [n.payload or None for n in connection.notifies if n.channel == CHANGES_CHANNEL]
    connection.notifies.clear()
    return changes


def _wal_position(connection: Connection) -> int:
    with connection.cursor() as cursor:
        cursor.execute(WAL_POSITION)
        row = cursor.fetchone()
    assert row is not None  # the statement always returns one row
    position: int = row[0]
    return position
