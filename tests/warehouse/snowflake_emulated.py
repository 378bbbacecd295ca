"""The Snowflake backend and dbt-snowflake against fakesnow's server (run in .venv-adapters).

Not a pytest module: tests/warehouse/test_snowflake_emulated.py runs it as
`.venv-adapters/bin/python tests/warehouse/snowflake_emulated.py <parquet dir> <out.json>`
(the main .venv has no Snowflake connector). It starts `fakesnow.server()` on
127.0.0.1 (a free port, one shared in-memory database), then:

1. tries each real Snowflake statement fakesnow is known to lack (`_REAL_STATEMENTS`)
   and records whether fakesnow refused it;
2. through `SnowflakeWarehouse(emulator="fakesnow")`: begin a build, `load_parquet`
   every raw table (PUT + COPY INTO), orders by `merge_parquet` of a delta (stale
   duplicates, updates, new keys) and `delete_keys` of an extra row, publish, read the
   published tables back as Arrow; an abandoned build and a conflicting publish leave
   the published tables as they were;
3. `dbt build --target snowflake` with dbt-snowflake against the same server;
   every node's status and message from run_results.json.

Everything goes into <out.json> for the pytest side to assert on; the server is
stopped when the script ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import fakesnow  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import snowflake.connector  # noqa: E402

from warehouse.backends.base import PublishConflictError  # noqa: E402
from warehouse.backends.snowflake import _REAL_STATEMENTS, SnowflakeWarehouse  # noqa: E402

DATABASE = "NIGHTSHIFT"
REPORT_TZ = "America/New_York"


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows as sorted tuples (timestamps compared as UTC instants, decimals exactly)."""
    cols = [c.to_pylist() for c in table.columns]
    out = []
    for row in zip(*cols, strict=True):
        out.append(tuple(v.timestamp() if hasattr(v, "timestamp") else v for v in row))
    return sorted(out, key=repr)


def probe_real_statements(conn_kwargs: dict[str, Any]) -> dict[str, str]:
    """Each statement fakesnow is known to lack: 'refused: <error>' or 'ran'."""
    statements = {
        "schema_clone": "create schema PROBE_CLONE clone PROBE_A",
        "schema_swap": "alter schema PROBE_B swap with PROBE_A",
        "database_swap": f"alter database PROBE_DB swap with {DATABASE}",
    }
    assert set(statements) == set(_REAL_STATEMENTS)
    out = {}
    con = snowflake.connector.connect(**conn_kwargs, database=DATABASE)
    try:
        cur = con.cursor()
        cur.execute(f"create database if not exists {DATABASE}")
        cur.execute(f"use database {DATABASE}")
        cur.execute("create schema if not exists PROBE_A")
        cur.execute("create schema if not exists PROBE_B")
        cur.execute("create table PROBE_A.T (X NUMBER)")
        cur.execute("create database if not exists PROBE_DB")
        for name, sql in statements.items():
            try:
                cur.execute(sql)
                out[name] = "ran"
            except snowflake.connector.errors.Error as exc:
                out[name] = "refused: " + str(exc).splitlines()[0][:160]
        for s in ("PROBE_A", "PROBE_B", "PROBE_CLONE"):
            cur.execute(f"drop schema if exists {s} cascade")
        cur.execute("use database " + DATABASE)
    finally:
        con.close()
    return out


