"""Try it without Docker: the whole job on this machine, with nothing installed by hand.

Starts a Postgres (a throwaway one unless DATABASE_URL is set), loads the schema, adds a demo
customer, starts the real plugin server as Kong would, and sends requests through the Kong
stand-in: signed with HTTP Message Signatures (RFC 9421), that signature replayed on another
query, the same request twice to a route with replay_protection, v1 correctly and wrongly signed,
unsigned. Each also carries a forged X-Customer-Id.

    python3 -m venv .venv && .venv/bin/pip install -q -e '.[demo]'
    .venv/bin/python -m devtools.demo
"""

import contextlib
import os
import pathlib
import sys
import tempfile
import uuid

import psycopg2
import psycopg2.extensions

from customer_auth.core import v1
from customer_auth.store import customers
from devtools.kong_standin import KongStandIn, PluginServer, Request

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository


@contextlib.contextmanager
def database():
    if os.environ.get("DATABASE_URL"):
        where = psycopg2.extensions.parse_dsn(os.environ["DATABASE_URL"])
        print(
            f"!! DATABASE_URL is set: the demo WRITES INTO database {where.get('dbname', '?')!r} "
            "on "
            f"{where.get('host', 'localhost')}: it loads customer_schema.sql and adds a demo "
            "customer.\n"
            "!! Unset DATABASE_URL to use a throwaway Postgres instead.\n",
            flush=True,
        )
        yield os.environ["DATABASE_URL"]
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


def show(label, sent, outcome):
    print(f"== {label}")
    print(
        "client sent:   " + "; ".join(f"{name}: {value}" for name, value in sent)
        if sent
        else "client sent:   (no headers)"
    )
    print(f"client got:    {outcome.status} {outcome.body}")
    if outcome.upstream is None:
        print("upstream saw:  nothing (the request never reached it)")
    else:
        print(
            "upstream saw:  "
            + "; ".join(
                f"{name}: {', '.join(values)}" for name, values in sorted(outcome.upstream.items())
            )
        )
    print(f"round trips:   {outcome.round_trips}\n")


def main():
    with database() as dsn, tempfile.TemporaryDirectory(prefix="cv-demo-") as prefix:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute((ROOT / "customer_schema.sql").read_text())
        certificate_id = f"demo-{uuid.uuid4().hex[:8]}"
        customer_id, client_key = customers.add_customer(conn, certificate_id)
        conn.close()
        print(f"demo customer {customer_id}, certificate {certificate_id}\n")

        server = PluginServer(
            ROOT / "customer_verification.py",
            prefix,
            "customer_verification",
            ["-g", "--no-lua-style"],
            env={"DATABASE_URL": dsn},
        )
        server.start()
        kong = KongStandIn.query(server.query_command, server.socket_path)
        kong.configure("demo")
        kong.configure("protected", {"replay_protection": True})
        try:
            forged = [("X-Customer-Id", "forged-by-client")]
            body = b'{"qty": 1}'
            requests = {
                "RFC 9421 signed POST /orders?id=7 with a body": rfc9421(
                    certificate_id, client_key, body
                ),
                "the same signature replayed on /orders?id=8": dict(
                    rfc9421(certificate_id, client_key, body), target="/orders?id=8"
                ),
                "correctly signed request (v1 headers)": {
                    "header_lines": list(v1.signed_headers(certificate_id, client_key).items())
                },
                "wrongly signed request (v1 headers)": {
                    "header_lines": list(v1.signed_headers(certificate_id, "not-the-key").items())
                },
                "unsigned request": {"header_lines": []},
            }
            for label, request in requests.items():
                lines = request["header_lines"] + forged
                show(
                    label, lines, kong.handle(Request(**dict(request, header_lines=lines)), "demo")
                )
            once = rfc9421(certificate_id, client_key, body)
            for label in (
                "RFC 9421 POST to a route with replay_protection",
                "the very same request sent again",
            ):
                lines = once["header_lines"] + forged
                show(
                    label,
                    lines,
                    kong.handle(Request(**dict(once, header_lines=lines)), "protected"),
                )
        finally:
            kong.close()
            server.stop()
        print("plugin server log:")
        sys.stdout.write(server.log())


if __name__ == "__main__":
    main()
