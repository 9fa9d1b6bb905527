"""A customer's credential, read from Postgres by certificate id."""
import dataclasses
import logging
import math
import time

import psycopg2
import psycopg2.errors

from customer_auth import metrics
from customer_auth.connection import Pool, StoreUnavailable, describe

log = logging.getLogger("customer_verification")

_LOOKUP = """
    SELECT uuid::text,
           authentication->'client_key',
           authentication->'previous_client_key',
           authentication->>'previous_key_expires_at'
      FROM customer
     WHERE certificate = %s
       AND authentication->>'revoked_at' IS NULL
     LIMIT 2
"""


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


class CustomerStore:
    """Looks customers up by certificate id in Postgres."""

    def __init__(self, settings):
        self.settings = settings
        self.pool = Pool(settings)
        self.queries = 0

    def fetch(self, certificate_id):
        """The customer's credential, or None if there is none; StoreUnavailable on failure."""
        started = time.perf_counter()
        try:
            rows = self._query(certificate_id)
        except StoreUnavailable:
            metrics.STORE_LOOKUPS_FAILED.inc()
            raise
        finally:
            metrics.STORE_LOOKUP_SECONDS.observe(time.perf_counter() - started)
        return self._credential(certificate_id, rows)

    def probe(self):
        """Raises StoreUnavailable unless the store answers a lookup now (one no certificate matches)."""
        self._query("")

    def _query(self, certificate_id):
        """A reused connection may have died with a database restart, and then its idle siblings
        did too: they are dropped and the lookup is retried once on a new connection, so a
        restart costs no request."""
        for attempt in (1, 2):
            reused = False
            try:
                with self.pool.connection(fresh=attempt == 2) as (conn, reused), conn.cursor() as cursor:
                    self.queries += 1
                    cursor.execute(_LOOKUP, (certificate_id,))
                    return cursor.fetchall()
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                if attempt == 2 or not reused or isinstance(error, psycopg2.errors.QueryCanceled):
                    raise StoreUnavailable(describe(error)) from None
                self.pool.close()
            except psycopg2.Error as error:
                raise StoreUnavailable(describe(error)) from None

    def _credential(self, certificate_id, rows):
        if len(rows) != 1:
            if rows:
                log.error("certificate id %r belongs to %d customers; refusing all of them",
                          certificate_id, len(rows))
            return None
        customer_id, client_key, previous_key, previous_expiry = rows[0]
        previous_expiry = _epoch_or_none(previous_expiry)
        if not _usable_key(client_key):
            return self._refuse(certificate_id, "client_key")
        if previous_key is not None and not _usable_key(previous_key):
            if previous_expiry is not None and time.time() < previous_expiry:
                return self._refuse(certificate_id, "previous_client_key")
            previous_key = None  # its grace period is over: it no longer matters
        return Credential(customer_id, client_key, previous_key, previous_expiry)

    @staticmethod
    def _refuse(certificate_id, field):
        """Logs why the customer cannot be used; None, as for a customer that does not exist."""
        log.error("certificate %r: authentication.%s is missing or not a non-blank string; the customer is "
                  "refused until it is fixed", certificate_id, field)
        return None

    def close(self):
        self.pool.close()


def _usable_key(value):
    # The JSON value as stored: false, 0, {} or " " must not become a key that anyone can guess.
    return isinstance(value, str) and bool(value.strip())


def _epoch_or_none(text):
    try:
        epoch = float(text)
    except (TypeError, ValueError):
        return None
    return epoch if math.isfinite(epoch) else None
