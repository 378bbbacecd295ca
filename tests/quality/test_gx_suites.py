"""GX 1.x quality suites: landed Parquet runs, the ETL output, results storage, Data Docs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from quality.results import RESULTS_DIR, SUMMARY_PAGE, build_data_docs, store_results  # noqa: E402
from quality.suites import (  # noqa: E402
    ALL_SUITES,
    SEVERITIES,
    load_suite,
    runtime_dir,
    suite_json,
)
from quality.validate import (  # noqa: E402
    QualityGateError,
    SuiteResult,
    raise_for_critical,
    validate_frame,
    validate_landed_table,
)

REPO = Path(__file__).resolve().parents[2]
RUN = "2024-03-02"
ROOT = Path(__file__).resolve().parents[2]
TS = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(12, 2)
T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


def land(root: Path, source: str, table: str, parts: list[pa.Table], rows: int | None = None):
    """Write `parts` as part files of one run plus a manifest (rows = their sum unless given)."""
    directory = root / source / table / f"run={RUN}"
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, part in enumerate(parts):
        name = f"part-{i:05d}.parquet"
        pq.write_table(part, directory / name)
        files.append(name)
    total = sum(p.num_rows for p in parts) if rows is None else rows
    manifest = {"source": source, "table": table, "run_id": RUN, "rows": total, "files": files}
    (directory / "_manifest.json").write_text(json.dumps(manifest))
    return directory


def orders(ids, *, status=None, currency=None, total=None, extra=False) -> pa.Table:
    n = len(ids)
    columns = {
        "id": pa.array(ids, pa.int64()),
        "user_id": pa.array([1] * n, pa.int64()),
        "status": pa.array(status or ["paid"] * n, pa.string()),
        "currency": pa.array(currency or ["EUR"] * n, pa.string()),
        "total": pa.array([Decimal(x) for x in (total or ["10.00"] * n)], MONEY),
        "created_at": pa.array([T0] * n, TS),
        "updated_at": pa.array([T0] * n, TS),
    }
    if extra:
        columns["coupon_code"] = pa.array(["X"] * n, pa.string())
    return pa.table(columns)


def clean_tables() -> dict[tuple[str, str], pa.Table]:
    return {
        ("source_db", "users"): pa.table(
            {
                "id": pa.array([1, 2], pa.int64()),
                "email": ["a@x", "b@x"],
                "full_name": ["A", "B"],
                "region": pa.array(["eu", None], pa.string()),
                "created_at": pa.array([T0, T0], TS),
                "updated_at": pa.array([T0, T0], TS),
            }
        ),
        ("source_db", "products"): pa.table(
            {
                "id": pa.array([1, 2], pa.int64()),
                "sku": ["s1", "s2"],
                "name": ["n1", "n2"],
                "category": pa.array(["toys", None], pa.string()),
                "price": pa.array([Decimal("1.50"), Decimal("0")], MONEY),
                "updated_at": pa.array([T0, T0], TS),
            }
        ),
        ("source_db", "orders"): orders([1, 2, 3], extra=True),
        ("source_db", "order_items"): pa.table(
            {
                "id": pa.array([1, 2], pa.int64()),
                "order_id": pa.array([1, 1], pa.int64()),
                "product_id": pa.array([1, 99], pa.int64()),
                "quantity": pa.array([1, 3], pa.int64()),
                "unit_price": pa.array([Decimal("2.00"), Decimal("0.10")], MONEY),
                "updated_at": pa.array([T0, T0], TS),
            }
        ),
        ("payments_api", "payments"): pa.table(
            {
                "id": ["p1", "p2"],
                "order_id": pa.array([1, 2], pa.int64()),
                "amount": pa.array([Decimal("10.00"), Decimal("0")], pa.decimal128(18, 2)),
                "currency": ["EUR", "USD"],
                "status": ["succeeded", "refunded"],
                "method": ["card", "card"],
                "created_at": pa.array([T0, T0], TS),
                "updated_at": pa.array([T0, T0], TS),
            }
        ),
        ("payments_api", "fx_rates"): pa.table(
            {
                "rate_date": pa.array([date(2024, 3, 1)] * 2 + [date(2024, 3, 2)], pa.date32()),
                "base": ["USD"] * 3,
                "currency": ["USD", "EUR", "EUR"],
                "rate": pa.array(
                    [Decimal("1"), Decimal("0.92"), Decimal("0.93")], pa.decimal128(38, 18)
                ),
            }
        ),
    }


def failed(result: SuiteResult, expectation: str, column: str | None = None):
    hits = [
        o
        for o in result.outcomes
        if not o.success and o.expectation == expectation and (column is None or o.column == column)
    ]
    assert hits, f"{expectation}({column}) did not fail:\n" + "\n".join(
        o.describe() for o in result.outcomes
    )
    return hits[0]


# --------------------------------------------------------------------------------------


def test_suite_files_load_and_carry_a_severity() -> None:
    for name in ALL_SUITES:
        data = suite_json(name)
        assert data["name"] == name
        suite = load_suite(name)
        assert len(suite.expectations) == len(data["expectations"]) > 0
        for raw, exp in zip(data["expectations"], suite.expectations, strict=True):
            assert raw["severity"] in SEVERITIES
            assert exp.severity.value == raw["severity"] and exp.id == raw["id"]
        types = {e["type"] for e in data["expectations"]}
        assert "expect_table_columns_to_match_set" in types
        sets = [e for e in data["expectations"] if e["type"] == "expect_table_columns_to_match_set"]
        assert all(e["kwargs"]["exact_match"] is False for e in sets)
        if name.startswith(("source_db.", "payments_api.")):
            assert "expect_table_row_count_to_equal" in types


@pytest.mark.parametrize(("source", "table"), list(clean_tables()))
def test_clean_landed_table_passes(tmp_path: Path, source: str, table: str) -> None:
    land(tmp_path, source, table, [clean_tables()[(source, table)]])
    result = validate_landed_table(tmp_path, source, table, RUN)
    assert result.success, "\n".join(o.describe() for o in result.outcomes if not o.success)
    assert result.critical_failures == [] and result.warnings == []
    result.raise_for_critical()  # no exception


def test_orders_violations_are_caught_with_severity_and_offending_values(tmp_path: Path) -> None:
    part0 = orders(
        [1, 2, 3, 4],
        status=["paid", "teleported", "paid", "paid"],
        currency=["EUR", "USD", "eur", "USD"],
        total=["1.00", "2.00", "3.00", "-7.25"],
    )
    part1 = orders([5, 3, None])  # id 3 again in another file, and a NULL key
    land(tmp_path, "source_db", "orders", [part0, part1], rows=8)
    result = validate_landed_table(tmp_path, "source_db", "orders", RUN, batch_rows=2)

    null_key = failed(result, "expect_column_values_to_not_be_null", "id")
    assert null_key.severity == "critical" and null_key.unexpected_count == 1
    assert null_key.samples[0]["file"] == "part-00001.parquet" and null_key.samples[0]["row"] == 2

    dup = failed(result, "expect_column_values_to_be_unique", "id")
    assert dup.severity == "critical" and dup.unexpected_count == 2
    assert dup.samples[0]["id"] == 3
    assert dup.samples[0]["files"] == ["part-00000.parquet", "part-00001.parquet"]

    status = failed(result, "expect_column_values_to_be_in_set", "status")
    assert status.severity == "critical"
    assert status.samples == [
        {"id": 2, "status": "teleported", "file": "part-00000.parquet", "row": 1}
    ]

    money = failed(result, "expect_column_values_to_be_between", "total")
    assert money.severity == "critical" and money.samples[0]["total"] == "-7.25"
    assert money.samples[0]["id"] == 4

    currency = failed(result, "expect_column_values_to_match_regex", "currency")
    assert currency.severity == "critical" and currency.samples[0]["currency"] == "eur"

    count = failed(result, "expect_table_row_count_to_equal")
    assert count.severity == "critical" and count.observed_value == 7
    assert count.kwargs["value"] == 8

    assert len(result.critical_failures) == 6 and result.warnings == []
    with pytest.raises(QualityGateError) as info:
        result.raise_for_critical()
    message = str(info.value)
    for needle in (
        "suite source_db.orders",
        "table source_db.orders",
        "expect_column_values_to_be_in_set(status)",
        "teleported",
        "expect_column_values_to_be_unique(id)",
        "part-00001.parquet",
        "-7.25",
        '"eur"',
        '"manifest_rows": 8',
    ):
        assert needle in message, needle


def test_manifest_argument_overrides_the_file(tmp_path: Path) -> None:
    land(tmp_path, "source_db", "orders", [orders([1, 2])])
    assert validate_landed_table(tmp_path, "source_db", "orders", RUN).success
    result = validate_landed_table(tmp_path, "source_db", "orders", RUN, manifest={"rows": 3})
    assert failed(result, "expect_table_row_count_to_equal").observed_value == 2


def test_missing_column_and_wrong_type_are_critical(tmp_path: Path) -> None:
    table = orders([1, 2]).drop_columns(["currency"])
    table = table.set_column(
        table.schema.get_field_index("total"), "total", pa.array([1.5, 2.5], pa.float64())
    )
    land(tmp_path, "source_db", "orders", [table])
    result = validate_landed_table(tmp_path, "source_db", "orders", RUN)
    columns = failed(result, "expect_table_columns_to_match_set")
    assert columns.details["mismatched"]["missing"] == ["currency"]
    wrong = failed(result, "expect_column_arrow_type_to_be", "total")
    assert wrong.observed_value == "double" and wrong.severity == "critical"
    with pytest.raises(QualityGateError, match="currency"):
        result.raise_for_critical()


def test_warning_only_failures_do_not_raise(tmp_path: Path) -> None:
    items = clean_tables()[("source_db", "order_items")]
    items = items.set_column(
        items.schema.get_field_index("quantity"), "quantity", pa.array([0, 2], pa.int64())
    )
    land(tmp_path, "source_db", "order_items", [items])
    result = validate_landed_table(tmp_path, "source_db", "order_items", RUN)
    assert result.critical_failures == []
    [warning] = result.warnings
    assert warning.expectation == "expect_column_values_to_be_between"
    assert warning.column == "quantity" and warning.severity == "warning"
    assert warning.samples[0]["quantity"] == 0 and warning.samples[0]["id"] == 1
    result.raise_for_critical()
    raise_for_critical([result])


def test_payments_and_fx_rates_violations(tmp_path: Path) -> None:
    payments = clean_tables()[("payments_api", "payments")]
    payments = payments.set_column(
        payments.schema.get_field_index("status"), "status", pa.array(["succeeded", "stolen"])
    )
    land(tmp_path, "payments_api", "payments", [payments])
    result = validate_landed_table(tmp_path, "payments_api", "payments", RUN)
    bad = failed(result, "expect_column_values_to_be_in_set", "status")
    assert bad.samples[0] == {
        "id": "p2",
        "status": "stolen",
        "file": "part-00000.parquet",
        "row": 1,
    }

    fx = clean_tables()[("payments_api", "fx_rates")]
    extra = pa.table(
        {
            "rate_date": pa.array([date(2024, 3, 1)], pa.date32()),
            "base": ["USD"],
            "currency": ["EUR"],
            "rate": pa.array([Decimal("0")], pa.decimal128(38, 18)),
        }
    )
    land(tmp_path, "payments_api", "fx_rates", [fx, extra])
    result = validate_landed_table(tmp_path, "payments_api", "fx_rates", RUN)
    dup = failed(result, "expect_compound_columns_to_be_unique", "rate_date,currency")
    assert dup.samples[0]["rate_date"] == "2024-03-01" and dup.samples[0]["currency"] == "EUR"
    zero = failed(result, "expect_column_values_to_be_between", "rate")
    assert zero.samples[0]["file"] == "part-00001.parquet"


def test_empty_run_passes_schema_checks(tmp_path: Path) -> None:
    land(tmp_path, "source_db", "orders", [orders([]).slice(0, 0)])
    result = validate_landed_table(tmp_path, "source_db", "orders", RUN)
    assert result.success and result.rows == 0


def daily_sales_frame() -> pd.DataFrame:
    """Shaped like transform.daily_sales.compute_daily_sales (plain pandas, Decimal money)."""
    return pd.DataFrame(
        {
            "date": [date(2024, 3, 1), date(2024, 3, 1), date(2024, 3, 2)],
            "region": ["eu", "unknown", "eu"],
            "category": ["toys", "uncategorized", "toys"],
            "total_sales_usd": [Decimal("10.87"), Decimal("0.00"), Decimal("5.00")],
            "order_count": pd.Series([2, 1, 1], dtype="int64"),
        }
    )


def test_daily_sales_frame_and_arrow_table() -> None:
    df = daily_sales_frame()
    assert validate_frame(df, "analytics.daily_sales", run_id=RUN).success
    arrow = pa.table(
        {
            "date": pa.array(list(df["date"]), pa.date32()),
            "region": pa.array(list(df["region"]), pa.string()),
            "category": pa.array(list(df["category"]), pa.string()),
            "total_sales_usd": pa.array(list(df["total_sales_usd"]), pa.decimal128(18, 2)),
            "order_count": pa.array(list(df["order_count"]), pa.int64()),
        }
    )
    assert validate_frame(arrow, "analytics.daily_sales").success
    wrong = arrow.set_column(3, "total_sales_usd", arrow.column(3).cast(pa.decimal128(12, 2)))
    result = validate_frame(wrong, "analytics.daily_sales")
    assert failed(result, "expect_column_arrow_type_to_be", "total_sales_usd")


def test_daily_sales_violations() -> None:
    df = daily_sales_frame()
    df.loc[2, "region"] = "unknown"
    df.loc[2, "category"] = "uncategorized"
    df.loc[2, "date"] = date(2024, 3, 1)  # duplicate of row 1's key
    df.loc[0, "order_count"] = 0
    df.loc[0, "category"] = None
    result = validate_frame(df, "analytics.daily_sales", run_id=RUN)
    dup = failed(result, "expect_compound_columns_to_be_unique", "date,region,category")
    assert {
        "date": "2024-03-01",
        "region": "unknown",
        "category": "uncategorized",
        "row": 2,
    }.items() <= dup.samples[-1].items()
    assert (
        failed(result, "expect_column_values_to_be_between", "order_count").samples[0][
            "order_count"
        ]
        == 0
    )
    assert failed(result, "expect_column_values_to_not_be_null", "category")
    with pytest.raises(QualityGateError, match=r"table analytics\.daily_sales"):
        result.raise_for_critical()


def test_results_stored_and_replaced_on_rerun(tmp_path: Path) -> None:
    land(tmp_path, "source_db", "orders", [orders([1, 1])])
    bad = validate_landed_table(tmp_path, "source_db", "orders", RUN)
    daily = validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id=RUN)
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("begin transaction")
    written = store_results(con, RUN, [bad])
    store_results(con, RUN, [daily])
    con.execute("commit")
    assert written == len(bad.outcomes)
    row = con.execute(
        "select severity, success, observed_value, details from ops.quality_results "
        "where run_id = ? and suite = 'source_db.orders' "
        "and expectation = 'expect_column_values_to_be_unique'",
        [RUN],
    ).fetchone()
    assert row[0] == "critical" and row[1] is False
    assert json.loads(row[3])["samples"][0]["id"] == 1
    assert json.loads(row[2])["unexpected_count"] == 2

    # A rerun of the same run replaces that suite's rows (the other suite's rows stay).
    land(tmp_path, "source_db", "orders", [orders([1, 2])])
    good = validate_landed_table(tmp_path, "source_db", "orders", RUN)
    con.execute("begin transaction")
    store_results(con, RUN, [good])
    con.execute("commit")
    counts = dict(
        con.execute(
            "select suite, count(*) from ops.quality_results where run_id = ? group by suite",
            [RUN],
        ).fetchall()
    )
    assert counts == {
        "source_db.orders": len(good.outcomes),
        "analytics.daily_sales": len(daily.outcomes),
    }
    assert con.execute(
        "select bool_and(success) from ops.quality_results where suite = 'source_db.orders'"
    ).fetchone()[0]

    # In the caller's transaction: a rollback keeps the previous rows.
    con.execute("begin transaction")
    store_results(con, RUN, [bad])
    con.execute("rollback")
    assert con.execute(
        "select bool_and(success) from ops.quality_results where suite = 'source_db.orders'"
    ).fetchone()[0]
    con.close()


EXTERNAL_LOAD = re.compile(r"<(?:link|script|img)\b[^>]*\b(?:href|src)=[\"']?https?://", re.I)


def test_data_docs_site_is_written(tmp_path: Path) -> None:
    """The checkpoints' site is published with their stored results and only theirs (not
    a validation whose gate never published), loads nothing from outside (offline), and a
    later publish replaces it."""
    land(tmp_path, "source_db", "orders", [orders([1, 2], status=["paid", "lost"])])
    result = validate_landed_table(tmp_path, "source_db", "orders", RUN)
    validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id="never-published")
    daily = validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id=RUN)
    site = tmp_path / "site"
    index = build_data_docs([result, daily], site)
    assert index == site / "index.html" and index.exists()
    pages = list((site / "validations").rglob("*.html"))
    assert len(pages) == 2
    orders_page = next(p for p in pages if "orders" in str(p)).read_text()
    assert "lost" in orders_page and RUN in str(pages[0].relative_to(site))
    assert list((site / "expectations").rglob("*.html"))
    stored = [json.loads(p.read_text()) for p in (site / RESULTS_DIR).rglob("*.json")]
    assert sorted(r["suite_name"] for r in stored) == ["analytics.daily_sales", "source_db.orders"]
    summary = (site / SUMMARY_PAGE).read_text()
    assert "lost" in summary and "FAILED" in summary and "validations/" in summary
    loads = [
        (p.name, m.group(0))
        for p in site.rglob("*.html")
        for m in EXTERNAL_LOAD.finditer(p.read_text())
    ]
    assert loads == [], loads
    assert (site / "static" / "images").is_dir()
    nav = re.search(r'<nav id="pages".*?</nav>', (site / "index.html").read_text()).group(0)
    for page in pages:  # GX's index tables need jQuery: the plain list links every page
        assert f'href="{page.relative_to(site).as_posix()}"' in nav
    assert "never-published" not in (site / "index.html").read_text()
    again = validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id=RUN)
    build_data_docs([again], site)
    assert len(list((site / "validations").rglob("*.html"))) == 1
    assert not list(site.parent.glob(".gx-docs-*")) and not list(site.parent.glob(".old-*"))


def test_stored_results_carry_no_gx_batch_fingerprint() -> None:
    """GX's per-batch pandas fingerprint (a marker only, several times the cost of all the
    expectations on Arrow timestamps) is off: the stored batch markers lack it."""
    validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id="no-fingerprint")
    markers = [
        json.loads(p.read_text())["meta"]["batch_markers"]
        for p in (runtime_dir() / "validations").rglob("*.json")
        if "no-fingerprint" in p.parts
    ]
    assert markers
    assert all("ge_load_time" in m and "pandas_data_fingerprint" not in m for m in markers)


def test_a_gx_without_the_fingerprint_switch_is_refused(monkeypatch) -> None:
    from great_expectations.execution_engine import pandas_execution_engine

    import quality.suites as suites

    monkeypatch.delattr(pandas_execution_engine, "HASH_THRESHOLD")
    with pytest.raises(RuntimeError, match="HASH_THRESHOLD is gone"):
        suites._disable_batch_fingerprint()


def test_one_gx_context_per_process(tmp_path: Path, monkeypatch) -> None:
    """Validations and Data Docs publishes share the process's one GX context; a second
    validation or publish that made a new context fails this. Each site still holds
    exactly its own results and suites (nothing left over from the publish before)."""
    import great_expectations as gx

    import quality.suites as suites

    made: list[object] = []
    real = gx.get_context

    def counting(*args, **kwargs):
        context = real(*args, **kwargs)
        made.append(context)
        return context

    monkeypatch.setattr(gx, "get_context", counting)
    monkeypatch.setattr(suites, "_CONTEXT", {})
    land(tmp_path, "source_db", "orders", [orders([1, 2], status=["paid", "lost"])])
    first = validate_landed_table(tmp_path, "source_db", "orders", RUN)
    site_a = tmp_path / "docs" / "source_db"
    build_data_docs([first], site_a)
    daily = validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id=RUN)
    site_b = tmp_path / "docs" / "daily_sales"
    build_data_docs([daily], site_b)
    again = validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id=RUN)
    build_data_docs([again], site_b)
    assert len(made) == 1, f"{len(made)} GX contexts in one process"
    assert made[0] is suites.gx_context()
    pages_a = list((site_a / "validations").rglob("*.html"))
    assert len(pages_a) == 1 and "orders" in str(pages_a[0])
    assert "lost" in pages_a[0].read_text()
    pages_b = list((site_b / "validations").rglob("*.html"))
    assert len(pages_b) == 1 and "daily_sales" in str(pages_b[0]), pages_b
    suites_b = [p.name for p in (site_b / "expectations").rglob("*.html")]
    assert suites_b and not any("orders" in name for name in suites_b), suites_b
    assert "lost" not in (site_b / SUMMARY_PAGE).read_text()
    assert not list((tmp_path / "docs").glob(".gx-docs-*")), "a staging dir was left"


_GATE_SCRIPT = """
import json, sys
from pathlib import Path
import pandas as pd
from datetime import date
from decimal import Decimal
from quality.results import build_data_docs
from quality.suites import runtime_dir
from quality.validate import validate_frame
region = sys.argv[1]
df = pd.DataFrame({"date": [date(2024, 3, 1)] * 50, "region": [region] * 50,
                   "category": [f"c{i}" for i in range(50)],
                   "total_sales_usd": [Decimal("1.00")] * 50,
                   "order_count": pd.Series([1] * 50, dtype="int64")})
