"""issue 16: the DAG runs `extract_payments_api` beside `extract_source_db` and
`load_source_db`; a step that stages one source's landings from the object store must not
remove the stage another source's extract is writing at the same time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from core import settings
from extract.landing import LandingOptions, LandingTarget, write_landing_table

SCHEMA = pa.schema(
    [pa.field("id", pa.int64()), pa.field("updated_at", pa.timestamp("us", tz="UTC"))]
)
RUN = "2026-11-01"


def _land(source: str, table: str) -> dict:
    rows = pa.table({"id": [1, 2], "updated_at": [datetime(2026, 11, 1, tzinfo=UTC)] * 2}, SCHEMA)
    return write_landing_table(
        rows,
        schema=SCHEMA,
        target=LandingTarget(
            landing_root=settings.landing_dir(), source=source, table_name=table, run_id=RUN
        ),
        options=LandingOptions(cursor_column="updated_at"),
    )


def test_sync_of_one_source_leaves_another_sources_uncommitted_stage(
    s3_landing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _land("source_db", "orders")  # committed in the store
    stage = settings.landing_dir()
    # the payments extract is writing its run here: on the local stage, not committed yet
    writing = stage / "payments_api" / "payments" / f"run={RUN}"
    writing.mkdir(parents=True)
    (writing / "part-00000.parquet").write_bytes(b"being written")

    counts = settings.landing_store().sync_run(stage, RUN, ("source_db",))
    assert counts["removed"] == 0
    assert (writing / "part-00000.parquet").read_bytes() == b"being written"
    assert (stage / "source_db" / "orders" / f"run={RUN}" / "_manifest.json").is_file()

    # load_source_db stages only source_db's landings (pipeline/nightly.py)
    from datetime import date

    from pipeline import nightly

    nightly._landing_synced(date(2026, 11, 1), ("source_db",))
    assert writing.is_dir()

    # without the filter (every source: the steps after both extracts) it is removed
    assert settings.landing_store().sync_run(stage, RUN)["removed"] == 1
    assert not writing.exists()
