"""A tiny plugin of the tests' own, to test the Kong stand-in itself (test_kong_standin.py)."""
import json

from kong_pdk.cli import start_dedicated_server

version = "0.1.0"
priority = 10
Schema = ({"greeting": {"type": "string", "default": "hello"}},)


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        headers = kong.request.get_headers()
        action = headers.get("x-action", ["pass"])[0]
        if action == "exit":
            kong.response.exit(418, {"message": "teapot"})
            return
        if action == "error":
            kong.response.error(429, "slow down")
            return
        if action == "raise":
            raise RuntimeError("boom")
        if action == "bad-header":
            try:
                kong.service.request.set_header("x-bad", {"not": "a header"})
            except Exception as error:  # --no-lua-style: a StepError arrives as PDKException
                kong.service.request.set_header("x-step-error", str(error))
            return
        kong.client.authenticate(None, {"id": "tiny"})  # as an auth plugin: the fail-closed rule's test
        kong.service.request.set_header("x-config", json.dumps(self.config, sort_keys=True))
        kong.service.request.set_header("x-multi-count", str(len(headers.get("x-multi", []))))


if __name__ == "__main__":
    start_dedicated_server("tiny", Plugin, version, priority, list(Schema))
