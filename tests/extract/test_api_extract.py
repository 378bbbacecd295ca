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

from core import clock
from core.http_retry import RetryPolicy
from core.settings import ApiConfig
from demo.api import PAYMENTS_DDL, FaultConfig, create_app, serve_in_thread
from demo.fx import rates_for
from extract.api_client import PaymentsApiClient
from extract.api_extract import (
    FX_SCHEMA,
    PAYMENTS_SCHEMA,
    FxPlan,
    PaymentsPlan,
    RecordError,
    WatermarkJumpError,
    extract_fx_rates,
    extract_payments,
    parse_rate,
    validate_payment,
)

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
    return PaymentsApiClient(
        ApiConfig(base_url=url, token=TOKEN), retry=RetryPolicy(backoff_base=0.01)
    )


def _serve(db: Path, faults: FaultConfig | None = None) -> Any:
    return serve_in_thread(create_app(db, TOKEN, faults))


def _qfile(quarantine: Path, run_id: str, attempt: int = 1) -> Path:
    """The quarantine file of one attempt of a run (each attempt writes its own)."""
    return (
        quarantine / "payments_api" / "payments" / f"run={run_id}" / f"attempt={attempt:03d}.jsonl"
    )


def _run_dir(landing: Path, table: str, run_id: str) -> Path:
    return landing / "payments_api" / table / f"run={run_id}"


