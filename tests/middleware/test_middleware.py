"""WSGI and ASGI middleware in real servers with real frameworks: Flask and Bottle under gunicorn
(two pre-forked workers), Django under gunicorn, FastAPI under uvicorn, against the real Postgres,
driven over HTTP by the package's own SignedRequestAuth and by hostile requests."""

import hashlib
import json
import os
import re
import socket
import sys
import time

import pytest
import requests
from conftest import serving

from customer_auth.client import SignedRequestAuth

BIN = os.path.dirname(sys.executable)
APPS = {
    "flask+gunicorn": [os.path.join(BIN, "gunicorn"), "-w", "2", "flask_app:app"],
    "django+gunicorn": [os.path.join(BIN, "gunicorn"), "-w", "1", "django_app:application"],
    "bottle+gunicorn": [os.path.join(BIN, "gunicorn"), "-w", "2", "bottle_app:application"],
    "fastapi+uvicorn": [os.path.join(BIN, "uvicorn"), "fastapi_app:app"],
}


def listening_on(server, port, *more):
    """``server`` (a gunicorn or uvicorn command line) serving on 127.0.0.1:``port``."""
    if "gunicorn" in server[0]:
        return [*server, "-b", f"127.0.0.1:{port}", *more]
    return [*server, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *more]


def command(app, port, *more):
    """The command serving ``app`` (a name in APPS) on ``port``."""
    return listening_on(APPS[app], port, *more)


@pytest.fixture(scope="module", params=list(APPS))
def service(request, database_url):
    with serving(lambda port: command(request.param, port), {"DATABASE_URL": database_url}) as base:
        yield base


@pytest.fixture
def customer(customers, service):
    """The service's customer, added anew for each test: every worker has heard of the change (the
    listener evicts what an earlier test cached) before the test begins."""
    customer_id = customers.add("svc-cert", "svc-key")
    deadline = time.monotonic() + 3
    auth = SignedRequestAuth("svc-cert", "svc-key", scheme="v1")
    while {
        requests.get(service + "/whoami", auth=auth, timeout=10).json().get("customer_id")
        for _ in range(4)
    } != {customer_id}:
        assert time.monotonic() < deadline, "the service did not hear of the new customer"
        time.sleep(0.05)
    return customer_id


