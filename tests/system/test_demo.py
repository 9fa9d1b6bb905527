"""The demo without Docker (devtools/demo.py), as README.md runs it, on the test database."""

import re
import subprocess
import sys

import psycopg2
from conftest import ROOT


def test_the_demo_shows_each_answer_and_leaves_no_customer_behind(database_url):
    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo", "--database-url", database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("!! --database-url: the demo writes into database")
    got = re.findall(r"^   got +(\d{3})", result.stdout, re.M)
    # signed, the same again (no replay protection there), moved, protected, replayed; v1 right
    # and wrong; unsigned
    assert got == ["200", "200", "403", "200", "403", "200", "403", "400"]
    assert "forged-by-client" not in "".join(re.findall(r"^   upstream .*$", result.stdout, re.M))
    assert max(len(line) for line in result.stdout.splitlines()) <= 120
    assert "INFO - [" not in result.stdout  # one clock: kong-pdk's own lines are left out
    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM customer WHERE certificate LIKE 'demo-%'")
        assert cursor.fetchone() == (0,)


def test_the_demo_ignores_a_database_named_by_the_environment(tmp_path):
    text = (ROOT / "devtools" / "demo.py").read_text()
    assert "os.environ" not in text and "getenv" not in text
