"""Static HTML report for one business day, read from the published `analytics` schema
of any warehouse backend (DuckDB file or PostgreSQL) in one read-only transaction.

Writes, each atomically (temp file + rename) into `report_dir`:
`<date>.html` (the day page), `<date>-trend.png` (30-day chart by region),
`<date>.csv` (the day's `daily_sales` rows) and `index.html` (every day page, newest first).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2

from core.files import write_atomic
from warehouse.backends.base import Session
from warehouse.query import read_only_session

TREND_DAYS = 30
CSV_COLUMNS = ["date", "region", "category", "total_sales_usd", "order_count"]
_DAY_PAGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.html$")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:60rem;padding:0 1rem;color:#1f2933;line-height:1.45}
h1{margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #d9e2ec;padding-bottom:.2rem}
.meta{color:#52606d;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1rem;min-width:20rem}
th,td{padding:.3rem .8rem;border-bottom:1px solid #e4e7eb;text-align:left}
th{background:#f5f7fa}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tfoot td{font-weight:600;border-top:2px solid #9aa5b1}
.kpis{display:flex;gap:1.5rem;margin:1rem 0}
.kpi{background:#f5f7fa;border-radius:.5rem;padding:.8rem 1.2rem}
.kpi span{display:block;color:#52606d;font-size:.9rem}
.kpi strong{font-size:1.6rem;font-variant-numeric:tabular-nums}
.empty{background:#fffbea;border:1px solid #f0b429;padding:1rem;border-radius:.5rem}
.restated{background:#eef6ff;border:1px solid #2f80ed;padding:.6rem 1rem;border-radius:.5rem}
.status{color:#3e4c59}
.warn{background:#ffeeee;border:1px solid #e12d39;padding:.6rem 1rem;border-radius:.5rem}
img{max-width:100%;height:auto}
.grid{display:flex;gap:2rem;flex-wrap:wrap;align-items:flex-start}
.grid section{flex:1 1 24rem}
"""

_TEMPLATES = {
    "day.html": """{% from "macros.html" import render_table %}<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Daily sales {{ day }}</title>
<style>{{ css | safe }}</style>
</head>
<body>
<p><a href="index.html">&larr; All days</a></p>
<h1>Daily sales &mdash; {{ day }}</h1>
<p class="meta">{% for label, value in meta %}{{ label }}: {{ value }}{% if not loop.last %}
 &middot; {% endif %}{% endfor %}</p>
{% for message in warnings %}<p class="warn">{{ message }}</p>
{% endfor %}
{% for run, reason in restated %}<p class="restated"><strong>Restated</strong> by run {{ run }}
({{ reason }}): the figures below are the corrected ones.</p>
{% endfor %}
{% if status %}<p class="status">{% for label, value in status %}{{ label }}: <strong>{{ value }}</strong>{% if not loop.last %} &middot; {% endif %}{% endfor %}</p>{% endif %}
{% if not has_rows %}
<p class="empty"><strong>No sales for {{ day }}.</strong>
No counted orders were found for this business day in analytics.daily_sales.</p>
{% else %}
<div class="kpis">
<div class="kpi"><span>Total sales (USD)</span><strong>{{ total_sales }}</strong></div>
<div class="kpi"><span>Orders</span><strong>{{ order_count }}</strong></div>
<div class="kpi"><span>vs previous day</span><strong>{{ day_change }}</strong></div>
<div class="kpi"><span>vs same day last week</span><strong>{{ week_change }}</strong></div>
</div>
<div class="grid">
{% for t in tables[:2] %}
<section>
<h2>{{ t.title }}</h2>
{{ render_table(t) }}
</section>
{% endfor %}
</div>
{% endif %}
<h2>Last {{ trend_days }} days by region</h2>
<img src="{{ png_name }}" alt="Total sales in USD per region, {{ trend_from }} to {{ day }}">
{% if has_rows %}
{% for t in tables[2:] %}
<h2>{{ t.title }}</h2>
{{ render_table(t) }}
{% endfor %}
<p><a href="{{ csv_name }}">Download the day's rows (CSV)</a></p>
{% endif %}
<h2>Run statistics</h2>
{% if not stats_tables %}<p>No run statistics were provided.</p>{% endif %}
{% for t in stats_tables %}
<h3>{{ t.title }}</h3>
{{ render_table(t) }}
{% endfor %}
</body>
</html>
""",
    "macros.html": """{% macro render_table(t) -%}
<table>
<thead><tr>{% for h in t.headers %}<th{% if t.numeric[loop.index0] %} class="num"{% endif %}>
{{- h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr>{% for cell in row %}<td{% if t.numeric[loop.index0] %} class="num"
{%- endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
{% if t.footer %}<tfoot><tr>{% for cell in t.footer -%}
<td{% if t.numeric[loop.index0] %} class="num"{% endif %}>{{ cell }}</td>
{%- endfor %}</tr></tfoot>{% endif %}
</table>
{%- endmacro %}""",
    "index.html": """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Nightshift daily sales reports</title>
<style>{{ css | safe }}</style>
</head>
<body>
<h1>Nightshift daily sales reports</h1>
{% if not days %}<p class="empty">No reports yet.</p>{% else %}
<table>
<thead><tr><th>Business day</th><th>Data</th></tr></thead>
<tbody>
{% for d in days %}<tr><td><a href="{{ d.page }}">{{ d.day }}</a></td>
<td>{% if d.csv %}<a href="{{ d.csv }}">CSV</a>{% endif %}</td></tr>
{% endfor %}</tbody>
</table>
{% endif %}
</body>
</html>
""",
}

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader(_TEMPLATES),
    autoescape=True,  # every value from the warehouse or run_stats is escaped
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass
class _Table:
    title: str
    headers: list[str]
    numeric: list[bool]
    rows: list[list[str]] = field(default_factory=list)
    footer: list[str] | None = None


