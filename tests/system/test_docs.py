"""The documentation: the MkDocs site builds strictly (no broken link or missing page), the
configuration reference is what the code says, the README stays short, and the code passes ruff
and mypy (strict on the public API)."""

import os
import re
import subprocess
import sys

from conftest import ROOT
from test_deployment import variables_the_runtime_reads

from customer_auth.core import options
from devtools import config_reference

BIN = os.path.dirname(sys.executable)


def test_the_documentation_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [os.path.join(BIN, "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").exists()


def test_the_configuration_reference_is_generated_from_the_schema():
    assert (
        config_reference.rewritten(config_reference.PAGE.read_text())
        == config_reference.PAGE.read_text()
    ), "docs/configuration.md is stale: run python -m devtools.config_reference"


def test_every_variable_the_runtime_reads_has_a_row_and_every_row_is_read():
    from customer_auth.store.connection import LIBPQ_VARIABLES

    documented = set(config_reference.ENVIRONMENT) - {"PG*"} | set(LIBPQ_VARIABLES)
    assert documented == variables_the_runtime_reads()


def test_every_option_has_a_description_kong_accepts():
    for field in options.Schema:
        for name, spec in field.items():
            assert 10 <= len(spec["description"]) <= 500, name  # Kong's metaschema bounds


def test_the_readme_is_short_and_its_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_ruff_finds_nothing():
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [os.path.join(BIN, "ruff"), *command], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_public_api():
    result = subprocess.run(
        [os.path.join(BIN, "mypy")], cwd=ROOT, capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_middlewares_typed_options_are_the_plugins():
    from customer_auth.service.common import Options

    assert set(Options.__annotations__) == set(options.DEFAULTS) | {"exempt"}


def test_the_built_pages_show_formulas_as_written_and_load_nothing_from_outside(tmp_path):
    import re

    subprocess.run(
        [os.path.join(BIN, "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=120,
    )
    pages = {
        path: path.read_text()
        for path in (tmp_path / "site").rglob("*.html")
        if "404" not in path.name
    }
    for path, html in pages.items():
        codes = re.findall(r"<code[^>]*>(.*?)</code>", html, re.S)
        assert not [code for code in codes if "\\|" in code], path  # an escape left in a formula
        outside = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert outside == [], (path, outside)
    index = pages[tmp_path / "site" / "index.html"]
    assert "{certificate_id}|{client_key}|{request_time}" in re.sub(r"<[^>]+>", "", index)
