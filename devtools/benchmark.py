"""Benchmark: the real plugin server driven through the Kong stand-in, against the limit.

    python -m devtools.benchmark [--rounds 7] [--duration 3] [--window 0.1] [--ramp 0.1]
                                 [--concurrency 8] [--out benchmark-results]

For each server mode (--modes: the lean transport, stock kong-pdk in gevent mode, kong-pdk's
threads) it measures: (a) the limit, a no-op plugin making the same PDK calls; (b) this plugin
with a warm cache; (c) a cold cache, every request a new certificate; (d) rejections (wrong
signatures); (e) RFC 9421 signatures; (f) the connect-per-request reference. It prints a table
(req/s, p50/p99 latency, round trips per request, database queries per 1,000 requests, plugin
server CPU per request), and writes results.json and results.png to --out.

In a round, every scenario's plugin server runs at once, in every mode, and --concurrency client
processes (Kong's stand-in) take turns on them in a random order, --duration seconds each in all:
on a shared machine, a slow moment then costs every scenario alike instead of one. A turn records
--window seconds after an unrecorded --ramp, in which the previous scenario's last requests finish
and the woken server settles. Figures are medians over --rounds rounds. The clients compete with
the servers for this machine's cores, as nginx would.

Short turns make the comparison fair: with the limit measured against itself, single rounds of
the ratio spread by 0.12 (standard deviation) with 0.5 s turns and by 0.04 with 0.1 s turns.
"""

import argparse
import contextlib
import json
import multiprocessing
import os
import pathlib
import random
import statistics
import tempfile
import time

import psycopg2
import psycopg2.extensions

from customer_auth.core import v1
from devtools.kong_standin import KongStandIn, PluginServer, Request

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository
MODES = {  # name: (start flags, environment)
    # the shipped configuration
    "lean": (
        ["-g", "--no-lua-style"],
        {"CUSTOMER_VERIFICATION_TRANSPORT": "lean"},
    ),
    "kong-pdk": (["-g", "--no-lua-style"], {"CUSTOMER_VERIFICATION_TRANSPORT": "kong-pdk"}),
    "threading": (["--no-lua-style"], {}),  # kong-pdk's default mode
    # two processes under the supervisor (each client process is a "worker" to route by)
    "lean x2": (
        ["-g", "--no-lua-style"],
        {"CUSTOMER_VERIFICATION_TRANSPORT": "lean", "CUSTOMER_VERIFICATION_PROCESSES": "2"},
    ),
}
DEFAULT_MODES = ("lean", "kong-pdk")
WARM_CUSTOMERS = 200
COLD_CUSTOMERS = 200_000
SCENARIOS = {  # name: (plugin script, BENCHMARK_PLUGIN, requests, plugin config)
    "limit": ("devtools/benchmark_plugins.py", "limit", "warm", {}),
    # 5 ms of Python per request: the plugin server, not the gateway, is the bottleneck
    "busy": ("devtools/benchmark_plugins.py", "busy", "warm", {}),
    "warm cache": ("customer_verification.py", None, "warm", {}),
    "warm cache with consumers": (
        "customer_verification.py",
        None,
        "warm",
        {"consumer_by": ["username"]},
    ),
    "cold cache": ("customer_verification.py", None, "cold", {}),
    # lookups on a hot standby
    "cold cache on standby": (
        "customer_verification.py",
        None,
        "cold",
        {},
    ),
    "rejections": ("customer_verification.py", None, "wrong", {}),
    "rfc9421 hmac": ("customer_verification.py", None, "rfc9421 hmac", {}),
    "rfc9421 ed25519": ("customer_verification.py", None, "rfc9421 ed25519", {}),
    # hmac-sha256 with replay_protection: a fresh nonce each, claimed on the primary.
    "rfc9421 hmac replay-protected": (
        "customer_verification.py",
        None,
        "rfc9421 hmac nonce",
        {"replay_protection": True},
    ),
    "connect per request": ("devtools/benchmark_plugins.py", "connect-per-request", "warm", {}),
}
# Kong consumers of the warm customers, by username, for the scenario that maps them.
WARM_CONSUMERS = [
    {"id": f"00000000-0000-4000-8000-{n:012d}", "username": f"warm-{n}"}
    for n in range(WARM_CUSTOMERS)
]
# One key pair for every ed25519 customer of the benchmark: its private half is no secret.
ED25519_SEED = bytes(range(32))
_signed = {}  # (kind, number) -> a signed request, reused: signing costs a client ~0.1 ms


