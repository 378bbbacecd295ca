"""Replay the payments dead-letter queue: quarantined records, re-validated once the cause
is fixed, land with the next nightly, once.

A run that stays under the quarantine threshold publishes without its quarantined
payments, and the API does not send them again unless it updates them (the watermark
has moved past them). Their only record is the quarantine, one file per attempt:
`<quarantine_root>/payments_api/payments/run=<id>/attempt=<nnn>.jsonl` (see
extract/api_extract.py). Re-fetching one id is not possible, so a replay works from the
stored raw payload (`record`).

`python -m extract.replay [--date D]` (`make replay [DATE=D]`):

1. reads every quarantine file (of run `D`, or all), one entry per distinct raw record
   (the same broken record quarantined by two attempts is one record);
2. skips records already replayed (the ledger says `passed`) and conflicting
   duplicates (`kind` "conflict": the API changed a record without moving its cursor;
   the later copy was landed, and which one is right is a person's decision, made at
   the source: an update there sends the record again);
3. re-validates the rest with the extract's own rules (`check_record`: the contract's
   types, and `updated_at` not after the clock + FUTURE_TOLERANCE_MINUTES: a record
   quarantined as "from the future" passes once the clock has caught up);
4. writes those that pass to the replay queue, `_replay/pending/replay=<id>.jsonl`, and
   appends one line per record to the ledger `_replay/ledger.jsonl`: `passed`, or
   `still_invalid` with the new field and reason (the record stays in the quarantine
   and the next replay tries again).

The next nightly's payments extract takes the queue (`open_replays`): the records are
validated again and landed in that night's run with the API's (read first, so an API
copy with the same `updated_at` wins; they never move the watermark), loaded, checked
and published by the normal path. A queue file is retired to `_replay/done/` once the
published warehouse holds every one of its records (the id at that `updated_at` or
newer); until then every nightly lands it again, which the loader's upsert (newest
`updated_at` wins) makes harmless: a run that fails after landing loses nothing, and a
record is never doubled. A second replay finds every record in the ledger and queues
nothing. Quarantine files are only ever read here, never changed or removed (retention
prunes them after `quarantine_days`; the `_replay/` folder is not pruned).

A queued record the nightly finds invalid after all (say FUTURE_TOLERANCE_MINUTES was
raised for the replay but not for the DAG) is quarantined again by that run and stays
queued: it lands once it passes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from core import clock, run_ids
from core.files import write_atomic
from extract.api_extract import (
    PAYMENTS_TABLE,
    SOURCE,
    RecordError,
    check_record,
    quarantine_files,
    validate_payment,
)

log = logging.getLogger(__name__)

REPLAY_DIR = "_replay"  # beside the run=<id> folders; retention skips names starting "_"
LEDGER_NAME = "ledger.jsonl"
_PENDING = re.compile(r"^replay=[0-9A-Za-z_.:-]+\.jsonl$")


def replay_dir(quarantine_root: Path) -> Path:
    return Path(quarantine_root) / SOURCE / PAYMENTS_TABLE / REPLAY_DIR


def record_digest(record: Any) -> str:
    """Identity of a quarantined raw record: the same payload is one record."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@contextlib.contextmanager
