"""extract_payments / extract_fx_rates: real demo API in, landing Parquet + quarantine out."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from demo.api import PAYMENTS_DDL, FaultConfig, create_app, serve_in_thread
from demo.fx import rates_for
from extract.api_client import PaymentsApiClient
from extract.api_extract import (
    FX_SCHEMA,
    PAYMENTS_SCHEMA,
    RecordError,
    extract_fx_rates,
    extract_payments,
    parse_rate,
    validate_payment,
)
from pipeline.settings import ApiConfig

TOKEN = "extract-test-token-xyz"
START = datetime(2024, 3, 1, tzinfo=UTC)
N = 30


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_payments_db(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(PAYMENTS_DDL)
    for i in range(n):
        updated = START + timedelta(minutes=i)
        conn.execute(
            "INSERT INTO payments VALUES (?, ?, ?, ?, 'succeeded', 'card', ?, ?)",
            (
                f"pay_{i:05d}",
                100 + i,
                f"{i}.{i:02d}",
                "EUR",
                _ts(updated - timedelta(days=1)),
                _ts(updated),
            ),
        )
    conn.commit()
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "payments.db"
    make_payments_db(path, N)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "landing", tmp_path / "quarantine"


def _client(url: str) -> PaymentsApiClient:
    return PaymentsApiClient(ApiConfig(base_url=url, token=TOKEN), backoff_base=0.01)


def _serve(db: Path, faults: FaultConfig | None = None) -> Any:
    return serve_in_thread(create_app(db, TOKEN, faults))


def _run_dir(landing: Path, table: str, run_id: str) -> Path:
    return landing / "payments_api" / table / f"run={run_id}"


def _extract(url: str, roots: tuple[Path, Path], run_id: str = "2024-03-02", **kw) -> dict:
    with _client(url) as client:
        return extract_payments(
            client, run_id=run_id, landing_root=roots[0], quarantine_root=roots[1], **kw
        )


@pytest.fixture
def server(db: Path) -> Iterator[str]:
    with _serve(db) as url:
        yield url


def test_payments_land_with_exact_schema(server: str, roots: tuple[Path, Path]) -> None:
    manifest = _extract(server, roots, page_size=7)
    run = _run_dir(roots[0], "payments", "2024-03-02")
    assert sorted(p.name for p in run.iterdir()) == ["_manifest.json", "part-00000.parquet"]
    table = pq.read_table(run / "part-00000.parquet")
    assert table.schema.equals(PAYMENTS_SCHEMA)
    assert table.num_rows == N == manifest["rows"]
    assert manifest["quarantined"] == 0 and manifest["duplicates_dropped"] == 0
    assert manifest["pages"] == 5
    assert json.loads((run / "_manifest.json").read_text())["rows"] == N
    first = table.slice(0, 1).to_pylist()[0]
    assert first["amount"] == Decimal("0.00")
    assert table.column("amount").to_pylist()[12] == Decimal("12.12")
    assert first["updated_at"] == START and first["updated_at"].tzinfo is not None
    assert manifest["min_cursor"] == START.isoformat()
    assert not (roots[1] / "payments_api").exists()


def test_updated_since_is_passed_through(server: str, roots: tuple[Path, Path]) -> None:
    manifest = _extract(server, roots, updated_since=START + timedelta(minutes=25))
    assert manifest["rows"] == 5


def test_repeated_page_is_deduplicated(db: Path, roots: tuple[Path, Path]) -> None:
    with _serve(db, FaultConfig(modes=frozenset({"repeat_page"}), every=2)) as url:
        manifest = _extract(url, roots, page_size=6)
    assert manifest["duplicates_dropped"] >= 2 and manifest["received"] > N
    table = pq.read_table(_run_dir(roots[0], "payments", "2024-03-02"))
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N


def test_malformed_record_is_quarantined(db: Path, roots: tuple[Path, Path]) -> None:
    with _serve(db, FaultConfig(modes=frozenset({"malformed"}), every=2)) as url:
        manifest = _extract(url, roots, page_size=10)  # page 2 gets one broken record
    assert manifest["quarantined"] == 1 and manifest["rows"] == N - 1
    qfile = roots[1] / "payments_api" / "payments" / "run=2024-03-02.jsonl"
    lines = [json.loads(line) for line in qfile.read_text().splitlines()]
    assert len(lines) == 1
    bad = lines[0]
    assert bad["field"] == "amount" and bad["source"] == "payments_api"
    assert bad["table"] == "payments" and bad["run_id"] == "2024-03-02"
    assert bad["record_key"] == bad["record"]["id"]
    assert bad["error"]
    landed = pq.read_table(_run_dir(roots[0], "payments", "2024-03-02")).column("id").to_pylist()
    assert bad["record_key"] not in landed


def test_extract_survives_all_faults(db: Path, roots: tuple[Path, Path]) -> None:
    faults = FaultConfig(
        modes=frozenset({"rate_limit", "server_error", "slow", "repeat_page"}),
        every=3,
        retry_after=0,
        slow_seconds=0.1,
    )
    with _serve(db, faults) as url:
        manifest = _extract(url, roots, page_size=4)
        stats = httpx.get(url + "/_admin/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert manifest["rows"] == N and manifest["quarantined"] == 0
    assert {"429", "500"} <= set(stats.json()["by_status"])


def test_rerun_replaces_the_run(db: Path, roots: tuple[Path, Path]) -> None:
    with _serve(db, FaultConfig(modes=frozenset({"malformed"}), every=1)) as url:
        _extract(url, roots, page_size=10)
    qfile = roots[1] / "payments_api" / "payments" / "run=2024-03-02.jsonl"
    assert qfile.exists()
    with _serve(db) as url:
        first = _extract(url, roots, page_size=10)
        second = _extract(url, roots, page_size=10)
    run = _run_dir(roots[0], "payments", "2024-03-02")
    assert first["files"] == second["files"] == ["part-00000.parquet"]
    assert first["checksum_sha256"] == second["checksum_sha256"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["run=2024-03-02"]  # no temp dirs
    assert pq.read_table(run).num_rows == N
    assert not qfile.exists()  # the clean rerun removed the stale quarantine file


class FakeClient:
    """Stands in for PaymentsApiClient: fixed pages and fx answers."""

    def __init__(self, pages: list[list[Any]] | None = None, fx: dict | None = None) -> None:
        self.pages = pages or []
        self.fx = fx or {}
        self.fx_calls: list[date] = []

    def iter_payment_pages(self, updated_since: datetime | None, limit: int = 500):
        yield from self.pages

    def get_fx_rates(self, day: date) -> dict:
        self.fx_calls.append(day)
        return self.fx.get(day) or {"base": "USD", "date": day.isoformat(), "rates": rates_for(day)}


def _payment(pid: str = "p1", **overrides: Any) -> dict:
    record = {
        "id": pid,
        "order_id": 1,
        "amount": "10.50",
        "currency": "USD",
        "status": "succeeded",
        "method": "card",
        "created_at": "2024-03-01T00:00:00.000000Z",
        "updated_at": "2024-03-01T01:00:00.000000Z",
    }
    record.update(overrides)
    return record


def test_latest_updated_at_wins_and_extra_fields_dropped(roots: tuple[Path, Path]) -> None:
    newer = _payment(status="refunded", updated_at="2024-03-02T00:00:00+00:00", extra="x")
    client = FakeClient([[newer, _payment("p2")], [_payment()]])
    manifest = extract_payments(
        client, run_id="r1", landing_root=roots[0], quarantine_root=roots[1]
    )  # type: ignore[arg-type]
    assert manifest["duplicates_dropped"] == 1
    rows = pq.read_table(_run_dir(roots[0], "payments", "r1")).to_pylist()
    assert [(r["id"], r["status"]) for r in rows] == [("p2", "succeeded"), ("p1", "refunded")]
    assert "extra" not in rows[0]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"amount": "1.234"}, "amount"),
        ({"amount": "-1.00"}, "amount"),
        ({"amount": 10.5}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "1_000"}, "amount"),
        ({"order_id": "7"}, "order_id"),
        ({"order_id": True}, "order_id"),
        ({"id": ""}, "id"),
        ({"currency": None}, "currency"),
        ({"updated_at": "yesterday"}, "updated_at"),
        ({"created_at": 1709251200}, "created_at"),
    ],
)
def test_validation_names_the_bad_field(overrides: dict, field: str) -> None:
    with pytest.raises(RecordError) as info:
        validate_payment(_payment(**overrides))
    assert info.value.field == field


def test_validation_accepts_good_amounts() -> None:
    assert validate_payment(_payment(amount="7"))["amount"] == Decimal("7.00")
    assert validate_payment(_payment(amount="7.500"))["amount"] == Decimal("7.50")
    with pytest.raises(RecordError) as info:
        validate_payment(["not", "a", "dict"])
    assert info.value.field is None


def test_fx_rates_land_exactly_and_are_cached(server: str, roots: tuple[Path, Path]) -> None:
    landing = roots[0]
    days = [date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1), date(2024, 2, 29)]
    with _client(server) as client:
        manifest = extract_fx_rates(client, days=days, run_id="2024-03-01", landing_root=landing)
    assert manifest["days"] == 3 and manifest["fetched"] == 3 and manifest["cache_hits"] == 0
    table = pq.read_table(_run_dir(landing, "fx_rates", "2024-03-01") / "part-00000.parquet")
    assert table.schema.equals(FX_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == 3 * len(rates_for(date(2024, 3, 1))) == manifest["rows"]
    for row in rows:
        assert row["base"] == "USD"
        assert row["rate"] == Decimal(rates_for(row["rate_date"])[row["currency"]])
    assert {r["rate"] for r in rows if r["currency"] == "USD"} == {Decimal(1)}
    cache = landing / "payments_api" / "fx_rates" / "_cache"
    assert sorted(p.name for p in cache.iterdir()) == [
        "2024-02-28.json",
        "2024-02-29.json",
        "2024-03-01.json",
    ]
    client = FakeClient()
    again = extract_fx_rates(client, days=days, run_id="2024-03-01", landing_root=landing)  # type: ignore[arg-type]
    assert client.fx_calls == [] and again["cache_hits"] == 3
    assert again["checksum_sha256"] == manifest["checksum_sha256"]


def test_fx_today_is_not_cached(roots: tuple[Path, Path]) -> None:
    today = datetime.now(UTC).date()
    client = FakeClient()
    for _ in range(2):
        extract_fx_rates(client, days=[today], run_id="t", landing_root=roots[0])  # type: ignore[arg-type]
    assert client.fx_calls == [today, today]


@pytest.mark.parametrize(
    "raw, why",
    [
        ("0.1234567890123456789", "more than 18 decimals"),
        ("-1", "positive"),
        ("abc", "number"),
        ("0", "positive"),
        (0.9, "decimal string"),
    ],
)
def test_bad_fx_rate_raises_naming_day_and_currency(
    roots: tuple[Path, Path], raw: Any, why: str
) -> None:
    day = date(2024, 1, 5)
    fx = {day: {"base": "USD", "date": "2024-01-05", "rates": {"USD": "1", "EUR": raw}}}
    with pytest.raises(ValueError, match=why) as info:
        extract_fx_rates(FakeClient(fx=fx), days=[day], run_id="x", landing_root=roots[0])  # type: ignore[arg-type]
    assert "2024-01-05" in str(info.value) and "EUR" in str(info.value)
    assert not (roots[0] / "payments_api" / "fx_rates" / "run=x").exists()
    assert not (roots[0] / "payments_api" / "fx_rates" / "_cache" / "2024-01-05.json").exists()


def test_parse_rate_is_exact() -> None:
    day = date(2024, 1, 1)
    assert parse_rate("0.123456789012345678", day=day, currency="EUR") == Decimal(
        "0.123456789012345678"
    )
    assert parse_rate("148.5000000000000000000", day=day, currency="JPY") == Decimal("148.5")
