"""Bad input, end to end: `nightly_sales` through `airflow dags test` against a real
PostgreSQL source and the demo API on loopback, after one good day was published.

Each case breaks the source the way real systems break, runs the day, and checks that
the run fails (or, for a `warning` expectation, warns and goes on) with a message naming
the rule, the table and example keys; that `analytics` and the report pages are exactly
as they were; that the quarantine / `ops.quality_results` of the published warehouse say
why; then fixes the source, reruns the same day and compares with the SQL oracle.

The cases share one source, API and warehouse (module fixture): each ends by fixing the
source and publishing again, which is the next case's good state.

Why these injections can really happen (the contract promises keys, but the pipeline
cannot rely on promises):
- duplicate / NULL primary keys: a source table whose PRIMARY KEY constraint is missing
  (a legacy table, a copy made by a migration or an ETL tool, a replica built without
  constraints); the extract reads what is there and lands it;
- NULL foreign keys (`orders.user_id`, `order_items.order_id`): a source without the
  NOT NULL constraint; `warning` severity, because the contract's rules place such an
  order in region `unknown` and an orphan item belongs to no order;
- `XXX` currency, a status outside the set: an application writing a value the
  pipeline does not know;
- a missing FX day: the provider has not published a day's rates yet (answers with the
  base `USD` only);
- malformed payments over the quarantine threshold: the API serving broken records
  (here, its store holds amounts that are not numbers).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from demo.api import FaultConfig, create_app, serve_in_thread
from pipeline.airflow_run import run_dag
from tests.e2e.harness import (
    END,
    REPORT_TZ,
    TOKEN,
    Running,
    assert_matches_oracle,
    file_digests,
    running_source,
    snapshot,
)

DAY = END - timedelta(days=2)  # the good day; later days exist and are not judged
RUN_ID = DAY.isoformat()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_TOKEN = "bad-input-fault-token"  # the fault-injection endpoint's own
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOT_NULL = "expect_column_values_to_not_be_null"
E2E_TIMEOUT = 2400  # a test's limit includes the shared good day when it runs first


@dataclass
class World(Running):
    """One source, API and warehouse shared by the cases."""

    def published_state(self) -> tuple[dict[str, list], dict[str, str]]:
        """The `analytics` rows and the sha256 of every report file."""
        return snapshot(self.warehouse), file_digests(self.data_dir / "report")

    def counted_orders(self, day: date, n: int) -> list[int]:
        """`n` ids of orders with items that count on business day `day` (not cancelled)."""
        rows = self.sql(
            "select id from orders where (created_at at time zone :tz)::date = :day "
            "and status <> 'cancelled' "
            "and exists (select 1 from order_items i where i.order_id = orders.id) "
            "order by id limit :n",
            {"tz": REPORT_TZ, "day": day, "n": n},
        )
        assert len(rows) == n, f"the demo source has fewer than {n} counted orders on {day}"
        return [r[0] for r in rows]

    def fail(self, day: date, capfd: pytest.CaptureFixture[str]) -> str:
        """Run `day`, expect the run to fail; return what Airflow printed."""
        capfd.readouterr()
        with pytest.raises(SystemExit, match="failed"):
            run_dag(day, self.env)
        out, err = capfd.readouterr()
        return out + err

    def publish(self, day: date) -> None:
        """Run `day`, expect it to publish what the oracle computes."""
        run_dag(day, self.env)
        assert_matches_oracle(self.engine, self.warehouse, self.api_base, day)

    def quality(self, suite: str, run_id: str = RUN_ID) -> dict[tuple[str, str | None], Any]:
        """ops.quality_results of the published warehouse: (expectation, column) -> row."""
        con = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            rows = con.execute(
                "select expectation, column_name, severity, success, observed_value, details "
                "from ops.quality_results where run_id = ? and suite = ?",
                [run_id, suite],
            ).fetchall()
        finally:
            con.close()
        return {(r[0], r[1]): r[2:] for r in rows}


@contextmanager
def published_world(
    postgres_admin_url: str, tmp: Path, **source: Any
) -> Iterator[tuple[World, str]]:
    """`running_source(postgres_admin_url, tmp, **source)` with night DAY published and
    checked against the oracle: (the world, the source's URL)."""
    with running_source(postgres_admin_url, tmp, **source) as running:
        world = World(**vars(running))
        world.publish(DAY)
        yield world, running.url


@pytest.fixture(scope="module")
def world(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bad_input")
    with published_world(
        postgres_admin_url,
        tmp,
        prefix="nightshift_bad_input",
        seed=11,
        days=6,
        orders_per_day=60,
        admin_token=ADMIN_TOKEN,
    ) as (good, _):
        yield good


def _unchanged(world: World, before: tuple[dict, dict]) -> None:
    analytics, report = world.published_state()
    assert analytics == before[0], "analytics changed although the run failed"
    assert report == before[1], "the published report changed although the run failed"
    # the failed run's build is kept for inspection; the failed gate's copy is not
    assert not list(world.data_dir.glob("warehouse.duckdb.*failed-gate*"))


def _failed(quality: dict, expectation: str, column: str | None) -> dict[str, Any]:
    """The stored failure of `expectation(column)`: its details (samples, table)."""
    severity, success, _observed, details = quality[(expectation, column)]
    assert success is False, (expectation, column, quality[(expectation, column)])
    return {"severity": severity, **json.loads(details)}


def _now_iso() -> str:
    """The payments store's timestamp form (string order == time order)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_duplicate_and_null_keys_and_unknown_status_stop_the_landed_gate(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    """(a) a duplicated order id, (b) NULL keys (an item's id, an order's user_id, an
    item's order_id), (f) a status outside the accepted set: all `critical`, so
    load_source_db's GX gate fails naming each. An item of quantity 0 breaks a `warning`
    expectation: reported, and after the fix the day publishes with it."""
    before = world.published_state()
    dup, bad_status, no_user, orphan_of, zero_of = world.counted_orders(DAY, 5)
    ((orphan,),) = world.sql(
        "select min(id) from order_items where order_id = :o", {"o": orphan_of}
    )
    ((zero,),) = world.sql("select min(id) from order_items where order_id = :o", {"o": zero_of})
    ((user,),) = world.sql("select user_id from orders where id = :id", {"id": no_user})
    # Constraints a real source may lack (see the module docstring).
    world.sql("alter table orders drop constraint orders_pkey")
    world.sql("alter table orders alter column user_id drop not null")
    world.sql("alter table order_items drop constraint order_items_pkey")
    world.sql("alter table order_items alter column id drop not null")
    world.sql("alter table order_items alter column order_id drop not null")
    world.sql(
        "insert into orders select id, user_id, status, currency, total + 1, created_at, now() "
        "from orders where id = :id",
        {"id": dup},
    )
    world.sql("update orders set status = 'on_hold' where id = :id", {"id": bad_status})
    world.sql("update orders set user_id = null where id = :id", {"id": no_user})
    world.sql("update order_items set order_id = null where id = :id", {"id": orphan})
    world.sql("update order_items set quantity = 0 where id = :id", {"id": zero})
    world.sql(
        "insert into order_items (id, order_id, product_id, quantity, unit_price, updated_at) "
        "select null, order_id, product_id, 1, 5.00, now() from order_items where id = :id",
        {"id": zero},
    )
    touched = {"ids": [dup, bad_status, no_user]}
    world.sql("update orders set updated_at = now() where id = any(:ids)", touched)
    items = {"ids": [orphan, zero]}
    world.sql("update order_items set updated_at = now() where id = any(:ids)", items)
    try:
        log = world.fail(DAY, capfd)
        assert "quality gate failed: 5 critical expectation(s) failed" in log
        assert "suite source_db.orders, table source_db.orders" in log
        assert "expect_column_values_to_be_unique(id) FAILED" in log
        assert '"duplicates": 2, "files": ["' in log and f'"id": {dup}' in log
        assert "expect_column_values_to_be_in_set(status) FAILED: 1 of" in log
        assert f'"id": {bad_status}, "row": ' in log and '"status": "on_hold"' in log
        assert "expect_column_values_to_not_be_null(user_id) FAILED: 1 of" in log
        assert f'"id": {no_user}, "row": ' in log and '"user_id": null' in log
        assert "suite source_db.order_items, table source_db.order_items" in log
        assert "expect_column_values_to_not_be_null(id) FAILED: 1 of" in log
        assert '"id": null, "row": ' in log
        assert f'"id": {orphan}, "order_id": null' in log
        assert "quality warning: [warning] suite source_db.order_items" in log
        assert f"ops.quality_results where run_id = '{RUN_ID}'" in log
        _unchanged(world, before)

        orders = world.quality("source_db.orders")
        unique = _failed(orders, "expect_column_values_to_be_unique", "id")
        assert unique["severity"] == "critical" and unique["table"] == "source_db.orders"
        assert unique["samples"][0]["id"] == dup and unique["samples"][0]["duplicates"] == 2
        status = _failed(orders, "expect_column_values_to_be_in_set", "status")
        assert [s["id"] for s in status["samples"]] == [bad_status]
        assert [s["id"] for s in _failed(orders, NOT_NULL, "user_id")["samples"]] == [no_user]
        order_items = world.quality("source_db.order_items")
        null_id = _failed(order_items, NOT_NULL, "id")
        assert null_id["unexpected_count"] == 1
        assert null_id["samples"][0]["file"].endswith(".parquet")
        assert [s["id"] for s in _failed(order_items, NOT_NULL, "order_id")["samples"]] == [orphan]
        quantity = _failed(order_items, "expect_column_values_to_be_between", "quantity")
        assert quantity["severity"] == "warning"
        summary = world.data_dir / "docs" / "quality" / "source_db" / "quality_summary.html"
        assert "on_hold" in summary.read_text()
    finally:  # the fix: the copy and the keyless item go, keys and a known status come back
        world.sql(
            "delete from orders o using orders p where o.id = :id and p.id = o.id "
            "and o.ctid > p.ctid",
            {"id": dup},
        )
        world.sql("delete from order_items where id is null")
        world.sql("update orders set status = 'paid' where id = :id", {"id": bad_status})
        world.sql("update orders set user_id = :u where id = :id", {"u": user, "id": no_user})
        world.sql(
            "update order_items set order_id = :o where id = :id", {"o": orphan_of, "id": orphan}
        )
        world.sql("alter table orders add primary key (id)")
        world.sql("alter table order_items add primary key (id)")
        world.sql("alter table orders alter column user_id set not null")
        world.sql("alter table order_items alter column order_id set not null")
        world.sql("update orders set updated_at = now() where id = any(:ids)", touched)
        world.sql("update order_items set updated_at = now() where id = any(:ids)", items)
    log = _publish_logged(world, DAY, capfd)
    orders = world.quality("source_db.orders")
    assert all(row[1] for row in orders.values()), "a source_db.orders check failed after the fix"
    order_items = world.quality("source_db.order_items")
    assert order_items[(NOT_NULL, "id")][1] is True
    assert order_items[(NOT_NULL, "order_id")][1] is True
    # quantity 0 is a warning: published, and reported with the item
    quantity = _failed(order_items, "expect_column_values_to_be_between", "quantity")
    assert [s["id"] for s in quantity["samples"]] == [zero]
    assert "quality warning: [warning] suite source_db.order_items" in log
    assert f'"id": {zero}, "quantity": 0' in log


def _publish_logged(world: World, day: date, capfd: pytest.CaptureFixture[str]) -> str:
    capfd.readouterr()
    world.publish(day)
    out, err = capfd.readouterr()
    return out + err


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_unknown_currency_stops_the_fx_completeness_gate(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    """(c) a counted order in `XXX`, a currency the FX API has no rate for: dbt's FX
    completeness test fails naming currency and day; never converted at 0 or 1."""
    before = world.published_state()
    (order,) = world.counted_orders(DAY, 1)
    ((currency,),) = world.sql("select currency from orders where id = :id", {"id": order})
    world.sql(
        "update orders set currency = 'XXX', updated_at = now() where id = :id", {"id": order}
    )
    try:
        log = world.fail(DAY, capfd)
        message = f"currency=XXX business_date={DAY.isoformat()} order_count=1"
        assert "assert_fx_rate_exists_for_every_counted_order" in log and message in log
        assert f"ops.quality_results where run_id = '{RUN_ID}'" in log
        _unchanged(world, before)
        fx = _failed(world.quality("dbt"), "assert_fx_rate_exists_for_every_counted_order", None)
        assert fx["severity"] == "critical" and fx["table"] == "fct_orders"
        observed = world.quality("dbt")[("assert_fx_rate_exists_for_every_counted_order", None)][2]
        assert message in observed
    finally:
        world.sql(
            "update orders set currency = :c, updated_at = now() where id = :id",
            {"c": currency, "id": order},
        )
    world.publish(DAY)
    dbt = world.quality("dbt")
    assert dbt[("assert_fx_rate_exists_for_every_counted_order", None)][1] is True
    assert all(row[1] for row in dbt.values()), "a dbt test failed after the fix"


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_malformed_payments_over_the_threshold_are_quarantined_and_fail(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    """(e) 101 payments whose amount is not a number (threshold: 100): every one is in the
    quarantine with its field and reason, the run fails without retrying, nothing lost."""
    before = world.published_state()
    quarantine = world.data_dir / "quarantine" / "payments_api" / "payments" / f"run={RUN_ID}"
    earlier = set(quarantine.glob("attempt=*.jsonl"))  # each attempt writes its own file
    store = sqlite3.connect(world.payments_db)
    try:
        broken = store.execute("select id, amount from payments order by id limit 101").fetchall()
        store.executemany(
            "update payments set amount = 'n/a', updated_at = ? where id = ?",
            [(_now_iso(), pid) for pid, _ in broken],
        )
        store.commit()
        try:
            log = world.fail(DAY, capfd)
            assert "payments: 101 of " in log and "more than max_quarantined=100" in log
            assert f"id='{broken[0][0]}' amount: 'n/a' is not a number" in log
            [attempt] = set(quarantine.glob("attempt=*.jsonl")) - earlier
            assert f"see {attempt}" in log
            assert "up_for_retry" not in log.lower(), "a data error must not be retried"
            _unchanged(world, before)
            lines = [json.loads(line) for line in attempt.read_text().splitlines()]
            assert sorted(q["record_key"] for q in lines) == sorted(pid for pid, _ in broken)
            assert {(q["field"], q["error"]) for q in lines} == {
                ("amount", "'n/a' is not a number")
            }
            assert all(q["record"]["amount"] == "n/a" for q in lines)
        finally:  # the API's store is fixed: the amounts are numbers again
            store.executemany(
                "update payments set amount = ?, updated_at = ? where id = ?",
                [(amount, _now_iso(), pid) for pid, amount in broken],
            )
            store.commit()
    finally:
        store.close()
    world.publish(DAY)
    # the clean rerun quarantined nothing and kept the failed attempt's file
    assert set(quarantine.glob("attempt=*.jsonl")) == earlier | {attempt}
    con = duckdb.connect(str(world.warehouse), read_only=True)
    try:
        landed = dict(
            con.execute(
                "select id, cast(amount as varchar) from raw.payments where id in "
                "(select unnest(?))",
                [[pid for pid, _ in broken]],
            ).fetchall()
        )
    finally:
        con.close()
    assert landed == dict(broken), "a repaired payment is missing or wrong"


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_missing_fx_day_stops_the_run_until_the_rates_exist(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    """(d) the FX API has not published the next day's rates (answers with USD only):
    the run for that day fails naming a currency and the day; the incomplete day is not
    cached, so once the API has the rates the rerun publishes."""
    next_day = DAY + timedelta(days=1)
    before = world.published_state()
    faults = world.api_base + "/_admin/faults"
    httpx.post(
        faults, json={"fx_missing_days": [next_day.isoformat()]}, headers=ADMIN
    ).raise_for_status()
    try:
        log = world.fail(next_day, capfd)
        assert "assert_fx_rate_exists_for_every_counted_order" in log
        assert re.search(
            rf"currency=[A-Z]{{3}} business_date={next_day.isoformat()} order_count=\d+", log
        ), "the FX completeness error does not name the currency and day"
        _unchanged(world, before)
        fx = world.quality("dbt", run_id=next_day.isoformat())
        assert fx[("assert_fx_rate_exists_for_every_counted_order", None)][1] is False
        cached = list(
            world.data_dir.glob(f"landing/payments_api/fx_rates/_cache/*/{next_day}.json")
        )
        assert cached == [], "an incomplete FX day was cached"
    finally:
        httpx.post(faults, json={}, headers=ADMIN).raise_for_status()
    world.publish(next_day)
    assert list(world.data_dir.glob(f"landing/payments_api/fx_rates/_cache/*/{next_day}.json"))


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_an_emptied_source_table_stops_before_the_merge(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    """An emptied `order_items` (truncated, an old backup restored, another database
    behind the URL) lands an empty key set: the loader would delete every item and every
    order would become `uncategorized`, with counts and totals unchanged, so parity would
    pass. The mass-delete guard stops load_source_db before the merge, naming counts and
    keys; the operator's override lets one run through and is recorded in ops."""
    before = world.published_state()
    world.sql("create table order_items_saved as select * from order_items")
    world.sql("delete from order_items")
    try:
        log = world.fail(DAY, capfd)
        assert "mass delete stopped before the merge, nothing was loaded" in log
        found = re.search(r"raw\.order_items: this run would delete (\d+) of (\d+) rows", log)
        assert found and found.group(1) == found.group(2) != "0", log[-3000:]
        assert "(100.0%; the limit is 5% and at least 10 rows); sample keys ['" in log
        assert "ALLOW_MASS_DELETE=1" in log and "ops.guard_overrides" in log
        _unchanged(world, before)

        run_dag(DAY, world.env, allow_mass_delete=True)  # the operator: the deletes are real
        con = duckdb.connect(str(world.warehouse), read_only=True)
        try:
            overrides = con.execute(
                "select guard, table_name, details from ops.guard_overrides where run_id = ?",
                [RUN_ID],
            ).fetchall()
        finally:
            con.close()
        assert [(g, t) for g, t, _ in overrides] == [("mass_delete", "order_items")]
        assert json.loads(overrides[0][2])["rows"] == int(found.group(1))
        categories = {row[2] for row in snapshot(world.warehouse)["daily_sales"]}
        assert categories == {"uncategorized"}  # what the source says now
    finally:  # the source gets its items back (as new versions: the extract re-reads them)
        world.sql("insert into order_items select * from order_items_saved")
        world.sql("update order_items set updated_at = now()")
        world.sql("drop table order_items_saved")
    world.publish(DAY)


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_payment_from_the_future_is_quarantined_and_never_the_watermark(world: World) -> None:
    """One payment stamped 2099 (an application clock gone wrong) would become the
    watermark: every later run would ask for `updated_since` 2099 and land nothing,
    forever, with status ok. It is quarantined with the reason, the day publishes, and
    the next change at the API still lands."""
    store = sqlite3.connect(world.payments_db)
    try:
        (future,), (later,) = store.execute("select id from payments order by id limit 2")
        store.execute(
            "update payments set updated_at = '2099-01-01T00:00:00.000000Z' where id = ?",
            [future],
        )
        store.commit()
        world.publish(DAY)
        quarantine = world.data_dir / f"quarantine/payments_api/payments/run={RUN_ID}"
        newest = max(quarantine.glob("attempt=*.jsonl"))  # this run's own file
        [entry] = [json.loads(line) for line in newest.read_text().splitlines()]
        assert entry["record_key"] == future and entry["field"] == "updated_at"
        assert "is later than the run's clock" in entry["error"]

        store.execute(
            "update payments set amount = '4321.00', updated_at = ? where id = ?",
            [_now_iso(), later],
        )
        store.commit()
        world.publish(DAY)  # the watermark stayed in the present: the change lands
        con = duckdb.connect(str(world.warehouse), read_only=True)
        try:
            amount = con.execute(
                "select cast(amount as varchar) from raw.payments where id = ?", [later]
            ).fetchone()
        finally:
            con.close()
        assert amount == ("4321.00",), "a payment after the future record was not landed"
    finally:  # the application's clock is fixed
        store.execute("update payments set updated_at = ? where id = ?", [_now_iso(), future])
        store.commit()
        store.close()
    world.publish(DAY)


@pytest.mark.e2e
@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_page_without_next_cursor_stops_the_extract_naming_the_page(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    """A full page without the `next_cursor` key would look like the last page: the rest
    of the window would silently not land. The extract stops naming the page, without
    retries, and nothing is published; once the API behaves, the day publishes."""
    before = world.published_state()
    store = sqlite3.connect(world.payments_db)
    try:  # more changed payments than one page (500) holds
        store.execute(
            "insert into payments select id || '-copy', order_id, amount, currency, status, "
            "method, created_at, ? from payments",
            [_now_iso()],
        )
        store.execute("update payments set updated_at = ?", [_now_iso()])
        store.commit()
        assert store.execute("select count(*) from payments").fetchone()[0] > 500
    finally:
        store.close()
    faults = world.api_base + "/_admin/faults"
    httpx.post(
        faults, json={"modes": ["missing_cursor"], "every": 1}, headers=ADMIN
    ).raise_for_status()
    try:
        log = world.fail(DAY, capfd)
        assert "page 1: no 'next_cursor' key" in log
        assert "up_for_retry" not in log.lower(), "a contract error must not be retried"
        _unchanged(world, before)
    finally:
        httpx.post(faults, json={}, headers=ADMIN).raise_for_status()
    world.publish(DAY)


def test_fx_missing_days_fault_switch(tmp_path: Path) -> None:
    """The demo API's switch: a chosen day answers with USD only, or 404."""
    app = create_app(
        tmp_path / "payments.db",
        TOKEN,
        FaultConfig(fx_missing_days={"2026-01-02"}),
        admin_token=ADMIN_TOKEN,
    )
    with serve_in_thread(app) as url:

        def rates(day: str) -> httpx.Response:
            return httpx.get(url + "/v1/fx-rates", params={"date": day}, headers=AUTH)

        assert rates("2026-01-02").json()["rates"] == {"USD": "1"}
        assert len(rates("2026-01-03").json()["rates"]) > 1
        switch = {"fx_missing_days": ["2026-01-03"], "fx_missing_status": 404}
        assert httpx.post(url + "/_admin/faults", json=switch, headers=ADMIN).status_code == 200
        assert rates("2026-01-03").status_code == 404
        assert len(rates("2026-01-02").json()["rates"]) > 1
        bad = httpx.post(url + "/_admin/faults", json={"fx_missing_days": ["x"]}, headers=ADMIN)
        assert bad.status_code == 400 and "fx_missing_days" in bad.json()["error"]
