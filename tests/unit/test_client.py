"""The client: SignedRequestAuth signs what httpx and requests send, streaming bodies included
under httpx, and the decision accepts it (no gateway, no database)."""

import base64
import hashlib

import httpx

from customer_auth.client import SignedRequestAuth
from customer_auth.core.credential import Credential
from customer_auth.core.decision import Verifier
from customer_auth.core.needs import Parts, answers, run
from customer_auth.core.options import DEFAULTS

SECRET = "client-secret"


class Sent:
    """The request as the server got it, for the decision."""

    def __init__(self, request: httpx.Request):
        self.request = request

    def parts(self, need):
        target = self.request.url.raw_path.decode()
        return Parts(self.request.method, target, self.request.url.scheme)

    def has_body(self):
        return bool(self.request.content)

    def body(self, limit):
        return self.request.content


CUSTOMER_ID = "c0ffee00-0000-4000-8000-000000000002"
SHARED_SECRET_CUSTOMER = Credential(CUSTOMER_ID, client_key=SECRET)


def sent_through_httpx(auth=None, **request):
    seen = []
    transport = httpx.MockTransport(lambda sent: seen.append(sent) or httpx.Response(204))
    auth = auth or SignedRequestAuth("cert-1", SECRET)
    with httpx.Client(transport=transport, auth=auth) as client:
        client.request(url="https://api.test/orders?id=7", **request)
    return seen[0]


def verified(sent, certificate_id="cert-1", credential=SHARED_SECRET_CUSTOMER):
    headers = {name.lower(): [value] for name, value in sent.headers.items()}
    credentials = {certificate_id: credential}
    return run(Verifier(DEFAULTS).decide(headers), answers(Sent(sent), credentials, None))


def test_httpx_reads_a_streaming_body_for_it_and_the_signature_binds_it():
    sent = sent_through_httpx(method="POST", content=iter([b'{"pay": ', b"10}"]))
    digest = base64.b64encode(hashlib.sha256(b'{"pay": 10}').digest()).decode()
    assert sent.headers["content-digest"] == f"sha-256=:{digest}:"
    assert verified(sent).certificate_id == "cert-1"


def test_a_bodiless_httpx_request_is_signed_without_a_digest():
    sent = sent_through_httpx(method="GET")
    assert "content-digest" not in sent.headers and verified(sent)


def test_it_is_an_httpx_auth_and_a_requests_auth():
    import requests

    auth = SignedRequestAuth("cert-1", SECRET)
    assert isinstance(auth, httpx.Auth) and auth.requires_request_body
    prepared = requests.Request("PUT", "https://api.test/x", data=b"raw", auth=auth).prepare()
    assert "content-digest" in {name.lower() for name in prepared.headers}


def test_the_signing_guides_ed25519_lines_sign_what_the_core_verifies(tmp_path, monkeypatch):
    from conftest import fenced_block
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "my-certificate.pem").write_bytes(pem)
    monkeypatch.chdir(tmp_path)
    shown: dict[str, object] = {}
    exec(fenced_block("signing.md", "Sign with an ed25519 key"), shown)
    sent = sent_through_httpx(auth=shown["auth"], method="POST", content=b'{"qty": 1}')
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert 'alg="ed25519"' in sent.headers["signature-input"]
    customer = verified(sent, "my-certificate", Credential(CUSTOMER_ID, public_key=public))
    assert customer.certificate_id == "my-certificate"
