"""The `nightshift` command (pipeline/cli.py): every subcommand documents its options and
hands them to its module; the installed console script runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline import cli

SCRIPT = Path(sys.executable).parent / "nightshift"

# What `nightshift <command> --help` must name: the interface users script against.
OPTIONS: dict[tuple[str, ...], list[str]] = {
    ("demo",): ["--data-dir", "--days", "--orders-per-day", "--seed", "--port"],
    ("nightly",): ["--date", "--full", "--allow-mass-delete"],
    ("backfill",): ["--from", "--to", "--mode"],
    ("ui",): ["--help"],
    ("steps",): ["--date", "--full", "--allow-mass-delete"],
    ("rollback",): ["--to", "--list"],
    ("lease",): ["show", "unlock"],
    ("replay",): ["--date"],
    ("query",): ["--sql", "--warehouse"],
    ("report",): ["--report-dir"],
    ("dev-warehouse",): ["--to"],
    ("migrate",): ["--old", "--new", "--config", "--tables", "schema", "backfill", "verify"],
    ("migrate", "backfill"): ["--batch-size", "--rows-per-second", "--restart", "--no-progress"],
    ("migrate", "verify"): ["--phase", "--run-id", "--no-record", "--repair"],
    ("migrate", "gate"): ["--phase", "--required-clean-runs", "--run-id"],
    ("migration-demo",): ["--data-dir", "--database", "--rows-per-second", "--fail-every"],
    ("demo-data",): ["generate", "next-day"],
    ("demo-data", "generate"): ["--url", "--days", "--orders-per-day", "--scale", "--end-date"],
    ("demo-data", "next-day"): ["--url", "--date", "--orders-per-day", "--payments-db"],
    ("demo-api",): ["--host", "--port", "--payments-db", "--faults", "--fault-every"],
}


def test_every_command_has_its_options_pinned() -> None:
    assert {words[0] for words in OPTIONS} == set(cli.COMMANDS)


@pytest.mark.parametrize("words", sorted(OPTIONS), ids=" ".join)
def test_help_describes_the_command_and_names_its_options(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*words, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nightshift {' '.join(words)} "), out
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 4, f"no description in:\n{out}"
    for option in OPTIONS[words]:
        assert option in out, f"`nightshift {' '.join(words)} --help` does not name {option}"


def test_top_level_help_lists_every_command() -> None:
    out = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: nightshift")
    for name, command in cli.COMMANDS.items():
        assert f"  {name} " in out and command.summary in out


def test_an_unknown_command_is_named_with_the_valid_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["nightlly", "--date", "2026-11-27"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nightlly'" in err and "'nightly'" in err and "'query'" in err


def test_a_bad_option_value_is_the_module_error_under_the_command_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["nightly", "--date", "27/11/2026"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: nightshift nightly" in err and "'27/11/2026'" in err


def test_the_old_module_entry_points_keep_their_names(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import airflow_run

    for argv in (["run", "--help"], ["nightly", "--help"]):  # `make nightly` used `run`
        with pytest.raises(SystemExit) as exit_:
            airflow_run.main(argv)
        assert exit_.value.code == 0
        assert "--allow-mass-delete" in capsys.readouterr().out


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user outside the project: no PYTHONPATH, no warehouse server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "AIRFLOW_CONN_WAREHOUSE",
            "DBT_TARGET",
            "WAREHOUSE_PATH",
            "REPORT_DIR",
            "NIGHTSHIFT_DATA_URL",
        )
    }
    return {
        **env,
        "NIGHTSHIFT_NO_AIRFLOW_LOOKUP": "1",
        "NIGHTSHIFT_DATA_DIR": str(tmp_path),
        **extra,
    }


def _nightshift(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: run `.venv/bin/pip install --no-deps -e .`"
    return subprocess.run(
        [SCRIPT, *args],
        cwd=tmp_path,  # not the project folder: the installed package is what runs
        env=_script_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_query_runs_one_statement_on_the_configured_warehouse(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create schema analytics")
    con.execute(
        "create table analytics.sales_summary as select date '2026-11-27' as date, "
        "'north' as region, 12.34::decimal(18,2) as total_sales_usd, 3::bigint as order_count"
    )
    con.close()
    sql = "select region, total_sales_usd, order_count from analytics.sales_summary"
    out = _nightshift(tmp_path, "query", "--sql", sql, WAREHOUSE_PATH=str(path))
    assert out.returncode == 0, out.stderr
    assert "north" in out.stdout and "12.34" in out.stdout and "1 row" in out.stdout


def test_lease_shows_an_unlocked_warehouse_as_free(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    out = _nightshift(tmp_path, "lease", WAREHOUSE_PATH=str(warehouse))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{warehouse}: free"
    unlock = _nightshift(tmp_path, "lease", "unlock", WAREHOUSE_PATH=str(warehouse))
    assert unlock.returncode == 0, unlock.stderr
    assert unlock.stdout.strip() == f"no lease on {warehouse}: nothing to unlock"


def test_report_removes_the_pages_of_days_the_warehouse_no_longer_has(tmp_path: Path) -> None:
    """After a rollback by hand: the page of a day past the last published one goes, and
    the index is rewritten."""
    path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create schema analytics")
    con.execute("create table analytics.sales_summary as select date '2026-11-27' as date")
    con.close()
    report = tmp_path / "pages"
    report.mkdir()
    for suffix in (".html", ".csv", ".json", "-trend.png"):
        (report / f"2026-11-28{suffix}").write_text("from a version rolled back")
    out = _nightshift(tmp_path, "report", WAREHOUSE_PATH=str(path), REPORT_DIR=str(report))
    assert out.returncode == 0, out.stderr
    assert "0 page(s) rebuilt, 1 removed" in out.stdout
    assert sorted(p.name for p in report.iterdir()) == ["index.html"]
    assert "2026-11-28" not in (report / "index.html").read_text()


def test_nightly_without_connections_falls_back_to_the_demo_only_through_nightshift(
    tmp_path: Path,
) -> None:
    """`nightshift nightly` (demo.run) offers the demo's sources to a run that has no
    connection; `pipeline.airflow_run` itself knows no demo and names what to set."""
    assert cli.COMMANDS["nightly"].module == "demo.run"
    no_connections = {"AIRFLOW_CONN_SOURCE_DB": "", "AIRFLOW_CONN_PAYMENTS_API": ""}
    out = _nightshift(tmp_path, "nightly", "--date", "2026-11-27", **no_connections)
    assert out.returncode != 0
    assert "no demo sources: run `make demo` first" in out.stderr, out.stderr
    plain = subprocess.run(
        [sys.executable, "-m", "pipeline.airflow_run", "nightly", "--date", "2026-11-27"],
        cwd=Path(__file__).resolve().parents[2],
        env=_script_env(tmp_path, **no_connections),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode != 0
    assert "no connection configured" in plain.stderr, plain.stderr
    assert "see .env.example" in plain.stderr and "run `nightshift nightly`" in plain.stderr
    assert "no demo sources" not in plain.stderr


def test_dev_warehouse_copies_the_published_file_for_dbt_by_hand(tmp_path: Path) -> None:
    """A copy (its own inode, not a link), in the data folder by default; the hint names
    the copy for dbt when it is not the project's data/dev.duckdb."""
    missing = _nightshift(tmp_path, "dev-warehouse")
    assert missing.returncode != 0
    assert f"no warehouse at {tmp_path / 'warehouse.duckdb'}: run make demo" in missing.stderr
    published = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(published))
    con.execute("create schema analytics")
    con.execute("create table analytics.sales_summary as select date '2026-11-27' as date")
    con.close()
    out = _nightshift(tmp_path, "dev-warehouse")
    assert out.returncode == 0, out.stderr
    dev = tmp_path / "dev.duckdb"
    assert f"copied {published} to {dev}" in out.stdout
    assert f"cd dbt_project && DBT_DUCKDB_PATH={dev} ../.venv/bin/dbt build" in out.stdout
    assert dev.read_bytes() == published.read_bytes()
    assert dev.stat().st_ino != published.stat().st_ino and published.stat().st_nlink == 1
    same = _nightshift(tmp_path, "dev-warehouse", "--to", str(published))
    assert same.returncode != 0 and "is the published warehouse" in same.stderr
    server = _nightshift(
        tmp_path, "dev-warehouse", AIRFLOW_CONN_WAREHOUSE="postgresql://u@127.0.0.1:1/wh"
    )
    assert server.returncode != 0 and "dbt build --target dev" in server.stderr
