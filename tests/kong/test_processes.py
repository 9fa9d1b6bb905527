"""Several plugin server processes on one socket (CUSTOMER_VERIFICATION_PROCESSES): the
supervisor routes each connection to the child that serves its nginx worker, replaces a child
that dies in its slot, and reports the children as one server. Behind Kong's own bridge with
several nginx workers: tests/kong/test_kong_bridge.py."""

import json
import os
import signal
import subprocess
import time
import types
import urllib.request

import pytest
from conftest import ROOT, short_directory

from customer_auth.core import v1
from customer_auth.kong.ids import MAX_PROCESSES, TICK_NS, Ids
from devtools.kong_standin import FailClosedRule, KongStandIn, PluginServer, Request
from devtools.local_ports import free_port

SECRET = "processes-key"


def children_of(pid):
    found = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True)
    return sorted(int(line) for line in found.stdout.split())


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("not within the time allowed")


@pytest.fixture
def supervised(database_url, customers):
    customers.add("cert-1", SECRET)
    port = free_port()
    server = PluginServer(
        ROOT / "customer_verification.py",
        short_directory(),
        "customer_verification",
        ["-g", "--no-lua-style"],
        env={
            "DATABASE_URL": database_url,
            "CUSTOMER_VERIFICATION_PROCESSES": "2",
            "CUSTOMER_VERIFICATION_POOL_SIZE": "6",
            "CUSTOMER_VERIFICATION_METRICS_PORT": str(port),
        },
    ).start()
    kong = KongStandIn.query(
        server.query_command, server.socket_path, fail_closed=FailClosedRule(), timeout=5
    )
    kong.configure("plugin", {})
    server.metrics_port = port
    wait_for(lambda: len(children_of(server.process.pid)) == 2)
    yield server, kong
    kong.close()
    server.stop()


def signed():
    return Request(list(v1.signed_headers("cert-1", SECRET).items()))


def scrape(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.read().decode()


def test_two_processes_answer_and_report_as_one_server(supervised):
    server, kong = supervised
    assert [kong.handle(signed()).status for _ in range(5)] == [200] * 5
    assert kong.handle(Request([])).status == 400
    wait_for(lambda: json.loads(scrape(server.metrics_port, "/health")) == {"status": "up"})
    scraped = wait_for(
        lambda: (
            (text := scrape(server.metrics_port, "/metrics"))
            and 'customer_verification_requests_total{outcome="verified"} 5.0' in text
            and text
        )
    )
    assert 'customer_verification_processes{state="running"} 2.0' in scraped
    assert 'customer_verification_requests_total{outcome="malformed"} 1.0' in scraped


def test_the_database_pool_is_shared_out_among_the_children(supervised):
    server, _ = supervised
    for child in children_of(server.process.pid):
        with open(f"/proc/{child}/environ", "rb") as environ:
            assert b"CUSTOMER_VERIFICATION_POOL_SIZE=3\0" in environ.read()


def test_a_killed_child_is_replaced_in_its_slot_and_nothing_passes_unverified(supervised):
    server, kong = supervised
    assert kong.handle(signed()).status == 200
    before = children_of(server.process.pid)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(set(children_of(server.process.pid)) - set(before)) == 1)
    outcomes = [kong.handle(signed()) for _ in range(20)]
    assert {outcome.status for outcome in outcomes} <= {200, 503}  # never a wrong answer
    wait_for(lambda: kong.handle(signed()).status == 200)
    assert "exited with -9; replaced" in server.log()


def test_the_children_exit_when_the_supervisor_goes(supervised):
    server, _ = supervised
    children = children_of(server.process.pid)
    server.process.kill()
    server.process.wait()
    wait_for(lambda: not any(os.path.exists(f"/proc/{child}") for child in children))


def test_the_description_for_kong_starts_no_children(database_url):
    dumped = subprocess.run(
        [os.sys.executable, str(ROOT / "customer_verification.py"), "--dump"],
        env={**os.environ, "CUSTOMER_VERIFICATION_PROCESSES": "4", "DATABASE_URL": database_url},
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert json.loads(dumped.stdout)[0]["Name"] == "customer_verification"


def test_ids_never_meet_across_processes_or_restarts():
    slots = [Ids(slot) for slot in (0, 1, MAX_PROCESSES - 1)]
    given = [ids.next() for ids in slots for _ in range(1000)]
    assert len(set(given)) == len(given)
    time.sleep(len(given) * TICK_NS / 1e9)  # a process gives at most one id a tick, on average
    later = Ids(0)
    assert later.next() > max(given)
    assert max(given) < 2**53  # exact in Kong's Lua numbers


def test_an_instance_nothing_uses_is_dropped_and_a_used_one_kept():
    from kong_pdk.module import Instance

    from customer_auth.kong.ids import expire_unused

    class Plugin:
        def __init__(self, config):
            self.config = config

    server = types.SimpleNamespace(
        instances={1: Instance("p", {}, Plugin, None), 2: Instance("p", {}, Plugin, None)}
    )
    for instance in server.instances.values():
        instance.start_time -= 7200
    server.instances[2].reset_expire_ts()
    assert expire_unused(server, ttl=3600) == 1 and list(server.instances) == [2]
