"""The demo without Docker (devtools/demo.py), as README.md runs it, on the test database."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_the_demo_shows_each_answer_and_warns_that_it_writes_into_the_named_database(database_url):
    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": database_url},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("!! DATABASE_URL is set: the demo WRITES INTO database")
    got = re.findall(r"^client got: +(\d{3})", result.stdout, re.M)
    assert got == ["200", "403", "200", "403", "400", "200", "403"]
    assert "forged-by-client" not in "".join(re.findall(r"^upstream saw: .*$", result.stdout, re.M))
