"""Deterministic generator of the demo operational database and payments store.

`generate` builds a messy but reproducible source (docs/contract.md, "Sources"): every day gets
its own seeded RNG (`random.Random(f"{seed}:orders:{day}")`), so the rows depend only
on the seed and the arguments, never on the batch size, and rows are streamed to the
database in batches (10M orders stay well under 1 GiB of RSS).

`apply_next_day` then plays "one more day" on an existing source: new orders, late
orders, status changes, category/region moves and hard deletes of order items, and
reports which business days (UTC) it touched.

Internally timestamps are naive datetimes that mean UTC; they are made tz-aware only
where a driver needs it (PostgreSQL timestamptz). SQLite and MySQL/MariaDB store UTC.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time as _time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core import clock
from core.settings import sqlalchemy_url
from demo.schema import (
    ORDER_STATUSES,
    PAYMENTS_DDL,
    TABLES,
    metadata,
    order_items,
    orders,
    products,
    users,
)

DAY_US = 86_400 * 1_000_000
MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US

CURRENCIES: tuple[str, ...] = ("USD", "EUR", "GBP", "JPY", "CAD")
CURRENCY_WEIGHTS: tuple[int, ...] = (50, 20, 10, 10, 10)
# Approximate units of currency per USD, times 10^4 (integer maths, no floats in money).
FX_E4: dict[str, int] = {"USD": 10_000, "EUR": 9_200, "GBP": 7_900, "JPY": 1_500_000, "CAD": 13_600}
# Currencies without minor units: prices are whole numbers (still NUMERIC(12,2)).
ZERO_DECIMAL = frozenset({"JPY"})

REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "apac", "emea")
CATEGORIES: tuple[str, ...] = ("books", "electronics", "garden", "toys", "grocery", "apparel")
METHODS: tuple[str, ...] = ("card", "paypal", "bank_transfer")
# Product ids of order items whose product does not exist: far above any real id.
MISSING_PRODUCT_BASE = 900_000_000
# Users and products are generated in fixed chunks, one seeded RNG each.
CHUNK = 1_000

P_LATE = 0.03  # order inserted 1-5 days after its created_at
P_JITTER = 0.03  # committed out of created_at order (up to 10 minutes)
P_NO_ITEMS = 0.02
P_MISSING_PRODUCT = 0.01
P_FAILED_PAYMENT = 0.5  # share of cancelled orders with a failed payment

# Status weights (pending, paid, shipped, delivered, cancelled, refunded) by order age.
_STATUS_BY_AGE: tuple[tuple[int, tuple[int, ...]], ...] = (
    (0, (40, 45, 5, 0, 10, 0)),
    (2, (8, 30, 40, 10, 10, 2)),
    (6, (3, 10, 25, 45, 10, 7)),
    (10**9, (1, 3, 6, 72, 10, 8)),
)
# Time from created_at to the last status change, in microseconds (low, high).
_STATUS_LAG: dict[str, tuple[int, int]] = {
    "pending": (0, 1),
    "paid": (MINUTE_US, 30 * MINUTE_US),
    "shipped": (6 * HOUR_US, 2 * DAY_US),
    "delivered": (2 * DAY_US, 6 * DAY_US),
    "cancelled": (5 * MINUTE_US, DAY_US),
    "refunded": (3 * DAY_US, 12 * DAY_US),
}
_EARLIER_STATUS = {
    "delivered": "shipped",
    "shipped": "paid",
    "paid": "pending",
    "refunded": "delivered",
    "cancelled": "pending",
}
_PAYMENT_STATUS = {"paid": "succeeded", "shipped": "succeeded", "delivered": "succeeded"}

_FIRST = ("Ada", "Bo", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun",
          "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq")  # fmt: skip
_LAST = ("Adams", "Berg", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Haddad", "Ito",
         "Jensen", "Kim", "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Rossi", "Silva")  # fmt: skip
_ADJ = ("Classic", "Compact", "Deluxe", "Eco", "Handy", "Mini", "Pro", "Smart", "Ultra", "Vintage")
_NOUN = {
    "books": ("Novel", "Cookbook", "Atlas", "Guide"),
    "electronics": ("Headphones", "Charger", "Speaker", "Camera"),
    "garden": ("Shovel", "Planter", "Hose", "Seeds"),
    "toys": ("Puzzle", "Robot", "Kite", "Blocks"),
    "grocery": ("Coffee", "Tea", "Olive Oil", "Chocolate"),
    "apparel": ("Jacket", "Scarf", "Sneakers", "T-Shirt"),
}


# ---------------------------------------------------------------------------- helpers


def _cents_to_decimal(cents: int) -> Decimal:
    """Exact 2-decimal Decimal from integer cents."""
    return Decimal(cents).scaleb(-2)


def _decimal_to_cents(value: Any) -> int:
    """Cents from a NUMERIC read back (Decimal; SQLite hands back floats)."""
    return int((Decimal(str(value)) * 100).to_integral_value())


def _convert_cents(usd_cents: int, currency: str) -> int:
    """USD cents -> cents of `currency`, rounded half-up; whole units for JPY."""
    cents = (usd_cents * FX_E4[currency] + 5_000) // 10_000
    if currency in ZERO_DECIMAL:
        cents = (cents + 50) // 100 * 100
    return max(cents, 0)


def _iso_z(ts: datetime) -> str:
    """'2026-11-27T13:45:01.123456Z' from a naive-UTC datetime."""
    return ts.isoformat(timespec="microseconds") + "Z"


def _naive_utc(ts: datetime) -> datetime:
    """Normalise a timestamp read from any backend to naive UTC."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time())


