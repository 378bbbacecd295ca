"""Benchmark the migration verifier (migrate.verify) on two PostgreSQL databases of `orders`.

Usage: python bench/bench_verify.py [--orders 5000000] [--repeat 1] [--verifiers ours,reladiff,sorted]
Admin URL from NIGHTSHIFT_BENCH_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).

The pair: databases `nightshift_verify_old` and `nightshift_verify_new`, each holding the
same --orders `orders`: demo.generator rows 1..1M (read from bench_extract's
`nightshift_bench` when it has them, else generated once into a scratch database),
repeated under new ids up to --orders (a verifier's cost depends on rows and their width,
not on their being distinct orders; it spares generating 5M orders with their items).
Ids leave one free id every 50,000 so that injected "extra" rows can land inside the
key space. The pair is kept between runs and rebuilt when its row count differs from
--orders; `new` is a `CREATE DATABASE ... TEMPLATE` copy of `old`.

Runs, each verifier in a fresh subprocess (peak RSS = VmHWM of that process only; the
database server's own work is not in it, for any verifier):
  identical   the pair as built
  10 diffs    exactly 10 differences injected into `new` at random keys, one in each tenth
              of the key space (missing, extra and changed rows, mixed), checked for kind
              and key (and column, where the verifier reports columns); then restored.
              The injected keys are recorded in `new` in the same transaction, so a run
              killed before the restore is repaired by the next one.
Verifiers: ours (migrate.verify.verify_table); the peer, reladiff's hashdiff (its own
virtualenv bench/.venv-reladiff, created here on first use, never in the project's
requirements); and a plain full sorted comparison (both sides streamed in key order by
COPY and merged). When reladiff cannot be installed or run, the sorted comparison is the
peer, and the output says so. Seconds are timed inside each process (imports excluded).
Ends with: BENCH verify rows=<n> seconds=<s> ratio_to_peer=<x> found=<k>/10, where seconds
is our verifier on the 10-differences run and the ratio is ours / the peer's on that run.
"""

# Top-level imports are stdlib only: the reladiff child runs this file in its own venv.
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

DEFAULT_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SOURCE_DB = "nightshift_bench"  # bench_extract's database: read (never written) when it fits
SCRATCH_DB = "nightshift_verify_src"  # generated here when SOURCE_DB does not fit
OLD_DB = "nightshift_verify_old"
NEW_DB = "nightshift_verify_new"
TABLE = "orders"
DEFAULT_ORDERS = 5_000_000
KEY = "id"
COLUMNS = ("id", "user_id", "status", "currency", "total", "created_at", "updated_at")
UNIT = 1_000_000  # generated orders; larger pairs repeat them under new ids
HOLE_EVERY = 50_000  # one free id after every 50,000 ids: room for "extra" rows
N_DIFFS = 10
KINDS = ("missing", "extra", "changed")
INJECTED = "bench_injected"  # the injected keys, in `new`: what the restore undoes
PEER_VENV = ROOT / "bench" / ".venv-reladiff"
PEER_REQUIREMENT = "reladiff[postgresql]==0.6.0"
RSS_TARGET_MIB = 300
VERIFIERS = ("ours", "reladiff", "sorted")


def _vm_hwm_kib() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------- the pair


def _connect(url: str, autocommit: bool = False):
    import psycopg

    from bench.bench_extract import _libpq

    return psycopg.connect(_libpq(url), autocommit=autocommit)


def _count(url: str) -> int | None:
    """Rows in `orders` of the database at `url`; None when it or the table is missing."""
    import psycopg

    try:
        with _connect(url) as db:
            return db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    except psycopg.Error:
        return None


def _recreate(admin: str, name: str, template: str | None = None) -> None:
    from psycopg import sql

    with _connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(create)


def _drop(admin: str, name: str) -> None:
    from psycopg import sql

    with _connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _source(admin: str, unit: int) -> tuple[str, bool]:
    """A database whose `orders` ids 1..`unit` are generated orders; (url, is_scratch)."""
    from datetime import date

    from bench.bench_extract import _db_url
    from demo.generator import generate

    shared = _db_url(admin, SOURCE_DB)
    with contextlib.suppress(Exception), _connect(shared) as db:
        sql = f"SELECT count(*) FROM {TABLE} WHERE {KEY} BETWEEN 1 AND %s"
        if db.execute(sql, (unit,)).fetchone()[0] == unit:
            # Orders are written in id order: these rows stay as they are, even while
            # bench_extract is still generating the rest (read only here).
            print(f"copying orders 1..{unit} of {SOURCE_DB}", file=sys.stderr)
            return shared, False
    url = _db_url(admin, SCRATCH_DB)
    _recreate(admin, SCRATCH_DB)
    print(f"generating {unit} orders into {SCRATCH_DB} ...", file=sys.stderr)
    started = time.perf_counter()
    generate(url, seed=42, days=60, end_date=date(2026, 11, 26), scale=unit, batch_size=50_000)
    print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return url, True