def request_for(kind, i, worker, workers=1):
    """The keyword arguments of the stand-in's Request for request ``i`` of ``worker``."""
    if kind == "cold":
        # Workers share the server's cache: interleaved, no two requests name one certificate.
        number = (i * workers + worker) % COLD_CUSTOMERS
        return {"header_lines": list(v1.signed_headers(f"cold-{number}", f"key-{number}").items())}
    number = (worker * 7 + i) % WARM_CUSTOMERS
    # Signed anew for each, as clients do (a nonce is good once).
    if kind in ("rfc9421 hmac", "rfc9421 hmac nonce"):
        return _rfc9421_request(kind, number)
    if kind.startswith("rfc9421"):
        if (kind, number) not in _signed:
            _signed[kind, number] = _rfc9421_request(kind, number)
        return _signed[kind, number]
    client_key = "wrong" if kind == "wrong" else f"key-warm-{number}"
    return {"header_lines": list(v1.signed_headers(f"warm-{number}", client_key).items())}


def _rfc9421_request(kind, number):
    import types

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from http_message_signatures.structures import CaseInsensitiveDict

    from customer_auth.client import sign_message

    target = f"/echo?customer={number}"
    message = types.SimpleNamespace(
        method="GET", url=f"http://gateway.test{target}", headers=CaseInsensitiveDict()
    )
    if kind == "rfc9421 ed25519":
        sign_message(
            message, f"ed-{number}", private_key=Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
        )
    else:
        sign_message(message, f"warm-{number}", client_key=f"key-warm-{number}")
    return {
        "header_lines": [("host", "gateway.test"), *message.headers.items()],
        "method": "GET",
        "target": target,
    }


def drive(targets, worker, workers, window, ramp, schedule, ready, start, results):
    """One client process: warms every scenario's server, then takes turns on them as scheduled.
    A turn is ``ramp`` seconds whose requests are not recorded (the previous scenario's last
    requests finish meanwhile), then ``window`` seconds recorded."""
    kongs = []
    for socket_path, plugin_info, kind, warm_up, config in targets:
        kong = KongStandIn(socket_path, plugin_info)
        kong.configure("bench", config)
        kong.consumers = WARM_CONSUMERS
        for i in range(warm_up):  # fills this plugin instance's cache
            kong.handle(Request(**request_for(kind, i, worker, workers)), "bench")
        kongs.append((kong, kind))
    measured = [{"latencies": [], "round_trips": 0, "statuses": {}, "sent": 0} for _ in targets]
    ready.put(worker)
    start.wait()
    start_at, i = start.start_at.value, WARM_CUSTOMERS
    for number, turn in enumerate(schedule):
        (kong, kind), part = kongs[turn], measured[turn]
        begin = start_at + number * (ramp + window)
        time.sleep(max(0.0, begin - time.time()))
        while (now := time.time()) < begin + ramp + window:
            request = Request(**request_for(kind, i, worker, workers))
            began = time.perf_counter()
            outcome = kong.handle(request, "bench")
            part["sent"] += 1
            i += 1
            if now >= begin + ramp:
                part["latencies"].append(time.perf_counter() - began)
                part["round_trips"] += outcome.round_trips
                part["statuses"][outcome.status] = part["statuses"].get(outcome.status, 0) + 1
    for kong, _kind in kongs:
        kong.close()
    results.put(measured)