def test_v1_and_rfc9421_clients_reach_the_app_with_their_customer_id(service, customer):
    for auth in (
        SignedRequestAuth("svc-cert", "svc-key"),
        SignedRequestAuth("svc-cert", "svc-key", scheme="v1"),
    ):
        answer = requests.get(
            service + "/whoami?x=1", auth=auth, headers={"X-Customer-Id": "forged"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["customer_id"] == customer and answer.json()["header"] is None


def test_a_signed_body_reaches_the_app_unchanged(service, customer):
    body = bytes(range(256)) * 10  # not UTF-8, 2560 bytes
    answer = requests.post(
        service + "/echo", data=body, auth=SignedRequestAuth("svc-cert", "svc-key"), timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "customer_id": customer,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def test_unsigned_wrongly_signed_and_replayed_requests_get_the_plugins_answers(service, customer):
    unsigned = requests.get(service + "/whoami", timeout=10)
    assert unsigned.status_code == 400 and unsigned.json()["message"].startswith("Missing")
    wrong = requests.get(
        service + "/whoami", auth=SignedRequestAuth("svc-cert", "wrong"), timeout=10
    )
    assert (wrong.status_code, wrong.json()) == (
        403,
        {"message": "Request signature could not be verified"},
    )
    signed = requests.Request(
        "GET", service + "/whoami?a=1", auth=SignedRequestAuth("svc-cert", "svc-key")
    ).prepare()
    replayed = requests.get(service + "/whoami?a=2", headers=dict(signed.headers), timeout=10)
    assert replayed.status_code == 403
    policy = requests.get(
        service + "/whoami",
        headers={
            "Signature-Input": 'sig1=("@method");created=1;keyid="svc-cert"',
            "Signature": "sig1=:AAAA:",
        },
        timeout=10,
    )
    assert policy.status_code == 400 and "Accept-Signature" in policy.headers


@pytest.mark.parametrize(
    "hostile",
    [
        {"Signature-Input": "((((", "Signature": "sig1=:AAAA:"},
        {
            "Signature-Input": 'sig1=("@method" "@path" "@query");created="x";keyid="svc-cert"',
            "Signature": "sig1=:AAAA:",
        },
        {
            "client-certificate-id": "svc cert",
            "client-request-time": "1",
            "client-request-signature": "00",
        },
        {
            "client-certificate-id": "svc-cert",
            "client-request-time": "9" * 40,
            "client-request-signature": "ab" * 32,
        },
    ],
)
def test_hostile_headers_get_a_400_or_403_json_answer(service, customer, hostile):
    answer = requests.get(service + "/whoami", headers=hostile, timeout=10)
    assert answer.status_code in (400, 403) and isinstance(answer.json()["message"], str)


def test_exempt_routes_stay_open_and_lose_a_forged_customer_id(service, customer):
    answer = requests.get(service + "/health", headers={"X-Customer-Id": "forged"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"customer_id": None, "header": None}


def test_a_body_over_max_body_size_is_413_also_chunked(service, customer):
    big = b"x" * 5000
    assert (
        requests.post(
            service + "/echo", data=big, auth=SignedRequestAuth("svc-cert", "svc-key"), timeout=10
        ).status_code
        == 413
    )
    signed = requests.Request(
        "POST", service + "/echo", data=big, auth=SignedRequestAuth("svc-cert", "svc-key")
    ).prepare()
    headers = {
        name: value for name, value in signed.headers.items() if name.lower() != "content-length"
    }
    chunked = requests.post(
        service + "/echo", data=iter([big[:2500], big[2500:]]), headers=headers, timeout=10
    )
    assert chunked.status_code == 413


def test_a_client_that_stops_mid_body_gets_no_5xx_and_the_service_goes_on(service, customer):
    signed = requests.Request(
        "POST", service + "/echo", data=b"y" * 3000, auth=SignedRequestAuth("svc-cert", "svc-key")
    ).prepare()
    host, port = service.removeprefix("http://").split(":")
    head = "".join(f"{name}: {value}\r\n" for name, value in signed.headers.items())
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"POST /echo HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + b"y" * 1000
        )
        connection.shutdown(socket.SHUT_WR)
        answer = connection.recv(65536)
    assert not answer.startswith(b"HTTP/1.1 5")
    assert (
        requests.get(
            service + "/whoami", auth=SignedRequestAuth("svc-cert", "svc-key"), timeout=10
        ).status_code
        == 200
    )


def test_a_revocation_reaches_the_running_app_within_a_second(service, customer, customers):
    auth = SignedRequestAuth("svc-cert", "svc-key", scheme="v1")
    for _ in range(4):  # every worker has it cached (an hour)
        assert requests.get(service + "/whoami", auth=auth, timeout=10).status_code == 200
    customers.set_authentication("svc-cert", revoked_at=time.time())
    deadline = time.monotonic() + 1.0
    statuses = set()
    while time.monotonic() < deadline or len(statuses) == 0:
        statuses = {
            requests.get(service + "/whoami", auth=auth, timeout=10).status_code for _ in range(4)
        }
        if statuses == {403}:
            break
    assert statuses == {403}


def test_each_serving_process_has_its_own_listener(service, customer, customers):
    """gunicorn forks its workers from one master: each must have built its own store."""
    listeners = customers.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
        "'customer_verification listener'"
    )[0][0]
    pids = {
        requests.get(
            service + "/whoami", auth=SignedRequestAuth("svc-cert", "svc-key"), timeout=10
        ).json()["pid"]
        for _ in range(20)
    }
    assert listeners >= len(pids) >= 1


# -- the second adversarial review (#25): the same answers as the plugin --------------------------

FORGED_BODY = b'{"to": "attacker", "amount": 1000000}'


def raw_request(service, request_line, header_lines, body=b""):
    """Sends bytes exactly as given (no client library fixes the framing); returns the status and
    body."""
    host, port = service.removeprefix("http://").split(":")
    head = "".join(f"{name}: {value}\r\n" for name, value in header_lines)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"{request_line}\r\nHost: {host}\r\nConnection: close\r\n{head}\r\n".encode() + body
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def captured_get(service, path="/whoami?x=1"):
    signed = requests.Request(
        "GET", service + path, auth=SignedRequestAuth("svc-cert", "svc-key")
    ).prepare()
    return [
        (name, value) for name, value in signed.headers.items() if name.lower() != "content-length"
    ]


@pytest.mark.parametrize(
    "framing",
    [
        [("Content-Length", str(len(FORGED_BODY)).zfill(20))],  # gunicorn and h11 read the number
        [("Transfer-Encoding", "chunked")],
    ],
)
def test_a_forged_body_under_a_bodiless_signature_never_reaches_the_app(service, customer, framing):
    body = (
        FORGED_BODY
        if framing[0][0] == "Content-Length"
        else b"%x\r\n%s\r\n0\r\n\r\n" % (len(FORGED_BODY), FORGED_BODY)
    )
    assert raw_request(service, "GET /whoami?x=1 HTTP/1.1", captured_get(service))[0] == 200
    status, answer = raw_request(
        service, "GET /whoami?x=1 HTTP/1.1", captured_get(service) + framing, body
    )
    assert status == 400 and b"does not cover content-digest" in answer


def test_a_bodiless_get_that_covers_the_digest_of_nothing_is_verified(service, customer):
    import types

    from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms
    from http_message_signatures.structures import CaseInsensitiveDict

    class Key(HTTPSignatureKeyResolver):
        def resolve_private_key(self, key_id):
            return b"svc-key"

    message = types.SimpleNamespace(
        method="GET", url=service + "/whoami", headers=CaseInsensitiveDict()
    )
    HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Key()).sign(
        message,
        key_id="svc-cert",
        label="sig1",
        body=b"",
        covered_component_ids=("@method", "@path", "@query", "content-digest"),
    )
    assert "Content-Digest" in message.headers
    answer = requests.get(service + "/whoami", headers=dict(message.headers.items()), timeout=10)
    assert answer.status_code == 200 and answer.json()["customer_id"] == customer


def test_a_garbage_signature_for_a_known_certificate_is_403(service, customer):
    headers = {
        "Signature-Input": 'sig1=("@method" "@path" "@query");created=%d;keyid="svc-cert"'
        % time.time(),
        "Signature": "sig1=:" + "A" * 86 + "==:",
    }
    answer = requests.get(service + "/whoami", headers=headers, timeout=10)
    assert (answer.status_code, answer.json()) == (
        403,
        {"message": "Request signature could not be verified"},
    )


def test_a_signature_header_sent_twice_is_read_as_both_lines(service, customer):
    lines = captured_get(service)
    signature_input = next(value for name, value in lines if name.lower() == "signature-input")
    status, answer = raw_request(
        service, "GET /whoami?x=1 HTTP/1.1", lines + [("Signature-Input", signature_input)]
    )
    assert (status, json.loads(answer)) == (
        400,
        {"message": "Malformed Signature-Input header: a label appears twice"},
    )
    status, answer = raw_request(
        service,
        "GET /whoami HTTP/1.1",
        [
            *SignedRequestAuth("svc-cert", "svc-key", scheme="v1")(
                requests.Request("GET", service).prepare()
            ).headers.items(),
            ("client-certificate-id", "other-cert"),
        ],
    )
    assert status == 400 and json.loads(answer) == {
        "message": "Header client-certificate-id must be sent once"
    }


def test_an_exempt_prefix_covers_whole_path_segments_only(service, customer):
    assert requests.get(service + "/health", timeout=10).status_code == 200
    for path in ("/healthcare/records", "/health-x", "/health/../whoami"):
        # verified: unsigned
        assert requests.get(service + path, timeout=10).status_code == 400, path


def test_exempt_prefixes_match_segments():
    from customer_auth.service.common import _under

    assert (
        _under("/health", "/health")
        and _under("/health/live", "/health")
        and _under("/health/", "/health/")
    )
    assert not _under("/healthcare", "/health") and not _under("/health-x", "/health")
    assert _under("/anything", "/") and not _under("/health/../admin", "/health")


def test_a_websocket_handshake_is_verified_as_the_get_it_is(service, customer, request):
    if "uvicorn" not in request.node.callspec.params["service"]:
        pytest.skip("websockets are an ASGI matter")
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = service.replace("http://", "ws://") + "/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"X-Customer-Id": "forged"}, open_timeout=10)
    assert refused.value.response.status_code in (400, 403)
    signed = requests.Request(
        "GET", service + "/ws", auth=SignedRequestAuth("svc-cert", "svc-key")
    ).prepare()
    headers = {
        name: value for name, value in signed.headers.items() if name.lower() != "content-length"
    }
    with connect(
        url, additional_headers={**headers, "X-Customer-Id": "forged"}, open_timeout=10
    ) as websocket:
        assert json.loads(websocket.recv(timeout=10)) == {"customer_id": customer, "header": None}


@pytest.mark.parametrize(
    "extensions, expected",
    [
        # closed before accept: the server answers 403
        (
            {},
            [{"type": "websocket.close", "code": 1008}],
        ),
        (
            {"websocket.http.response": {}},
            ["websocket.http.response.start", "websocket.http.response.body"],
        ),
    ],
)
def test_an_unsigned_websocket_handshake_is_refused_before_it_is_accepted(
    database_url, monkeypatch, extensions, expected
):
    import asyncio

    from customer_auth.middleware import ASGIMiddleware

    monkeypatch.setenv("DATABASE_URL", database_url)

    async def app(scope, receive, send):
        raise AssertionError("the app ran")

    async def receive():
        return {"type": "websocket.connect"}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "scheme": "ws",
        "headers": [(b"host", b"svc"), (b"x-customer-id", b"forged")],
        "extensions": extensions,
    }
    asyncio.run(ASGIMiddleware(app)(scope, receive, send))
    assert [message if not extensions else message["type"] for message in sent] == expected
    if extensions:
        assert sent[0]["status"] == 400 and json.loads(sent[1]["body"])["message"].startswith(
            "Missing"
        )


