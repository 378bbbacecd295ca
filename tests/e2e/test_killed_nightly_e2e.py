"""A night SIGKILLed at any point leaves the published DuckDB warehouse as it was, end to
end: `nightly_sales` through real Airflow (`airflow dags test`) against a real PostgreSQL
source and the demo API on loopback, with the default warehouse (the DuckDB file).

Night D is published first; then the source changes (an order of D cancelled, late
orders, status updates and item deletes, a new day) and night D+1 is started again and
again as `make nightly` starts it (`run_dag`), in its own process group, each time
SIGKILLed with every process of it at a later point of the run (KILL_POINTS): inside
the extract (a table landed, its pointer not moved), the load (the build copy made, not
renamed; the payments load), while dbt writes the build, in the pandas ETL, in
check_parity, and inside `publish` itself (the run's metrics in the build, the publish
lock held, the lease and the base checked, the rename not done). After each kill: no
process of the run is left; `analytics.*`, the published file (bytes, inode, kept
versions) and the report pages are exactly night D's; the file opens read-only and every
table reads; the dead run's lease names it (a run started then fails at once naming
it). The operator's way out (docs/operating.md): `nightshift lease unlock` (`make
unlock`) once the run is known dead, or the lease's TTL (`WAREHOUSE_LEASE_TTL_MINUTES`;
short for the last killed run): the next run takes the expired lease over. Each attempt
starts over on what the previous kill left (landed runs, build files, a WAL), and the
last one publishes what the oracle computes.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import duckdb
import psutil
import pytest

from core import settings
from demo.generator import apply_next_day
from tests.e2e.harness import REPORT_TZ, assert_matches_oracle, snapshot
from tests.e2e.test_bad_input import DAY, World, published_world
from tests.e2e.test_postgres_warehouse_e2e import _kill_tree
from warehouse.publish import build_path_for, list_versions, published_identity

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

NEXT = DAY + timedelta(days=1)  # night D+1
LEASE_TTL_MINUTES = "0.1"  # 6 s: the last killed run's lease expires by itself
PAUSE_ENV = "NIGHTSHIFT_TEST_PAUSED_FILE"
PAUSE_AT_ENV = "NIGHTSHIFT_TEST_PAUSE_AT"
MARK_ENV = "NIGHTSHIFT_TEST_KILLED_RUN"  # in every process of a run: found after the kill

# Loaded by every Python process of a run whose PYTHONPATH holds its folder. PAUSE_AT_ENV
# says where the run stops (writes the file PAUSE_ENV names, then sleeps) for the test
# to SIGKILL it there, whatever the machine's speed (a night of this size runs its
# tasks in tenths of seconds, too fast to aim at from the log):
# - `task:<task id>`: at the start of that task's step (inside pipeline/task_run.py's
#   run_guarded, under the run's lease);
# - `replace:<regex>`: at an `os.replace(src, dst)` whose "src -> dst" matches, before
#   the rename (a landed table's pointer, the build copy, the publishing rename).
SITECUSTOMIZE = textwrap.dedent(
    f"""
    import os
    import re
    import sys

    _AT = os.environ.get({PAUSE_AT_ENV!r}, "")


    def _pause():
        import time
        from pathlib import Path

        Path(os.environ[{PAUSE_ENV!r}]).write_text(str(os.getpid()))
        time.sleep(600)


    if _AT.startswith("replace:"):
        _pattern = re.compile(_AT[len("replace:"):])
        _replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if _pattern.search(f"{{os.fspath(src)}} -> {{os.fspath(dst)}}"):
                _pause()
            return _replace(src, dst, *args, **kwargs)

        os.replace = replace

    elif _AT.startswith("task:"):
        from importlib.machinery import PathFinder

        _task = _AT[len("task:"):]

        def _wrap(module):
            guarded = module.run_guarded

            def run_guarded(fn, *args, **kwargs):
                if getattr(fn, "__name__", "") == _task:
                    step = fn

                    def fn(*a, **k):
                        _pause()
                        return step(*a, **k)

                return guarded(fn, *args, **kwargs)

            module.run_guarded = run_guarded

        class _PauseFinder:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name != "pipeline.task_run":
                    return None
                spec = PathFinder.find_spec(name, path)
                if spec is not None:
                    exec_module = spec.loader.exec_module

                    def exec_and_wrap(module):
                        exec_module(module)
                        _wrap(module)

                    spec.loader.exec_module = exec_and_wrap
                return spec

        sys.meta_path.insert(0, _PauseFinder)
    """
)


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed: inside `task`, where the hook pauses it (`pause_at`, see
    SITECUSTOMIZE), or else as soon as its log has a line matching `pattern`."""

    name: str
    task: str
    pause_at: str = ""
    pattern: str = ""


