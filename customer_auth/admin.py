"""customer-verification: add, rotate, revoke and list customers, and sign requests.

The database comes from the environment as for the plugin (``DATABASE_URL`` or ``PG*``), with a
role that may write the customer table. Keys are printed once, by ``add`` and ``rotate``.
Exit codes: 0 done, 2 bad usage, 3 certificate already exists, 4 no such certificate,
5 database unreachable or failing.
"""
import argparse
import json
import math
import secrets
import shlex
import sys
import time

import psycopg2
import psycopg2.errors

from customer_auth import signature
from customer_auth.connection import PRIMARY, Settings, connect, describe

DEFAULT_GRACE = 24 * 3600
MAX_GRACE = 30 * 24 * 3600  # a rotation is meant to end: longer would keep an old key alive for good

EXIT_EXISTS, EXIT_UNKNOWN, EXIT_DATABASE = 3, 4, 5


class Failure(Exception):
    def __init__(self, exit_code, message):
        super().__init__(message)
        self.exit_code = exit_code


def new_client_key():
    return secrets.token_urlsafe(32)  # 256 bits


def add_customer(conn, certificate_id):
    """Creates a customer with a new key; returns ``(customer_id, client_key)``."""
    client_key = new_client_key()
    try:
        with conn.cursor() as cursor:
            cursor.execute("INSERT INTO customer (certificate, authentication) VALUES (%s, %s) RETURNING uuid::text",
                           (certificate_id, json.dumps({"client_key": client_key})))
            return cursor.fetchone()[0], client_key
    except psycopg2.errors.UniqueViolation:
        raise Failure(EXIT_EXISTS, f"certificate {certificate_id!r} already exists") from None


def rotate_key(conn, certificate_id, grace, now=None):
    """Gives the customer a new key; the current one keeps working for ``grace`` seconds."""
    client_key = new_client_key()
    expires_at = (time.time() if now is None else now) + grace
    with conn.cursor() as cursor:
        cursor.execute(
            """UPDATE customer
                  SET authentication = authentication || jsonb_build_object(
                          'client_key', %s::text,
                          'previous_client_key', authentication->>'client_key',
                          'previous_key_expires_at', %s::float8)
                WHERE certificate = %s AND authentication->>'revoked_at' IS NULL""",
            (client_key, expires_at, certificate_id))
        if cursor.rowcount == 0:
            raise Failure(EXIT_UNKNOWN, f"no active customer has certificate {certificate_id!r}")
    return client_key


def revoke(conn, certificate_id, now=None):
    with conn.cursor() as cursor:
        cursor.execute(
            """UPDATE customer SET authentication = authentication || jsonb_build_object('revoked_at', %s::float8)
                WHERE certificate = %s AND authentication->>'revoked_at' IS NULL""",
            (time.time() if now is None else now, certificate_id))
        if cursor.rowcount == 0:
            raise Failure(EXIT_UNKNOWN, f"no active customer has certificate {certificate_id!r}")


def list_customers(conn, now=None):
    """Rows of ``(customer_id, certificate_id, status)``; keys are never read out."""
    now = time.time() if now is None else now
    with conn.cursor() as cursor:
        cursor.execute("""SELECT uuid::text, certificate, authentication->>'revoked_at',
                                 authentication->>'previous_key_expires_at'
                            FROM customer ORDER BY certificate""")
        rows = cursor.fetchall()
    return [(customer_id, certificate_id, _status(revoked_at, previous_expiry, now))
            for customer_id, certificate_id, revoked_at, previous_expiry in rows]


def _status(revoked_at, previous_expiry, now):
    if revoked_at is not None:
        return "revoked"
    if previous_expiry is None:
        return "active"
    try:
        if float(previous_expiry) > now:
            return f"rotating (previous key until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(float(previous_expiry)))})"
    except (TypeError, ValueError, OverflowError, OSError):
        # Written by hand, not by this tool (a string, infinity, a year past 9999): shown as stored.
        return f"active (unreadable previous_key_expires_at: {printable(str(previous_expiry))})"
    return "active"