def _parse_date(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{what}={text!r} is not a YYYY-MM-DD date") from exc


def _region(rng: random.Random, user_id: int) -> str | None:
    """Sales region; ~2% NULL and ~2% blank, fixed by id so small sources have them too."""
    pick = rng.choice(REGIONS)
    m = user_id % 100
    if m in (7, 57):
        return None
    if m == 23:
        return ""
    if m == 71:
        return "  "
    return pick


def _user_row(rng: random.Random, uid: int, created: datetime, updated: datetime) -> tuple:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    email = f"{first.lower()}.{last.lower()}.{uid}@example.com"
    return (uid, email, f"{first} {last}", _region(rng, uid), created, updated)


def _product_row(rng: random.Random, pid: int, before: datetime) -> tuple:
    category = rng.choice(CATEGORIES)
    name = f"{rng.choice(_ADJ)} {rng.choice(_NOUN[category])}"
    # Skewed prices: many cheap items, a few expensive ones.
    price_cents = int(100 + 50_000 * rng.random() ** 3)
    updated = before - timedelta(microseconds=rng.randrange(365 * DAY_US))
    return (pid, f"SKU-{pid:07d}", name, category, _cents_to_decimal(price_cents), updated)


def _status_for_age(rng: random.Random, age_days: int) -> str:
    for max_age, weights in _STATUS_BY_AGE:
        if age_days <= max_age:
            return rng.choices(ORDER_STATUSES, weights)[0]
    raise AssertionError("unreachable")


@dataclass
class _Order:
    """One generated order with its items and (optional) payment, as DB rows."""

    row: tuple
    items: list[tuple] = field(default_factory=list)
    payment: tuple | None = None


@dataclass(frozen=True)
class _OrderContext:
    """What the orders of one run share: the instant their state is taken at (`end_ts`,
    on day `as_of`), the user ids 1..`n_users` and the (product id, USD cents) catalog."""

    end_ts: datetime
    as_of: date
    n_users: int
    catalog: Sequence[tuple[int, int]]


@dataclass(frozen=True)
class _Charge:
    """What a payment pays: order `order_id`'s total, in integer minor units of `currency`."""

    order_id: int
    total_cents: int
    currency: str


def _build_order(
    rng: random.Random,
    ctx: _OrderContext,
    ids: tuple[int, int],
    created: datetime,
    inserted: datetime,
) -> _Order:
    """Order `ids[0]` (items numbered from `ids[1]`) inserted at `inserted` (== created
    unless late), in its state as of `ctx.end_ts`."""
    order_id, first_item_id = ids
    status, updated = _order_status(rng, ctx, created, inserted)
    currency = rng.choices(CURRENCIES, CURRENCY_WEIGHTS)[0]
    user_id = rng.randint(1, ctx.n_users)
    total, items = _order_items(rng, ctx.catalog, currency, ids, inserted)
    charge = _Charge(order_id, total, currency)
    payment = _order_payment(rng, charge, status, (created, inserted, updated))
    row = (order_id, user_id, status, currency, _cents_to_decimal(total), created, updated)
    return _Order(row, items, payment)


def _order_status(
    rng: random.Random, ctx: _OrderContext, created: datetime, inserted: datetime
) -> tuple[str, datetime]:
    """Status and updated_at of an order created at `created`, as of `ctx.end_ts`."""
    status = _status_for_age(rng, (ctx.as_of - created.date()).days)
    while True:
        lo, hi = _STATUS_LAG[status]
        updated = max(created + timedelta(microseconds=rng.randrange(lo, hi)), inserted)
        if updated <= ctx.end_ts:
            return status, updated
        # That change would lie in the future: the order is still at an earlier stage.
        status = _EARLIER_STATUS[status]


def _order_items(
    rng: random.Random,
    catalog: Sequence[tuple[int, int]],
    currency: str,
    ids: tuple[int, int],
    inserted: datetime,
) -> tuple[int, list[tuple]]:
    """(total in minor units, item rows) of order `ids[0]`, items numbered from `ids[1]`;
    some orders have no items, some items a product that does not exist."""
    order_id, first_item_id = ids
    items: list[tuple] = []
    if rng.random() < P_NO_ITEMS:
        # No items (e.g. a service fee order): the total stands on its own, never negative.
        return _convert_cents(rng.randrange(0, 20_000), currency), items
    total = 0
    for k in range(rng.choice((1, 1, 2, 2, 3, 3, 4, 5))):
        if rng.random() < P_MISSING_PRODUCT:
            pid = MISSING_PRODUCT_BASE + rng.randrange(1_000)
            usd_cents = rng.randrange(100, 20_000)
        else:
            pid, usd_cents = rng.choice(catalog)
        unit = _convert_cents(usd_cents, currency)
        qty = rng.randint(1, 5)
        total += qty * unit
        items.append((first_item_id + k, order_id, pid, qty, _cents_to_decimal(unit), inserted))
    return total, items


def _order_payment(
    rng: random.Random,
    charge: _Charge,
    status: str,
    times: tuple[datetime, datetime, datetime],
) -> tuple | None:
    """The payment row of an order in `status` (None: no payment yet, or none at all);
    `times` are the order's (created, inserted, updated)."""
    created, inserted, updated = times
    pay_status = _PAYMENT_STATUS.get(status)
    if status == "refunded":
        pay_status = "refunded"
    elif status == "cancelled" and rng.random() < P_FAILED_PAYMENT:
        pay_status = "failed"
    if pay_status is None:
        return None
    pay_created = min(created + timedelta(microseconds=rng.randrange(MINUTE_US)), updated)
    # The API is read by updated_at: a late order's payment surfaces when it is written.
    pay_updated = updated if pay_status == "refunded" else max(pay_created, inserted)
    return _payment_row(charge, pay_status, rng.choice(METHODS), pay_created, pay_updated)


def _payment_row(
    charge: _Charge, status: str, method: str, created: datetime, updated: datetime
) -> tuple:
    """A payments-store row (amount as a decimal string, timestamps ISO UTC 'Z')."""
    total_cents = charge.total_cents
    amount = f"{total_cents // 100}.{total_cents % 100:02d}"
    return (
        f"pay_{charge.order_id:09d}",
        charge.order_id,
        amount,
        charge.currency,
        status,
        method,
        _iso_z(created),
        _iso_z(updated),
    )


# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Plan:
    seed: int
    start: date
    days: int
    orders_per_day: int | None
    scale: int | None

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days - 1)

    @property
    def end_ts(self) -> datetime:
        return _day_start(self.end) + timedelta(microseconds=DAY_US - 1)

    def orders_on(self, index: int) -> int:
        if self.orders_per_day is not None:
            return self.orders_per_day
        assert self.scale is not None
        base, extra = divmod(self.scale, self.days)
        return base + (1 if index < extra else 0)

    @property
    def total_orders(self) -> int:
        if self.orders_per_day is not None:
            return self.orders_per_day * self.days
        assert self.scale is not None
        return self.scale

    @property
    def n_users(self) -> int:
        return max(50, self.total_orders // 10)

    @property
    def n_products(self) -> int:
        return max(50, min(5_000, self.total_orders // 200))


def _users(plan: _Plan) -> Iterator[tuple]:
    """All users, created during the year before the window (chunked seeded RNGs)."""
    start = _day_start(plan.start)
    for chunk_start in range(1, plan.n_users + 1, CHUNK):
        rng = random.Random(f"{plan.seed}:users:{chunk_start // CHUNK}")
        for uid in range(chunk_start, min(chunk_start + CHUNK, plan.n_users + 1)):
            created = start - timedelta(microseconds=rng.randrange(1, 365 * DAY_US))
            updated = created
            if rng.random() < 0.3:  # some profiles edited since, still before the window
                updated = created + timedelta(
                    microseconds=rng.randrange(int((start - created) / timedelta(microseconds=1)))
                )
            yield _user_row(rng, uid, created, updated)


def _products(plan: _Plan) -> Iterator[tuple]:
    start = _day_start(plan.start)
    for chunk_start in range(1, plan.n_products + 1, CHUNK):
        rng = random.Random(f"{plan.seed}:products:{chunk_start // CHUNK}")
        for pid in range(chunk_start, min(chunk_start + CHUNK, plan.n_products + 1)):
            yield _product_row(rng, pid, start)


def _day_times(rng: random.Random, day: date, n: int) -> list[tuple[datetime, datetime]]:
    """(created_at, inserted_at) of the orders inserted on `day`, in insertion (id) order."""
    start = _day_start(day)
    offsets = sorted(rng.randrange(DAY_US) for _ in range(n))
    out = []
    for off in offsets:
        inserted = start + timedelta(microseconds=off)
        created = inserted
        if rng.random() < P_JITTER:
            # Concurrent transactions: commit order differs from timestamps by <= 10 min.
            created = max(start, created - timedelta(microseconds=rng.randrange(10 * MINUTE_US)))
            inserted = created
        if rng.random() < P_LATE:
            created = inserted - timedelta(
                days=rng.randint(1, 5), microseconds=rng.randrange(6 * HOUR_US)
            )
        out.append((created, inserted))
    return out


# ---------------------------------------------------------------------------- writing


class _Writer:
    """Buffers rows per table and flushes them in one transaction per batch."""

    def __init__(
        self, engine: Engine, payments: sqlite3.Connection | None, batch_size: int
    ) -> None:
        self.engine = engine
        self.payments = payments
        self.batch_size = batch_size
        self.is_pg = engine.dialect.name == "postgresql"
        self.buffers: dict[str, list[tuple]] = {t.name: [] for t in TABLES}
        self.pay_buffer: list[tuple] = []
        self.pending = 0
        self.counts: dict[str, int] = {t.name: 0 for t in TABLES} | {"payments": 0}

    def add(self, table: sa.Table, row: tuple) -> None:
        self.buffers[table.name].append(row)
        self.pending += 1
        if self.pending >= self.batch_size:
            self.flush()

    def add_order(self, order: _Order) -> None:
        for item in order.items:
            self.buffers[order_items.name].append(item)
        self.pending += len(order.items)
        if order.payment is not None and self.payments is not None:
            self.pay_buffer.append(order.payment)
        self.add(orders, order.row)

    def flush(self) -> None:
        if self.pending == 0 and not self.pay_buffer:
            return
        with self.engine.begin() as conn:
            for table in TABLES:
                rows = self.buffers[table.name]
                if rows:
                    insert_rows(conn, table, rows)
                    self.counts[table.name] += len(rows)
                    rows.clear()
        if self.payments is not None and self.pay_buffer:
            upsert_payments(self.payments, self.pay_buffer)
            self.counts["payments"] += len(self.pay_buffer)
        self.pay_buffer.clear()
        self.pending = 0


def insert_rows(conn: Connection, table: sa.Table, rows: Sequence[tuple]) -> None:
    """Insert tuples in column order: COPY on PostgreSQL, DB-API executemany on SQLite,
    Core `insert()` executemany elsewhere (MySQL/MariaDB, others)."""
    names = [c.name for c in table.columns]
    if conn.dialect.name == "postgresql":
        ts_pos = [i for i, c in enumerate(table.columns) if isinstance(c.type, sa.DateTime)]
        raw = conn.connection.driver_connection
        cols = ", ".join(names)
        with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy:
            for row in rows:
                out = list(row)
                for i in ts_pos:  # timestamptz needs aware values; ours are naive UTC
                    if out[i] is not None and out[i].tzinfo is None:
                        out[i] = out[i].replace(tzinfo=UTC)
                copy.write_row(out)
        return
    if conn.dialect.name == "sqlite":
        # Same stored values as Core's SQLite processors (text timestamps, REAL money),
        # without their per-value overhead: the bulk of a large demo goes here.
        raw = conn.connection.driver_connection
        marks = ", ".join("?" for _ in names)
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks})"
        ts_pos = [i for i, c in enumerate(table.columns) if isinstance(c.type, sa.DateTime)]
        money_pos = [i for i, c in enumerate(table.columns) if isinstance(c.type, sa.Numeric)]
        raw.cursor().executemany(sql, (_sqlite_row(r, ts_pos, money_pos) for r in rows))
        return
    conn.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])


