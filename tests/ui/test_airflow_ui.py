"""The Airflow UI, proven in a real browser.

Airflow 3 runs for real (api-server, scheduler, dag-processor; LocalExecutor; metadata
in PostgreSQL when one is reachable, else SQLite) against small demo sources and the
demo payments API. `nightly_sales` is unpaused and triggered through the REST API and
must succeed; then headless Chromium (Debian's `/usr/bin/chromium`, driven by
Playwright) logs in through the login page, opens the DAG's grid and the run, and every
task must be shown as Success. Screenshots go to `test-artifacts/ui/`; the first good
one becomes `docs/airflow-ui.png` (set NIGHTSHIFT_UPDATE_UI_SCREENSHOT=1 to replace it).

Overrides: NIGHTSHIFT_CHROMIUM (browser binary), NIGHTSHIFT_UI_TEST_METADATA=sqlite
(force SQLite metadata).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect, sync_playwright

from demo.generator import generate
from demo.run import running_api
from tests.alerting.test_sinks import Receiver, receiver_running
from tests.servers import fresh_database
from tests.ui.airflow_stack import REPO_ROOT, AirflowStack, airflow_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

DAG_ID = "nightly_sales"
TOKEN = "ui-test-token"
RUN_TIMEOUT_S = 900  # generous: other tests may load the 2 cores
# The run's DeadlineAlert: short enough to be missed while the run is going.
DEADLINE_MINUTES = 0.1
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
README_SCREENSHOT = REPO_ROOT / "docs" / "airflow-ui.png"
# Without the background-networking flags Chromium's own connections are refused on a
# closed network and slow it down; a fresh profile comes from Playwright's launch().
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 60_000
expect.set_options(timeout=UI_TIMEOUT_MS)  # `expect` waits 5 s by default: too short under load


def chromium_path() -> str:
    found = os.environ.get("NIGHTSHIFT_CHROMIUM") or shutil.which("chromium")
    found = found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not found:
        pytest.fail(
            "Chromium is not installed: `apt-get install chromium` (what .ci/run does) "
            "or point NIGHTSHIFT_CHROMIUM at a Chromium binary"
        )
    return found


@pytest.fixture(scope="module")
def metadata_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh PostgreSQL database for Airflow's metadata (psycopg2 URL), else None: SQLite."""
    if os.environ.get("NIGHTSHIFT_UI_TEST_METADATA", "").lower() == "sqlite":
        yield None
        return
    try:
        admin_url = request.getfixturevalue("postgres_admin_url")
    except Exception as exc:  # no server and none can be started here
        print(f"[ui] PostgreSQL unavailable ({exc}); Airflow metadata in SQLite")
        yield None
        return
    with fresh_database(admin_url, prefix="nightshift_airflow") as url:
        yield (
            sa.make_url(url)
            .set(drivername="postgresql+psycopg2")
            .render_as_string(hide_password=False)
        )


# ---------------------------------------------------------------------------- REST API


def trigger_run(stack: AirflowStack, business_date: date) -> str:
    r = stack.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    assert r.status_code == 200, r.text
    assert r.json()["is_paused"] is False
    r = stack.api(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": {"business_date": business_date.isoformat()}},
    )
    assert r.status_code == 200, r.text
    return r.json()["dag_run_id"]


def task_instances(stack: AirflowStack, run_id: str) -> dict[str, dict]:
    r = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
    r.raise_for_status()
    return {ti["task_id"]: ti for ti in r.json()["task_instances"]}


# Keys of a structured log line that only repeat which task instance it is.
_LOG_NOISE = frozenset(
    "timestamp event level logger filename lineno map_index run_id try_number dag_id "
    "task_id ti_id ti".split()
)


