"""Tests of the deterministic demo source generator (demo/generator.py)."""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
import warnings
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from demo import generator as g
from demo.generator import MISSING_PRODUCT_BASE, apply_next_day, generate, main
from demo.schema import ORDER_STATUSES, TABLE_NAMES

END = date(2026, 11, 26)
DAYS = 15
PER_DAY = 60
ARGS: dict[str, Any] = {"seed": 42, "days": DAYS, "end_date": END, "orders_per_day": PER_DAY}


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _dump(path: Path) -> list[str]:
    """Every row of the four source tables, as SQLite prints them."""
    db = sqlite3.connect(path)
    try:
        return [
            repr(row)
            for table in TABLE_NAMES
            for row in db.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608
        ]
    finally:
        db.close()


def _norm(value: Any) -> Any:
    """Backend-neutral value: naive-UTC ISO timestamps, money as integer cents."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, Decimal | float):
        return int((Decimal(str(value)) * 100).to_integral_value())
    return value


def _rows(url: str, table: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            return [
                tuple(_norm(v) for v in row) for row in conn.execute(sa.select(t).order_by(t.c.id))
            ]
    finally:
        engine.dispose()


def _query(path: Path, sql: str, *params: Any) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One generated SQLite source + payments store, shared read-only by the tests."""
    tmp = tmp_path_factory.mktemp("source")
    db, pay = tmp / "source.db", tmp / "payments.db"
    summary = generate(_url(db), payments_db=pay, batch_size=500, **ARGS)
    return {"db": db, "payments": pay, "summary": summary, "tmp": tmp}


