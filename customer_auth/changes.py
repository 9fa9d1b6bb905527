"""Hears changes to the customer table (LISTEN/NOTIFY) and evicts them from the caches."""
import logging
import select
import threading
import time

import psycopg2

from customer_auth import metrics
from customer_auth.connection import connect, describe

log = logging.getLogger("customer_verification")

CHANGES_CHANNEL = "customer_changed"

# Seconds of silence after which the listener checks its connection. With the database timeout
# (default 2 s) and the 1 s poll, a dead connection is replaced within about 8 s.
HEARTBEAT_INTERVAL = 5.0


class ChangeListener:
    """Evicts changed customers from every cache as Postgres announces them.

    The schema's trigger notifies ``customer_changed`` with the certificate id (empty: evict
    everything). A change announced while no LISTEN is in force (before the first, or while the
    connection is down) is lost, so every cache is cleared each time LISTEN takes effect; in the
    meantime the cache TTLs bound staleness.
    """

    def __init__(self, settings, on_change, retry_delay=0.5, heartbeat_interval=HEARTBEAT_INTERVAL):
        self._settings = settings
        self._on_change = on_change
        self._retry_delay = retry_delay
        self._heartbeat_interval = heartbeat_interval
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
                metrics.LISTENER_CONNECTED.set(0)
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
        metrics.LISTENER_CONNECTED.set(1)
        if self._failing:
            log.warning("change listener reconnected; cached credentials cleared")
        self._failing = False
        heard_at = time.monotonic()
        while not self._stopped.is_set():
            # A bounded wait notices a dead server by the next poll, and stop() without delay.
            if select.select([self.connection], [], [], 1.0)[0]:
                self.connection.poll()
                heard_at = time.monotonic()
            elif time.monotonic() - heard_at >= self._heartbeat_interval:
                # A connection that went half-open (a NAT or load balancer forgot it, a partition)
                # brings no error, only silence: ask, and the wait callback's deadline turns an
                # unanswered question into an error, hence a reconnect.
                with self.connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                heard_at = time.monotonic()
            while self.connection.notifies:
                payload = self.connection.notifies.pop(0).payload
                self._on_change(payload or None)