def money(value: Decimal | int) -> str:
    """`1234567.5` -> `1,234,567.50` (exact, no float)."""
    return f"{Decimal(value):,.2f}"


def count(value: int) -> str:
    """`1234567` -> `1,234,567`."""
    return f"{int(value):,}"


@dataclass
class _DayData:
    rows: list[tuple[date, str, str, Decimal, int]]
    by_region: list[tuple[str, Decimal, int]]
    trend: list[tuple[date, str, Decimal]]
    warnings: list[str]
    previous_day_total: Decimal | None = None
    previous_week_total: Decimal | None = None
    previous_week_categories: dict[str, Decimal] | None = None
    restated: list[tuple[str, str]] | None = None  # (run_id, reason) that restated this day
    quality: tuple[int, int, int] | None = None  # (checks, failed critical, failed warning)
    freshness: Any = None  # newest source updated_at in the warehouse
    steps: list[tuple[str, str, float]] | None = None  # (task, status, seconds) of the run


def _rows(s: Session, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """A query's rows as tuples of Python values, read through Arrow (the same values on
    every backend: Decimal, date, datetime in UTC, int, str)."""
    table = s.read_arrow(sql, params)
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def _last(value: Any) -> tuple[bool, Any]:
    """Sort key part: NULLs last (as both engines order ascending by default)."""
    return (value is None, value)


def _extras(s: Session, day: date, data: _DayData, run_id: str | None) -> None:
    """Comparisons, restatements, quality and freshness: whatever the warehouse has.

    Ordering and string aggregation happen here, not in SQL: a server's collation
    (en_US sorts `<x>` after `EU`) must not change the page."""
    if s.exists("analytics", "sales_summary"):
        totals = dict(
            _rows(
                s,
                'select "date", sum(total_sales_usd) from {analytics}.sales_summary '
                'where "date" in (?, ?) group by "date"',
                [day - timedelta(days=1), day - timedelta(days=7)],
            )
        )
        data.previous_day_total = totals.get(day - timedelta(days=1))
        data.previous_week_total = totals.get(day - timedelta(days=7))
    if s.exists("analytics", "daily_sales"):
        data.previous_week_categories = dict(
            _rows(
                s,
                "select category, sum(total_sales_usd) from {analytics}.daily_sales "
                'where "date" = ? group by category',
                [day - timedelta(days=7)],
            )
        )
    if s.exists("ops", "restated_days"):
        reasons: dict[str, set[str]] = {}
        for run, reason in _rows(
            s,
            "select distinct run_id, reason from {ops}.restated_days "
            "where business_date = ? and run_id <> ?",
            [day, day.isoformat()],
        ):
            found = reasons.setdefault(run, set())
            if reason is not None:
                found.add(reason)
        data.restated = [
            (run, ", ".join(sorted(found)) if found else None)
            for run, found in sorted(reasons.items(), key=lambda kv: _last(kv[0]))
        ]
    if s.exists("ops", "quality_results") and run_id:
        [row] = _rows(
            s,
            "select count(*), "
            "count(*) filter (where not success and severity = 'critical'), "
            "count(*) filter (where not success and severity <> 'critical') "
            "from {ops}.quality_results where run_id = ?",
            [run_id],
        )
        data.quality = (int(row[0]), int(row[1]), int(row[2])) if row[0] else None
    if s.exists("ops", "task_metrics") and run_id:
        steps = _rows(
            s,
            "select started_at, task, status, seconds from {ops}.task_metrics where run_id = ?",
            [run_id],
        )
        steps.sort(key=lambda r: (_last(r[0]), _last(r[1])))
        data.steps = [(task, status, seconds) for _, task, status, seconds in steps]
    if s.exists("raw", "orders"):
        data.freshness = _rows(s, "select max(updated_at) from {raw}.orders")[0][0]


def _read(where: Any, day: date, run_id: str | None = None) -> _DayData:
    """Everything the page needs, read in one read-only transaction of the published
    warehouse (`where`: a Warehouse or a DuckDB file path)."""
    since = day - timedelta(days=TREND_DAYS - 1)
    warnings: list[str] = []
    with read_only_session(where) as s:
        has_daily = s.exists("analytics", "daily_sales")
        has_summary = s.exists("analytics", "sales_summary")
        rows: list[Any] = []
        if has_daily:
            rows = _rows(
                s,
                'select "date", region, category, total_sales_usd, order_count '
                'from {analytics}.daily_sales where "date" = ?',
                [day],
            )
            rows.sort(key=lambda r: (_last(r[1]), _last(r[2])))
        else:
            warnings.append("Table analytics.daily_sales is missing: categories not shown.")
        if has_summary:
            by_region = _rows(
                s,
                "select region, total_sales_usd, order_count from {analytics}.sales_summary "
                'where "date" = ?',
                [day],
            )
            trend = _rows(
                s,
                'select "date", region, total_sales_usd from {analytics}.sales_summary '
                'where "date" between ? and ?',
                [since, day],
            )
        else:
            warnings.append(
                "Table analytics.sales_summary is missing: regions are summed from daily_sales."
            )
            by_region = _rows(
                s,
                "select region, sum(total_sales_usd), sum(order_count) "
                'from {analytics}.daily_sales where "date" = ? group by region',
                [day],
            )
            trend = _rows(
                s,
                'select "date", region, sum(total_sales_usd) from {analytics}.daily_sales '
                'where "date" between ? and ? group by "date", region',
                [since, day],
            )
        # total descending (NULLs last), then region; the trend by day, then region
        by_region.sort(key=lambda r: (r[1] is None, -(r[1] or 0), _last(r[0])))
        trend.sort(key=lambda r: (_last(r[0]), _last(r[1])))
        data = _DayData(rows=rows, by_region=by_region, trend=trend, warnings=warnings)
        _extras(s, day, data, run_id)
    if has_daily and has_summary:
        warnings.extend(_reconcile(rows, by_region))
    return data


def _reconcile(rows: list[Any], by_region: list[Any]) -> list[str]:
    """Contract: per region, daily_sales summed over categories equals sales_summary."""
    summed: dict[str, list[Any]] = {}
    for _, region, _, total, n in rows:
        acc = summed.setdefault(region, [Decimal(0), 0])
        acc[0] += total
        acc[1] += n
    summary = {r: [t, n] for r, t, n in by_region}
    bad = sorted(r for r in summed.keys() | summary.keys() if summed.get(r) != summary.get(r))
    if not bad:
        return []
    return [
        "daily_sales and sales_summary disagree for region(s): "
        + ", ".join(bad)
        + " (totals below are from sales_summary)."
    ]


def _day_tables(data: _DayData) -> tuple[list[_Table], Decimal, int]:
    total = sum((r[1] for r in data.by_region), Decimal("0.00"))
    orders = sum(int(r[2]) for r in data.by_region)

    def share(value: Decimal) -> str:
        return f"{(value * 100 / total):.1f}%" if total else "-"

    region = _Table(
        "By region", ["Region", "Sales (USD)", "Share", "Orders"], [False, True, True, True]
    )
    region.rows = [[r, money(t), share(t), count(n)] for r, t, n in data.by_region]
    region.footer = ["Total", money(total), "100.0%" if total else "-", count(orders)]

    per_category: dict[str, list[Any]] = {}
    for _, _, category, t, n in data.rows:
        acc = per_category.setdefault(category, [Decimal(0), 0])
        acc[0] += t
        acc[1] += n
    cat_total = sum((v[0] for v in per_category.values()), Decimal("0.00"))
    cat_orders = sum(v[1] for v in per_category.values())
    category = _Table(
        "By category", ["Category", "Sales (USD)", "Share", "Orders"], [False, True, True, True]
    )
    ordered = sorted(per_category.items(), key=lambda kv: (-kv[1][0], kv[0]))
    category.rows = [[c, money(t), share(t), count(n)] for c, (t, n) in ordered]
    category.footer = ["Total", money(cat_total), "100.0%" if cat_total else "-", count(cat_orders)]

    detail = _Table(
        "By region and category",
        ["Region", "Category", "Sales (USD)", "Orders"],
        [False, False, True, True],
    )
    detail.rows = [[r, c, money(t), count(n)] for _, r, c, t, n in data.rows]
    return [region, category, detail], total, orders


def change(now: Decimal, before: Decimal | None) -> str:
    """'+4.2%' style change, or '-' when there is nothing to compare with."""
    if before is None or before == 0:
        return "-"
    return f"{(now - before) * 100 / before:+.1f}%"


def _movers(data: _DayData, limit: int = 5) -> _Table | None:
    """Categories whose sales moved most against the same day last week."""
    if data.previous_week_categories is None:
        return None
    now: dict[str, Decimal] = {}
    for _, _, category, total, _ in data.rows:
        now[category] = now.get(category, Decimal(0)) + total
    before = data.previous_week_categories
    moves = [
        (c, now.get(c, Decimal("0.00")), before.get(c, Decimal("0.00")))
        for c in now.keys() | before.keys()
    ]
    moves.sort(key=lambda m: (-abs(m[1] - m[2]), m[0]))
    table = _Table(
        "Categories that moved most (vs same day last week)",
        ["Category", "Sales (USD)", "Last week", "Change (USD)", "Change"],
        [False, True, True, True, True],
    )
    table.rows = [
        [c, money(n), money(b), f"{n - b:+,.2f}", change(n, b)] for c, n, b in moves[:limit]
    ]
    return table if table.rows else None


def _cell(value: Any) -> tuple[str, bool]:
    """Render one run_stats value; returns (text, is_numeric)."""
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, int):
        return count(value), True
    if isinstance(value, Decimal | float):
        return f"{value:,}", True
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none", False
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, sort_keys=True), False
    return str(value), False