def _copy_orders(source: str, target: str, unit: int, orders: int) -> None:
    """`orders` rows into an empty `target`: source orders 1..`unit` repeated with ids
    offset by `unit` each time, then shifted to leave the holes."""
    import sqlalchemy as sa

    from demo.schema import orders as orders_table

    engine = sa.create_engine(target)
    try:
        orders_table.to_metadata(sa.MetaData()).create(engine)
    finally:
        engine.dispose()
    in_sql = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT binary)"
    with _connect(source) as src, _connect(target) as dst:
        for offset in range(0, orders, unit):
            g = f"({KEY} + {offset})"  # the row's place in the pair, before the holes
            shifted = ", ".join(
                f"{g} + ({g} - 1) / {HOLE_EVERY} AS {KEY}" if c == KEY else c for c in COLUMNS
            )
            out_sql = (
                f"COPY (SELECT {shifted} FROM {TABLE} WHERE {KEY} BETWEEN 1 AND {unit} "
                f"AND {g} <= {orders} ORDER BY {KEY}) TO STDOUT (FORMAT binary)"
            )
            with src.cursor().copy(out_sql) as out, dst.cursor().copy(in_sql) as inp:
                for chunk in out:
                    inp.write(chunk)
        dst.commit()
    with _connect(target, autocommit=True) as dst:
        dst.execute(f"VACUUM (ANALYZE) {TABLE}")


