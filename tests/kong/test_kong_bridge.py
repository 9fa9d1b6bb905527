"""The real plugin server behind Kong 3.9's own plugin-server Lua (``kong/runloop/plugin_servers``,
read from ``KONG_SOURCE``) in nginx with lua-nginx-module, two workers: what a Kong user gets,
where the Kong stand-in is only a model. See devtools/kong_bridge and docs/development.md."""

import os
import time
import uuid

import httpx
import pytest
import requests
from conftest import ROOT, short_directory

from customer_auth.client import SignedRequestAuth, sign_message
from customer_auth.core import v1
from devtools.kong_bridge import KongBridge, kong_source, missing_nginx
from devtools.kong_standin import PluginServer

SOURCE, NO_SOURCE = kong_source()
pytestmark = [
    pytest.mark.skipif(SOURCE is None, reason=NO_SOURCE or ""),
    pytest.mark.skipif(missing_nginx() is not None, reason=missing_nginx() or ""),
]

SECRET = "bridge-secret"
MiB = 1024 * 1024
CONSUMER = {"id": str(uuid.uuid4()), "username": "cert-1", "custom_id": "c-1"}
ROUTES = {
    "/both": {},
    "/rfc9421": {"signature_schemes": ["rfc9421"]},
    "/replay": {"replay_protection": True},
    "/consumer": {"consumer_by": ["username"]},
    "/open": None,  # no plugin: only the fail-closed rule
}


def start_server(database_url):
    return PluginServer(
        ROOT / "customer_verification.py",
        short_directory(),
        "customer_verification",
        ["-g", "--no-lua-style"],
        env={"DATABASE_URL": database_url},
    ).start()


@pytest.fixture(scope="module")
def gateway(database_url):
    server = start_server(database_url)
    bridge = KongBridge(SOURCE, server, ROUTES, consumers=[CONSUMER], workers=2).start()
    yield bridge
    bridge.stop()
    server.stop()


@pytest.fixture
def customer(customers):
    customers.execute("DELETE FROM customer_nonce")
    return customers.add("cert-1", SECRET)


@pytest.fixture
def quiet(gateway):
    """Kong writes no [error] line while the test runs."""
    before = len(gateway.errors())
    yield
    assert gateway.errors()[before:] == []


def v1_headers(client_key=SECRET):
    return list(v1.signed_headers("cert-1", client_key).items())


def rfc9421_headers(gateway, method, target, body=None):
    """Headers of a request signed as SignedRequestAuth signs it (the body's digest with one)."""
    prepared = requests.Request(
        method, f"http://127.0.0.1:{gateway.port}{target}", data=body
    ).prepare()
    sign_message(prepared, "cert-1", client_key=SECRET, body=body)
    return [(name, value) for name, value in prepared.headers.items() if name != "Content-Length"]


def url(gateway, target):
    return f"http://127.0.0.1:{gateway.port}{target}"


# -- verified and rejected ----------------------------------------------------------------------


def test_a_v1_request_is_verified_and_a_forged_customer_id_never_passes(gateway, customer, quiet):
    forged = [("X-Customer-Id", "forged")]
    status, _, body = gateway.request("GET", "/both/x", v1_headers() + forged)
    assert status == 200 and f'"x-customer-id":"{customer}"' in body.decode()
    status, _, body = gateway.request("GET", "/both/x", v1_headers("wrong") + forged)
    assert (status, body) == (403, b'{"message":"Request signature could not be verified"}')
    assert gateway.request("GET", "/both/x", forged)[0] == 400


def test_an_rfc9421_request_is_verified_and_an_altered_one_refused(gateway, customer, quiet):
    auth = SignedRequestAuth("cert-1", SECRET)
    answer = requests.get(url(gateway, "/rfc9421/x?a=1"), auth=auth, timeout=10)
    assert answer.status_code == 200 and answer.json()["headers"]["x-customer-id"] == customer
    headers = rfc9421_headers(gateway, "GET", "/rfc9421/x?a=1")
    assert gateway.request("GET", "/rfc9421/x?a=2", headers)[0] == 403
    assert gateway.request("GET", "/rfc9421/x", v1_headers())[0] == 403  # v1 refused on this route


# -- bodies: every size and framing gets a deliberate answer ------------------------------------

BODIES = {
    # size, framing
    "in memory": (100, "length"),
    "in nginx's temp file": (100_000, "length"),
    "exactly max_body_size": (MiB, "length"),
    "over max_body_size by one byte": (MiB + 1, "length"),
    "twice max_body_size": (2 * MiB, "length"),
    "chunked in memory": (100, "chunked"),
    "chunked in a temp file": (100_000, "chunked"),
    "chunked over max_body_size": (MiB + 1, "chunked"),
}


@pytest.mark.parametrize("case", list(BODIES))
def test_every_body_gets_a_deliberate_answer(gateway, customer, quiet, case):
    size, framing = BODIES[case]
    body = b"b" * size
    headers = rfc9421_headers(gateway, "POST", "/both/upload", body)
    status, _, answer = gateway.request(
        "POST", "/both/upload", headers, body, chunked=framing == "chunked"
    )
    if size > MiB:
        assert (status, answer) == (413, b'{"message":"Request body is larger than 1048576 bytes"}')
    else:
        assert status == 200, answer