@pytest.fixture
def copy(source: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    """A private copy of the shared source, for tests that change it."""
    db, pay = tmp_path / "source.db", tmp_path / "payments.db"
    shutil.copy(source["db"], db)
    shutil.copy(source["payments"], pay)
    return {"db": db, "payments": pay}


# ---------------------------------------------------------------------------- generate


def test_deterministic_and_independent_of_batch_size(
    source: dict[str, Any], tmp_path: Path
) -> None:
    again = tmp_path / "again.db"
    generate(_url(again), batch_size=7, **ARGS)
    assert _dump(again) == _dump(source["db"])

    other = tmp_path / "other.db"
    generate(_url(other), **(ARGS | {"seed": 7}))
    assert _dump(other) != _dump(source["db"])


def test_build_order_rebuilds_generates_orders(source: dict[str, Any]) -> None:
    """bench/bench_warehouse.py rebuilds generate's orders day by day through
    `_build_order`: the same RNG streams and ids must give the same order rows."""

    plan = g._Plan(ARGS["seed"], END - timedelta(days=DAYS - 1), DAYS, PER_DAY, None)
    catalog = [(row[0], g._decimal_to_cents(row[4])) for row in g._products(plan)]
    context = g._OrderContext(plan.end_ts, plan.end, plan.n_users, catalog)
    rows, order_id, item_id = [], 1, 1
    for index in range(DAYS):
        day = plan.start + timedelta(days=index)
        rng = random.Random(f"{ARGS['seed']}:orders:{day.isoformat()}")
        for created, inserted in g._day_times(rng, day, plan.orders_on(index)):
            order = g._build_order(rng, context, (order_id, item_id), created, inserted)
            rows.append(tuple(_norm(v) for v in order.row))
            order_id += 1
            item_id += len(order.items)
    assert rows == _rows(_url(source["db"]), "orders")


def test_row_counts_match_arguments(source: dict[str, Any]) -> None:
    db, rows = source["db"], source["summary"]["rows"]
    assert rows["orders"] == DAYS * PER_DAY
    for table in TABLE_NAMES:
        assert _query(db, f"SELECT count(*) FROM {table}")[0][0] == rows[table]  # noqa: S608
    assert rows["users"] >= 50 and rows["products"] >= 50 and rows["order_items"] > rows["orders"]
    assert source["summary"]["start_date"] == (END - timedelta(days=DAYS - 1)).isoformat()


def test_scale_spreads_total_orders(tmp_path: Path) -> None:
    summary = generate(_url(tmp_path / "s.db"), seed=1, days=4, end_date=END, scale=103)
    assert summary["rows"]["orders"] == 103


def test_every_kind_of_mess_is_present(source: dict[str, Any]) -> None:
    db = source["db"]
    regions = dict(_query(db, "SELECT region, count(*) FROM users GROUP BY region"))
    assert regions.get(None) and regions.get("") and regions.get("  ")
    assert {"north", "south", "east", "west", "apac", "emea"} <= set(regions)
    missing = _query(
        db,
        "SELECT count(*) FROM order_items i WHERE NOT EXISTS"
        " (SELECT 1 FROM products p WHERE p.id = i.product_id)",
    )[0][0]
    assert missing > 0
    assert _query(db, "SELECT min(product_id) FROM order_items WHERE product_id >= ?", MISSING_PRODUCT_BASE)  # fmt: skip
    no_items = _query(
        db,
        "SELECT count(*) FROM orders o WHERE NOT EXISTS"
        " (SELECT 1 FROM order_items i WHERE i.order_id = o.id)",
    )[0][0]
    assert no_items > 0
    currencies = {c for (c,) in _query(db, "SELECT DISTINCT currency FROM orders")}
    assert {"USD", "EUR", "GBP", "JPY", "CAD"} <= currencies
    statuses = {s for (s,) in _query(db, "SELECT DISTINCT status FROM orders")}
    assert statuses == set(ORDER_STATUSES)
    categories = {c for (c,) in _query(db, "SELECT DISTINCT category FROM products")}
    assert len(categories) >= 5
    # Late rows: items inserted (updated_at) at least a day after the order's created_at.
    late = _query(
        db,
        "SELECT count(DISTINCT o.id) FROM orders o JOIN order_items i ON i.order_id = o.id"
        " WHERE julianday(i.updated_at) - julianday(o.created_at) >= 1",
    )[0][0]
    assert late > 0
    # Commit order differs from created_at order for some rows.
    ids_out_of_order = _query(
        db,
        "SELECT count(*) FROM orders a JOIN orders b ON b.id = a.id + 1"
        " WHERE b.created_at < a.created_at",
    )[0][0]
    assert ids_out_of_order > 0
    # created_at spread over the whole UTC day.
    hours = {h for (h,) in _query(db, "SELECT DISTINCT substr(created_at, 12, 2) FROM orders")}
    assert len(hours) == 24
    # JPY amounts are whole yen.
    assert not _query(db, "SELECT 1 FROM orders WHERE currency = 'JPY' AND total != round(total)")


def test_money_never_negative_and_totals_match_items(source: dict[str, Any]) -> None:
    rows = _rows(_url(source["db"]), "orders")
    items = _rows(_url(source["db"]), "order_items")
    prices = _rows(_url(source["db"]), "products")
    assert all(r[4] >= 0 for r in rows)
    assert all(i[4] >= 0 and i[3] >= 1 for i in items)
    assert all(p[4] > 0 for p in prices)
    sums: dict[int, int] = {}
    for _id, order_id, _pid, qty, unit, _ts in items:
        sums[order_id] = sums.get(order_id, 0) + qty * unit
    checked = 0
    for oid, _uid, _status, _cur, total, _c, _u in rows:
        if oid in sums:
            assert total == sums[oid], oid
            checked += 1
    assert checked > 0.9 * len(rows)


def test_timestamps_consistent(source: dict[str, Any]) -> None:
    db = source["db"]
    assert not _query(db, "SELECT id FROM orders WHERE updated_at < created_at")
    assert not _query(db, "SELECT id FROM users WHERE updated_at < created_at")
    end = f"{END + timedelta(days=1)} 00:00:00"
    for table in TABLE_NAMES:
        assert not _query(db, f"SELECT id FROM {table} WHERE updated_at >= ?", end)  # noqa: S608


def test_payments_store(source: dict[str, Any]) -> None:
    pay = source["payments"]
    payments = _query(pay, "SELECT * FROM payments ORDER BY id")
    assert payments and len(payments) == source["summary"]["rows"]["payments"]
    orders = {
        r[0]: r for r in _query(source["db"], "SELECT id, status, currency, total FROM orders")
    }
    ts = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    expected = {"paid": "succeeded", "shipped": "succeeded", "delivered": "succeeded",
                "refunded": "refunded", "cancelled": "failed"}  # fmt: skip
    for pid, order_id, amount, currency, status, method, created, updated in payments:
        assert pid == f"pay_{order_id:09d}"
        _oid, o_status, o_currency, o_total = orders[order_id]
        assert status == expected[o_status]
        assert currency == o_currency
        assert re.fullmatch(r"\d+\.\d\d", amount) and Decimal(amount) == Decimal(str(o_total)).quantize(Decimal("0.01"))  # fmt: skip
        assert method in ("card", "paypal", "bank_transfer")
        assert ts.match(created) and ts.match(updated) and created <= updated
    with_payment = {p[1] for p in payments}
    for oid, status, *_ in orders.values():
        if status in ("paid", "shipped", "delivered", "refunded"):
            assert oid in with_payment
        if status == "pending":
            assert oid not in with_payment
    assert {p[4] for p in payments} == {"succeeded", "failed", "refunded"}
    assert _query(pay, "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_%'")


def test_if_exists_skip_and_replace(copy: dict[str, Path], source: dict[str, Any]) -> None:
    url = _url(copy["db"])
    before = _dump(copy["db"])
    summary = generate(url, payments_db=copy["payments"], **(ARGS | {"seed": 99}))
    assert summary["skipped"] is True
    assert _dump(copy["db"]) == before
    assert len(_query(copy["payments"], "SELECT id FROM payments")) == source["summary"]["rows"]["payments"]  # fmt: skip

    apply_next_day(url, seed=5, payments_db=copy["payments"])
    assert _dump(copy["db"]) != before
    summary = generate(url, payments_db=copy["payments"], if_exists="replace", **ARGS)
    assert summary["skipped"] is False
    assert _dump(copy["db"]) == before
    assert _query(copy["payments"], "SELECT * FROM payments ORDER BY id") == _query(
        source["payments"], "SELECT * FROM payments ORDER BY id"
    )


def test_bad_arguments_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'sometimes'"):
        generate(_url(tmp_path / "x.db"), if_exists="sometimes")
    generate(_url(tmp_path / "y.db"), days=1, orders_per_day=0, end_date=END)
    with pytest.raises(ValueError, match="no orders"):
        apply_next_day(_url(tmp_path / "y.db"), seed=1)


# ---------------------------------------------------------------------------- next day


def test_next_day(copy: dict[str, Path]) -> None:
    url = _url(copy["db"])
    before = {r[0]: r for r in _rows(url, "orders")}
    items_before = {r[0]: r for r in _rows(url, "order_items")}
    products_before = {r[0]: r for r in _rows(url, "products")}
    users_before = {r[0]: r for r in _rows(url, "users")}
    pay_before = dict(_query(copy["payments"], "SELECT id, status FROM payments"))

    s = apply_next_day(url, seed=43, payments_db=copy["payments"])
    day = END + timedelta(days=1)
    assert s["date"] == day.isoformat()
    after = {r[0]: r for r in _rows(url, "orders")}
    items_after = {r[0]: r for r in _rows(url, "order_items")}
    by_kind = s["touched_days_by_kind"]

    # New orders on the day, late orders created 1-5 days before but written today.
    assert s["new_orders"] >= PER_DAY // 2 and s["late_orders"] >= 1
    assert len(after) == len(before) + s["new_orders"] + s["late_orders"]
    for oid in s["late_order_ids"]:
        created, updated = (datetime.fromisoformat(x) for x in after[oid][5:7])
        assert 1 <= (day - created.date()).days <= 5
        assert updated.date() == day
        assert created.date().isoformat() in by_kind["late_orders"]

    # Status updates: updated_at bumped to the day, created_at unchanged.
    assert s["status_updates"]
    for change in s["status_updates"]:
        old, new = before[change["order_id"]], after[change["order_id"]]
        assert (old[2], new[2]) == (change["from"], change["to"])
        assert new[5] == old[5] and new[6] > old[6]
        assert datetime.fromisoformat(new[6]).date() == day
        assert change["day"] in by_kind["status_updates"]
        if change["to"] == "refunded":
            assert pay_before.get(f"pay_{change['order_id']:09d}") in ("succeeded", None)
    pay_after = dict(_query(copy["payments"], "SELECT id, status FROM payments"))
    for change in s["status_updates"]:
        if change["to"] in ("paid", "refunded"):
            assert pay_after[f"pay_{change['order_id']:09d}"] == {"paid": "succeeded"}.get(change["to"], "refunded")  # fmt: skip
    assert len(pay_after) >= len(pay_before)

    # A product changed category, a user changed region, both with updated_at bumped.
    products_after = {r[0]: r for r in _rows(url, "products")}
    users_after = {r[0]: r for r in _rows(url, "users")}
    assert s["category_moves"] and s["region_moves"]
    for move in s["category_moves"]:
        p0, p1 = products_before[move["product_id"]], products_after[move["product_id"]]
        assert (p0[3], p1[3]) == (move["from"], move["to"]) and move["from"] != move["to"]
        assert p1[5] > p0[5]
    for move in s["region_moves"]:
        u0, u1 = users_before[move["user_id"]], users_after[move["user_id"]]
        assert (u0[3], u1[3]) == (move["from"], move["to"]) and u1[5] > u0[5] and u1[4] == u0[4]

    # Hard deletes of items; their orders stay as they were (unless a status update).
    assert s["deleted_item_ids"]
    updated_ids = {c["order_id"] for c in s["status_updates"]}
    for iid in s["deleted_item_ids"]:
        assert iid in items_before and iid not in items_after
        oid = items_before[iid][1]
        assert datetime.fromisoformat(before[oid][5]).date().isoformat() in by_kind["item_deletes"]
        if oid not in updated_ids:
            assert after[oid] == before[oid]

    assert set(s["touched_days"]) == set().union(*map(set, by_kind.values()))
    assert day.isoformat() in s["touched_days"]

    # Deterministic for the same source state and seed; the next call moves a day on.
    s2 = apply_next_day(url, seed=43)
    assert s2["date"] == (day + timedelta(days=1)).isoformat()


def test_next_day_is_deterministic(copy: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    shutil.copy(copy["db"], other)
    a = apply_next_day(_url(copy["db"]), seed=3, date=date(2026, 11, 28))
    b = apply_next_day(_url(other), seed=3, date=date(2026, 11, 28))
    a.pop("url"), b.pop("url")
    assert a == b and a["date"] == "2026-11-28"
    assert _dump(copy["db"]) == _dump(other)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _url(tmp_path / "cli.db")
    argv = ["generate", "--url", url, "--days", "2", "--orders-per-day", "5",
            "--end-date", "2026-01-31", "--payments-db", str(tmp_path / "p.db")]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["rows"]["orders"] == 10
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] is True and "already holds data" in captured.err
    assert main(["next-day", "--url", url, "--seed", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["date"] == "2026-02-01" and "touched_days" in out
    assert main(["generate", "--url", url, "--end-date", "31/01/2026"]) == 2
    assert "'31/01/2026'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- real servers

SMALL: dict[str, Any] = {"seed": 11, "days": 3, "end_date": END, "orders_per_day": 40}


@pytest.mark.parametrize("server", ["pg_database", "mariadb_database"])
def test_same_rows_on_real_servers(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(server)
    ref = tmp_path / "ref.db"
    generate(_url(ref), **SMALL)
    summary = generate(url, batch_size=50, **SMALL)
    assert summary["skipped"] is False
    for table in TABLE_NAMES:
        assert _rows(url, table) == _rows(_url(ref), table), table
    assert generate(url, **SMALL)["skipped"] is True

    # Plain URLs (as Airflow connections hold them) are accepted too.
    plain = url.replace("postgresql+psycopg://", "postgresql://").replace(
        "mysql+pymysql://", "mysql://"
    )
    a = apply_next_day(plain, seed=4)
    b = apply_next_day(_url(ref), seed=4)
    a.pop("url"), b.pop("url")
    assert a == b
    for table in TABLE_NAMES:
        assert _rows(url, table) == _rows(_url(ref), table), table
