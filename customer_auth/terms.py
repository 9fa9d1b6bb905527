"""The terms every part of the runtime shares: the logger operators read, the signature schemes,
and the one tree of signature errors (pure: clients import it without Kong or a database)."""

LOGGER_NAME = "customer_verification"  # the plugin server's logger; warnings reach Kong's log

# The signature schemes: the client-* headers, and HTTP Message Signatures.
V1, RFC9421 = "v1", "rfc9421"


class SignatureError(Exception):
    """The request's signature cannot be accepted."""


class MalformedSignature(SignatureError):
    """A signature header is not of the form the scheme defines."""


class SignatureExpired(SignatureError):
    """The request time is outside the allowed clock skew."""


class BadSignature(SignatureError):
    """The signature does not match any key the customer may sign with."""


MAX_CERTIFICATE_ID = 256


def parse_certificate_id(text: str) -> str:
    # Visible ASCII only (printable ASCII is 0x20-0x7e, then no space): header values are Latin-1
    # on the wire, and a bound keeps hostile input away from the database and the logs. No comma:
    # a server may join two lines of a header with one (RFC 9110), and two ids must not pass as one.
    if not (
        0 < len(text) <= MAX_CERTIFICATE_ID
        and text.isascii()
        and text.isprintable()
        and " " not in text
        and "," not in text
    ):
        raise MalformedSignature(
            f"certificate id must be 1 to {MAX_CERTIFICATE_ID} visible ASCII characters, no comma"
        )
    return text
