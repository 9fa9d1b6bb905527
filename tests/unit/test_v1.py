import hashlib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from customer_auth import errors
from customer_auth.client import SignedRequestAuth
from customer_auth.core import v1

# Computed independently with: printf 'cert-1|key-1|1700000000' | sha256sum
VECTORS = [
    (
        "cert-1",
        "key-1",
        "1700000000",
        "4efcfa9ef5e05beeb527856dfd97331b40c6eba9a43db0c5a4da4d8753faf68b",
    ),
    (
        "ABC-123",
        "s3cr3t/+=",
        "0001700000000",
        "9f7bf8f2caff6c50adc76df7ca547eb24c66db82b546e0f3e3b1b0b5b8bc540c",
    ),
    ("cert-é", "clé", "1", "abc8e4c85fe60adb96919b1fd1c2180ac9c9269d7636dc93ff6f8c47386fedcd"),
]


@pytest.mark.parametrize("certificate_id, client_key, request_time, expected", VECTORS)
def test_sign_matches_fixed_vectors(certificate_id, client_key, request_time, expected):
    assert v1.sign(certificate_id, client_key, request_time) == expected


def test_signed_headers_are_what_existing_clients_send():
    headers = v1.signed_headers("cert-1", "key-1", now=1700000000.9)
    assert headers == {
        "client-certificate-id": "cert-1",
        "client-request-time": "1700000000",
        "client-request-signature": VECTORS[0][3],
    }


def test_verify_accepts_upper_case_hex_after_parsing():
    parsed = v1.parse_signature(VECTORS[0][3].upper())
    v1.verify(parsed, "cert-1", "1700000000", ["key-1"])


def test_verify_rejects_other_key_time_or_certificate():
    good = v1.parse_signature(VECTORS[0][3])
    for args in (
        ("cert-1", "1700000000", ["key-2"]),
        ("cert-1", "1700000001", ["key-1"]),
        ("cert-2", "1700000000", ["key-1"]),
    ):
        with pytest.raises(errors.BadSignature):
            v1.verify(good, *args)


def test_verify_accepts_any_of_several_keys():
    good = v1.parse_signature(VECTORS[0][3])
    v1.verify(good, "cert-1", "1700000000", ["old", "key-1"])
    with pytest.raises(errors.BadSignature):
        v1.verify(good, "cert-1", "1700000000", [])


def test_the_time_is_signed_as_sent_not_as_a_number():
    with pytest.raises(errors.BadSignature):
        v1.verify(v1.parse_signature(VECTORS[1][3]), "ABC-123", "1700000000", ["s3cr3t/+="])


@pytest.mark.parametrize("text", ["", "12.5", "-1", "1e9", " 1", "1" * 13, "１２３", "0x10"])
def test_malformed_request_times(text):
    with pytest.raises(errors.MalformedSignature):
        v1.parse_request_time(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a" * 63,
        "a" * 65,
        "g" * 64,
        " " + "a" * 63,
        "é" * 64,
        "a" * 62 + "  ",
        "ab " * 21 + "a",
        "０" * 64,
        "0x" + "a" * 62,
    ],
)
def test_malformed_signatures(text):
    with pytest.raises(errors.MalformedSignature):
        v1.parse_signature(text)


@pytest.mark.parametrize("text", ["", "a b", "x" * 257, "tab\there", "nul\x00", "é"])
def test_malformed_certificate_ids(text):
    with pytest.raises(errors.MalformedSignature):
        v1.parse_certificate_id(text)


# The header grammar as regular expressions: the parsers use str methods for speed and must
# accept exactly these.
GRAMMAR = {
    v1.parse_certificate_id: re.compile(r"[\x21-\x7e]{1,256}"),
    v1.parse_request_time: re.compile(r"[0-9]{1,12}"),
    v1.parse_signature: re.compile(r"[0-9a-fA-F]{64}"),
}
HEADER_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="0123456789abcdefABCDEF \t\n", min_size=60, max_size=66),
    st.text(alphabet="0123456789٣１ +-", max_size=14),
    st.text(st.characters(max_codepoint=0xFF)),
)


@given(text=HEADER_TEXT)
@example(text="a" * 62 + "  ")
@example(text="ab " * 21 + "a")
@example(text="ab " + "ab" * 31)
@example(text="x" * 256)
@example(text="9" * 12)
def test_parsers_accept_exactly_the_grammar(text):
    for parse, grammar in GRAMMAR.items():
        try:
            parse(text)
            accepted = True
        except errors.MalformedSignature:
            accepted = False
        assert accepted == bool(grammar.fullmatch(text)), (parse.__name__, text)


def test_clock_skew_both_directions():
    v1.check_fresh("1000", 300, now=1300)
    v1.check_fresh("1300", 300, now=1000)
    for request_time in ("699", "1301"):
        with pytest.raises(errors.SignatureExpired):
            v1.check_fresh(request_time, 300, now=1000)


def test_exceptions_are_one_family():
    for error in (errors.BadSignature, errors.SignatureExpired, errors.MalformedSignature):
        assert issubclass(error, errors.SignatureError)


def assert_signed(headers):
    expected = hashlib.sha256(f"cert-1|key-1|{headers['client-request-time']}".encode()).hexdigest()
    assert headers["client-certificate-id"] == "cert-1"
    assert headers["client-request-signature"] == expected


def test_auth_signs_requests_made_with_requests():
    import requests

    auth = SignedRequestAuth("cert-1", "key-1", scheme="v1")
    prepared = requests.Request("GET", "http://gateway.invalid/echo", auth=auth).prepare()
    assert_signed(prepared.headers)
    assert "key-1" not in repr(auth)


def test_auth_signs_requests_made_with_httpx():
    import httpx

    seen = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200))
    with httpx.Client(
        transport=transport, auth=SignedRequestAuth("cert-1", "key-1", scheme="v1")
    ) as client:
        client.get("http://gateway.invalid/echo")
    assert_signed(seen[0].headers)
