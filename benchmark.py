"""Benchmark: the real plugin server driven through the Kong stand-in, against the limit.

    python benchmark.py [--duration 5] [--concurrency 8] [--out benchmark-results]

For each server mode (kong-pdk threads, gevent) it measures: (a) the limit, a no-op plugin making
the same PDK calls; (b) this plugin with a warm cache; (c) a cold cache, every request a new
certificate; (d) rejections (wrong signatures); (e) the connect-per-request reference. It prints a
table (req/s, p50/p99 latency, round trips per request, database queries per 1,000 requests),
and writes results.json and results.png to --out. Each figure is the median of --rounds
interleaved runs. Kong's stand-in runs in separate processes, so
the driver competes with the server for this machine's cores as nginx would.
"""
import argparse
import contextlib
import json
import multiprocessing
import os
import pathlib
import shutil
import statistics
import tempfile
import time

import psycopg2

import customer_signature as signature
from kong_standin import KongStandIn, PluginServer, Request

ROOT = pathlib.Path(__file__).resolve().parent
MODES = {"threading": ["--no-lua-style"], "gevent": ["-g", "--no-lua-style"]}
WARM_CUSTOMERS = 200
COLD_CUSTOMERS = 200_000
SCENARIOS = {  # name: (plugin script, BENCHMARK_PLUGIN, requests)
    "limit": ("benchmark_plugins.py", "limit", "warm"),
    "warm cache": ("customer_verification.py", None, "warm"),
    "cold cache": ("customer_verification.py", None, "cold"),
    "rejections": ("customer_verification.py", None, "wrong"),
    "connect per request": ("benchmark_plugins.py", "connect-per-request", "warm"),
}
LOOKUP_QUERIES = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%FROM customer%WHERE certificate%'"


def headers_for(kind, i, worker):
    if kind == "cold":
        number = (worker * 1_000_003 + i) % COLD_CUSTOMERS
        return signature.signed_headers(f"cold-{number}", f"key-{number}")
    number = (worker * 7 + i) % WARM_CUSTOMERS
    return signature.signed_headers(f"warm-{number}", "wrong" if kind == "wrong" else f"key-warm-{number}")


def drive(socket_path, plugin_info, kind, warm_up, worker, start_at, duration, results):
    kong = KongStandIn(socket_path, plugin_info)
    kong.configure("bench")
    for i in range(warm_up):  # fills this plugin instance's cache
        kong.handle(Request(list(headers_for(kind, i, worker).items())), "bench")
    latencies, trips, statuses = [], 0, {}
    time.sleep(max(0.0, start_at - time.time()))
    deadline, i = start_at + duration, WARM_CUSTOMERS
    while time.time() < deadline:
        lines = list(headers_for(kind, i, worker).items())
        began = time.perf_counter()
        outcome = kong.handle(Request(lines), "bench")
        latencies.append(time.perf_counter() - began)
        trips += outcome.round_trips
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        i += 1
    kong.close()
    results.put((latencies, trips, statuses))


