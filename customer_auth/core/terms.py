"""The terms every part of the runtime shares: the logger operators read, the signature schemes,
the ways to a Kong consumer, the certificate id rule (pure: clients import it without Kong or a
database)."""

from customer_auth.errors import MalformedSignature

LOGGER_NAME = "customer_verification"  # the plugin server's logger; warnings reach Kong's log

# The signature schemes: the client-* headers, and HTTP Message Signatures.
V1, RFC9421 = "v1", "rfc9421"


# How a verified customer maps to a Kong consumer (the option consumer_by).
BY_ID, BY_USERNAME = "id", "username"

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
