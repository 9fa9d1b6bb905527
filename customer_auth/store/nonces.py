"""RFC 9421 nonces, each accepted once across the cluster while its signature is fresh (the
route option ``replay_protection``).

Every node shares the customers database, so the primary decides: one statement per protected
request claims the (certificate, nonce) pair in the table ``customer_nonce`` (customer_schema.sql)
and removes a few that have expired, so no cron is needed. A pair this node has claimed or seen
refused is refused again from memory, without the round trip. Nothing else of the request is
stored.
"""

from __future__ import annotations

import secrets
import time

from customer_auth.core.expiring import ExpiringMap
from customer_auth.store.connection import PRIMARY, Pool, Settings

# Through a function the plugin's role may only execute (customer_nonce_claim): it inserts and
# expires, and nothing else can be done with the table.
_CLAIM = "SELECT customer_nonce_claim(%s, %s, %s, %s)"

# A nonce stays claimed this long past its signature's window: the primary expires rows by its
# own clock, which may run a little ahead of the gateways'.
CLOCK_MARGIN = 60.0
MAX_REMEMBERED = 32768  # pairs per process (a few MiB); beyond it the oldest are forgotten here


class NonceStore:
    """Claims nonces on the primary, remembering what this process has seen."""

    def __init__(self, settings: Settings, max_remembered: int = MAX_REMEMBERED) -> None:
        self.pool = Pool(settings, PRIMARY, size=max(1, settings.pool_size // 2))
        # Pairs claimed or refused here, until they expire; apart from the credential cache, so a
        # flood of fresh nonces (which needs a key: only verified signatures get here) evicts no
        # customer.
        self.seen = ExpiringMap(max_remembered)
        self.claims = 0  # statements sent to the primary

    def claim(
        self, certificate_id: str, nonce: str, fresh_until: float, now: float | None = None
    ) -> bool:
        """True for the first use of ``nonce`` with this certificate until ``fresh_until`` (epoch
        seconds: the end of its signature's window), False for any other; StoreUnavailable when
        the primary cannot say."""
        if self.seen_here(certificate_id, nonce, now):
            return False
        expires_at = fresh_until + CLOCK_MARGIN
        self.claims += 1
        # The pool sends the claim again on a new connection when a reused one dies; the token
        # makes a claim whose first answer was lost (after its commit) find its own row. A claim
        # that gets no answer at all is StoreUnavailable: the request gets 503, and its nonce may
        # be spent (a client signs a retry anew).
        token = secrets.token_hex(8)
        ((claimed,),) = self.pool.fetch_all(_CLAIM, (certificate_id, nonce, expires_at, token))
        self.seen.put((certificate_id, nonce), True, expires_at)
        return bool(claimed)

    def seen_here(self, certificate_id: str, nonce: str, now: float | None = None) -> bool:
        """Whether this process has claimed or seen refused the pair, and it has not expired."""
        now = time.time() if now is None else now
        found: bool = self.seen.lookup((certificate_id, nonce), now)[0]
        return found

    def close(self) -> None:
        self.pool.close()