results = []
for night in range(4):
    results.append(validate_frame(df, "analytics.daily_sales", run_id=f"{region}-{night}"))
    build_data_docs(results[-1:], Path(sys.argv[2]) / region)
print(json.dumps({"runtime": str(runtime_dir()), "ok": all(r.success for r in results)}))
"""


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_gates_in_two_processes_at_once_from_a_read_only_gx_folder(tmp_path: Path) -> None:
    """Two processes validate and publish at the same time, from a read-only copy of the
    code and `gx/`: each has its own stores (a runtime folder under QUALITY_DOCS_DIR,
    removed at exit), each site holds its own result, and `gx/` is left as it was."""
    import shutil

    checkout = tmp_path / "checkout"
    for folder in ("gx", "quality", "core", "pipeline"):
        shutil.copytree(
            REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    before = _tree_digest(checkout / "gx")
    for path in checkout.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    docs = tmp_path / "docs"
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "PYTHONDONTWRITEBYTECODE": "1",
        "QUALITY_DOCS_DIR": str(docs),
        "GX_ANALYTICS_ENABLED": "false",
    }
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _GATE_SCRIPT, region, str(docs / "sites")],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for region in ("eu", "us")
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for path in checkout.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(r["ok"] for r in reports)
    assert reports[0]["runtime"] != reports[1]["runtime"]
    assert all(Path(r["runtime"]).parent == docs / ".gx-runtime" for r in reports)
    assert not any(Path(r["runtime"]).exists() for r in reports), "a runtime folder was left"
    assert _tree_digest(checkout / "gx") == before
    for region in ("eu", "us"):
        site = docs / "sites" / region
        pages = list((site / "validations").rglob("*.html"))
        assert len(pages) == 1 and f"{region}-3" in str(pages[0]), pages
        [stored] = [json.loads(p.read_text()) for p in (site / RESULTS_DIR).rglob("*.json")]
        assert stored["success"] and stored["meta"]["run_id"]["run_name"] == f"{region}-3"


def test_storing_results_does_not_import_great_expectations() -> None:
    """dbt_build stores its dbt tests as the suite `dbt` (quality/results.py) and
    never validates with GX: importing what it uses must not import GX (~2 s of CPU per
    task process); loading a suite does."""
    probe = textwrap.dedent(
        """
        import sys
        import quality.results, quality.validate, quality.suites
        assert "great_expectations" not in sys.modules, "imported with quality.results"
        quality.suites.load_suite("source_db.orders")
        assert "great_expectations" in sys.modules
        """
    )
    subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=300,
    )


def test_one_million_rows_in_bounded_memory(tmp_path: Path) -> None:
    """Written here, validated in a fresh process whose peak RSS is only the validation's."""
    import numpy as np

    directory = tmp_path / "source_db" / "orders" / f"run={RUN}"
    directory.mkdir(parents=True)
    n, files = 1_000_000, 2
    per = n // files
    statuses = np.array(["pending", "paid", "shipped", "delivered", "cancelled", "refunded"])
    for f in range(files):
        ids = np.arange(f * per, (f + 1) * per, dtype=np.int64)
        cents = pa.array((ids % 100000) * 7, pa.int64())
        table = pa.table(
            {
                "id": ids,
                "user_id": ids % 5000,
                "status": pa.array(statuses[ids % 6]),
                "currency": pa.array(np.array(["EUR", "USD", "GBP"])[ids % 3]),
                "total": cents.cast(pa.decimal128(19, 0)).cast(MONEY),
                "created_at": pa.array(ids * 1_000_000, TS),
                "updated_at": pa.array(ids * 1_000_000, TS),
            }
        )
        pq.write_table(table, directory / f"part-{f:05d}.parquet", row_group_size=200_000)
    (directory / "_manifest.json").write_text(json.dumps({"rows": n}))
    script = textwrap.dedent(
        f"""
        import json, resource
        from quality.validate import validate_landed_table
        result = validate_landed_table({str(tmp_path)!r}, "source_db", "orders", "{RUN}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps({{"success": result.success, "rows": result.rows, "peak_mib": peak,
                          "failures": [o.describe() for o in result.outcomes if not o.success]}}))
        """
    )
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print("1M rows:", report)
    assert report["rows"] == 1_000_000
    assert report["success"], report["failures"]
    assert report["peak_mib"] < 1024


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"severity": "fatal"}, r"severity 'fatal': set it to one of \('critical', 'warning'\)"),
        ({"id": None}, r"needs an id of its own"),
    ],
)
def test_a_suite_file_without_severity_or_id_is_refused(
    tmp_path: Path, monkeypatch, change: dict, message: str
) -> None:
    """The gate reads each expectation's severity and matches GX's results by id: a suite
    file missing either is refused, naming the file, the expectation and the fix."""
    import quality.suites as suites

    data = suite_json("source_db.orders")
    data["expectations"][3].update(change)
    path = tmp_path / "source_db" / "orders.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    suites._raw_suite.cache_clear()
    try:
        with pytest.raises(ValueError, match=message) as info:
            suite_json("source_db.orders")
        assert str(path) in str(info.value) and "expect_column_arrow_type_to_be" in str(info.value)
    finally:
        suites._raw_suite.cache_clear()