def _stats_tables(run_stats: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[_Table]]:
    """Scalars become page metadata + a "Run" table; each mapping becomes its own table."""
    scalars: list[tuple[str, str]] = []
    tables: list[_Table] = []
    for key, value in run_stats.items():
        if isinstance(value, Mapping):
            cells = [(str(k), *_cell(v)) for k, v in value.items()]
            numeric = bool(cells) and all(c[2] for c in cells)
            t = _Table(
                str(key).replace("_", " ").capitalize(),
                ["Name", "Rows" if numeric else "Value"],
                [False, numeric],
            )
            t.rows = [[k, text] for k, text, _ in cells]
            if numeric and len(cells) > 1:
                t.footer = ["Total", count(sum(int(v) for v in value.values()))]
            tables.append(t)
        else:
            scalars.append((str(key), _cell(value)[0]))
    if scalars:
        run = _Table("Run", ["Name", "Value"], [False, False])
        run.rows = [[k, v] for k, v in scalars]
        tables.insert(0, run)
    return scalars, tables


def _chart(trend: list[Any], day: date, path: Path) -> None:
    """PNG line chart, one line per region, over the TREND_DAYS days ending on `day`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    since = day - timedelta(days=TREND_DAYS - 1)
    days = [since + timedelta(days=i) for i in range(TREND_DAYS)]
    series: dict[str, dict[date, Decimal]] = {}
    for d, region, total in trend:
        series.setdefault(region, {})[d] = total
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    try:
        # Floats only for drawing; every published or printed figure stays Decimal.
        for region in sorted(series, key=lambda r: -sum(series[r].values())):
            values = [float(series[region].get(d, Decimal(0))) for d in days]
            # "$" would start mathtext and a leading "_" hides the legend entry.
            label = region.replace("$", r"\$")
            label = f" {label}" if label.startswith("_") else label
            ax.plot(days, values, marker="o", markersize=3, linewidth=1.5, label=label)
        if series:
            ax.legend(loc="upper left", fontsize="small", ncol=min(4, len(series)), frameon=False)
        else:
            ax.text(
                0.5,
                0.5,
                "No sales in this period",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="#52606d",
            )
        ax.set_xlim(since - timedelta(hours=12), day + timedelta(hours=12))
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_ylabel("Sales (USD)")
        ax.set_title(f"Sales by region, {since.isoformat()} to {day.isoformat()}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet will not run: one starting like a formula (`=`, `+`,
    `-`, `@`, tab, CR) gets a leading `'` (OWASP's CSV-injection advice)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_bytes(rows: list[Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for d, region, category, total, n in rows:
        writer.writerow(
            [d.isoformat(), csv_text(region), csv_text(category), f"{Decimal(total):.2f}", int(n)]
        )
    return out.getvalue().encode("utf-8")


def build_index(report_dir: Path) -> Path:
    """Regenerate `index.html` listing every day page present, newest first."""
    report_dir = Path(report_dir)
    days = sorted(
        (m.group(1) for p in report_dir.iterdir() if (m := _DAY_PAGE.match(p.name))),
        reverse=True,
    )
    entries = [
        {
            "day": d,
            "page": f"{d}.html",
            "csv": f"{d}.csv" if (report_dir / f"{d}.csv").exists() else None,
        }
        for d in days
    ]
    html = _ENV.get_template("index.html").render(css=_CSS, days=entries)
    path = report_dir / "index.html"
    write_atomic(path, html.encode("utf-8"))
    return path


def build_report(
    where: Any,
    report_dir: Path,
    business_date: date,
    run_stats: Mapping[str, Any],
    *,
    regenerate_restated: bool = True,
) -> Path:
    """Write the day page, its trend PNG and CSV, and refresh the index; return the page.

    `where` is the warehouse to read (its published tables): a `Warehouse`, or a DuckDB
    file path. The files are the same for the same published data on every backend."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    day = business_date.isoformat()
    run_id = run_stats.get("run_id")
    data = _read(where, business_date, str(run_id) if run_id else None)

    png_name, csv_name = f"{day}-trend.png", f"{day}.csv"
    _chart(data.trend, business_date, report_dir / png_name)
    write_atomic(report_dir / csv_name, _csv_bytes(data.rows))

    tables, total, orders = _day_tables(data)
    movers = _movers(data)
    if movers is not None:
        tables.insert(2, movers)
    meta, stats_tables = _stats_tables(run_stats)
    if data.steps:
        steps = _Table("Pipeline steps", ["Step", "Status", "Seconds"], [False, False, True])
        steps.rows = [[t, st, f"{sec:,.1f}"] for t, st, sec in data.steps]
        steps.footer = ["Total", "", f"{sum(sec for _, _, sec in data.steps):,.1f}"]
        stats_tables.append(steps)
    status: list[tuple[str, str]] = []
    if data.quality is not None:
        checks, critical, warning = data.quality
        verdict = "passed" if not critical else f"{critical} critical failure(s)"
        status.append(("Quality", f"{verdict}, {warning} warning(s) in {checks} checks"))
    if data.freshness is not None:
        status.append(("Newest source change", str(data.freshness)[:19] + " UTC"))
    html = _ENV.get_template("day.html").render(
        css=_CSS,
        day=day,
        meta=[
            (k.replace("_", " ").capitalize(), v)
            for k, v in meta
            if k in ("run_id", "generated_at")
        ],
        warnings=data.warnings,
        has_rows=bool(data.rows or data.by_region),
        total_sales=money(total),
        order_count=count(orders),
        day_change=change(total, data.previous_day_total),
        week_change=change(total, data.previous_week_total),
        restated=data.restated or [],
        status=status,
        tables=tables,
        csv_name=csv_name,
        png_name=png_name,
        trend_days=TREND_DAYS,
        trend_from=(business_date - timedelta(days=TREND_DAYS - 1)).isoformat(),
        stats_tables=stats_tables,
    )
    page = report_dir / f"{day}.html"
    write_atomic(page, html.encode("utf-8"))
    write_atomic(
        report_dir / f"{day}.json",
        json.dumps(dict(run_stats), default=str, sort_keys=True).encode("utf-8"),
    )
    if regenerate_restated:
        for other in _recomputed_pages(where, report_dir, business_date, run_id):
            stats_file = report_dir / f"{other.isoformat()}.json"
            old_stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
            build_report(where, report_dir, other, old_stats, regenerate_restated=False)
    build_index(report_dir)
    return page