def _sqlite_row(row: tuple, ts_pos: list[int], money_pos: list[int]) -> list:
    out = list(row)
    for i in ts_pos:
        if out[i] is not None:
            out[i] = out[i].isoformat(" ", "microseconds")
    for i in money_pos:
        if out[i] is not None:
            out[i] = float(out[i])
    return out


def open_payments(path: str | Path) -> sqlite3.Connection:
    """Open (creating if missing) the payments store and its table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    for ddl in PAYMENTS_DDL:
        db.execute(ddl)
    db.commit()
    return db


def upsert_payments(db: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """Insert payments; an existing id takes the new status/updated_at (one per order)."""
    db.executemany(
        "INSERT INTO payments (id, order_id, amount, currency, status, method, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
        " status = excluded.status, updated_at = excluded.updated_at",
        rows,
    )
    db.commit()


def make_engine(url: str) -> Engine:
    """Engine for any accepted URL (plain postgresql:// and mysql:// are normalised)."""
    url = sqlalchemy_url(url)
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def source_has_data(engine: Engine) -> bool:
    """True when any of the four source tables exists and holds a row."""
    existing = set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        for table in TABLES:
            if table.name in existing and conn.execute(sa.select(table.c.id).limit(1)).first():
                return True
    return False


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


# ---------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class _GenerateOptions:
    """`generate`'s keyword arguments besides the URL (see its docstring)."""

    seed: int
    days: int
    end_date: date | None
    orders_per_day: int | None
    scale: int | None
    payments_db: str | Path | None
    batch_size: int
    if_exists: str

    def plan(self) -> _Plan:
        """The days and sizes to generate; ValueError naming the first bad argument."""
        if self.if_exists not in ("skip", "replace"):
            raise ValueError(f"if_exists={self.if_exists!r} must be 'skip' or 'replace'")
        if self.days < 1:
            raise ValueError(f"days={self.days!r} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be >= 1")
        orders_per_day, scale = self.orders_per_day, self.scale
        if orders_per_day is not None and scale is not None:
            raise ValueError(f"give orders_per_day={orders_per_day!r} or scale={scale!r}, not both")
        if scale is None and orders_per_day is None:
            orders_per_day = 200
        if orders_per_day is not None and orders_per_day < 0:
            raise ValueError(f"orders_per_day={orders_per_day!r} must be >= 0")
        if scale is not None and scale < 0:
            raise ValueError(f"scale={scale!r} must be >= 0")
        end_date = self.end_date
        if end_date is None:
            end_date = clock.now().date() - timedelta(days=1)
        start = end_date - timedelta(days=self.days - 1)
        return _Plan(self.seed, start, self.days, orders_per_day, scale)


def generate(
    url: str,
    *,
    seed: int = 42,
    days: int = 60,
    end_date: date | None = None,
    orders_per_day: int | None = None,
    scale: int | None = None,
    payments_db: str | Path | None = None,
    batch_size: int = 10_000,
    if_exists: str = "skip",
) -> dict[str, Any]:
    """Fill an empty source with `days` days of orders ending on `end_date` (UTC).

    `orders_per_day` (default 200) or `scale` (total orders spread over the days).
    `if_exists`: "skip" leaves a source that already holds data untouched,
    "replace" drops and recreates the tables (and the payments table).
    """
    options = _GenerateOptions(
        seed, days, end_date, orders_per_day, scale, payments_db, batch_size, if_exists
    )
    plan = options.plan()
    started = _time.perf_counter()
    engine = make_engine(url)
    summary: dict[str, Any] = {
        "url": _safe_url(engine),
        "seed": seed,
        "start_date": plan.start.isoformat(),
        "end_date": plan.end.isoformat(),
        "days": days,
        "payments_db": str(payments_db) if payments_db else None,
    }
    try:
        if if_exists == "skip" and source_has_data(engine):
            return summary | {
                "skipped": True,
                "message": "source already holds data: left unchanged (use --if-exists replace)",
            }
        if if_exists == "replace":
            metadata.drop_all(engine)
        metadata.create_all(engine)
        counts = _write_source(engine, plan, options)
    finally:
        engine.dispose()
    return summary | {
        "skipped": False,
        "rows": counts,
        "seconds": round(_time.perf_counter() - started, 3),
    }


def _write_source(engine: Engine, plan: _Plan, options: _GenerateOptions) -> dict[str, int]:
    """Write the users, products, orders (with items) and payments of `plan`; row counts."""
    pay_db = None
    if options.payments_db is not None:
        pay_db = open_payments(options.payments_db)
        # The store mirrors this source: stale payments of an older source must go.
        pay_db.execute("DELETE FROM payments")
        pay_db.commit()
    try:
        writer = _Writer(engine, pay_db, options.batch_size)
        for row in _users(plan):
            writer.add(users, row)
        catalog: list[tuple[int, int]] = []
        for row in _products(plan):
            catalog.append((row[0], _decimal_to_cents(row[4])))
            writer.add(products, row)
        _write_orders(writer, plan, catalog)
        writer.flush()
    finally:
        if pay_db is not None:
            pay_db.close()
    return writer.counts


def _write_orders(writer: _Writer, plan: _Plan, catalog: Sequence[tuple[int, int]]) -> None:
    """Every day's orders in id order, each day from its own seeded RNG."""
    ctx = _OrderContext(plan.end_ts, plan.end, plan.n_users, catalog)
    order_id, item_id = 1, 1
    for index in range(plan.days):
        day = plan.start + timedelta(days=index)
        rng = random.Random(f"{plan.seed}:orders:{day.isoformat()}")
        for created, inserted in _day_times(rng, day, plan.orders_on(index)):
            order = _build_order(rng, ctx, (order_id, item_id), created, inserted)
            writer.add_order(order)
            order_id += 1
            item_id += len(order.items)


# ---------------------------------------------------------------------------- next day

_NEXT_STATUS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "pending": (("paid", "cancelled"), (70, 30)),
    "paid": (("shipped", "refunded"), (85, 15)),
    "shipped": (("delivered",), (1,)),
    "delivered": (("refunded", ""), (25, 75)),  # "" = stays delivered
}
_MAX_SAMPLE = 2_000  # keep IN (...) lists well under every driver's parameter limit