# -- one pass per request -------------------------------------------------------------------------


@pytest.mark.parametrize("replay_protection", [False, True], ids=["plain", "replay-protected"])
def test_an_asgi_signed_post_is_decided_once_and_its_signature_verified_once(
    database_url, customers, monkeypatch, replay_protection
):
    """On a cache miss the credential is looked up off the event loop, and the body received on
    it, without deciding again: one decision, one signature verification."""
    import asyncio
    import types

    from http_message_signatures.structures import CaseInsensitiveDict

    from customer_auth.client import sign_message
    from customer_auth.core import decision, rfc9421
    from customer_auth.middleware import ASGIMiddleware
    from customer_auth.store.credentials import Credentials

    customers.execute("DELETE FROM customer_nonce")
    customers.add("cert-once", "once-key")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setattr(Credentials, "_shared", None)
    counted = {"decide": 0, "verify": 0}
    for owner, name, key in (
        (decision.Verifier, "decide", "decide"),
        (rfc9421, "verify", "verify"),
    ):
        original = getattr(owner, name)

        def counting(*args, original=original, key=key):
            counted[key] += 1
            return original(*args)

        monkeypatch.setattr(owner, name, counting)
    body = b'{"pay": 10}'
    message = types.SimpleNamespace(
        method="POST", url="http://svc.test/pay?x=1", headers=CaseInsensitiveDict()
    )
    sign_message(message, "cert-once", client_key="once-key", body=body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/pay",
        "raw_path": b"/pay",
        "query_string": b"x=1",
        "scheme": "http",
        "headers": [(n.lower().encode(), v.encode()) for n, v in message.headers.items()],
    }
    chunks = [
        {"type": "http.request", "body": body[:4], "more_body": True},
        {"type": "http.request", "body": body[4:], "more_body": False},
    ]
    sent, seen = [], {}

    async def app(scope, receive, send):
        seen["customer"] = scope["state"]["customer_id"]
        seen["body"] = (await receive())["body"] + (await receive())["body"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return chunks.pop(0)

    async def send(event):
        sent.append(event)

    middleware = ASGIMiddleware(app, replay_protection=replay_protection)
    try:
        asyncio.run(middleware(scope, receive, send))
    finally:
        Credentials.shared().close()
    assert sent[0]["status"] == 204 and seen["body"] == body and seen["customer"]
    assert counted == {"decide": 1, "verify": 1}


@pytest.mark.parametrize(
    "service",
    [
        [os.path.join(BIN, "gunicorn"), "flask_service:app"],
        [os.path.join(BIN, "uvicorn"), "fastapi_service:app"],
    ],
    ids=["flask_service", "fastapi_service"],
)
def test_the_example_client_is_served_by_the_example_services(
    service, customers, database_url, tmp_path
):
    """examples/client.py, the program the overview and the signing guide show, run as written
    against examples/flask_service.py and fastapi_service.py, which the middleware page shows."""
    served_the_example_client(
        lambda port: listening_on(service, port), customers, database_url, tmp_path
    )


def served_the_example_client(server, customers, database_url, tmp_path):
    """Runs examples/client.py as written against the service ``server(port)`` starts, and
    an unsigned request: the first gets 200 with its customer id, the second 400."""
    import subprocess

    from conftest import ROOT, serving

    customers.add("my-certificate", "the-key-add-printed")
    (tmp_path / "my-certificate.key").write_text("the-key-add-printed\n")
    with serving(server, {"DATABASE_URL": database_url}) as base:
        run = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "client.py")],
            cwd=tmp_path,
            env={**os.environ, "API_URL": base},
            capture_output=True,
            text=True,
            timeout=60,
        )
        unsigned = requests.post(base + "/echo", json={"qty": 1}, timeout=10)
    assert run.returncode == 0, run.stderr
    status, answer = run.stdout.split(" ", 1)
    assert status == "200", run.stdout
    assert "'order': {'item': 'book', 'qty': 1}" in answer
    assert re.search(r"'customer_id': '[0-9a-f-]{36}'", answer), answer
    assert unsigned.status_code == 400 and "message" in unsigned.json()