def loader(conn_kwargs: dict[str, Any], parquet_dir: Path, work: Path) -> dict[str, Any]:
    wh = SnowflakeWarehouse(connection={**conn_kwargs, "database": DATABASE}, emulator="fakesnow")
    inputs = {p.stem: pq.read_table(p) for p in sorted(parquet_dir.glob("*.parquet"))}
    result: dict[str, Any] = {"tables": {}, "timings_s": {}}
    t0 = time.monotonic()
    build = wh.begin_build("night-1")
    for name, path in sorted((p.stem, p) for p in parquet_dir.glob("*.parquet")):
        schema, table = name.split(".")
        if name == "raw.orders":
            continue
        wh.load_parquet(build, schema, table, [path])
    result["timings_s"]["load"] = time.monotonic() - t0

    # orders: a first load with stale versions of 1-3, without 9-11, with an extra 999;
    # then a merge of (the true 1-3, 9-11, older duplicates of 1-3) and a delete of 999.
    orders = inputs["raw.orders"]
    orders = orders.cast(pa.schema([f.with_nullable(True) for f in orders.schema]))
    ids = orders.column("id")
    stale = orders.filter(pc.is_in(ids, pa.array([1, 2, 3], pa.int64())))
    stale = stale.set_column(
        stale.schema.get_field_index("status"), "status", pa.array(["stale"] * stale.num_rows)
    )
    older = stale.set_column(
        stale.schema.get_field_index("updated_at"),
        "updated_at",
        pc.subtract(stale.column("updated_at"), pa.scalar(3600 * 10**6, pa.duration("us"))),
    )
    base = orders.filter(pc.invert(pc.is_in(ids, pa.array([1, 2, 3, 9, 10, 11], pa.int64()))))
    extra = orders.slice(0, 1).set_column(0, "id", pa.array([999], pa.int64()))
    first = pa.concat_tables([t.cast(orders.schema) for t in (base, older, extra)])
    delta = pa.concat_tables(
        [
            t.cast(orders.schema)
            for t in (
                orders.filter(pc.is_in(ids, pa.array([1, 2, 3, 9, 10, 11], pa.int64()))),
                older,
            )
        ]
    )
    pq.write_table(first, work / "orders-first.parquet")
    pq.write_table(delta.slice(0, 4), work / "orders-delta-a.parquet")
    pq.write_table(delta.slice(4), work / "orders-delta-b.parquet")
    t0 = time.monotonic()
    result["orders_first_rows"] = wh.load_parquet(
        build, "raw", "orders", [work / "orders-first.parquet"]
    )
    merged = wh.merge_parquet(
        build,
        "raw",
        "orders",
        [work / "orders-delta-a.parquet", work / "orders-delta-b.parquet"],
        ["id"],
        cursor="updated_at",
    )
    result["merge"] = {"inserted": merged.inserted, "updated": merged.updated}
    result["deleted"] = wh.delete_keys(
        build, "raw", "orders", pa.table({"id": pa.array([999], pa.int64())})
    )
    result["timings_s"]["merge_delete"] = time.monotonic() - t0

    # nothing is published before publish
    result["published_tables_before"] = wh.read_arrow(
        "select count(*) as n from information_schema.tables where table_schema = 'RAW'"
    )["n"][0].as_py()
    t0 = time.monotonic()
    result["publish_s"] = wh.publish(build)
    result["timings_s"]["publish"] = time.monotonic() - t0
    result["generation"] = wh.generation()

    for name, table in inputs.items():
        schema, tname = name.split(".")
        cols = ", ".join(f'"{c.upper()}"' for c in table.column_names)
        got = wh.read_arrow(f"select {cols} from {{{schema}}}.{tname.upper()}")
        result["tables"][name] = {
            "rows": got.num_rows,
            "columns": got.column_names == table.column_names,
            "equal": _rows(got) == _rows(table),
            "types": {f.name: str(f.type) for f in got.schema},
        }

    # an abandoned build and a conflicting publish leave the published tables alone
    a = wh.begin_build("night-2")
    b = wh.begin_build("night-3")
    wh.execute("delete from {raw}.ORDERS", build=a)
    wh.abandon_build(a)
    wh.execute("delete from {raw}.USERS", build=b)
    other = wh.begin_build("night-4")
    wh.publish(other)
    try:
        wh.publish(b)
        result["conflict"] = "published"
    except PublishConflictError as exc:
        result["conflict"] = str(exc)
    wh.abandon_build(b)
    # a second attempt of a run drops the first attempt's schemas
    c1 = wh.begin_build("night-5")
    c2 = wh.begin_build("night-5")
    schemas = wh.read_arrow("select schema_name as s from information_schema.schemata")
    names = set(schemas["s"].to_pylist())
    # the catalog holds the physical (upper-case) names of the builds' schemas
    result["rerun_drops_attempt"] = (
        c1.schema("raw").upper() not in names and c2.schema("raw").upper() in names
    )
    wh.abandon_build(c2)
    result["after_abandon"] = {
        t: wh.read_arrow(f"select count(*) as n from {{raw}}.{t}")["n"][0].as_py()
        for t in ("ORDERS", "USERS")
    }
    return result