def _days_of(conn: Connection, where: sa.ColumnElement[bool]) -> set[date]:
    """UTC days of orders.created_at matching `where` (over orders joined to items)."""
    query = (
        sa.select(orders.c.created_at)
        .select_from(orders.outerjoin(order_items, order_items.c.order_id == orders.c.id))
        .where(where)
        .distinct()
    )
    return {_naive_utc(ts).date() for (ts,) in conn.execute(query)}


def _max_id(conn: Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0


def apply_next_day(
    url: str,
    *,
    seed: int = 43,
    date: date | None = None,  # noqa: A002 - the CLI flag is --date
    payments_db: str | Path | None = None,
    orders_per_day: int | None = None,
) -> dict[str, Any]:
    """Play one more day on an existing source; returns what changed and the days touched.

    `date` defaults to the day after the latest orders.created_at. New orders default
    to as many as on the latest day (at least 10).
    """
    engine = make_engine(url)
    try:
        with warnings.catch_warnings():
            # SQLite hands NUMERIC back as float; we round to cents ourselves.
            warnings.filterwarnings("ignore", message=".*Decimal objects natively.*")
            return _apply_next_day(engine, seed, date, payments_db, orders_per_day)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class _SourceState:
    """What the next day starts from: the latest orders.created_at day, how many orders
    that day has, the largest ids, and the products ((id, USD cents) and their category)."""

    latest_day: date
    orders_on_latest_day: int
    max_user: int
    max_order: int
    max_item: int
    catalog: list[tuple[int, int]]
    product_cats: dict[int, str]


# The kinds of change of a next day, as its summary's touched_days_by_kind lists them.
_CHANGE_KINDS = (
    "new_orders",
    "late_orders",
    "status_updates",
    "category_moves",
    "region_moves",
    "item_deletes",
)


@dataclass
class _NextDay:
    """Shared context of one next-day run: its seeded RNG, the day played, the source it
    starts from, how many new orders, and the business days each kind of change touched."""

    rng: random.Random
    day: date
    source: _SourceState
    n_new: int
    touched: dict[str, set[date]] = field(
        default_factory=lambda: {kind: set() for kind in _CHANGE_KINDS}
    )

    @property
    def day0(self) -> datetime:
        return _day_start(self.day)

    def moment(self) -> datetime:
        """A random instant of the day (one RNG draw)."""
        return self.day0 + timedelta(microseconds=self.rng.randrange(DAY_US))

    def at_day(self, after: datetime) -> datetime:
        """A random instant of the day, past `after`: updated_at only moves forward, even
        if --date is not after the data."""
        return max(self.moment(), after + timedelta(microseconds=1))


def _apply_next_day(
    engine: Engine,
    seed: int,
    day: date | None,
    payments_db: str | Path | None,
    orders_per_day: int | None,
) -> dict[str, Any]:
    """`apply_next_day` on an open engine: its steps run in a fixed order, since they
    draw from one seeded RNG (the same seed and source give the same day)."""
    source = _read_source(engine)
    if day is None:
        day = source.latest_day + timedelta(days=1)
    n_new = orders_per_day if orders_per_day is not None else max(10, source.orders_on_latest_day)
    nd = _NextDay(random.Random(f"{seed}:next-day:{day.isoformat()}"), day, source, n_new)
    new_users = _new_users(nd)
    new_orders, late_ids = _new_orders(nd, source.max_user + len(new_users))
    payments: list[tuple] = [o.payment for o in new_orders if o.payment is not None]
    with engine.begin() as conn:
        _insert_new_rows(conn, new_users, new_orders)
        status_updates = _update_statuses(conn, nd, payments)
        category_moves = _move_categories(conn, nd)
        region_moves = _move_regions(conn, nd)
        deleted = _delete_items(conn, nd)
    if payments_db is not None:
        pay_db = open_payments(payments_db)
        try:
            upsert_payments(pay_db, payments)
        finally:
            pay_db.close()

    all_days = set().union(*nd.touched.values())
    return {
        "url": _safe_url(engine),
        "seed": seed,
        "date": day.isoformat(),
        "new_users": len(new_users),
        "new_orders": len(new_orders) - len(late_ids),
        "late_orders": len(late_ids),
        "late_order_ids": late_ids,
        "new_order_items": sum(len(o.items) for o in new_orders),
        "status_updates": status_updates,
        "category_moves": category_moves,
        "region_moves": region_moves,
        "deleted_item_ids": sorted(deleted),
        "payments_written": len(payments) if payments_db is not None else 0,
        "touched_days": sorted(d.isoformat() for d in all_days),
        "touched_days_by_kind": {
            k: sorted(d.isoformat() for d in v) for k, v in nd.touched.items()
        },
    }


def _read_source(engine: Engine) -> _SourceState:
    """The source's latest day, sizes and products; ValueError when it has no orders,
    users or products to build on."""
    with engine.connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(orders.c.created_at))).scalar()
        if latest is None:
            raise ValueError(f"{_safe_url(engine)}: no orders in the source; run generate first")
        latest_day = _naive_utc(latest).date()
        start = _day_start(latest_day)
        n_prev = conn.execute(
            sa.select(sa.func.count())
            .select_from(orders)
            .where(orders.c.created_at >= start, orders.c.created_at < start + timedelta(days=1))
        ).scalar_one()
        catalog = [
            (pid, _decimal_to_cents(price))
            for pid, price in conn.execute(
                sa.select(products.c.id, products.c.price).order_by(products.c.id)
            )
        ]
        product_cats = {
            pid: cat
            for pid, cat in conn.execute(
                sa.select(products.c.id, products.c.category).order_by(products.c.id)
            )
        }
        source = _SourceState(
            latest_day,
            n_prev,
            _max_id(conn, users),
            _max_id(conn, orders),
            _max_id(conn, order_items),
            catalog,
            product_cats,
        )
    if not catalog or source.max_user == 0:
        raise ValueError(f"{_safe_url(engine)}: source has no users or products")
    return source


