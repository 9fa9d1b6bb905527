"""The customer table: a customer's credential read by certificate id (the plugin's lookups),
and the ``authentication`` document written (the operator's command). Its layout is known here
only: ``client_key`` or ``public_key``, ``previous_*`` with ``previous_key_expires_at`` during a
rotation, ``revoked_at``."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import secrets
import time
from typing import Any

import psycopg2.errors

from customer_auth import metrics
from customer_auth.core.credential import Credential
from customer_auth.core.terms import LOGGER_NAME
from customer_auth.errors import (
    CertificateExists,
    CertificateRevoked,
    CustomerAuthError,
    NoActiveCustomer,
    OtherKeyKind,
    StillRotating,
    StoreUnavailable,
)
from customer_auth.store.connection import PRIMARY, Connection, Pool, Settings
from customer_auth.store.replication import ReplayFloors

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

Row = tuple[Any, ...]  # a customer as _LOOKUP returns it


class CustomerStore:
    """Looks customers up by certificate id in Postgres."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = Pool(settings)  # a standby when there is one
        # For the few lookups a lagging standby cannot answer: rarely busy, so a small share.
        self.primary_pool = Pool(settings, PRIMARY, size=max(1, settings.pool_size // 2))
        self.replay_floors = ReplayFloors()
        self.queries = 0

    def fetch(self, certificate_id: str) -> Credential | None:
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

    def probe(self) -> None:
        """Raises StoreUnavailable unless the store answers a lookup now (one that matches no
        certificate)."""
        self._query(self.pool, "")

    def _query(self, pool: Pool, certificate_id: str) -> tuple[int | None, list[Row]]:
        """``(replayed, rows)``: the server's replay position (None on a primary), the customers."""
        self.queries += 1
        rows = pool.fetch_all(_LOOKUP, (certificate_id,))
        return rows[0][0], [row[1:] for row in rows if row[1] is not None]

    def _credential(self, certificate_id: str, rows: list[Row]) -> Credential | None:
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
        expiry = _epoch_or_none(previous_expiry)
        in_grace_period = expiry is not None and time.time() < expiry
        try:
            secret = _secret(client_key, "client_key")
            key = _public_key(public_key, "public_key")
            if secret is None and key is None:
                raise _UnusableKey("client_key")
            # a previous key only matters until its grace period ends
            previous_secret = (
                _secret(previous_key, "previous_client_key") if in_grace_period else None
            )
            previous_public = (
                _public_key(previous_public_key, "previous_public_key") if in_grace_period else None
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
        return Credential(customer_id, secret, previous_secret, expiry, key, previous_public)

    def close(self) -> None:
        self.pool.close()
        self.primary_pool.close()


class _UnusableKey(CustomerAuthError):
    """The named field of ``authentication`` holds something that is not a key."""


def _secret(value: object, field: str) -> str | None:
    # The JSON value as stored: false, 0, {} or " " must not become a key that anyone can guess.
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _UnusableKey(field)
    return value


def _public_key(value: object, field: str) -> bytes | None:
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


def _epoch_or_none(text: object) -> float | None:
    try:
        epoch = float(text)  # type: ignore[arg-type]  # whatever was stored: refused below
    except (TypeError, ValueError):
        return None
    return epoch if math.isfinite(epoch) else None


# -- writes: the operator's command (customer_auth/cli.py) ------------------------------


def new_client_key() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def add_customer(
    conn: Connection, certificate_id: str, public_key: bytes | None = None
) -> tuple[str, str | None]:
    """Creates a customer; returns ``(customer_id, client_key)``. With ``public_key`` (raw ed25519
    bytes) the customer signs with its private key and has no client key (None)."""
    client_key = None if public_key else new_client_key()
    authentication = (
        {"public_key": base64.b64encode(public_key).decode()}
        if public_key
        else {"client_key": client_key}
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO customer (certificate, authentication) VALUES (%s, %s) RETURNING "
                "uuid::text",
                (certificate_id, json.dumps(authentication)),
            )
            (customer_id,) = cursor.fetchone() or ("",)
            return customer_id, client_key
    except psycopg2.errors.UniqueViolation:
        if _revoked(conn, certificate_id):
            raise CertificateRevoked(
                f"certificate {certificate_id!r} exists and is revoked (restore brings it back)"
            ) from None
        raise CertificateExists(f"certificate {certificate_id!r} already exists") from None


def _revoked(conn: Connection, certificate_id: str) -> bool:
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM customer WHERE certificate = %s AND authentication ? 'revoked_at'",
            (certificate_id,),
        )
        return cursor.fetchone() is not None


def rotate_key(
    conn: Connection,
    certificate_id: str,
    grace: float,
    now: float | None = None,
    public_key: bytes | None = None,
    force: bool = False,
) -> str | None:
    """Gives the customer a new key of the kind it has (a new random client key, or the given
    ed25519 ``public_key``); the current one keeps working for ``grace`` seconds. Returns the new
    client key (None for a public key). Within an earlier rotation's grace period the previous
    key it kept would stop working at once: StillRotating unless ``force``."""
    field, new_key = (
        ("public_key", base64.b64encode(public_key).decode())
        if public_key
        else ("client_key", new_client_key())
    )
    now = time.time() if now is None else now
    expires_at = now + grace
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT (authentication->>'previous_key_expires_at')::float8 FROM customer "
            "WHERE certificate = %s AND authentication->>'revoked_at' IS NULL",
            (certificate_id,),
        )
        row = cursor.fetchone()
        if row and row[0] is not None and row[0] > now and not force:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row[0]))
            raise StillRotating(
                f"certificate {certificate_id!r} is still rotating: its previous key works until "
                f"{until}, and a second rotation would end that now"
            )
        cursor.execute(
            """UPDATE customer
                  SET authentication = authentication || jsonb_build_object(
                          %(field)s, %(key)s::text,
                          'previous_' || %(field)s, authentication->%(field)s,
                          'previous_key_expires_at', %(expires)s::float8)
                WHERE certificate = %(certificate)s AND authentication->>'revoked_at' IS NULL
                  AND authentication ? %(field)s
            RETURNING 1""",
            {"field": field, "key": new_key, "expires": expires_at, "certificate": certificate_id},
        )
        if cursor.rowcount == 0:
            cursor.execute(
                "SELECT 1 FROM customer WHERE certificate = %s AND authentication->>'revoked_at' "
                "IS NULL",
                (certificate_id,),
            )
            if cursor.fetchone():
                other = "a client key" if public_key else "a public key"
                raise OtherKeyKind(f"certificate {certificate_id!r} has {other}")
            raise NoActiveCustomer(f"no active customer has certificate {certificate_id!r}")
    return None if public_key else new_key


