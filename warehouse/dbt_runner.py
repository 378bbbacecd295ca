"""Run dbt and summarise `target/run_results.json`.

dbt runs as a subprocess (each Airflow task is its own process anyway), or, with
`NIGHTSHIFT_DBT_IN_PROCESS=1`, through dbt's Python API (`dbtRunner`) in the calling
process: same project, arguments and environment, without the interpreter start-up and
imports of a new process (about 1.5 s a night). The test suite's long sequences of
nights use it.

`dbt_build(warehouse, ..., build=build)` runs on a run's build of any warehouse backend
that has a dbt target here (`dbt_target`): DuckDB (the build file as the profile's
`path`), PostgreSQL and Snowflake (the build's schemas `<schema>__build_<token>` through
`DBT_NIGHTSHIFT_SCHEMA_SUFFIX`, macros/generate_schema_name.sql; Snowflake with the dbt of
.venv-adapters, `DBT_SNOWFLAKE_EXECUTABLE`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import clock, run_ids, settings

if TYPE_CHECKING:
    from warehouse.backends.base import Build, Warehouse

log = logging.getLogger(__name__)

DEFAULT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
_FAILED = {"error", "fail", "runtime error"}
SLOWEST = 5


class DbtError(RuntimeError):
    """dbt exited non-zero (or selected nothing); the message names the failures."""

    def __init__(self, message: str, result: DbtResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class DbtTimeoutError(RuntimeError):
    """dbt ran past `DBT_TIMEOUT_S` and was stopped (a hung query, a locked file).

    Not a `DbtError`: a timeout is transient (Airflow retries it where the task has
    retries), a failed model or test is not."""

    def __init__(self, message: str, result: DbtResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class NodeResult:
    unique_id: str
    status: str
    execution_time: float
    message: str | None = None
    failures: int | None = None
    rows_affected: int | None = None
    # the relation dbt wrote the node to; for a test, where it stored its failing rows
    # (store_failures), else None
    relation_name: str | None = None
    # the first rows a failed test stored (`_add_failing_rows`), column -> value
    failing_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def resource_type(self) -> str:
        """model, test, unit_test, snapshot, seed, ... (the unique_id's first part)."""
        return self.unique_id.split(".", 1)[0]

    @property
    def name(self) -> str:
        """The node's name: `fct_orders`, `unique_stg_orders_order_id`, `<model>.<unit test>`."""
        parts = self.unique_id.split(".")
        if self.resource_type == "test":
            return parts[2] if len(parts) > 2 else self.unique_id  # drop the hash
        return ".".join(parts[2:]) or self.unique_id


@dataclass(frozen=True)
class SourceFreshness:
    """One source table's `dbt source freshness` result (target/sources.json).

    `status`: pass, warn, error, or `runtime error` (the table could not be read);
    `age_s`: the run's clock minus the newest `loaded_at_field` (None: no rows)."""

    unique_id: str
    status: str
    age_s: float | None
    max_loaded_at: str | None
    snapshotted_at: str | None
    warn_after_s: float | None = None
    error_after_s: float | None = None
    message: str | None = None

    @property
    def table(self) -> str:
        """`raw.orders` (source name and table, from the unique_id)."""
        return ".".join(self.unique_id.split(".")[2:]) or self.unique_id


_PERIOD_S = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


def _after_s(criteria: dict[str, Any], key: str) -> float | None:
    rule = criteria.get(key) or {}
    if not rule.get("count") or rule.get("period") not in _PERIOD_S:
        return None
    return float(rule["count"]) * _PERIOD_S[rule["period"]]


def read_source_freshness(path: Path) -> list[SourceFreshness]:
    """The results of `dbt source freshness` (its sources.json); [] when it has none."""
    if not path.is_file():
        return []
    data: dict[str, Any] = json.loads(path.read_text())
    return [
        SourceFreshness(
            unique_id=r.get("unique_id", "?"),
            status=str(r.get("status")),
            age_s=r.get("max_loaded_at_time_ago_in_s"),
            max_loaded_at=r.get("max_loaded_at"),
            snapshotted_at=r.get("snapshotted_at"),
            warn_after_s=_after_s(r.get("criteria") or {}, "warn_after"),
            error_after_s=_after_s(r.get("criteria") or {}, "error_after"),
            message=r.get("error"),
        )
        for r in data.get("results", [])
    ]


@dataclass
class DbtResult:
    args: list[str]
    returncode: int
    elapsed: float | None = None
    nodes: list[NodeResult] = field(default_factory=list)
    output: str = ""
    run_results_path: Path | None = None
    # `dbt source freshness` of the same call (DbtCall(freshness=True)), else empty
    freshness: list[SourceFreshness] = field(default_factory=list)

    @property
    def failed(self) -> list[NodeResult]:
        """Nodes whose status is error/fail."""
        return [n for n in self.nodes if n.status in _FAILED]

    @property
    def statuses(self) -> dict[str, str]:
        """unique_id -> status."""
        return {n.unique_id: n.status for n in self.nodes}

    @property
    def failed_tests(self) -> list[NodeResult]:
        """Data and unit tests that failed or errored (failures = offending rows)."""
        return [n for n in self.failed if n.resource_type in ("test", "unit_test")]

    def slowest(self, n: int = SLOWEST) -> list[NodeResult]:
        return sorted(self.nodes, key=lambda r: r.execution_time, reverse=True)[:n]

    def summary(self) -> dict[str, Any]:
        """Small, JSON-able: what the Airflow task returns (XCom) and logs."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.status] = counts.get(node.status, 0) + 1
        return {
            "returncode": self.returncode,
            "elapsed_s": None if self.elapsed is None else round(self.elapsed, 3),
            "statuses": counts,
            "models": {
                n.name: {"s": round(n.execution_time, 3), "rows_affected": n.rows_affected}
                for n in self.nodes
                if n.resource_type in ("model", "snapshot")
            },
            "failed_tests": {n.name: n.failures for n in self.failed_tests},
            "slowest": [[n.name, round(n.execution_time, 3)] for n in self.slowest()],
            "run_results": None if self.run_results_path is None else str(self.run_results_path),
            "freshness": {
                f.table: {"status": f.status, "age_h": _hours(f.age_s)} for f in self.freshness
            },
        }


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 2)


def dbt_executable() -> Path:
    """The `dbt` console script of the running interpreter's environment."""
    return Path(sys.executable).parent / "dbt"


def _read_run_results(path: Path) -> tuple[float | None, list[NodeResult]]:
    if not path.is_file():
        return None, []
    data: dict[str, Any] = json.loads(path.read_text())
    nodes = [
        NodeResult(
            unique_id=r.get("unique_id", "?"),
            status=str(r.get("status")),
            execution_time=float(r.get("execution_time") or 0.0),
            message=r.get("message"),
            failures=r.get("failures"),
            rows_affected=_rows_affected(r.get("adapter_response") or {}),
            relation_name=r.get("relation_name"),
        )
        for r in data.get("results", [])
    ]
    return data.get("elapsed_time"), nodes


def _rows_affected(adapter_response: dict[str, Any]) -> int | None:
    value = adapter_response.get("rows_affected")
    if value is None or int(value) < 0:  # -1: the adapter does not know
        return None
    return int(value)


def log_summary(result: DbtResult) -> None:
    """Per model timing and rows affected, failed tests with their failure counts, the
    slowest nodes: from run_results.json, into the (task) log."""
    for node in result.nodes:
        if node.resource_type in ("model", "snapshot"):
            rows = "?" if node.rows_affected is None else str(node.rows_affected)
            log.info(
                "dbt %s %s: %s in %.2fs, rows affected %s",
                node.resource_type,
                node.name,
                node.status,
                node.execution_time,
                rows,
            )
    for node in result.failed_tests:
        log.error(
            "dbt test %s: %s, %s failing rows: %s",
            node.name,
            node.status,
            "?" if node.failures is None else node.failures,
            node.message,
        )
    slowest = ", ".join(f"{n.name} {n.execution_time:.2f}s" for n in result.slowest())
    log.info("dbt slowest %d nodes: %s", SLOWEST, slowest or "none")
    summary = result.summary()
    log.info(
        "dbt %s: %s in %ss (run results kept at %s)",
        " ".join(result.args),
        summary["statuses"],
        summary["elapsed_s"],
        summary["run_results"],
    )


def _read_and_keep_freshness(sources_json: Path, label: str | None) -> list[SourceFreshness]:
    """This call's freshness results; the file is kept as `sources-<label>.json` beside
    the kept run results."""
    results = read_source_freshness(sources_json)
    if sources_json.is_file():
        if not run_ids.is_valid(label):
            label = clock.now().strftime("%Y%m%dT%H%M%S.%fZ")
        os.replace(sources_json, sources_json.with_name(f"sources-{label.replace(':', '_')}.json"))
    return results


def _keep_run_results(run_results: Path, label: str | None) -> Path | None:
    """Copy target/run_results.json to target/run_results-<label>.json (label: the run id,
    else a UTC timestamp) so every run's results are kept."""
    if not run_results.is_file():
        return None
    if not run_ids.is_valid(label):
        label = clock.now().strftime("%Y%m%dT%H%M%S.%fZ")
    kept = run_results.with_name(f"run_results-{label.replace(':', '_')}.json")
    shutil.copyfile(run_results, kept)
    return kept


@contextlib.contextmanager
def stable_warehouse_path(warehouse_path: Path, target_dir: Path) -> Iterator[Path]:
    """The warehouse under a path that is the same every night: a symlink
    `<target_dir>/duckdb/<catalog>.duckdb` to it, held under a lock for the run.

    dbt keeps its partial parse only while the profile's connection settings are unchanged,
    and the DuckDB `path` is one of them; the nightly build file is named after its run id
    (warehouse/publish.py), so each night would cost a full parse (4-5 s). The link's name
    keeps DuckDB's catalog name (the file name up to its first dot). DuckDB resolves the
    link when it opens the file, so its WAL stays `<build file>.wal`, where begin_build and
    a rerun look for it.
    """
    warehouse_path = Path(warehouse_path).resolve()
    link_dir = Path(target_dir) / "duckdb"
    link_dir.mkdir(parents=True, exist_ok=True)
    catalog = next((part for part in warehouse_path.name.split(".") if part), "warehouse")
    link = link_dir / f"{catalog}.duckdb"
    with open(link_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one dbt process per link at a time
        tmp = link.with_name(link.name + ".tmp-link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(warehouse_path)
        os.replace(tmp, link)  # atomic re-point
        yield link


FailingRowsReader = Callable[[str, int], list[dict[str, Any]]]
"""Reads up to n rows of a relation dbt names (`relation_name`), column -> value."""

FAILING_ROWS_SHOWN = 3  # stored failing rows of a failed test quoted in DbtError


@dataclass(frozen=True)
class DbtCall:
    """Where and how `run_dbt` runs a dbt command (all but the command's own arguments).

    `project_dir` also holds profiles.yml; `vars` go to `--vars`, `env` over the process
    environment. `warehouse_path`: the DuckDB file (`DBT_DUCKDB_PATH` in the profile, through
    `stable_warehouse_path`). `run_id` names the kept run results. `dbt`: another
    environment's executable (the Snowflake/BigQuery adapters live in `.venv-adapters`);
    `target_dir` (default `DBT_TARGET_PATH`, else `project_dir/target`) keeps that
    environment's artifacts and partial-parse state apart. `timeout_s`: default
    `DBT_TIMEOUT_S`, 0 = none. `freshness`: `dbt source freshness` first, same process
    and parse. `failing_rows`: reads the rows a failed test stored (default: the DuckDB
    `warehouse_path`), quoted in the error.
    """

    project_dir: Path
    target: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    warehouse_path: Path | None = None
    run_id: str | None = None
    dbt: Path | None = None
    target_dir: Path | None = None
    timeout_s: float | None = None
    freshness: bool = False
    failing_rows: FailingRowsReader | None = field(default=None, repr=False)


def run_dbt(args: list[str], call: DbtCall) -> DbtResult:
    """Run `dbt <args>` as `call` says.

    `call.freshness`: `dbt source freshness` first, in the same process and parse
    (warehouse/dbt_steps.py), measured against the run's clock (`DBT_NIGHTSHIFT_NOW` from
    core/clock.py, macros/source_freshness.sql); its results are `result.freshness`
    and never fail the call (the caller decides what a stale source means).

    `call.timeout_s`: the dbt process is stopped (SIGTERM, then SIGKILL) when it runs
    longer, and `DbtTimeoutError` names the setting. dbt in process
    (`NIGHTSHIFT_DBT_IN_PROCESS=1`, tests) cannot be stopped: only the Airflow task's
    `execution_timeout` applies there.

    Output is streamed to the logger, then a summary of run_results.json (kept as
    `<target_dir>/run_results-<run_id or UTC timestamp>.json`). Raises DbtError naming the
    failed nodes when dbt exits non-zero; a failed test that stored its rows
    (store_failures) is named with its first rows.
    """
    project_dir = Path(call.project_dir).resolve()
    target_dir = _target_dir(call, project_dir)
    run_results = target_dir / "run_results.json"
    run_results.unlink(missing_ok=True)  # never report a previous run's results
    # this call's own file: target/sources.json is shared by every dbt run of the dir
    sources_json = target_dir / f"sources-{os.getpid()}-{threading.get_ident()}.json"
    sources_json.unlink(missing_ok=True)
    cmd = _dbt_command(args, call, project_dir)
    env = _dbt_environment(call, target_dir, sources_json)
    timeout_s = _timeout_s(call)
    returncode, lines = _execute(cmd, call, project_dir, target_dir, env, timeout_s)
    elapsed, nodes = _read_run_results(run_results)
    result = DbtResult(
        args=list(args),
        returncode=returncode,
        elapsed=elapsed,
        nodes=nodes,
        output="\n".join(lines),
        run_results_path=_keep_run_results(run_results, call.run_id),
        freshness=_read_and_keep_freshness(sources_json, call.run_id) if call.freshness else [],
    )
    if returncode not in (0, _TIMED_OUT):
        _add_failing_rows(result.failed_tests, call.failing_rows or _duckdb_file_reader(call))
    if nodes:
        log_summary(result)
    _raise_for_exit(result, lines, timeout_s)
    return result


def _target_dir(call: DbtCall, project_dir: Path) -> Path:
    if call.target_dir is not None:
        return Path(call.target_dir).resolve()
    # dbt's own variable, e.g. one target dir per worker
    return Path(settings.env("DBT_TARGET_PATH") or project_dir / "target").resolve()


def _dbt_command(args: list[str], call: DbtCall, project_dir: Path) -> list[str]:
    return [
        str(call.dbt or dbt_executable()),
        *args,
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(project_dir),
        "--target",
        call.target,
        "--vars",
        json.dumps(dict(call.vars)),
    ]


def _dbt_environment(call: DbtCall, target_dir: Path, sources_json: Path) -> dict[str, str]:
    env = {**os.environ, **call.env}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env.setdefault("DBT_USE_COLORS", "false")  # plain text in task logs
    env["DBT_TARGET_PATH"] = str(target_dir)
    env["DBT_LOG_PATH"] = str(target_dir / "logs")
    env["DBT_NIGHTSHIFT_NOW"] = clock.now().isoformat(timespec="seconds")
    env["DBT_NIGHTSHIFT_FRESHNESS_OUTPUT"] = str(sources_json)
    if call.target == "duckdb" and call.warehouse_path is None and not env.get("DBT_DUCKDB_PATH"):
        raise DbtError("target duckdb needs DBT_DUCKDB_PATH (pass warehouse_path= or env=)")
    return env


def _timeout_s(call: DbtCall) -> float:
    if call.timeout_s is not None:
        return call.timeout_s
    from core.settings import dbt_timeout_s

    return dbt_timeout_s()


def _execute(
    cmd: list[str],
    call: DbtCall,
    project_dir: Path,
    target_dir: Path,
    env: dict[str, str],
    timeout_s: float,
) -> tuple[int, list[str]]:
    """Run the command (in process or as a subprocess); (exit code, output lines)."""
    with contextlib.ExitStack() as stack:
        if call.warehouse_path is not None:
            warehouse_path = call.warehouse_path
            if call.target == "duckdb" and Path(warehouse_path) != Path(os.devnull):
                warehouse_path = stack.enter_context(
                    stable_warehouse_path(warehouse_path, target_dir)
                )
            env["DBT_DUCKDB_PATH"] = str(warehouse_path)
        if call.dbt is None and settings.env("NIGHTSHIFT_DBT_IN_PROCESS") == "1":
            return _invoke_in_process(cmd, project_dir, env, call.freshness)
        if call.freshness:  # the same dbt's python runs both commands: one start-up
            cmd = [str(Path(cmd[0]).with_name("python")), str(_STEPS_SCRIPT), *cmd[1:]]
        return _stream(cmd, project_dir, env, timeout_s or None)


def _raise_for_exit(result: DbtResult, lines: list[str], timeout_s: float) -> None:
    """DbtTimeoutError for a stopped process, DbtError naming the failures for a non-zero
    exit; nothing for a clean one."""
    args = " ".join(result.args)
    if result.returncode == _TIMED_OUT:
        raise DbtTimeoutError(
            f"dbt {args} ran longer than {timeout_s:g} s and was stopped "
            f"(DBT_TIMEOUT_S={timeout_s:g}); last output: {' | '.join(lines[-5:]) or 'none'}",
            result,
        )
    if result.returncode == 0:
        return
    if result.failed:
        detail = "; ".join(_describe_failure(n) for n in result.failed)
    else:  # e.g. a compilation or connection error before any node ran
        detail = "\n".join(lines[-20:])
    raise DbtError(
        f"dbt {args} failed (exit {result.returncode}): {detail}{_memory_hint(detail)}", result
    )


def _memory_hint(detail: str) -> str:
    """What to do when DuckDB ran out of its memory limit (nothing for other failures)."""
    if "Out of Memory Error" not in detail:
        return ""
    return (
        f"\nDuckDB ran out of its memory limit ({DUCKDB_MEMORY_LIMIT_ENV}="
        f"{settings.duckdb_memory_limit()}): nothing was published; rerun the night with a "
        "larger limit, e.g. for the first full build of a long history (docs/operating.md)"
    )


def _describe_failure(node: NodeResult) -> str:
    if node.failing_rows:
        return f"dbt test {node.name} failed: {node.message}"
    return f"{node.unique_id} [{node.status}]: {node.message}"


def _add_failing_rows(tests: list[NodeResult], reader: FailingRowsReader | None) -> None:
    """Each failed test that stored its rows (store_failures) gets its first rows, and
    its message becomes `<n> rows, e.g. col=value ...; col=value ...`: the message
    `ops.quality_results` records (quality/results.py) and the error quotes. A relation
    that cannot be read keeps dbt's message (the build fails either way)."""
    if reader is None:
        return
    for node in tests:
        if node.relation_name is None or node.status != "fail":
            continue
        try:
            node.failing_rows = reader(node.relation_name, FAILING_ROWS_SHOWN)
        except Exception as exc:  # noqa: BLE001 - a report detail, never the failure itself
            log.warning(
                "dbt test %s: cannot read its failing rows from %s: %s",
                node.name,
                node.relation_name,
                exc,
            )
            continue
        if node.failing_rows:
            node.message = _failing_rows_text(node.failures, node.failing_rows)


def _failing_rows_text(count: int | None, rows: list[dict[str, Any]]) -> str:
    shown = "; ".join(" ".join(f"{k}={_value_text(v)}" for k, v in row.items()) for row in rows)
    total = "?" if count is None else str(count)
    return f"{total} row{'' if count == 1 else 's'}, e.g. {shown}"


def _value_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _duckdb_file_reader(call: DbtCall) -> FailingRowsReader | None:
    """Reads a DuckDB target's file (after dbt closed it); None for other targets."""
    path = call.warehouse_path
    if call.target != "duckdb" or path is None or Path(path) == Path(os.devnull):
        return None

    def read(relation: str, limit: int) -> list[dict[str, Any]]:
        from warehouse.backends.duckdb import connect

        con = connect(path, read_only=True)
        try:
            return (
                con.sql(f"select * from {relation} limit ?", params=[limit])
                .to_arrow_table()
                .to_pylist()
            )
        finally:
            con.close()

    return read


def warehouse_reader(warehouse: Warehouse, build: Build | None) -> FailingRowsReader:
    """Reads through the warehouse's own connection (a server warehouse's build)."""

    def read(relation: str, limit: int) -> list[dict[str, Any]]:
        table = warehouse.read_arrow(f"select * from {relation} limit ?", [limit], build=build)
        return table.to_pylist()

    return read


_TIMED_OUT = -999  # _stream's exit code for a process stopped at its timeout
_TERM_GRACE_S = 10.0


def _stream(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float | None = None
) -> tuple[int, list[str]]:
    """Run `cmd`, its output line by line into the log; (exit code, lines).

    Past `timeout_s` the process is terminated (killed after a grace period) and the
    exit code is `_TIMED_OUT`; the process never outlives this call (an exception here,
    e.g. Airflow's own task timeout, stops it too)."""
    log.info("running %s", " ".join(cmd))
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        log.error("dbt ran longer than %s s (DBT_TIMEOUT_S): stopping it", timeout_s)
        proc.terminate()
        try:
            proc.wait(_TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()

    timer = threading.Timer(timeout_s, stop) if timeout_s else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            log.info("dbt: %s", line)
        returncode = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return (_TIMED_OUT if timed_out.is_set() else returncode), lines


_STEPS_SCRIPT = Path(__file__).with_name("dbt_steps.py")


def _invoke_in_process(
    cmd: list[str], cwd: Path, env: dict[str, str], freshness: bool = False
) -> tuple[int, list[str]]:
    """`cmd` (without its executable) through `dbtRunner`, with `env` as the environment
    and `cwd` as the directory for the call only; (exit code, lines) like `_stream`.
    `freshness`: `dbt source freshness` first, on the same parse (warehouse/dbt_steps.py)."""
    from dbt.cli.main import dbtRunner

    from warehouse.dbt_steps import run_with_freshness

    log.info("running in process: %s", " ".join(cmd))
    lines: list[str] = []

    def keep(event: Any) -> None:
        if event.info.level in ("info", "warn", "error") and event.info.msg:
            lines.append(str(event.info.msg))
            log.info("dbt: %s", event.info.msg)

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        if freshness:
            result = run_with_freshness(cmd[1:], [keep])
        else:
            result = dbtRunner(callbacks=[keep]).invoke(cmd[1:])
    finally:
        _close_duckdb_environment()
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    if result.exception is not None:
        lines.append(f"{type(result.exception).__name__}: {result.exception}")
        return 2, lines
    return (0 if result.success else 1), lines


def _close_duckdb_environment() -> None:
    """dbt-duckdb keeps its DuckDB instance open for the process after a run (a class-level
    environment): close it, so the warehouse file is free for the next step's connection,
    as it is when the dbt process exits."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:
        return
    with DuckDBConnectionManager._LOCK:
        if DuckDBConnectionManager._ENV is not None:
            DuckDBConnectionManager._ENV.close()
            DuckDBConnectionManager._ENV = None


def run_settings_env(run_id: str | None, through_date: str | date | None) -> dict[str, str]:
    """The per-run settings as environment (dbt_project/macros/run_setting.sql): a new
    `--vars` every night would cost dbt a full re-parse; a changed env var re-parses only
    the few files that read it. Empty = null."""
    return {
        "DBT_NIGHTSHIFT_RUN_ID": run_id or "",
        "DBT_NIGHTSHIFT_THROUGH_DATE": "" if through_date is None else str(through_date),
        # read at parse time (macros/run_setting.sql, nightly_run): the same every night
        "DBT_NIGHTSHIFT_NIGHTLY": "1" if run_id else "",
    }


SCHEMA_SUFFIX_ENV = "DBT_NIGHTSHIFT_SCHEMA_SUFFIX"
DUCKDB_MEMORY_LIMIT_ENV = "NIGHTSHIFT_DUCKDB_MEMORY_LIMIT"  # profiles.yml reads it (duckdb target)
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9_]*$")

# libpq connection parameters the postgres profile does not name, passed to dbt's libpq
# connection as the environment variables libpq reads for them.
_LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


def build_schema_suffix(build: Build) -> str:
    """The suffix dbt appends to its schemas for `build` (`DBT_NIGHTSHIFT_SCHEMA_SUFFIX`).

    A build either keeps every schema's name (DuckDB: the build is its own file), suffix
    `""`, or maps each published schema `s` to `s__build_<token>`, suffix
    `__build_<token>`. Every schema dbt reads or writes (`PUBLISHED_SCHEMAS`) must be in
    the build and follow the same rule; anything else is a `WarehouseError` (dbt would
    read or write schemas the publish does not swap)."""
    from warehouse.backends.base import PUBLISHED_SCHEMAS, WarehouseError

    missing = [s for s in PUBLISHED_SCHEMAS if s not in build.schemas]
    if missing:
        raise WarehouseError(
            f"build {build.token} of run {build.run_id} has no schema for "
            f"{', '.join(missing)}: dbt reads and writes {', '.join(PUBLISHED_SCHEMAS)}"
        )
    identity = all(build.schemas[s] == s for s in PUBLISHED_SCHEMAS)
    suffix = "" if identity else f"__build_{build.token}"
    wrong = {s: build.schemas[s] for s in PUBLISHED_SCHEMAS if build.schemas[s] != f"{s}{suffix}"}
    if wrong or not _SUFFIX_RE.match(suffix):
        shown = ", ".join(f"{s} -> {b}" for s, b in wrong.items()) or f"suffix {suffix!r}"
        raise WarehouseError(
            f"build {build.token} of run {build.run_id}: dbt can only use a build whose "
            f"schemas are all the published names or all <schema>__build_{build.token}; "
            f"got {shown}"
        )
    return suffix


@dataclass(frozen=True)
class DbtTarget:
    """How dbt reaches a warehouse build: the profiles.yml target, the environment it
    reads (secrets included: they go to dbt through the environment only, never its
    command line or the log) and, for DuckDB, the file."""

    name: str
    env: dict[str, str] = field(default_factory=dict, repr=False)
    warehouse_path: Path | None = None
    # another environment's dbt (the Snowflake adapter lives in .venv-adapters); None: .venv's
    executable: Path | None = None


def _duckdb_target(warehouse: Any, build: Build | None) -> DbtTarget:
    if build is None:  # the warehouse file itself, as a path has always meant
        path = Path(warehouse.path)
    elif build.path is None:
        from warehouse.backends.base import WarehouseError

        raise WarehouseError(f"DuckDB build {build.token} of run {build.run_id} has no file")
    else:
        path = Path(build.path)
    suffix = "" if build is None else build_schema_suffix(build)
    env = {SCHEMA_SUFFIX_ENV: suffix}
    if getattr(warehouse, "memory_limit", None):  # profiles.yml: dbt's DuckDB gets the same cap
        env[DUCKDB_MEMORY_LIMIT_ENV] = warehouse.memory_limit
    return DbtTarget("duckdb", env, path)


def postgres_env(url: str) -> dict[str, str]:
    """`DBT_POSTGRES_HOST/PORT/USER/PASSWORD/DBNAME` (profiles.yml) from a libpq URL, plus
    the libpq variables (`PGSSLMODE`, ...) of the URL's other parameters. A part the URL
    leaves out is empty, which libpq fills as it does for the warehouse's own connection
    (PGHOST / the socket, PGPASSWORD / ~/.pgpass, ...)."""
    from psycopg.conninfo import conninfo_to_dict

    from warehouse.backends.base import WarehouseError
    from warehouse.backends.postgres import libpq_url

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(libpq_url(url)).items()}
    except Exception as exc:  # psycopg.ProgrammingError, whose message may quote the URL
        raise WarehouseError(
            f"the PostgreSQL warehouse URL is not a valid libpq URL ({type(exc).__name__}; "
            "not shown: it may hold the password)"
        ) from None
    user = params.pop("user", "") or settings.env("PGUSER", "")
    env = {
        "DBT_POSTGRES_HOST": params.pop("host", ""),
        "DBT_POSTGRES_PORT": params.pop("port", "") or "5432",
        "DBT_POSTGRES_USER": user,
        "DBT_POSTGRES_PASSWORD": params.pop("password", ""),
        "DBT_POSTGRES_DBNAME": params.pop("dbname", "") or user,
    }
    for key, value in params.items():
        if key in _LIBPQ_ENV:
            env[_LIBPQ_ENV[key]] = value
        else:
            log.warning("dbt on PostgreSQL: connection parameter %r of the URL is not passed", key)
    return env


def _server_build_suffix(warehouse: Any, build: Build | None) -> str:
    """The schema suffix dbt writes a server warehouse's build under; a run never writes
    the published schemas."""
    from warehouse.backends.base import WarehouseError

    if build is None:
        raise WarehouseError(
            f"dbt on {warehouse.describe()} needs a build (begin_build/open_build): a run "
            "never writes the published schemas"
        )
    suffix = build_schema_suffix(build)
    if not suffix:
        raise WarehouseError(
            f"build {build.token} of run {build.run_id} maps the schemas to the published "
            f"ones: on {warehouse.describe()} dbt writes only <schema>__build_<token>"
        )
    return suffix


def _postgres_target(warehouse: Any, build: Build | None) -> DbtTarget:
    suffix = _server_build_suffix(warehouse, build)
    env = postgres_env(warehouse.url)
    # No model uses the profile's own schema (every folder has +schema); pointing it into
    # the build keeps a node that would (and dbt's default test-failure schema) there.
    env["DBT_POSTGRES_SCHEMA"] = build.schema("staging")
    env[SCHEMA_SUFFIX_ENV] = suffix
    return DbtTarget("postgres", env)


ADAPTERS_DBT = DEFAULT_PROJECT_DIR.parent / ".venv-adapters" / "bin" / "dbt"
SNOWFLAKE_DBT_ENV = "DBT_SNOWFLAKE_EXECUTABLE"


def snowflake_dbt_executable() -> Path:
    """dbt with dbt-snowflake: `DBT_SNOWFLAKE_EXECUTABLE`, default `.venv-adapters/bin/dbt`
    (dbt-snowflake cannot share .venv with Airflow's pins: `make adapters-venv`)."""
    from warehouse.backends.base import WarehouseError

    path = Path(settings.env(SNOWFLAKE_DBT_ENV) or ADAPTERS_DBT)
    if not path.is_file():
        raise WarehouseError(
            f"dbt for the snowflake warehouse not found at {path} ({SNOWFLAKE_DBT_ENV}): "
            "`make adapters-venv` installs dbt-snowflake into .venv-adapters"
        )
    return path


def snowflake_env(warehouse: Any) -> dict[str, str]:
    """`DBT_SNOWFLAKE_*` (profiles.yml) from the warehouse's connection (the URL's):
    the password goes to dbt through the environment only."""
    kwargs = warehouse.connection
    return {
        "DBT_SNOWFLAKE_ACCOUNT": str(kwargs.get("account", "")),
        "DBT_SNOWFLAKE_USER": str(kwargs.get("user", "")),
        "DBT_SNOWFLAKE_PASSWORD": str(kwargs.get("password", "")),
        "DBT_SNOWFLAKE_ROLE": str(kwargs.get("role", "")),
        "DBT_SNOWFLAKE_DATABASE": str(kwargs.get("database", "")),
        "DBT_SNOWFLAKE_WAREHOUSE": str(kwargs.get("warehouse", "")),
        "DBT_SNOWFLAKE_HOST": str(kwargs.get("host", "")),
        "DBT_SNOWFLAKE_PORT": str(kwargs.get("port", "") or "0"),
        "DBT_SNOWFLAKE_PROTOCOL": str(kwargs.get("protocol", "")),
    }


def _snowflake_target(warehouse: Any, build: Build | None) -> DbtTarget:
    suffix = _server_build_suffix(warehouse, build)
    env = snowflake_env(warehouse)
    env["DBT_SNOWFLAKE_SCHEMA"] = build.schema("staging")
    env[SCHEMA_SUFFIX_ENV] = suffix
    if getattr(warehouse, "emulator", None):
        # fakesnow's one DuckDB behind the server: one dbt thread at a time
        env.setdefault("DBT_SNOWFLAKE_THREADS", "1")
        env["DBT_NIGHTSHIFT_EMULATOR"] = warehouse.emulator  # dbt_build: see there
    return DbtTarget("snowflake", env, executable=snowflake_dbt_executable())


# The warehouse kinds whose builds dbt can run on, by `Warehouse.kind` (= the target).
_DBT_TARGETS = {
    "duckdb": _duckdb_target,
    "postgres": _postgres_target,
    "snowflake": _snowflake_target,
}


def dbt_target(warehouse: Warehouse, build: Build | None = None) -> DbtTarget:
    """The dbt target, environment and file for a warehouse build, chosen by the
    warehouse's `kind`. `build` None: the DuckDB file itself (a server warehouse needs a
    build). A kind without a target here is a `WarehouseError` naming the ones there are."""
    from warehouse.backends.base import WarehouseError

    kind = getattr(warehouse, "kind", None)
    if build is not None and build.backend != kind:
        raise WarehouseError(f"build {build.token} is a {build.backend} build, not {kind}'s")
    make = _DBT_TARGETS.get(str(kind))
    if make is None:
        hint = (
            " (its adapter lives in .venv-adapters, `make adapters-venv`; the project "
            "compiles for it, tests/warehouse/test_dbt_adapters.py)"
            if kind in ("snowflake", "bigquery")
            else ""
        )
        raise WarehouseError(
            f"dbt_build cannot run on a {kind} warehouse yet{hint}; it runs on "
            f"{', '.join(sorted(_DBT_TARGETS))} builds"
        )
    return make(warehouse, build)


@dataclass(frozen=True)
class BuildPlan:
    """What `dbt_build` runs: `dbt build` with the report vars, and its options.

    `report_tz`: the business day's IANA zone; `through_date`: the last day kept in
    `sales_summary` (None: no bound); `select`: a dbt selection, which must match a node.
    `run_id` (the loader's run id, e.g. "2026-11-27"): fct_orders rebuilds only the
    business days `ops.restated_days` records for that run (plus days whose FX rate
    changed), and the data tests check only the rows that run loaded or restated
    (dbt_project/macros/test_slice.sql); None or `full_refresh` rebuilds it in full.
    `unit_tests=False` adds `--exclude-resource-type unit_test`: the nightly build leaves
    the unit tests (fixed fixtures that test the SQL logic, not the night's data) to
    development and CI, as dbt's docs recommend for production. `freshness`: `dbt source
    freshness` in the same call (`result.freshness`, see run_dbt). `target`: the profile
    target for a path (default duckdb); with a Warehouse it must be the warehouse's kind.
    `env` goes to dbt under the target's own keys; `target_dir`: see DbtCall.
    """

    report_tz: str
    through_date: str | date | None = None
    select: str | None = None
    run_id: str | None = None
    full_refresh: bool = False
    unit_tests: bool = True
    freshness: bool = False
    project_dir: Path = DEFAULT_PROJECT_DIR
    target: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    target_dir: Path | None = None

    def build_args(self) -> list[str]:
        """`build` and its options (the connection's own come from `_emulator_args`)."""
        args = ["build"]
        if self.select:
            args += ["--select", self.select]
        if self.full_refresh:
            args.append("--full-refresh")
        if not self.unit_tests:
            args += ["--exclude-resource-type", "unit_test"]
        return args


def dbt_build(
    where: Path | str | Warehouse, plan: BuildPlan, *, build: Build | None = None
) -> DbtResult:
    """`dbt build` on a warehouse as `plan` says; fails if `plan.select` matches nothing.

    `where`: a DuckDB file path (the file dbt builds in), or a `Warehouse` with the run's
    `build` of it: the target, its connection environment and
    `DBT_NIGHTSHIFT_SCHEMA_SUFFIX` come from `dbt_target(where, build)` and override the
    same keys of `plan.env`. DuckDB without a build: the warehouse file itself. A failed
    test's stored rows are read back through the same file or warehouse connection.
    """
    if plan.run_id is not None and not run_ids.is_valid(plan.run_id):
        raise DbtError(f"invalid run_id {plan.run_id!r}: letters, digits and _.:- only")
    connection = _build_connection(where, plan, build)
    call = DbtCall(
        project_dir=plan.project_dir,
        target=connection.name,
        vars={"report_tz": plan.report_tz},
        env={
            SCHEMA_SUFFIX_ENV: "",  # the published names unless the caller or the build says
            **plan.env,
            **connection.env,
            **run_settings_env(plan.run_id, plan.through_date),
        },
        warehouse_path=connection.warehouse_path,
        run_id=plan.run_id,
        dbt=connection.executable,
        target_dir=_build_target_dir(connection, plan),
        freshness=plan.freshness,
        failing_rows=None
        if isinstance(where, (str, os.PathLike))
        else warehouse_reader(where, build),
    )
    result = run_dbt(plan.build_args() + _emulator_args(connection, plan), call)
    if plan.select and not result.nodes:
        raise DbtError(f"dbt build --select {plan.select!r} matched no node", result)
    return result


def _build_connection(
    where: Path | str | Warehouse, plan: BuildPlan, build: Build | None
) -> DbtTarget:
    if isinstance(where, (str, os.PathLike)):
        if build is not None:
            raise DbtError("dbt_build: `build` goes with a Warehouse, not a path")
        return DbtTarget(plan.target or "duckdb", {}, Path(where))
    connection = dbt_target(where, build)
    if plan.target is not None and plan.target != connection.name:
        raise DbtError(
            f"dbt_build: target {plan.target!r} does not match the {connection.name} warehouse"
        )
    return connection


def _emulator_args(connection: DbtTarget, plan: BuildPlan) -> list[str]:
    """fakesnow 0.12.1 cannot run dbt-snowflake's incremental statements (a MERGE /
    temporary table inside BEGIN … COMMIT writes two DuckDB catalogs): the emulated run
    rebuilds every model in full and leaves the snapshot out
    (docs/warehouse-backends.md); real Snowflake runs them as they are."""
    if connection.env.get("DBT_NIGHTSHIFT_EMULATOR") != "fakesnow":
        return []
    return ([] if plan.full_refresh else ["--full-refresh"]) + [
        "--exclude",
        "resource_type:snapshot+",
    ]


def _build_target_dir(connection: DbtTarget, plan: BuildPlan) -> Path | None:
    if connection.executable is None or plan.target_dir is not None:
        return plan.target_dir
    # another dbt install: its own artifacts and partial-parse state
    base = settings.env("DBT_TARGET_PATH") or Path(plan.project_dir) / "target"
    return Path(base) / connection.name