def _new_users(nd: _NextDay) -> list[tuple]:
    """Users signing up on the day (some with NULL/blank regions, fixed by id)."""
    first = nd.source.max_user + 1
    rows = []
    for uid in range(first, first + max(1, nd.n_new // 50)):
        ts = nd.moment()
        rows.append(_user_row(nd.rng, uid, ts, ts))
    return rows


def _new_orders(nd: _NextDay, n_users: int) -> tuple[list[_Order], list[int]]:
    """The day's orders and late ones (created 1-5 days before), ids in insertion order,
    and the late ones' ids; their days go to touched["late_orders"]."""
    rng, day = nd.rng, nd.day
    if nd.n_new:
        nd.touched["new_orders"].add(day)
    times = _day_times(rng, day, nd.n_new)
    for _ in range(max(1, nd.n_new // 20)):
        inserted = nd.moment()
        created = _day_start(day - timedelta(days=rng.randint(1, 5))) + timedelta(
            microseconds=rng.randrange(DAY_US)
        )
        times.append((created, inserted))
    times.sort(key=lambda pair: pair[1])
    end_ts = nd.day0 + timedelta(microseconds=DAY_US - 1)
    ctx = _OrderContext(end_ts, day, n_users, nd.source.catalog)
    new_orders: list[_Order] = []
    late_ids: list[int] = []
    item_id = nd.source.max_item + 1
    for k, (created, inserted) in enumerate(times):
        order = _build_order(rng, ctx, (nd.source.max_order + 1 + k, item_id), created, inserted)
        item_id += len(order.items)
        new_orders.append(order)
        if created.date() < day:
            late_ids.append(order.row[0])
            nd.touched["late_orders"].add(created.date())
    return new_orders, late_ids


def _insert_new_rows(conn: Connection, new_users: list[tuple], new_orders: list[_Order]) -> None:
    """Insert the day's users, orders and their items."""
    if new_users:
        insert_rows(conn, users, new_users)
    insert_rows(conn, orders, [o.row for o in new_orders])
    items = [it for o in new_orders for it in o.items]
    if items:
        insert_rows(conn, order_items, items)


def _status_changes(conn: Connection, nd: _NextDay) -> list[tuple]:
    """A sample of older orders moving along their life cycle (at least one when any can),
    as (id, old status, new status, currency, total, created_at, updated_at)."""
    rng, max_order = nd.rng, nd.source.max_order
    sample = rng.sample(
        range(1, max_order + 1), min(max_order, max(10, nd.n_new // 4), _MAX_SAMPLE)
    )
    cols = (orders.c.id, orders.c.status, orders.c.currency, orders.c.total,
            orders.c.created_at, orders.c.updated_at)  # fmt: skip
    candidates = conn.execute(
        sa.select(*cols)
        .where(orders.c.id.in_(sample), orders.c.status.in_(tuple(_NEXT_STATUS)))
        .order_by(orders.c.id)
    ).all()
    changes = []
    for oid, status, currency, total, created, updated in candidates:
        choices, weights = _NEXT_STATUS[status]
        new_status = rng.choices(choices, weights)[0]
        if new_status:
            changes.append((oid, status, new_status, currency, total, created, updated))
    if not changes and candidates:  # always show at least one status change
        oid, status, currency, total, created, updated = candidates[0]
        changes.append((oid, status, _NEXT_STATUS[status][0][0], currency, total, created, updated))  # fmt: skip
    return changes


def _update_statuses(conn: Connection, nd: _NextDay, payments: list[tuple]) -> list[dict[str, Any]]:
    """Apply `_status_changes`; their payments (paid, refunded, some failed) go to
    `payments`. Returns the changes as the summary lists them."""
    rng = nd.rng
    status_updates: list[dict[str, Any]] = []
    for oid, old, new, currency, total, created, updated in _status_changes(conn, nd):
        ts = nd.at_day(_naive_utc(updated))
        conn.execute(
            orders.update().where(orders.c.id == oid).values(status=new, updated_at=_bind_ts(conn, ts))
        )  # fmt: skip
        created = _naive_utc(created)
        nd.touched["status_updates"].add(created.date())
        status_updates.append({"order_id": oid, "from": old, "to": new, "day": created.date().isoformat()})  # fmt: skip
        pay_status = {"paid": "succeeded", "refunded": "refunded"}.get(new)
        if new == "cancelled" and rng.random() < P_FAILED_PAYMENT:
            pay_status = "failed"
        if pay_status:
            pay_created = ts if new != "refunded" else created + timedelta(minutes=1)
            charge = _Charge(oid, _decimal_to_cents(total), currency)
            payments.append(
                _payment_row(charge, pay_status, rng.choice(METHODS), min(pay_created, ts), ts)
            )
    return status_updates


def _move_categories(conn: Connection, nd: _NextDay) -> list[dict[str, Any]]:
    """One to three products move to another category (restating their orders' days)."""
    rng, catalog = nd.rng, nd.source.catalog
    moves: list[dict[str, Any]] = []
    for pid, _ in rng.sample(catalog, min(len(catalog), rng.randint(1, 3))):
        old_cat = nd.source.product_cats[pid]
        new_cat = rng.choice([c for c in CATEGORIES if c != old_cat])
        conn.execute(
            products.update().where(products.c.id == pid)
            .values(category=new_cat, updated_at=_bind_ts(conn, nd.moment()))
        )  # fmt: skip
        moves.append({"product_id": pid, "from": old_cat, "to": new_cat})
        nd.touched["category_moves"] |= _days_of(conn, order_items.c.product_id == pid)
    return moves


def _move_regions(conn: Connection, nd: _NextDay) -> list[dict[str, Any]]:
    """One to three older users move to another region, some to a NULL/blank one."""
    rng, max_user = nd.rng, nd.source.max_user
    moves: list[dict[str, Any]] = []
    for uid in rng.sample(range(1, max_user + 1), min(max_user, rng.randint(1, 3))):
        old_region = conn.execute(sa.select(users.c.region).where(users.c.id == uid)).scalar()
        options: list[str | None] = [r for r in REGIONS if r != old_region]
        if rng.random() < 0.2:
            options = [None, "", "  "]
        new_region = rng.choice(options)
        conn.execute(
            users.update().where(users.c.id == uid)
            .values(region=new_region, updated_at=_bind_ts(conn, nd.moment()))
        )  # fmt: skip
        moves.append({"user_id": uid, "from": old_region, "to": new_region})
        nd.touched["region_moves"] |= _days_of(conn, orders.c.user_id == uid)
    return moves


def _delete_items(conn: Connection, nd: _NextDay) -> list[int]:
    """Hard deletes of a few older order items (ids drawn until enough exist, at most five
    tries); the order rows are left as they were. Returns the deleted ids."""
    max_item = nd.source.max_item
    n_del = max(1, nd.n_new // 20)
    deleted: list[int] = []
    for _attempt in range(5):
        if len(deleted) >= n_del or max_item == 0:
            break
        want = nd.rng.sample(
            range(1, max_item + 1), min(max_item, n_del - len(deleted), _MAX_SAMPLE)
        )
        found = conn.execute(
            sa.select(order_items.c.id, orders.c.created_at)
            .select_from(order_items.outerjoin(orders, orders.c.id == order_items.c.order_id))
            .where(order_items.c.id.in_(want))
            .order_by(order_items.c.id)
        ).all()  # fmt: skip
        if found:
            ids = [iid for iid, _ in found]
            conn.execute(order_items.delete().where(order_items.c.id.in_(ids)))
            deleted.extend(ids)
            nd.touched["item_deletes"] |= {_naive_utc(ts).date() for _, ts in found if ts}
    return deleted


def _bind_ts(conn: Connection, ts: datetime) -> datetime:
    """Naive UTC for SQLite/MySQL, aware UTC for PostgreSQL timestamptz."""
    return ts.replace(tzinfo=UTC) if conn.dialect.name == "postgresql" else ts


# ---------------------------------------------------------------------------- CLI


def _build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m demo.generator", description="Deterministic demo source generator."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="fill an empty source with N days of orders")
    gen.add_argument("--url", required=True, help="SQLAlchemy URL of the source database")
    gen.add_argument("--seed", type=int, default=42, help="random seed (same seed, same data)")
    gen.add_argument("--days", type=int, default=60, help="days of history (default 60)")
    gen.add_argument("--end-date", help="last day, YYYY-MM-DD (default: yesterday UTC)")
    size = gen.add_mutually_exclusive_group()
    size.add_argument("--orders-per-day", type=int, help="orders per day (default 200)")
    size.add_argument("--scale", type=int, help="total orders, spread over the days")
    gen.add_argument("--payments-db", help="also write the payments store (SQLite file)")
    gen.add_argument("--batch-size", type=int, default=10_000, help="rows per insert")
    gen.add_argument(
        "--if-exists",
        choices=("skip", "replace"),
        default="skip",
        help="a source that already has data: leave it (skip, default) or rebuild it",
    )

    nxt = sub.add_parser("next-day", help="apply one more day to an existing source")
    nxt.add_argument("--url", required=True, help="SQLAlchemy URL of the source database")
    nxt.add_argument("--seed", type=int, default=43, help="random seed of the day's changes")
    nxt.add_argument("--date", help="YYYY-MM-DD (default: day after the latest order)")
    nxt.add_argument("--orders-per-day", type=int, help="new orders (default: as the last day)")
    nxt.add_argument("--payments-db", help="payments store (SQLite file) to update")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _build_parser(prog).parse_args(argv)
    try:
        if args.command == "generate":
            end = _parse_date(args.end_date, "--end-date") if args.end_date else None
            summary = generate(
                args.url,
                seed=args.seed,
                days=args.days,
                end_date=end,
                orders_per_day=args.orders_per_day,
                scale=args.scale,
                payments_db=args.payments_db,
                batch_size=args.batch_size,
                if_exists=args.if_exists,
            )
            if summary["skipped"]:
                print(f"demo.generator: {summary['message']}", file=sys.stderr)
        else:
            day = _parse_date(args.date, "--date") if args.date else None
            summary = apply_next_day(
                args.url,
                seed=args.seed,
                date=day,
                payments_db=args.payments_db,
                orders_per_day=args.orders_per_day,
            )
    except ValueError as exc:
        print(f"demo.generator: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