@pytest.mark.parametrize("size", [100, 100_000, MiB + 1])
def test_an_http2_body_without_a_length_gets_a_deliberate_answer(gateway, customer, quiet, size):
    body = b"h" * size
    headers = rfc9421_headers(gateway, "POST", "/both/upload", body)
    with httpx.Client(http1=False, http2=True, timeout=30) as client:
        answer = client.post(
            gateway.http2_url("/both/upload"), headers=headers, content=iter([body])
        )
    assert answer.http_version == "HTTP/2"
    assert answer.status_code == (413 if size > MiB else 200), answer.text


@pytest.mark.parametrize("framing", ["length", "chunked", "http/2"])
def test_a_body_under_a_bodiless_signature_is_the_policys_400(gateway, customer, quiet, framing):
    headers = rfc9421_headers(gateway, "POST", "/both/upload")  # no Content-Digest
    body = b"forged" * 5000
    if framing == "http/2":
        with httpx.Client(http1=False, http2=True, timeout=30) as client:
            answer = client.post(gateway.http2_url("/both/upload"), headers=headers, content=body)
        status, message = answer.status_code, answer.json()["message"]
    else:
        status, _, text = gateway.request(
            "POST", "/both/upload", headers, body, chunked=framing == "chunked"
        )
        message = text.decode()
    assert status == 400 and "does not cover content-digest" in message


def test_a_bodiless_request_over_http2_is_verified(gateway, customer, quiet):
    with httpx.Client(http1=False, http2=True, timeout=30) as client:
        answer = client.get(
            gateway.http2_url("/both/x?q=1"), auth=SignedRequestAuth("cert-1", SECRET)
        )
    assert (answer.http_version, answer.status_code) == ("HTTP/2", 200)


# -- replay protection, consumers ---------------------------------------------------------------


def test_a_replayed_request_is_refused_on_any_worker(gateway, customer, quiet):
    headers = rfc9421_headers(gateway, "GET", "/replay/x")
    assert gateway.request("GET", "/replay/x", headers)[0] == 200
    for _ in range(4):  # new connections: either worker
        assert gateway.request("GET", "/replay/x", headers)[0] == 403


def test_a_customer_mapped_to_a_kong_consumer_reaches_the_upstream_as_it(gateway, customer, quiet):
    answer = requests.get(
        url(gateway, "/consumer/x"), auth=SignedRequestAuth("cert-1", SECRET), timeout=10
    )
    upstream = answer.json()["headers"]
    assert upstream["x-consumer-username"] == "cert-1"
    assert upstream["x-consumer-id"] == CONSUMER["id"]
    assert upstream["x-customer-id"] == customer


# -- the plugin server stopped or restarted ------------------------------------------------------


def test_with_the_plugin_server_stopped_requests_fail_closed(database_url, customers):
    customers.add("cert-1", SECRET)
    server = start_server(database_url)
    bridge = KongBridge(SOURCE, server, {"/both": {}}, workers=2).start()
    try:
        for _ in range(4):  # an instance in each worker
            assert bridge.request("GET", "/both/x", v1_headers())[0] == 200
        server.stop()
        status, _, body = bridge.request("GET", "/both/x", v1_headers() + [("X-Customer-Id", "f")])
        assert (status, body) == (503, b'{"message":"Authentication is temporarily unavailable"}')
    finally:
        bridge.stop()
        server.stop()


def pinned_connections(bridge, count=2):
    """Keep-alive connections held by as many different workers."""
    held = {}
    for _ in range(50):
        connection = bridge.connection()
        connection.request("GET", "/open/")  # the fail-closed 503, and the worker's pid
        if connection.worker in held:
            connection._http.close()
        else:
            held[connection.worker] = connection
        if len(held) == count:
            return list(held.values())
    raise AssertionError("the kernel never spread connections over two workers")


def test_a_restart_never_hands_one_routes_requests_to_another_routes_instance(
    database_url, customers
):
    """Kong's workers keep the instance ids StartInstance gave them (plugin.lua
    get_instance_id): a restarted server must never give an id that a worker still holds."""
    customers.add("cert-1", SECRET)
    server = start_server(database_url)
    bridge = KongBridge(
        SOURCE, server, {"/both": {}, "/rfc9421": {"signature_schemes": ["rfc9421"]}, "/open": None}
    ).start()
    try:
        first, second = pinned_connections(bridge)
        # the first worker starts /rfc9421's instance, the second none
        assert first.request("GET", "/rfc9421/x", v1_headers())[0] == 403
        server.stop(kill=True)
        server.start()  # as Kong respawns it
        # the second worker starts /both's instance on the new server first
        assert second.request("GET", "/both/x", v1_headers())[0] == 200
        # the first worker still holds the id of /rfc9421's old instance
        for _ in range(3):
            status, _, body = first.request("GET", "/rfc9421/x", v1_headers())
            assert status == 403, body
    finally:
        bridge.stop()
        server.stop()


