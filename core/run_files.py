"""The run files (`runs/<run_id>/steps/<step>.json`, `runs/<run_id>/alerts.json`) and the
shared report folder, on the local disk or on object storage.

Steps of one run may execute on different hosts, and the publish step gathers every
step's file, so with `NIGHTSHIFT_DATA_URL=s3://bucket/prefix` the run files live under
`<url>/runs/` and nothing is written to the local `runs` folder. Each file is written
whole (locally: temp file + rename; on the store: one PUT), and each step writes its own
file, so two workers never write the same object. Unset, they stay in
`NIGHTSHIFT_DATA_DIR/runs` exactly as before.

The report is built by `report.build` in a folder: with the URL set, the folder is this
host's copy of `<url>/report/` (`mirrored_report`: pulled first, pushed when done).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from core import run_ids, settings
from core.files import write_atomic

log = logging.getLogger(__name__)

RUNS = "runs"


def _store() -> Any:
    return settings.data_store(RUNS)


def write(run_id: str, name: str, data: bytes) -> str:
    """Write the run's file `name` (e.g. `steps/dbt_build.json`) whole; return where."""
    store = _store()
    if store is not None:
        store.put_object(f"{run_id}/{name}", data)
        return f"{store.describe()}/{run_id}/{name}"
    return str(write_atomic(settings.runs_dir() / run_id / name, data))


def read(run_id: str, name: str) -> bytes | None:
    """The run's file `name`, or None when it does not exist."""
    store = _store()
    if store is not None:
        return store.get_object(f"{run_id}/{name}")
    try:
        return (settings.runs_dir() / run_id / name).read_bytes()
    except FileNotFoundError:
        return None


def read_folder(run_id: str, folder: str, suffix: str = ".json") -> list[bytes]:
    """Every file `<run_id>/<folder>/*<suffix>` (e.g. the step files), by name."""
    store = _store()
    if store is not None:
        names = [n for n in store.list_objects(f"{run_id}/{folder}") if n.endswith(suffix)]
        found = (store.get_object(n) for n in names)
        return [data for data in found if data is not None]
    local = settings.runs_dir() / run_id / folder
    return [p.read_bytes() for p in sorted(local.glob(f"*{suffix}"))]


def runs_with(name: str) -> list[str]:
    """The run ids that have a file `name` (e.g. `alerts.json`), sorted."""
    store = _store()
    if store is not None:
        return sorted(
            rel.split("/", 1)[0]
            for rel in store.list_objects()
            if rel.count("/") == 1 and rel.endswith(f"/{name}")
        )
    root = settings.runs_dir()
    return sorted(p.parent.name for p in root.glob(f"*/{name}")) if root.is_dir() else []


def prune_store(days: int, horizon: date, run_id: str) -> list[str]:
    """The store's side of retention's `run_folders_days` (the local folder is pruned by
    `pipeline.retention.prune`): run folders named by a day before `horizon - days + 1`,
    except the running night's, are deleted. Returns the removed `runs/<id>` names."""
    store = _store()
    if store is None or days <= 0:
        return []
    cutoff = horizon - timedelta(days=days - 1)
    removed = []
    for name in sorted({rel.split("/", 1)[0] for rel in store.list_objects()}):
        if run_ids.expired(name, cutoff, run_ids.day_of(run_id), set()):
            store.delete_prefix(name)
            removed.append(f"{store.describe()}/{name}")
    return removed


@contextmanager
def mirrored_report() -> Iterator[Path]:
    """The report folder to build in (`settings.report_dir()`); with `NIGHTSHIFT_DATA_URL`
    it is first brought up to `<url>/report/`, and what the block changed (new pages,
    pruned ones) is pushed back when it succeeds. Each page is one whole object."""
    from extract.object_landing import pull_mirror, push_mirror

    folder = settings.report_dir()
    store = settings.data_store("report")
    pull_mirror(store, folder)
    yield folder
    push_mirror(store, folder)


def report_location(business_date: date) -> str:
    """Where the day's report page is read: on the store, or in the local folder."""
    root = settings.data_url()
    name = f"{business_date.isoformat()}.html"
    return f"{root}/report/{name}" if root else str(settings.report_dir() / name)


def publish_docs(site: Path, step: str) -> str:
    """Publish a finished Data Docs site (`site`, a local folder) to
    `<url>/docs/quality/<step>/` when `NIGHTSHIFT_DATA_URL` is set; return where it is
    to be read (the store's prefix, or the local folder)."""
    store = settings.data_store(f"docs/quality/{step}")
    if store is None:
        return str(site)
    counts = store.replace_folder(site)
    log.info("quality: Data Docs of %s pushed to %s: %s", step, store.describe(), counts)
    return store.describe()


def docs_location(step: str) -> str:
    """Where the Data Docs of `step` are read: the store's prefix or the local folder."""
    root = settings.data_url()
    if root:
        return f"{root}/docs/quality/{step}"
    return str(settings.quality_docs_dir() / step)
