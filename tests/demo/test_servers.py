"""The demo's sources as a run without connections sees them (demo/servers.py): the
SQLite source under the data dir and the payments API, started for the run only."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import httpx
import pytest

from demo.generator import generate
from demo.servers import DEMO_TOKEN, demo_connections, demo_paths

END = date(2026, 11, 20)


def test_a_run_without_connections_reads_the_demo_source_and_api(tmp_path: Path) -> None:
    paths = demo_paths(tmp_path)
    paths["dir"].mkdir(parents=True)
    generate(
        f"sqlite:///{paths['source']}",
        days=2,
        end_date=END,
        orders_per_day=5,
        payments_db=paths["payments"],
        if_exists="replace",
    )
    with sqlite3.connect(paths["source"]) as con:
        orders = con.execute("select count(*) from orders").fetchone()[0]
    with demo_connections(tmp_path) as connections:
        assert connections["AIRFLOW_CONN_SOURCE_DB"] == f"sqlite:///{paths['source']}"
        api = connections["AIRFLOW_CONN_PAYMENTS_API"]
        assert api.startswith(f"http://:{DEMO_TOKEN}@127.0.0.1:")
        base = "http://" + api.split("@", 1)[1]
        answer = httpx.get(
            f"{base}/v1/payments", headers={"Authorization": f"Bearer {DEMO_TOKEN}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"]) > 0
    assert orders == 10
    with pytest.raises(httpx.ConnectError):  # the API lives for the run only
        httpx.get(f"{base}/healthz", timeout=2)


def test_without_demo_sources_the_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no demo sources: run `make demo` first"):
        with demo_connections(tmp_path):
            pass
