"""benchmark.py end to end, briefly: every scenario answers as it should, with the round trips
and database lookups the issue's targets are about. Speeds are measured by the script, never
asserted here. It starts its own Postgres (it needs pg_stat_statements preloaded and creates roles),
as the fault tests do."""

import json
import subprocess
import sys

from conftest import ROOT

from devtools import benchmark


def test_benchmark_measures_every_scenario_and_tells_their_lookups_apart(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.benchmark",
            "--rounds",
            "1",
            "--duration",
            "0.6",
            "--window",
            "0.2",
            "--ramp",
            "0.05",
            "--concurrency",
            "2",
            "--modes",
            "lean,kong-pdk",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=280,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    both = {(row["scenario"], row["mode"]): row for row in results["rows"]}
    assert set(both) == {
        (scenario, mode) for scenario in benchmark.SCENARIOS for mode in ("lean", "kong-pdk")
    }
    rows = {scenario: row for (scenario, mode), row in both.items() if mode == "lean"}
    for scenario, status in [
        ("limit", "200"),
        ("busy", "200"),
        ("warm cache", "200"),
        ("warm cache with consumers", "200"),
        ("cold cache", "200"),
        ("cold cache on standby", "200"),
        ("rejections", "403"),
        ("rfc9421 hmac", "200"),
        ("rfc9421 ed25519", "200"),
        ("rfc9421 hmac replay-protected", "200"),
        ("connect per request", "200"),
    ]:
        assert rows[scenario]["requests"] > 0
        assert rows[scenario]["statuses"] == {status: rows[scenario]["requests"]}, scenario
        # gevent: no thread per request
        assert rows[scenario]["server_threads_after"] == 1, scenario
    assert rows["warm cache"]["round_trips"] == 4 and rows["rejections"]["round_trips"] == 2
    # consumers remembered like credentials
    assert rows["warm cache with consumers"]["round_trips"] == 4
    # Lookups are counted per scenario although all ran in the same seconds on one database.
    assert rows["limit"]["queries_per_1000"] == rows["warm cache"]["queries_per_1000"] == 0
    assert rows["rejections"]["queries_per_1000"] == 0
    assert rows["connect per request"]["queries_per_1000"] == 1000
    assert rows["cold cache"]["queries_per_1000"] > 900  # each cold request names a new certificate
    assert rows["cold cache on standby"]["queries_per_1000"] > 900  # counted on the standby too
    # the request line in one call (nginx's $request); no body to ask for on a bodiless GET
    assert rows["rfc9421 hmac"]["round_trips"] == rows["rfc9421 ed25519"]["round_trips"] == 5
    assert rows["rfc9421 hmac replay-protected"]["round_trips"] == 5
    # one claim each (warm-ups included)
    assert rows["rfc9421 hmac replay-protected"]["queries_per_1000"] > 990
    assert any(line.startswith("warm cache / limit") for line in results["targets"])
    assert any(line.startswith("  lean warm cache: CPU") for line in results["targets"])
    for scenario, row in rows.items():  # the same answers and round trips on stock kong-pdk
        stock = both[scenario, "kong-pdk"]
        assert (
            set(stock["statuses"]) == set(row["statuses"])
            and stock["round_trips"] == row["round_trips"]
        ), scenario
    assert (tmp_path / "results.png").stat().st_size > 0


def test_middleware_benchmark_measures_bare_and_wrapped_apps(database_url):
    result = subprocess.run(
        [sys.executable, "-m", "devtools.middleware_benchmark", "--requests", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**__import__("os").environ, "DATABASE_URL": database_url},
    )
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("| v1") or line.startswith("| rfc9421")
    ]
    assert len(rows) == 4 and all(float(row.split("|")[-2]) > 0 for row in rows)