def test_the_overviews_compose_command_runs_the_example_client(customers, database_url, tmp_path):
    """docs/index.md's command against the compose kit's demo customer, with a service behind
    the middleware on a free port standing in for the kit's proxy on localhost:8000."""
    from conftest import ROOT, fenced_block, run_in_bash, serving

    command = fenced_block("index.md", "Run the client against the compose kit")
    assert "localhost:8000" in command
    customers.add("demo-certificate", "demo-client-key")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    gunicorn = [os.path.join(BIN, "gunicorn"), "flask_service:app"]
    with serving(lambda port: listening_on(gunicorn, port), {"DATABASE_URL": database_url}) as base:
        run = run_in_bash(command.replace("http://localhost:8000", base), tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("200 ") and "'customer_id'" in run.stdout


DJANGO_PROJECT = {  # around the page's wsgi.py: the least a Django project needs to serve /echo
    "mysite/__init__.py": "",
    "mysite/settings.py": 'SECRET_KEY = "tests-only"\nALLOWED_HOSTS = ["*"]\n'
    'ROOT_URLCONF = "mysite.urls"\nINSTALLED_APPS = []\nMIDDLEWARE = []\n',
    "mysite/urls.py": """import json

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def echo(request):
    customer_id = request.META["customer_verification.customer_id"]
    return JsonResponse({"customer_id": customer_id, "order": json.loads(request.body)})


urlpatterns = [path("echo", echo), path("health", lambda request: JsonResponse({}))]
""",
}


@pytest.mark.parametrize(
    "title, files, app",
    [
        ("mysite/wsgi.py", DJANGO_PROJECT, "mysite.wsgi:application"),
        ("bottle_service.py", {}, "bottle_service:application"),
    ],
    ids=["django", "bottle"],
)
def test_the_middleware_pages_django_and_bottle_services_serve_the_example_client(
    title, files, app, customers, database_url, tmp_path
):
    from conftest import fenced_block

    service = tmp_path / "service"
    for name, text in {**files, title: fenced_block("middleware.md", title)}.items():
        (service / name).parent.mkdir(parents=True, exist_ok=True)
        (service / name).write_text(text)
    gunicorn = [os.path.join(BIN, "gunicorn"), "--chdir", str(service), app]
    served_the_example_client(
        lambda port: listening_on(gunicorn, port), customers, database_url, tmp_path
    )
