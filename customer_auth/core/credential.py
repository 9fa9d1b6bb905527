"""The domain's types: a customer's credential (the keys its requests may be signed with, and
when) and a verified Customer."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, TypeVar

Key = TypeVar("Key", str, bytes)


@dataclasses.dataclass(frozen=True)
class Credential:
    """A customer's keys: a shared secret (``client_key``, for v1 and RFC 9421 hmac-sha256) or an
    ed25519 public key (RFC 9421 only; the gateway then holds nothing that can sign), each with
    the key it replaced, valid until ``previous_key_expires_at``."""

    customer_id: str
    client_key: str | None = None
    previous_client_key: str | None = None
    previous_key_expires_at: float | None = None
    public_key: bytes | None = None  # raw, 32 bytes
    previous_public_key: bytes | None = None

    def keys_valid_at(self, now: float) -> tuple[str, ...]:
        """The secrets a signature may be made with at ``now``: during a rotation's grace period
        the previous one still counts, so clients can roll over without downtime."""
        return self._valid(self.client_key, self.previous_client_key, now)

    def public_keys_valid_at(self, now: float) -> tuple[bytes, ...]:
        return self._valid(self.public_key, self.previous_public_key, now)

    def keys_valid_until(self, now: float) -> float:
        """When the keys valid at ``now`` stop being the answer: the end of a grace period."""
        expiry = self.previous_key_expires_at
        return expiry if expiry is not None and self._in_grace_period(now) else math.inf

    def _valid(self, current: Key | None, previous: Key | None, now: float) -> tuple[Key, ...]:
        keys = (
            (current, previous)
            if previous is not None and self._in_grace_period(now)
            else (current,)
        )
        return tuple(key for key in keys if key is not None)

    def _in_grace_period(self, now: float) -> bool:
        return bool(self.previous_key_expires_at and now < self.previous_key_expires_at)


class Customer(NamedTuple):
    """A verified caller."""

    customer_id: str
    certificate_id: str