def printable(text):
    """``text`` safe for a terminal: control characters and non-ASCII are shown escaped."""
    return text if text.isascii() and text.isprintable() else text.encode("unicode_escape").decode("ascii")


def certificate_id(text):
    """An argparse type: the plugin's own rule for a certificate id."""
    try:
        return signature.parse_certificate_id(text)
    except signature.MalformedSignature as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def grace_seconds(text):
    """An argparse type: a finite number of seconds from 0 to MAX_GRACE."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_GRACE:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to {MAX_GRACE}")
    return seconds


def curl_command(headers, method, url):
    parts = ["curl", "-sS", "-X", method, *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")), url]
    return " ".join(shlex.quote(part) for part in parts)


def _parser():
    parser = argparse.ArgumentParser(prog="customer-verification", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("add", help="create a customer with a new random key").add_argument(
        "certificate_id", type=certificate_id)
    rotate = commands.add_parser("rotate", help="give a customer a new key")
    rotate.add_argument("certificate_id", type=certificate_id)
    rotate.add_argument("--grace", type=grace_seconds, default=DEFAULT_GRACE,
                        help="seconds the previous key keeps working (default: %(default)s)")
    commands.add_parser("revoke", help="stop accepting a customer's requests").add_argument(
        "certificate_id", type=certificate_id)
    commands.add_parser("list", help="list customers (never their keys)")
    sign = commands.add_parser("sign", help="print the signature headers, or a curl command, for a request")
    sign.add_argument("certificate_id", type=certificate_id)
    sign.add_argument("--key", required=True, help="the client key ('-' reads it from standard input)")
    sign.add_argument("--curl", metavar="URL", help="print a ready curl command for URL instead of headers")
    sign.add_argument("--method", default="GET", help="HTTP method for --curl (default: %(default)s)")
    return parser


def main(argv=None, out=sys.stdout):
    try:
        args = _parser().parse_args(argv)
    except SystemExit as usage:  # argparse has printed why; 0 after --help, 2 for bad usage
        return usage.code
    try:
        if args.command == "sign":
            return _sign(args, out)
        conn = _connect()
        try:
            _run(args, conn, out)
        finally:
            conn.close()
    except Failure as failure:
        print(f"customer-verification: {failure}", file=sys.stderr)
        return failure.exit_code
    except psycopg2.Error as error:
        print(f"customer-verification: database error: {describe(error)}", file=sys.stderr)
        return EXIT_DATABASE
    return 0


def _connect():
    try:
        conn = connect(Settings.from_environment(), PRIMARY)  # writes: never a standby
    except psycopg2.Error as error:
        raise Failure(EXIT_DATABASE, f"cannot reach the database: {describe(error)}") from None
    conn.autocommit = True
    return conn


def _run(args, conn, out):
    if args.command == "add":
        customer_id, client_key = add_customer(conn, args.certificate_id)
        print(f"customer_id: {customer_id}\ncertificate_id: {args.certificate_id}\n"
              f"client_key: {client_key}\n(the key is shown only this once)", file=out)
    elif args.command == "rotate":
        client_key = rotate_key(conn, args.certificate_id, args.grace)
        print(f"client_key: {client_key}\n(the previous key works for {args.grace:g} more seconds)", file=out)
    elif args.command == "revoke":
        revoke(conn, args.certificate_id)
        print(f"revoked {args.certificate_id}", file=out)
    elif args.command == "list":
        for row in list_customers(conn):
            print("\t".join(map(printable, row)), file=out)


def _sign(args, out):
    client_key = sys.stdin.readline().strip() if args.key == "-" else args.key
    headers = signature.signed_headers(args.certificate_id, client_key)
    if args.curl:
        print(curl_command(headers, args.method.upper(), args.curl), file=out)
    else:
        for name, value in headers.items():
            print(f"{name}: {value}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
