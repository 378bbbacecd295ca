"""One run at a time on the warehouse: a lease held for the whole run.

Airflow's pool and `max_active_runs` are not enough: `airflow dags test` (behind `make
nightly`, `make demo`, the local `make backfill`) ignores both, and backfill runs do not
count against `max_active_runs`. Two runs at once would share a build path and race
their publishes. So every run holds a **lease** on the warehouse, from its first task to
its last, whatever the scheduler does:

- taken by the first task of a run (or by `make nightly` / `make backfill` for the
  whole `airflow dags test`), renewed by every task while it runs (a heartbeat thread,
  every `ttl / 4`, at most a minute apart), released by the run's last (teardown) task;
- another run waits up to `WAREHOUSE_LEASE_WAIT_S`, then fails with WarehouseBusyError
  naming the holder, since when, its host and pid and when the lease expires;
- the same holder (a retry or a clear of the same dag run) takes its own lease again;
- a lease not renewed for `WAREHOUSE_LEASE_TTL_MINUTES` (a killed run) is expired and
  the next run takes it over; `make unlock` removes one at once (a run known dead);
- a run whose lease was taken over or removed stops at its next task and never
  publishes (LeaseLostError; `warehouse/publish.py` checks the lease under its lock).

The DuckDB warehouse's lease is a JSON file next to it, `<warehouse>.lease`, changed
only under a short flock of `<warehouse>.lease.lock`. A server warehouse supplies its
own `LeaseBackend` (`Warehouse.lease_backend()`: a row of `nightshift_control.lease` on
PostgreSQL); `backend_for` picks it from what the caller names (a path or a warehouse).

    python -m warehouse.lease            # who holds the warehouse
    python -m warehouse.lease unlock     # remove the lease (make unlock)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from core import clock
from core.files import write_atomic

log = logging.getLogger(__name__)

LEASE_SUFFIX = ".lease"
DEFAULT_TTL_S = 30 * 60.0
DEFAULT_WAIT_S = 60.0


class WarehouseBusyError(RuntimeError):
    """Another run holds the warehouse's lease; the message names it."""

    def __init__(self, message: str, lease: Lease) -> None:
        super().__init__(message)
        self.lease = lease


class LeaseLostError(RuntimeError):
    """This run's lease was taken over (it expired) or removed (`make unlock`)."""


@dataclass(frozen=True)
class Lease:
    holder: str  # who: a dag run ("nightly_sales/<run id>"), a make command; re-acquirable
    run: str  # for people: "nightly 2026-11-18 (dag run manual__…, try 1)"
    token: str  # one acquisition
    host: str
    pid: int
    acquired_at: str  # ISO-8601 UTC
    renewed_at: str
    expires_at: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        """The lease a store kept as a JSON object (extra keys are ignored)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def expired(self, now: datetime | None = None) -> bool:
        return (now or clock.now()) >= datetime.fromisoformat(self.expires_at)

    def describe(self) -> str:
        return (
            f"{self.run} holds the warehouse since {self.acquired_at} on host {self.host} "
            f"(pid {self.pid}; holder {self.holder}), last renewed {self.renewed_at}, "
            f"expires {self.expires_at} unless renewed"
        )


class LeaseBackend(Protocol):
    """Where a warehouse's lease lives. Every method is atomic with the others."""

    name: str

    def read(self) -> Lease | None: ...

    def try_acquire(self, holder: str, run: str, ttl_s: float) -> tuple[Lease, bool]:
        """(lease now in force, True when it is ours: taken, retaken or renewed)."""
        ...

    def renew(self, holder: str, ttl_s: float) -> Lease:
        """Extend our lease; LeaseLostError when it is not ours any more."""
        ...

    def release(self, holder: str) -> bool: ...

    def force_release(self) -> Lease | None: ...


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def next_lease(current: Lease | None, holder: str, run: str, ttl_s: float) -> Lease | None:
    """The lease `holder` holds from now on, whatever stores it: its own lease renewed
    (same token and start), a new one over none or an expired one (logged as a
    takeover); None while another holder's lease is in force."""
    now = clock.now()
    if current is not None and current.holder != holder and not current.expired(now):
        return None
    if current is not None and current.holder != holder:
        log.warning("warehouse lease expired, taken over: %s", current.describe())
    same = current is not None and current.holder == holder
    return Lease(
        holder=holder,
        run=run,
        token=current.token if same else uuid.uuid4().hex,
        host=socket.gethostname(),
        pid=os.getpid(),
        acquired_at=current.acquired_at if same else _iso(now),
        renewed_at=_iso(now),
        expires_at=_iso(now + timedelta(seconds=ttl_s)),
    )


def renewed(current: Lease, ttl_s: float) -> Lease:
    """`current` renewed for `ttl_s` seconds from now."""
    now = clock.now()
    return replace(current, renewed_at=_iso(now), expires_at=_iso(now + timedelta(seconds=ttl_s)))


