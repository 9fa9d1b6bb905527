"""The documentation: the MkDocs site builds strictly (no broken link or missing page), the
configuration reference is what the code says, the README stays short, and the code passes ruff
and mypy (strict on the public API)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, fenced_block
from test_deployment import variables_the_runtime_reads

from customer_auth.core import options
from devtools import config_reference

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as `mkdocs build --strict` builds it, once for the tests that read it."""
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [os.path.join(BIN, "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def test_the_documentation_site_builds_strictly(site):
    assert (site / "configuration" / "index.html").exists()


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


def test_the_built_pages_show_formulas_as_written_and_load_nothing_from_outside(site):
    pages = {path: path.read_text() for path in site.rglob("*.html") if "404" not in path.name}
    for path, html in pages.items():
        codes = re.findall(r"<code[^>]*>(.*?)</code>", html, re.S)
        assert not [code for code in codes if "\\|" in code], path  # an escape left in a formula
        outside = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert outside == [], (path, outside)
        blocks = re.findall(
            r'<div class="([^"]*)">(?:<span class="filename">[^<]*</span>)?<pre', html
        )
        assert html.count("<pre") == len(blocks), path  # every code block highlighted
        assert [block for block in blocks if "language-" not in block] == [], path
        swallowed = [  # a list item Markdown read as a paragraph's line (its indent was off)
            paragraph
            for paragraph in re.findall(r"<p>(.*?)</p>", html, re.S)
            if re.search(r"\n\s*(?:[-*+]|\d+\.) ", paragraph)
        ]
        assert swallowed == [], (path, swallowed)
    index = pages[site / "index.html"]
    assert "{certificate_id}|{client_key}|{request_time}" in re.sub(r"<[^>]+>", "", index)


def test_every_page_reads_right_in_a_browser(site):
    """devtools/docs_check.py: every page in headless Chromium (tables fit their column, names
    unbroken, code highlighted and within the column, nothing loaded from outside)."""
    import importlib.util
    import shutil

    from devtools import docs_check

    if not shutil.which(docs_check.CHROMIUM) or not importlib.util.find_spec("playwright"):
        pytest.skip("needs Debian's chromium and playwright: see docs/development.md")
    assert docs_check.problems(site) == []


def code_blocks(page):
    """Each code block of a page: (the line its fence opens with, its first line number); an
    indented block (no fence, so no language) as ("", number). Inside a list item, 4 columns
    continue the item: a block needs 8 there."""
    lines = page.read_text().splitlines()
    blocks, fence, in_list = [], None, False
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fence = None if fence else line.strip()
            if fence:
                blocks.append((fence, number))
            continue
        if fence is not None or not line.strip():
            continue
        if re.match(r"(?:\d+\.|[-*+]) ", line):
            in_list = True
        elif not line.startswith(" "):
            in_list = False
        indent = " " * (8 if in_list else 4)
        if line.startswith(indent) and not lines[number - 2].strip():
            blocks.append(("", number))
    return blocks


def test_every_code_block_is_fenced_with_its_language():
    for page in (ROOT / "docs").glob("*.md"):
        for fence, number in code_blocks(page):
            assert re.match(r"```\w", fence), f"docs/{page.name}:{number} has no language"


def yaml_blocks():
    for page in (ROOT / "docs").glob("*.md"):
        yield from re.findall(r"^```yaml[^\n]*\n(.*?)^```$", page.read_text(), re.S | re.M)


def test_every_plugin_config_the_pages_show_is_one_the_schema_accepts():
    import yaml

    shown = [
        plugin.get("config", {})
        for block in yaml_blocks()
        if "--8<--" not in block
        for plugin in yaml.safe_load(block)["plugins"]
        if plugin["name"] == "customer_verification"
    ]
    assert len(shown) >= 3  # getting started, configuration, security
    for config in shown:
        assert set(config) <= set(options.SPECS), config
        options.checked(config)


def test_the_environment_the_pages_show_is_one_the_server_reads(monkeypatch):
    from customer_auth.kong.processes import processes_wanted
    from customer_auth.store.connection import check_dsn

    shown = {}
    for page, title in [
        ("configuration.md", "The plugin server's environment"),
        ("scaling-out.md", "The customers database of every node"),
        ("performance.md", "Use every core of the node"),
    ]:
        variables = dict(line.split("=", 1) for line in fenced_block(page, title).splitlines())
        assert set(variables) <= set(config_reference.ENVIRONMENT), page
        shown.update(variables)
    check_dsn(shown["DATABASE_URL"])
    monkeypatch.setenv("CUSTOMER_VERIFICATION_PROCESSES", shown["CUSTOMER_VERIFICATION_PROCESSES"])
    assert processes_wanted() == os.cpu_count()


def test_the_development_pages_test_command_is_the_readmes():
    command = fenced_block("development.md", "The test command").strip()
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_every_metric_the_server_exposes_has_a_row_on_the_operations_page():
    import inspect

    import prometheus_client

    from customer_auth import metrics  # noqa: F401  (registers the plugin server's metrics)
    from customer_auth.kong import supervisor

    def without_total(name):  # a counter's family is named without it
        return name.removesuffix("_total")

    page = (ROOT / "docs" / "operations.md").read_text()
    documented = {
        without_total(name) for name in re.findall(r"^\| `(customer_verification_\w+)`", page, re.M)
    }
    exposed = {
        family.name
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith("customer_verification_")
    }
    # The supervisor's own families, named in its source.
    exposed |= set(re.findall(r'"(customer_verification_\w+)"', inspect.getsource(supervisor)))
    assert exposed == documented


def test_the_readmes_table_lists_every_page_of_the_site():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(entries):
        for entry in entries:
            if isinstance(entry, str):
                yield entry
            else:
                for section in entry.values():
                    yield from pages(section)

    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| \[[^]]+\]\(docs/([\w-]+\.md)\)", readme, re.M))
    assert set(pages(nav)) - {"changelog.md"} == listed
    assert {page.name for page in (ROOT / "docs").glob("*.md")} == set(pages(nav))
