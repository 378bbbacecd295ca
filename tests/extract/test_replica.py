"""Replica choice: real PostgreSQL (primary and a real throwaway streaming standby whose
replay is paused to create real lag), real MariaDB, SQLite; an injected lag only for the
threshold arithmetic."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from extract.replica import (
    ReadChoice,
    ReplicaLagError,
    choose_read_url,
    replica_safe_window_end,
    replication_lag_seconds,
    safe_url,
)
from tests.servers import _find_pg_bin, free_port

SECRET = "s3cr3t-pw"


def _dead_url() -> str:
    return f"postgresql://reader:{SECRET}@127.0.0.1:{free_port()}/app"


# --------------------------------------------------------------------------- lag readings


def test_primary_has_zero_lag_and_is_used_as_replica(pg_database: str) -> None:
    assert replication_lag_seconds(pg_database) == 0.0
    choice = choose_read_url(
        "postgresql://app@primary.invalid/app",
        pg_database,
        max_lag_seconds=30,
        on_lag="fail",
    )
    assert choice.used_replica and choice.url == pg_database
    assert choice.lag_seconds == 0.0
    with sa.create_engine(choice.url).connect() as conn:  # it is a working URL
        assert conn.execute(sa.text("select 1")).scalar() == 1


def test_mariadb_that_is_not_a_replica_has_zero_lag(mariadb_database: str) -> None:
    assert replication_lag_seconds(mariadb_database) == 0.0
    choice = choose_read_url(
        "mysql://app@primary.invalid/app", mariadb_database, max_lag_seconds=1, on_lag="fail"
    )
    assert choice.used_replica


def test_sqlite_has_zero_lag(tmp_path: Path) -> None:
    assert replication_lag_seconds(f"sqlite:///{tmp_path / 'x.db'}") == 0.0


def test_no_replica_configured_reads_primary() -> None:
    for replica in (None, ""):
        choice = choose_read_url("sqlite:///p.db", replica, max_lag_seconds=5, on_lag="fail")
        assert choice == ReadChoice("sqlite:///p.db", False, None, "no replica configured")


# --------------------------------------------------------------------------- threshold


def test_lagging_replica_falls_back_or_fails_naming_lag_and_threshold() -> None:
    primary = f"postgresql://app:{SECRET}@primary/app"
    replica = f"postgresql://reader:{SECRET}@replica/app"

    def lag120(url: str) -> float:
        assert url == replica
        return 120.0

    choice = choose_read_url(primary, replica, max_lag_seconds=60, on_lag="primary", lag_fn=lag120)
    assert not choice.used_replica and choice.url == primary and choice.lag_seconds == 120
    assert "120.0s" in choice.reason and "60s" in choice.reason
    assert SECRET not in choice.reason and SECRET not in repr(choice)

    with pytest.raises(ReplicaLagError) as err:
        choose_read_url(primary, replica, max_lag_seconds=60, on_lag="fail", lag_fn=lag120)
    assert "120.0s" in str(err.value) and "60s" in str(err.value)
    assert SECRET not in str(err.value) and "reader:***@replica" in str(err.value)

    # at the threshold is fine
    ok = choose_read_url(primary, replica, max_lag_seconds=120, on_lag="fail", lag_fn=lag120)
    assert ok.used_replica


def test_unknown_or_broken_lag_is_not_trusted() -> None:
    for lag in (None, math.inf):
        choice = choose_read_url(
            "sqlite:///p.db",
            "x://r",
            max_lag_seconds=1e9,
            on_lag="primary",
            lag_fn=lambda u, lag=lag: lag,
        )
        assert not choice.used_replica, lag
    with pytest.raises(ReplicaLagError, match="inf"):
        choose_read_url(
            "sqlite:///p.db",
            "x://r",
            max_lag_seconds=1e9,
            on_lag="fail",
            lag_fn=lambda u: math.inf,
        )


def test_unreachable_replica_counts_as_infinite_lag() -> None:
    replica = _dead_url()
    started = time.monotonic()
    choice = choose_read_url("sqlite:///p.db", replica, max_lag_seconds=60, on_lag="primary")
    assert time.monotonic() - started < 10
    assert not choice.used_replica and choice.lag_seconds == math.inf
    assert "unreachable" in choice.reason and SECRET not in choice.reason
    with pytest.raises(ReplicaLagError) as err:
        choose_read_url("sqlite:///p.db", replica, max_lag_seconds=60, on_lag="fail")
    assert "reader:***@127.0.0.1" in str(err.value) and SECRET not in str(err.value)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="on_lag"):
        choose_read_url("a", "b", max_lag_seconds=1, on_lag="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_lag_seconds"):
        choose_read_url("a", "b", max_lag_seconds=-1, on_lag="fail")


def test_safe_url_hides_password() -> None:
    assert safe_url(f"postgres://u:{SECRET}@h:5432/d") == "postgresql+psycopg://u:***@h:5432/d"


# --------------------------------------------------------------------------- real standby


@contextlib.contextmanager
def _primary_and_standby() -> Iterator[tuple[str, str]]:
    """A throwaway primary and a streaming standby made with `pg_basebackup -R`."""
    try:
        bins = {n: _find_pg_bin(n) for n in ("initdb", "pg_ctl", "pg_basebackup")}
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL server binaries not installed: {exc}")
    tmp = Path(tempfile.mkdtemp(prefix="nightshift-pgrepl-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(tmp, user="postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    p_port, s_port = free_port(), free_port()
    started: list[Path] = []

    def run(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, capture_output=True, timeout=60)

    def start(datadir: Path, port: int) -> None:
        run(
            bins["pg_ctl"],
            "-D",
            str(datadir),
            "-l",
            str(tmp / f"{datadir.name}.log"),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {tmp} -c fsync=off",
            "-w",
            "start",
        )
        started.append(datadir)

    try:
        run(bins["initdb"], "-N", "-D", str(tmp / "primary"), "-U", "postgres", "-A", "trust")
        start(tmp / "primary", p_port)
        run(
            bins["pg_basebackup"],
            "-D",
            str(tmp / "standby"),
            "-R",
            "--no-sync",
            "-X",
            "stream",
            "-h",
            "127.0.0.1",
            "-p",
            str(p_port),
            "-U",
            "postgres",
        )
        start(tmp / "standby", s_port)
        yield (
            f"postgresql+psycopg://postgres@127.0.0.1:{p_port}/postgres",
            f"postgresql+psycopg://postgres@127.0.0.1:{s_port}/postgres",
        )
    finally:
        for datadir in reversed(started):
            subprocess.run(
                [*run_as, bins["pg_ctl"], "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(tmp, ignore_errors=True)


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_real_standby_lag_paused_replay() -> None:
    with _primary_and_standby() as (primary, standby):
        p = sa.create_engine(primary, isolation_level="AUTOCOMMIT")
        s = sa.create_engine(standby, isolation_level="AUTOCOMMIT")
        try:
            with p.connect() as conn:
                conn.execute(sa.text("create table t (i int)"))
                conn.execute(sa.text("insert into t values (1)"))

            def standby_rows() -> int:
                with s.connect() as conn:
                    return conn.execute(sa.text("select count(*) from t")).scalar()

            _wait(lambda: _safe(standby_rows) == 1)
            assert replication_lag_seconds(standby) == 0.0  # caught up, streaming
            assert replication_lag_seconds(primary) == 0.0  # not in recovery
            choice = choose_read_url(primary, standby, max_lag_seconds=1, on_lag="fail")
            assert choice.used_replica and choice.url == standby

            # real lag: stop replay, commit on the primary, let time pass
            with s.connect() as conn:
                conn.execute(sa.text("select pg_wal_replay_pause()"))
            with p.connect() as conn:
                conn.execute(sa.text("insert into t values (2)"))

            def received_not_replayed() -> bool:
                with s.connect() as conn:
                    return conn.execute(
                        sa.text("select pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")
                    ).scalar()

            _wait(received_not_replayed)
            time.sleep(1.2)
            lag = replication_lag_seconds(standby)
            assert lag is not None and 1.0 <= lag < 60
            assert standby_rows() == 1  # the replica really is behind

            choice = choose_read_url(primary, standby, max_lag_seconds=0.5, on_lag="primary")
            assert not choice.used_replica and choice.url == primary
            assert choice.lag_seconds is not None and choice.lag_seconds >= 1.0
            with pytest.raises(ReplicaLagError, match="exceeds the threshold 0.5s"):
                choose_read_url(primary, standby, max_lag_seconds=0.5, on_lag="fail")
            # a generous threshold accepts the same replica
            assert choose_read_url(primary, standby, max_lag_seconds=60, on_lag="fail").used_replica

            with s.connect() as conn:
                conn.execute(sa.text("select pg_wal_replay_resume()"))
            _wait(lambda: standby_rows() == 2)
            _wait(lambda: replication_lag_seconds(standby) == 0.0)
            assert choose_read_url(
                primary, standby, max_lag_seconds=0.5, on_lag="fail"
            ).used_replica
        finally:
            p.dispose()
            s.dispose()


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None


def test_replica_safe_window_end() -> None:
    u = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    on_replica = ReadChoice("r", True, 42.5, "ok")
    assert replica_safe_window_end(u, on_replica) == u - timedelta(seconds=42.5)
    assert replica_safe_window_end(u, ReadChoice("p", False, 900.0, "lagging")) == u
    assert replica_safe_window_end(u, ReadChoice("p", False, None, "none")) == u


# --------------------------------------------------------------------------- per shard


def _shard_dbs(admin: str, stack: contextlib.ExitStack) -> dict[str, str]:
    """Primary and "replica" of shards a and b: real databases with the same rows; the
    replicas' orders say `from-replica` so the landing shows where each shard read."""
    from demo.generator import generate
    from tests.servers import fresh_database

    dbs = {}
    for name in ("a", "b", "a_replica", "b_replica"):
        url = stack.enter_context(fresh_database(admin))
        generate(url, seed=4, days=2, end_date=datetime(2026, 11, 20).date(), orders_per_day=20)
        if name.endswith("_replica"):
            with sa.create_engine(url).begin() as conn:
                conn.execute(sa.text("update orders set status = 'from-replica'"))
        dbs[name] = url
    return dbs