def task_log(stack: AirflowStack, run_id: str, ti: dict) -> str:
    """The task's log as the UI shows it (`.../logs/{try}`), as plain text."""
    tries = max(int(ti.get("try_number") or 1), 1)
    r = stack.api(
        "GET",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{tries}",
        params={"full_content": "true"},
        headers={"Accept": "application/json"},
    )
    if r.status_code != 200:
        return f"(log not available: HTTP {r.status_code} {r.text[:500]})"
    lines = []
    for entry in r.json().get("content") or []:
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        extra = {k: v for k, v in entry.items() if k not in _LOG_NOISE and k != "error_detail"}
        lines.append(
            f"{entry.get('timestamp', '')} {entry.get('level', '')} "
            f"{entry.get('event', '')} {extra if extra else ''}".rstrip()
        )
        for exc in entry.get("error_detail") or []:  # the traceback, innermost frames last
            for frame in exc.get("frames", [])[-8:]:
                lines.append(
                    f"    {frame.get('filename')}:{frame.get('lineno')} {frame.get('name')}"
                )
            lines.append(f"  {exc.get('exc_type')}: {exc.get('exc_value')}")
    return "\n".join(lines)


def wait_for_run(stack: AirflowStack, run_id: str, timeout: float = RUN_TIMEOUT_S) -> None:
    """Poll the run until it ends; on failure fail with the failed tasks' logs."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        stack.check_alive()
        r = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        r.raise_for_status()
        state = r.json()["state"]
        if state == "success":
            return
        if state == "failed":
            break
        time.sleep(3)
    tis = task_instances(stack, run_id)
    summary = ", ".join(f"{t}={ti['state']}" for t, ti in tis.items())
    logs = "\n".join(
        f"===== log of {t} ({ti['state']}) =====\n{task_log(stack, run_id, ti)[-8000:]}"
        for t, ti in tis.items()
        if ti["state"] in ("failed", "up_for_retry")
    )
    pytest.fail(
        f"{DAG_ID} run {run_id} ended {state!r} (timeout {timeout:.0f} s): {summary}\n{logs}\n"
        f"{stack.component_logs() if not logs else ''}"
    )


# ---------------------------------------------------------------------------- browser


def log_in(page: Page, stack: AirflowStack) -> None:
    page.goto(f"{stack.base_url}/")
    expect(page).to_have_url(re.compile(r"/auth/login"), timeout=UI_TIMEOUT_MS)
    page.get_by_label("Username").fill(stack.username)
    page.get_by_label("Password").fill(stack.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=UI_TIMEOUT_MS)


def grid_states(page: Page, run_id: str, task_ids: list[str]) -> dict[str, str]:
    """The state the DAG's grid shows for each task of the run (its cell's tooltip)."""
    states = {}
    for task_id in task_ids:
        # The task's name in the grid's left column, and its cell in the run's column.
        expect(page.get_by_role("link", name=task_id, exact=True).first).to_be_visible()
        cell = page.get_by_test_id(f"grid-{run_id}-{task_id}")
        expect(cell).to_be_visible(timeout=UI_TIMEOUT_MS)
        # One tooltip at a time: leave the previous cell and let its tooltip close. The
        # hovered grid re-styles itself, so Playwright's "stable" check never settles
        # there: hover without it, the cell is visible.
        page.mouse.move(0, 0)
        expect(page.get_by_role("tooltip")).to_have_count(0)
        cell.hover(force=True)
        tooltip = page.get_by_role("tooltip", name=re.compile(rf"^Task ID: {re.escape(task_id)} "))
        expect(tooltip).to_be_visible()
        state = tooltip.get_by_text(re.compile(r"^State: "))
        match = re.fullmatch(r"State:\s*(\S+)", state.inner_text().strip())
        states[task_id] = match.group(1).lower() if match else f"({state.inner_text()!r})"
    page.mouse.move(0, 0)
    expect(page.get_by_role("tooltip")).to_have_count(0)
    return states


def run_table_states(page: Page, task_ids: list[str]) -> dict[str, str]:
    """The State column of the run's Task Instances table, by the rows' accessible names."""
    states = {}
    for task_id in task_ids:
        row = page.get_by_role("row", name=re.compile(rf"^{re.escape(task_id)} "))
        expect(row).to_have_count(1, timeout=UI_TIMEOUT_MS)
        name = row.inner_text().split()
        states[task_id] = name[1].lower() if len(name) > 1 else "(empty row)"
    return states


def save_screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


# ---------------------------------------------------------------------------- the stack


@dataclass
class NightlyStack:
    stack: AirflowStack
    run_id: str
    business_date: date
    warehouse: Path
    webhook: Receiver


@pytest.fixture(scope="module")
def nightly(metadata_url: str | None) -> Iterator[NightlyStack]:
    """Airflow for real, with one green `nightly_sales` run triggered through the API.

    The run's deadline is a few seconds (NIGHTSHIFT_RUN_DEADLINE_MINUTES) so that the
    scheduler's DeadlineAlert fires while it runs, and `alerts_webhook` points at a
    receiver on loopback.
    """
    started = time.monotonic()
    business_date = datetime.now(UTC).date() - timedelta(days=1)
    tmp = Path(tempfile.mkdtemp(prefix="nightshift-ui-"))
    try:
        source_db, payments_db = tmp / "source.db", tmp / "payments.db"
        generate(
            f"sqlite:///{source_db}",
            days=5,
            end_date=business_date,
            orders_per_day=30,
            payments_db=payments_db,
            if_exists="replace",
        )
        with running_api(payments_db, token=TOKEN) as api_uri, receiver_running() as webhook:
            extra_env = {
                "AIRFLOW_CONN_SOURCE_DB": f"sqlite:///{source_db}",
                "AIRFLOW_CONN_PAYMENTS_API": api_uri,
                "AIRFLOW_CONN_ALERTS_WEBHOOK": webhook.url,
                "NIGHTSHIFT_DATA_DIR": str(tmp / "data"),
                "NIGHTSHIFT_RUN_DEADLINE_MINUTES": str(DEADLINE_MINUTES),
                "REPORT_TZ": "UTC",
            }
            with airflow_stack(
                tmp / "airflow",
                metadata_url=metadata_url,
                extra_env=extra_env,
                pools={"warehouse_writer": (1, "one writer of the DuckDB warehouse")},
                wait_for_dags=(DAG_ID,),
            ) as stack:
                print(
                    f"[ui] Airflow up at {stack.base_url} after {time.monotonic() - started:.0f} s"
                )
                run_id = trigger_run(stack, business_date)
                wait_for_run(stack, run_id)
                print(f"[ui] {run_id} succeeded after {time.monotonic() - started:.0f} s")
                yield NightlyStack(
                    stack, run_id, business_date, tmp / "data" / "warehouse.duckdb", webhook
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- the tests


def test_airflow_ui_shows_a_green_nightly_run(nightly: NightlyStack) -> None:
    browser_bin = chromium_path()
    for stale in ARTIFACTS.glob("airflow-ui-*.png"):
        stale.unlink()
    stack, run_id = nightly.stack, nightly.run_id
    api_states = {t: ti["state"] for t, ti in task_instances(stack, run_id).items()}
    dag_tasks = stack.api("GET", f"/api/v2/dags/{DAG_ID}/tasks").json()["tasks"]
    task_ids = [t["task_id"] for t in dag_tasks]
    assert sorted(api_states) == sorted(task_ids), (api_states, task_ids)
    assert set(api_states.values()) == {"success"}, api_states

    check_in_browser(stack, browser_bin, run_id, task_ids)


def test_a_run_past_its_deadline_alerts_the_webhook(nightly: NightlyStack) -> None:
    """The scheduler's DeadlineAlert (not a test double) reaches the webhook, once."""
    deadline = time.monotonic() + 90
    alerts: list[dict] = []
    while time.monotonic() < deadline:
        alerts = [a for a in nightly.webhook.json_bodies() if "Deadline missed" in json.dumps(a)]
        if alerts:
            break
        time.sleep(2)
    assert len(alerts) == 1, (
        f"expected one deadline alert, got {nightly.webhook.json_bodies()}\n"
        f"{nightly.stack.component_logs()}"
    )
    text = alerts[0]["text"]
    assert DAG_ID in text and nightly.run_id in text, text
    assert "rule run_deadline" in text, text
    # The run ended green: no task failed for good (a retry under load is allowed).
    failed = [a["text"] for a in nightly.webhook.json_bodies() if "Task failed" in a["text"]]
    assert failed == [], failed


