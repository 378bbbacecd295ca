"""Which of the guards' errors Airflow retries: timeouts are transient (retried), source
rows from the future are the data (failed at once); through the nightly step itself."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.generator import generate
from extract.db_extract import FutureCursorError
from extract.source_timeouts import SourceTimeoutError
from pipeline.task_run import is_deterministic
from tests.stall_proxy import StallProxy
from warehouse.dbt_runner import DbtTimeoutError

END = date(2026, 11, 20)


def test_timeouts_are_retried_and_rows_from_the_future_are_not() -> None:
    assert not is_deterministic(SourceTimeoutError("users: the source did not answer"))
    assert not is_deterministic(DbtTimeoutError("dbt build ran longer than 1 s"))
    assert is_deterministic(FutureCursorError("source rows from the future"))


@pytest.fixture
def source(pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    generate(pg_database, seed=3, days=2, end_date=END, orders_per_day=10, if_exists="replace")
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.setenv("REPORT_TZ", "UTC")
    monkeypatch.setenv("SOURCE_READ_STALL_TIMEOUT_S", "2")
    return pg_database


@pytest.mark.timeout(60)
def test_a_stalled_source_fails_the_step_as_a_retryable_timeout(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import nightly

    with StallProxy(sa.make_url(source).port or 5432) as proxy:
        proxied = sa.make_url(source).set(host="127.0.0.1", port=proxy.port)
        monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", proxied.render_as_string(False))
        proxy.stall_on(b"COPY (")
        with pytest.raises(SourceTimeoutError, match=r"^\w+: the source did not answer for 2 s"):
            nightly.extract_source_db(date(2026, 11, 19))


@pytest.mark.timeout(60)
def test_a_row_from_the_future_fails_the_step_without_retries(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline import nightly

    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", source)
    engine = sa.create_engine(source)
    with engine.begin() as conn:
        conn.execute(sa.text("update users set updated_at = '2099-01-01' where id = 1"))
    engine.dispose()
    with pytest.raises(AirflowFailException, match=r"users: 1 row\(s\) with updated_at later"):
        nightly.extract_source_db(date(2026, 11, 19))
