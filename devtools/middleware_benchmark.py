"""What the service middleware adds to a request, warm cache: the same minimal app called bare
and wrapped, in-process (no server, so nothing but the middleware differs), v1 and RFC 9421
(hmac-sha256, a 200-byte body with its Content-Digest), for WSGI and ASGI.

    python -m devtools.middleware_benchmark [--requests 20000]

Prints microseconds per request (median of 5 runs) and the difference. Starts a throwaway
Postgres unless DATABASE_URL is set.
"""

import argparse
import asyncio
import io
import os
import statistics
import time
import types

from http_message_signatures.structures import CaseInsensitiveDict

from customer_auth.client import sign_message
from customer_auth.core import v1
from customer_auth.middleware import ASGIMiddleware, WSGIMiddleware
from devtools.benchmark import ROOT

BODY = b'{"order": 1, "items": [' + b'"item", ' * 20 + b'"last"]}'


def wsgi_app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def asgi_app(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def signed_requests():
    """``{name: (method, path, query, headers, body)}``."""
    v1_headers = v1.signed_headers("bench", "bench-key")
    message = types.SimpleNamespace(
        method="POST",
        url="http://service.test/orders?id=7",
        headers=CaseInsensitiveDict(
            {"Content-Type": "application/json", "Content-Length": str(len(BODY))}
        ),
    )
    sign_message(message, "bench", client_key="bench-key", body=BODY)
    return {
        "v1 GET": ("GET", "/orders", "id=7", dict(v1_headers), b""),
        "rfc9421 POST, 200-byte body": (
            "POST",
            "/orders",
            "id=7",
            dict(message.headers.items()),
            BODY,
        ),
    }


def environ_for(method, path, query, headers, body):
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "RAW_URI": f"{path}?{query}",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "SERVER_NAME": "service.test",
        "SERVER_PORT": "80",
        "HTTP_HOST": "service.test",
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    return environ


def time_wsgi(app, request, count):
    started = time.perf_counter()
    for _ in range(count):
        statuses = []
        app(
            environ_for(*request),
            lambda status, headers, statuses=statuses: statuses.append(status),
        )
        assert statuses == ["200 OK"], statuses
    return (time.perf_counter() - started) / count


def time_asgi(app, request, count):
    method, path, query, headers, body = request

    async def run():
        sent = []

        async def send(message):
            sent.append(message)

        started = time.perf_counter()
        for _ in range(count):
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            scope = {
                "type": "http",
                "method": method,
                "path": path,
                "raw_path": path.encode(),
                "query_string": query.encode(),
                "scheme": "http",
                "headers": [(b"host", b"service.test")]
                + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }
            sent.clear()
            await app(scope, lambda messages=messages: _pop(messages), send)
            assert sent[0]["status"] == 200, sent
        return (time.perf_counter() - started) / count

    return asyncio.run(run())


async def _pop(messages):
    return messages.pop(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    import contextlib

    import psycopg2

    from devtools.throwaway_postgres import ThrowawayPostgres

    with contextlib.ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL") or stack.enter_context(ThrowawayPostgres()).dsn
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute((ROOT / "customer_schema.sql").read_text())
            cursor.execute("DELETE FROM customer WHERE certificate = 'bench'")
            cursor.execute(
                """INSERT INTO customer (certificate, authentication)
                   VALUES ('bench', '{"client_key": "bench-key"}')"""
            )
        conn.close()
        os.environ["DATABASE_URL"] = dsn
        print("| request | server kind | bare app µs | with middleware µs | added µs |")
        print("|---|---|---:|---:|---:|")
        for name, request in signed_requests().items():
            for kind, timer, bare in (("WSGI", time_wsgi, wsgi_app), ("ASGI", time_asgi, asgi_app)):
                wrapped = (WSGIMiddleware if kind == "WSGI" else ASGIMiddleware)(
                    bare, cache_ttl=3600
                )
                timer(wrapped, request, 100)  # warm: the credential is cached
                runs = [
                    (timer(bare, request, args.requests), timer(wrapped, request, args.requests))
                    for _ in range(5)
                ]
                plain = statistics.median(run[0] for run in runs) * 1e6
                with_middleware = statistics.median(run[1] for run in runs) * 1e6
                print(
                    f"| {name} | {kind} | {plain:.1f} | {with_middleware:.1f} | "
                    f"{with_middleware - plain:.1f} |"
                )


if __name__ == "__main__":
    main()