_RECOMPUTED_SOURCES = (
    ("restated_days", "select business_date from {ops}.restated_days where run_id = ?"),
    ("daily_sales_days", "select business_date from {ops}.daily_sales_days where run_id = ?"),
)


def _recomputed_pages(where: Any, report_dir: Path, business_date: date, run_id: Any) -> list[date]:
    """Other days with a page whose figures this run restated or recomputed (earlier or,
    for a backfill, later days up to the published horizon): their pages are rebuilt."""
    if not run_id:
        return []
    with read_only_session(where) as s:
        days = {
            r[0]
            for table, sql in _RECOMPUTED_SOURCES
            if s.exists("ops", table)
            for r in _rows(s, sql, [str(run_id)])
        }
    return sorted(
        d
        for d in days
        if d is not None and d != business_date and (report_dir / f"{d.isoformat()}.html").exists()
    )


_LAST_DAY_SOURCES = (
    ("ops", "pipeline_runs", "business_date"),
    ("analytics", "sales_summary", '"date"'),
    ("analytics", "daily_sales", '"date"'),
)


def _last_published_day(where: Any) -> date | None:
    """`warehouse.publish.last_published_day` (the DuckDB file's) on any backend."""
    from warehouse.backends import as_warehouse
    from warehouse.backends.duckdb import DuckDBWarehouse

    wh = as_warehouse(where)
    if isinstance(wh, DuckDBWarehouse):
        from warehouse.publish import last_published_day

        return last_published_day(wh.path)
    with read_only_session(wh) as s:
        days = [
            _rows(s, f"select max({column}) from {{{schema}}}.{table}")[0][0]
            for schema, table, column in _LAST_DAY_SOURCES
            if s.exists(schema, table)
        ]
    return max((d for d in days if d is not None), default=None)


