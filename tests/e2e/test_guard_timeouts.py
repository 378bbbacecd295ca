"""Guards and timeouts end to end: `nightly_sales` through `airflow dags test` against a
real PostgreSQL source (tests/e2e/test_bad_input.py has the shared harness).

A source row stamped years ahead of the database's clock (an application clock gone
wrong): before the guard, the extract read up to the database's clock and the row was
silently never read until that clock caught up. Now the run stops in
`extract_source_db`, before anything is landed, naming table, count, key and value,
without retries (the answer cannot change), and nothing is published. The payments API
is the demo API on loopback: its extract runs beside the source's and must not be what
fails or retries.
"""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.generator import generate
from demo.run import running_api
from pipeline.airflow_run import run_dag
from tests.e2e.harness import REPORT_TZ, pipeline_env
from tests.servers import fresh_database

END = date(2026, 11, 20)
DAY = END - timedelta(days=1)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_source_row_from_the_future_stops_the_extract_without_retries(
    postgres_admin_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    os.environ["REPORT_TZ"] = REPORT_TZ  # run_dag's logical date is in REPORT_TZ
    try:
        with fresh_database(postgres_admin_url, prefix="nightshift_guards") as url:
            payments = tmp_path / "payments.db"
            generate(
                url,
                seed=3,
                days=2,
                end_date=END,
                orders_per_day=10,
                payments_db=payments,
                if_exists="replace",
            )
            engine = sa.create_engine(url)
            try:
                with engine.begin() as conn:
                    order = conn.execute(sa.text("select min(id) from orders")).scalar_one()
                    conn.execute(
                        sa.text(
                            "update orders set updated_at = '2099-01-01 00:00:00+00' where id = :id"
                        ),
                        {"id": order},
                    )
            finally:
                engine.dispose()
            with running_api(payments, token="guards-tok") as api_uri:
                env = {
                    **pipeline_env(url, tmp_path / "data", tmp_path / "airflow"),
                    "AIRFLOW_CONN_PAYMENTS_API": api_uri,
                }
                capfd.readouterr()
                with pytest.raises(SystemExit, match="failed"):
                    run_dag(DAY, env)
                out, err = capfd.readouterr()
    finally:
        os.environ.pop("REPORT_TZ", None)
    log = out + err
    assert "FutureCursorError" in log or "source rows from the future" in log, log[-3000:]
    assert "orders: 1 row(s) with updated_at later than the source's clock" in log
    assert "(FUTURE_TOLERANCE_MINUTES), the newest 2099-01-01T00:00:00+00:00" in log
    assert f"sample ids, newest first: {order} (2099-01-01T00:00:00+00:00)" in log
    assert "up_for_retry" not in log.lower(), "a data error must not be retried"
    data = tmp_path / "data"
    landed = {
        p.relative_to(data / "landing").parts[0] for p in (data / "landing").rglob("_manifest.json")
    }
    assert "source_db" not in landed, "nothing of the source may be landed"
    assert not (data / "warehouse.duckdb").exists(), "nothing may be published"