def prepare_pair(admin: str, orders: int) -> tuple[str, str]:
    """(old_url, new_url): the pair with `orders` orders each, reused when it fits."""
    from bench.bench_extract import _db_url

    old, new = _db_url(admin, OLD_DB), _db_url(admin, NEW_DB)
    if _count(old) == orders and _count(new) is not None:
        restore(old, new)  # a killed earlier run may have left its injection behind
        if _count(new) == orders:
            print(f"reusing {OLD_DB} / {NEW_DB}: {orders} orders each", file=sys.stderr)
            return old, new
    started = time.perf_counter()
    unit = min(orders, UNIT)
    source, scratch = _source(admin, unit)
    _recreate(admin, OLD_DB)
    _copy_orders(source, old, unit, orders)
    if scratch:
        _drop(admin, SCRATCH_DB)
    _recreate(admin, NEW_DB, template=OLD_DB)
    with _connect(new, autocommit=True) as db:
        db.execute(f"ANALYZE {TABLE}")
    print(f"pair built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return old, new


# ----------------------------------------------------------------------------- differences


def plan_differences(old: str, seed: int = 7) -> list[dict]:
    """N_DIFFS differences, one at a random key in each tenth of the key space.

    Kinds are mixed (3 missing, 3 extra, 4 changed, shuffled); an extra row takes a free
    id (a hole) of its tenth when there is one, else an id past the end.
    """
    rng = random.Random(seed)
    with _connect(old) as db:
        lo, hi = db.execute(f"SELECT min({KEY}), max({KEY}) FROM {TABLE}").fetchone()
        statuses = [r[0] for r in db.execute(f"SELECT DISTINCT status FROM {TABLE}")]
    kinds = ["missing"] * 3 + ["extra"] * 3 + ["changed"] * 4
    rng.shuffle(kinds)
    holes = [h for h in range(HOLE_EVERY + 1, hi, HOLE_EVERY + 1)]
    span = (hi - lo + 1) / N_DIFFS
    plan: list[dict] = []
    used: set[int] = set()
    for i, kind in enumerate(kinds):
        start, end = lo + int(i * span), lo + int((i + 1) * span) - 1
        if kind == "extra":
            free = [h for h in holes if start <= h <= end and h not in used]
            free = free or [h for h in holes if h not in used]
            key = rng.choice(free) if free else hi + 1 + i
            plan.append({"kind": kind, "key": key, "like": max(lo, min(key - 1, hi))})
        else:
            key = rng.randint(start, end)
            while key in used or key % (HOLE_EVERY + 1) == 0:
                key = rng.randint(start, end)
            entry: dict = {"kind": kind, "key": key}
            if kind == "changed":
                entry["column"] = ("status", "total", "updated_at", "user_id")[
                    sum(p["kind"] == "changed" for p in plan) % 4
                ]
                entry["statuses"] = statuses
            plan.append(entry)
        used.add(plan[-1]["key"])
    return plan


def inject(old: str, new: str, plan: list[dict]) -> None:
    """Apply `plan` to `new`, recording the keys in the same transaction."""
    cols = ", ".join(COLUMNS)
    with _connect(old) as src, _connect(new) as db:
        db.execute(f"CREATE TABLE IF NOT EXISTS {INJECTED} ({KEY} bigint PRIMARY KEY, kind text)")
        for d in plan:
            key = d["key"]
            if d["kind"] == "missing":
                db.execute(f"DELETE FROM {TABLE} WHERE {KEY} = %s", (key,))
            elif d["kind"] == "extra":
                row = src.execute(
                    f"SELECT {cols} FROM {TABLE} WHERE {KEY} >= %s ORDER BY {KEY} LIMIT 1",
                    (d["like"],),
                ).fetchone()
                marks = ", ".join(["%s"] * len(COLUMNS))
                db.execute(f"INSERT INTO {TABLE} ({cols}) VALUES ({marks})", (key, *row[1:]))
            else:
                _change(db, key, d)
            db.execute(f"INSERT INTO {INJECTED} VALUES (%s, %s)", (key, d["kind"]))
        db.commit()


def _change(db, key: int, d: dict) -> None:
    """Change one column of row `key`, by the smallest step its type allows."""
    column = d["column"]
    (value,) = db.execute(f"SELECT {column} FROM {TABLE} WHERE {KEY} = %s", (key,)).fetchone()
    if column == "status":
        new_value = next(s for s in d["statuses"] if s != value)
    elif column == "total":
        new_value = value + Decimal("0.01")
    elif column == "updated_at":
        new_value = value + timedelta(microseconds=1)
    else:
        new_value = value + 1
    db.execute(f"UPDATE {TABLE} SET {column} = %s WHERE {KEY} = %s", (new_value, key))


def restore(old: str, new: str) -> int:
    """Undo every recorded injection in `new` from `old`; how many keys were restored."""
    import psycopg

    cols = ", ".join(COLUMNS)
    with _connect(old) as src, _connect(new) as db:
        try:
            keys = [r[0] for r in db.execute(f"SELECT {KEY} FROM {INJECTED}")]
        except psycopg.errors.UndefinedTable:
            return 0
        rows = src.execute(f"SELECT {cols} FROM {TABLE} WHERE {KEY} = ANY(%s)", (keys,)).fetchall()
        db.execute(f"DELETE FROM {TABLE} WHERE {KEY} = ANY(%s)", (keys,))
        marks = ", ".join(["%s"] * len(COLUMNS))
        with db.cursor() as cur:
            cur.executemany(f"INSERT INTO {TABLE} ({cols}) VALUES ({marks})", rows)
        db.execute(f"DROP TABLE {INJECTED}")
        db.commit()
    return len(keys)


def score(plan: list[dict], found: dict) -> tuple[int, list[str]]:
    """How many planned differences were found with the right kind; and the problems."""
    want = {d["key"]: d for d in plan}
    kinds = {"missing": set(found["missing"]), "extra": set(found["extra"])}
    changed = {k: cols for k, cols in found["changed"]}
    ok, problems = 0, []
    for key, d in want.items():
        if d["kind"] == "changed":
            hit = key in changed and (changed[key] is None or d["column"] in changed[key])
        else:
            hit = key in kinds[d["kind"]]
        ok += hit
        if not hit:
            problems.append(f"not found: {d['kind']} key={key} {d.get('column', '')}".rstrip())
    reported = kinds["missing"] | kinds["extra"] | set(changed)
    problems += [f"false difference: key={k}" for k in sorted(reported - set(want))]
    return ok, problems


# ----------------------------------------------------------------------------- verifiers
# Each runs in its own process (`--run`) and prints one JSON line:
# {"rows", "seconds", "missing", "extra", "changed": [[key, [cols] | null]], "rss_kib"}


def run_ours(old: str, new: str) -> dict:
    from migrate.mapping import TableMapping
    from migrate.verify import verify_table

    mapping = TableMapping.identity(TABLE, list(COLUMNS), key=KEY)
    started = time.perf_counter()
    r = verify_table(old, new, mapping)
    seconds = time.perf_counter() - started
    return {
        "rows": r.rows_compared,
        "seconds": seconds,
        "reported_seconds": r.seconds,
        "clean": r.clean,
        "missing": [_plain(k) for k in r.missing],
        "extra": [_plain(k) for k in r.extra],
        "changed": [[_plain(k), list(cols)] for k, cols in r.changed],
    }


def _plain(key):
    """A key as JSON-able int (single-column keys may come back as 1-tuples)."""
    if isinstance(key, (tuple, list)) and len(key) == 1:
        key = key[0]
    return int(key)


def run_reladiff(old: str, new: str) -> dict:
    """reladiff hashdiff with its CLI defaults (factor 32, threshold 16384, 1 thread)."""
    from reladiff import Algorithm, connect_to_table, diff_tables

    old, new = (_sqeleton_url(u) for u in (old, new))
    extra = tuple(c for c in COLUMNS if c != KEY)
    started = time.perf_counter()
    t1 = connect_to_table(old, TABLE, KEY, extra_columns=extra)
    t2 = connect_to_table(new, TABLE, KEY, extra_columns=extra)
    signs: dict[int, set[str]] = {}
    with diff_tables(t1, t2, algorithm=Algorithm.HASHDIFF) as diff:
        for sign, row in diff:
            signs.setdefault(int(row[0]), set()).add(sign)
        info = diff.get_stats_dict()
    seconds = time.perf_counter() - started
    return {
        "rows": max(info.get("rows_A", 0), info.get("rows_B", 0)),
        "seconds": seconds,
        "missing": sorted(k for k, s in signs.items() if s == {"-"}),
        "extra": sorted(k for k, s in signs.items() if s == {"+"}),
        "changed": [[k, None] for k, s in sorted(signs.items()) if s == {"-", "+"}],
    }


def _sqeleton_url(url: str) -> str:
    """reladiff takes plain postgresql:// URLs (no SQLAlchemy driver suffix)."""
    scheme, rest = url.split("://", 1)
    return scheme.split("+", 1)[0] + "://" + rest


def run_sorted(old: str, new: str) -> dict:
    """Plain full comparison: both sides as text COPY in key order, merged line by line."""
    cols = ", ".join(COLUMNS)
    query = f"COPY (SELECT {cols} FROM {TABLE} ORDER BY {KEY}) TO STDOUT"
    started = time.perf_counter()
    missing, extra, changed = [], [], []
    rows = 0
    with _connect(old) as a, _connect(new) as b:
        with a.cursor().copy(query) as ca, b.cursor().copy(query) as cb:
            left, right = _lines(ca), _lines(cb)
            x, y = next(left, None), next(right, None)
            while x is not None or y is not None:
                rows += 1
                kx = int(x[: x.index(b"\t")]) if x is not None else None
                ky = int(y[: y.index(b"\t")]) if y is not None else None
                if ky is None or (kx is not None and kx < ky):
                    missing.append(kx)
                    x = next(left, None)
                elif kx is None or ky < kx:
                    extra.append(ky)
                    y = next(right, None)
                else:
                    if x != y:
                        fx, fy = x.split(b"\t"), y.split(b"\t")
                        changed.append(
                            [kx, [c for c, p, q in zip(COLUMNS, fx, fy, strict=True) if p != q]]
                        )
                    x, y = next(left, None), next(right, None)
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": seconds,
        "missing": missing,
        "extra": extra,
        "changed": changed,
    }


