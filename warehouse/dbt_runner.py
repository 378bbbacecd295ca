"""Run dbt as a subprocess and summarise `target/run_results.json`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
_FAILED = {"error", "fail", "runtime error"}


class DbtError(RuntimeError):
    """dbt exited non-zero (or selected nothing); the message names the failures."""

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


@dataclass
class DbtResult:
    args: list[str]
    returncode: int
    elapsed: float | None = None
    nodes: list[NodeResult] = field(default_factory=list)
    output: str = ""

    @property
    def failed(self) -> list[NodeResult]:
        """Nodes whose status is error/fail."""
        return [n for n in self.nodes if n.status in _FAILED]

    @property
    def statuses(self) -> dict[str, str]:
        """unique_id -> status."""
        return {n.unique_id: n.status for n in self.nodes}


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
        )
        for r in data.get("results", [])
    ]
    return data.get("elapsed_time"), nodes


def run_dbt(
    args: list[str],
    *,
    project_dir: Path,
    target: str,
    vars: dict[str, Any],
    env: dict[str, str] | None = None,
    warehouse_path: Path | None = None,
) -> DbtResult:
    """Run `dbt <args>` against `project_dir` (which also holds profiles.yml).

    Output is streamed to the logger. Raises DbtError naming the failed nodes when
    dbt exits non-zero.
    """
    project_dir = Path(project_dir).resolve()
    target_dir = project_dir / "target"
    run_results = target_dir / "run_results.json"
    run_results.unlink(missing_ok=True)  # never report a previous run's results
    cmd = [
        str(dbt_executable()),
        *args,
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(project_dir),
        "--target",
        target,
        "--vars",
        json.dumps(vars),
    ]
    full_env = {**os.environ, **(env or {})}
    full_env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    full_env.setdefault("DBT_USE_COLORS", "false")  # plain text in task logs
    full_env["DBT_TARGET_PATH"] = str(target_dir)
    full_env["DBT_LOG_PATH"] = str(target_dir / "logs")
    if warehouse_path is not None:
        full_env["WAREHOUSE_PATH"] = str(warehouse_path)
    if target == "duckdb" and not full_env.get("WAREHOUSE_PATH"):
        raise DbtError("target duckdb needs WAREHOUSE_PATH (pass warehouse_path= or env=)")
    log.info("running %s", " ".join(cmd))
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd,
        cwd=project_dir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        log.info("dbt: %s", line)
    returncode = proc.wait()
    elapsed, nodes = _read_run_results(run_results)
    result = DbtResult(
        args=list(args),
        returncode=returncode,
        elapsed=elapsed,
        nodes=nodes,
        output="\n".join(lines),
    )
    if returncode != 0:
        failed = result.failed
        if failed:
            detail = "; ".join(f"{n.unique_id} [{n.status}]: {n.message}" for n in failed)
        else:  # e.g. a compilation or connection error before any node ran
            detail = "\n".join(lines[-20:])
        raise DbtError(f"dbt {' '.join(args)} failed (exit {returncode}): {detail}", result)
    return result


def dbt_build(
    warehouse_path: Path,
    report_tz: str,
    through_date: str | date | None = None,
    select: str | None = None,
    *,
    project_dir: Path = DEFAULT_PROJECT_DIR,
    target: str = "duckdb",
    env: dict[str, str] | None = None,
) -> DbtResult:
    """`dbt build` on the DuckDB warehouse with the report vars; fails if `select` matches nothing."""
    args = ["build"]
    if select:
        args += ["--select", select]
    result = run_dbt(
        args,
        project_dir=project_dir,
        target=target,
        vars={
            "report_tz": report_tz,
            "through_date": None if through_date is None else str(through_date),
        },
        env=env,
        warehouse_path=warehouse_path,
    )
    if select and not result.nodes:
        raise DbtError(f"dbt build --select {select!r} matched no node", result)
    return result
