"""Kong consumers of verified customers, remembered like credentials.

Kong finds a consumer with ``kong.client.load_consumer`` (one round trip). A customer maps to
one by ``consumer_by``, in order: ``id`` (the customer's uuid is the consumer's id) or
``username`` (the certificate id is the consumer's username); the answer, a consumer or none,
is kept for the credential cache's TTL, within its bound, so a cached customer costs no lookup.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from customer_auth.core.credential import Customer
from customer_auth.core.expiring import ExpiringMap
from customer_auth.core.terms import BY_ID

Consumer = dict[str, Any]  # a Kong consumer entity
Load = Callable[[str, bool], Consumer | None]  # Kong's load_consumer(key, by_username)


class ConsumerMap:
    def __init__(
        self,
        consumer_by: Sequence[str],
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer_by = tuple(consumer_by)
        self._ttl = ttl
        self._clock = clock
        self._entries = ExpiringMap(max_entries)  # key -> consumer or None

    def for_customer(self, customer: Customer, load: Load) -> Consumer | None:
        """The customer's consumer, or None; ``load(key, by_username)`` asks Kong."""
        return self._remembered(
            ("customer", customer.customer_id, customer.certificate_id),
            lambda: self._find(customer, load),
        )

    def by_name(self, id_or_username: str, load: Load) -> Consumer | None:
        """A consumer named by its id or username (the ``anonymous`` setting), or None."""
        return self._remembered(("name", id_or_username), lambda: load(id_or_username, True))

    def _find(self, customer: Customer, load: Load) -> Consumer | None:
        for way in self.consumer_by:
            if way == BY_ID:
                consumer = load(customer.customer_id, False)
            else:
                consumer = load(customer.certificate_id, True)
                # Kong tries a uuid key as an id first: a certificate id that is another
                # consumer's id must not land on that consumer.
                if consumer and consumer.get("username") != customer.certificate_id:
                    consumer = None
            if consumer:
                return consumer
        return None

    def _remembered(
        self, key: tuple[str, ...], find: Callable[[], Consumer | None]
    ) -> Consumer | None:
        found, remembered = self._entries.lookup(key, self._clock())
        if found:
            known: Consumer | None = remembered
            return known
        consumer = find()
        self._entries.put(key, consumer, self._clock() + self._ttl)
        return consumer


def is_uuid(text: object) -> bool:
    """Kong's test of a consumer key (utils.is_valid_uuid): a uuid in its canonical form."""
    try:
        return isinstance(text, str) and str(uuid.UUID(text)) == text.lower()
    except (ValueError, TypeError, AttributeError):
        return False
