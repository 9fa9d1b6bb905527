"""One option check for every face: the schema's rules (customer_auth/core/options.py) applied to
the config Kong sends on the socket and to the middleware's keyword options alike."""

import pytest

from customer_auth.core import options
from customer_auth.errors import InvalidOption
from customer_auth.middleware import ASGIMiddleware, WSGIMiddleware
from customer_verification import Plugin

REFUSED = {
    "clock_skew": "abc",
    "cache_size": -5,
    "signature_schemes": ["V1"],
    "customer_id_header": "X Customer",
    "max_body_size": 2**31,
    "hide_credentials": 1,
    "cache_ttl": True,
}


@pytest.mark.parametrize("option", list(REFUSED))
def test_the_schema_refuses_what_kong_would(option):
    with pytest.raises(options.InvalidOption) as refused:
        options.checked({option: REFUSED[option]})
    assert refused.value.option == option and str(refused.value).startswith(f"{option}: ")


def test_the_schema_takes_what_kong_stores():
    stored = {
        **options.DEFAULTS,
        "cache_ttl": 1.5,
        "anonymous": None,
        "__seq__": 3,
        "__plugin_id": "x",
    }
    assert options.checked(stored) == {**options.DEFAULTS, "cache_ttl": 1.5}


def test_an_empty_array_kong_encoded_as_an_object_is_an_empty_array():
    assert options.checked({"consumer_by": {}})["consumer_by"] == []
    with pytest.raises(InvalidOption):
        options.checked({"consumer_by": {"a": 1}})


def test_the_plugin_refuses_a_config_its_schema_refuses():
    with pytest.raises(options.InvalidOption, match="clock_skew"):
        Plugin({"clock_skew": "abc"})


@pytest.mark.parametrize("middleware", [WSGIMiddleware, ASGIMiddleware])
def test_the_middleware_refuses_a_bad_option_when_it_is_built(middleware):
    with pytest.raises(options.InvalidOption) as refused:
        middleware(lambda *args: None, signature_schemes=["V1"])
    assert refused.value.option == "signature_schemes"


@pytest.mark.parametrize(
    "option",
    ["consumer_by", "consumer_optional", "anonymous", "run_on_preflight", "hide_credentials"],
)
def test_the_middleware_refuses_options_that_act_on_kong_alone(option):
    value = {"consumer_by": ["username"], "anonymous": "guest", "run_on_preflight": False}.get(
        option, True
    )
    with pytest.raises(options.InvalidOption) as refused:
        WSGIMiddleware(lambda *args: None, **{option: value})
    assert refused.value.option == option
    WSGIMiddleware(lambda *args: None, **{option: options.DEFAULTS[option]})  # the default is fine
