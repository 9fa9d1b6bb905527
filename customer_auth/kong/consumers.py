"""Kong consumers of verified customers, remembered like credentials.

Kong finds a consumer with ``kong.client.load_consumer`` (one round trip). A customer maps to
one by ``consumer_by``, in order: ``id`` (the customer's uuid is the consumer's id) or
``username`` (the certificate id is the consumer's username); the answer, a consumer or none,
is kept for the credential cache's TTL, within its bound, so a cached customer costs no lookup.
"""

import time
import uuid

from customer_auth.core.expiring import ExpiringMap
from customer_auth.core.terms import BY_ID


class ConsumerMap:
    def __init__(self, consumer_by, ttl, max_entries, clock=time.monotonic):
        self.consumer_by = tuple(consumer_by)
        self._ttl = ttl
        self._clock = clock
        self._entries = ExpiringMap(max_entries)  # key -> consumer or None

    def for_customer(self, customer, load):
        """The customer's consumer, or None; ``load(key, by_username)`` asks Kong."""
        return self._remembered(
            ("customer", customer.customer_id, customer.certificate_id),
            lambda: self._find(customer, load),
        )

    def by_name(self, id_or_username, load):
        """A consumer named by its id or username (the ``anonymous`` setting), or None."""
        return self._remembered(("name", id_or_username), lambda: load(id_or_username, True))

    def _find(self, customer, load):
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

    def _remembered(self, key, find):
        found, consumer = self._entries.lookup(key, self._clock())
        if not found:
            consumer = find()
            self._entries.put(key, consumer, self._clock() + self._ttl)
        return consumer


def is_uuid(text):
    """Kong's test of a consumer key (utils.is_valid_uuid): a uuid in its canonical form."""
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, TypeError, AttributeError):
        return False
