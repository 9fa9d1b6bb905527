"""Hostile input, property-based: whatever the headers, the answer is a 400 or 403 with a JSON
message; never a 500, an exception, a call after exit, or a request let through."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from customer_auth.core import v1
from customer_auth.core.options import DEFAULTS
from customer_verification import Plugin
from devtools.kong_standin import Request, in_process_kong

SIGNATURE_HEADERS = [
    v1.CERTIFICATE_ID_HEADER,
    v1.REQUEST_TIME_HEADER,
    v1.SIGNATURE_HEADER,
]

hostile_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=50),  # NUL and control characters
    st.just("a" * 100_000),
    st.sampled_from(
        [
            "",
            " ",
            "'; DROP TABLE customer; --",
            "';DROP/**/TABLE/**/customer;--",
            "%00",
            "\\x00",
            "cert-1' OR '1'='1",
            "é" * 64,
            "\u202e" * 10,
        ]
    ),
    st.text(alphabet="0123456789abcdefABCDEF", max_size=200),  # signatures of every length
    st.integers(min_value=-(10**40), max_value=10**40).map(str),  # times that overflow
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
header_name = st.one_of(
    st.sampled_from(SIGNATURE_HEADERS + ["x-customer-id"]), st.text(min_size=1, max_size=40)
)
header_lines = st.lists(st.tuples(header_name, hostile_text), max_size=12)


def with_some_valid_parts(lines, parts):
    """Mixes hostile lines with well-formed signature headers, so parsing gets past the first
    check."""
    valid = v1.signed_headers("cert-hostile", "wrong-key")
    return [(name, valid[name]) for name in parts] + lines


@pytest.fixture(scope="module")
def plugin(database_url):
    from customer_auth.store.connection import Settings
    from customer_auth.store.credentials import Credentials

    credentials = Credentials(Settings(dsn=database_url, pool_size=2, timeout=2.0))
    yield Plugin(dict(DEFAULTS), credentials)
    credentials.close()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=header_lines, parts=st.lists(st.sampled_from(SIGNATURE_HEADERS), unique=True))
def test_any_headers_get_a_400_or_403_with_a_json_message(plugin, lines, parts):
    request = Request(with_some_valid_parts(lines, parts))
    plugin.access(in_process_kong(request, lua_style=False))
    assert request.response is not None, "a request without a valid signature went upstream"
    status, body = request.response
    assert status in (400, 403)
    assert isinstance(json.loads(body)["message"], str)
    assert request.pdk_calls == ["kong.request.get_headers", "kong.response.exit"]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    certificate_id=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
        min_size=1,
        max_size=256,
    )
)
def test_any_well_formed_certificate_id_is_looked_up_safely(plugin, certificate_id):
    request = Request(list(v1.signed_headers(certificate_id, "k").items()))
    plugin.access(in_process_kong(request))
    assert request.response[0] == 403


def test_hostile_input_through_the_real_server_leaks_nothing(gateway, database_url):
    """A sample of the same inputs over the wire, in both server modes; threads stay bounded."""
    samples = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(lines=header_lines, parts=st.lists(st.sampled_from(SIGNATURE_HEADERS), unique=True))
    def collect(lines, parts):
        samples.append(with_some_valid_parts(lines, parts))

    collect()
    gateway.send([])
    threads = gateway.server.threads()
    for lines in samples:
        # msgpack carries any str; nginx would never pass NUL or CR/LF in a header, but the
        # plugin must not depend on that.
        outcome = gateway.send(lines)
        assert outcome.status in (400, 403) and outcome.upstream is None and not outcome.errors, (
            lines
        )
        assert isinstance(outcome.message, str)
    time.sleep(0.3)
    assert gateway.server.threads() <= threads + 4
    assert "Traceback" not in gateway.server.log()
