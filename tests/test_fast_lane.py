"""`make test-fast`: its suites exist, and a test that uses a database server is left out
of it by the `server` mark tests/conftest.py derives from the test's fixtures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make_list(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name} := ((?:.*\\\n)*.*)$", text, re.MULTILINE)
    assert match, f"the Makefile has no {name}"
    return match.group(1).replace("\\\n", " ").split()


def test_every_fast_suite_and_deselected_test_exists() -> None:
    suites = _make_list("FAST_SUITES")
    assert "tests/pipeline/test_cli.py" in suites
    missing = [s for s in suites if not (ROOT / s).is_file()]
    assert not missing, f"FAST_SUITES names files that do not exist: {missing}"
    for node in _make_list("FAST_DESELECT"):
        path, name = node.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"FAST_DESELECT: no {node}"


def _collected(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if "::" in line]


def test_tests_with_a_server_fixture_are_marked_server() -> None:
    # test_checks.py's tests take `engines`, which takes PostgreSQL through new_pg_url ->
    # pg_database -> postgres_admin_url; test_mapping.py's tests need no server
    checks, mapping = "tests/migrate/test_checks.py", "tests/migrate/test_mapping.py"
    assert _collected("-m", "server", checks) == [
        f"{checks}::test_phase_gates_in_order",
        f"{checks}::test_the_gate_task_decides_as_its_plan_says",
    ]
    assert _collected("-m", "not server", checks) == []
    assert _collected("-m", "server", mapping) == []
    assert len(_collected("-m", "not server", mapping)) > 3
