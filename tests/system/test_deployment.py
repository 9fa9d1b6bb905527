"""Static checks of the deployment kit (no Docker engine runs here), and its SQL and init script
run for real against the test Postgres, with the demo customer verified through the Kong
stand-in."""

import json
import os
import re
import shlex
import subprocess
import sys
import types

import psycopg2
import pytest
import yaml
from conftest import ROOT, SERVER_MODES, execute, fenced_block, start_gateway

import customer_verification
from customer_auth.core import options, v1
from customer_auth.kong import plugin as kong_plugin
from customer_auth.kong.processes import CHILD_CHANNEL, CHILD_SLOT

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


def compose_text():
    return (ROOT / "docker-compose.yml").read_text()


def plugin_database_url():
    """The plugin's DATABASE_URL in the compose kit, with the defaults that apply without .env."""
    url = compose()["services"]["kong"]["environment"]["DATABASE_URL"]
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", url)


def passed_variables():
    """The variables nginx keeps for its workers, hence for the plugin server (kong.conf)."""
    include = kong_conf()["nginx_main_include"]
    assert (
        include == "/etc/kong/plugin-server-env.conf"
        and "plugin-server-env.conf /etc/kong/" in dockerfile()
    )
    lines = [line.strip() for line in (ROOT / "plugin-server-env.conf").read_text().splitlines()]
    return {
        re.fullmatch(r"env (\w+);", line).group(1)
        for line in lines
        if line and not line.startswith("#")
    }


def variables_the_runtime_reads():
    from customer_auth.store.connection import LIBPQ_VARIABLES

    names = set(LIBPQ_VARIABLES)
    for path in [ROOT / "customer_verification.py", *(ROOT / "customer_auth").rglob("*.py")]:
        text = path.read_text()
        names |= set(re.findall(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z0-9_]+)["']""", text))
        # named by a constant
        names |= set(re.findall(r"""["'](CUSTOMER_VERIFICATION_[A-Z0-9_]+)["']""", text))
    return names - {CHILD_SLOT, CHILD_CHANNEL}  # the supervisor sets these for its children


def test_every_variable_the_runtime_reads_reaches_the_plugin_server_through_nginx():
    read = variables_the_runtime_reads()
    assert {
        "DATABASE_URL",
        "CUSTOMER_VERIFICATION_POOL_SIZE",
        "CUSTOMER_VERIFICATION_METRICS_PORT",
        "PGHOST",
    } <= read
    assert read - passed_variables() == set()