PROFILE = """\
nightshift:
  target: snowflake
  outputs:
    snowflake:
      type: snowflake
      account: fakesnow
      user: fake
      password: snow
      database: {database}
      warehouse: fake
      role: fake
      schema: PUBLIC
      host: 127.0.0.1
      port: {port}
      protocol: http
      threads: 1
      connect_retries: 0
      connect_timeout: 10
      reuse_connections: true
"""


def dbt(conn_kwargs: dict[str, Any], work: Path) -> dict[str, Any]:
    profiles = work / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        PROFILE.format(database=DATABASE, port=conn_kwargs["port"])
    )
    target = work / "dbt-target"
    env = {
        **os.environ,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
        "DBT_LOG_PATH": str(work / "dbt-logs"),
    }
    dbt_bin = Path(sys.executable).parent / "dbt"
    common = [
        "--project-dir",
        str(ROOT / "dbt_project"),
        "--profiles-dir",
        str(profiles),
        "--target",
        "snowflake",
        "--vars",
        json.dumps({"report_tz": REPORT_TZ, "through_date": "2024-01-16", "run_id": None}),
    ]
    out: dict[str, Any] = {"nodes": {}, "runs": {}}
    # models, snapshots and data tests first; unit tests apart (on fakesnow some cannot
    # run, and a failed unit test would skip its model and everything downstream)
    invocations = {
        "build": ["build", "--exclude-resource-type", "unit_test"],
        "unit_tests": ["test", "--resource-type", "unit_test"],
    }
    for name, command in invocations.items():
        target = work / f"dbt-target-{name}"
        t0 = time.monotonic()
        done = subprocess.run(
            [str(dbt_bin), *command, *common, "--target-path", str(target)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        run = {"returncode": done.returncode, "seconds": time.monotonic() - t0}
        out["runs"][name] = run
        results_path = target / "run_results.json"
        if not results_path.exists():
            run["stdout"] = done.stdout[-4000:]
            run["stderr"] = done.stderr[-4000:]
            continue
        for r in json.loads(results_path.read_text())["results"]:
            message = r.get("message") or ""
            lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
            out["nodes"][r["unique_id"]] = {
                "status": r["status"],
                "message": " ".join(lines)[-300:],
            }
    con = snowflake.connector.connect(**conn_kwargs, database=DATABASE)
    try:
        cur = con.cursor()
        cur.execute(f"use database {DATABASE}")
        with contextlib.suppress(snowflake.connector.errors.Error):
            cur.execute(
                "select date, region, total_sales_usd, order_count "
                "from ANALYTICS.SALES_SUMMARY order by 1, 2"
            )
            out["sales_summary"] = [
                [r[0].isoformat(), r[1], str(Decimal(r[2])), int(r[3])] for r in cur.fetchall()
            ]
    finally:
        con.close()
    return out


def main() -> int:
    parquet_dir, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    work = out_path.parent / "snowflake-work"
    work.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "fakesnow": fakesnow.__version__ if hasattr(fakesnow, "__version__") else None
    }
    from importlib.metadata import version

    report["versions"] = {
        p: version(p)
        for p in ("fakesnow", "snowflake-connector-python", "dbt-snowflake", "duckdb", "sqlglot")
    }
    t0 = time.monotonic()
    with fakesnow.server(host="127.0.0.1") as conn_kwargs:
        report["server_start_s"] = time.monotonic() - t0
        report["port"] = conn_kwargs["port"]
        report["probes"] = probe_real_statements(conn_kwargs)
        report["loader"] = loader(conn_kwargs, parquet_dir, work)
        if os.environ.get("NIGHTSHIFT_SNOWFLAKE_SKIP_DBT") != "1":
            report["dbt"] = dbt(conn_kwargs, work)
    report["total_s"] = time.monotonic() - t0
    out_path.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
