"""WSGI and ASGI middleware in real servers with real frameworks: Flask under gunicorn (two
pre-forked workers), Django under gunicorn, FastAPI under uvicorn, against the real Postgres,
driven over HTTP by the package's own SignedRequestAuth and by hostile requests."""
import hashlib
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT
from customer_auth.client import SignedRequestAuth

BIN = os.path.dirname(sys.executable)
APPS = {
    "flask+gunicorn": [os.path.join(BIN, "gunicorn"), "-w", "2", "flask_app:app"],
    "django+gunicorn": [os.path.join(BIN, "gunicorn"), "-w", "1", "django_app:application"],
    "fastapi+uvicorn": [os.path.join(BIN, "uvicorn"), "fastapi_app:app"],
}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", params=list(APPS))
def service(request, database_url):
    port = free_port()
    command = APPS[request.param] + (["-b", f"127.0.0.1:{port}"] if "gunicorn" in APPS[request.param][0]
                                     else ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"])
    env = {**os.environ, "DATABASE_URL": database_url,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "apps"), str(ROOT)])}
    process = subprocess.Popen(command, cwd=ROOT / "tests" / "apps", env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(base + "/health", timeout=1)
            break
        except requests.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
            time.sleep(0.1)
    yield base
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def customer(customers, service):
    """The service's customer, added anew for each test: every worker has heard of the change (the
    listener evicts what an earlier test cached) before the test begins."""
    customer_id = customers.add("svc-cert", "svc-key")
    deadline = time.monotonic() + 3
    auth = SignedRequestAuth("svc-cert", "svc-key", scheme="v1")
    while {requests.get(service + "/whoami", auth=auth, timeout=10).json().get("customer_id")
           for _ in range(4)} != {customer_id}:
        assert time.monotonic() < deadline, "the service did not hear of the new customer"
        time.sleep(0.05)
    return customer_id


def test_v1_and_rfc9421_clients_reach_the_app_with_their_customer_id(service, customer):
    for auth in (SignedRequestAuth("svc-cert", "svc-key"), SignedRequestAuth("svc-cert", "svc-key", scheme="v1")):
        answer = requests.get(service + "/whoami?x=1", auth=auth, headers={"X-Customer-Id": "forged"}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["customer_id"] == customer and answer.json()["header"] is None


def test_a_signed_body_reaches_the_app_unchanged(service, customer):
    body = bytes(range(256)) * 10  # not UTF-8, 2560 bytes
    answer = requests.post(service + "/echo", data=body, auth=SignedRequestAuth("svc-cert", "svc-key"), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"customer_id": customer, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_unsigned_wrongly_signed_and_replayed_requests_get_the_plugins_answers(service, customer):
    unsigned = requests.get(service + "/whoami", timeout=10)
    assert unsigned.status_code == 400 and unsigned.json()["message"].startswith("Missing")
    wrong = requests.get(service + "/whoami", auth=SignedRequestAuth("svc-cert", "wrong"), timeout=10)
    assert (wrong.status_code, wrong.json()) == (403, {"message": "Request signature could not be verified"})
    signed = requests.Request("GET", service + "/whoami?a=1", auth=SignedRequestAuth("svc-cert", "svc-key")).prepare()
    replayed = requests.get(service + "/whoami?a=2", headers=dict(signed.headers), timeout=10)
    assert replayed.status_code == 403
    policy = requests.get(service + "/whoami", headers={"Signature-Input": 'sig1=("@method");created=1;keyid="svc-cert"',
                                                        "Signature": "sig1=:AAAA:"}, timeout=10)
    assert policy.status_code == 400 and "Accept-Signature" in policy.headers


@pytest.mark.parametrize("hostile", [
    {"Signature-Input": "((((", "Signature": "sig1=:AAAA:"},
    {"Signature-Input": 'sig1=("@method" "@path" "@query");created="x";keyid="svc-cert"', "Signature": "sig1=:AAAA:"},
    {"client-certificate-id": "svc cert", "client-request-time": "1", "client-request-signature": "00"},
    {"client-certificate-id": "svc-cert", "client-request-time": "9" * 40, "client-request-signature": "ab" * 32},
])
def test_hostile_headers_get_a_400_or_403_json_answer(service, customer, hostile):
    answer = requests.get(service + "/whoami", headers=hostile, timeout=10)
    assert answer.status_code in (400, 403) and isinstance(answer.json()["message"], str)


def test_exempt_routes_stay_open_and_lose_a_forged_customer_id(service, customer):
    answer = requests.get(service + "/health", headers={"X-Customer-Id": "forged"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"customer_id": None, "header": None}


def test_a_body_over_max_body_size_is_413_also_chunked(service, customer):
    big = b"x" * 5000
    assert requests.post(service + "/echo", data=big, auth=SignedRequestAuth("svc-cert", "svc-key"),
                         timeout=10).status_code == 413
    signed = requests.Request("POST", service + "/echo", data=big, auth=SignedRequestAuth("svc-cert", "svc-key")).prepare()
    headers = {name: value for name, value in signed.headers.items() if name.lower() != "content-length"}
    chunked = requests.post(service + "/echo", data=iter([big[:2500], big[2500:]]), headers=headers, timeout=10)
    assert chunked.status_code == 413


def test_a_client_that_stops_mid_body_gets_no_5xx_and_the_service_goes_on(service, customer):
    signed = requests.Request("POST", service + "/echo", data=b"y" * 3000,
                              auth=SignedRequestAuth("svc-cert", "svc-key")).prepare()
    host, port = service.removeprefix("http://").split(":")
    head = "".join(f"{name}: {value}\r\n" for name, value in signed.headers.items())
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(f"POST /echo HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + b"y" * 1000)
        connection.shutdown(socket.SHUT_WR)
        answer = connection.recv(65536)
    assert not answer.startswith(b"HTTP/1.1 5")
    assert requests.get(service + "/whoami", auth=SignedRequestAuth("svc-cert", "svc-key"), timeout=10).status_code == 200


def test_a_revocation_reaches_the_running_app_within_a_second(service, customer, customers):
    auth = SignedRequestAuth("svc-cert", "svc-key", scheme="v1")
    for _ in range(4):  # every worker has it cached (an hour)
        assert requests.get(service + "/whoami", auth=auth, timeout=10).status_code == 200
    customers.set_authentication("svc-cert", revoked_at=time.time())
    deadline = time.monotonic() + 1.0
    statuses = set()
    while time.monotonic() < deadline or len(statuses) == 0:
        statuses = {requests.get(service + "/whoami", auth=auth, timeout=10).status_code for _ in range(4)}
        if statuses == {403}:
            break
    assert statuses == {403}


def test_each_serving_process_has_its_own_listener(service, customer, customers):
    """gunicorn forks its workers from one master: each must have built its own store."""
    listeners = customers.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                  "'customer_verification listener'")[0][0]
    pids = {requests.get(service + "/whoami", auth=SignedRequestAuth("svc-cert", "svc-key"), timeout=10).json()["pid"]
            for _ in range(20)}
    assert listeners >= len(pids) >= 1