class FileLease:
    """The lease of a DuckDB warehouse file: `<warehouse>.lease` (JSON), changed under a
    flock of `<warehouse>.lease.lock` (never deleted, so every process locks one inode)."""

    name = "file"

    def __init__(self, warehouse_path: Path) -> None:
        warehouse_path = Path(warehouse_path)
        self.path = warehouse_path.with_name(warehouse_path.name + LEASE_SUFFIX)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> Lease | None:
        try:
            return Lease.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, OSError, KeyError, TypeError) as exc:  # foreign: say so
            raise RuntimeError(
                f"{self.path} is not a readable lease ({exc!r}): `make unlock` removes it"
            ) from exc

    def _write(self, lease: Lease) -> None:
        write_atomic(self.path, json.dumps(asdict(lease), indent=1))

    def read(self) -> Lease | None:
        with self._locked():
            return self._read()

    def try_acquire(self, holder: str, run: str, ttl_s: float) -> tuple[Lease, bool]:
        with self._locked():
            current = self._read()
            lease = next_lease(current, holder, run, ttl_s)
            if lease is None:
                return current, False
            self._write(lease)
            return lease, True

    def renew(self, holder: str, ttl_s: float) -> Lease:
        with self._locked():
            current = self._read()
            if current is None or current.holder != holder:
                raise LeaseLostError(_lost_message(self.path, holder, current))
            lease = renewed(current, ttl_s)
            self._write(lease)
            return lease

    def release(self, holder: str) -> bool:
        with self._locked():
            current = self._read()
            if current is None or current.holder != holder:
                return False
            self.path.unlink(missing_ok=True)
            return True

    def force_release(self) -> Lease | None:
        with self._locked():
            try:
                current = self._read()
            except RuntimeError:
                current = None
            self.path.unlink(missing_ok=True)
            return current


class RowLease:
    """A `LeaseBackend` kept in one row of a server warehouse's control table. A
    subclass gives `_locked()`, one transaction that holds the row's lock and yields
    (handle, the lease stored or None), and `_write(handle, lease or None)`; expiry and
    takeover are `FileLease`'s (`next_lease`, `renewed`)."""

    warehouse: Any

    def _locked(self) -> contextlib.AbstractContextManager[tuple[Any, Lease | None]]:
        raise NotImplementedError

    def _write(self, handle: Any, lease: Lease | None) -> None:
        raise NotImplementedError

    def read(self) -> Lease | None:
        with self._locked() as (_, current):
            return current

    def try_acquire(self, holder: str, run: str, ttl_s: float) -> tuple[Lease | None, bool]:
        with self._locked() as (handle, current):
            lease = next_lease(current, holder, run, ttl_s)
            if lease is None:
                return current, False
            self._write(handle, lease)
            return lease, True

    def renew(self, holder: str, ttl_s: float) -> Lease:
        with self._locked() as (handle, current):
            if current is None or current.holder != holder:
                raise LeaseLostError(_lost_message(self.warehouse.describe(), holder, current))
            lease = renewed(current, ttl_s)
            self._write(handle, lease)
            return lease

    def release(self, holder: str) -> bool:
        with self._locked() as (handle, current):
            if current is None or current.holder != holder:
                return False
            self._write(handle, None)
            return True

    def force_release(self) -> Lease | None:
        with self._locked() as (handle, current):
            self._write(handle, None)
            return current


def _lost_message(where: Path | str, holder: str, current: Lease | None) -> str:
    now = "nobody holds it now (it was removed: `make unlock`?)"
    if current is not None:
        now = f"now {current.describe()}"
    return (
        f"this run ({holder}) lost its lease on the warehouse ({where}): {now}. It must not "
        "go on or publish: rerun the day from the start"
    )


def _target(where: Any) -> Any:
    """A DuckDB warehouse is its file (the lease file lives next to it); a path stays a
    path; another warehouse (PostgreSQL) stays itself."""
    if isinstance(where, (str, os.PathLike)):
        return Path(where)
    if getattr(where, "kind", None) == "duckdb" and getattr(where, "path", None) is not None:
        return Path(where.path)
    return where


def _name(where: Any) -> str:
    where = _target(where)
    return str(where) if isinstance(where, Path) else where.describe()


def _key(where: Any) -> Any:
    where = _target(where)
    return where.resolve() if isinstance(where, Path) else where.describe()


def backend_for(warehouse_path: Any) -> LeaseBackend:
    """The lease backend of a warehouse: a file next to a DuckDB file (a path or a DuckDB
    warehouse), the warehouse's own (`lease_backend()`: a row on PostgreSQL) otherwise."""
    where = _target(warehouse_path)
    if isinstance(where, Path):
        return FileLease(where)
    return where.lease_backend()


