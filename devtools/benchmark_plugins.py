"""The plugins benchmark.py compares customer_verification with, chosen by BENCHMARK_PLUGIN:

- ``limit``: no work at all, but the same PDK calls as a verified request (read the headers, tell
  Kong the credential, set the upstream headers): the most an external Python plugin can do.
- ``busy``: the same calls and BUSY_SECONDS of Python per request, so that the plugin server and
  not nginx is what limits throughput (what several processes are for).
- ``connect-per-request``: the design of the original article, a new Postgres connection for
  every request.

Started as customer_verification is: several processes under the supervisor when
CUSTOMER_VERIFICATION_PROCESSES asks for them.
"""

import sys

if __name__ == "__main__":
    from customer_auth.kong import bootstrap

    bootstrap.supervise_or_patch("customer_verification")

import os
import time

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from customer_auth.core import v1
from customer_auth.kong.plugin import pdk_value
from customer_verification import Schema, priority, version

# The identity headers a verified request sets or clears
# (customer_verification.Plugin.upstream_headers).
LIMIT_HEADERS = {
    "X-Customer-Id": "limit",
    "X-Credential-Identifier": "limit",
    "X-Consumer-ID": [],
    "X-Consumer-Username": [],
    "X-Consumer-Custom-ID": [],
    "X-Anonymous-Consumer": [],
}


class Limit:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        pdk_value(kong.request.get_headers())
        pdk_value(kong.service.request.set_headers(LIMIT_HEADERS))
        pdk_value(kong.client.authenticate(None, {"id": "limit"}))


class ConnectPerRequest:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        headers = pdk_value(kong.request.get_headers())
        certificate_id = headers[v1.CERTIFICATE_ID_HEADER][0]
        request_time = headers[v1.REQUEST_TIME_HEADER][0]
        conn = psycopg2.connect(os.environ["DATABASE_URL"])
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT uuid::text, authentication->>'client_key' FROM customer WHERE "
                    "certificate = %s",
                    (certificate_id,),
                )
                customer_id, client_key = cursor.fetchone()
        finally:
            conn.close()
        v1.verify(
            v1.parse_signature(headers[v1.SIGNATURE_HEADER][0]),
            certificate_id,
            request_time,
            [client_key],
        )
        pdk_value(kong.service.request.set_headers({"X-Customer-Id": customer_id}))


BUSY_SECONDS = 0.005


class Busy(Limit):
    def access(self, kong):
        deadline = time.thread_time() + BUSY_SECONDS
        while time.thread_time() < deadline:
            pass
        super().access(kong)


PLUGINS = {"limit": Limit, "busy": Busy, "connect-per-request": ConnectPerRequest}

if __name__ == "__main__":
    # as customer_verification: either transport
    from customer_auth.kong.server import start_dedicated_server

    if "-g" in sys.argv or "--gevent" in sys.argv:
        # cooperative, for fairness
        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    start_dedicated_server(
        "customer_verification",
        PLUGINS[os.environ["BENCHMARK_PLUGIN"]],
        version,
        priority,
        list(Schema),
    )
