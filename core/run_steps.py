"""What a run leaves for those who judge it: its step records, the replica lag its
extract measured, and the metrics of earlier published runs.

Each step writes one record `steps/<task>.json` among the run files (core/run_files.py:
the local `runs` folder or `<NIGHTSHIFT_DATA_URL>/runs/`), so steps on different hosts
never write the same file. The pipeline's publish step gathers them into the warehouse
(pipeline/run_metrics.py); the alert rules read them directly when a run fails before it
publishes (alerting/runs.py). Both read the same records here, in one format.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import run_files, run_ids, settings

log = logging.getLogger(__name__)

STEPS = "steps"


def record(run_id: str, task: str, started: float, finished: float, outcome: dict) -> None:
    """Write the step's record (`outcome`: its status and summary or error; `started` and
    `finished` are epoch seconds). A failure to write is logged, never raised: metrics
    must never break the run they measure."""
    try:
        data = {
            "task": task,
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "finished_at": datetime.fromtimestamp(finished, UTC).isoformat(),
            "seconds": round(finished - started, 3),
            **outcome,
        }
        payload = json.dumps(data, default=str, sort_keys=True).encode()
        run_files.write(run_id, f"{STEPS}/{task}.json", payload)
    except Exception:
        log.exception("could not record the metrics of step %s", task)


def read_steps(run_id: str) -> list[dict[str, Any]]:
    """The run's step records, in the order the steps started."""
    steps = [json.loads(data) for data in run_files.read_folder(run_id, STEPS)]
    return sorted(steps, key=lambda s: s.get("started_at", ""))


def replica_lag(run_id: str) -> float | None:
    """The largest replication lag the run's source_db extract measured (seconds).

    Read from the run's landed manifests (every table, every shard): a manifest says
    `read_from` only when a replica was configured; a lag it could not measure (replica
    down or not a replica) counts as infinite. None when no replica was configured.
    """
    lags: list[float] = []
    root = settings.landing_dir() / "source_db"
    for path in sorted(root.glob(f"*/run={run_id}/_manifest.json")) + sorted(
        root.glob(f"*/{run_ids.shard_dirs_glob(run_id)}/_manifest.json")
    ):
        manifest = json.loads(path.read_text())
        if "read_from" not in manifest:
            continue
        lag = manifest.get("replica_lag_seconds")
        lags.append(math.inf if lag is None else float(lag))
    return max(lags, default=None)


def history(warehouse: Any, run_id: str, limit: int = 30) -> list[dict[str, Any]]:
    """Earlier runs' metrics, oldest first (for the trailing-average alert rules), from
    the published `ops.pipeline_runs` of `warehouse` (a `Warehouse` of
    warehouse/backends: its `kind`, `path` and `read_arrow`).

    The first run ever is left out: it extracted everything, so comparing the nightly
    deltas with it would raise a row-count-drop alert every night for a week.
    """
    if warehouse.kind == "duckdb" and not Path(warehouse.path).exists():
        return []
    exists = warehouse.read_arrow(
        "select count(*) from information_schema.tables "
        "where table_schema = 'ops' and table_name = 'pipeline_runs'"
    ).column(0)[0]
    if not exists.as_py():
        return []
    rows = warehouse.read_arrow(
        "select cast(metrics as varchar) as metrics from {ops}.pipeline_runs "
        "where run_id <> ? "
        "and run_id not like 'rollback-%' "  # a rollback is not a night (warehouse/rollback.py)
        "and published_at > (select min(published_at) from {ops}.pipeline_runs) "
        "order by business_date desc limit ?",
        [run_id, limit],
    ).column("metrics")
    return [json.loads(text) for text in reversed(rows.to_pylist())]