class _Start:
    """The moment every client begins, set once all have warmed up."""

    def __init__(self):
        self._event = multiprocessing.Event()
        self.start_at = multiprocessing.Value("d", 0.0)

    def wait(self):
        self._event.wait()

    def set(self, start_at):
        self.start_at.value = start_at
        self._event.set()


def run_round(dsns, cases, duration, window, ramp, concurrency, root, seed):
    """Every case's server (a scenario in a mode) up at once, the clients taking turns in short
    windows, so a slow moment of a shared machine falls on every case alike."""
    turns = max(1, round(duration / window))
    # Each cycle in a new random order, so no case always follows the same one (the database
    # work of a cold cache or a connect per request would otherwise weigh on its successor).
    rng = random.Random(seed)
    schedule = [turn for _ in range(turns) for turn in rng.sample(range(len(cases)), len(cases))]
    servers, targets = {}, []
    try:
        for case in cases:
            scenario, mode = case
            script, benchmark_plugin, kind, config = SCENARIOS[scenario]
            flags, mode_env = MODES[mode]
            env = {
                "DATABASE_URL": dsns[case],
                "CUSTOMER_VERIFICATION_LOG_LEVEL": "WARNING",
                "CUSTOMER_VERIFICATION_POOL_SIZE": "8",
                **mode_env,
            }
            if benchmark_plugin:
                env["BENCHMARK_PLUGIN"] = benchmark_plugin
            prefix = pathlib.Path(root) / f"{scenario}-{mode}".replace(" ", "-")
            prefix.mkdir()
            server = servers[case] = PluginServer(
                ROOT / script, prefix, "customer_verification", flags, env=env
            ).start()
            info = KongStandIn.query(server.query_command, server.socket_path, env=server.env).info
            warm_up = WARM_CUSTOMERS if kind != "cold" and not benchmark_plugin else 1
            targets.append((server.socket_path, info, kind, warm_up, config))
        ready, results, start = multiprocessing.Queue(), multiprocessing.Queue(), _Start()
        workers = [
            multiprocessing.Process(
                target=drive,
                args=(targets, w, concurrency, window, ramp, schedule, ready, start, results),
            )
            for w in range(concurrency)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=300)
        queries_before = {case: lookups(dsns, case) for case in cases}
        cpu_before = {case: server.cpu_times() for case, server in servers.items()}
        start.set(time.time() + 0.2)
        collected = [results.get(timeout=len(schedule) * (ramp + window) + 120) for _ in workers]
        for worker in workers:
            worker.join()
        rows = []
        for turn, case in enumerate(cases):
            server = servers[case]
            parts = [measured[turn] for measured in collected]
            if not any(part["latencies"] for part in parts):
                raise RuntimeError(
                    f"{case}: no request finished; plugin server log:\n{server.log()}"
                )
            (user, system), (user_before, system_before) = server.cpu_times(), cpu_before[case]
            rows.append(
                _row(
                    *case,
                    parts,
                    turns * window,
                    lookups(dsns, case) - queries_before[case],
                    user - user_before,
                    system - system_before,
                    server.threads(),
                )
            )
        return rows
    finally:
        for server in servers.values():
            server.stop()


def _row(scenario, mode, parts, seconds, queries, user_seconds, system_seconds, threads):
    """One scenario's figures; queries and CPU count every request sent, ramps included."""
    latencies = sorted(latency for part in parts for latency in part["latencies"])
    requests, sent = len(latencies), sum(part["sent"] for part in parts)
    statuses = {}
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    return {
        "scenario": scenario,
        "mode": mode,
        "requests": requests,
        "req_per_s": requests / seconds,
        "p50_ms": 1000 * latencies[requests // 2],
        "p99_ms": 1000 * latencies[min(requests - 1, int(requests * 0.99))],
        "round_trips": sum(part["round_trips"] for part in parts) / requests,
        "queries_per_1000": 1000 * queries / sent,
        "server_cpu_us": 1e6 * (user_seconds + system_seconds) / sent,
        "server_user_cpu_us": 1e6
        * user_seconds
        / sent,  # the rest is the kernel's: socket calls, wakeups
        "statuses": statuses,
        "server_threads_after": threads,
    }


def lookups(dsns, case):
    """Credential lookups and nonce claims so far, on the primary and the standby, by the
    database role of ``case``: each has its own, so its statements are told apart from the
    others' running in the same round."""
    role = psycopg2.extensions.parse_dsn(dsns[case])["user"]
    return sum(
        query(
            dsns[server],
            """SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s
                                        JOIN pg_roles r ON r.oid = s.userid
                                       WHERE r.rolname = %s
                                         AND (s.query LIKE '%%FROM customer%%WHERE certificate%%'
                                              OR s.query LIKE '%%customer_nonce_claim%%')""",
            (role,),
        )
        for server in ("admin", "standby admin")
    )


def query(dsn, sql, parameters=()):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, parameters)
            return int(cursor.fetchone()[0])
    finally:
        conn.close()


