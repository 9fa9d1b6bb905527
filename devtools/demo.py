"""Try it without Docker: the whole job on this machine, with nothing installed by hand.

Starts a throwaway Postgres (or uses the one ``--database-url`` names: never one from the
environment), loads the schema, adds a demo customer, starts the real plugin server as Kong would,
and sends requests through the Kong stand-in: signed with HTTP Message Signatures (RFC 9421),
that signature moved to another query, the same signed request sent twice (to a route without and
one with replay_protection), v1 correctly and wrongly signed, unsigned. Each also carries a forged
X-Customer-Id. The demo customer is deleted at the end.

    python3 -m venv .venv && .venv/bin/pip install -q -e '.[demo]'
    .venv/bin/python -m devtools.demo
"""

import contextlib
import pathlib
import tempfile
import uuid

import psycopg2
import psycopg2.extensions

from customer_auth.core import v1
from customer_auth.store import customers
from devtools.kong_standin import KongStandIn, PluginServer, Request

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository


@contextlib.contextmanager
def database(url):
    if url:
        where = psycopg2.extensions.parse_dsn(url)
        print(
            f"!! --database-url: the demo writes into database {where.get('dbname', '?')!r} on "
            f"{where.get('host', 'localhost')}:\n"
            "!! customer_schema.sql, and a demo customer it deletes at the end\n",
            flush=True,
        )
        yield url
        return
    from devtools.throwaway_postgres import ThrowawayPostgres

    with ThrowawayPostgres() as server:
        yield server.dsn


def rfc9421(certificate_id, client_key, body):
    """A request signed as an RFC 9421 client library signs it, as the stand-in's Request."""
    import types

    from http_message_signatures.structures import CaseInsensitiveDict

    from customer_auth.client import sign_message

    message = types.SimpleNamespace(
        method="POST",
        url="http://gateway.demo/orders?id=7",
        headers=CaseInsensitiveDict(
            {
                "Host": "gateway.demo",
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
            }
        ),
    )
    sign_message(message, certificate_id, client_key=client_key, body=body)
    return {
        "header_lines": list(message.headers.items()),
        "method": "POST",
        "target": "/orders?id=7",
        "body": body,
    }


def short(value, width=40):
    return value if len(value) <= width else value[: width - 1] + "…"


def show(label, request, outcome):
    """One request on a few lines: what was sent, what the client got, what the upstream saw."""
    names = ", ".join(name for name, _value in request.get("header_lines", ())) or "none"
    print(f"== {label}")
    print(f"   sent      {request.get('method', 'GET')} {request.get('target', '/')}")
    print(f"   headers   {names}")
    print(f"   got       {outcome.status} {short(outcome.body, 70)}")
    if outcome.upstream is None:
        print("   upstream  nothing (the request never reached it)")
    else:
        customer = ", ".join(outcome.upstream.get("x-customer-id", [])) or "none"
        print(f"   upstream  X-Customer-Id: {customer} (the client's forged one removed)")
    print(f"   cost      {outcome.round_trips} round trips to the plugin server\n")


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="a Postgres database to use instead of a throwaway one (the demo adds a customer "
        "there and deletes it at the end)",
    )
    args = parser.parse_args()
    with (
        database(args.database_url) as dsn,
        tempfile.TemporaryDirectory(prefix="cv-demo-") as prefix,
    ):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute((ROOT / "customer_schema.sql").read_text())
        certificate_id = f"demo-{uuid.uuid4().hex[:8]}"
        customer_id, client_key = customers.add_customer(conn, certificate_id)
        print(f"demo customer {customer_id}, certificate {certificate_id}\n")
        server = PluginServer(
            ROOT / "customer_verification.py",
            prefix,
            "customer_verification",
            ["-g", "--no-lua-style"],
            env={"DATABASE_URL": dsn},
        )
        try:
            server.start()
            exchange(server, certificate_id, client_key)
        finally:
            server.stop()
            with conn.cursor() as cursor:  # nothing left behind that could sign in
                cursor.execute("DELETE FROM customer WHERE certificate = %s", (certificate_id,))
            conn.close()
        print("the plugin server's own log lines:")
        for line in server.log().splitlines():
            if " customer_verification: " in line:  # its own, on one clock (kong-pdk's differs)
                print(f"   {short(line.replace(' customer_verification:', ''), 114)}")


def exchange(server, certificate_id, client_key):
    kong = KongStandIn.query(server.query_command, server.socket_path)
    kong.configure("demo")
    kong.configure("protected", {"replay_protection": True})
    forged = [("X-Customer-Id", "forged-by-client")]
    body = b'{"qty": 1}'
    signed = rfc9421(certificate_id, client_key, body)  # one signed request, sent several times
    sends = [
        ("RFC 9421 signed POST /orders?id=7 with a body", signed, "demo"),
        ("the same signed request sent again", signed, "demo"),
        (
            "its signature moved to /orders?id=8",
            dict(signed, target="/orders?id=8"),
            "demo",
        ),
        ("the same signed request to a route with replay_protection", signed, "protected"),
        ("and sent there again: a replay", signed, "protected"),
        (
            "correctly signed request (v1 headers)",
            {"header_lines": list(v1.signed_headers(certificate_id, client_key).items())},
            "demo",
        ),
        (
            "wrongly signed request (v1 headers)",
            {"header_lines": list(v1.signed_headers(certificate_id, "not-the-key").items())},
            "demo",
        ),
        ("unsigned request", {"header_lines": []}, "demo"),
    ]
    try:
        for label, request, route in sends:
            sent = dict(request, header_lines=request["header_lines"] + forged)
            show(label, sent, kong.handle(Request(**sent), route))
    finally:
        kong.close()


if __name__ == "__main__":
    main()
