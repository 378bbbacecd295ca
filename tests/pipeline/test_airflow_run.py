"""`make backfill`'s wrapper around `airflow backfill create` (pipeline/airflow_run.py)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.airflow_run import _create_backfill

# Stands in for the `airflow` CLI (the real one needs a scheduler: tests/ui covers that):
# fails like Airflow does while another backfill of the DAG is running, `busy` times.
FAKE = """
import pathlib, sys
count = pathlib.Path(sys.argv[1])
busy = int(sys.argv[2])
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
if n < busy:
    sys.stderr.write("airflow.models.backfill.AlreadyRunningBackfill: Another backfill is "
                     "running for Dag nightly_sales.\\n")
    sys.exit(1)
print("created backfill")
"""


def _cmd(tmp_path: Path, busy: int) -> list[str]:
    script = tmp_path / "fake_airflow.py"
    script.write_text(FAKE)
    return [sys.executable, str(script), str(tmp_path / "calls"), str(busy)]


def test_waits_while_the_previous_backfill_is_still_marked_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _create_backfill(_cmd(tmp_path, busy=2), {"PATH": "/usr/bin:/bin"}, poll_s=0.01)
    assert (tmp_path / "calls").read_text() == "3"
    out = capsys.readouterr().out
    assert "still running: waiting" in out and "created backfill" in out


def test_gives_up_after_the_wait_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        _create_backfill(_cmd(tmp_path, busy=10**6), {}, wait_s=0.05, poll_s=0.01)
    assert "let it finish or cancel it in the UI" in capsys.readouterr().out


def test_other_errors_fail_at_once(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("import sys; sys.stderr.write('DAG not found'); sys.exit(2)")
    with pytest.raises(subprocess.CalledProcessError) as excinfo:
        _create_backfill([sys.executable, str(script)], {}, poll_s=0.01)
    assert excinfo.value.returncode == 2 and "DAG not found" in excinfo.value.stderr


def test_a_pythonpath_given_for_the_run_is_added_after_the_project_root() -> None:
    """The DAG's tasks import the project: a caller's PYTHONPATH (a hook, a plugin folder)
    goes after the project root instead of replacing it."""
    import os

    from core import settings
    from pipeline.airflow_run import airflow_env

    env = airflow_env({"PYTHONPATH": os.pathsep.join(["/opt/hooks", "/opt/more"])})
    assert env["PYTHONPATH"].split(os.pathsep) == [
        str(settings.PROJECT_ROOT),
        "/opt/hooks",
        "/opt/more",
    ]


def test_a_run_without_connections_uses_the_fallback_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipeline` knows no demo: the caller passes what a run without connections uses."""
    from pipeline.airflow_run import configured_connections

    for name in ("AIRFLOW_CONN_SOURCE_DB", "AIRFLOW_CONN_PAYMENTS_API"):
        monkeypatch.delenv(name, raising=False)
    seen: list[Path] = []

    @contextlib.contextmanager
    def fallback(data_dir: Path) -> Iterator[dict[str, str]]:
        seen.append(data_dir)
        yield {"AIRFLOW_CONN_SOURCE_DB": "sqlite:///from-the-fallback.db"}

    with configured_connections(tmp_path, fallback) as extra:
        assert extra == {"AIRFLOW_CONN_SOURCE_DB": "sqlite:///from-the-fallback.db"}
    assert seen == [tmp_path]
    with pytest.raises(SystemExit, match=r"no connection configured .*see \.env\.example"):
        with configured_connections(tmp_path, None):
            pass


@pytest.mark.parametrize("name", ["AIRFLOW_CONN_SOURCE_DB", "AIRFLOW_CONN_PAYMENTS_API"])
def test_a_configured_connection_is_never_replaced_by_the_fallback(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.airflow_run import configured_connections

    for other in ("AIRFLOW_CONN_SOURCE_DB", "AIRFLOW_CONN_PAYMENTS_API"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "postgresql://someone@db.example/sales")

    def fallback(data_dir: Path) -> contextlib.AbstractContextManager[dict[str, str]]:
        raise AssertionError("the fallback was used although a connection is configured")

    with configured_connections(tmp_path, fallback) as extra:
        assert extra == {}


def test_a_run_names_the_warehouse_it_published_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`make nightly`'s last line: the DuckDB file, or the server (never a file that a
    run on a server did not write), its password masked."""
    from pipeline.airflow_run import published_warehouse

    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
    monkeypatch.delenv("DBT_TARGET", raising=False)
    monkeypatch.setenv("WAREHOUSE_PATH", str(tmp_path / "w.duckdb"))
    assert published_warehouse() == str(tmp_path / "w.duckdb")
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgresql://bob:s3cret@127.0.0.1:5432/wh")
    shown = published_warehouse()
    assert "127.0.0.1:5432/wh" in shown and "s3cret" not in shown and "duckdb" not in shown
