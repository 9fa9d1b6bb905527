"""The second adversarial review (#25), replayed through the real plugin server behind the Kong
stand-in: a captured bodiless signature with a forged body, headers past Kong's default bound,
hostile signature fields that burn CPU, known and unknown certificates told apart, consumers by
username, forged identity headers on preflights, and settings that cannot work."""

import json

import pytest
from test_rfc9421 import SECRET, gateway, keyed, library_signed  # noqa: F401 (gateway and keyed are fixtures)

from customer_auth.core import rfc9421, v1
from customer_auth.core.options import DEFAULTS
from customer_verification import Plugin
from devtools.kong_standin import Request, in_process_kong

FORGED_BODY = b'{"to": "attacker", "amount": 1000000}'


def send(gateway, request, plugin_id="plugin"):
    return gateway.kong.handle(Request(**request), plugin_id)


def captured_get():
    """A bodiless request as SignedRequestAuth signs a GET: @method @path @query, no digest."""
    return library_signed("GET", "http://gw.test/accounts/7?x=1")


def with_body(request, body, extra_lines=(), drop=(), http_version=1.1):
    lines = [(name, value) for name, value in request["header_lines"] if name.lower() not in drop]
    return dict(
        request, header_lines=lines + list(extra_lines), body=body, http_version=http_version
    )


# -- 1. no body reaches the upstream unless the signature binds it -----------------------------

FRAMINGS = {
    # nginx reads 46 bytes where a re-parse of the header read none
    "content-length with leading zeros": [("Content-Length", str(len(FORGED_BODY)).zfill(20))],
    # the line past the 100 that kong.request.get_headers() returns by default
    "content-length after 100 lines": [(f"X-Filler-{i}", "x") for i in range(100)]
    + [("Content-Length", str(len(FORGED_BODY)))],
    "chunked": [("Transfer-Encoding", "chunked")],
    # HTTP/2: DATA frames, neither Content-Length nor Transfer-Encoding
    "http/2 body without framing headers": [],
}
HTTP_VERSIONS = {"http/2 body without framing headers": 2.0}


def test_a_captured_bodiless_signature_is_accepted_without_a_body(gateway, keyed):
    assert send(gateway, captured_get()).status == 200


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_a_forged_body_under_a_bodiless_signature_never_reaches_the_upstream(
    gateway, keyed, framing
):
    forged = with_body(
        captured_get(), FORGED_BODY, FRAMINGS[framing], http_version=HTTP_VERSIONS.get(framing, 1.1)
    )
    outcome = send(gateway, forged)
    assert (outcome.status, outcome.upstream) == (400, None), outcome
    assert "does not cover content-digest" in outcome.message
    assert "content-digest" in outcome.headers["Accept-Signature"]


def test_a_large_forged_body_kong_buffered_to_a_file_is_refused_without_reading_it(gateway, keyed):
    for framing in FRAMINGS:
        request = with_body(
            captured_get(), b"x" * 100_000, http_version=HTTP_VERSIONS.get(framing, 1.1)
        )
        request["header_lines"] += [
            (name, "100000" if name == "Content-Length" else value)
            for name, value in FRAMINGS[framing]
            if not name.startswith("X-Filler")
        ]
        outcome = send(gateway, request)
        assert (outcome.status, outcome.upstream) == (400, None), framing


def test_a_request_with_more_header_lines_than_kong_returns_is_never_verified_on_part_of_them():
    request = Request([(f"X-Filler-{i}", "x") for i in range(1000)])
    Plugin(DEFAULTS, _NoStore()).access(in_process_kong(request, lua_style=False))
    assert (
        request.response[0] == 400
        and "more than 999 header lines" in json.loads(request.response[1])["message"]
    )


def test_a_second_signature_header_past_kongs_default_100_lines_is_seen(gateway, keyed):
    lines = list(v1.signed_headers("cert-1", SECRET).items())
    lines += [(f"X-Filler-{i}", "x") for i in range(120)] + [("client-certificate-id", "cert-2")]
    outcome = gateway.send(lines)
    assert (
        outcome.status == 400
        and outcome.message == "Header client-certificate-id must be sent once"
    )


class _NoStore:
    """A credential cache that must never be asked: the request is refused before any lookup."""

    verified = nonces = None

    def cache(self, **_):
        return self

    def get(self, certificate_id):
        raise AssertionError("looked up")