# -- several processes behind several nginx workers (CUSTOMER_VERIFICATION_PROCESSES) -------------

MIXED = {
    # route, what is sent, the answer a correct server gives
    "v1": ("/both/x", "v1", 200),
    "v1 wrong key": ("/both/x", "v1-wrong", 403),
    "v1 on an RFC 9421 route": ("/rfc9421/x", "v1", 403),
    "rfc9421": ("/rfc9421/x", "rfc9421", 200),
    "replay-protected": ("/replay/x", "rfc9421", 200),
    "consumer (a yielding PDK call)": ("/consumer/x", "rfc9421", 200),
    "unsigned": ("/both/x", "none", 400),
}


def mixed_request(gateway, case):
    path, kind, expected = MIXED[case]
    if kind == "v1":
        headers = v1_headers()
    elif kind == "v1-wrong":
        headers = v1_headers("wrong")
    elif kind == "rfc9421":
        headers = rfc9421_headers(gateway, "GET", path)
    else:
        headers = []
    return path, headers, expected


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def load(gateway, seconds, stop_early=lambda: False):
    """Mixed requests from 8 threads, each on new connections (any worker): ``(case, expected,
    status)`` for each."""
    import concurrent.futures
    import itertools

    cases = itertools.cycle(MIXED)
    deadline = time.monotonic() + seconds

    def one(case):
        path, headers, expected = mixed_request(gateway, case)
        try:
            status = gateway.request("GET", path, headers, timeout=10)[0]
        except OSError:
            status = None
        return case, expected, status

    results = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline and not stop_early():
            results += pool.map(one, [next(cases) for _ in range(16)])
    return results


def wrong(results, allowed=()):
    """Answers that are neither the right one nor one of ``allowed`` (the fail-closed 503)."""
    return [result for result in results if result[2] != result[1] and result[2] not in allowed]


@pytest.fixture
def supervised_gateway(database_url, customers):
    customers.execute("DELETE FROM customer_nonce")
    customers.add("cert-1", SECRET)
    server = PluginServer(
        ROOT / "customer_verification.py",
        short_directory(),
        "customer_verification",
        ["-g", "--no-lua-style"],
        env={"DATABASE_URL": database_url, "CUSTOMER_VERIFICATION_PROCESSES": "2"},
    ).start()
    bridge = KongBridge(SOURCE, server, ROUTES, consumers=[CONSUMER], workers=4).start()
    yield bridge, server
    bridge.stop()
    server.stop()


def children_of(pid):
    import subprocess

    found = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True)
    return sorted(int(line) for line in found.stdout.split())


def test_two_processes_behind_four_workers_answer_every_request_rightly(supervised_gateway):
    bridge, server = supervised_gateway
    children = children_of(server.process.pid)
    ticks = {child: cpu_ticks(child) for child in children}
    results = load(bridge, 6)
    assert len(results) > 200 and wrong(results) == []
    assert all(cpu_ticks(child) > ticks[child] for child in children)  # both served
    assert bridge.errors() == []


def test_a_child_killed_mid_load_costs_only_fail_closed_answers(supervised_gateway):
    import signal
    import threading

    bridge, server = supervised_gateway
    victim = children_of(server.process.pid)[0]
    threading.Timer(1.5, os.kill, (victim, signal.SIGKILL)).start()
    results = load(bridge, 5)
    assert wrong(results, allowed=(503, None)) == []
    assert sum(1 for result in results if result[2] == result[1]) > 100
    assert wrong(load(bridge, 2)) == []  # replaced: all answered rightly again


def test_an_nginx_reload_and_a_restart_of_the_whole_server_give_no_wrong_answer(
    supervised_gateway,
):
    import threading

    bridge, server = supervised_gateway
    threading.Timer(1.0, bridge.reload).start()
    assert wrong(load(bridge, 4)) == []
    server.stop(kill=True)
    server.start()  # as Kong respawns it: every worker's instance ids are stale now
    time.sleep(1)
    assert wrong(load(bridge, 3), allowed=(503,)) == []
    assert wrong(load(bridge, 2)) == []


def test_replay_protection_holds_across_processes(supervised_gateway):
    import concurrent.futures

    bridge, _server = supervised_gateway
    for _ in range(3):
        headers = rfc9421_headers(bridge, "GET", "/replay/x")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = [
                answer[0]
                for answer in pool.map(
                    bridge.request, ["GET"] * 8, ["/replay/x"] * 8, [headers] * 8
                )
            ]
        assert sorted(statuses) == [200] + [403] * 7


def test_an_absolute_form_request_line_is_verified_as_nginx_reads_it(gateway, customer, quiet):
    import socket

    headers = rfc9421_headers(gateway, "GET", "/rfc9421/x?a=1")
    lines = [f"{name}: {value}" for name, value in headers]
    request = "\r\n".join(
        ["GET http://gateway.test/rfc9421/x?a=1 HTTP/1.1", "Host: gateway.test", *lines]
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as connection:
        connection.sendall(request.encode() + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
