"""The decision on its own (customer_auth/core): built directly, driven need by need, with the
credentials in a dict. No database, no subprocess, no Kong: the rules, and that each request is
decided in one pass whatever the face."""

import inspect
import time
import types

import pytest
from http_message_signatures.structures import CaseInsensitiveDict

from customer_auth import errors
from customer_auth.client import sign_message
from customer_auth.core import v1
from customer_auth.core.credential import Credential, Customer
from customer_auth.core.decision import Verifier
from customer_auth.core.needs import (
    Body,
    CredentialFor,
    HasBody,
    NonceClaim,
    Parts,
    RequestParts,
    answers,
    run,
)
from customer_auth.core.options import DEFAULTS

SECRET = "unit-secret"
CUSTOMERS = {"cert-1": Credential("c0ffee00-0000-4000-8000-000000000001", client_key=SECRET)}


class Request:
    """A face's request, in memory: what a server would say of its line and its body."""

    def __init__(self, method="GET", target="/orders?id=7", body=b"", framed=None):
        self.method, self.target, self.body_bytes = method, target, body
        self.framed = bool(body) if framed is None else framed

    def parts(self, need):
        return Parts(self.method, self.target, "https")

    def has_body(self):
        return self.framed

    def body(self, limit):
        if len(self.body_bytes) > limit:
            raise errors.BodyTooLarge()
        return self.body_bytes


class Nonces:
    def __init__(self):
        self.claimed = set()

    def claim(self, certificate_id, nonce, fresh_until):
        first = (certificate_id, nonce) not in self.claimed
        self.claimed.add((certificate_id, nonce))
        return first


def signed(method="GET", target="/orders?id=7", body=None, key=SECRET, **options):
    """Lower-case header lines of a request signed as SignedRequestAuth signs it."""
    message = types.SimpleNamespace(
        method=method, url=f"https://api.test{target}", headers=CaseInsensitiveDict()
    )
    sign_message(message, "cert-1", client_key=key, body=body, **options)
    return {name.lower(): [value] for name, value in message.headers.items()}


def needs_of(verifier, headers, request, nonces=None):
    """Drives a decision, recording each need: ``(needs, customer or Rejection)``."""
    asked = []
    answer = answers(request, CUSTOMERS, nonces)

    def recorded(need):
        asked.append(need)
        return answer(need)

    try:
        return asked, run(verifier.decide(headers), recorded)
    except errors.Rejection as rejection:
        return asked, rejection


def test_a_v1_request_needs_only_its_credential():
    headers = {name: [value] for name, value in v1.signed_headers("cert-1", SECRET).items()}
    asked, customer = needs_of(Verifier(DEFAULTS), headers, Request())
    assert asked == [CredentialFor("cert-1")]
    assert customer == Customer(CUSTOMERS["cert-1"].customer_id, "cert-1")


def test_a_signed_post_is_decided_in_one_pass_each_need_asked_once():
    body = b'{"pay": 10}'
    asked, customer = needs_of(
        Verifier(DEFAULTS), signed("POST", body=body, nonce=False), Request("POST", body=body)
    )
    assert asked == [RequestParts(True, True, False), CredentialFor("cert-1"), Body(1048576)]
    assert isinstance(customer, Customer)


def test_replay_protection_claims_the_nonce_last_and_once():
    verifier, nonces = Verifier({**DEFAULTS, "replay_protection": True}), Nonces()
    headers, request = signed("GET"), Request()
    asked, customer = needs_of(verifier, headers, request, nonces)
    assert isinstance(customer, Customer) and isinstance(asked[-1], NonceClaim)
    asked, refused = needs_of(verifier, headers, request, nonces)
    assert (refused.status, refused.reason.endswith("replayed")) == (403, True)


def test_a_bodiless_signature_asks_whether_a_body_follows():
    headers = signed("GET")  # no Content-Digest
    asked, customer = needs_of(Verifier(DEFAULTS), headers, Request())
    assert HasBody() in asked and isinstance(customer, Customer)
    asked, refused = needs_of(Verifier(DEFAULTS), headers, Request(body=b"forged"))
    assert refused.status == 400 and "does not cover content-digest" in refused.message


def test_a_forged_signature_never_asks_for_the_body():
    body = b"x" * 100
    asked, refused = needs_of(
        Verifier(DEFAULTS), signed("POST", body=body, key="wrong"), Request("POST", body=body)
    )
    assert refused.status == 403 and not any(isinstance(need, Body) for need in asked)


@pytest.mark.parametrize(
    "error, status",
    [
        (errors.StoreUnavailable("down"), 503),
        (errors.BodyTooLarge(), 413),
        (errors.BodyIncomplete(), 400),
    ],
)
def test_what_a_face_cannot_answer_becomes_the_rejection_for_it(error, status):
    body = b"y" * 10
    flow = Verifier(DEFAULTS).decide(signed("POST", body=body, nonce=False))
    assert isinstance(next(flow), RequestParts)
    assert isinstance(flow.send(Parts("POST", "/orders?id=7", "https")), CredentialFor)
    if not isinstance(error, errors.StoreUnavailable):
        assert isinstance(flow.send(CUSTOMERS["cert-1"]), Body)
    with pytest.raises(errors.Rejection) as rejected:
        flow.throw(error)
    assert rejected.value.status == status


def test_a_repeated_v1_request_is_recalled_without_a_single_need():
    class Recently:
        def __init__(self):
            self.known = {}

        def recall(self, signed, now, clock_skew):
            return self.known.get(signed)

        def remember(self, signed, credential, request_time, now):
            self.known[signed] = credential.customer_id

    verifier = Verifier(DEFAULTS, Recently())
    headers = {name: [value] for name, value in v1.signed_headers("cert-1", SECRET).items()}
    assert len(needs_of(verifier, headers, Request())[0]) == 1
    assert needs_of(verifier, headers, Request())[0] == []


def test_a_stale_request_is_refused_before_its_credential_is_asked():
    headers = {
        name: [value]
        for name, value in v1.signed_headers("cert-1", SECRET, now=time.time() - 3600).items()
    }
    asked, refused = needs_of(Verifier(DEFAULTS), headers, Request())
    assert (asked, refused.status) == ([], 403)


def test_everything_the_package_raises_has_one_base():
    raised = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]
    assert all(issubclass(error, errors.CustomerAuthError) for error in raised)
    assert issubclass(errors.InvalidOption, ValueError)
    assert not issubclass(errors.InvalidSettings, errors.StoreUnavailable)
    tree = errors.__doc__
    assert all(error.__name__ in tree for error in raised)


def test_an_unsigned_request_is_pointed_at_rfc9421_where_the_route_takes_it():
    asked, refused = needs_of(Verifier(DEFAULTS), {}, Request())
    assert (refused.status, refused.message) == (400, "Missing Signature-Input header")
    assert "Accept-Signature" in refused.headers
    v1_only = Verifier({**DEFAULTS, "signature_schemes": ["v1"]})
    asked, refused = needs_of(v1_only, {}, Request())
    assert refused.message == "Missing client-certificate-id header" and not refused.headers
