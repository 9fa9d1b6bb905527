"""customer-verification: add, rotate, revoke and list customers, and sign requests.

The database comes from the environment as for the plugin (``DATABASE_URL`` or ``PG*``), with a
role that may write the customer table. Keys are printed once, by ``add`` and ``rotate``.
Exit codes: 0 done, 2 bad usage or settings, 3 certificate already exists, 4 no such certificate,
5 database unreachable, refusing or failing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import shlex
import sys
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from customer_auth import client, errors
from customer_auth.core import v1
from customer_auth.errors import (
    CertificateExists,
    CustomerAuthError,
    InvalidSettings,
    NoActiveCustomer,
    OtherKeyKind,
    StillRotating,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from customer_auth.store.connection import Connection

DEFAULT_GRACE = 24 * 3600
# a rotation is meant to end: longer would keep an old key alive for good
MAX_GRACE = 30 * 24 * 3600

EXIT_USAGE, EXIT_EXISTS, EXIT_UNKNOWN, EXIT_DATABASE = 2, 3, 4, 5

DATABASE_HELP = """\
database: DATABASE_URL (postgresql://user:password@host:port/database), or libpq's PGHOST,
  PGUSER, PGPASSWORD, ... (and CUSTOMER_VERIFICATION_ENV_FILE, a dotenv file setting them).
  add, rotate, revoke and list need the admin role that owns the customer table (the plugin's
  read-only role may only read it); sign needs no database.

exit codes: 0 done, 2 bad usage or settings, 3 certificate already exists,
  4 no such certificate, 5 database unreachable, refusing or failing."""


class Failure(CustomerAuthError):
    """The command fails with ``exit_code``, saying ``message``."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters and non-ASCII are shown escaped."""
    return (
        text
        if text.isascii() and text.isprintable()
        else text.encode("unicode_escape").decode("ascii")
    )


def certificate_id(text: str) -> str:
    """An argparse type: the plugin's own rule for a certificate id."""
    try:
        return v1.parse_certificate_id(text)
    except errors.MalformedSignature as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def grace_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds from 0 to MAX_GRACE."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_GRACE:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to {MAX_GRACE}")
    return seconds


def curl_command(
    headers: Mapping[str, str], method: str, url: str, body_file: str | None = None
) -> str:
    parts = [
        "curl",
        "-sS",
        "-X",
        method,
        *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")),
    ]
    if body_file:
        parts += ["--data-binary", f"@{body_file}"]
    parts.append(url)
    return " ".join(shlex.quote(part) for part in parts)