def _db_now(url: str) -> datetime:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("select current_timestamp")).scalar_one()
    finally:
        engine.dispose()


def _map(dbs: dict[str, str], **b_policy) -> Any:
    from extract.shards import ShardMap

    return ShardMap.from_dict(
        {
            "virtual_shards": 8,
            "version": 1,
            "shards": [
                {"name": "a", "url": dbs["a"], "vshards": [[0, 3]],
                 "replica_url": dbs["a_replica"]},
                {"name": "b", "url": dbs["b"], "vshards": [[4, 7]],
                 "replica_url": dbs["b_replica"], **b_policy},
            ],
        }
    )  # fmt: skip


def test_lag_is_checked_per_shard_replica(postgres_admin_url: str, tmp_path: Path) -> None:
    """Each shard's replica is judged by its own lag and policy: a fresh one is read (the
    shard's window end recorded lag-corrected), a lagging one falls back to that shard's
    primary, or fails the run naming the shard when its policy is `fail`."""
    import pyarrow.parquet as pq

    from extract.db_extract import (
        ExtractPlan,
        ShardReadPolicy,
        extract_sharded_source,
        read_shard_run_record,
        shard_run_id,
    )
    from extract.landing import run_dir
    from extract.shards import ShardExtractError

    with contextlib.ExitStack() as stack:
        dbs = _shard_dbs(postgres_admin_url, stack)
        lags = {dbs["a_replica"]: 200.0, dbs["b_replica"]: 1000.0}
        measured: list[str] = []

        def lag_fn(url: str) -> float:
            measured.append(url)
            return lags[url]

        landing = tmp_path / "landing"
        before = _db_now(dbs["a"])
        extract_sharded_source(
            _map(dbs),
            ExtractPlan(run_id="r1", landing_root=landing, warehouse_path=None),
            ShardReadPolicy(lag_fn=lag_fn),
        )
        after = _db_now(dbs["a"])
        assert sorted(measured) == sorted(lags)  # one lag check per shard replica
        status = {}
        manifests = {}
        for shard in ("a", "b"):
            directory = run_dir(landing, "source_db", "orders", shard_run_id("r1", shard))
            status[shard] = set(pq.read_table(directory).column("status").to_pylist())
            manifests[shard] = json.loads((directory / "_manifest.json").read_text())
        assert status["a"] == {"from-replica"}
        assert "from-replica" not in status["b"] and status["b"]
        a, b = manifests["a"], manifests["b"]
        assert (a["read_from"], a["replica_lag_seconds"]) == ("replica", 200.0)
        assert (b["read_from"], b["replica_lag_seconds"]) == ("primary", 1000.0)
        assert "exceeds the threshold 300s" in b["read_reason"]
        # U (the shard's clock at its snapshot) is within [before, after]; only the
        # replica's recorded window end is U - lag
        lag = timedelta(seconds=200)
        assert before - lag <= datetime.fromisoformat(a["window_end"]) <= after - lag
        assert before <= datetime.fromisoformat(b["window_end"]) <= after

        # b's own policy: fail. The run fails naming b; no run record, so not loadable.
        with pytest.raises(ShardExtractError) as err:
            extract_sharded_source(
                _map(dbs, replica_on_lag="fail"),
                ExtractPlan(run_id="r2", landing_root=landing, warehouse_path=None),
                ShardReadPolicy(lag_fn=lag_fn),
            )
        assert set(err.value.failures) == {"b"}
        assert isinstance(err.value.failures["b"], ReplicaLagError)
        assert "1000.0s exceeds the threshold 300s" in str(err.value)
        assert read_shard_run_record(landing, "r2") is None

        # b's own threshold above its lag: b reads its replica too
        extract_sharded_source(
            _map(dbs, replica_max_lag_seconds=2000),
            ExtractPlan(run_id="r3", landing_root=landing, warehouse_path=None),
            ShardReadPolicy(lag_fn=lag_fn),
        )
        directory = run_dir(landing, "source_db", "orders", shard_run_id("r3", "b"))
        assert set(pq.read_table(directory).column("status").to_pylist()) == {"from-replica"}


def test_shard_map_replica_settings_are_validated_and_kept_secret() -> None:
    from extract.shards import ShardMap, ShardMapError
    from migrate.resharding import move_vshards

    base = {"name": "a", "url": "postgresql://u@h/a", "vshards": [[0, 1023]]}
    for bad, message in (
        ({"replica_url": "x://r", "replica_conn_id": "r"}, "not both"),
        ({"replica_max_lag_seconds": -1}, "must be a number >= 0"),
        ({"replica_on_lag": "maybe"}, "valid: primary, fail"),
    ):
        with pytest.raises(ShardMapError, match=message):
            ShardMap.from_dict({"version": 1, "shards": [{**base, **bad}]})
    replica = f"postgresql://reader:{SECRET}@replica/a"
    m = ShardMap.from_dict(
        {"version": 1, "shards": [{**base, "replica_url": replica, "replica_on_lag": "fail"}]}
    )
    assert SECRET not in json.dumps(m.to_public_dict()) and SECRET not in repr(m.shards[0])
    assert ShardMap.from_dict(m.to_dict()) == m
    moved = move_vshards(m, 0, 9, "b", url="postgresql://u@h/b")
    assert moved.shard("a").replica_url == replica  # a reshard keeps the shard's replica