def _extract(url: str, roots: tuple[Path, Path], run_id: str = "2024-03-02", **kw) -> dict:
    with _client(url) as client:
        return extract_payments(
            client,
            PaymentsPlan(run_id=run_id, landing_root=roots[0], quarantine_root=roots[1], **kw),
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
    since = START + timedelta(minutes=25)
    manifest = _extract(server, roots, updated_since=since, overlap=timedelta(0))
    assert manifest["rows"] == 5
    assert manifest["window_start"] == since.isoformat()


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
    qfile = _qfile(roots[1], "2024-03-02")
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
    qfile = _qfile(roots[1], "2024-03-02")
    assert qfile.exists()
    with _serve(db) as url:
        first = _extract(url, roots, page_size=10)
        second = _extract(url, roots, page_size=10)
    run = _run_dir(roots[0], "payments", "2024-03-02")
    assert first["files"] == second["files"] == ["part-00000.parquet"]
    assert first["checksum_sha256"] == second["checksum_sha256"]
    # no temp dirs; the pointer to the newest landing is not a run
    assert sorted(p.name for p in run.parent.iterdir()) == ["_latest.json", "run=2024-03-02"]
    assert pq.read_table(run).num_rows == N
    # the clean reruns wrote no quarantine file and kept the earlier attempt's
    assert qfile.exists() and sorted(p.name for p in qfile.parent.iterdir()) == [qfile.name]
    assert not (run / "_quarantine.jsonl").exists()


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
        client,
        PaymentsPlan(run_id="r1", landing_root=roots[0], quarantine_root=roots[1]),
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
        manifest = extract_fx_rates(
            client,
            FxPlan(days=days, run_id="2024-03-01", landing_root=landing),
        )
        api_url = client.base_url
    assert manifest["days"] == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert manifest["fetched"] == 3 and manifest["cache_hits"] == 0
    table = pq.read_table(_run_dir(landing, "fx_rates", "2024-03-01") / "part-00000.parquet")
    assert table.schema.equals(FX_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == 3 * len(rates_for(date(2024, 3, 1))) == manifest["rows"]
    for row in rows:
        assert row["base"] == "USD"
        assert row["rate"] == Decimal(rates_for(row["rate_date"])[row["currency"]])
    assert {r["rate"] for r in rows if r["currency"] == "USD"} == {Decimal(1)}
    cache = landing / "payments_api" / "fx_rates" / "_cache"
    (per_api,) = cache.iterdir()  # one cache per API
    assert sorted(p.name for p in per_api.iterdir()) == [
        "2024-02-28.json",
        "2024-02-29.json",
        "2024-03-01.json",
    ]
    client = FakeClient()
    client.base_url = api_url  # type: ignore[attr-defined]
    again = extract_fx_rates(
        client,
        FxPlan(days=days, run_id="2024-03-01", landing_root=landing),
    )  # type: ignore[arg-type]
    assert client.fx_calls == [] and again["cache_hits"] == 3
    assert again["checksum_sha256"] == manifest["checksum_sha256"]
    # another API's rates are never served from this cache
    other = FakeClient()
    other.base_url = "http://127.0.0.1:1"  # type: ignore[attr-defined]
    fresh = extract_fx_rates(
        other,
        FxPlan(days=days, run_id="2024-03-01", landing_root=landing),
    )  # type: ignore[arg-type]
    assert fresh["cache_hits"] == 0 and len(other.fx_calls) == 3


def test_fx_today_is_not_cached(roots: tuple[Path, Path]) -> None:
    today = clock.now().date()  # the pipeline's clock (NIGHTSHIFT_NOW moves it)
    client = FakeClient()
    for _ in range(2):
        extract_fx_rates(
            client,
            FxPlan(days=[today], run_id="t", landing_root=roots[0]),
        )  # type: ignore[arg-type]
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
        extract_fx_rates(
            FakeClient(fx=fx),
            FxPlan(days=[day], run_id="x", landing_root=roots[0]),
        )  # type: ignore[arg-type]
    assert "2024-01-05" in str(info.value) and "EUR" in str(info.value)
    assert not (roots[0] / "payments_api" / "fx_rates" / "run=x").exists()
    assert not list((roots[0] / "payments_api" / "fx_rates").glob("_cache/*/2024-01-05.json"))


def test_parse_rate_is_exact() -> None:
    day = date(2024, 1, 1)
    assert parse_rate("0.123456789012345678", day=day, currency="EUR") == Decimal(
        "0.123456789012345678"
    )
    assert parse_rate("148.5000000000000000000", day=day, currency="JPY") == Decimal("148.5")


# -- incremental windows, quarantine, threshold -------------------

ALL_FAULTS = FaultConfig(
    modes=frozenset({"rate_limit", "server_error", "slow", "repeat_page"}),
    every=3,
    retry_after=0,
    slow_seconds=0.05,
)


def _landed(landing: Path, run_id: str) -> list[dict]:
    return pq.read_table(_run_dir(landing, "payments", run_id)).to_pylist()


def _touch(db: Path, ids: list[str], updated: datetime, amount: str | None = None) -> None:
    conn = sqlite3.connect(db)
    for pid in ids:
        conn.execute("UPDATE payments SET updated_at = ? WHERE id = ?", (_ts(updated), pid))
        if amount is not None:
            conn.execute("UPDATE payments SET amount = ? WHERE id = ?", (amount, pid))
    conn.commit()
    conn.close()


def _insert(db: Path, pid: str, updated: datetime) -> None:
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO payments VALUES (?, 1, '1.00', 'USD', 'succeeded', 'card', ?, ?)",
        (pid, _ts(updated), _ts(updated)),
    )
    conn.commit()
    conn.close()


def _watermark_via_warehouse(tmp_path: Path, run_id: str, manifest: dict) -> datetime | None:
    """Round-trip the manifest through ops.loaded_runs, as the loader and pipeline do."""
    import duckdb

    from extract.watermark import last_watermark, record_loaded

    warehouse = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse))
    try:
        record_loaded(
            con, source="payments_api", table="payments", run_id=run_id, manifest=manifest
        )
    finally:
        con.close()
    mark = last_watermark(warehouse, "payments_api", "payments")
    return mark.window_end if mark else None


