"""The lint configuration lints for real: sqlfluff's config finds violations, and
`make lint` runs ruff, sqlfluff and the pre-commit hooks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Upper-case keywords, an implicit table alias, a line over 100 characters.
BAD_MODEL = """SELECT orders.order_id, orders.status
from {{ ref('stg_orders') }} orders
where orders.status <> 'cancelled' and orders.currency in ('USD', 'EUR', 'GBP', 'JPY', 'CHF', 'AUD', 'CAD', 'SEK')
"""
GOOD_MODEL = """select
    orders.order_id,
    orders.status
from {{ ref('stg_orders') }} as orders
where orders.status <> 'cancelled'
"""


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's sqlfluff config and dbt project, with a bad and a good model added
    (a copy: the real project stays as it is for the other tests and engineers)."""
    work = tmp_path_factory.mktemp("lint")
    for name in (".sqlfluff", ".sqlfluffignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(
        ROOT / "dbt_project",
        work / "dbt_project",
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"),
    )
    models = work / "dbt_project" / "models" / "staging"
    (models / "lint_bad.sql").write_text(BAD_MODEL)
    (models / "lint_good.sql").write_text(GOOD_MODEL)
    return work


def _sqlfluff_lint(work: Path, *paths: str) -> dict[str, set[str]]:
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    env.pop("WAREHOUSE_PATH", None)
    done = subprocess.run(
        [str(BIN / "sqlfluff"), "lint", "--format", "json", "--nofail", *paths],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    return {r["filepath"]: {v["code"] for v in r["violations"]} for r in results}


def test_sqlfluff_finds_the_violations_of_a_bad_model_through_the_dbt_templater(
    project_copy: Path,
) -> None:
    bad = "dbt_project/models/staging/lint_bad.sql"
    good = "dbt_project/models/staging/lint_good.sql"
    found = _sqlfluff_lint(project_copy, bad, good)
    assert {"CP01", "AL01", "LT05"} <= found[bad], found  # keywords, alias, line length
    assert "TMP" not in found[bad] and "PRS" not in found[bad]  # compiled and parsed
    assert found[good] == set(), found  # the project's style passes
    # no warehouse was opened: the `sqlfluff` target is DuckDB in memory
    assert not (project_copy / "data").exists()


def test_the_macros_and_builds_are_ignored_and_the_config_is_the_projects() -> None:
    ignored = (ROOT / ".sqlfluffignore").read_text().split()
    assert {"dbt_project/target/", "dbt_project/dbt_packages/"} <= set(ignored)
    config = (ROOT / ".sqlfluff").read_text()
    for line in ("dialect = duckdb", "templater = dbt", "max_line_length = 100"):
        assert line in config.splitlines()
    assert "capitalisation_policy = lower" in config and "aliasing = explicit" in config


def test_make_lint_runs_ruff_sqlfluff_and_pre_commit() -> None:
    dry = subprocess.run(
        ["make", "-n", "lint"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    lines = dry.splitlines()
    for command in (
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/pre-commit run --all-files",
    ):
        assert any(line.startswith(command) for line in lines), (command, dry)
    [sqlfluff] = [line for line in lines if line.startswith(".venv/bin/sqlfluff lint ")]
    assert "dbt_project/models" in sqlfluff.split()
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make lint") < ci.index("make test")


def test_pre_commit_hooks_are_local_and_cover_the_four_tools() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    [repo] = config["repos"]
    assert repo["repo"] == "local"  # no hook repository to download
    hooks = {hook["id"]: hook for hook in repo["hooks"]}
    assert all(hook["language"] == "system" for hook in hooks.values())
    assert hooks["ruff-check"]["entry"] == ".venv/bin/ruff check"
    assert hooks["ruff-format"]["entry"] == ".venv/bin/ruff format --check"
    assert hooks["sqlfluff-lint"]["entry"].endswith(".venv/bin/sqlfluff lint")
    assert "end-of-file-fixer" in hooks and "trailing-whitespace" in hooks


@pytest.mark.parametrize(
    "fixer, before, after",
    [
        ("end-of-file", b"a\nb", b"a\nb\n"),
        ("end-of-file", b"a\n\n\n", b"a\n"),
        ("end-of-file", b"a\r\n\r\n", b"a\r\n"),
        ("end-of-file", b"\n\n", b""),
        ("trailing-whitespace", b"a  \nb\t\nc", b"a\nb\nc"),
        ("trailing-whitespace", b"a \r\nb  ", b"a\r\nb"),
    ],
)
def test_whitespace_hooks_fix_and_fail(
    tmp_path: Path, fixer: str, before: bytes, after: bytes
) -> None:
    from tools.whitespace import main

    path = tmp_path / "f.txt"
    path.write_bytes(before)
    assert main([fixer, "--check", str(path)]) == 1 and path.read_bytes() == before
    assert main([fixer, str(path)]) == 1  # changed: pre-commit fails the run
    assert path.read_bytes() == after
    assert main([fixer, str(path)]) == 0  # clean now
