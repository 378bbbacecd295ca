"""Schema changes at the source, end to end: `nightly_sales` through `airflow dags test`
against a real PostgreSQL source and the demo API on loopback.

One sequence on one source (each step is the next one's state):
1. the day is extracted once as the source was (the landing every later night compares
   its schema with);
2. the source gains a column whose name is not an identifier (`order-ref`) and widens
   `orders.total` from numeric(12,2) to numeric(14,2): the run publishes, the widening
   is logged, the extra column is carried into `raw.orders` under its own name;
3. `orders.total` becomes numeric(14,3), which is not lossless: `extract_source_db`
   stops naming the table, the column, both types and the switch; nothing changes;
4. the operator sets `ACCEPT_SCHEMA_DRIFT=orders.total`: the run publishes what the
   oracle computes and the decision is in `ops.guard_overrides`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import duckdb
import pytest

from pipeline.airflow_run import run_dag
from tests.e2e.harness import (
    END,
    Running,
    assert_matches_oracle,
    file_digests,
    running_source,
    snapshot,
)

DAY = END - timedelta(days=1)
RUN_ID = DAY.isoformat()
E2E_TIMEOUT = 1200


@dataclass
class Source(Running):
    def query(self, statement: str, params: list | None = None) -> list[tuple]:
        """Rows of a query on the DuckDB warehouse."""
        con = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            return con.execute(statement, params or []).fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def source(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    tmp = tmp_path_factory.mktemp("schema_changes")
    with running_source(
        postgres_admin_url, tmp, prefix="nightshift_schema", seed=5, days=3, orders_per_day=25
    ) as running:
        yield Source(**vars(running))


def _extract_in_process(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step the DAG's first task runs, in this process: the landing to compare with."""
    from pipeline import nightly

    for name, value in source.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    nightly.extract_source_db(DAY)


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_widening_and_odd_column_publish_retype_stops_until_accepted(
    source: Source, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        _extract_in_process(source, patch)
    manifest = source.data_dir / "landing" / "source_db" / "orders" / f"run={RUN_ID}"
    baseline = json.loads((manifest / "_manifest.json").read_text())
    assert {"name": "total", "type": "decimal128(12, 2)"} in baseline["columns"]

    # (2) an extra column named like no identifier, and a lossless widening
    source.sql('alter table orders add column "order-ref" text')
    source.sql("alter table orders alter column total type numeric(14, 2)")
    source.sql(
        "update orders set \"order-ref\" = 'REF-' || id, updated_at = now() "
        "where id in (select id from orders order by id limit 5)"
    )
    capfd.readouterr()
    run_dag(DAY, source.env)
    out, err = capfd.readouterr()
    log = out + err
    assert (
        "source_db/orders: lossless widening since run=" + RUN_ID + " accepted: column 'total' "
        "from decimal128(12, 2) to decimal128(14, 2)"
    ) in log, log[-3000:]
    assert_matches_oracle(source.engine, source.warehouse, source.api_base, DAY)
    refs = source.query("select count(*) from raw.orders where \"order-ref\" like 'REF-%'")
    assert refs == [(5,)]
    total_type = source.query(
        "select column_type from (describe raw.orders) where column_name = 'total'"
    )
    assert total_type == [("DECIMAL(14,2)",)]
    before = snapshot(source.warehouse), file_digests(source.data_dir / "report")

    # (3) a change that loses digits stops the extract, naming it and the switch
    source.sql("alter table orders alter column total type numeric(14, 3)")
    capfd.readouterr()
    with pytest.raises(SystemExit, match="failed"):
        run_dag(DAY, source.env)
    out, err = capfd.readouterr()
    log = out + err
    assert (
        f"schema drift in source_db/orders since run={RUN_ID}: column 'total' changed type "
        "from decimal128(14, 2) to decimal128(14, 3)"
    ) in log, log[-3000:]
    assert "ACCEPT_SCHEMA_DRIFT=orders.total" in log and "accept_schema_drift" in log
    assert (snapshot(source.warehouse), file_digests(source.data_dir / "report")) == before
    landed = json.loads((manifest / "_manifest.json").read_text())
    assert {"name": "total", "type": "decimal128(14, 2)"} in landed["columns"]  # not replaced

    # (4) the operator accepts it for this run: published and recorded
    run_dag(DAY, {**source.env, "ACCEPT_SCHEMA_DRIFT": "orders.total"})
    assert_matches_oracle(source.engine, source.warehouse, source.api_base, DAY)
    overrides = source.query(
        "select guard, table_name, details from ops.guard_overrides where run_id = ?", [RUN_ID]
    )
    assert [(g, t) for g, t, _ in overrides] == [("schema_drift", "orders")]
    assert json.loads(overrides[0][2])["retyped"] == [
        {"name": "total", "old_type": "decimal128(14, 2)", "new_type": "decimal128(14, 3)"}
    ]