# In the order a run reaches them: each attempt must get past what the previous kill left.
KILL_POINTS = (
    # users and products landed and pointed to, orders landed, its pointer not moved
    KillPoint("extract", "extract_source_db", pause_at=r"replace:source_db/orders/_latest\.json$"),
    # the build's copy of the published file made, not renamed into place
    KillPoint(
        "load (build copy)", "load_source_db", pause_at=r"replace:\.build\.tmp -> .*\.build$"
    ),
    # the build holds the source's merge, the payments are not loaded
    KillPoint("load (payments)", "load_payments_api", pause_at="task:load_payments_api"),
    KillPoint(  # dbt writing the build: an incremental model of marts
        "dbt build", "dbt_build", pattern=r"dbt: .* START sql incremental model marts\.fct_payments"
    ),
    KillPoint("ETL", "transform_daily_sales", pause_at="task:transform_daily_sales"),
    KillPoint("parity", "check_parity", pause_at="task:check_parity"),
    # inside publish: the run's metrics written into the build, the publish lock held,
    # the lease and the base checked; the build not renamed over the published file
    KillPoint("publish", "publish", pause_at=r"replace:\.build -> .*/warehouse\.duckdb$"),
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(data_dir: Path) -> set[str]:
    return {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file()}


def _file_state(warehouse: Path) -> tuple[str, dict | None, list]:
    """The published file: its bytes, its identity (a publish is a new inode) and the
    kept versions (a publish keeps one)."""
    return _sha256(warehouse), published_identity(warehouse), list_versions(warehouse)


STRAY = re.compile(r"\.tmp|\.build|\.wal|\.lease$|\.gx-runtime/")


def _strays(data_dir: Path, files_d: set[str]) -> list[str]:
    """Files beside night D's that no finished run leaves: temp files, builds, WALs, a
    lease, a GX runtime folder (named once)."""
    found = set()
    for name in _files(data_dir) - files_d:
        if STRAY.search(name):
            head, gx, rest = name.partition(".gx-runtime/")
            found.add(head + gx + rest.split("/")[0] if gx else name)
    return sorted(found)


@dataclass
class Night:
    """The shared world after night D was published and the source moved on."""

    world: World
    before: tuple[dict, dict]  # analytics rows, report digests of night D
    file_state: tuple[str, dict | None, list]  # the published file (_file_state)
    files_d: set[str]  # every file under data/ after night D
    tmp: Path

    @property
    def warehouse(self) -> Path:
        return self.world.warehouse


@pytest.fixture(scope="module")
def night(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    tmp = tmp_path_factory.mktemp("killed_nightly")
    with published_world(
        postgres_admin_url,
        tmp,
        prefix="nightshift_killed",
        seed=13,
        days=5,
        orders_per_day=40,
        # not the shared dbt_project/target: a kill stops dbt mid-write
        env={"DBT_TARGET_PATH": str(tmp / "dbt_target")},
    ) as (world, url):
        state = Night(
            world,
            world.published_state(),
            _file_state(world.warehouse),
            _files(world.data_dir),
            tmp,
        )
        # the source moves on: an order of D cancelled (D is restated), late orders,
        # status updates, item deletes, a new day after D+1
        (cancelled,) = world.counted_orders(DAY, 1)
        world.sql(
            "update orders set status = 'cancelled', updated_at = now() where id = :id",
            {"id": cancelled},
        )
        apply_next_day(url, seed=14, payments_db=world.payments_db)
        yield state


def _start(night: Night, name: str, **extra: str) -> tuple[subprocess.Popen, Path, str]:
    """Night D+1 as `make nightly` runs it (`run_dag`: the command holds the lease for
    `airflow dags test`), in its own session and process group; output to a file."""
    hooks = night.tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    mark = uuid.uuid4().hex
    slug = re.sub(r"\W+", "-", name)
    log = night.tmp / f"run-{slug}-{mark[:6]}.log"
    env = {
        **os.environ,
        **night.world.env,
        "REPORT_TZ": REPORT_TZ,
        "PYTHONPATH": os.pathsep.join((str(hooks), str(settings.PROJECT_ROOT))),
        MARK_ENV: mark,
        **extra,
    }
    script = (
        "from datetime import date; from pipeline.airflow_run import run_dag; "
        f"run_dag(date.fromisoformat({NEXT.isoformat()!r}), {{}})"
    )
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            cwd=settings.PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log, mark


def _marked(mark: str) -> list[psutil.Process]:
    """Every process whose environment carries the run's mark (its whole tree, also a
    process that left the group or was re-parented)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK_ENV) == mark:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _wait_for(proc: subprocess.Popen, log: Path, point: KillPoint, paused: Path) -> None:
    """Wait until the run reaches `point` (paused there, or its log line written)."""
    pattern = re.compile(point.pattern) if point.pattern else None
    deadline = time.monotonic() + 600
    while not (paused.exists() if pattern is None else pattern.search(log.read_text())):
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before {point.name}:\n{text[-4000:]}"
            )
        assert time.monotonic() < deadline, f"the run never reached {point.name}"
        time.sleep(0.02)


def _assert_killed_inside(log: Path, point: KillPoint) -> None:
    """The run's log: the kill came inside `point.task` (started, not ended)."""
    text = log.read_text(errors="replace")
    assert f"[DAG TEST] starting task_id={point.task} " in text, text[-4000:]
    assert f"[DAG TEST] end task task_id={point.task} " not in text, (
        f"{point.name}: the run was killed after {point.task} had ended"
    )


def _assert_readable(warehouse: Path) -> None:
    """The published file opens read-only (no WAL beside it to replay) and every table
    of it reads to the end."""
    assert not warehouse.with_name(warehouse.name + ".wal").exists(), "a WAL beside it"
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        tables = con.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_type = 'BASE TABLE'"
        ).fetchall()
        assert ("analytics", "sales_summary") in tables, tables
        for schema, table in tables:
            con.execute(f'select * from "{schema}"."{table}"').fetchall()
    finally:
        con.close()


def _lease_cli(night: Night, *args: str) -> str:
    """`nightshift lease [unlock]` (`make unlock`), as the operator runs it."""
    env = {**os.environ, **night.world.env}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "nightshift"), "lease", *args],
        env=env,
        cwd=settings.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _assert_untouched(night: Night, point: str) -> None:
    analytics, report = night.world.published_state()
    assert analytics == night.before[0], f"killed in {point}: analytics changed"
    assert report == night.before[1], f"killed in {point}: the report pages changed"
    assert _file_state(night.warehouse) == night.file_state, f"killed in {point}: file changed"
    _assert_readable(night.warehouse)