def header_line(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME: VALUE``."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or not name.strip().replace("-", "").isalnum():
        raise argparse.ArgumentTypeError("expected 'NAME: VALUE'")
    return name.strip(), value.strip()


def client_key_text(text: str) -> str:
    """An argparse type: a client key is never empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


CERTIFICATE_HELP = (
    "the customer's certificate id (what its requests name as keyid or client-certificate-id)"
)


class _Parser(argparse.ArgumentParser):
    """The command's and each subcommand's parser: the epilog on the database and exit codes."""

    def __init__(self, **options: Any) -> None:
        super().__init__(
            epilog=DATABASE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter, **options
        )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="customer-verification", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {importlib.metadata.version('customer-verification')}",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    public_key_help = (
        "an ed25519 public key file (PEM, or base64 of the raw key) instead of a shared secret"
    )
    add = commands.add_parser(
        "add", help="create a customer with a new random key, or a public key"
    )
    add.add_argument("certificate_id", type=certificate_id, help=CERTIFICATE_HELP)
    add.add_argument("--public-key", metavar="FILE", type=public_key_file, help=public_key_help)
    rotate = commands.add_parser("rotate", help="give a customer a new key (of the kind it has)")
    rotate.add_argument("certificate_id", type=certificate_id, help=CERTIFICATE_HELP)
    rotate.add_argument(
        "--grace",
        type=grace_seconds,
        default=DEFAULT_GRACE,
        help="seconds the previous key keeps working (default: %(default)s)",
    )
    rotate.add_argument(
        "--public-key", metavar="FILE", type=public_key_file, help="the new " + public_key_help
    )
    rotate.add_argument(
        "--force",
        action="store_true",
        help="rotate within an earlier rotation's grace period, ending its previous key now",
    )
    commands.add_parser("revoke", help="stop accepting a customer's requests").add_argument(
        "certificate_id", type=certificate_id, help=CERTIFICATE_HELP
    )
    restore = commands.add_parser("restore", help="accept a revoked customer's requests again")
    restore.add_argument("certificate_id", type=certificate_id, help=CERTIFICATE_HELP)
    restore.add_argument(
        "--new-key", action="store_true", help="with a new client key instead of the one it had"
    )
    commands.add_parser("list", help="list customers (never their keys)")
    sign = commands.add_parser(
        "sign", help="print the signature headers (RFC 9421), or a curl command, for a request"
    )
    sign.add_argument("certificate_id", type=certificate_id, help=CERTIFICATE_HELP)
    key = sign.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--key", type=client_key_text, help="the client key ('-' reads it from standard input)"
    )
    key.add_argument(
        "--private-key", metavar="FILE", type=private_key_file, help="an ed25519 private key (PEM)"
    )
    target = sign.add_mutually_exclusive_group()
    target.add_argument(
        "--url",
        default="http://localhost:8000/echo",
        help="the request's URL: its path and query are signed (default: %(default)s)",
    )
    sign.add_argument("--method", default="GET", help="the request's method (default: %(default)s)")
    sign.add_argument(
        "--body", metavar="FILE", type=argparse.FileType("rb"), help="the request's body"
    )
    target.add_argument(
        "--curl",
        metavar="URL",
        help="print a ready curl command for URL (its path and query "
        "are signed) instead of headers; instead of --url",
    )
    sign.add_argument(
        "--v1", action="store_true", help="the three client-* headers (no method, path or body)"
    )
    sign.add_argument(
        "--header",
        metavar="'NAME: VALUE'",
        type=header_line,
        action="append",
        default=[],
        help="a header the request carries (repeatable)",
    )
    sign.add_argument(
        "--cover",
        metavar="NAME",
        type=str.lower,
        action="append",
        default=[],
        help="a header the signature covers besides method, path, query and body (repeatable)",
    )
    sign.add_argument(
        "--no-nonce",
        dest="nonce",
        action="store_false",
        help="no nonce in the signature (by default a random one, as replay_protection requires)",
    )
    return parser


def public_key_file(path: str) -> bytes:
    """An argparse type: the raw ed25519 public key in ``path``."""
    try:
        with open(path, encoding="ascii") as key_file:
            return client.load_public_key(key_file.read())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(
            f"{path}: not an ed25519 public key ({type(error).__name__})"
        ) from None


def private_key_file(path: str) -> Ed25519PrivateKey:
    try:
        with open(path, encoding="ascii") as key_file:
            return client.load_private_key(key_file.read())
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(
            f"{path}: not an ed25519 private key ({type(error).__name__})"
        ) from None


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as usage:  # argparse has printed why; 0 after --help, 2 for bad usage
        return usage.code if isinstance(usage.code, int) else EXIT_USAGE
    try:
        if args.command == "sign":  # a client's: no database, nothing but the base install
            return _sign(args, out)
        return _administer(args, out)
    except Failure as failure:
        print(f"customer-verification: {failure}", file=sys.stderr)
        return failure.exit_code


def _administer(args: argparse.Namespace, out: TextIO) -> int:
    """The commands that change or list customers: the ``admin`` extra's."""
    try:
        import psycopg2.errors
    except ImportError:
        raise Failure(
            EXIT_USAGE,
            f"{args.command} needs the admin extra: pip install 'customer-verification[admin]'",
        ) from None
    from customer_auth.store.connection import describe

    try:
        conn = _connect()
        try:
            _run(args, conn, out)
        finally:
            conn.close()
    except CertificateExists as error:
        print(f"customer-verification: {error}", file=sys.stderr)
        return EXIT_EXISTS
    except NoActiveCustomer as error:
        print(f"customer-verification: {error}", file=sys.stderr)
        return EXIT_UNKNOWN
    except OtherKeyKind as error:
        other = "no --public-key" if args.public_key is None else "--public-key FILE"
        print(f"customer-verification: {error}: rotate it with {other}", file=sys.stderr)
        return EXIT_USAGE
    except StillRotating as error:
        print(f"customer-verification: {error} (--force to rotate anyway)", file=sys.stderr)
        return EXIT_USAGE
    except psycopg2.errors.InsufficientPrivilege:
        print(
            "customer-verification: the database refused: permission denied (this role may not "
            "write the "
            "customer table; use the admin role's DATABASE_URL, not the plugin's read-only one)",
            file=sys.stderr,
        )
        return EXIT_DATABASE
    except psycopg2.errors.UndefinedTable:
        print(
            "customer-verification: the database has no customer table (load customer_schema.sql "
            "into it "
            'first: psql "$DATABASE_URL" -f customer_schema.sql)',
            file=sys.stderr,
        )
        return EXIT_DATABASE
    except psycopg2.Error as error:
        print(f"customer-verification: database error: {describe(error)}", file=sys.stderr)
        return EXIT_DATABASE
    return 0


def _connect() -> Connection:
    import psycopg2

    from customer_auth.store.connection import PRIMARY, Settings, connect, describe

    try:
        conn = connect(Settings.from_environment(), PRIMARY)  # writes: never a standby
    except InvalidSettings as error:
        raise Failure(EXIT_USAGE, str(error)) from None
    except psycopg2.Error as error:
        raise Failure(EXIT_DATABASE, f"cannot reach the database: {describe(error)}") from None
    conn.autocommit = True
    return conn


def _run(args: argparse.Namespace, conn: Connection, out: TextIO) -> None:
    from customer_auth.store import customers

    if args.command == "add":
        customer_id, client_key = customers.add_customer(conn, args.certificate_id, args.public_key)
        key_line = (
            "public key registered: the customer signs with its private key (RFC 9421, ed25519)"
            if args.public_key
            else f"client_key: {client_key}\n(the key is shown only this once)"
        )
        print(
            f"customer_id: {customer_id}\ncertificate_id: {args.certificate_id}\n{key_line}",
            file=out,
        )
    elif args.command == "rotate":
        client_key = customers.rotate_key(
            conn, args.certificate_id, args.grace, public_key=args.public_key, force=args.force
        )
        key_line = "new public key registered" if args.public_key else f"client_key: {client_key}"
        print(f"{key_line}\n(the previous key works for {args.grace:g} more seconds)", file=out)
    elif args.command == "revoke":
        customers.revoke(conn, args.certificate_id)
        print(f"revoked {args.certificate_id}", file=out)
    elif args.command == "restore":
        client_key = customers.restore(conn, args.certificate_id, args.new_key)
        key_line = f"\nclient_key: {client_key}" if client_key else " (with the keys it had)"
        print(f"restored {args.certificate_id}{key_line}", file=out)
    elif args.command == "list":
        print("customer_id\tcertificate_id\tstatus", file=out)
        for row in customers.list_customers(conn):
            print("\t".join(map(printable, row)), file=out)


def _sign(args: argparse.Namespace, out: TextIO) -> int:
    """The headers of a signed request; with --curl, a curl command sending it."""
    from http_message_signatures.structures import CaseInsensitiveDict

    client_key = sys.stdin.readline().strip() if args.key == "-" else args.key
    if args.key == "-" and not client_key:
        raise Failure(EXIT_USAGE, "--key -: standard input gave an empty key")
    body = args.body.read() if args.body else None
    method, url = args.method.upper(), args.curl or args.url
    given = CaseInsensitiveDict(dict(args.header))
    if body is not None and "content-type" not in given:
        given["Content-Type"] = _content_type(body)  # curl would send form-urlencoded
    if args.v1:
        if client_key is None:
            raise Failure(2, "--v1 signs with --key")
        headers = {**dict(given.items()), **v1.signed_headers(args.certificate_id, client_key)}
    else:
        message = types.SimpleNamespace(method=method, url=url, headers=given)
        try:
            client.sign_message(
                message,
                args.certificate_id,
                client_key=client_key,
                private_key=args.private_key,
                body=body,
                nonce=args.nonce,
                covered_components=(*client.COVERED_COMPONENTS, *args.cover),
            )
        except Exception as error:
            # The library's HTTPMessageSignaturesException: a URL it cannot sign.
            raise Failure(2, f"cannot sign that request: {error}") from None
        headers = dict(message.headers.items())
    if args.curl:
        print(curl_command(headers, method, url, args.body.name if body else None), file=out)
    else:
        for name, value in headers.items():
            print(f"{name}: {value}", file=out)
    return 0


def _content_type(body: bytes) -> str:
    import json

    try:
        json.loads(body)
    except ValueError:
        return "application/octet-stream"
    return "application/json"


if __name__ == "__main__":
    sys.exit(main())
