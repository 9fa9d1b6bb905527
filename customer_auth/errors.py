"""Everything customer_auth raises, in one tree (pure: no driver, no Kong)::

    CustomerAuthError
    ├── SignatureError               a signature that cannot be accepted (core)
    │   ├── MalformedSignature       not of the form its scheme defines
    │   │   └── PolicyViolation      well formed, but not what the route requires
    │   ├── SignatureExpired         outside the allowed clock skew
    │   └── BadSignature             matches no key the customer may sign with
    ├── Rejection                    the verifier's answer to a request: status, message, reason
    ├── BodyError                    the body cannot be had as the signature needs it
    │   ├── BodyTooLarge             more than max_body_size bytes
    │   └── BodyIncomplete           the client stopped sending it
    ├── StoreUnavailable             the database cannot answer now (store)
    ├── CustomerError                a change the customer table refuses (store)
    │   ├── CertificateExists        add: the certificate has a customer
    │   │   └── CertificateRevoked   ... a revoked one (restore brings it back)
    │   ├── NoActiveCustomer         rotate, revoke: no active customer has it
    │   ├── OtherKeyKind             rotate: the customer has the other kind of key
    │   └── StillRotating            rotate: an earlier rotation's previous key still works
    ├── ConfigurationError           a setting that cannot work; ``name`` says which
    │   ├── InvalidOption            a plugin or middleware option (the schema's rules)
    │   └── InvalidSettings          the database settings from the environment
    ├── StreamingBody                a client asked to sign a body it cannot read first
    ├── PDKError                     a PDK call answered with an error (Lua-style returns)
    └── MalformedMessage             not a message Kong sends on the plugin server's socket

Each carries what its catcher needs: a Rejection its answer, a ConfigurationError the name of
what to fix. ConfigurationError and StreamingBody are also ValueError and TypeError, what
Python code expects of a bad argument.
"""

from __future__ import annotations


class CustomerAuthError(Exception):
    """The base of everything customer_auth raises."""


class SignatureError(CustomerAuthError):
    """The request's signature cannot be accepted."""


class MalformedSignature(SignatureError):
    """A signature header is not of the form the scheme defines."""


class PolicyViolation(MalformedSignature):
    """A well-formed signature that does not meet the route's policy (what it must cover)."""


class SignatureExpired(SignatureError):
    """The request time is outside the allowed clock skew."""


class BadSignature(SignatureError):
    """The signature does not match any key the customer may sign with."""


class Rejection(CustomerAuthError):
    """A request that gets its answer from the verifier: one status and one message per case."""

    # by status: the requests_total label
    OUTCOMES = {400: "malformed", 403: "unverified", 413: "too_large", 503: "unavailable"}

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        outcome: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.message = message  # for the client
        self.reason = reason  # for the log
        self.outcome = outcome or self.OUTCOMES[status]
        self.headers = headers or {}  # response headers, e.g. Accept-Signature


class BodyError(CustomerAuthError):
    """The body cannot be had as the signature needs it."""


class BodyTooLarge(BodyError):
    """The request body is larger than the verification may read."""


class BodyIncomplete(BodyError):
    """The client stopped sending before its body was complete."""


class StoreUnavailable(CustomerAuthError):
    """The store cannot answer now; the message says why, never with a secret."""


class CustomerError(CustomerAuthError):
    """A change the customer table refuses; the message names the certificate."""


class CertificateExists(CustomerError):
    """The certificate already has a customer."""


class CertificateRevoked(CertificateExists):
    """The certificate has a customer, revoked: ``restore`` brings it back."""


class StillRotating(CustomerError):
    """A second rotation within the first's grace period would end its previous key at once."""


class NoActiveCustomer(CustomerError):
    """No active (unrevoked) customer has the certificate."""


class OtherKeyKind(CustomerError):
    """A rotation to a client key for a public-key customer, or the other way round."""


class ConfigurationError(CustomerAuthError, ValueError):
    """A setting that cannot work; ``name`` is the option or variable to fix."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class InvalidOption(ConfigurationError):
    """An option's value that the schema refuses (customer_auth/core/options.py)."""

    @property
    def option(self) -> str:
        return self.name


class InvalidSettings(ConfigurationError):
    """The database settings cannot work. Its message names the problem and never quotes the
    URL: libpq's own messages for these cases quote it, password included."""

    def __init__(self, reason: str, name: str = "DATABASE_URL") -> None:
        super().__init__(name, reason)

    def __str__(self) -> str:
        return self.reason


class StreamingBody(CustomerAuthError, TypeError):
    """A request whose body is a stream that cannot be read first: its digest needs every byte."""


class PDKError(CustomerAuthError):
    """A PDK call answered with an error (kong-pdk's Lua-style ``(value, err)`` return)."""


class MalformedMessage(CustomerAuthError):
    """Not a MessagePack-RPC request Kong would send: the connection ends."""
