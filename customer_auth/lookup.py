"""A customer's credential, read from Postgres by certificate id."""

import base64
import binascii
import dataclasses
import logging
import math
import time

from customer_auth import metrics
from customer_auth.connection import PRIMARY, Pool, StoreUnavailable
from customer_auth.replication import ReplayFloors
from customer_auth.terms import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

# One row at least: how far this server has replayed the primary's WAL (NULL on the primary),
# then the customers holding the certificate, if any.
_LOOKUP = """
    SELECT server.replayed, found.*
      FROM (SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0')::bigint END
                   AS replayed) AS server
      LEFT JOIN LATERAL (
            SELECT uuid::text,
                   authentication->'client_key',
                   authentication->'previous_client_key',
                   authentication->>'previous_key_expires_at',
                   authentication->'public_key',
                   authentication->'previous_public_key'
              FROM customer
             WHERE certificate = %s
               AND authentication->>'revoked_at' IS NULL
             LIMIT 2) AS found ON true
"""


@dataclasses.dataclass(frozen=True)
class Credential:
    """A customer's keys: a shared secret (``client_key``, for v1 and RFC 9421 hmac-sha256) or an
    ed25519 public key (RFC 9421 only; the gateway then holds nothing that can sign), each with
    the key it replaced, valid until ``previous_key_expires_at``."""

    customer_id: str
    client_key: str = None
    previous_client_key: str = None
    previous_key_expires_at: float = None
    public_key: bytes = None  # raw, 32 bytes
    previous_public_key: bytes = None

    def keys_valid_at(self, now):
        """The secrets a signature may be made with at ``now``: during a rotation's grace period
        the previous one still counts, so clients can roll over without downtime."""
        return self._valid(self.client_key, self.previous_client_key, now)

    def public_keys_valid_at(self, now):
        return self._valid(self.public_key, self.previous_public_key, now)

    def keys_valid_until(self, now):
        """When the keys valid at ``now`` stop being the answer: the end of a grace period."""
        return self.previous_key_expires_at if self._in_grace_period(now) else math.inf

    def _valid(self, current, previous, now):
        keys = (
            (current, previous)
            if previous is not None and self._in_grace_period(now)
            else (current,)
        )
        return tuple(key for key in keys if key is not None)

    def _in_grace_period(self, now):
        return bool(self.previous_key_expires_at and now < self.previous_key_expires_at)


class CustomerStore:
    """Looks customers up by certificate id in Postgres."""

    def __init__(self, settings):
        self.settings = settings
        self.pool = Pool(settings)  # a standby when there is one
        # For the few lookups a lagging standby cannot answer: rarely busy, so a small share.
        self.primary_pool = Pool(settings, PRIMARY, size=max(1, settings.pool_size // 2))
        self.replay_floors = ReplayFloors()
        self.queries = 0

    def fetch(self, certificate_id):
        """The customer's credential, or None if there is none; StoreUnavailable on failure."""
        started = time.perf_counter()
        try:
            replayed, rows = self._query(self.pool, certificate_id)
            if replayed is not None:  # a standby answered
                if replayed < self.replay_floors.required(certificate_id):
                    # It has not replayed a change the listener heard of: its answer is older.
                    _, rows = self._query(self.primary_pool, certificate_id)
                else:
                    self.replay_floors.reached(certificate_id, replayed)
        except StoreUnavailable:
            metrics.STORE_LOOKUPS_FAILED.inc()
            raise
        finally:
            metrics.STORE_LOOKUP_SECONDS.observe(time.perf_counter() - started)
        return self._credential(certificate_id, rows)

    def probe(self):
        """Raises StoreUnavailable unless the store answers a lookup now (one that matches no
        certificate)."""
        self._query(self.pool, "")

    def _query(self, pool, certificate_id):
        """``(replayed, rows)``: the server's replay position (None on a primary), the customers."""
        self.queries += 1
        rows = pool.fetch_all(_LOOKUP, (certificate_id,))
        return rows[0][0], [row[1:] for row in rows if row[1] is not None]

    def _credential(self, certificate_id, rows):
        if len(rows) != 1:
            if rows:
                log.error(
                    "certificate id %r belongs to %d customers; refusing all of them",
                    certificate_id,
                    len(rows),
                )
            return None
        customer_id, client_key, previous_key, previous_expiry, public_key, previous_public_key = (
            rows[0]
        )
        previous_expiry = _epoch_or_none(previous_expiry)
        in_grace_period = previous_expiry is not None and time.time() < previous_expiry
        try:
            keys = {
                "client_key": _secret(client_key, "client_key"),
                "public_key": _public_key(public_key, "public_key"),
            }
            if keys == {"client_key": None, "public_key": None}:
                raise _UnusableKey("client_key")
            if in_grace_period:  # a previous key only matters until its grace period ends
                keys["previous_client_key"] = _secret(previous_key, "previous_client_key")
                keys["previous_public_key"] = _public_key(
                    previous_public_key, "previous_public_key"
                )
        except _UnusableKey as field:
            log.error(
                "certificate %r: authentication.%s is missing or not a usable key (a non-blank "
                "string, or "
                "an ed25519 public key in base64); the customer is refused until it is fixed",
                certificate_id,
                field,
            )
            return None
        return Credential(customer_id, previous_key_expires_at=previous_expiry, **keys)

    def close(self):
        self.pool.close()
        self.primary_pool.close()


class _UnusableKey(Exception):
    """The named field of ``authentication`` holds something that is not a key."""


def _secret(value, field):
    # The JSON value as stored: false, 0, {} or " " must not become a key that anyone can guess.
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _UnusableKey(field)
    return value


def _public_key(value, field):
    """A raw ed25519 public key from its base64 (how ``customer-verification`` stores it)."""
    if value is None:
        return None
    try:
        key = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise _UnusableKey(field)
    return key


def _epoch_or_none(text):
    try:
        epoch = float(text)
    except (TypeError, ValueError):
        return None
    return epoch if math.isfinite(epoch) else None
