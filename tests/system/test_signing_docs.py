"""The signing guide's worked example and recipes (docs/signing.md: openssl and curl, JavaScript
with Node's crypto and with the npm package), checked against the plugin and the reference
library: what the guide shows is what works."""

import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import fenced_block, run_in_bash

from customer_auth.core import rfc9421
from customer_auth.core.options import DEFAULTS
from customer_verification import Plugin
from devtools.kong_standin import Request, in_process_kong


def unfolded(block):
    """A block folded as RFC 8792 folds (a line ending in \\ continues, less its indent)."""
    return re.sub(r"\\\n *", "", block).splitlines()


def example():
    headers = dict(
        line.split(": ", 1)
        for line in unfolded(fenced_block("signing.md", "The signed request's headers"))
    )
    base = "\n".join(unfolded(fenced_block("signing.md", "The signature base")))
    return headers, base


def test_the_worked_examples_signature_base_and_signature_are_what_the_plugin_computes():
    headers, base = example()
    parsed = rfc9421.parse_signature_input([headers["Signature-Input"]])
    chosen = rfc9421.choose(
        parsed,
        rfc9421.parse_signature([headers["Signature"]]),
        DEFAULTS["required_components"],
    )
    message = rfc9421.Message(
        "POST", "/orders?id=7", "https", {name.lower(): [value] for name, value in headers.items()}
    )
    assert rfc9421.signature_base(message, chosen).decode() == base
    expected = hmac.new(b"my-client-key", base.encode(), hashlib.sha256).digest()
    assert headers["Signature"] == f"sig1=:{base64.b64encode(expected).decode()}:"
    digest = base64.b64encode(hashlib.sha256(b'{"qty": 1}').digest()).decode()
    assert headers["Content-Digest"] == f"sha-256=:{digest}:"


PROTECTED = {**DEFAULTS, "replay_protection": True}  # the recipes sign what such a route accepts
ORDER = b'{"qty": 1}'  # the guide's example: POST https://api.example.com/orders?id=7


def order_request(headers):
    """The guide's order, as Kong receives it, carrying ``headers``."""
    return Request(
        [("Host", "api.example.com"), ("Content-Length", "10"), *headers.items()],
        method="POST",
        target="/orders?id=7",
        scheme="https",
        body=ORDER,
    )


def verified(credentials, customers, headers):
    """Sends the order with ``headers`` twice to a route with replay protection: the customer id
    the upstream got the first time, and the status of the second (its nonce spent)."""
    customer_id = customers.add("my-certificate", "my-client-key")
    plugin = Plugin(PROTECTED, credentials)
    first, again = order_request(headers), order_request(headers)
    plugin.access(in_process_kong(first, lua_style=False))
    plugin.access(in_process_kong(again, lua_style=False))
    assert first.upstream is not None, first.response
    assert first.upstream["x-customer-id"] == [customer_id]
    return again.response[0]


def node(script, cwd=None):
    """What a node script prints, as JSON."""
    run = subprocess.run(
        ["node", "-e", script], cwd=cwd, capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout)


def test_the_worked_example_verifies_through_the_plugin(credentials, customers, monkeypatch):
    headers, _ = example()
    customers.execute("DELETE FROM customer_nonce")
    monkeypatch.setattr("customer_auth.core.decision.time.time", lambda: 1700000000)
    monkeypatch.setattr("customer_auth.store.nonces.time.time", lambda: 1700000000)
    assert verified(credentials, customers, headers) == 403


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_javascript_recipe_signs_what_the_plugin_verifies(credentials, customers):
    recipe = fenced_block("signing.md", "Sign with Node's crypto")
    headers = node(
        recipe
        + """
const headers = signedHeaders({ certificateId: "my-certificate", clientKey: "my-client-key",
                                method: "POST", path: "/orders", query: "?id=7",
                                body: '{"qty": 1}' });
process.stdout.write(JSON.stringify(headers));
"""
    )
    assert verified(credentials, customers, headers) == 403


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_openssl_recipe_signs_what_the_plugin_verifies(credentials, customers):
    recipe = fenced_block("signing.md", "Sign with openssl and curl")
    script = (
        recipe[: recipe.index("\ncurl ")]
        + '\nprintf "%s\\n%s\\n%s\\n%s" "$digest" "$params" "$signature" "$created"'
    )
    customers.execute("DELETE FROM customer_nonce")
    digest, params, signature, created = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout.splitlines()
    assert re.fullmatch(r"\d+", created)
    headers = {
        "Content-Type": "application/json",
        "Content-Digest": digest,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{signature}:",
    }
    assert verified(credentials, customers, headers) == 403


@pytest.fixture(scope="module")
def npm_package(tmp_path_factory):
    """The npm package http-message-signatures (1.x) in a directory of its own; skips without npm
    or the registry."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed")
    directory = tmp_path_factory.mktemp("npm")
    installed = subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "http-message-signatures@1"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if installed.returncode != 0:
        pytest.skip(f"npm could not install http-message-signatures: {installed.stderr[-300:]}")
    return directory


def test_the_npm_librarys_recipe_signs_what_the_plugin_verifies(
    credentials, customers, npm_package
):
    recipe = fenced_block("signing.md", "Sign with the npm package http-message-signatures")
    headers = node(
        recipe
        + """
signedRequest({ certificateId: "my-certificate", clientKey: "my-client-key", method: "POST",
                url: "https://api.example.com/orders?id=7", body: '{"qty": 1}' })
  .then((request) => process.stdout.write(JSON.stringify(request.headers)));
""",
        cwd=npm_package,
    )
    assert verified(credentials, customers, headers) == 403


def test_the_commands_curl_signs_what_the_plugin_verifies(credentials, customers, tmp_path):
    (tmp_path / "my-certificate.key").write_text("my-client-key\n")
    run = run_in_bash(fenced_block("signing.md", "Sign with the command"), tmp_path)
    assert run.returncode == 0, run.stderr
    curl = shlex.split(run.stdout.replace("\\\n", " "))
    assert curl[0] == "curl" and "https://api.example.com/orders?id=7" in curl
    headers = dict(curl[i + 1].split(": ", 1) for i, word in enumerate(curl) if word == "-H")
    assert headers["Content-Type"] == "application/json"
    customers.execute("DELETE FROM customer_nonce")
    assert verified(credentials, customers, headers) == 403


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_public_key_customer_is_added_as_the_guide_shows(customers, database_url, tmp_path):
    run = run_in_bash(
        fenced_block("signing.md", "An ed25519 customer"), tmp_path, DATABASE_URL=database_url
    )
    assert run.returncode == 0, run.stderr
    [(authentication,)] = customers.execute(
        "SELECT authentication FROM customer WHERE certificate = 'my-certificate'"
    )
    assert set(authentication) == {"public_key"}


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils' sha256sum is missing")
def test_the_getting_started_v1_curl_signs_as_the_plugin_verifies(tmp_path):
    """The compose kit's v1 request, with curl replaced by what it was asked to send."""
    from customer_auth.core import v1

    block = fenced_block("getting-started.md", "A v1 request to the compose kit")
    run = run_in_bash("curl() { printf '%s\\n' \"$@\"; }\n" + block, tmp_path)
    assert run.returncode == 0, run.stderr
    words = run.stdout.splitlines()
    headers = dict(words[i + 1].split(": ", 1) for i, word in enumerate(words) if word == "-H")
    assert words[:2] == ["-s", "localhost:8000/echo"]
    v1.check_fresh(headers["client-request-time"], clock_skew=300)
    assert headers["client-request-signature"] == v1.sign(
        "demo-certificate", "demo-client-key", headers["client-request-time"]
    )
