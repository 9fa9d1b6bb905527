"""What ships and how it is arranged: the wheel holds the runtime alone, it works installed in a
fresh virtualenv, and the runtime's modules stay small and import one way."""

import ast
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

RUNTIME_PACKAGE = ROOT / "customer_auth"
# As ruff formats them (100 columns); functions are held small by its complexity rule (C901).
MAX_MODULE_LINES = 450

# Each runtime module may import only modules of a lower layer: the Kong glue -> the process's
# credentials -> cache, lookup, listener -> connections.
LAYERS = {
    "customer_auth.core.terms": -1,
    "customer_auth.core.expiring": -1,
    "customer_auth.core.v1": 0,
    "customer_auth.metrics": 0,
    "customer_auth.kong.operator_log": 0,
    "customer_auth.kong.events": 0,
    "customer_auth.kong.transport": 1,
    "customer_auth.store.replication": 0,
    "customer_auth.kong.consumers": 0,
    "customer_auth.core.rfc9421": 1,
    "customer_auth.client": 1,
    "customer_auth.store.connection": 1,
    "customer_auth.store.customers": 2,
    "customer_auth.store.nonces": 2,
    "customer_auth.store.changes": 2,
    "customer_auth.store.cache": 3,
    "customer_auth.store.credentials": 4,
    "customer_auth.core.decision": 4,
    "customer_auth.cli": 5,
    "customer_auth.core.options": 5,
    "customer_auth.service.common": 6,
    "customer_auth.wsgi": 7,
    "customer_auth.asgi": 7,
    "customer_auth.middleware": 8,
    "customer_verification": 6,
}


def runtime_modules():
    yield "customer_verification", ROOT / "customer_verification.py"
    for path in sorted(RUNTIME_PACKAGE.glob("*.py")):
        if path.name != "__init__.py":
            yield f"customer_auth.{path.stem}", path


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_every_runtime_module_has_a_layer_and_stays_small():
    for name, path in runtime_modules():
        assert name in LAYERS, f"{name}: give it a layer in this test"
        assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, name


def test_runtime_imports_run_one_way_and_never_reach_development_tools():
    for name, path in runtime_modules():
        for imported in imported_modules(path):
            assert not imported.startswith(("devtools", "tests", "conftest")), (
                f"{name} imports {imported}"
            )
            if imported in LAYERS:
                assert LAYERS[imported] < LAYERS[name], (
                    f"{name} imports {imported}, which is not below it"
                )


def test_the_signatures_need_neither_kong_nor_a_database():
    assert set(imported_modules(RUNTIME_PACKAGE / "terms.py")) == set()
    assert {
        name
        for name in imported_modules(RUNTIME_PACKAGE / "signature.py")
        if not name.startswith("customer_auth.core.terms")
    } <= {
        "__future__",
        "__future__.annotations",
        "hashlib",
        "hmac",
        "time",
        "collections.abc",
        "collections.abc.Iterable",
    }
    imported = set(imported_modules(RUNTIME_PACKAGE / "message_signatures.py"))
    assert not {
        name for name in imported if name.split(".")[0] in ("kong_pdk", "psycopg2", "gevent")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (path,) = out.glob("*.whl")
    return path


def test_the_wheel_holds_the_plugin_its_runtime_and_the_cli_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    code = sorted(name for name in names if ".dist-info/" not in name)
    expected = sorted(
        ["customer_verification.py", "customer_auth/__init__.py", "customer_auth/py.typed"]
        + [
            f"customer_auth/{path.name}"
            for path in RUNTIME_PACKAGE.glob("*.py")
            if path.name != "__init__.py"
        ]
    )
    assert code == expected
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "customer-verification = customer_auth.cli:main" in entry_points


def test_the_installed_wheel_runs_as_kong_starts_it_in_a_fresh_virtualenv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=400,
    )
    # Run outside the repository, so nothing but the installed package can be imported.
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    dump = subprocess.run(
        [venv / "bin" / "python", "-m", "customer_verification", "--dump"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"Name": "customer_verification"' in dump.stdout
    usage = subprocess.run(
        [venv / "bin" / "customer-verification", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "rotate" in usage.stdout and "revoke" in usage.stdout
    installed = subprocess.run(
        [venv / "bin" / "python", "-c", "import devtools"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert installed.returncode != 0  # the development tools are not installed
