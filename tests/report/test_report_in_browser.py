"""The daily report, opened in a real browser (headless Debian Chromium via Playwright)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb

from report.build import build_report
from tests.ui.test_airflow_ui import CHROMIUM_ARGS, chromium_path

ROOT = Path(__file__).resolve().parents[2]
DAY = date(2026, 11, 20)


def _warehouse(path: Path) -> Path:
    con = duckdb.connect(str(path))
    con.execute("create schema analytics")
    con.execute(
        "create table analytics.daily_sales (date date, region varchar, category varchar, "
        "total_sales_usd decimal(18,2), order_count bigint)"
    )
    rows = [
        ("2026-11-13", "north", "books", "100.00", 1),
        ("2026-11-19", "north", "books", "200.00", 2),
        ("2026-11-20", "north", "books", "1234.50", 3),
        ("2026-11-20", "unknown", "uncategorized", "10.00", 1),
        ("2026-11-20", "<script>alert(1)</script>", "toys", "5.25", 1),
    ]
    con.executemany("insert into analytics.daily_sales values (?, ?, ?, ?, ?)", rows)
    con.execute(
        "create table analytics.sales_summary as select date, region, "
        "sum(total_sales_usd)::decimal(18,2) as total_sales_usd, sum(order_count) as order_count "
        "from analytics.daily_sales group by all"
    )
    con.close()
    return path


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    page_path = build_report(
        _warehouse(tmp_path / "wh.duckdb"),
        tmp_path / "report",
        DAY,
        {"run_id": DAY.isoformat(), "extracted": {"orders": 5}},
    )
    shots = ROOT / "test-artifacts" / "report"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            assert page.locator("h1").inner_text() == "Daily sales \u2014 2026-11-20"
            kpis = page.locator(".kpi").all_inner_texts()
            assert any("1,249.75" in k for k in kpis), kpis  # 1234.50 + 10.00 + 5.25
            assert any("+524.9%" in k for k in kpis), kpis  # vs 200.00 the day before
            chart = page.locator("img").first
            assert chart.evaluate("img => img.complete && img.naturalWidth > 0")
            body = page.locator("body").inner_text()
            assert "<script>alert(1)</script>" in body  # shown as text, never run
            assert dialogs == []
            page.screenshot(path=str(shots / "report.png"), full_page=True)
            index = page.goto((page_path.parent / "index.html").as_uri())
            assert index is not None and index.ok
            assert page.locator("a", has_text="2026-11-20").count() >= 1
        finally:
            browser.close()
    assert (shots / "report.png").stat().st_size > 10_000