def test_runtime_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """A process killed before its exit handlers leaves its runtime folder: the next
    process on the host removes it, and never a live process's."""
    import socket

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    root = tmp_path / ".gx-runtime"
    host = socket.gethostname()
    stale = root / f"{host}-{dead.stdout.strip()}-0badc0de" / "validations"
    live = root / f"{host}-{os.getpid()}-0000feed"
    stale.mkdir(parents=True)
    live.mkdir(parents=True)
    probe = "from quality.suites import runtime_dir; print(runtime_dir())"
    env = {**os.environ, "PYTHONPATH": str(REPO), "QUALITY_DOCS_DIR": str(tmp_path)}
    made = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert Path(made.stdout.strip()).parent == root
    assert not stale.parent.exists() and live.exists()
    assert not Path(made.stdout.strip()).exists(), "removed at exit"


GX_LOG_PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
if sys.argv[1] == "gx-first":
    import great_expectations  # noqa: F401  (before quality.suites quiets it)
import quality.suites  # noqa: F401
from quality.validate import validate_frame
from tests.quality.test_gx_suites import daily_sales_frame
assert validate_frame(daily_sales_frame(), "analytics.daily_sales", run_id="r").success
print("validated")
"""


def test_a_validation_logs_none_of_gx_internals() -> None:
    """The gate's log keeps GX's warnings only: the INFO lines of its own internals
    (hundreds per night) are dropped; imported before quality.suites, GX prints them."""

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", GX_LOG_PROBE, mode],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "validated" in done.stdout
        return done.stdout

    def gx_lines(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith("great_expectations.")]

    loud, quiet = gx_lines(run("gx-first")), gx_lines(run("quality-first"))
    chatty = ("great_expectations._docs_decorators", "great_expectations.expectations.registry")
    assert all(any(line.startswith(name) for line in loud) for name in chatty)
    assert not [line for line in quiet if line.startswith(chatty)]
    assert len(loud) > 100 and quiet == []
