"""Soak: many mixed requests through the Kong stand-in against the real plugin server, then a
report of what leaked (threads, memory, database connections) and every wrong answer.

    python -m devtools.soak [--requests 50000] [--concurrency 16] [--mode gevent|threading]

Mixed traffic: valid signatures, wrong signatures, missing headers, unknown certificates. Exits
non-zero if any request got another answer than it should, or if resources grew unbounded.
"""

import argparse
import multiprocessing
import sys
import tempfile

from customer_auth.core import v1
from devtools.benchmark import MODES, ROOT, WARM_CUSTOMERS, database, query, request_for
from devtools.kong_standin import KongStandIn, PluginServer, Request

POOL_SIZE = 4


def expected(i):
    """The request number ``i`` of a worker, and the status it must get."""
    kind = (
        "valid",
        "valid",
        "valid",
        "valid",
        "valid",
        "wrong",
        "wrong",
        "missing",
        "unknown",
        "unknown",
    )[i % 10]
    if kind == "missing":
        return list(v1.signed_headers("warm-1", "key-warm-1").items())[1:], 400
    if kind == "unknown":
        # A fixed set, so the caches fill in the first half: growth after that is a leak.
        return list(v1.signed_headers(f"unknown-{i % 1000}", "k").items()), 403
    return request_for("wrong" if kind == "wrong" else "warm", i, 0)[
        "header_lines"
    ], 200 if kind == "valid" else 403


def work(socket_path, info, first, count, results):
    kong = KongStandIn(socket_path, info)
    kong.configure("soak")
    wrong = []
    for i in range(first, first + count):
        lines, status = expected(i)
        outcome = kong.handle(Request(lines + [("X-Customer-Id", "forged")]), "soak")
        forged = outcome.upstream is not None and outcome.upstream.get("x-customer-id") == [
            "forged"
        ]
        if outcome.status != status or outcome.errors or forged:
            wrong.append((i, status, outcome.status, outcome.errors[:1]))
    kong.close()
    results.put(wrong)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", choices=list(MODES), default="gevent")
    args = parser.parse_args()
    with database() as dsns, tempfile.TemporaryDirectory(prefix="cv-soak-") as prefix:
        server = PluginServer(
            ROOT / "customer_verification.py",
            prefix,
            "customer_verification",
            MODES[args.mode],
            env={
                "DATABASE_URL": dsns["admin"],
                "CUSTOMER_VERIFICATION_POOL_SIZE": str(POOL_SIZE),
                "CUSTOMER_VERIFICATION_LOG_LEVEL": "WARNING",
            },
        ).start()
        info = KongStandIn.query(server.query_command, server.socket_path).info
        try:
            _run(server, info, 0, WARM_CUSTOMERS, args.concurrency)  # warm-up
            before = (server.threads(), server.rss_kib())
            half = args.requests // 2
            wrong = _run(server, info, WARM_CUSTOMERS, half, args.concurrency)
            middle = server.rss_kib()
            wrong += _run(
                server, info, WARM_CUSTOMERS + half, args.requests - half, args.concurrency
            )
            after = (server.threads(), server.rss_kib())
            pooled = query(
                dsns["admin"],
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'customer_verification'",
            )
        finally:
            server.stop()
    print(f"requests: {args.requests} mixed, concurrency {args.concurrency}, mode {args.mode}")
    print(f"wrong answers or Kong errors: {len(wrong)}")
    for item in wrong[:10]:
        print(f"  request {item[0]}: expected {item[1]}, got {item[2]} {item[3]}")
    print(f"plugin server threads: {before[0]} before, {after[0]} after")
    print(
        f"plugin server memory:  {before[1] / 1024:.1f} MiB before, {middle / 1024:.1f} MiB half "
        "way, "
        f"{after[1] / 1024:.1f} MiB after"
    )
    print(f"database connections:  {pooled} (pool size {POOL_SIZE})")
    # Caches fill and Python's allocator keeps its arenas, so the first half may grow memory;
    # a leak shows as the second half growing it again as much.
    bounded = (
        after[0] <= before[0] + 4
        and after[1] - middle < max(4 * 1024, (middle - before[1]) / 4)
        and pooled <= POOL_SIZE
    )
    print("result: " + ("ok" if not wrong and bounded else "FAILED"))
    return 0 if not wrong and bounded else 1


def _run(server, info, first, count, concurrency):
    results = multiprocessing.Queue()
    share = count // concurrency
    workers = [
        multiprocessing.Process(
            target=work,
            args=(
                server.socket_path,
                info,
                first + w * share,
                share if w < concurrency - 1 else count - share * w,
                results,
            ),
        )
        for w in range(concurrency)
    ]
    for worker in workers:
        worker.start()
    wrong = [item for _ in workers for item in results.get(timeout=3600)]
    for worker in workers:
        worker.join()
    return wrong


if __name__ == "__main__":
    sys.exit(main())