def test_compose_file_validates_against_the_compose_specification():
    result = subprocess.run(
        [
            os.path.join(BIN, "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint_at_its_default_threshold():
    result = subprocess.run(
        [os.path.join(BIN, "hadolint"), str(ROOT / "Dockerfile-Kong")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_respects_the_kong_image_facts():
    text = dockerfile()
    assert re.search(r"^FROM kong:3\.\d+\.\d+", text, re.M), (
        "a current Kong 3.x image, pinned by tag"
    )
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
    assert start[3:] == ["-p", prefix, *SERVER_MODES["lean"].flags]  # the mode the tests run
    # ... on the lean transport: nothing shipped asks for stock kong-pdk.
    shipped = [ROOT / ".env.example", ROOT / "docker-compose.yml", ROOT / "Dockerfile-Kong"]
    assert not any("CUSTOMER_VERIFICATION_TRANSPORT" in path.read_text() for path in shipped)
    venv_python = start[0]
    assert query[0] == venv_python and venv_python.startswith("/opt/customer-verification/venv/")
    assert "python3 -m venv /opt/customer-verification/venv" in dockerfile()
    assert f"{name}.py" in dockerfile()


def test_paths_and_ports_agree_across_files():
    conf, services = kong_conf(), compose()["services"]
    assert "COPY kong.conf plugin-server-env.conf /etc/kong/" in dockerfile()
    assert f"COPY kong.yml {conf['declarative_config']}" in dockerfile()
    assert conf["database"] == "off"
    assert services["kong"]["build"]["dockerfile"] == "Dockerfile-Kong"
    proxy_port = conf["proxy_listen"].rsplit(":", 1)[1]
    # published on loopback only: the demo keys are public
    assert f"127.0.0.1:{proxy_port}:{proxy_port}" in services["kong"]["ports"]
    echo = declarative()["services"][0]
    host, port = echo["url"].split("//")[1].split(":")
    assert host in services and services[host]["environment"]["HTTP_PORT"] == port
    assert set(services["kong"]["environment"]) <= passed_variables()
    # secrets only in .env, which git ignores; the example says what goes there
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert not (ROOT / "kong.env").exists()
    example = (ROOT / ".env.example").read_text()
    assert all(f"${{{name}:-" in compose_text() for name in re.findall(r"^(\w+)=", example, re.M))
    for volume in services["postgres"]["volumes"] + services["kong"]["volumes"]:
        source = volume.split(":")[0]
        assert source in compose()["volumes"] or (ROOT / source.removeprefix("./")).exists()
    assert (
        re.match(r"^[\w.-]+:[\w.-]+$", services["postgres"]["image"])
        and services["echo"]["image"].count(":") == 1
    )


def test_declarative_config_enables_the_plugin_with_valid_options():
    plugin = declarative()["services"][0]["plugins"][0]
    assert plugin["name"] == "customer_verification"
    assert set(plugin["config"]) <= set(options.DEFAULTS)


def test_the_demo_limits_each_customer_by_its_kong_consumer():
    config = declarative()
    plugins = {plugin["name"]: plugin["config"] for plugin in config["services"][0]["plugins"]}
    assert plugins["customer_verification"]["consumer_by"] == ["username"]
    assert plugins["rate-limiting"]["limit_by"] == "consumer"
    demo = (ROOT / "demo_data.sql").read_text()
    for consumer in config["consumers"]:
        assert f"'{consumer['custom_id']}', '{consumer['username']}'" in demo


def test_fail_closed_rule_is_present_and_global():
    plugins = {plugin["name"]: plugin for plugin in declarative()["plugins"]}
    header = options.DEFAULTS["customer_id_header"]
    clear = plugins["pre-function"]["config"]["access"]
    assert clear == [f'kong.service.request.clear_header("{header}")']
    check = plugins["post-function"]["config"]["access"][0]
    assert "if not kong.client.get_credential() and not kong.client.get_consumer()" in check
    assert f"and not kong.ctx.shared.{kong_plugin.PREFLIGHT_MARK} then" in check
    assert "kong.response.exit(503" in check
    for plugin in plugins.values():
        assert not {"service", "route", "consumer"} & set(plugin)


def test_query_command_prints_only_the_json_kong_parses():
    conf = kong_conf()
    query = shlex.split(conf["pluginserver_customer_verification_query_cmd"])
    output = subprocess.run(
        [sys.executable, *query[1:]],
        capture_output=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    ).stdout
    info = json.loads(output)[0]
    assert info["Name"] == "customer_verification" and info["Phases"] == ["access"]
    assert info["Priority"] == customer_verification.priority


def run_init_script(admin_dsn, database, database_url):
    """postgres-init.sh into ``database``, as the Postgres image runs it, with the kit's URL."""
    from devtools.throwaway_postgres import POSTGRES_BIN_PATH

    params = psycopg2.extensions.parse_dsn(admin_dsn)
    subprocess.run(
        ["bash", str(ROOT / "postgres-init.sh")],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "PATH": f"{POSTGRES_BIN_PATH}:{os.environ['PATH']}",
            "SCHEMA_DIR": str(ROOT),
            "POSTGRES_USER": params.get("user", "postgres"),
            "POSTGRES_DB": database,
            "PGHOST": params["host"],
            "PGPORT": str(params.get("port", 5432)),
            "PGPASSWORD": params.get("password", ""),
            "DATABASE_URL": database_url,
        },
    )


@pytest.fixture
def deployed_database(postgres):
    """The init script, run as the Postgres image would, into a fresh database."""
    dsn, _ = postgres
    name = "cv_deploy_test"
    execute(dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    execute(dsn, "DROP ROLE IF EXISTS customer_verification")
    execute(dsn, f"CREATE DATABASE {name}")
    params = psycopg2.extensions.parse_dsn(dsn)
    run_init_script(dsn, name, plugin_database_url())
    # the kit's URL, pointed at this server and database
    host, port = params["host"], params.get("port", 5432)
    yield f"postgresql://customer_verification:change-me-plugin-password@{host}:{port}/{name}"
    execute(dsn, f"DROP DATABASE {name} WITH (FORCE)")
    execute(dsn, "DROP ROLE IF EXISTS customer_verification")


def test_the_plugin_role_can_only_read_the_customer_table(deployed_database):
    conn = psycopg2.connect(deployed_database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM customer")
            assert cursor.fetchone() == (2,)  # the two demo customers
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute("UPDATE customer SET certificate = certificate")
    finally:
        conn.close()


def test_the_demo_customer_verifies_through_the_kong_standin(deployed_database):
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": deployed_database},
        config=declarative()["services"][0]["plugins"][0]["config"],
    )
    try:
        gateway.kong.consumers = declarative()["consumers"]
        outcome = gateway.send(
            list(v1.signed_headers("demo-certificate", "demo-client-key").items())
        )
        assert outcome.upstream["x-customer-id"] == ["6f1d8d2e-3b1a-4c52-9a57-0d7e2f6b9c41"]
        assert outcome.upstream["x-consumer-username"] == ["demo-certificate"]
    finally:
        gateway.cleanup()


def test_the_init_script_takes_a_percent_encoded_plugin_password():
    """On a server that checks passwords: '@', ':', '%' and '/' in the password, encoded in
    the kit's .env."""
    from devtools.throwaway_postgres import ThrowawayPostgres

    with ThrowawayPostgres(password="admin-secret") as server:
        execute(server.dsn, "CREATE DATABASE customers")
        run_init_script(
            server.dsn,
            "customers",
            "postgresql://customer_verification:p%40ss%3Aw%25rd%2F%5Cx@postgres:5432/customers",
        )
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=server.port,
            dbname="customers",
            user="customer_verification",
            password="p@ss:w%rd/\\x",
        )
        conn.close()


def documented_commands(title):
    """The command lines of a titled block of docs/getting-started.md, continuations joined and
    the block's `admin=...` URL put in where "$admin" stands."""
    lines = fenced_block("getting-started.md", title).replace("\\\n", " ").splitlines()
    admin = [
        shlex.split(line)[0].removeprefix("admin=") for line in lines if line.startswith("admin=")
    ]
    return [
        line.replace('"$admin"', admin[0]) if admin else line
        for line in lines
        if not line.startswith("admin=")
    ]


def test_the_documented_customer_commands_for_the_compose_deployment_work(
    deployed_database, postgres
):
    """The same command lines, with the compose host name pointed at the test server."""
    dsn, _ = postgres
    params = psycopg2.extensions.parse_dsn(dsn)
    commands = documented_commands("Manage customers in the compose kit")
    assert [shlex.split(command)[7] for command in commands] == ["revoke", "add", "list"]
    outputs = []
    for command in commands:
        words = shlex.split(command)
        assert words[:5] == ["docker", "compose", "exec", "-e", words[4]] and words[5] == "kong"
        url = (
            words[4]
            .split("=", 1)[1]
            .replace("${POSTGRES_PASSWORD:-change-me-admin-password}", params.get("password", "x"))
        )
        url = url.replace(
            "@postgres:5432/customers",
            f"@{params['host']}:{params.get('port', 5432)}/cv_deploy_test",
        )
        result = subprocess.run(
            [os.path.join(BIN, words[6]), *words[7:]],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DATABASE_URL": url},
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert "demo-certificate\trevoked" in outputs[-1] and "my-first-customer\tactive" in outputs[-1]


def test_the_readmes_password_change_works_on_a_running_database(deployed_database, postgres):
    from devtools.throwaway_postgres import POSTGRES_BIN_PATH

    dsn, _ = postgres
    params = psycopg2.extensions.parse_dsn(dsn)
    command, restart = documented_commands("Change the plugin's password")
    assert restart == "docker compose up -d kong"
    words = shlex.split(command)[4:]
    words[words.index("-d") + 1] = "cv_deploy_test"
    subprocess.run(
        [
            POSTGRES_BIN_PATH / words[0],
            "-h",
            params["host"],
            "-p",
            str(params.get("port", 5432)),
            "-v",
            "ON_ERROR_STOP=1",
            *words[1:],
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    rows = psycopg2.connect(dsn).cursor()
    rows.execute(
        "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'customer_verification'"
    )
    assert rows.fetchone() == (True,)
    rows.connection.close()


def test_postgres_keeps_customers_in_a_named_volume_and_is_checked_over_tcp():
    postgres = compose()["services"]["postgres"]
    assert (
        "customer-data:/var/lib/postgresql/data" in postgres["volumes"]
        and "customer-data" in compose()["volumes"]
    )
    check = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in check and "-h 127.0.0.1" in check


def test_kongs_healthcheck_covers_the_plugin_server():
    kong = compose()["services"]["kong"]
    check = " ".join(kong["healthcheck"]["test"])
    port = kong["environment"]["CUSTOMER_VERIFICATION_METRICS_PORT"]
    assert "kong health" in check and f"127.0.0.1:{port}/health" in check


def test_the_image_build_context_holds_only_what_ships():
    import fnmatch

    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent(path):
        included = True
        for rule in rules:
            negated = rule.startswith("!")
            if fnmatch.fnmatch(path, rule.lstrip("!")):
                included = negated
        return included

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    candidates = tracked + [
        ".venv/bin/python",
        ".git/config",
        ".env",
        "benchmark-results/results.json",
    ]
    copied = set(re.findall(r"^COPY (.+) \S+$", dockerfile(), re.M))
    needed = {name for line in copied for name in line.split()}
    assert {path for path in candidates if sent(path)} == {
        path
        for path in tracked
        if path in needed or path.split("/")[0] in needed  # a copied folder, all of it
    }


def test_monitoring_uses_only_metrics_the_plugin_exports():
    import prometheus_client

    import customer_auth.metrics  # noqa: F401  (registers them)

    exported = {
        sample.name
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith("customer_verification")
        for sample in family.samples
    } | {f"{name}_bucket" for name in ("customer_verification_store_lookup_seconds",)}
    # the supervisor's own, with several processes
    from customer_auth.kong.supervisor import _Collected

    exported |= {
        sample.name
        for family in _Collected(types.SimpleNamespace(slots=[])).collect()
        for sample in family.samples
    }
    dashboard = json.loads(
        (ROOT / "monitoring/grafana/dashboards/customer-verification.json").read_text()
    )
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text())
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {
        name
        for expression in expressions
        for name in re.findall(r"customer_verification_\w+", expression)
    }
    assert used and used <= exported, used - exported
    assert {
        "CustomerVerification503s",
        "CustomerVerificationListenerDown",
        "CustomerVerificationMetricsGone",
    } == {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())
    port = compose()["services"]["kong"]["environment"]["CUSTOMER_VERIFICATION_METRICS_PORT"]
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"kong:{port}"]
    for service in ("prometheus", "grafana"):
        assert compose()["services"][service]["profiles"] == ["monitoring"]


def test_every_service_of_the_kit_has_a_healthcheck_and_the_image_installs_from_constraints():
    services = compose()["services"]
    assert [name for name, service in services.items() if "healthcheck" not in service] == []
    dockerfile = (ROOT / "Dockerfile-Kong").read_text()
    assert "-c constraints.txt" in dockerfile and "constraints.txt" in dockerfile.split("COPY")[1]
    pinned = [
        line.split("==")[0].lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    ]
    assert {"kong-pdk", "gevent", "psycopg2-binary", "prometheus-client"} <= {
        name.replace("_", "-") for name in pinned
    }