def _locked(quarantine_root: Path) -> Iterator[Path]:
    """One replay or queue reader at a time (a replay and a nightly may overlap)."""
    folder = replay_dir(quarantine_root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                log.warning("%s:%d: not JSON, skipped", path, number)
                continue
            if isinstance(entry, dict):
                yield number, entry


def read_ledger(quarantine_root: Path) -> dict[str, dict[str, Any]]:
    """The ledger's last line per record digest."""
    path = replay_dir(quarantine_root) / LEDGER_NAME
    if not path.exists():
        return {}
    return {e["digest"]: e for _, e in _read_jsonl(path) if isinstance(e.get("digest"), str)}


def _is_conflict(entry: dict[str, Any]) -> bool:
    return entry.get("kind") == "conflict" or str(entry.get("error", "")).startswith(
        "conflicting duplicate"
    )


def _write_atomically(path: Path, lines: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(x, sort_keys=True, default=str) + "\n" for x in lines))


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def replay(
    quarantine_root: Path,
    *,
    run_id: str | None = None,
    now: datetime | None = None,
    future_tolerance: timedelta = timedelta(hours=1),
) -> dict[str, Any]:
    """Re-validate the quarantined payments not yet replayed; queue those that pass.

    Returns a summary: `replay_id`, `passed` (queued for the next nightly),
    `still_invalid`, `conflicts_left` (skipped, see the module docstring),
    `already_replayed`, `files` (quarantine files read), `queue_file` (or None),
    `reasons` (the first still-invalid reasons).
    """
    at = now or clock.now()
    latest_allowed = at.astimezone(UTC) + future_tolerance
    replay_id = run_ids.stamp(at) + "-" + uuid.uuid4().hex[:6]
    files = quarantine_files(quarantine_root, run_id)
    with _locked(quarantine_root) as folder:
        ledger = read_ledger(quarantine_root)
        seen: set[str] = set()
        queued: list[dict[str, Any]] = []
        ledger_lines: list[dict[str, Any]] = []
        already = conflicts = 0
        reasons: list[str] = []
        for path in files:
            for number, entry in _read_jsonl(path):
                if "record" not in entry:
                    continue
                record = entry["record"]
                digest = record_digest(record)
                if digest in seen:
                    continue
                seen.add(digest)
                if ledger.get(digest, {}).get("status") in ("passed", "published"):
                    already += 1
                    continue
                if _is_conflict(entry):
                    conflicts += 1
                    continue
                where = f"{path.relative_to(quarantine_root)}:{number}"
                line = {
                    "digest": digest,
                    "record_key": entry.get("record_key"),
                    "quarantine_file": where,
                    "replay_id": replay_id,
                    "at": at.isoformat(),
                }
                try:
                    check_record(record, latest_allowed)
                except RecordError as exc:
                    ledger_lines.append(
                        {**line, "status": "still_invalid", "field": exc.field, "error": exc.error}
                    )
                    if len(reasons) < 5:
                        reasons.append(f"id={entry.get('record_key')!r} {exc}")
                    continue
                ledger_lines.append({**line, "status": "passed"})
                queued.append({**line, "record": record})
        queue_file = None
        if queued:  # the queue first: a crash before the ledger line only queues twice
            queue_file = folder / "pending" / f"replay={replay_id}.jsonl"
            _write_atomically(queue_file, queued)
        _append(folder / LEDGER_NAME, ledger_lines)
    summary = {
        "replay_id": replay_id,
        "files": len(files),
        "passed": len(queued),
        "still_invalid": len(ledger_lines) - len(queued),
        "conflicts_left": conflicts,
        "already_replayed": already,
        "queue_file": str(queue_file) if queue_file else None,
        "reasons": reasons,
    }
    log.info("payments replay: %s", summary)
    return summary


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _published(warehouse_path: Any, records: list[dict[str, Any]]) -> set[str]:
    """Digests of queued records the published warehouse (a DuckDB path or a `Warehouse`)
    already holds (the id at their `updated_at` or newer)."""
    if warehouse_path is None or not records:
        return set()
    if isinstance(warehouse_path, (str, os.PathLike)) and not Path(warehouse_path).exists():
        return set()
    from warehouse.backends import as_warehouse

    wh = as_warehouse(warehouse_path)
    ids = sorted({str(r["record"].get("id")) for r in records if isinstance(r["record"], dict)})
    if not ids:
        return set()
    try:  # read-only: the published state as analysts see it
        newest_rows = wh.read_arrow(
            "select id, max(updated_at) as newest from {raw}.payments "
            f"where id in ({', '.join('?' for _ in ids)}) group by id",
            ids,
        )
    except Exception as exc:  # nothing published yet, a locked file, a server down
        log.warning("replay queue: cannot read %s (%s); keeping the queue", wh.describe(), exc)
        return set()
    rows = newest_rows.to_pylist()
    newest = {r["id"]: _utc(r["newest"]) for r in rows if r["newest"] is not None}
    done = set()
    for queued in records:
        try:
            row = validate_payment(queued["record"])
        except RecordError:
            continue  # lands nowhere; the nightly quarantines it again
        held = newest.get(row["id"])
        if held is not None and held >= row["updated_at"]:
            done.add(queued["digest"])
    return done


def open_replays(quarantine_root: Path, warehouse_path: Path | None) -> list[Any]:
    """The raw records of the replay queue that the published warehouse does not hold
    yet; queue files whose records are all published are moved to `_replay/done/` (and
    the ledger says `published`). Called by the nightly's payments extract."""
    folder = replay_dir(quarantine_root)
    pending = folder / "pending"
    if not pending.is_dir():
        return []
    records: list[Any] = []
    with _locked(quarantine_root):
        for path in sorted(p for p in pending.iterdir() if _PENDING.match(p.name)):
            queued = [entry for _, entry in _read_jsonl(path) if "record" in entry]
            published = _published(warehouse_path, queued)
            left = [q for q in queued if q["digest"] not in published]
            if left:
                records.extend(q["record"] for q in left)
                continue
            (folder / "done").mkdir(exist_ok=True)
            os.replace(path, folder / "done" / path.name)
            _append(
                folder / LEDGER_NAME,
                [
                    {
                        "digest": q["digest"],
                        "record_key": q.get("record_key"),
                        "status": "published",
                        "replay_id": q.get("replay_id"),
                        "at": clock.now().isoformat(),
                    }
                    for q in queued
                ],
            )
            log.info("replay queue: %s published, moved to done/", path.name)
    if records:
        log.info("replay queue: %d record(s) to land with this run", len(records))
    return records


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from core import settings

    parser = argparse.ArgumentParser(
        prog=prog or "python -m extract.replay",
        description="Re-validate quarantined payments; those that pass land with the next "
        "nightly, once.",
    )
    parser.add_argument("--date", help="only the quarantine of run YYYY-MM-DD (default: all)")
    args = parser.parse_args(argv)
    if args.date:
        try:
            date.fromisoformat(args.date)  # a YYYY-MM-DD run id, nothing else
        except ValueError:
            parser.error(f"--date {args.date!r} is not a YYYY-MM-DD date")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from extract.object_landing import pull_mirror, push_mirror

    store = settings.quarantine_store()  # NIGHTSHIFT_QUARANTINE_URL=s3://…: a local mirror
    pull_mirror(store, settings.quarantine_dir())
    summary = replay(
        settings.quarantine_dir(),
        run_id=args.date,
        future_tolerance=timedelta(minutes=settings.future_tolerance_minutes()),
    )
    push_mirror(store, settings.quarantine_dir())
    print(
        f"replay {summary['replay_id']}: {summary['files']} quarantine file(s); "
        f"{summary['passed']} record(s) pass and land with the next nightly; "
        f"{summary['still_invalid']} still invalid (kept, reason in the ledger); "
        f"{summary['conflicts_left']} conflicting duplicate(s) left for a person; "
        f"{summary['already_replayed']} already replayed"
    )
    for reason in summary["reasons"]:
        print(f"  still invalid: {reason}")
    if summary["queue_file"]:
        print(f"  queued: {summary['queue_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
