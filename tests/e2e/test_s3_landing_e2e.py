"""End to end with the landing zone on object storage: `nightly_sales` through real
Airflow (`airflow dags test`) against the PostgreSQL source and the payments API, the
landing zone on a real S3 API server on loopback (moto's server), credentials only in
`AIRFLOW_CONN_LANDING`.

Day 1 is published and must equal the oracle. Then day 2's extract is SIGKILLed in a
subprocess after its first object reached the store: a half-written run (an attempt
without manifest or commit) is left behind, and the killed writer's host has a local
copy of it. A fresh host (an empty local stage) does not see it; the next run of day 2,
on yet another host, replaces it: day 2 equals the oracle (nothing doubled), no attempt
without a commit is left, every committed run has exactly one attempt, and the secret
appears in no object and no log line. The quarantine is on the store too
(`NIGHTSHIFT_QUARANTINE_URL`): day 1's quarantined records reach the next host. So are
the run files, the report and the Data Docs (`NIGHTSHIFT_DATA_URL`): the published run
metrics hold every step although each host wrote its own, day 2's report (host C) lists
day 1's (host A), and nothing is written to the local `runs`, `report` or `docs` folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import settings
from demo.generator import apply_next_day, generate
from demo.run import running_api
from extract.object_landing import ATTEMPT_PREFIX
from pipeline.airflow_run import airflow_env, run_dag
from tests.e2e.harness import REPORT_TZ, TOKEN, api_base_of, assert_matches_oracle, pipeline_env
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server, start_s3_server

pytestmark = pytest.mark.e2e

END = date(2026, 11, 20)

# The extract of a day in its own process, slowed after the first object it puts into
# the store so the test can kill it mid-run (the writer itself is the real code).
KILLED_EXTRACT = textwrap.dedent(
    """
    import sys, time
    from datetime import date
    from extract import object_landing

    put = object_landing.LandingStore._put_file
    def slow_after_first(self, local, key):
        put(self, local, key)
        time.sleep(120)
    object_landing.LandingStore._put_file = slow_after_first

    from pipeline.nightly import extract_source_db
    extract_source_db(date.fromisoformat(sys.argv[1]))
    """
)


def _store(env: dict[str, str]):  # noqa: ANN202
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return settings.landing_store()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _kill_extract_after_first_object(day: date, env: dict[str, str], store) -> list[str]:  # noqa: ANN001
    before = set(store.uncommitted_attempts())
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXTRACT, day.isoformat()],
        env=airflow_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            half = sorted(set(store.uncommitted_attempts()) - before)
            if half:
                break
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            time.sleep(0.1)
        else:
            raise AssertionError("the extract put no object into the store in 90 s")
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert SECRET_KEY not in output and ACCESS_KEY not in output
    return half


# the @timed steps before `publish`, which gathers their files into ops.task_metrics
STEPS_BEFORE_PUBLISH = {
    "extract_source_db",
    "load_source_db",
    "extract_payments_api",
    "load_payments_api",
    "dbt_build",
    "transform_daily_sales",
    "check_parity",
}


def _assert_run_files_on_the_store(
    s3: S3Server, bucket: str, warehouse: Path, day: date, hosts: Path
) -> None:
    """The run's step files, report and Data Docs are objects under `data/`; the
    published metrics were gathered from them; nothing of them is in a local folder."""
    import duckdb

    keys = set(s3.keys(bucket, "data/"))
    steps = {k.rsplit("/", 1)[-1].removesuffix(".json") for k in keys if f"runs/{day}/steps/" in k}
    assert steps >= STEPS_BEFORE_PUBLISH | {"publish", "build_report"}, sorted(keys)
    assert {f"data/report/{day}.html", f"data/report/{day}.csv"} <= keys, sorted(keys)
    # every Data Docs site a host built (in its stage) is on the store, under its step
    built = {p.parent.name for p in hosts.glob("host-*/data/docs/quality/*/index.html")}
    assert built, "no host built Data Docs: the comparison below would be vacuous"
    docs = {k.split("/")[3] for k in keys if k.startswith("data/docs/quality/")}
    assert docs == built, (docs, built)
    for step in built:
        assert f"data/docs/quality/{step}/index.html" in keys
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tasks = {r[0] for r in con.execute(
            "select task from ops.task_metrics where run_id = ? and status = 'success'", [str(day)]
        ).fetchall()}  # fmt: skip
        runs = con.execute(
            "select count(*) from ops.pipeline_runs where run_id = ?", [str(day)]
        ).fetchone()[0]
    assert runs == 1 and tasks >= STEPS_BEFORE_PUBLISH, tasks
    data_dir = warehouse.parent
    for local in ("runs", "report", "docs", "data-stage"):
        assert not (data_dir / local).exists(), f"{data_dir / local} was written"


def test_nightly_with_the_landing_zone_on_s3(
    pg_database: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server_info, server = start_s3_server()
    try:
        _run(pg_database, tmp_path, server_info, capfd)
    finally:
        server.stop()  # type: ignore[attr-defined]


def _run(pg_database: str, tmp_path: Path, s3, capfd) -> None:  # noqa: ANN001
    bucket = s3.new_bucket()
    data_dir = tmp_path / "data"
    payments_db = tmp_path / "payments.db"
    generate(
        pg_database,
        seed=11,
        days=8,
        end_date=END,
        orders_per_day=60,
        payments_db=payments_db,
        if_exists="replace",
    )
    engine = sa.create_engine(pg_database)
    base_env = pipeline_env(pg_database, data_dir, tmp_path / "airflow")
    landing = {
        "NIGHTSHIFT_LANDING_URL": f"s3://{bucket}/landing",
        "NIGHTSHIFT_QUARANTINE_URL": f"s3://{bucket}/quarantine",
        "NIGHTSHIFT_DATA_URL": f"s3://{bucket}/data",  # runs/, report/, docs/quality/
        "AIRFLOW_CONN_LANDING": s3.conn_uri(),
        "NIGHTSHIFT_NO_AIRFLOW_LOOKUP": "1",
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    warehouse = data_dir / "warehouse.duckdb"
    os.environ["REPORT_TZ"] = REPORT_TZ
    try:
        # malformed records: the quarantine has something to put into the store
        with running_api(payments_db, token=TOKEN, faults="malformed", fault_every=1) as api_uri:
            api_base = api_base_of(api_uri)
            env = {**base_env, **landing, "AIRFLOW_CONN_PAYMENTS_API": api_uri}

            def on_host(name: str) -> dict[str, str]:
                return {
                    **env,
                    "NIGHTSHIFT_LANDING_STAGE": str(tmp_path / name / "landing"),
                    "NIGHTSHIFT_QUARANTINE_STAGE": str(tmp_path / name / "quarantine"),
                    "NIGHTSHIFT_DATA_STAGE": str(tmp_path / name / "data"),
                }

            store = _store(on_host("host-a"))
            day1 = END - timedelta(days=2)
            run_dag(day1, on_host("host-a"))
            assert_matches_oracle(engine, warehouse, api_base, day1)
            assert not (data_dir / "landing").exists(), "the local landing folder was used"
            assert not (data_dir / "quarantine").exists(), "the local quarantine was used"
            _assert_run_files_on_the_store(s3, bucket, warehouse, day1, tmp_path)
            quarantined = [k for k in s3.keys(bucket, "quarantine/") if k.endswith(".jsonl")]
            assert any(f"/run={day1.isoformat()}/attempt=" in k for k in quarantined), quarantined
            committed = [k for k in s3.keys(bucket) if k.endswith("/_commit.json")]
            assert {k.split("/")[2] for k in committed} >= {"orders", "payments", "fx_rates"}

            summary = apply_next_day(pg_database, seed=12, payments_db=payments_db)
            day2 = date.fromisoformat(str(summary["date"]))
            half = _kill_extract_after_first_object(day2, on_host("host-b"), store)
            assert all(f"/run={day2.isoformat()}/" in h for h in half), half
            # the half-written run is not a run: a fresh host stages nothing of it
            fresh = tmp_path / "host-fresh"
            store.sync_run(fresh, day2.isoformat())
            for prefix in half:
                source, table, run_dir = prefix.split("/")[:3]
                assert not (fresh / source / table / run_dir).exists(), prefix

            run_dag(day2, on_host("host-c"))  # another host: its stage starts empty
            # the quarantine of day 1 (host A) reached host C through the store
            assert list((tmp_path / "host-c" / "quarantine").rglob(f"run={day1}/attempt=*.jsonl"))
            assert_matches_oracle(engine, warehouse, api_base, day2)
            _assert_run_files_on_the_store(s3, bucket, warehouse, day2, tmp_path)
            index = s3.client().get_object(Bucket=bucket, Key="data/report/index.html")
            assert f'href="{day1}.html"' in index["Body"].read().decode()  # host A's page
            assert store.uncommitted_attempts() == []
            keys = s3.keys(bucket)
            runs: dict[str, set[str]] = {}
            for key in keys:
                parts = key.split("/")
                if parts[0] == "landing" and len(parts) > 5 and parts[4].startswith(ATTEMPT_PREFIX):
                    runs.setdefault("/".join(parts[1:4]), set()).add(parts[4])
            assert runs and all(len(a) == 1 for a in runs.values()), runs
            client = s3.client()
            for key in keys:
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                assert SECRET_KEY.encode() not in body, key
    finally:
        os.environ.pop("REPORT_TZ", None)
        engine.dispose()
    out, err = capfd.readouterr()
    assert "committed to s3://" in out + err  # the task logs were captured
    assert SECRET_KEY not in out + err
    logs = [p for p in (tmp_path / "airflow").rglob("*.log") if p.is_file()]
    for path in logs:
        assert SECRET_KEY not in path.read_text(errors="replace"), path
