"""Static checks of the deployment kit (no Docker engine runs here), and its SQL and init script
run for real against the test Postgres, with the demo customer verified through the Kong stand-in."""
import json
import os
import re
import shlex
import subprocess
import sys

import psycopg2
import pytest
import yaml

from customer_auth import signature
import customer_verification
from conftest import ROOT, SERVER_MODES, dsn_for_database, execute, start_gateway

BIN = os.path.dirname(sys.executable)


def kong_conf():
    settings = {}
    for line in (ROOT / "kong.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = value
    return settings


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def declarative():
    return yaml.safe_load((ROOT / "kong.yml").read_text())


def dockerfile():
    return (ROOT / "Dockerfile-Kong").read_text()


def env_file(name):
    return dict(line.split("=", 1) for line in (ROOT / name).read_text().splitlines()
                if line and not line.startswith("#"))


def test_compose_file_validates_against_the_compose_specification():
    result = subprocess.run([os.path.join(BIN, "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint_at_warning_level():
    result = subprocess.run([os.path.join(BIN, "hadolint"), "--failure-threshold", "warning",
                             str(ROOT / "Dockerfile-Kong")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_respects_the_kong_image_facts():
    text = dockerfile()
    assert re.search(r"^FROM kong:3\.\d+\.\d+", text, re.M), "a current Kong 3.x image, pinned by tag"
    assert "apk " not in text and "chmod 777" not in text
    assert "python3 -m venv" in text  # Ubuntu refuses system-wide pip installs
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "kong"
    assert "DATABASE_URL" not in text and "password" not in text.lower()  # no secrets baked in


def test_plugin_name_socket_and_commands_agree_everywhere():
    conf = kong_conf()
    name = "customer_verification"
    assert conf["plugins"].split(",") == ["bundled", name]
    assert conf["pluginserver_names"] == name
    start = shlex.split(conf[f"pluginserver_{name}_start_cmd"])
    query = shlex.split(conf[f"pluginserver_{name}_query_cmd"])
    prefix = start[start.index("-p") + 1]
    # start_dedicated_server listens on <prefix>/<name>.sock; Kong must be told that path.
    assert conf[f"pluginserver_{name}_socket"] == os.path.join(prefix, f"{name}.sock")
    assert prefix == conf["prefix"]
    assert start[1:3] == ["-m", name] and query[1:] == ["-m", name, "--dump"]
    assert start[3:] == ["-p", prefix, *SERVER_MODES["gevent"]]  # the mode the tests run
    venv_python = start[0]
    assert query[0] == venv_python and venv_python.startswith("/opt/customer-verification/venv/")
    assert "python3 -m venv /opt/customer-verification/venv" in dockerfile()
    assert f"{name}.py" in dockerfile()


def test_paths_and_ports_agree_across_files():
    conf, services = kong_conf(), compose()["services"]
    assert "COPY kong.conf /etc/kong/kong.conf" in dockerfile()
    assert f"COPY kong.yml {conf['declarative_config']}" in dockerfile()
    assert conf["database"] == "off"
    assert services["kong"]["build"]["dockerfile"] == "Dockerfile-Kong"
    proxy_port = conf["proxy_listen"].rsplit(":", 1)[1]
    assert f"{proxy_port}:{proxy_port}" in services["kong"]["ports"]
    echo = declarative()["services"][0]
    host, port = echo["url"].split("//")[1].split(":")
    assert host in services and services[host]["environment"]["HTTP_PORT"] == port
    assert services["kong"]["env_file"] == "kong.env"
    assert conf["nginx_main_env"] in env_file("kong.env")  # nginx would clear it otherwise
    for volume in services["postgres"]["volumes"]:
        assert (ROOT / volume.split(":")[0].removeprefix("./")).exists()
    assert re.match(r"^[\w.-]+:[\w.-]+$", services["postgres"]["image"]) and services["echo"]["image"].count(":") == 1


def test_declarative_config_enables_the_plugin_with_valid_options():
    plugin = declarative()["services"][0]["plugins"][0]
    assert plugin["name"] == "customer_verification"
    assert set(plugin["config"]) <= set(customer_verification.DEFAULTS)


def test_fail_closed_rule_is_present_and_global():
    plugins = {plugin["name"]: plugin for plugin in declarative()["plugins"]}
    header = customer_verification.DEFAULTS["customer_id_header"]
    clear = plugins["pre-function"]["config"]["access"]
    assert clear == [f'kong.service.request.clear_header("{header}")']
    check = plugins["post-function"]["config"]["access"][0]
    assert f'if not kong.request.get_header("{header}")' in check
    assert "kong.response.exit(503" in check
    for plugin in plugins.values():
        assert not {"service", "route", "consumer"} & set(plugin)


def test_query_command_prints_only_the_json_kong_parses():
    conf = kong_conf()
    query = shlex.split(conf["pluginserver_customer_verification_query_cmd"])
    output = subprocess.run([sys.executable, *query[1:]], capture_output=True, check=True, cwd=ROOT,
                            env={**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}).stdout
    info = json.loads(output)[0]
    assert info["Name"] == "customer_verification" and info["Phases"] == ["access"]
    assert info["Priority"] == customer_verification.priority


@pytest.fixture
def deployed_database(postgres):
    """The init script, run as the Postgres image would, into a fresh database."""
    dsn, _ = postgres
    name = "cv_deploy_test"
    execute(dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    execute(dsn, "DROP ROLE IF EXISTS customer_verification")
    execute(dsn, f"CREATE DATABASE {name}")
    url = dsn_for_database(dsn, name)
    params = psycopg2.extensions.parse_dsn(url)
    plugin_url = f"postgresql://customer_verification:change-me-plugin-password@{params['host']}:{params.get('port', 5432)}/{name}"
    from devtools.throwaway_postgres import POSTGRES_BIN_PATH

    subprocess.run(["bash", str(ROOT / "postgres-init.sh")], check=True, capture_output=True, env={
        **os.environ, "PATH": f"{POSTGRES_BIN_PATH}:{os.environ['PATH']}", "SCHEMA_DIR": str(ROOT),
        "POSTGRES_USER": params.get("user", "postgres"), "POSTGRES_DB": name,
        "PGHOST": params["host"], "PGPORT": str(params.get("port", 5432)), "PGPASSWORD": params.get("password", ""),
        "DATABASE_URL": env_file("kong.env")["DATABASE_URL"]})
    yield plugin_url
    execute(dsn, f"DROP DATABASE {name} WITH (FORCE)")
    execute(dsn, "DROP ROLE IF EXISTS customer_verification")


def test_the_plugin_role_can_only_read_the_customer_table(deployed_database):
    conn = psycopg2.connect(deployed_database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM customer")
            assert cursor.fetchone() == (1,)
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute("UPDATE customer SET certificate = certificate")
    finally:
        conn.close()


def test_the_demo_customer_verifies_through_the_kong_standin(deployed_database):
    gateway = start_gateway(ROOT / "customer_verification.py", "customer_verification", SERVER_MODES["gevent"],
                            env={"DATABASE_URL": deployed_database},
                            config=declarative()["services"][0]["plugins"][0]["config"])
    try:
        outcome = gateway.send(list(signature.signed_headers("demo-certificate", "demo-client-key").items()))
        assert outcome.upstream["x-customer-id"] == ["6f1d8d2e-3b1a-4c52-9a57-0d7e2f6b9c41"]
    finally:
        gateway.cleanup()
