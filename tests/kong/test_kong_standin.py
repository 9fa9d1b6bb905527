"""The Kong stand-in's own behaviour, against a tiny plugin of the tests' own, so that a harness
bug cannot hide a plugin bug."""

import json
import pathlib

import pytest
from conftest import SERVER_MODES, ServerMode, start_gateway

from devtools.kong_standin import KongRaised, Request, RPCError, in_process_kong

TINY = pathlib.Path(__file__).with_name("tiny_plugin.py")


# The tiny plugin is written Python-style, so kong-pdk's threads run with --no-lua-style too.
TINY_MODES = {
    "lean": SERVER_MODES["lean"],
    "kong-pdk": SERVER_MODES["kong-pdk"],
    "threading": ServerMode(["--no-lua-style"]),
}


@pytest.fixture(params=list(TINY_MODES))
def tiny(request):
    gateway = start_gateway(TINY, "tiny", TINY_MODES[request.param], kong_timeout=2)
    gateway.mode = request.param
    yield gateway
    gateway.cleanup()


def test_query_reads_the_dump_and_kong_sends_stored_config(tiny):
    outcome = tiny.send([])
    config = json.loads(outcome.upstream["x-config"][0])
    assert config["greeting"] == "hello"  # schema default filled in by "Kong"
    assert config["__plugin_id"] == "plugin" and isinstance(config["__seq__"], int)


def test_headers_arrive_as_lists_one_element_per_line(tiny):
    outcome = tiny.send([("X-Multi", "a"), ("x-multi", "b"), ("x-other", "c")])
    assert outcome.upstream["x-multi-count"] == ["2"]


def test_round_trips_are_counted_as_rpc_calls(tiny):
    tiny.send([])  # starts the instance
    before = tiny.kong.calls
    outcome = tiny.send([])
    # HandleEvent, get_headers, authenticate, 2 set_header
    assert outcome.round_trips == tiny.kong.calls - before == 5


def test_exit_and_error_end_the_request_without_an_answer(tiny):
    tiny.send([])
    before = tiny.kong.calls
    teapot = tiny.send([("x-action", "exit")])
    assert (teapot.status, teapot.message, teapot.upstream) == (418, "teapot", None)
    assert teapot.round_trips == tiny.kong.calls - before == 2
    slow = tiny.send([("x-action", "error")])
    assert (slow.status, slow.message) == (429, "slow down")


def test_a_pdk_function_that_raises_ends_the_request_in_kongs_500(tiny):
    # Kong 3.9 never sends plugin.StepError: a Lua error in the PDK function ends the request.
    outcome = tiny.send([("x-action", "bad-header")])
    assert (outcome.status, outcome.upstream) == (500, None)
    assert any("invalid header value" in error for error in outcome.errors), outcome.errors


def test_an_exception_in_the_handler_fails_open_as_kong_does(tiny):
    # Kong logs the error and the request goes on to the upstream. kong-pdk never answers the
    # HandleEvent of a handler that raised: Kong's read times out first. The lean transport
    # answers the error at once.
    outcome = tiny.send([("x-action", "raise"), ("x-customer-id", "forged")])
    assert outcome.status == 200 and outcome.upstream["x-customer-id"] == ["forged"]
    expected = "boom" if tiny.mode == "lean" else "timed out"
    assert any(expected in error for error in outcome.errors), outcome.errors


def test_an_unreachable_server_fails_open_as_kong_does(tiny):
    tiny.send([])
    tiny.server.stop()
    outcome = tiny.send([("x-customer-id", "forged")])
    assert outcome.status == 200 and outcome.upstream["x-customer-id"] == ["forged"]
    assert outcome.errors


def test_a_restarted_server_gets_its_instance_started_again(tiny):
    tiny.send([])
    tiny.server.stop(kill=True)
    tiny.server.start()
    outcome = tiny.send([])
    assert outcome.status == 200 and "x-config" in outcome.upstream
    assert any("no plugin instance" in error for error in outcome.errors)


def test_a_config_change_starts_a_new_instance_and_closes_the_old(tiny):
    first = json.loads(tiny.send([]).upstream["x-config"][0])
    tiny.kong.configure("plugin", {"greeting": "bonjour"})
    second = json.loads(tiny.send([]).upstream["x-config"][0])
    assert second["greeting"] == "bonjour" and second["__seq__"] > first["__seq__"]