def revoke(conn: Connection, certificate_id: str, now: float | None = None) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            """UPDATE customer
                  SET authentication = authentication
                                       || jsonb_build_object('revoked_at', %s::float8)
                WHERE certificate = %s AND authentication->>'revoked_at' IS NULL""",
            (time.time() if now is None else now, certificate_id),
        )
        if cursor.rowcount == 0:
            raise NoActiveCustomer(f"no active customer has certificate {certificate_id!r}")


def restore(conn: Connection, certificate_id: str, new_key: bool = False) -> str | None:
    """Brings a revoked customer back, with the keys it had or (``new_key``, for a customer
    with a client key) a new client key, returned."""
    key = new_client_key() if new_key else None
    with conn.cursor() as cursor:
        if key is None:
            cursor.execute(
                "UPDATE customer SET authentication = authentication - 'revoked_at' "
                "WHERE certificate = %s AND authentication ? 'revoked_at'",
                (certificate_id,),
            )
        else:
            cursor.execute(
                """UPDATE customer
                      SET authentication = authentication - 'revoked_at'
                          - 'previous_client_key' - 'previous_key_expires_at'
                          || jsonb_build_object('client_key', %s::text)
                    WHERE certificate = %s AND authentication ? 'revoked_at'
                      AND authentication ? 'client_key'""",
                (key, certificate_id),
            )
        if cursor.rowcount == 0:
            raise NoActiveCustomer(
                f"no revoked customer with {'a client key ' if key else ''}has certificate "
                f"{certificate_id!r}"
            )
    return key


def list_customers(conn: Connection, now: float | None = None) -> list[tuple[str, str, str]]:
    """Rows of ``(customer_id, certificate_id, status)``; keys are never read out."""
    now = time.time() if now is None else now
    with conn.cursor() as cursor:
        cursor.execute("""SELECT uuid::text, certificate, authentication->>'revoked_at',
                                 authentication->>'previous_key_expires_at'
                            FROM customer ORDER BY certificate""")
        rows = cursor.fetchall()
    return [
        (customer_id, certificate_id, _status(revoked_at, previous_expiry, now))
        for customer_id, certificate_id, revoked_at, previous_expiry in rows
    ]


def _status(revoked_at: str | None, previous_expiry: str | None, now: float) -> str:
    if revoked_at is not None:
        return "revoked"
    if previous_expiry is None:
        return "active"
    try:
        if float(previous_expiry) > now:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(previous_expiry)))
            return f"rotating (previous key until {until})"
    except (TypeError, ValueError, OverflowError, OSError):
        # Written by hand, not by this tool (a string, infinity, a year past 9999): shown as stored.
        return f"active (unreadable previous_key_expires_at: {previous_expiry})"
    return "active"