# -- 2. no cheap way to burn the server's CPU ---------------------------------------------------

HOSTILE_FIELDS = {
    "900 labels": ",".join(f"a{i}=()" for i in range(900))[:8000],
    "900 labels, uncommon form": ", ".join(f'a{i}=("x";p=1)' for i in range(900))[:7990].rsplit(
        ",", 1
    )[0],
    "1500 parameters": ("sig1=();" + ";".join(f"p{i}=1" for i in range(1500)))[:8000].rsplit(
        ";", 1
    )[0],
    "a label of 8000 characters": "a" * 8000,
    "1900 tokens": "sig1=(" + " ".join(["abc"] * 1900) + ")",
}


@pytest.mark.parametrize("field", list(HOSTILE_FIELDS))
def test_a_hostile_signature_input_is_refused_before_the_full_parser_with_a_short_answer(
    gateway, keyed, field, monkeypatch
):
    import http_sf

    monkeypatch.setattr(
        http_sf, "parse", lambda *a, **k: pytest.fail("the full parser was given the field")
    )
    with pytest.raises(v1.MalformedSignature):
        rfc9421.parse_signature_input([HOSTILE_FIELDS[field]])
    outcome = send(
        gateway,
        dict(
            header_lines=[("Signature-Input", HOSTILE_FIELDS[field]), ("Signature", "sig1=:AAAA:")]
        ),
    )
    assert outcome.status == 400 and len(outcome.body) < 300
    assert max(len(line) for line in gateway.server.log().splitlines()[-3:]) < 600


def test_many_failing_labels_give_a_short_policy_answer(gateway, keyed):
    inputs = ",".join(f'l{i}=("@method");created=1;keyid="cert-1"' for i in range(4))
    outcome = send(
        gateway, dict(header_lines=[("Signature-Input", inputs), ("Signature", "l0=:AAAA:")])
    )
    assert outcome.status == 400 and "(and 2 more)" in outcome.message and len(outcome.body) < 300


# -- 9 and 10. a forged signature costs the attacker, and says nothing about the certificate ----


def forged(request):
    """``request`` with its signature replaced by 64 zero bytes."""
    lines = [
        (name, value) for name, value in request["header_lines"] if name.lower() != "signature"
    ]
    return dict(request, header_lines=lines + [("Signature", "sig1=:" + "A" * 86 + "==:")])


def with_keyid(request, certificate_id):
    lines = [
        (name, value.replace('keyid="cert-1"', f'keyid="{certificate_id}"'))
        for name, value in request["header_lines"]
    ]
    return dict(request, header_lines=lines)


CASES = {
    "a malformed content-digest": lambda: with_body(
        library_signed("POST", "http://gw.test/p", b"abc"),
        b"abc",
        [("Content-Digest", "garbage")],
        drop=("content-digest",),
    ),
    "an oversized chunked body": lambda: with_body(
        library_signed("POST", "http://gw.test/p", b"abc"),
        b"z" * 2_000_000,
        [("Transfer-Encoding", "chunked")],
        drop=("content-length",),
    ),
    "a 1 MiB body": lambda: with_body(
        library_signed("POST", "http://gw.test/p", b"abc"), b"y" * 1048576
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_known_and_unknown_certificates_get_the_same_answer_and_round_trips(gateway, keyed, case):
    known = send(gateway, forged(CASES[case]()))
    unknown = send(gateway, forged(with_keyid(CASES[case](), "nobody-has-this")))
    assert (known.status, known.message, known.round_trips) == (
        unknown.status,
        unknown.message,
        unknown.round_trips,
    )
    assert known.status == 403


def test_a_forged_signature_never_has_its_body_read(credentials, keyed):
    plugin = Plugin(DEFAULTS, credentials)
    request = Request(**forged(CASES["a 1 MiB body"]()))
    plugin.access(in_process_kong(request, lua_style=False))
    assert request.response[0] == 403 and "kong.request.get_raw_body" not in request.pdk_calls


# -- 7. a consumer found by username has that username ------------------------------------------


# -- 8. identity headers are cleared on a preflight let through ---------------------------------


# -- 11. every setting is checked as DATABASE_URL is ---------------------------------------------