def test_in_process_kong_answers_like_the_wire():
    request = Request([("A", "1"), ("a", "2")])
    kong = in_process_kong(request, lua_style=True)
    assert kong.request.get_headers() == ({"a": ["1", "2"]}, None)
    assert kong.request.get_header("A") == ("1", None)
    with pytest.raises(KongRaised):  # a Lua error inside Kong: its 500
        kong.service.request.set_header("x", {"bad": 1})
    assert kong.log.err("seen") == (None, None) and request.logs == [("err", ["seen"])]
    # Kong logs an unknown function and steps back nil (never StepError)
    assert kong.nginx.no_such_function("x") == (None, None)
    assert request.logs[-1] == (
        "err",
        ["could not find pdk method: ", "kong.nginx.no_such_function"],
    )
    assert kong.response.exit(403, {"message": "no"}) is None  # returns at once, as kong-pdk does
    assert request.response == (403, '{"message": "no"}')


def test_kong_keeps_at_most_100_header_lines_for_plugins():
    lines = [(f"x-{i}", "v") for i in range(150)]
    assert len(Request(lines).get_headers()) == 100


def test_fail_closed_rule_answers_what_no_plugin_verified():
    from devtools.kong_standin import FailClosedRule

    tiny = start_gateway(TINY, "tiny", kong_timeout=2, fail_closed=FailClosedRule("x-config"))
    try:
        assert "x-config" in tiny.send([("x-config", "client")]).upstream  # the plugin set it
        rejected = tiny.send([("x-action", "nothing"), ("x-config", "client")])  # nothing set it
        assert (rejected.status, rejected.upstream) == (503, None)
        tiny.server.stop()
        assert tiny.send([("x-config", "forged")]).status == 503
    finally:
        tiny.cleanup()


def test_headers_set_by_a_plugin_are_what_later_plugins_read():
    from devtools.kong_standin import Request

    request = Request([("X-Customer-Id", "forged")])
    request.set_headers({"x-customer-id": "verified", "a": []})
    assert request.get_header("X-Customer-Id") == "verified"
    request.clear_header("x-customer-id")
    assert request.get_header("x-customer-id") is None and request.upstream == {}


def test_the_error_log_keeps_what_kongs_default_level_keeps_and_the_servers_output_is_info(
    tmp_path,
):
    from devtools.kong_standin import ErrorLog

    output = tmp_path / "server.log"
    output.write_text("Traceback (most recent call last): boom\nhalf a li")
    log = ErrorLog()  # Kong's default log_level: notice
    log.follow(output)
    for level in ("debug", "info", "notice", "warn", "err", "crit"):
        log.write(level, f"at {level}")
    assert [text for _, text in log.lines()] == ["at notice", "at warn", "at err", "at crit"]
    assert ("error", "at err") in log.lines()
    verbose = ErrorLog(level="info")
    verbose.follow(output)
    # whole lines only
    assert verbose.lines() == [("info", "Traceback (most recent call last): boom")]


def test_kong_log_calls_of_a_plugin_are_recorded_at_their_level():
    request = Request([])
    kong = in_process_kong(request, lua_style=False)
    kong.log.warn("careful: ", 3)
    kong.log.debug("noise")
    assert request.logs == [("warn", ["careful: ", 3]), ("debug", ["noise"])]
    assert kong.log.shout("x") is None  # Kong logs it and steps back nil
    assert request.logs[-1] == ("err", ["could not find pdk method: ", "kong.log.shout"])


def test_without_a_plugin_instance_kong_answers_500_before_the_fail_closed_rule_runs():
    """A worker with no instance yet (the server down since Kong started): Kong's plugin iterator
    raises, so post-function never runs; the client gets Kong's 500 and the upstream nothing."""
    from devtools.kong_standin import FailClosedRule

    tiny = start_gateway(TINY, "tiny", kong_timeout=2, fail_closed=FailClosedRule("x-config"))
    try:
        tiny.server.stop()
        outcome = tiny.send([("x-config", "forged")])
        assert (outcome.status, outcome.upstream, outcome.message) == (
            500,
            None,
            "An unexpected error occurred",
        )
        assert any(
            "starting instance" in text
            for level, text in tiny.kong.error_log.lines()
            if level == "error"
        )
    finally:
        tiny.cleanup()


def test_a_restarted_server_answers_an_id_it_did_not_give_with_no_plugin_instance(tiny):
    # Each Kong worker keeps the ids it was given; a restarted server must not give them again.
    start = {"Name": "tiny", "Config": json.dumps({"__seq__": 1, "__plugin_id": "plugin"})}
    before = tiny.kong.call("plugin.StartInstance", start)["Id"]
    tiny.server.stop(kill=True)
    tiny.server.start()
    after = tiny.kong.call("plugin.StartInstance", start)["Id"]
    assert after != before
    with pytest.raises(RPCError, match="no plugin instance"):
        tiny.kong.call("plugin.HandleEvent", {"InstanceId": before, "EventName": "access"})