def _lines(copy):
    """The lines of a text COPY stream (chunks do not end on line boundaries)."""
    tail = b""
    for chunk in copy:
        lines = (tail + bytes(chunk)).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def child(verifier: str, old: str, new: str) -> None:
    fn = {"ours": run_ours, "reladiff": run_reladiff, "sorted": run_sorted}[verifier]
    # Import first (as a running DAG has): the timing is of the verify itself.
    if verifier == "ours":
        import migrate.verify  # noqa: F401
    if verifier in ("ours", "sorted"):
        import bench.bench_extract  # noqa: F401
    out = fn(old, new)
    out["rss_kib"] = _vm_hwm_kib()
    print(json.dumps(out))


# ----------------------------------------------------------------------------- driver


def peer_python() -> Path | None:
    """The reladiff venv's python, created and installed on first use; None if impossible."""
    python = PEER_VENV / "bin" / "python"
    check = [str(python), "-c", "import reladiff, psycopg2"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {PEER_VENV} ({PEER_REQUIREMENT}) ...", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(PEER_VENV)],
        [str(python), "-m", "pip", "install", "-q", PEER_REQUIREMENT],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            print(
                f"reladiff unavailable: {' '.join(step[:4])}: {proc.stderr[-500:]}", file=sys.stderr
            )
            return None
    return python if subprocess.run(check, capture_output=True).returncode == 0 else None


def run_verifier(verifier: str, old: str, new: str, python: str) -> dict:
    argv = [python, __file__, "--run", verifier, "--old", old, "--new", new]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{verifier} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=DEFAULT_ORDERS)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    parser.add_argument(
        "--verifiers", default=",".join(VERIFIERS), help="subset of " + ",".join(VERIFIERS)
    )
    parser.add_argument("--run", choices=VERIFIERS, help=argparse.SUPPRESS)
    parser.add_argument("--old", help=argparse.SUPPRESS)
    parser.add_argument("--new", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args.run, args.old, args.new)
        return 0

    admin = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", DEFAULT_ADMIN)
    old, new = prepare_pair(admin, args.orders)
    wanted = set(args.verifiers.split(","))
    verifiers: dict[str, str] = {}
    if "ours" in wanted:
        if importlib.util.find_spec("migrate.verify") is None:
            print("migrate.verify is not there (yet): our verifier is left out")
        else:
            verifiers["ours"] = sys.executable
    peer = None
    if "reladiff" in wanted:
        python = peer_python()
        if python:
            verifiers["reladiff"] = str(python)
            peer = "reladiff"
    if "sorted" in wanted or peer is None:
        verifiers["sorted"] = sys.executable
        peer = peer or "sorted"
    if peer == "sorted" and "reladiff" in wanted:
        print("peer: reladiff could not be run here; the plain sorted comparison stands in")

    plan = plan_differences(old)
    results: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeat):
        for run in ("identical", "10 diffs"):
            if run == "10 diffs":
                inject(old, new, plan)
            try:
                for name, python in verifiers.items():
                    r = run_verifier(name, old, new, python)
                    best = results.get((name, run))
                    r["rss_kib"] = max(r["rss_kib"], best["rss_kib"] if best else 0)
                    if best is None or r["seconds"] < best["seconds"]:
                        results[(name, run)] = r
            finally:
                if run == "10 diffs":
                    restore(old, new)
    return report(args, plan, verifiers, peer, results)