def _build_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("warehouse.duckdb.*.build*"))


def test_night_killed_anywhere_leaves_night_d_published_and_the_rerun_takes_over(
    night: Night,
) -> None:
    """Night D+1 killed (SIGKILL, the whole process tree at once) at each point in turn;
    after each kill the published warehouse is night D's, exactly; the dead run's lease
    is removed (`nightshift lease unlock`) or, after the last kill, expires; the next run
    of D+1 publishes what the oracle computes."""
    data_dir = night.world.data_dir
    build = build_path_for(night.warehouse, NEXT.isoformat())
    strays: dict[str, list[str]] = {}
    for i, point in enumerate(KILL_POINTS):
        last = i == len(KILL_POINTS) - 1
        paused = night.tmp / f"paused-{i}"
        extra = {PAUSE_ENV: str(paused), PAUSE_AT_ENV: point.pause_at}
        if last:  # this dead run's lease expires by itself: no unlock after it
            extra["WAREHOUSE_LEASE_TTL_MINUTES"] = LEASE_TTL_MINUTES
        proc, log, mark = _start(night, point.name, **extra)
        try:
            _wait_for(proc, log, point, paused)
            assert len(_marked(mark)) > 1, "the run's processes carry no mark"
        finally:
            _kill_tree(proc)
        _assert_killed_inside(log, point)
        time.sleep(0.5)
        assert _marked(mark) == [], f"killed in {point.name}: processes left"

        _assert_untouched(night, point.name)
        strays[point.name] = _strays(data_dir, night.files_d)
        if point.task == "publish":  # docs/operating.md: the build stays until the rerun
            assert build.exists() and not build.with_name(build.name + ".wal").exists()
        shown = _lease_cli(night)
        assert f"nightly {NEXT} (airflow dags test), pid {proc.pid}" in shown, shown
        assert "(in force)" in shown, shown

        if i == 0:  # a run started now fails at once, naming the dead run and the way out
            busy, busy_log, _ = _start(night, "busy", WAREHOUSE_LEASE_WAIT_S="0")
            try:
                assert busy.wait(timeout=120) != 0
            finally:
                if busy.poll() is None:
                    _kill_tree(busy)
            text = busy_log.read_text()
            assert f"nightly {NEXT} (airflow dags test): not started: warehouse " in text, text
            assert f"pid {proc.pid}" in text and "make unlock" in text, text
            _assert_untouched(night, "busy")
        if not last:
            removed = _lease_cli(night, "unlock")
            assert removed.startswith("removed the lease (NOT expired): "), removed
            assert f"pid {proc.pid}" in removed, removed
            assert "free" in _lease_cli(night), "the lease is still there after unlock"

    print("\nleft by each kill (temp files, builds, WALs, the lease):")
    for name, files in strays.items():
        print(f"  {name}: {files}")

    # the last run's lease expires (TTL 6 s); the rerun waits for it, takes it over and
    # publishes what the oracle computes
    killed_pid = proc.pid
    proc, log, mark = _start(night, "rerun")
    try:
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    text = log.read_text(errors="replace")
    assert code == 0, text[-6000:]
    assert _marked(mark) == []
    taken = f"warehouse lease expired, taken over: nightly {NEXT} (airflow dags test), pid "
    assert f"{taken}{killed_pid} " in text, text[-6000:]
    assert_matches_oracle(night.world.engine, night.warehouse, night.world.api_base, NEXT)
    after = snapshot(night.warehouse)
    assert after != night.before[0], "the killed runs had nothing to publish"
    days_d = {r[0] for r in night.before[0]["sales_summary"]}
    restated = {r[0] for r in set(after["sales_summary"]) ^ set(night.before[0]["sales_summary"])}
    assert DAY in restated and NEXT in restated and restated - {NEXT} <= days_d, restated
    _assert_readable(night.warehouse)
    assert "free" in _lease_cli(night), "the rerun did not release the lease"
    assert _build_files(data_dir) == [], _build_files(data_dir)
    assert len(list_versions(night.warehouse)) == len(night.file_state[2]) + 1
    print("left after the rerun:", _strays(data_dir, night.files_d))