def rebuild_all_pages(where: Any, report_dir: Path) -> dict[str, int]:
    """Make every day page match the warehouse (after a rollback): pages of days after
    the last published one are removed, the others rebuilt; the index follows. `where`:
    a `Warehouse` or a DuckDB file path."""
    report_dir = Path(report_dir)
    if not report_dir.is_dir():
        return {"rebuilt": 0, "removed": 0}
    last = _last_published_day(where)
    days = sorted(
        date.fromisoformat(m.group(1))
        for p in report_dir.iterdir()
        if (m := _DAY_PAGE.match(p.name))
    )
    rebuilt = removed = 0
    for day in days:
        name = day.isoformat()
        if last is None or day > last:
            for suffix in (".html", ".csv", ".json", "-trend.png"):
                (report_dir / f"{name}{suffix}").unlink(missing_ok=True)
            removed += 1
            continue
        stats_file = report_dir / f"{name}.json"
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        build_report(where, report_dir, day, stats, regenerate_restated=False)
        rebuilt += 1
    build_index(report_dir)
    return {"rebuilt": rebuilt, "removed": removed}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Rebuild every day page and the index from the published warehouse (after a change
    of the report's template, or when pages went missing)."""
    import argparse

    from core import settings

    parser = argparse.ArgumentParser(
        prog=prog or "python -m report.build",
        description="Rebuild every day page of the report (and the index) from the published "
        "warehouse; pages of days after the last published one are removed.",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="a local folder of pages (default: REPORT_DIR, data/report, and with "
        "NIGHTSHIFT_DATA_URL the store's report/ folder)",
    )
    args = parser.parse_args(argv)
    from core.run_files import mirrored_report

    where = settings.warehouse_lease_target()
    if args.report_dir is not None:
        result, report_dir = rebuild_all_pages(where, args.report_dir), args.report_dir
    else:
        with mirrored_report() as report_dir:  # NIGHTSHIFT_DATA_URL: pulled, then pushed
            result = rebuild_all_pages(where, report_dir)
    print(
        f"report {report_dir}: {result['rebuilt']} page(s) rebuilt, "
        f"{result['removed']} removed; index: {report_dir / 'index.html'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