def analytics_tables(warehouse: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {
            table: con.execute(f"select * from analytics.{table} order by all").fetchall()
            for table in ("sales_summary", "daily_sales")
        }


def run_backfill(stack: AirflowStack, first: date, last: date) -> str:
    """`make backfill`'s code (`pipeline.airflow_run backfill`) against the live stack.

    In `auto` mode it must find the scheduler and use `airflow backfill create`.
    """
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.airflow_run",
            "backfill",
            "--from",
            first.isoformat(),
            "--to",
            last.isoformat(),
        ],
        env=stack.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S * 4,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{stack.component_logs()}"
    return out


def test_backfill_create_twice_leaves_the_same_tables(nightly: NightlyStack) -> None:
    """`airflow backfill create` over two nights, then again reprocessing them: same tables."""
    before = analytics_tables(nightly.warehouse)
    first = nightly.business_date - timedelta(days=3)
    last = nightly.business_date - timedelta(days=2)
    out = run_backfill(nightly.stack, first, last)
    assert f"backfill {first}..{last}: 2/2 days succeeded" in out, out
    assert "[backfill] 2/2 nights succeeded, 0 failed" in out, out
    once = analytics_tables(nightly.warehouse)
    out = run_backfill(nightly.stack, first, last)
    assert f"backfill {first}..{last}: 2/2 days succeeded" in out, out
    twice = analytics_tables(nightly.warehouse)
    assert once == twice

    # The source did not change: for every day up to the last backfilled night, the
    # older runs publish what the newest run had (later days are not theirs to judge).
    def up_to_last(tables: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
        return {name: [row for row in rows if row[0] <= last] for name, rows in tables.items()}

    assert up_to_last(once) == up_to_last(before)
    assert once["sales_summary"], "the backfilled warehouse is empty"


def check_in_browser(
    stack: AirflowStack, browser_bin: str, run_id: str, task_ids: list[str]
) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=browser_bin, headless=True, args=CHROMIUM_ARGS, timeout=UI_TIMEOUT_MS
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            log_in(page, stack)

            # The DAG's page: the grid, one column per run, one row per task.
            page.goto(f"{stack.base_url}/dags/{DAG_ID}")
            expect(page.get_by_role("heading", name=DAG_ID, exact=True)).to_be_visible()
            shown = grid_states(page, run_id, task_ids)
            assert shown == dict.fromkeys(task_ids, "success"), f"the grid shows {shown}"
            save_screenshot(page, "airflow-ui-grid.png")

            # The run's page: the grid beside the Task Instances table with each state.
            page.goto(f"{stack.base_url}/dags/{DAG_ID}/runs/{run_id}")
            expect(page.get_by_text(f"{len(task_ids)} Task Instances")).to_be_visible()
            table = run_table_states(page, task_ids)
            assert table == dict.fromkeys(task_ids, "success"), f"the run page shows {table}"
            shot = save_screenshot(page, "airflow-ui-run.png")
            if not README_SCREENSHOT.exists() or os.environ.get("NIGHTSHIFT_UPDATE_UI_SCREENSHOT"):
                shutil.copyfile(shot, README_SCREENSHOT)
            print(f"[ui] screenshots in {ARTIFACTS}")
        except Exception:
            save_screenshot(page, "airflow-ui-failure.png")
            raise
        finally:
            browser.close()