def acquire(
    warehouse_path: Path,
    holder: str,
    run: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    wait_s: float = DEFAULT_WAIT_S,
    poll_s: float = 1.0,
) -> Lease:
    """Take (or take again) the warehouse's lease for `holder`, waiting up to `wait_s`
    while another holder's unexpired lease is in force; then WarehouseBusyError."""
    backend = backend_for(warehouse_path)
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        lease, ours = backend.try_acquire(holder, run, ttl_s)
        if ours:
            if waited:
                log.info("warehouse lease taken after waiting: %s", lease.describe())
            return lease
        left = deadline - time.monotonic()
        if left <= 0:
            raise WarehouseBusyError(
                f"warehouse {_name(warehouse_path)} is busy: {lease.describe()}. This run "
                f"({run}) waited {wait_s:.0f}s (WAREHOUSE_LEASE_WAIT_S). Wait for that run "
                "to finish and retry, or `make unlock` if that run is dead (a killed run's "
                "lease also expires by itself: WAREHOUSE_LEASE_TTL_MINUTES)",
                lease,
            )
        if not waited:
            log.warning("waiting up to %.0fs for the warehouse: %s", wait_s, lease.describe())
            print(f"[lease] waiting up to {wait_s:.0f}s: {lease.describe()}", flush=True)
            waited = True
        time.sleep(min(poll_s, left))


def renew(warehouse_path: Path, holder: str, ttl_s: float = DEFAULT_TTL_S) -> Lease:
    return backend_for(warehouse_path).renew(holder, ttl_s)


def release(warehouse_path: Path, holder: str) -> bool:
    """Give the lease up if `holder` has it (True); another holder's lease stays."""
    released = backend_for(warehouse_path).release(holder)
    if released:
        log.info("warehouse lease released by %s", holder)
    return released


def current(warehouse_path: Path) -> Lease | None:
    return backend_for(warehouse_path).read()


# Leases this process works under (warehouse -> holder): publish_build checks them.
_ACTIVE: dict[Any, str] = {}
_ACTIVE_LOCK = threading.Lock()


def check_held(warehouse_path: Path) -> None:
    """LeaseLostError when this process works under a lease of `warehouse_path` that is
    not in force any more (publish_build calls it under the publish lock)."""
    key = _key(warehouse_path)
    with _ACTIVE_LOCK:
        holder = _ACTIVE.get(key)
    if holder is None:
        return
    lease = current(warehouse_path)
    if lease is None or lease.holder != holder or lease.expired():
        raise LeaseLostError(_lost_message(_name(warehouse_path), holder, lease))


@contextlib.contextmanager
def heartbeat(warehouse_path: Path, holder: str, ttl_s: float = DEFAULT_TTL_S) -> Iterator[None]:
    """Renew `holder`'s lease every `ttl_s / 4` (at most a minute apart) while the block
    runs; the lease counts as this process's for `check_held`. A lost lease is logged at
    once and raised (LeaseLostError) when the block ends."""
    key = _key(warehouse_path)
    stop = threading.Event()
    lost: list[LeaseLostError] = []
    every = max(0.05, min(60.0, ttl_s / 4))

    def beat() -> None:
        while not stop.wait(every):
            try:
                renew(warehouse_path, holder, ttl_s)
            except LeaseLostError as exc:
                log.error("%s", exc)
                lost.append(exc)
                return
            except Exception:  # a full disk, an NFS hiccup: try again at the next beat
                log.exception("could not renew the warehouse lease")

    with _ACTIVE_LOCK:
        previous = _ACTIVE.get(key)
        _ACTIVE[key] = holder
    thread = threading.Thread(target=beat, name="warehouse-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with _ACTIVE_LOCK:
            if previous is None:
                _ACTIVE.pop(key, None)
            else:
                _ACTIVE[key] = previous
    if lost:
        raise lost[0]


@contextlib.contextmanager
def held(
    warehouse_path: Path,
    holder: str,
    run: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    wait_s: float = DEFAULT_WAIT_S,
) -> Iterator[Lease]:
    """The lease for the block (acquire, heartbeat, release). Nested under a lease of the
    same holder (a backfill's day), it is joined and left to the outer block to release."""
    before = current(warehouse_path)
    joined = before is not None and before.holder == holder and not before.expired()
    lease = acquire(warehouse_path, holder, run, ttl_s=ttl_s, wait_s=wait_s)
    try:
        with heartbeat(warehouse_path, holder, ttl_s):
            yield lease
    finally:
        if not joined:
            release(warehouse_path, holder)


def new_holder(kind: str) -> str:
    """A holder id for one command (`make nightly`, a rollback): never re-acquirable by
    another command."""
    return f"{kind}/{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from core import settings

    parser = argparse.ArgumentParser(
        prog=prog, description="The warehouse's run lease: who holds it, or remove it."
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("show", "unlock"),
        default="show",
        help="show (default): who holds the lease; unlock: remove one left by a dead run",
    )
    args = parser.parse_args(argv)
    target = settings.warehouse_lease_target()
    warehouse_path = _name(target)
    backend = backend_for(target)
    if args.command == "unlock":
        removed = backend.force_release()
        if removed is None:
            print(f"no lease on {warehouse_path}: nothing to unlock")
        else:
            state = "expired" if removed.expired() else "NOT expired"
            print(f"removed the lease ({state}): {removed.describe()}")
            print("if that run is still alive, it stops at its next task and publishes nothing")
        return 0
    try:
        lease = backend.read()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    if lease is None:
        print(f"{warehouse_path}: free")
    else:
        state = "expired: the next run takes it over" if lease.expired() else "in force"
        print(f"{warehouse_path}: {lease.describe()} ({state})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
