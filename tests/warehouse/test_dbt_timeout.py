"""A dbt process that hangs is stopped at DBT_TIMEOUT_S and the step fails naming it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from warehouse.dbt_runner import DbtCall, DbtError, DbtTimeoutError, run_dbt

# A stand-in for dbt: says something, then hangs (ignoring SIGTERM, like a process stuck
# in a driver call), so only the kill after the grace period ends it.
HANGING_DBT = """#!{python}
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("Running with dbt=fake", flush=True)
print("1 of 3 START sql table model main.stuck", flush=True)
time.sleep(120)
"""


@pytest.fixture
def hanging_dbt(tmp_path: Path) -> Path:
    exe = tmp_path / "dbt"
    exe.write_text(HANGING_DBT.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def _run(exe: Path, tmp_path: Path, **kwargs) -> None:
    run_dbt(
        ["build"],
        DbtCall(
            project_dir=tmp_path,
            target="duckdb",
            vars={},
            warehouse_path=Path(os.devnull),
            dbt=exe,
            target_dir=tmp_path / "target",
            **kwargs,
        ),
    )


@pytest.mark.timeout(60)
def test_a_hanging_dbt_is_stopped_at_its_timeout(
    hanging_dbt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("warehouse.dbt_runner._TERM_GRACE_S", 0.5)
    monkeypatch.setenv("DBT_TIMEOUT_S", "1")  # the setting, read when no timeout is given
    started = time.monotonic()
    with pytest.raises(DbtTimeoutError) as caught:
        _run(hanging_dbt, tmp_path)
    elapsed = time.monotonic() - started
    assert 1 <= elapsed < 10, elapsed
    message = str(caught.value)
    assert "dbt build ran longer than 1 s and was stopped (DBT_TIMEOUT_S=1)" in message
    assert "START sql table model main.stuck" in message  # where it hung
    assert not isinstance(caught.value, DbtError)  # transient, not a failed model or test


@pytest.mark.timeout(60)
def test_a_dbt_within_its_timeout_is_not_stopped(tmp_path: Path) -> None:
    exe = tmp_path / "dbt"
    exe.write_text(f"#!{sys.executable}\nprint('done')\n")
    exe.chmod(0o755)
    _run(exe, tmp_path, timeout_s=30)  # exits 0: no error
