"""One process against several, behind Kong's own bridge in nginx (devtools/kong_bridge).

    KONG_SOURCE=/path/to/kong-3.9.x python -m devtools.bridge_benchmark [--workers 4]
        [--rate 300] [--seconds 5] [--rounds 3] [--processes 2]

Both plugin servers run at once, each behind its own nginx with ``--workers`` workers; in each
round each is driven in turn, in a random order: first at a paced ``--rate`` of signed v1
requests (the same load for both: what matters is the CPU per request summed over all the
server's processes, the supervisor's included), then saturated with the ``busy`` plugin (5 ms of
Python per request, so that the plugin server is the bottleneck: requests per second). Figures
are medians over the rounds; compare the ratios, not the absolute numbers.
"""

import argparse
import concurrent.futures
import random
import statistics
import time

from customer_auth.core import v1
from devtools.kong_bridge import KongBridge, kong_source
from devtools.kong_standin import PluginServer
from devtools.throwaway_postgres import ThrowawayPostgres

SECRET = "bridge-benchmark-key"
SCHEMA_PATH = "customer_schema.sql"


def start(dsn, source, workers, processes, plugin):
    import tempfile

    script, env = "customer_verification.py", {"DATABASE_URL": dsn}
    if plugin == "busy":
        script, env = "devtools/benchmark_plugins.py", {**env, "BENCHMARK_PLUGIN": "busy"}
    server = PluginServer(
        script,
        tempfile.mkdtemp(prefix="cv-bb-"),
        "customer_verification",
        ["-g", "--no-lua-style"],
        env={**env, "CUSTOMER_VERIFICATION_PROCESSES": str(processes)},
    ).start()
    bridge = KongBridge(source, server, {"/v1": {}}, workers=workers, fail_closed=False).start()
    return server, bridge


def paced(bridge, rate, seconds, threads=8):
    """``rate`` requests a second for ``seconds``: how many were answered 200."""
    per_thread = rate / threads
    deadline = time.monotonic() + seconds

    def run():
        sent = ok = 0
        with bridge.connection() as connection:
            started = time.monotonic()
            while time.monotonic() < deadline:
                headers = list(v1.signed_headers("cert-1", SECRET).items())
                ok += connection.request("GET", "/v1/x", headers)[0] == 200
                sent += 1
                pause = started + sent / per_thread - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        return ok

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda _: run(), range(threads)))


def saturated(bridge, seconds, threads=16):
    deadline = time.monotonic() + seconds

    def run():
        ok = 0
        with bridge.connection() as connection:
            while time.monotonic() < deadline:
                headers = list(v1.signed_headers("cert-1", SECRET).items())
                ok += connection.request("GET", "/v1/x", headers)[0] == 200
        return ok

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda _: run(), range(threads)))


def cpu(server):
    user, system = server.cpu_times()
    return user + system


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="nginx workers (default: 4)")
    parser.add_argument("--rate", type=int, default=300, help="paced requests a second")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds a turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="the several (default: 2)")
    args = parser.parse_args()
    source, why = kong_source()
    if source is None:
        raise SystemExit(why)
    configs = {1: {}, args.processes: {}}
    with ThrowawayPostgres() as postgres:
        import psycopg2

        with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cursor:
            cursor.execute(open(SCHEMA_PATH).read())
            cursor.execute(
                "INSERT INTO customer (certificate, authentication) VALUES (%s, %s)",
                ("cert-1", '{"client_key": "%s"}' % SECRET),
            )
        running = []
        try:
            for processes in configs:
                for plugin in ("customer_verification", "busy"):
                    configs[processes][plugin] = start(
                        postgres.dsn, source, args.workers, processes, plugin
                    )
                    running.append(configs[processes][plugin])
            time.sleep(2)
            cpu_per_request = {processes: [] for processes in configs}
            throughput = {processes: [] for processes in configs}
            for round_number in range(args.rounds):
                for processes in random.sample(list(configs), len(configs)):
                    server, bridge = configs[processes]["customer_verification"]
                    before = cpu(server)
                    answered = paced(bridge, args.rate, args.seconds)
                    cpu_per_request[processes].append((cpu(server) - before) / answered * 1e6)
                    server, bridge = configs[processes]["busy"]
                    throughput[processes].append(saturated(bridge, args.seconds) / args.seconds)
                print(f"round {round_number + 1}: done", flush=True)
        finally:
            for server, bridge in running:
                bridge.stop()
                server.stop()
    several = args.processes
    cpu_median = {processes: statistics.median(cpu_per_request[processes]) for processes in configs}
    rate_median = {processes: statistics.median(throughput[processes]) for processes in configs}
    print(f"| processes | server CPU µs/req at {args.rate} req/s | busy plugin req/s |")
    print("|---:|---:|---:|")
    for processes in configs:
        print(f"| {processes} | {cpu_median[processes]:.0f} | {rate_median[processes]:.0f} |")
    print(
        f"CPU per request, {several} processes / 1: {cpu_median[several] / cpu_median[1]:.2f} "
        f"(target <= 1.1); busy req/s, {several} / 1: {rate_median[several] / rate_median[1]:.2f} "
        "(target >= 1.7 on 2 cores)"
    )


if __name__ == "__main__":
    main()
