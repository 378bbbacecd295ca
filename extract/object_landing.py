"""The landing zone on object storage (`NIGHTSHIFT_LANDING_URL=s3://bucket/prefix`).

Object stores have no atomic rename, so a landed run is committed by the object written
last. Layout under the prefix (the same `<source>/<table>/run=<run_id>` names as on disk):

    <source>/<table>/run=<id>/attempt=<aid>/part-00000.parquet   data (and `_*` side files)
    <source>/<table>/run=<id>/attempt=<aid>/_manifest.json       written after the data
    <source>/<table>/run=<id>/_commit.json                       written LAST: the commit
    <source>/<table>/_latest.json, <source>/_shard_runs/…, …     side files (not runs)

Protocol (docs/extract-design.md, "Landing on object storage"):
1. a landing (first or rerun) writes every object of the run under a NEW attempt prefix
   (`attempt=<utc time>-<random>`), never into a committed one;
2. then the attempt's `_manifest.json`, then `run=<id>/_commit.json` naming the attempt
   (one PUT: S3 makes it visible whole, readers see the old commit or the new one);
3. readers trust only a run whose `_commit.json` exists, and read only the attempt it
   names: objects of an attempt without a commit (a killed writer, a rerun in progress)
   are never read;
4. after the commit, the run's other attempts are deleted (a reader that was still
   reading one of them re-reads the commit and starts over).

The pipeline's readers (loader, validation, reconciliation, run metrics) work on local
files: the store is mirrored into a local stage directory (`settings.landing_dir()`),
the writer lands there as before and then publishes the run here; a step that reads a
run first calls `sync_run`, which downloads the committed attempt and removes any local
copy that is not the committed one (e.g. left by a killed writer on this host).
Credentials are never written to an object or a log line (settings.landing_store).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import run_ids
from core.files import write_json_atomic, write_with
from core.run_ids import RUN_PREFIX, SHARD_INFIX

log = logging.getLogger(__name__)

COMMIT_NAME = "_commit.json"
MANIFEST_NAME = "_manifest.json"
LATEST_POINTER_NAME = "_latest.json"
ATTEMPT_PREFIX = "attempt="
_CHUNK = 8 << 20
_PUSH_INDEX = ".store-pushed.json"  # local: side files already pushed (size, mtime_ns)


def _attempt_id() -> str:
    # sortable by the writer's wall clock to the microsecond (not the pipeline's clock,
    # which tests may freeze); random tail: two writers never share an attempt
    now = time.time_ns() // 1000
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000))
    return f"{stamp}{now % 1_000_000:06d}Z-{uuid.uuid4().hex[:8]}"


@dataclass
class LandingStore:
    """An S3 (or any `pyarrow.fs`) location of the landing zone: `fs` + `root` (the
    `bucket/prefix` path inside it). `describe()` never contains a credential."""

    fs: Any
    root: str
    url: str
    stats: dict[str, float] = field(default_factory=lambda: {"put_bytes": 0, "get_bytes": 0})

    def describe(self) -> str:
        return self.url

    # -- low level --------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *[p.strip("/") for p in parts if p]])

    def _put_file(self, local: Path, key: str) -> None:
        with open(local, "rb") as src, self.fs.open_output_stream(key) as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                self.stats["put_bytes"] += len(chunk)

    def _put_bytes(self, key: str, data: bytes) -> None:
        with self.fs.open_output_stream(key) as out:
            out.write(data)
        self.stats["put_bytes"] += len(data)

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(key) as src:
                data = src.read()
        except (FileNotFoundError, OSError) as exc:
            if _not_found(exc):
                return None
            raise
        self.stats["get_bytes"] += len(data)
        return data

    def _get_file(self, key: str, local: Path) -> None:
        with self.fs.open_input_stream(key) as src, open(local, "wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                self.stats["get_bytes"] += len(chunk)

    def _list(self, prefix: str, recursive: bool = True) -> list[Any]:
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(self._key(prefix), allow_not_found=True, recursive=recursive)
        return self.fs.get_file_info(selector)

    def _rel(self, path: str) -> str:
        return path[len(self.root.rstrip("/")) + 1 :]

    # -- writing ----------------------------------------------------------------------

    def publish_run(self, local_run: Path, source: str, table: str, run_id: str) -> str:
        """Upload the landed run directory `local_run` as a new attempt, commit it, then
        delete the run's other attempts; return the attempt id."""
        manifest_path = local_run / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text())
        attempt = _attempt_id()
        run_key = f"{source}/{table}/{RUN_PREFIX}{run_id}"
        attempt_key = f"{run_key}/{ATTEMPT_PREFIX}{attempt}"
        names = sorted(p.name for p in local_run.iterdir() if p.is_file())
        for name in names:  # data and side files first ...
            if name != MANIFEST_NAME:
                self._put_file(local_run / name, self._key(attempt_key, name))
        self._put_file(manifest_path, self._key(attempt_key, MANIFEST_NAME))  # ... manifest
        commit = {
            "run_id": run_id,
            "attempt": attempt,
            "manifest": f"{ATTEMPT_PREFIX}{attempt}/{MANIFEST_NAME}",
            "objects": names,
            **{k: manifest.get(k) for k in ("extracted_at", "checksum_sha256", "rows", "files")},
        }
        self._put_bytes(self._key(run_key, COMMIT_NAME), _json(commit))  # ... commit last
        self._put_bytes(  # convenience pointer, as on disk (readers never need it)
            self._key(source, table, LATEST_POINTER_NAME),
            _json(
                {
                    "run_id": run_id,
                    "run_dir": f"{RUN_PREFIX}{run_id}",
                    "attempt": attempt,
                    "extracted_at": manifest.get("extracted_at"),
                    "schema_fingerprint": manifest.get("schema_fingerprint"),
                    "columns": manifest.get("columns"),
                }
            ),
        )
        now = self.read_commit(source, table, run_id)
        if now is None or now.get("attempt") != attempt:
            # one writer per run at a time is the pipeline's rule (the warehouse lease);
            # if it was broken the last commit wins and nothing of it is deleted here
            log.warning(
                "%s/%s run=%s: another landing committed after attempt %s: %s stays",
                source,
                table,
                run_id,
                attempt,
                (now or {}).get("attempt"),
            )
            return attempt
        self._delete_older_attempts(run_key, attempt)
        return attempt

    def _delete_older_attempts(self, run_key: str, keep: str) -> None:
        """Delete the run's attempts older than `keep` (the committed one): earlier
        commits and killed writers' leftovers. A newer attempt is a landing in progress
        (it commits later and cleans this one)."""
        for info in self._list(run_key, recursive=False):
            name = info.path.rsplit("/", 1)[-1]
            if name.startswith(ATTEMPT_PREFIX) and name < f"{ATTEMPT_PREFIX}{keep}":
                try:
                    self.fs.delete_dir(info.path)
                except OSError as exc:  # a later commit cleans it again
                    log.warning("landing store: could not delete old attempt %s: %s", name, exc)

    # -- reading ----------------------------------------------------------------------

    def read_commit(self, source: str, table: str, run_id: str) -> dict[str, Any] | None:
        data = self._get_bytes(self._key(source, table, f"{RUN_PREFIX}{run_id}", COMMIT_NAME))
        return None if data is None else json.loads(data)

    def committed_runs(self, source: str, table: str) -> dict[str, dict[str, Any]]:
        """{run_id: commit} of every committed run of source/table."""
        found: dict[str, dict[str, Any]] = {}
        for info in self._list(f"{source}/{table}", recursive=False):
            name = info.path.rsplit("/", 1)[-1]
            if not name.startswith(RUN_PREFIX):
                continue
            commit = self.read_commit(source, table, name[len(RUN_PREFIX) :])
            if commit is not None:
                found[name[len(RUN_PREFIX) :]] = commit
        return found

    def read_manifest(self, source: str, table: str, run_id: str) -> dict[str, Any] | None:
        """The committed manifest of a run, or None (no commit: not a run)."""
        commit = self.read_commit(source, table, run_id)
        if commit is None:
            return None
        data = self._get_bytes(
            self._key(source, table, f"{RUN_PREFIX}{run_id}", commit["manifest"])
        )
        return None if data is None else json.loads(data)

    def newest_manifest(self, source: str, table: str) -> dict[str, Any] | None:
        """The committed manifest with the largest `extracted_at` (the drift check's
        previous landing), or None."""
        commits = self.committed_runs(source, table)
        if not commits:
            return None
        run_id = max(commits, key=lambda r: str(commits[r].get("extracted_at") or ""))
        return self.read_manifest(source, table, run_id)

    def sync_run(
        self, local_root: Path, run_id: str, sources: tuple[str, ...] | None = None
    ) -> dict[str, int]:
        """Make the local stage hold exactly the committed runs `run=<run_id>` (and
        `run=<run_id>.shard-*`) of every table, plus the side files; a local copy that
        is not the committed attempt is replaced, one without a commit removed.

        `sources` (e.g. `("source_db",)`): only those sources' runs are touched; another
        source's extract may be writing its stage of the run at the same time (the DAG runs
        `extract_payments_api` beside `extract_source_db` and `load_source_db`)."""
        local_root = Path(local_root)
        counts = {"downloaded": 0, "kept": 0, "removed": 0, "side_files": 0}
        for _ in range(3):  # a concurrent rerun may delete the attempt being read
            try:
                self._sync_run(local_root, run_id, counts, sources)
                return counts
            except FileNotFoundError as exc:
                log.warning("landing store: %s changed while read (%s): again", run_id, exc)
        self._sync_run(local_root, run_id, counts, sources)
        return counts

    def _sync_run(
        self,
        local_root: Path,
        run_id: str,
        counts: dict[str, int],
        sources: tuple[str, ...] | None = None,
    ) -> None:
        from pyarrow import fs as pafs

        infos = self._list("")
        remote_runs: dict[tuple[str, str, str], str] = {}  # (source, table, run dir) -> key
        side: list[Any] = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = self._rel(info.path)
            parts = rel.split("/")
            run_part = next((p for p in parts if p.startswith(RUN_PREFIX)), None)
            if run_part is None or (len(parts) == 3 and parts[2].endswith(".json")):
                if parts[-1] != LATEST_POINTER_NAME:
                    side.append(info)  # e.g. source_db/_shard_runs/run=<id>.json
                continue
            if len(parts) == 4 and parts[3] == COMMIT_NAME and _wanted(parts[2], run_id):
                if sources is None or parts[0] in sources:
                    remote_runs[(parts[0], parts[1], parts[2])] = info.path
        wanted_local = {
            (s.name, t.name, r.name): r
            for s in (local_root.iterdir() if local_root.is_dir() else [])
            if s.is_dir() and (sources is None or s.name in sources)
            for t in s.iterdir()
            if t.is_dir()
            for r in t.iterdir()
            if r.is_dir() and _wanted(r.name, run_id)
        }
        for key, local in wanted_local.items():
            if key not in remote_runs:  # not committed (e.g. a killed writer): not a run
                _remove_dir(local)
                counts["removed"] += 1
        for (source, table, run_dir), commit_key in remote_runs.items():
            commit = json.loads(self._get_bytes(commit_key) or b"{}")
            target = local_root / source / table / run_dir
            if _same_run(target, commit):
                counts["kept"] += 1
                continue
            self._download_attempt(source, table, run_dir, commit, target)
            counts["downloaded"] += 1
        for info in side:
            rel = self._rel(info.path)
            local = local_root / rel
            if _local_copy(local, info) is None:
                write_with(local, lambda tmp, key=info.path: self._get_file(key, tmp))
                counts["side_files"] += 1

    def _download_attempt(
        self, source: str, table: str, run_dir: str, commit: dict[str, Any], target: Path
    ) -> None:
        from extract.landing import _replace_dir

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            prefix = f"{source}/{table}/{run_dir}/{ATTEMPT_PREFIX}{commit['attempt']}"
            names = commit.get("objects") or [
                i.path.rsplit("/", 1)[-1] for i in self._list(prefix, recursive=False)
            ]
            for name in names:
                self._get_file(self._key(prefix, name), tmp / name)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def push_side_files(self, local_root: Path) -> int:
        """Upload the stage's files that are not runs (shard-run records, source totals,
        the FX cache) when new or changed since the last push from this stage."""
        local_root = Path(local_root)
        index_path = local_root / _PUSH_INDEX
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        pushed = 0
        for dirpath, dirnames, filenames in os.walk(local_root):
            dirnames[:] = [d for d in dirnames if not d.startswith((RUN_PREFIX, ".tmp-", ".old-"))]
            for name in filenames:
                if name.startswith(".") or name == LATEST_POINTER_NAME:
                    continue
                path = Path(dirpath) / name
                rel = path.relative_to(local_root).as_posix()
                if "/" not in rel:
                    continue  # nothing at the root is shared
                st = path.stat()
                if index.get(rel) == [st.st_size, st.st_mtime_ns]:
                    continue
                self._put_file(path, self._key(rel))
                index[rel] = [st.st_size, st.st_mtime_ns]
                pushed += 1
        if pushed:
            write_json_atomic(index_path, index, indent=None)
        return pushed

    # -- retention --------------------------------------------------------------------

    def prune_runs(self, days: int, horizon: Any, run_id: str) -> list[str]:
        """The store's side of `landing_runs_days` (pipeline/retention.py, same rule as on
        disk): runs and per-run records named by a day before `horizon - days + 1`, not
        the running night's and not a table's newest committed run (the drift check's
        reference), are deleted: the commit first (readers stop trusting the run), then
        its attempts. Returns the removed `source/table/run=…` names."""
        from datetime import timedelta

        if days <= 0:
            return []
        cutoff = horizon - timedelta(days=days - 1)
        run_day = run_ids.day_of(run_id)
        removed: list[str] = []
        for source in self._list("", recursive=False):
            source_name = source.path.rsplit("/", 1)[-1]
            for table in self._list(source_name, recursive=False):
                table_name = table.path.rsplit("/", 1)[-1]
                protected: set[str] = set()
                if not table_name.startswith("_"):
                    newest = self.newest_manifest(source_name, table_name)
                    protected = {f"{RUN_PREFIX}{newest['run_id']}"} if newest else set()
                for entry in self._list(f"{source_name}/{table_name}", recursive=False):
                    name = entry.path.rsplit("/", 1)[-1]
                    if name.startswith("_") or not run_ids.expired(
                        name, cutoff, run_day, protected
                    ):
                        continue
                    from pyarrow import fs as pafs

                    if entry.type == pafs.FileType.Directory:
                        try:
                            self.fs.delete_file(f"{entry.path}/{COMMIT_NAME}")
                        except FileNotFoundError:
                            pass
                        self.fs.delete_dir(entry.path)
                    else:
                        self.fs.delete_file(entry.path)
                    removed.append(f"{source_name}/{table_name}/{name}")
        return removed

    # -- a mirrored folder (the quarantine) ----------------------------------------------

    def mirror_pull(self, local_root: Path) -> int:
        """Bring the local folder up to the store: every object missing locally or newer
        there is downloaded (files in a mirrored folder have one writer at a time: the
        quarantine's attempt files are never rewritten, its replay queue is written by
        `make replay` and retired by the nightly, under the warehouse lease)."""
        from pyarrow import fs as pafs

        local_root = Path(local_root)
        index = _read_index(local_root)
        pulled = 0
        infos = [i for i in self._list("") if i.type == pafs.FileType.File]
        remote = {self._rel(i.path) for i in infos}
        for rel in sorted(set(index) - remote):  # in sync once, gone from the store since
            local = local_root / rel
            try:
                st = local.stat()
            except FileNotFoundError:
                del index[rel]
                continue
            if index[rel] == [st.st_size, st.st_mtime_ns]:  # not changed here: retired
                local.unlink()
                del index[rel]
        for info in infos:
            rel = self._rel(info.path)
            local = local_root / rel
            st = _local_copy(local, info)
            if st is not None:
                index.setdefault(rel, [st.st_size, st.st_mtime_ns])
                continue
            write_with(local, lambda tmp, key=info.path: self._get_file(key, tmp))
            st = local.stat()
            index[rel] = [st.st_size, st.st_mtime_ns]
            pulled += 1
        _write_index(local_root, index)
        return pulled

    def _not_older_than_remote(self, path: Path, key: str, st: os.stat_result) -> os.stat_result:
        """The pushed file's stat, its mtime moved up to the object's: the store stamps an
        upload with its own (later) time, and a pull must not take the file for a newer
        version written elsewhere and download it again."""
        remote = self.fs.get_file_info(key).mtime_ns
        if remote is None or remote <= st.st_mtime_ns:
            return st
        os.utime(path, ns=(st.st_atime_ns, remote))
        return path.stat()

    def mirror_push(self, local_root: Path) -> dict[str, int]:
        """Upload the local folder's new or changed files, and delete from the store the
        files this folder had in sync that are gone locally (moved, pruned)."""
        local_root = Path(local_root)
        index = _read_index(local_root)
        seen: set[str] = set()
        counts = {"pushed": 0, "deleted": 0}
        for dirpath, dirnames, filenames in os.walk(local_root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".tmp-", ".old-"))]
            for name in filenames:
                if name.startswith("."):
                    continue  # .lock, .tmp-*, the index
                path = Path(dirpath) / name
                rel = path.relative_to(local_root).as_posix()
                seen.add(rel)
                st = path.stat()
                if index.get(rel) == [st.st_size, st.st_mtime_ns]:
                    continue
                self._put_file(path, self._key(rel))
                st = self._not_older_than_remote(path, self._key(rel), st)
                index[rel] = [st.st_size, st.st_mtime_ns]
                counts["pushed"] += 1
        for rel in sorted(set(index) - seen):
            try:
                self.fs.delete_file(self._key(rel))
            except FileNotFoundError:
                pass
            del index[rel]
            counts["deleted"] += 1
        _write_index(local_root, index)
        return counts

    # -- single objects and published folders (run files, report, Data Docs) ----------

    def put_object(self, rel: str, data: bytes) -> None:
        """Write one object whole (one PUT: readers see the old object or the new one)."""
        self._put_bytes(self._key(rel), data)

    def get_object(self, rel: str) -> bytes | None:
        """One object's bytes, or None when it does not exist."""
        return self._get_bytes(self._key(rel))

    def list_objects(self, prefix: str = "") -> list[str]:
        """The paths (relative to the store's root) of every object under `prefix`."""
        from pyarrow import fs as pafs

        return sorted(self._rel(i.path) for i in self._list(prefix) if i.type == pafs.FileType.File)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix` (a folder of the store)."""
        try:
            self.fs.delete_dir(self._key(prefix))
        except FileNotFoundError:
            pass

    def replace_folder(self, local_root: Path) -> dict[str, int]:
        """Make the store's root hold exactly the finished local folder `local_root` (a
        built static site): every file is uploaded whole, then the objects the folder no
        longer has are deleted. Hidden files (`.`-prefixed) are not published."""
        local_root = Path(local_root)
        counts = {"pushed": 0, "deleted": 0}
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(local_root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                rel = path.relative_to(local_root).as_posix()
                self._put_file(path, self._key(rel))
                seen.add(rel)
                counts["pushed"] += 1
        for rel in self.list_objects():
            if rel not in seen:
                try:
                    self.fs.delete_file(self._key(rel))
                except FileNotFoundError:
                    pass
                counts["deleted"] += 1
        return counts

    def delete_side_file(self, rel: str) -> None:
        """Delete a side file (`source_db/_source_totals/run=<id>.json`, …) from the store:
        an extract starting over removes its earlier record there as on disk."""
        try:
            self.fs.delete_file(self._key(rel))
        except FileNotFoundError:
            pass

    def uncommitted_attempts(self) -> list[str]:
        """Attempt prefixes no commit names (a killed writer's leftovers), for checks."""
        from pyarrow import fs as pafs

        attempts: set[str] = set()
        committed: set[str] = set()
        for info in self._list(""):
            if info.type != pafs.FileType.File:
                continue
            parts = self._rel(info.path).split("/")
            if len(parts) >= 4 and parts[3].startswith(ATTEMPT_PREFIX):
                attempts.add("/".join(parts[:4]))
            if len(parts) == 4 and parts[3] == COMMIT_NAME:
                commit = json.loads(self._get_bytes(info.path) or b"{}")
                committed.add("/".join(parts[:3]) + f"/{ATTEMPT_PREFIX}{commit.get('attempt')}")
        return sorted(attempts - committed)


def pull_mirror(store: LandingStore | None, local_root: Path) -> None:
    """`store.mirror_pull(local_root)`, logged; nothing without a store."""
    if store is not None:
        started = time.monotonic()
        pulled = store.mirror_pull(local_root)
        log.info(
            "%s: %d file(s) pulled from %s in %.2f s",
            local_root,
            pulled,
            store.describe(),
            time.monotonic() - started,
        )


def push_mirror(store: LandingStore | None, local_root: Path) -> None:
    """`store.mirror_push(local_root)`, logged; nothing without a store."""
    if store is not None:
        log.info(
            "%s: pushed to %s: %s", local_root, store.describe(), store.mirror_push(local_root)
        )


_MIRROR_INDEX = ".store-mirror.json"  # local: {path: [size, mtime_ns]} in sync with the store


def _read_index(local_root: Path) -> dict[str, list[int]]:
    try:
        return json.loads((local_root / _MIRROR_INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _write_index(local_root: Path, index: dict[str, list[int]]) -> None:
    write_json_atomic(local_root / _MIRROR_INDEX, index, indent=None)


def _wanted(run_dir: str, run_id: str) -> bool:
    return run_dir == f"{RUN_PREFIX}{run_id}" or run_dir.startswith(
        f"{RUN_PREFIX}{run_id}{SHARD_INFIX}"
    )


def _local_copy(local: Path, info: Any) -> os.stat_result | None:
    """`local`'s stat when it is already the store object `info` (same size, not older),
    else None (missing or different: download it)."""
    try:
        st = local.stat()
    except FileNotFoundError:
        return None
    return st if st.st_size == info.size and st.st_mtime_ns >= info.mtime_ns else None


def _same_run(local: Path, commit: dict[str, Any]) -> bool:
    """Whether the local run directory holds the committed attempt (same manifest)."""
    try:
        manifest = json.loads((local / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    keys = ("extracted_at", "checksum_sha256", "rows", "files")
    return all(manifest.get(k) == commit.get(k) for k in keys) and all(
        (local / name).is_file() for name in commit.get("objects") or []
    )


def _remove_dir(path: Path) -> None:
    aside = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)  # readers never see a half-removed run
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _not_found(exc: BaseException) -> bool:
    return (
        isinstance(exc, FileNotFoundError)
        or "NoSuchKey" in str(exc)
        or ("not found" in str(exc).lower() or "does not exist" in str(exc).lower())
    )


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()


def open_store(url: str, options: dict[str, Any]) -> LandingStore:
    """A store for `s3://bucket/prefix` with `options` (access_key, secret_key,
    session_token, region, endpoint_override, scheme) for `pyarrow.fs.S3FileSystem`."""
    from urllib.parse import urlsplit

    from pyarrow import fs as pafs

    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"landing URL must be s3://bucket/prefix, got {url!r}")
    options = {k: v for k, v in options.items() if v not in (None, "")}
    # The AWS SDK's defaults (1 s to connect, 3 attempts) fail a task on a busy host or
    # endpoint; a landing would rather wait than fail the night.
    options.setdefault("connect_timeout", 10.0)
    options.setdefault("request_timeout", 60.0)
    options.setdefault("retry_strategy", pafs.AwsStandardS3RetryStrategy(max_attempts=6))
    fs = pafs.S3FileSystem(**options)
    root = parts.netloc + "/" + parts.path.strip("/") if parts.path.strip("/") else parts.netloc
    return LandingStore(fs=fs, root=root, url=f"s3://{root}")
