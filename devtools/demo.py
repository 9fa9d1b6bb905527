"""Try it without Docker: the whole job on this machine, with nothing installed by hand.

Starts a Postgres (a throwaway one unless DATABASE_URL is set), loads the schema, adds a demo
customer, starts the real plugin server as Kong would, and sends three requests through the Kong
stand-in: correctly signed, wrongly signed, unsigned. Each also carries a forged X-Customer-Id.
"""
import contextlib
import os
import pathlib
import sys
import tempfile
import uuid

import psycopg2

from customer_auth import signature
from customer_auth.admin import add_customer
from devtools.kong_standin import KongStandIn, PluginServer, Request

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository


@contextlib.contextmanager
def database():
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    from devtools.throwaway_postgres import ThrowawayPostgres

    with ThrowawayPostgres() as server:
        yield server.dsn


def show(label, sent, outcome):
    print(f"== {label}")
    print("client sent:   " + "; ".join(f"{name}: {value}" for name, value in sent) if sent else "client sent:   (no headers)")
    print(f"client got:    {outcome.status} {outcome.body}")
    if outcome.upstream is None:
        print("upstream saw:  nothing (the request never reached it)")
    else:
        print("upstream saw:  " + "; ".join(f"{name}: {', '.join(values)}" for name, values in sorted(outcome.upstream.items())))
    print(f"round trips:   {outcome.round_trips}\n")


def main():
    with database() as dsn, tempfile.TemporaryDirectory(prefix="cv-demo-") as prefix:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute((ROOT / "customer_schema.sql").read_text())
        certificate_id = f"demo-{uuid.uuid4().hex[:8]}"
        customer_id, client_key = add_customer(conn, certificate_id)
        conn.close()
        print(f"demo customer {customer_id}, certificate {certificate_id}\n")

        server = PluginServer(ROOT / "customer_verification.py", prefix, "customer_verification",
                              ["-g", "--no-lua-style"], env={"DATABASE_URL": dsn})
        server.start()
        kong = KongStandIn.query(server.query_command, server.socket_path)
        kong.configure("demo")
        try:
            forged = [("X-Customer-Id", "forged-by-client")]
            requests = {
                "correctly signed request": list(signature.signed_headers(certificate_id, client_key).items()),
                "wrongly signed request": list(signature.signed_headers(certificate_id, "not-the-key").items()),
                "unsigned request": [],
            }
            for label, headers in requests.items():
                show(label, headers + forged, kong.handle(Request(headers + forged), "demo"))
        finally:
            kong.close()
            server.stop()
        print("plugin server log:")
        sys.stdout.write(server.log())


if __name__ == "__main__":
    main()