def report(args, plan, verifiers, peer, results) -> int:
    print(
        f"\nverify `{TABLE}`: {args.orders} rows a side, best of {args.repeat}; "
        f"injected: " + ", ".join(f"{d['kind']} {d['key']}" for d in plan)
    )
    header = (
        f"{'verifier':<9} {'run':<10} {'rows':>9} {'seconds':>8} {'wall':>7} "
        f"{'rows/s':>11} {'peak MiB':>9} {'found':>6}  problems"
    )
    print(header)
    print("-" * len(header))
    found_ours = 0
    for run in ("identical", "10 diffs"):
        for name in verifiers:
            r = results[(name, run)]
            if run == "identical":
                ok, problems = N_DIFFS, score([], r)[1]
                found = "-"
            else:
                ok, problems = score(plan, r)
                found = f"{ok}/{N_DIFFS}"
                if name == "ours":
                    found_ours = ok
            print(
                f"{name:<9} {run:<10} {r['rows']:>9} {r['seconds']:>8.2f} {r['wall']:>7.2f} "
                f"{r['rows'] / r['seconds']:>11,.0f} {r['rss_kib'] / 1024:>9.0f} {found:>6}  "
                f"{'; '.join(problems) or 'none'}"
            )
    if "ours" not in verifiers:
        print("no BENCH line: our verifier did not run")
        return 1
    ours, theirs = results[("ours", "10 diffs")], results[(peer, "10 diffs")]
    rss_mib = max(results[("ours", run)]["rss_kib"] for run in ("identical", "10 diffs")) / 1024
    targets = [
        ("finds all 10", found_ours == N_DIFFS),
        (f"faster than {peer}", ours["seconds"] < theirs["seconds"]),
        (f"peak RSS <= {RSS_TARGET_MIB} MiB ({rss_mib:.0f})", rss_mib <= RSS_TARGET_MIB),
    ]
    print("targets: " + ", ".join(f"{t}: {'met' if ok else 'NOT met'}" for t, ok in targets))
    print(f"peer: {peer}")
    print(
        f"BENCH verify rows={ours['rows']} seconds={ours['seconds']:.2f} "
        f"ratio_to_peer={ours['seconds'] / theirs['seconds']:.2f} found={found_ours}/{N_DIFFS}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
