"""Where quality results go: `ops.quality_results` in the warehouse, and GX Data Docs.

- `store_results(con, run_id, results)`: one row per expectation outcome; a rerun of the same
  run replaces the rows of that run for the suites it stores, inside the caller's
  transaction (no begin/commit here): a warehouse Session (`Warehouse.transaction`, any
  backend) or a DuckDB connection.
- `record_failed_gate(where, run_id, results)`: a failed gate's results into the
  *published* warehouse's `ops.quality_results` (the run's build is abandoned). On a
  DuckDB file by the same copy-and-rename as a publish, so `analytics` is untouched; on
  a server warehouse (PostgreSQL) in one transaction on the published `ops` schema.
- `dbt_test_results(nodes, run_id)`: dbt's data tests as one suite `dbt`, stored beside GX's.
- `build_data_docs(results, site_dir)`: publishes the Data Docs site the process's GX
  checkpoints built (`gx/checkpoints/`, action `update_data_docs`) with the validation
  results they stored, made usable offline, plus `quality_summary.html` for `results`;
  returns the site's index.html.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from core import clock, ops
from quality.validate import ExpectationOutcome, SuiteResult, jsonable

DBT_SUITE = "dbt"


def _details(outcome: ExpectationOutcome, table: str) -> str:
    return json.dumps(
        jsonable(
            {
                "table": table,
                "kwargs": outcome.kwargs,
                "unexpected_count": outcome.unexpected_count,
                "element_count": outcome.element_count,
                "samples": outcome.samples,
                **outcome.details,
            }
        ),
        sort_keys=True,
    )


_COLUMNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("suite", pa.string()),
        ("expectation", pa.string()),
        ("column_name", pa.string()),
        ("severity", pa.string()),
        ("success", pa.bool_()),
        ("observed_value", pa.string()),
        ("details", pa.string()),
        ("checked_at", pa.timestamp("us", tz="UTC")),
    ]
)


def store_results(con: Any, run_id: str, results: list[SuiteResult]) -> int:
    """Write `results` to `ops.quality_results` (created if missing); return rows written.

    Rows of `run_id` for the suites in `results` are deleted first, so a rerun replaces them
    (suites stored by another call for the same run stay). Runs in the caller's transaction:
    `con` is a warehouse Session (the build's `ops`, or the published one) or a DuckDB
    connection (its `ops`).
    """
    from warehouse.backends.duckdb import as_session

    s = as_session(con)
    checked_at = clock.now()
    ops.create(s, "quality_results")
    suites = sorted({r.suite for r in results})
    for suite in suites:
        s.execute(
            "delete from {ops}.quality_results where run_id = ? and suite = ?", [run_id, suite]
        )
    rows = [
        {
            "run_id": run_id,
            "suite": result.suite,
            "expectation": outcome.expectation,
            "column_name": outcome.column,
            "severity": outcome.severity,
            "success": bool(outcome.success),
            "observed_value": None
            if outcome.observed_value is None
            else json.dumps(jsonable(outcome.observed_value), sort_keys=True),
            "details": _details(outcome, outcome.table or result.table),
            "checked_at": checked_at,
        }
        for result in results
        for outcome in result.outcomes
    ]
    if rows:
        s.insert_arrow(
            s.table("ops", "quality_results"), pa.Table.from_pylist(rows, schema=_COLUMNS)
        )
    return len(rows)


def record_failed_gate(where: Any, run_id: str, results: list[SuiteResult]) -> bool:
    """Store a failed gate's `results` in the published warehouse; False if none exists yet.

    Why: a failing gate abandons the run's build, and the results stored there with it,
    yet the on-call must find the failure in `ops.quality_results`. `where` is the DuckDB
    file (a path, or a `DuckDBWarehouse`) or another `Warehouse`.

    DuckDB: the published file is never written in place (a DuckDB writer would lock
    analysts out), so this copies it, writes only `ops.quality_results` (rows of `run_id`
    for these suites, replaced again by the rerun) and renames the copy over it:
    `analytics` stays row for row as it was. No file yet: False.
    A server warehouse (PostgreSQL) has no writer lock: the rows go into the published
    `ops.quality_results` (created if missing) in one transaction, nothing else changes.
    Called by the failing task itself, inside the `warehouse_writer` pool, so it is the
    only writer (single-writer rule).
    """
    from warehouse.backends import as_warehouse

    wh = as_warehouse(where)
    if wh.kind != "duckdb":
        with wh.transaction(None) as s:
            store_results(s, run_id, results)
        return True

    from warehouse.backends.duckdb import connect
    from warehouse.publish import abandon_build, begin_build, publish_build

    warehouse_path = Path(wh.path)
    if not warehouse_path.exists():
        return False
    build = begin_build(warehouse_path, f"{run_id}-failed-gate")
    try:
        con = connect(build, memory_limit=wh.memory_limit)
        try:
            con.execute("begin")
            store_results(con, run_id, results)
            con.execute("commit")
        finally:
            con.close()
        publish_build(build, warehouse_path)
    except BaseException:
        abandon_build(build)
        raise
    return True


def _dbt_tested_model(manifest: dict[str, Any], unique_id: str) -> str:
    """The model a dbt test guards (its attached node or first dependency), else `dbt`."""
    node = (manifest.get("nodes") or {}).get(unique_id) or {}
    attached = node.get("attached_node") or next(
        iter((node.get("depends_on") or {}).get("nodes") or []), None
    )
    return str(attached).split(".")[-1] if attached else "dbt"


def dbt_test_results(nodes: list[Any], run_id: str, manifest_path: Path | None) -> SuiteResult:
    """dbt's data tests of one build (dbt_runner.NodeResult) as the suite `dbt`.

    Why: FX completeness and the marts' keys are dbt tests; their failures belong in
    `ops.quality_results` beside the GX suites. A failing test's observed value is its
    message: the row count and its first stored rows (the FX test names the currency and
    day); a test that errors counts as failed too. Unit tests are code checks, not data: left out.
    """
    manifest: dict[str, Any] = {}
    if manifest_path is not None and manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
    outcomes = []
    for node in nodes:
        if node.resource_type != "test" or node.status == "skipped":
            continue  # skipped: not evaluated (an upstream node failed)
        success = node.status == "pass"
        outcomes.append(
            ExpectationOutcome(
                suite=DBT_SUITE,
                table=_dbt_tested_model(manifest, node.unique_id),
                expectation=node.name,
                column=None,
                severity="warning" if node.status == "warn" else "critical",
                success=success,
                observed_value=None if success else (node.message or node.status),
                unexpected_count=node.failures,
                details={"status": node.status, "unique_id": node.unique_id},
            )
        )
    return SuiteResult(
        suite=DBT_SUITE, table="dbt_project", run_id=run_id, outcomes=outcomes, rows=None
    )


# --------------------------------------------------------------------------------------
# Data Docs


SUMMARY_PAGE = "quality_summary.html"


def _summary_html(results: list[SuiteResult], site: Path) -> str:
    """A self-contained page (no CDN assets) with every failure, linking to GX's pages."""
    esc = html.escape
    rows = []
    for result in sorted(results, key=lambda r: (not r.critical_failures, r.suite)):
        status = "FAILED" if result.critical_failures else ("warn" if result.warnings else "ok")
        pages = sorted(site.glob(f"validations/{result.suite.replace('.', '/')}/**/*.html"))
        link = pages[-1].relative_to(site).as_posix() if pages else None
        name = f'<a href="{esc(link)}">{esc(result.suite)}</a>' if link else esc(result.suite)
        failures = "".join(
            f"<li class='{esc(o.severity)}'>{esc(o.describe())}</li>"
            for o in result.critical_failures + result.warnings
        )
        rows.append(
            f"<tr class='{status.lower()}'><td>{name}</td><td>{esc(result.table)}</td>"
            f"<td>{esc(str(result.run_id))}</td><td>{result.rows}</td><td>{status}</td>"
            f"<td><ul>{failures}</ul></td></tr>"
        )
    return (
        "<!doctype html><meta charset='utf-8'><title>Quality results</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top}.failed{background:#fdd}.warn{background:#ffd}"
        "li.critical{color:#a00}</style>"
        "<h1>Quality results</h1><p><a href='index.html'>GX Data Docs</a></p>"
        "<table><tr><th>suite</th><th>table</th><th>run</th><th>rows</th><th>status</th>"
        "<th>failed expectations</th></tr>" + "".join(rows) + "</table>"
    )


# Assets GX's page templates load from CDNs: dropped (the pages' own styles are inline);
# its logo comes from the site's own static/images instead.
_EXTERNAL_LOADS = (
    re.compile(r"<link\b[^>]*\bhref=[\"']https?://[^>]*>", re.I),
    re.compile(r"<script\b[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>", re.I),
)
_GX_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"


def _offline(site: Path) -> None:
    """Make GX's pages load nothing from outside the site (Data Docs are read offline).

    GX's index fills its tables with jQuery from a CDN: without it they stay empty, so
    the index also gets a plain list of the site's pages (`nav#pages`)."""
    for page in site.rglob("*.html"):
        text = page.read_text()
        for pattern in _EXTERNAL_LOADS:
            text = pattern.sub("", text)
        images = os.path.relpath(site / "static" / "images", page.parent)
        text = text.replace(_GX_IMAGES, f"{Path(images).as_posix()}/")
        if page == site / "index.html":
            text = re.sub(
                r"(<body\b[^>]*>)", lambda m: m.group(1) + _pages_nav(site), text, count=1
            )
        page.write_text(text)


def _pages_nav(site: Path) -> str:
    """Links to the summary, every validation result page and every suite page."""
    links = [f'<li><a href="{SUMMARY_PAGE}">quality summary (every failure)</a></li>']
    for folder, label in (("validations", "validation result"), ("expectations", "suite")):
        for page in sorted((site / folder).rglob("*.html")):
            rel = page.relative_to(site).as_posix()
            name = rel.removeprefix(f"{folder}/").removesuffix(".html")
            links.append(f'<li>{label}: <a href="{html.escape(rel)}">{html.escape(name)}</a></li>')
    return f'<nav id="pages" style="margin:1em"><ul>{"".join(links)}</ul></nav>'


RESULTS_DIR = "validation_results"


def _take_built_site(results: list[SuiteResult], staging: Path) -> None:
    """Move the site this process's checkpoints built, with the validation results they
    stored, into `staging`, leaving the process's folders empty.

    Results of validations never published (a gate that stopped before its publish) are
    dropped first and the site is then rebuilt from the store, so a site holds exactly
    the validations of `results`.
    """
    from quality.suites import DOCS_SITE, gx_context, runtime_dir

    context, runtime = gx_context(), runtime_dir()
    store = context.validation_results_store
    wanted = {key.to_tuple() for result in results for key in result.gx_keys}
    left_over = [key for key in store.list_keys() if key.to_tuple() not in wanted]
    for key in left_over:
        store.remove_key(key)
    built = runtime / "data_docs"
    if left_over or not (built / "index.html").exists():
        shutil.rmtree(built, ignore_errors=True)
        context.build_data_docs(site_names=[DOCS_SITE])
    shutil.copytree(built, staging, dirs_exist_ok=True)
    if (runtime / "validations").is_dir():
        shutil.copytree(runtime / "validations", staging / RESULTS_DIR, dirs_exist_ok=True)
    shutil.rmtree(built)
    shutil.rmtree(runtime / "validations", ignore_errors=True)


def build_data_docs(results: list[SuiteResult], site_dir: Path) -> Path:
    """Publish this process's Data Docs into `site_dir`; return its index.html.

    The checkpoints (`quality.validate`) stored each validation result and updated the
    site in the process's runtime folder (`quality.suites.runtime_dir`); this moves that
    site, with the results as JSON under `validation_results/`, into a staging directory
    and renames it over `site_dir`, so `site_dir` holds either the previous site or the
    new one, with exactly the validations of `results`. GX's pages are made to load nothing from a CDN;
    `quality_summary.html` beside them lists every failure of `results` over whole
    tables, with its offending rows, and links to GX's pages.
    """
    from quality.suites import GX_LOCK

    site_dir = Path(site_dir)
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gx-docs-", dir=site_dir.parent))
    try:
        with GX_LOCK:
            _take_built_site(results, staging)
        _offline(staging)
        (staging / SUMMARY_PAGE).write_text(_summary_html(results, staging))
        old = None
        if site_dir.exists():
            old = site_dir.parent / f".old-{site_dir.name}-{staging.name}"
            site_dir.rename(old)
        staging.rename(site_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return site_dir / "index.html"
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
