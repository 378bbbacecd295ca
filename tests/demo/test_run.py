"""The demo's sources (demo/run.py): generated whole under temporary names, or not at all."""

from __future__ import annotations

import argparse
import sqlite3
from datetime import date
from pathlib import Path

import pytest

from demo import run
from demo.servers import demo_paths

DAY = date(2024, 3, 10)


def _args() -> argparse.Namespace:
    return argparse.Namespace(seed=7, days=2, orders_per_day=5)


def test_the_source_and_payments_are_generated_once_and_renamed_into_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = demo_paths(tmp_path)
    run._demo_source(paths, _args(), DAY)
    assert sorted(p.name for p in paths["dir"].iterdir()) == ["payments.db", "source.db"]
    with sqlite3.connect(paths["source"]) as con:
        assert con.execute("select count(*) from orders").fetchone()[0] > 0
    assert "generated" in capsys.readouterr().out
    before = paths["source"].stat().st_mtime_ns
    run._demo_source(paths, _args(), DAY)  # a later demo reuses them
    assert paths["source"].stat().st_mtime_ns == before
    assert "reusing" in capsys.readouterr().out


def test_an_interrupted_generation_leaves_no_source_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = demo_paths(tmp_path)
    real = run.generate

    def interrupted(url: str, **kwargs: object) -> dict:
        real(url, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run._demo_source(paths, _args(), DAY)
    assert list(paths["dir"].iterdir()) == []


def test_the_hint_after_a_server_warehouse_demo_queries_that_warehouse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make query` run as printed must reach the PostgreSQL warehouse, not the DuckDB file:
    the hint carries the connection, its password masked."""
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgresql://bob:s3cret@127.0.0.1:5432/wh")
    run._print_next_steps(date(2026, 11, 27))
    out = capsys.readouterr().out
    assert "AIRFLOW_CONN_WAREHOUSE='postgresql://bob:***@127.0.0.1:5432/wh' make query SQL=" in out
    assert "s3cret" not in out