@contextlib.contextmanager
def database():
    """A throwaway Postgres with the benchmark's customers, and a hot standby of it; yields DSNs:
    "admin" and "standby admin", and one per (scenario, mode) for a read-only login role of its
    own, as the deployment's plugin role ("cold cache on standby" names both hosts, the standby
    first)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from devtools.throwaway_postgres import ThrowawayPostgres

    public_key = base64.b64encode(
        Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    # Password authentication, as in the deployment: it is what makes a connection expensive.
    # full_page_writes for the standby's base backup.
    options = "-c shared_preload_libraries=pg_stat_statements -c full_page_writes=on"
    with ThrowawayPostgres(options, password="benchmark") as server:
        dsns = {"admin": server.dsn}
        conn = psycopg2.connect(server.dsn)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("CREATE EXTENSION pg_stat_statements")
            cursor.execute((ROOT / "customer_schema.sql").read_text())
            for number, case in enumerate(
                (scenario, mode) for scenario in SCENARIOS for mode in MODES
            ):
                role = f"benchmark_{number}"
                cursor.execute(
                    f"CREATE ROLE {role} LOGIN PASSWORD %s IN ROLE customer_reader, "
                    "customer_nonce_claimer",
                    (server.password,),
                )
                dsns[case] = psycopg2.extensions.make_dsn(server.dsn, user=role)
            cursor.execute(
                """INSERT INTO customer (certificate, authentication)
                              SELECT 'warm-' || n,
                                     jsonb_build_object('client_key', 'key-warm-' || n)
                                FROM generate_series(0, %s - 1) n""",
                (WARM_CUSTOMERS,),
            )
            cursor.execute(
                """INSERT INTO customer (certificate, authentication)
                              SELECT 'ed-' || n, jsonb_build_object('public_key', %s::text)
                                FROM generate_series(0, %s - 1) n""",
                (public_key, WARM_CUSTOMERS),
            )
            cursor.execute(
                """INSERT INTO customer (certificate, authentication)
                              SELECT 'cold-' || n, jsonb_build_object('client_key', 'key-' || n)
                                FROM generate_series(0, %s - 1) n""",
                (COLD_CUSTOMERS,),
            )
            cursor.execute("CHECKPOINT")
        conn.close()
        standby = server.standby()
        try:
            dsns["standby admin"] = standby.dsn
            for mode in MODES:
                role = psycopg2.extensions.parse_dsn(dsns["cold cache on standby", mode])["user"]
                dsns["cold cache on standby", mode] = (
                    f"postgresql://{role}:{server.password}@127.0.0.1:"
                    f"{standby.port},127.0.0.1:{server.port}/postgres"
                )
            yield dsns
        finally:
            standby.destroy()


def table(rows):
    lines = [
        "| scenario | mode | req/s | p50 ms | p99 ms | round trips/req | DB queries/1000 req "
        "| server CPU µs/req | of it user | statuses |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['mode']} | {r['req_per_s']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} "
            f"| {r['round_trips']:.2f} | {r['queries_per_1000']:.1f} | {r['server_cpu_us']:.0f} "
            f"| {r['server_user_cpu_us']:.0f} | {r['statuses']} |"
        )
    return "\n".join(lines)


def targets(rows, measured):
    """The issues' targets; ratios are medians of the ratios within each round, where the cases
    were measured in alternating windows of the same seconds."""
    by = {(r["scenario"], r["mode"]): r for r in rows}
    modes = [mode for mode in MODES if any(r["mode"] == mode for r in rows)]
    shipped = modes[0]  # the lean transport when measured

    def ratio(a, b, key="req_per_s"):
        return statistics.median(
            x[key] / y[key] for x, y in zip(measured[a], measured[b], strict=True)
        )

    warm, limit = ("warm cache", shipped), ("limit", shipped)
    lines = [
        f"warm cache / limit ({shipped}): {ratio(warm, limit):.2f} (target >= 0.9; per round: "
        + ", ".join(
            f"{x['req_per_s'] / y['req_per_s']:.2f}"
            for x, y in zip(measured[warm], measured[limit], strict=True)
        )
        + ")",
        f"warm cache / connect per request ({shipped}): "
        f"{ratio(warm, ('connect per request', shipped)):.1f}"
        " (target >= 25)",
        f"p99 warm cache / p99 limit ({shipped}): {ratio(warm, limit, 'p99_ms'):.2f} (target <= "
        "1.5)",
        f"round trips: success {by[warm]['round_trips']:.2f} (<= 4: Kong is told the customer), "
        "rejection "
        f"{by[('rejections', shipped)]['round_trips']:.2f} (<= 2)",
        f"DB queries per 1000 requests: warm {by[warm]['queries_per_1000']:.1f}, cold "
        f"{by[('cold cache', shipped)]['queries_per_1000']:.1f} (every cold request is a new "
        "certificate)",
        f"warm cache with consumers / warm cache ({shipped}): "
        f"{ratio(('warm cache with consumers', shipped), warm):.2f}",
        f"cold cache on standby / cold cache ({shipped}): "
        f"{ratio(('cold cache on standby', shipped), ('cold cache', shipped)):.2f}",
        f"rfc9421 hmac / warm cache (v1) ({shipped}): "
        f"{ratio(('rfc9421 hmac', shipped), warm):.2f}, "
        f"rfc9421 ed25519 / warm cache: {ratio(('rfc9421 ed25519', shipped), warm):.2f}; round "
        "trips "
        f"{by[('rfc9421 hmac', shipped)]['round_trips']:.2f} (<= 5 bodiless: the request line is "
        "one call, nginx's $request)",
    ]
    protected, hmac = ("rfc9421 hmac replay-protected", shipped), ("rfc9421 hmac", shipped)
    lines.append(
        f"replay protection / rfc9421 hmac ({shipped}): req/s {ratio(protected, hmac):.2f}, "
        "server CPU "
        f"{ratio(protected, hmac, 'server_cpu_us'):.2f}, p99 "
        f"{ratio(protected, hmac, 'p99_ms'):.2f}; DB statements "
        f"per request {by[protected]['queries_per_1000'] / 1000:.2f} (the claim, on the primary): "
        "the primary takes "
        "one a second per protected request a second, whichever node it reaches"
    )
    if "lean" in modes and "kong-pdk" in modes:
        stock = ("limit", "kong-pdk")  # the no-op plugin on stock kong-pdk: the ceiling #26 lifts
        lines += [
            "against the no-op limit on stock kong-pdk (server CPU per request, req/s, p99):",
            f"  lean limit: CPU {ratio(('limit', 'lean'), stock, 'server_cpu_us'):.2f}, "
            f"req/s {ratio(('limit', 'lean'), stock):.2f}, p99 "
            f"{ratio(('limit', 'lean'), stock, 'p99_ms'):.2f}",
            f"  lean warm cache: CPU {ratio(('warm cache', 'lean'), stock, 'server_cpu_us'):.2f} "
            "(target <= 0.5, aim 0.4), "
            f"req/s {ratio(('warm cache', 'lean'), stock):.2f} (target >= 1.5, aim 2), "
            f"p99 {ratio(('warm cache', 'lean'), stock, 'p99_ms'):.2f} (target <= 1)",
            "  lean rfc9421 hmac: CPU "
            f"{ratio(('rfc9421 hmac', 'lean'), stock, 'server_cpu_us'):.2f} (target <= 0.6)",
            "  user CPU alone (the kernel's share, socket calls and wakeups, is alike in both): "
            "lean limit "
            f"{ratio(('limit', 'lean'), stock, 'server_user_cpu_us'):.2f}, lean warm cache "
            f"{ratio(('warm cache', 'lean'), stock, 'server_user_cpu_us'):.2f}, lean rfc9421 hmac "
            f"{ratio(('rfc9421 hmac', 'lean'), stock, 'server_user_cpu_us'):.2f}",
            "  lean / kong-pdk, same scenario, server CPU: "
            + ", ".join(
                f"{scenario} "
                f"{ratio((scenario, 'lean'), (scenario, 'kong-pdk'), 'server_cpu_us'):.2f}"
                for scenario in SCENARIOS
                if (scenario, "lean") in measured and (scenario, "kong-pdk") in measured
            ),
        ]
    return lines


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(SCENARIOS)
    figure, axis = plt.subplots(figsize=(10, 4.5))
    modes = [mode for mode in MODES if any(r["mode"] == mode for r in rows)]
    width = 0.8 / len(modes)
    for offset, mode in enumerate(modes):
        values = [
            next(r["req_per_s"] for r in rows if r["scenario"] == s and r["mode"] == mode)
            for s in scenarios
        ]
        axis.bar(
            [i + (offset - (len(modes) - 1) / 2) * width for i in range(len(scenarios))],
            values,
            width,
            label=mode,
        )
    axis.set_xticks(range(len(scenarios)), scenarios, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("requests per second")
    axis.set_title("customer_verification through the Kong stand-in")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=3.0,
        help="seconds each scenario is measured per round (default: %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=0.1,
        help="seconds of one turn before the clients move to the next scenario "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.1,
        help="unrecorded seconds at the start of each turn (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="concurrent requests (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="benchmark-results", help="directory for results.json and results.png"
    )
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help="server modes to measure, of " + ", ".join(MODES) + " (default: %(default)s)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="scenarios to measure (default: all)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=7,
        help="rounds, each with fresh servers; figures are medians over them "
        "(default: %(default)s)",
    )
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measured = {}
    with database() as dsns:
        cases = [
            (scenario, mode)
            for mode in args.modes.split(",")
            for scenario in args.scenarios.split(",")
        ]
        for round_number in range(1, args.rounds + 1):
            with tempfile.TemporaryDirectory(prefix="cv-bench-") as root:
                rows = run_round(
                    dsns,
                    cases,
                    args.duration,
                    args.window,
                    args.ramp,
                    args.concurrency,
                    root,
                    seed=round_number,
                )
            for row in rows:
                row["round"] = round_number
                measured.setdefault((row["scenario"], row["mode"]), []).append(row)
            print(
                f"round {round_number}: "
                + ", ".join(
                    f"{row['scenario']} ({row['mode']}) {row['req_per_s']:.0f} req/s"
                    for row in rows
                ),
                flush=True,
            )
    rows = [
        sorted(runs, key=lambda row: row["req_per_s"])[len(runs) // 2] for runs in measured.values()
    ]
    complete = {r["scenario"] for r in rows} == set(SCENARIOS)
    summary = targets(rows, measured) if complete else ["(targets need every scenario)"]
    (out / "results.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "targets": summary,
                "cores": os.cpu_count(),
                "duration": args.duration,
                "window": args.window,
                "ramp": args.ramp,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "every_round": [row for runs in measured.values() for row in runs],
            },
            indent=2,
        )
    )
    if complete:
        chart(rows, out / "results.png")
    print()
    print(table(rows))
    print()
    print("\n".join(summary))
    print(f"\nwrote {out / 'results.json'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
