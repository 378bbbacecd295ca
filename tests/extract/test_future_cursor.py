"""Source rows stamped after the database's clock (an application clock far ahead):
the extract stops before landing anything, naming table, count, keys and the newest
value; within FUTURE_TOLERANCE_MINUTES they are only logged."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from extract.db_extract import ExtractPlan, FutureCursorError, extract_tables
from extract.tables import TableConfig

EVENTS = [TableConfig("events")]


def _make_events(url: str, column_type: str) -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"create table events (id bigint primary key, updated_at {column_type})")
        )
        conn.execute(
            sa.text(
                "insert into events select g, now() - interval '1 day' "
                "from generate_series(1, 20) g"
            )
        )
    return engine


def _landed(landing: Path) -> list[Path]:
    return sorted(landing.rglob("*.parquet"))


@pytest.mark.parametrize("column_type", ["timestamptz", "timestamp"])
def test_rows_from_the_future_stop_the_extract(
    pg_database: str, tmp_path: Path, column_type: str
) -> None:
    engine = _make_events(pg_database, column_type)
    with engine.begin() as conn:
        if column_type == "timestamp":  # naive columns hold UTC (contract)
            stamp = "(now() at time zone 'UTC') + interval '{}'"
        else:
            stamp = "now() + interval '{}'"
        conn.execute(
            sa.text(f"update events set updated_at = {stamp.format('3 days')} where id in (7, 3)")
        )
        conn.execute(
            sa.text("update events set updated_at = '2099-01-01 00:00:00+00' where id = 11")
        )
        conn.execute(
            sa.text(f"update events set updated_at = {stamp.format('10 minutes')} where id = 5")
        )
    landing = tmp_path / "landing"
    with pytest.raises(FutureCursorError) as caught:
        extract_tables(
            pg_database,
            ExtractPlan(run_id="r1", landing_root=landing, warehouse_path=None, configs=EVENTS),
        )
    message = str(caught.value)
    # 3 rows beyond the tolerance (id 5 is within it), newest first, the newest value
    assert message.startswith("source rows from the future: events: 3 row(s) with updated_at")
    assert "+ 1:00:00 (FUTURE_TOLERANCE_MINUTES), the newest 2099-01-01T00:00:00+00:00" in message
    assert "sample ids, newest first: 11 (2099-01-01T00:00:00+00:00), 3 (" in message
    assert ", 7 (" in message and " 5 (" not in message
    assert "Nothing was landed and the watermarks did not move" in message
    assert _landed(landing) == []
    engine.dispose()


def test_within_the_tolerance_rows_are_logged_and_left_to_a_later_run(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _make_events(pg_database, "timestamptz")
    with engine.begin() as conn:
        conn.execute(
            sa.text("update events set updated_at = now() + interval '20 minutes' where id = 4")
        )
    with caplog.at_level(logging.WARNING, logger="extract.db_extract"):
        manifests = extract_tables(
            pg_database,
            ExtractPlan(
                run_id="r1", landing_root=tmp_path / "landing", warehouse_path=None, configs=EVENTS
            ),
        )
    assert manifests["events"]["rows"] == 19  # id 4 is after U: a later run reads it
    assert "events: 1 row(s) with updated_at after the source's clock" in caplog.text
    assert "within FUTURE_TOLERANCE_MINUTES" in caplog.text
    # with no tolerance, the same row stops the run
    with pytest.raises(
        FutureCursorError, match=r"events: 1 row\(s\).*sample ids, newest first: 4 "
    ):
        extract_tables(
            pg_database,
            ExtractPlan(
                run_id="r2",
                landing_root=tmp_path / "landing",
                warehouse_path=None,
                configs=EVENTS,
                future_tolerance=timedelta(0),
            ),
        )
    engine.dispose()


def test_the_tolerance_setting_is_read(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _make_events(pg_database, "timestamptz")
    with engine.begin() as conn:
        conn.execute(
            sa.text("update events set updated_at = now() + interval '3 hours' where id = 2")
        )
    kwargs = dict(landing_root=tmp_path / "landing", warehouse_path=None, configs=EVENTS)
    monkeypatch.setenv("FUTURE_TOLERANCE_MINUTES", "240")
    assert extract_tables(pg_database, ExtractPlan(run_id="r1", **kwargs))["events"]["rows"] == 19
    monkeypatch.setenv("FUTURE_TOLERANCE_MINUTES", "120")
    with pytest.raises(FutureCursorError, match=r"\+ 2:00:00 \(FUTURE_TOLERANCE_MINUTES\)"):
        extract_tables(pg_database, ExtractPlan(run_id="r2", **kwargs))
    engine.dispose()


def test_sqlite_text_timestamps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("create table events (id integer primary key, updated_at datetime)"))
        conn.execute(
            sa.text(
                "insert into events values (1, '2020-01-01 00:00:00'), "
                "(2, '2099-06-01T12:00:00+00:00'), (3, '2099-06-01 11:00:00')"
            )
        )
    with pytest.raises(FutureCursorError) as caught:
        extract_tables(
            url,
            ExtractPlan(
                run_id="r1", landing_root=tmp_path / "l", warehouse_path=None, configs=EVENTS
            ),
        )
    assert "events: 2 row(s)" in str(caught.value)
    assert "newest first: 2 (2099-06-01T12:00:00+00:00), 3 (2099-06-01T11:00:00+00:00)" in str(
        caught.value
    )
    engine.dispose()