def run_scenario(dsn, scenario, mode, duration, concurrency, prefix):
    script, benchmark_plugin, kind = SCENARIOS[scenario]
    env = {"DATABASE_URL": dsn, "CUSTOMER_VERIFICATION_LOG_LEVEL": "WARNING",
           "CUSTOMER_VERIFICATION_POOL_SIZE": "8"}
    if benchmark_plugin:
        env["BENCHMARK_PLUGIN"] = benchmark_plugin
    server = PluginServer(ROOT / script, prefix, "customer_verification", MODES[mode], env=env).start()
    try:
        info = KongStandIn.query(server.query_command, server.socket_path, env=server.env).info
        results = multiprocessing.Queue()
        start_at = time.time() + 2.0 + concurrency * 0.1
        warm_up = WARM_CUSTOMERS if kind != "cold" and not benchmark_plugin else 1
        workers = [multiprocessing.Process(target=drive, args=(server.socket_path, info, kind, warm_up, w, start_at,
                                                               duration, results))
                   for w in range(concurrency)]
        for worker in workers:
            worker.start()
        time.sleep(max(0.0, start_at - time.time()))
        queries_before = query(dsn, LOOKUP_QUERIES)
        collected = [results.get(timeout=duration + 120) for _ in workers]
        queries = query(dsn, LOOKUP_QUERIES) - queries_before
        for worker in workers:
            worker.join()
        threads = server.threads()
    finally:
        server.stop()
    latencies = sorted(latency for part in collected for latency in part[0])
    requests = len(latencies)
    if not requests:
        raise RuntimeError(f"{scenario} / {mode}: no request finished; plugin server log:\n{server.log()}")
    statuses = {}
    for part in collected:
        for status, count in part[2].items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    return {
        "scenario": scenario, "mode": mode, "requests": requests,
        "req_per_s": requests / duration,
        "p50_ms": 1000 * latencies[requests // 2],
        "p99_ms": 1000 * latencies[min(requests - 1, int(requests * 0.99))],
        "round_trips": sum(part[1] for part in collected) / requests,
        "queries_per_1000": 1000 * queries / requests,
        "statuses": statuses, "server_threads_after": threads,
    }


def query(dsn, sql):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return int(cursor.fetchone()[0])
    finally:
        conn.close()


@contextlib.contextmanager
def database():
    from throwaway_postgres import ThrowawayPostgres

    # Password authentication, as in the deployment: it is what makes a connection expensive.
    with ThrowawayPostgres("-c shared_preload_libraries=pg_stat_statements", password="benchmark") as server:
        conn = psycopg2.connect(server.dsn)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("CREATE EXTENSION pg_stat_statements")
            cursor.execute((ROOT / "customer_schema.sql").read_text())
            cursor.execute("""INSERT INTO customer (certificate, authentication)
                              SELECT 'warm-' || n, jsonb_build_object('client_key', 'key-warm-' || n)
                                FROM generate_series(0, %s - 1) n""", (WARM_CUSTOMERS,))
            cursor.execute("""INSERT INTO customer (certificate, authentication)
                              SELECT 'cold-' || n, jsonb_build_object('client_key', 'key-' || n)
                                FROM generate_series(0, %s - 1) n""", (COLD_CUSTOMERS,))
        conn.close()
        yield server.dsn


def table(rows):
    lines = ["| scenario | mode | req/s | p50 ms | p99 ms | round trips/req | DB queries/1000 req | statuses |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['mode']} | {r['req_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['round_trips']:.2f} | {r['queries_per_1000']:.1f} | {r['statuses']} |")
    return "\n".join(lines)


def targets(rows, measured):
    """The issue's targets; throughput ratios are medians of ratios within a round (runs of the
    same round are minutes apart, not half an hour), which is steadier on a shared machine."""
    by = {(r["scenario"], r["mode"]): r for r in rows}
    modes = sorted({r["mode"] for r in rows})
    fastest = max(modes, key=lambda mode: by[("warm cache", mode)]["req_per_s"])

    def ratio(a, b, key="req_per_s"):
        pairs = zip(measured[a], measured[b])
        return statistics.median(x[key] / y[key] for x, y in pairs)

    warm, limit = ("warm cache", fastest), ("limit", fastest)
    reference = max(modes, key=lambda mode: by[("connect per request", mode)]["req_per_s"])
    return [
        f"fastest mode for verified requests: {fastest}",
        f"warm cache / limit ({fastest}): {ratio(warm, limit):.2f} (target >= 0.9; per round: "
        + ", ".join(f"{x['req_per_s'] / y['req_per_s']:.2f}" for x, y in zip(measured[warm], measured[limit])) + ")",
        f"warm cache / connect per request: {by[warm]['req_per_s'] / by[('connect per request', reference)]['req_per_s']:.1f}"
        " (target >= 25)",
        f"p99 warm cache / p99 limit ({fastest}): {ratio(warm, limit, 'p99_ms'):.2f} (target <= 1.5)",
        f"round trips: success {by[warm]['round_trips']:.2f} (<= 3), rejection "
        f"{by[('rejections', fastest)]['round_trips']:.2f} (<= 2)",
        f"DB queries per 1000 requests: warm {by[warm]['queries_per_1000']:.1f}, cold "
        f"{by[('cold cache', fastest)]['queries_per_1000']:.1f} (every cold request is a new certificate)",
    ]


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(SCENARIOS)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.38
    modes = sorted({r["mode"] for r in rows})
    for offset, mode in enumerate(modes):
        values = [next(r["req_per_s"] for r in rows if r["scenario"] == s and r["mode"] == mode) for s in scenarios]
        axis.bar([i + (offset - 0.5) * width for i in range(len(scenarios))], values, width, label=mode)
    axis.set_xticks(range(len(scenarios)), scenarios)
    axis.set_ylabel("requests per second")
    axis.set_title("customer_verification through the Kong stand-in")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent requests (default: %(default)s)")
    parser.add_argument("--out", default="benchmark-results", help="directory for results.json and results.png")
    parser.add_argument("--modes", default=",".join(MODES), help="server modes to measure (default: %(default)s)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="scenarios to measure (default: all)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure every scenario this many times, interleaved, and keep the median (default: %(default)s)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measured = {}
    with database() as dsn:
        # Interleaved rounds: a slow moment of this shared machine does not land on one scenario.
        for round_number in range(1, args.rounds + 1):
            for mode in args.modes.split(","):
                for scenario in args.scenarios.split(","):
                    prefix = tempfile.mkdtemp(prefix="cv-bench-")
                    try:
                        row = run_scenario(dsn, scenario, mode, args.duration, args.concurrency, prefix)
                    finally:
                        shutil.rmtree(prefix, ignore_errors=True)
                    measured.setdefault((scenario, mode), []).append(row)
                    print(f"round {round_number}: {scenario} / {mode}: {row['req_per_s']:.0f} req/s", flush=True)
    rows = [sorted(runs, key=lambda row: row["req_per_s"])[len(runs) // 2] for runs in measured.values()]
    complete = {r["scenario"] for r in rows} == set(SCENARIOS)
    summary = targets(rows, measured) if complete else ["(targets need every scenario)"]
    (out / "results.json").write_text(json.dumps({"rows": rows, "targets": summary, "cores": os.cpu_count(),
                                                  "duration": args.duration, "concurrency": args.concurrency,
                                                  "rounds": args.rounds}, indent=2))
    if complete:
        chart(rows, out / "results.png")
    print()
    print(table(rows))
    print()
    print("\n".join(summary))
    print(f"\nwrote {out / 'results.json'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
