"""What ships and how it is arranged: the runtime package in folders by role, imports running one
way between them, a core that needs no driver, Kong or metrics, and a wheel that holds the runtime
alone and works installed in a fresh virtualenv."""

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
CONTRACT_LINES = 60  # customer_verification.py: the Kong contract at a glance

# The folders by role, and what each may import of the others: the core is imported by all and
# imports none; the store never knows a face; the faces never know each other.
FOLDERS = {
    "core": {"errors"},
    "store": {"errors", "core", "metrics"},
    "kong": {"errors", "core", "store", "metrics"},
    "service": {"errors", "core", "store", "metrics"},
}
# Modules at the package's top, what they may import (a shim imports the face it stands for).
TOP = {
    "errors": set(),
    "metrics": {"core"},
    "client": {"errors", "core"},
    "cli": {"errors", "core", "store", "client"},
    "middleware": {"service"},
    "wsgi": {"service"},
    "asgi": {"service"},
}
# Never in the core, directly or through what it imports (checked in a fresh interpreter).
NOT_IN_THE_CORE = ("psycopg2", "gevent", "kong_pdk", "prometheus_client", "greenlet", "msgpack")


def runtime_modules():
    yield "customer_verification", ROOT / "customer_verification.py"
    for path in sorted(RUNTIME_PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(part for part in parts if part != "__init__"), path


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def role(module):
    """The folder (or top-level module) a runtime module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_runtime_module_lives_in_a_folder_of_its_role_and_stays_small():
    for name, path in runtime_modules():
        if name in ("customer_verification", "customer_auth"):
            continue
        assert role(name) in FOLDERS or role(name) in TOP, f"{name}: a folder of its role"
        if role(name) in TOP:
            assert name.count(".") == 1, f"{name}: the top holds modules only"
        assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, name


def test_imports_between_folders_run_one_way():
    for name, path in runtime_modules():
        if name == "customer_verification":
            continue
        allowed = FOLDERS.get(role(name), TOP.get(role(name), set())) | {role(name)}
        for imported in imported_modules(path):
            assert not imported.startswith(("devtools", "tests", "conftest")), (name, imported)
            if imported.startswith("customer_auth.") and imported.count(".") >= 1:
                target = role(imported)
                assert target in allowed, f"{name} imports {imported}"


def test_the_core_loads_no_driver_no_kong_and_no_metrics():
    code = (
        "import sys, pkgutil, importlib, customer_auth.core as core\n"
        "for module in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('customer_auth.core.' + module.name)\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {NOT_IN_THE_CORE!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


def test_the_contract_file_is_the_kong_contract_at_a_glance():
    import customer_verification

    assert len((ROOT / "customer_verification.py").read_text().splitlines()) < CONTRACT_LINES
    assert {"Schema", "version", "priority", "Plugin"} <= set(vars(customer_verification))


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
        ["customer_verification.py", "customer_auth/py.typed"]
        + [str(path.relative_to(ROOT)) for path in RUNTIME_PACKAGE.rglob("*.py")]
    )
    assert code == expected
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "customer-verification = customer_auth.cli:main" in entry_points


SERVER_PACKAGES = ("kong-pdk", "gevent", "psycopg2-binary", "prometheus-client", "msgpack")


def test_the_installed_wheel_signs_alone_and_runs_as_kong_starts_it_with_its_extra(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=400,
    )
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}

    def run_installed(program, *arguments, check=True):
        """Outside the repository, so nothing but the installed package can be imported."""
        return subprocess.run(
            [venv / "bin" / program, *arguments],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    # The base install is a client's: it signs, and brings nothing of the server.
    listed = subprocess.run(
        [venv / "bin" / "pip", "list", "--format=freeze"], capture_output=True, text=True
    ).stdout.lower()
    assert not [name for name in SERVER_PACKAGES if f"{name}==" in listed.replace("_", "-")]
    signed = run_installed(
        "customer-verification", "sign", "cert-1", "--key", "k", "--v1", check=False
    )
    assert signed.returncode == 0 and "client-request-signature: " in signed.stdout
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", f"{wheel}[kong,admin]"],
        check=True,
        capture_output=True,
        timeout=400,
    )
    dump = run_installed("python", "-m", "customer_verification", "--dump")
    assert '"Name": "customer_verification"' in dump.stdout
    usage = run_installed("customer-verification", "--help")
    assert "rotate" in usage.stdout and "revoke" in usage.stdout
    installed = run_installed("python", "-c", "import devtools", check=False)
    assert installed.returncode != 0  # the development tools are not installed