def test_incremental_second_run_reads_only_the_window(
    db: Path, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    with _serve(db, ALL_FAULTS) as url:
        first = _extract(url, roots, run_id="2024-03-02", page_size=4)
        assert first["mode"] == "incremental" and first["window_start"] is None
        assert first["rows"] == N
        last = START + timedelta(minutes=N - 1)
        assert first["window_end"] == last.isoformat()
        watermark = _watermark_via_warehouse(tmp_path, "2024-03-02", first)
        assert watermark == last

        # Between runs: an old payment is refunded, a new one arrives.
        later = last + timedelta(hours=2)
        _touch(db, ["pay_00003"], later)
        _insert(db, "pay_new", later - timedelta(minutes=1))
        second = _extract(url, roots, run_id="2024-03-03", page_size=4, updated_since=watermark)
    window_start = last - timedelta(minutes=15)
    assert second["window_start"] == window_start.isoformat()
    assert second["updated_since"] == last.isoformat()
    assert second["window_end"] == later.isoformat()
    ids = [r["id"] for r in _landed(roots[0], "2024-03-03")]
    # Only updated_at >= watermark - overlap: the overlap (minutes 14..29), plus the changes.
    overlap_ids = [f"pay_{i:05d}" for i in range(N) if START + timedelta(minutes=i) >= window_start]
    assert overlap_ids == [f"pay_{i:05d}" for i in range(14, N)]
    assert sorted(ids) == sorted([*overlap_ids, "pay_new", "pay_00003"])
    assert len(ids) == len(set(ids))  # repeated pages and overlap re-reads deduplicated
    assert second["received"] > second["rows"] == len(ids)


def test_overlap_duplicates_are_deduplicated_latest_wins(roots: tuple[Path, Path]) -> None:
    since = datetime(2024, 3, 1, 2, tzinfo=UTC)
    old = _payment("p1", updated_at="2024-03-01T01:50:00Z")  # re-read by the overlap
    new = _payment("p1", status="refunded", updated_at="2024-03-01T02:05:00Z")
    client = FakeClient([[old, _payment("p2", updated_at="2024-03-01T01:55:00Z")], [new, old]])
    manifest = extract_payments(
        client,  # type: ignore[arg-type]
        PaymentsPlan(
            run_id="r", landing_root=roots[0], quarantine_root=roots[1], updated_since=since
        ),
    )
    rows = _landed(roots[0], "r")
    assert [(r["id"], r["status"]) for r in rows] == [("p2", "succeeded"), ("p1", "refunded")]
    assert manifest["duplicates_dropped"] == 2
    assert manifest["window_start"] == (since - timedelta(minutes=15)).isoformat()
    assert manifest["window_end"] == "2024-03-01T02:05:00+00:00"


def test_window_end_never_goes_backwards(server: str, roots: tuple[Path, Path]) -> None:
    last = START + timedelta(minutes=N - 1)
    # Only overlap records (all older than the watermark): the watermark stays.
    mark = last + timedelta(minutes=5)
    manifest = _extract(server, roots, run_id="a", updated_since=mark)
    assert manifest["rows"] == 11 and manifest["window_end"] == mark.isoformat()
    # Nothing at all in the window: still the previous watermark, never None.
    far = last + timedelta(days=1)
    manifest = _extract(server, roots, run_id="b", updated_since=far)
    assert manifest["rows"] == 0 and manifest["window_end"] == far.isoformat()
    # A naive watermark is UTC.
    manifest = _extract(server, roots, run_id="c", updated_since=far.replace(tzinfo=None))
    assert manifest["window_end"] == far.isoformat()


def test_window_end_counts_landed_records_only(roots: tuple[Path, Path]) -> None:
    def at(minute: int) -> str:
        return f"2024-03-01T00:{minute:02d}:00Z"

    page = [
        _payment("a", updated_at=at(1)),
        _payment("bad_mid", amount="x", updated_at=at(2)),
        _payment("c", updated_at=at(3)),  # same page as a quarantined record: landed
        _payment("bad_last", amount=None, updated_at=at(9)),  # newest, but not landed
    ]
    manifest = extract_payments(
        FakeClient([page, [_payment("d", updated_at=at(4))]]),  # type: ignore[arg-type]
        PaymentsPlan(run_id="r", landing_root=roots[0], quarantine_root=roots[1]),
    )
    assert [r["id"] for r in _landed(roots[0], "r")] == ["a", "c", "d"]
    assert manifest["quarantined"] == 2 and manifest["status"] == "ok"
    # Up to the newest landed record: not past the newest (quarantined) one, so the
    # next run asks for bad_last again; and nothing landed is beyond the watermark.
    assert manifest["window_end"] == "2024-03-01T00:04:00+00:00"


def test_quarantine_beside_partition_and_in_root(db: Path, roots: tuple[Path, Path]) -> None:
    with _serve(db, FaultConfig(modes=frozenset({"malformed"}), every=2)) as url:
        manifest = _extract(url, roots, page_size=10)
    run = _run_dir(roots[0], "payments", "2024-03-02")
    beside = run / "_quarantine.jsonl"
    root_copy = _qfile(roots[1], "2024-03-02")
    assert beside.read_text() == root_copy.read_text()
    (line,) = [json.loads(x) for x in beside.read_text().splitlines()]
    assert line["field"] == "amount" and line["record"]["id"] == line["record_key"]
    assert manifest["extra_files"] == ["_quarantine.jsonl"] and manifest["quarantined"] == 1
    assert manifest["files"] == ["part-00000.parquet"]
    assert pq.read_table(run).num_rows == N - 1  # readers skip the _ file
    # The record landed after the bad one in the same page is there; the watermark is
    # the newest landed record.
    assert manifest["window_end"] == (START + timedelta(minutes=N - 1)).isoformat()

    # A clean rerun of the same run id replaces the directory: no stale quarantine file
    # beside the data; the earlier attempt's file in the quarantine root stays.
    with _serve(db) as url:
        again = _extract(url, roots, page_size=10)
    assert again["quarantined"] == 0 and not beside.exists() and root_copy.exists()
    assert again["quarantine_file"] is None
    assert sorted(p.name for p in run.iterdir()) == ["_manifest.json", "part-00000.parquet"]


def test_quarantined_old_record_returns_only_when_updated(
    db: Path, roots: tuple[Path, Path]
) -> None:
    """Documented limit: a broken record older than window_end - overlap is not re-read."""
    with _serve(db, FaultConfig(modes=frozenset({"malformed"}), every=2)) as url:
        first = _extract(url, roots, run_id="1", page_size=10)  # breaks one record on page 2
    (bad,) = [
        json.loads(x)
        for x in (_run_dir(roots[0], "payments", "1") / "_quarantine.jsonl")
        .read_text()
        .splitlines()
    ]
    bad_id = bad["record_key"]
    watermark = datetime.fromisoformat(first["window_end"])
    assert datetime.fromisoformat(bad["record"]["updated_at"]) < watermark - timedelta(minutes=15)
    with _serve(db) as url:
        second = _extract(url, roots, run_id="2", updated_since=watermark, page_size=10)
        assert bad_id not in [r["id"] for r in _landed(roots[0], "2")]
        _touch(db, [bad_id], watermark + timedelta(minutes=1))  # the API updates it again
        third = _extract(url, roots, run_id="3", updated_since=watermark, page_size=10)
    assert second["quarantined"] == third["quarantined"] == 0
    assert bad_id in [r["id"] for r in _landed(roots[0], "3")]


def test_threshold_exceeded_raises_after_writing(db: Path, roots: tuple[Path, Path]) -> None:
    from extract.api_extract import QuarantineThresholdError

    with _serve(db, FaultConfig(modes=frozenset({"malformed"}), every=1)) as url:
        with pytest.raises(QuarantineThresholdError) as info:
            _extract(url, roots, page_size=10, max_quarantined=2)  # 3 pages, 1 bad each
    err = info.value
    assert err.quarantined == 3 and err.threshold == 2 and err.received == N
    assert "3 of 30" in str(err) and "max_quarantined=2" in str(err)
    assert "amount" in str(err) and len(err.reasons) == 3
    root_copy = _qfile(roots[1], "2024-03-02")
    run = _run_dir(roots[0], "payments", "2024-03-02")
    assert err.quarantine_file == root_copy and f"see {root_copy}" in str(err)
    assert len(root_copy.read_text().splitlines()) == 3
    assert (run / "_quarantine.jsonl").read_text() == root_copy.read_text()
    manifest = json.loads((run / "_manifest.json").read_text())
    assert manifest["status"] == "quarantine_threshold_exceeded" and manifest["quarantined"] == 3


@pytest.mark.parametrize("threshold, fails", [(3, False), (0.05, True), (0.2, False)])
def test_threshold_count_or_share(
    db: Path, roots: tuple[Path, Path], threshold: float, fails: bool
) -> None:
    from extract.api_extract import QuarantineThresholdError

    with _serve(db, FaultConfig(modes=frozenset({"malformed"}), every=1)) as url:
        if fails:  # 3 of 30 = 10% > 5%
            with pytest.raises(QuarantineThresholdError, match="3 of 30"):
                _extract(url, roots, page_size=10, max_quarantined=threshold)
        else:
            manifest = _extract(url, roots, page_size=10, max_quarantined=threshold)
            assert manifest["quarantined"] == 3 and manifest["status"] == "ok"


@pytest.mark.parametrize("threshold", [1.0, 1.5, -1, 0.0, True, "5"])
def test_bad_threshold_is_rejected_before_any_request(
    roots: tuple[Path, Path], threshold: Any
) -> None:
    client = FakeClient([[{"boom": 1}]])
    with pytest.raises((ValueError, TypeError), match="max_quarantined"):
        extract_payments(
            client,  # type: ignore[arg-type]
            PaymentsPlan(
                run_id="r",
                landing_root=roots[0],
                quarantine_root=roots[1],
                max_quarantined=threshold,
            ),
        )
    assert not roots[0].exists() and not roots[1].exists()


def test_fx_fetched_for_every_day_including_restated(server: str, roots: tuple[Path, Path]) -> None:
    landing = roots[0]
    recent = [date(2024, 3, 1), date(2024, 3, 2)]
    restated = [date(2023, 6, 15), date(2024, 1, 31)]  # old days touched by late/changed orders
    with _client(server) as client:
        first = extract_fx_rates(
            client,
            FxPlan(days=recent, run_id="2024-03-02", landing_root=landing),
        )
        second = extract_fx_rates(
            client,
            FxPlan(days=[*restated, *recent], run_id="2024-03-03", landing_root=landing),
        )
    stats = httpx.get(server + "/_admin/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert stats.json()["by_status"] == {"200": 4}  # each day asked once, the rest cached
    assert first["fetched"] == 2 and second["fetched"] == 2 and second["cache_hits"] == 2
    assert second["days"] == ["2023-06-15", "2024-01-31", "2024-03-01", "2024-03-02"]
    table = pq.read_table(_run_dir(landing, "fx_rates", "2024-03-03"))
    assert sorted(set(table.column("rate_date").to_pylist())) == [*restated, *recent]
    for row in table.to_pylist():
        assert row["rate"] == Decimal(rates_for(row["rate_date"])[row["currency"]])


def test_fx_day_missing_a_currency_lands_the_others(roots: tuple[Path, Path]) -> None:
    d1, d2 = date(2024, 1, 5), date(2024, 1, 6)
    fx = {
        d1: {
            "base": "USD",
            "date": "2024-01-05",
            "rates": {"USD": "1", "EUR": "0.9", "JPY": "148"},
        },
        d2: {"base": "USD", "date": "2024-01-06", "rates": {"EUR": "0.91"}},  # no JPY, no USD
    }
    manifest = extract_fx_rates(
        FakeClient(fx=fx),
        FxPlan(days=[d1, d2], run_id="x", landing_root=roots[0]),
    )  # type: ignore[arg-type]
    rows = pq.read_table(_run_dir(roots[0], "fx_rates", "x")).to_pylist()
    assert [(r["rate_date"], r["currency"], r["rate"]) for r in rows] == [
        (d1, "EUR", Decimal("0.9")),
        (d1, "JPY", Decimal(148)),
        (d1, "USD", Decimal(1)),
        (d2, "EUR", Decimal("0.91")),
        (d2, "USD", Decimal(1)),  # the base, by definition
    ]
    assert manifest["missing_currencies"] == {"2024-01-06": ["JPY"]}
    assert manifest["days"] == ["2024-01-05", "2024-01-06"]


def test_conflicting_copy_with_equal_updated_at_is_quarantined(roots: tuple[Path, Path]) -> None:
    """Same id and updated_at, other content: the later read lands, the earlier copy goes
    to the quarantine naming the differing field; an identical copy is a plain duplicate."""
    first = _payment("p1", amount="10.50")
    later = _payment("p1", amount="12.00")
    client = FakeClient([[first, _payment("p2")], [_payment("p2"), later]])
    manifest = extract_payments(
        client,
        PaymentsPlan(run_id="r", landing_root=roots[0], quarantine_root=roots[1]),
    )  # type: ignore[arg-type]
    rows = {r["id"]: r for r in _landed(roots[0], "r")}
    assert rows["p1"]["amount"] == Decimal("12.00")
    assert manifest["duplicates_dropped"] == 1  # the identical p2
    assert manifest["quarantined"] == 1
    entries = [json.loads(line) for line in _qfile(roots[1], "r").read_text().splitlines()]
    assert [(e["record_key"], e["field"], e["record"]["amount"]) for e in entries] == [
        ("p1", "amount", "10.50")
    ]
    assert "conflicting duplicate" in entries[0]["error"]


def _stamp(db: Path, payment_id: str, updated: datetime) -> None:
    conn = sqlite3.connect(db)
    conn.execute("update payments set updated_at = ? where id = ?", (_ts(updated), payment_id))
    conn.commit()
    conn.close()


def test_a_record_from_the_future_is_quarantined_and_never_the_watermark(
    db: Path, server: str, roots: tuple[Path, Path]
) -> None:
    now = START + timedelta(hours=2)  # the run's clock: every generated record is before it
    _stamp(db, "pay_00007", datetime(2099, 1, 1, tzinfo=UTC))
    manifest = _extract(server, roots, now=now)
    assert manifest["rows"] == N - 1 and manifest["quarantined"] == 1
    assert manifest["window_end"] == (START + timedelta(minutes=N - 1)).isoformat()
    [entry] = [json.loads(line) for line in _qfile(roots[1], "2024-03-02").read_text().splitlines()]
    assert entry["record_key"] == "pay_00007" and entry["field"] == "updated_at"
    assert "is later than the run's clock" in entry["error"]
    # within the tolerance (1 h by default) a record lands
    _stamp(db, "pay_00007", now + timedelta(minutes=30))
    assert _extract(server, roots, now=now)["quarantined"] == 0


def test_a_watermark_jump_past_the_limit_fails_before_landing(
    db: Path, server: str, roots: tuple[Path, Path]
) -> None:
    now = START + timedelta(days=90)
    _stamp(db, "pay_00007", START + timedelta(days=60))  # two months after the watermark
    with pytest.raises(
        WatermarkJumpError, match=r"would jump from 2024-03-01.*than 30 days in.* pay_00007"
    ):
        _extract(server, roots, now=now, updated_since=START, run_id="2024-05-01")
    assert not _run_dir(roots[0], "payments", "2024-05-01").exists()
    landed = _extract(server, roots, now=now, updated_since=START, max_jump=None)
    assert landed["rows"] == N


def test_a_watermark_catching_up_to_the_previous_read_is_no_jump(
    db: Path, server: str, roots: tuple[Path, Path]
) -> None:
    """The jump counts from when the previous window was read: an API quiet for two
    months (or a history generated long before the runs) moves the watermark up to the
    present; a record more than the limit past that read still stops the run."""
    now = START + timedelta(days=90)
    _stamp(db, "pay_00007", START + timedelta(days=60))
    read_at = START + timedelta(days=59)  # the previous run, a day before the new record
    landed = _extract(server, roots, now=now, updated_since=START, previously_extracted_at=read_at)
    assert landed["rows"] == N
    assert landed["window_end"].startswith("2024-04-30")
    _stamp(db, "pay_00007", START + timedelta(days=89, hours=1))  # 30 days after that read
    with pytest.raises(WatermarkJumpError, match=r"2024-03-01.*, read at 2024-04-29.* pay_00007"):
        _extract(
            server,
            roots,
            now=now,
            updated_since=START,
            previously_extracted_at=read_at,
            run_id="2024-05-30",
        )


class LazyClient:
    """A window of `n` payments generated page by page (nothing held by the client)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def iter_payment_pages(self, updated_since: datetime | None, limit: int = 500):
        for first in range(0, self.n, limit):
            yield [
                _payment(
                    f"p{i:07d}",
                    order_id=i,
                    amount=f"{i % 1000}.{i % 100:02d}",
                    status="succeeded",
                    updated_at=_ts(START + timedelta(seconds=i)),
                )
                for i in range(first, min(first + limit, self.n))
            ]


def _peak_python_memory(n: int, root: Path) -> int:
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        manifest = extract_payments(
            LazyClient(n),  # type: ignore[arg-type]
            PaymentsPlan(
                run_id="big",
                landing_root=root / "landing",
                quarantine_root=root / "quarantine",
                now=START + timedelta(days=1),
            ),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest["rows"] == n
    return peak


def test_peak_memory_is_flat_in_the_window_size(tmp_path: Path) -> None:
    """Pages are staged to disk as they come: 10x the payments must not take 10x the
    memory (holding the window took ~1.7 KB per payment: ~20 MB more for 13,500)."""
    _peak_python_memory(10, tmp_path / "warm")  # imports (DuckDB...) are not the window
    small = _peak_python_memory(1_500, tmp_path / "small")
    large = _peak_python_memory(15_000, tmp_path / "large")
    assert large < small * 1.5 + 1_000_000, (small, large)
    landed = pq.read_table(_run_dir(tmp_path / "large" / "landing", "payments", "big"))
    ids = landed.column("id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 15_000


def test_an_fx_plan_of_generators_serves_two_runs(roots: tuple[Path, Path]) -> None:
    """The plan reads `days` and `refresh` once (sorted, without repeats): run again, it
    lands the same days, the cached ones from the cache and the refreshed one asked again."""
    d1, d2 = date(2024, 1, 5), date(2024, 1, 6)
    plan = FxPlan(
        run_id="x", landing_root=roots[0], days=(d for d in [d2, d1, d2]), refresh=iter([d2])
    )
    assert plan.days == (d1, d2) and plan.refresh == frozenset({d2})
    client = FakeClient()
    first = extract_fx_rates(client, plan)  # type: ignore[arg-type]
    again = extract_fx_rates(client, plan)  # type: ignore[arg-type]
    assert first["days"] == again["days"] == ["2024-01-05", "2024-01-06"]
    assert again["refreshed"] == ["2024-01-06"]
    assert client.fx_calls == [d1, d2, d2] and again["cache_hits"] == 1


@pytest.mark.parametrize("overlap", [timedelta(seconds=-1), timedelta(days=-1)])
def test_a_negative_overlap_is_rejected_by_the_plan(
    roots: tuple[Path, Path], overlap: timedelta
) -> None:
    with pytest.raises(ValueError, match="overlap must not be negative"):
        PaymentsPlan(run_id="r", landing_root=roots[0], quarantine_root=roots[1], overlap=overlap)
