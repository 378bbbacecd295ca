"""The warehouse lease (warehouse/lease.py): one run at a time on the warehouse, whatever
the scheduler does; a clear error naming the holder, a bounded wait, a dead run's lease
taken over after its TTL, and a run that lost its lease never publishes. Also the
task wrapper's rule: deterministic errors are not retried (pipeline/task_run.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from core.settings import ConfigError
from pipeline import task_run
from warehouse import lease
from warehouse.lease import LeaseLostError, WarehouseBusyError
from warehouse.publish import begin_build, publish_build
from warehouse.rollback import rollback

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, value: int) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema if not exists analytics")
        con.execute("create or replace table analytics.t as select ? as v", [value])
    finally:
        con.close()


def _value(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("select v from analytics.t").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


def test_a_second_run_fails_naming_the_holder(warehouse: Path) -> None:
    held = lease.acquire(warehouse, "nightly_sales/scheduled__a", "nightly 2026-11-18 (dag run a)")
    record = json.loads((warehouse.parent / "warehouse.duckdb.lease").read_text())
    assert record["holder"] == "nightly_sales/scheduled__a" and record["pid"] == os.getpid()
    started = time.monotonic()
    with pytest.raises(WarehouseBusyError) as caught:
        lease.acquire(warehouse, "nightly_sales/manual__b", "nightly 2026-11-19", wait_s=0)
    assert time.monotonic() - started < 1
    message = str(caught.value)
    assert "nightly 2026-11-18 (dag run a) holds the warehouse since " + held.acquired_at in message
    assert f"on host {held.host}" in message and "expires " in message
    assert "make unlock" in message and "WAREHOUSE_LEASE_WAIT_S" in message
    assert lease.current(warehouse).holder == "nightly_sales/scheduled__a"  # untouched


def test_the_same_dag_run_takes_its_own_lease_again(warehouse: Path) -> None:
    """A retry or a clear of the same dag run re-acquires; another holder cannot."""
    first = lease.acquire(warehouse, "nightly_sales/run1", "try 1", ttl_s=60)
    again = lease.acquire(warehouse, "nightly_sales/run1", "try 2", ttl_s=60, wait_s=0)
    assert again.acquired_at == first.acquired_at and again.token == first.token
    assert again.run == "try 2"
    assert not lease.release(warehouse, "nightly_sales/run2")  # not its lease: kept
    assert lease.release(warehouse, "nightly_sales/run1")
    assert lease.current(warehouse) is None


def test_bounded_wait_then_the_lease_is_taken(warehouse: Path) -> None:
    lease.acquire(warehouse, "a", "run a")
    threading.Timer(0.6, lease.release, (warehouse, "a")).start()
    started = time.monotonic()
    taken = lease.acquire(warehouse, "b", "run b", wait_s=10, poll_s=0.05)
    assert 0.5 < time.monotonic() - started < 5 and taken.holder == "b"
    started = time.monotonic()
    with pytest.raises(WarehouseBusyError, match="run b holds the warehouse"):
        lease.acquire(warehouse, "c", "run c", wait_s=0.4, poll_s=0.05)
    assert 0.35 < time.monotonic() - started < 3


_HOLD = """
import sys, time
from warehouse import lease
with lease.held(sys.argv[1], "killed-run", "nightly 2026-11-18 (killed)", ttl_s=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_killed_runs_lease_is_taken_over_after_its_ttl(warehouse: Path) -> None:
    """The killed process renewed its lease while alive (heartbeat): before the TTL the
    next run is refused, after it the lease is taken over."""
    ttl = 2.0
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(warehouse), str(ttl)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        time.sleep(ttl * 1.2)  # alive: its heartbeat keeps the lease in force past one TTL
        with pytest.raises(WarehouseBusyError, match=r"killed\) holds the warehouse"):
            lease.acquire(warehouse, "next", "nightly 2026-11-19", wait_s=0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.monotonic()
    with pytest.raises(WarehouseBusyError):  # not expired yet
        lease.acquire(warehouse, "next", "nightly 2026-11-19", wait_s=0)
    taken = lease.acquire(warehouse, "next", "nightly 2026-11-19", wait_s=ttl * 3, poll_s=0.1)
    assert taken.holder == "next" and time.monotonic() - killed_at < ttl * 3


def test_a_run_that_lost_its_lease_never_publishes(warehouse: Path) -> None:
    """`make unlock` (or a takeover after the TTL) while a run builds: its publish fails
    and the published warehouse is the other run's."""
    _write(warehouse, 1)
    with pytest.raises(LeaseLostError, match="lost its lease"):
        with lease.held(warehouse, "slow-run", "nightly 2026-11-18", ttl_s=60):
            build = begin_build(warehouse, "2026-11-18")
            _write(build, 2)
            assert lease.backend_for(warehouse).force_release().holder == "slow-run"
            with lease.held(warehouse, "other-run", "nightly 2026-11-19", wait_s=0):
                other = begin_build(warehouse, "2026-11-19")
                _write(other, 3)
                publish_build(other, warehouse)
            publish_build(build, warehouse)
    assert _value(warehouse) == 3


def test_rollback_waits_for_or_names_the_running_night(warehouse: Path, monkeypatch) -> None:
    monkeypatch.setenv("WAREHOUSE_LEASE_WAIT_S", "0")
    _write(warehouse, 1)
    lease.acquire(warehouse, "nightly_sales/scheduled__x", "nightly 2026-11-18 (dag run x)")
    with pytest.raises(WarehouseBusyError, match=r"nightly 2026-11-18 \(dag run x\) holds"):
        rollback(warehouse)
    assert _value(warehouse) == 1


def test_unlock_removes_the_lease_and_says_whose(warehouse: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WAREHOUSE_PATH", str(warehouse))
    lease.acquire(warehouse, "dead-run", "nightly 2026-11-18")
    assert lease.main([]) == 0
    assert "nightly 2026-11-18 holds the warehouse" in capsys.readouterr().out
    assert lease.main(["unlock"]) == 0
    assert "removed the lease (NOT expired): nightly 2026-11-18" in capsys.readouterr().out
    assert lease.current(warehouse) is None
    assert lease.main(["unlock"]) == 0
    assert "nothing to unlock" in capsys.readouterr().out


def test_deterministic_errors_are_told_from_transient_ones() -> None:
    """Every named class exists (a rename would silently bring retries back) and counts,
    subclasses included; connection errors, timeouts and a busy warehouse do not."""
    import importlib

    for name in sorted(task_run.DETERMINISTIC):
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname)
        assert issubclass(cls, Exception), name
        assert task_run.is_deterministic(cls.__new__(cls)), name
        sub = type("Sub", (cls,), {})
        assert task_run.is_deterministic(sub.__new__(sub)), name
    assert task_run.is_deterministic(ConfigError("x"))
    for exc in (ConnectionError("x"), TimeoutError("x"), WarehouseBusyError("x", None)):
        assert not task_run.is_deterministic(exc), exc


def test_a_foreign_lease_file_is_an_error_and_unlock_removes_it(
    warehouse: Path, monkeypatch
) -> None:
    lease_file = warehouse.with_name("warehouse.duckdb.lease")
    lease_file.write_text('{"holder": "someone"}')
    with pytest.raises(RuntimeError, match=r"is not a readable lease .*make unlock"):
        lease.acquire(warehouse, "a", "run a", wait_s=0)
    monkeypatch.setenv("WAREHOUSE_PATH", str(warehouse))
    assert lease.main(["unlock"]) == 0
    assert lease.acquire(warehouse, "a", "run a", wait_s=0).holder == "a"


def test_lease_settings(monkeypatch) -> None:
    from core import settings

    monkeypatch.delenv("WAREHOUSE_LEASE_TTL_MINUTES", raising=False)
    monkeypatch.delenv("WAREHOUSE_LEASE_WAIT_S", raising=False)
    assert settings.warehouse_lease_ttl_seconds() == 1800
    assert settings.warehouse_lease_wait_seconds() == 60
    monkeypatch.setenv("WAREHOUSE_LEASE_TTL_MINUTES", "0.5")
    monkeypatch.setenv("WAREHOUSE_LEASE_WAIT_S", "0")
    assert settings.warehouse_lease_ttl_seconds() == 30
    assert settings.warehouse_lease_wait_seconds() == 0
    for name, value in (
        ("WAREHOUSE_LEASE_TTL_MINUTES", "0"),
        ("WAREHOUSE_LEASE_TTL_MINUTES", "soon"),
        ("WAREHOUSE_LEASE_WAIT_S", "-1"),
        ("WAREHOUSE_LEASE_WAIT_S", "nan"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            settings.warehouse_lease_ttl_seconds()
            settings.warehouse_lease_wait_seconds()
        monkeypatch.delenv(name)
