"""End to end on CeleryExecutor: `nightly_sales` run by two real Celery
workers, one of them SIGKILLed while it runs a task.

What runs, all on loopback and all stopped at the end (process groups):
- Redis as the broker: the machine's (`NIGHTSHIFT_TEST_REDIS_URL`, default
  127.0.0.1:6379) on db `NIGHTSHIFT_TEST_REDIS_DB` (default 13), else a throwaway
  `redis-server` (`demo.servers.redis_server`); the queues are named per test, so a
  shared Redis never mixes two runs;
- PostgreSQL: a fresh database as Airflow's metadata DB *and* Celery's result backend,
  another as the operational source;
- `airflow api-server`, `scheduler`, `dag-processor` and two `airflow celery worker`s,
  worker-a and worker-b (`--celery-hostname`; the task instances' `hostname` comes from
  `[core] hostname_callable`, one name per worker: on one machine both have the same
  FQDN);
- the demo payments API with every request slowed down (fault `slow`), so that
  `load_payments_api` (it fetches the FX rates first) runs for long enough to be killed
  in the middle.

The settings are the compose file's: executor, broker, result backend, metadata DB, the
execution API URL and the secrets every component must share are read from
`docker-compose.yml`'s `x-airflow-common` environment (host names of the compose
services replaced by the loopback servers, `${VAR:-default}` resolved; a secret without
default gets one random value, as `.env` would give every container the same). A key
missing there fails the test naming it. The JWT secret matters between the scheduler
(which signs each task's token) and the api-server (which checks it): with another secret
in the scheduler every task fails at its start, and so does this test. Not taken from
compose: the auth manager (FAB, not installed here: SimpleAuthManager), the scheduler's
health server (it would listen on 0.0.0.0), the default queue (one per test here).

Routing (a cluster policy, `airflow_local_settings.task_policy`, in a temp dir on the
PYTHONPATH): `extract_source_db` goes to worker-a's own queue, `load_source_db` to
worker-b's, every other task to the queue both serve, so both workers run tasks whatever
Celery's dispatch does. The policy also shortens the retry delay to a few seconds (the
DAG's is one minute, exponential) to keep the test short.

The fault: when `load_payments_api` is `running` on a worker, that worker's whole
process tree (celery main, pool, task supervisor and task) is SIGKILLed, as a host that
dies. Nothing reports the task's end; the scheduler finds the task instance without
heartbeat (`[scheduler] task_instance_heartbeat_timeout`, short here), fails the try, and
the DAG's retries run it on the surviving worker. The run must succeed and publish
tables equal to the oracle (`tests/e2e/oracle.py`).

Prints `BENCH celery tasks=… wall_s=… tasks_per_min=…` (the dag run's task instances over
its start..end, the kill and its recovery included), also into the report
(`record_property`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import pytest
import sqlalchemy as sa
import yaml

from demo.generator import generate
from demo.run import running_api
from demo.servers import free_port, fresh_database, redis_server
from pipeline.airflow_run import logical_date_for
from tests.e2e.harness import REPORT_TZ, TOKEN, api_base_of, assert_matches_oracle, pipeline_env
from tests.ui.airflow_stack import _stop, airflow_bin, stack_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# NIGHTSHIFT_TEST_COMPOSE_FILE: another compose file to read (trying a change before making it)
COMPOSE = Path(os.environ.get("NIGHTSHIFT_TEST_COMPOSE_FILE") or ROOT / "docker-compose.yml")
DAG_ID = "nightly_sales"
END = date(2026, 11, 20)
DAY = END - timedelta(days=2)
WORKERS = ("worker-a", "worker-b")
# retries=2 (default_args); calls the slowed-down API for the FX rates first, and runs
# alone (extract_payments_api runs beside the two routed tasks: killing its worker could
# take a routed task down with it, whose queue only that worker serves)
SLOW_TASK = "load_payments_api"
ROUTED = {"extract_source_db": "worker-a", "load_source_db": "worker-b"}
RUN_TIMEOUT_S = 420

#: What the test takes from the compose file's x-airflow-common environment.
COMPOSE_KEYS = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    # Airflow 3: the api-server validates the tokens the scheduler signs for the workers;
    # without one shared secret each component generates its own ("Invalid auth token").
    "AIRFLOW__API_AUTH__JWT_SECRET",
    # connections and variables stored in the metadata DB are read by every worker
    "AIRFLOW__CORE__FERNET_KEY",
)
#: Shared secrets taken from the compose file when it has them (one random value else):
#: `[api] secret_key` signs the api-server's requests for a running task's log to the
#: worker's log server (tasks run without it; the UI's live logs from workers need it).
OPTIONAL_SECRET_KEYS = ("AIRFLOW__API__SECRET_KEY",)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


# --------------------------------------------------------------------- compose settings
def compose_common_env() -> dict[str, str]:
    doc = yaml.safe_load(COMPOSE.read_text())
    common = doc.get("x-airflow-common") or {}
    env = common.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text()).get("services") or {}


def interpolate(value: str, variables: dict[str, str], new=lambda: secrets.token_urlsafe(32)):
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `$$`.
    A variable without value or default gets `new()` (as `.env` would give it: one
    random value, the same in every component and wherever it is used)."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        if name in variables and (variables[name] or op not in (":-", ":?")):
            return variables[name]
        if op in (":-", "-"):
            return arg or ""
        variables[name] = new()
        return variables[name]

    return _VAR.sub(one, value)


def _service_with(services: dict[str, dict], *, image: str = "", command: str = "") -> set[str]:
    found = set()
    for name, svc in services.items():
        cmd = svc.get("command") or ""
        cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
        if image and str(svc.get("image", "")).split(":")[0].endswith(image):
            found.add(name)
        if command and cmd.strip() == command:
            found.add(name)
    return found


def _rehost(url: str, netloc: str, path: str | None = None) -> str:
    """The compose URL with its user/host/port replaced (scheme, path kept unless given)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, netloc, parts.path if path is None else path, parts.query, ""))


def settings_from_compose(
    *, metadata_url: str, redis_url: str, redis_db: int, api_port: int
) -> tuple[dict[str, str], dict[str, str]]:
    """(Airflow settings for the native components, the compose values they came from
    with secrets hidden). Fails naming any key the compose file lacks."""
    raw = compose_common_env()
    missing = [k for k in COMPOSE_KEYS if k not in raw]
    assert not missing, (
        f"{COMPOSE.name}: x-airflow-common.environment lacks {', '.join(missing)} "
        "(every Airflow component must get them, the same values everywhere)"
    )
    variables: dict[str, str] = {}
    got = {
        k: interpolate(raw[k], variables, _fernet_key if "FERNET" in k else secrets.token_hex)
        for k in COMPOSE_KEYS
    }
    for key in OPTIONAL_SECRET_KEYS:
        if key in raw and interpolate(raw[key], variables):
            got[key] = interpolate(raw[key], variables)
    services = compose_services()
    pg_hosts = _service_with(services, image="postgres")
    redis_hosts = _service_with(services, image="redis")
    api_hosts = _service_with(services, command="airflow api-server")

    assert got["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", got["AIRFLOW__CORE__EXECUTOR"]
    meta = sa.make_url(metadata_url)
    pg_netloc = f"{meta.username}@{meta.host}:{meta.port}"
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        host = urlsplit(got[key]).hostname
        assert host in pg_hosts, f"{key}: host {host!r} is not a postgres service {pg_hosts}"
        got[key] = _rehost(got[key], pg_netloc, f"/{meta.database}")
    host = urlsplit(got["AIRFLOW__CELERY__BROKER_URL"]).hostname
    assert host in redis_hosts, f"AIRFLOW__CELERY__BROKER_URL: {host!r} not in {redis_hosts}"
    assert urlsplit(got["AIRFLOW__CELERY__BROKER_URL"]).scheme == "redis"
    got["AIRFLOW__CELERY__BROKER_URL"] = _rehost(
        got["AIRFLOW__CELERY__BROKER_URL"], urlsplit(redis_url).netloc, f"/{redis_db}"
    )
    key = "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"
    host = urlsplit(got[key]).hostname
    assert host in api_hosts, f"{key}: {host!r} is not the api-server service {api_hosts}"
    got[key] = _rehost(got[key], f"127.0.0.1:{api_port}")
    assert got[key].endswith("/execution/"), got[key]
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        assert got[key], f"{COMPOSE.name}: {key} is empty"
    shown = {k: ("***" if "SECRET" in k or "FERNET" in k else raw[k]) for k in got}
    return got, shown


# --------------------------------------------------------------------- test-side hooks
LOCAL_SETTINGS = '''
"""Cluster policy of the Celery e2e test: queue routing and a short retry delay."""
import json
import os
from datetime import timedelta

_ROUTES = json.loads(os.environ.get("NIGHTSHIFT_TEST_ROUTES", "{}"))
_RETRY_DELAY_S = float(os.environ.get("NIGHTSHIFT_TEST_RETRY_DELAY_S", "0") or 0)


def task_policy(task):
    if task.dag_id != "nightly_sales":
        return
    if task.task_id in _ROUTES:
        task.queue = _ROUTES[task.task_id]
    if _RETRY_DELAY_S:
        task.retry_delay = timedelta(seconds=_RETRY_DELAY_S)
        task.max_retry_delay = timedelta(seconds=2 * _RETRY_DELAY_S)
'''

HOSTNAME_MODULE = '''
"""`[core] hostname_callable` of the Celery e2e test's workers: one name per worker."""
import os


def hostname():
    return os.environ["NIGHTSHIFT_TEST_WORKER"]
'''


def _write_hooks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "airflow_local_settings.py").write_text(textwrap.dedent(LOCAL_SETTINGS))
    (folder / "nightshift_test_worker_host.py").write_text(textwrap.dedent(HOSTNAME_MODULE))
    return folder


# --------------------------------------------------------------------- processes
class Stack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.logs = home / "component-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [airflow_bin(), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stopped (or killed) as a whole
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else "(no log)"

    def all_logs(self, tail: int = 3000) -> str:
        return "\n".join(f"----- {n} -----\n{self.log(n, tail)}" for n in self.procs)

    def task_logs(self, tail: int = 2500) -> str:
        out = []
        for path in sorted((self.home / "logs").rglob("*.log")):
            text = path.read_text(errors="replace")
            if "ERROR" in text or "Traceback" in text:
                out.append(f"----- {path.relative_to(self.home)} -----\n{text[-tail:]}")
        return "\n".join(out[-6:])

    def check_alive(self, *, except_: tuple[str, ...] = ()) -> None:
        for name, proc in self.procs.items():
            if name not in except_ and proc.poll() is not None:
                raise AssertionError(
                    f"airflow {name} exited with {proc.returncode}\n{self.all_logs()}"
                )

    def kill_tree(self, name: str) -> list[int]:
        """SIGKILL the component's process group and every descendant (a dead host)."""
        proc = self.procs[name]
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(family, timeout=10)
        proc.wait(timeout=10)
        return [p.pid for p in family]

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                _stop(proc)


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(
        [airflow_bin(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"airflow {' '.join(args[:3])} failed ({proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _wait(what: str, check, timeout: float, stack: Stack, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{stack.all_logs()}")


def _healthy(base_url: str) -> bool:
    try:
        health = httpx.get(f"{base_url}/api/v2/monitor/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    states = {k: (v or {}).get("status") for k, v in health.items()}
    return states.get("scheduler") == "healthy" and states.get("dag_processor") == "healthy"


def _listening_ports(pids: set[int]) -> list[tuple[str, int, int]]:
    return [
        (c.laddr.ip, c.laddr.port, c.pid)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]


def _family(stack: Stack) -> set[int]:
    pids = set()
    for proc in stack.procs.values():
        with contextlib.suppress(psutil.Error):
            pids.add(proc.pid)
            pids |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    return pids


# --------------------------------------------------------------------- the test
@pytest.fixture
def metadata_url(postgres_admin_url: str) -> Iterator[str]:
    with fresh_database(postgres_admin_url, prefix="nightshift_celery_meta") as url:
        yield url


def test_nightly_on_two_celery_workers_one_killed(
    pg_database: str,
    metadata_url: str,
    tmp_path: Path,
    record_property,
    capsys: pytest.CaptureFixture,
) -> None:
    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    t0 = time.monotonic()
    data_dir, home = tmp_path / "data", tmp_path / "airflow"
    payments_db = tmp_path / "payments.db"
    generate(
        pg_database,
        seed=11,
        days=8,
        end_date=END,
        orders_per_day=60,
        payments_db=payments_db,
        if_exists="replace",
    )
    redis_db = int(os.environ.get("NIGHTSHIFT_TEST_REDIS_DB", "13"))
    api_port = free_port()
    queue = f"nightshift-celery-e2e-{uuid.uuid4().hex[:10]}"  # unshared, even on a shared Redis
    hooks = _write_hooks(tmp_path / "hooks")
    meta_engine = sa.create_engine(metadata_url)
    source_engine = sa.create_engine(pg_database)
    stack = Stack(home)
    try:
        with (
            redis_server() as redis_url,
            running_api(payments_db, token=TOKEN, faults="slow", fault_every=1) as api_uri,
        ):
            compose, shown = settings_from_compose(
                metadata_url=metadata_url,
                redis_url=redis_url,
                redis_db=redis_db,
                api_port=api_port,
            )
            say(f"[celery-e2e] from docker-compose.yml: {json.dumps(shown)}")
            passwords = home / "passwords.json"
            home.mkdir(parents=True, exist_ok=True)
            passwords.write_text(json.dumps({"admin": secrets.token_urlsafe(16)}))
            extra = {
                **pipeline_env(pg_database, data_dir, home),
                "AIRFLOW_CONN_PAYMENTS_API": api_uri,
                **compose,
                "AIRFLOW__API__SECRET_KEY": compose.get("AIRFLOW__API__SECRET_KEY")
                or secrets.token_urlsafe(32),
                # the async twin of the metadata URL (asyncpg is not installed; psycopg 3 is)
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": sa.make_url(metadata_url)
                .set(drivername="postgresql+psycopg")
                .render_as_string(hide_password=False),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "3",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                "NIGHTSHIFT_TEST_ROUTES": json.dumps(
                    {t: f"{queue}-{w}" for t, w in ROUTED.items()}
                ),
                "NIGHTSHIFT_TEST_RETRY_DELAY_S": "3",
                "PYTHONPATH": os.pathsep.join((str(ROOT), str(hooks))),
            }
            env = stack_env(
                home,
                port=api_port,
                metadata_url=compose["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
                passwords_file=passwords,
                username="admin",
                extra_env=extra,
            )
            t = time.monotonic()
            _cli(["db", "migrate"], env)
            _cli(["pools", "set", "warehouse_writer", "1", "one writer of the warehouse"], env)
            say(f"[celery-e2e] db migrate + pool: {time.monotonic() - t:.0f} s")

            t = time.monotonic()
            stack.start(
                "api-server",
                ["api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"],
                env,
            )
            stack.start("scheduler", ["scheduler"], env)
            stack.start("dag-processor", ["dag-processor"], env)
            for name in WORKERS:
                worker_env = {
                    **env,
                    "NIGHTSHIFT_TEST_WORKER": name,
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "nightshift_test_worker_host.hostname",
                }
                stack.start(
                    name,
                    [
                        "celery",
                        "worker",
                        "--celery-hostname",
                        f"{name}@%h",
                        "--queues",
                        f"{queue},{queue}-{name}",
                        "--concurrency",
                        "2",
                        "--skip-serve-logs",  # nothing listens beyond the api-server
                        "--without-gossip",
                        "--without-mingle",
                    ],
                    worker_env,
                )
            base_url = f"http://127.0.0.1:{api_port}"
            _wait("scheduler and dag-processor healthy", lambda: _healthy(base_url), 240, stack)
            _wait(
                f"{DAG_ID} parsed",
                lambda: _scalar(
                    meta_engine, "select count(*) from serialized_dag where dag_id = :d", d=DAG_ID
                ),
                180,
                stack,
            )
            _wait(
                "both Celery workers ready",
                lambda: all(re.search(r"\bready\.", stack.log(n, 10**6)) for n in WORKERS),
                180,
                stack,
            )
            say(f"[celery-e2e] components up: {time.monotonic() - t:.0f} s")
            # every listening socket of every component is on loopback
            listening = _listening_ports(_family(stack))
            assert listening and all(ip == "127.0.0.1" for ip, _, _ in listening), listening

            run_id = f"celery_e2e_{DAY.isoformat()}"
            _cli(["dags", "unpause", DAG_ID], env)
            _cli(
                [
                    "dags",
                    "trigger",
                    DAG_ID,
                    "--run-id",
                    run_id,
                    "--logical-date",
                    logical_date_for(DAY).isoformat(),
                    "--conf",
                    json.dumps({"business_date": DAY.isoformat()}),
                ],
                env,
            )
            victim, killed_at, recovered_at = _run_and_kill(stack, meta_engine, run_id, say)
            survivor = next(w for w in WORKERS if w != victim)

            run = _one(
                meta_engine,
                "select state, start_date, end_date from dag_run where dag_id = :d and run_id = :r",
                d=DAG_ID,
                r=run_id,
            )
            tis = _all(
                meta_engine,
                "select task_id, state, hostname, try_number, queue, end_date "
                "from task_instance where dag_id = :d and run_id = :r",
                d=DAG_ID,
                r=run_id,
            )
            assert run.state == "success", (
                f"run ended {run.state}: {[tuple(t) for t in tis]}\n{stack.task_logs()}\n"
                f"{stack.all_logs()}"
            )
            assert all(t.state == "success" for t in tis), [tuple(t) for t in tis]
            hosts = {t.task_id: t.hostname for t in tis}
            # both workers ran tasks (the routed ones at least), as the TIs record it
            assert set(hosts.values()) == set(WORKERS), hosts
            for task_id, worker in ROUTED.items():
                assert hosts[task_id] == worker, (task_id, hosts)
            # the killed try was on the victim; the retry on the survivor, successfully
            first_try = _one(
                meta_engine,
                "select hostname, state, try_number, start_date from task_instance_history "
                "where dag_id = :d and run_id = :r and task_id = :t order by try_number limit 1",
                d=DAG_ID,
                r=run_id,
                t=SLOW_TASK,
            )
            assert first_try is not None, "no earlier try of the killed task was recorded"
            assert first_try.hostname == victim and first_try.state in ("failed", "up_for_retry")
            slow = next(t for t in tis if t.task_id == SLOW_TASK)
            assert slow.hostname == survivor and slow.try_number >= 2, tuple(slow)
            assert stack.procs[victim].poll() is not None, "the killed worker is still running"
            # every task after the kill ran on the survivor
            stack.check_alive(except_=(victim,))
            # no shared secret (nor the API token) in any component's or task's log
            hidden = {
                k: v
                for k, v in {**compose, "PAYMENTS_API_TOKEN": TOKEN}.items()
                if "SECRET" in k or "FERNET" in k or "TOKEN" in k
            }
            for path in [*home.rglob("*.log"), *stack.logs.glob("*.log")]:
                text = path.read_text(errors="replace")
                leaked = [k for k, v in hidden.items() if v in text]
                assert not leaked, f"{leaked} in clear in {path.relative_to(home)}"
            _forget_queues(compose["AIRFLOW__CELERY__BROKER_URL"], queue)

        # the published tables equal the oracle (a fault-free API for the oracle's FX)
        with running_api(payments_db, token=TOKEN) as oracle_api:
            os.environ["REPORT_TZ"] = REPORT_TZ
            try:
                assert_matches_oracle(
                    source_engine, data_dir / "warehouse.duckdb", api_base_of(oracle_api), DAY
                )
            finally:
                os.environ.pop("REPORT_TZ", None)

        wall = (run.end_date - run.start_date).total_seconds()
        line = (
            f"BENCH celery tasks={len(tis)} wall_s={wall:.1f} "
            f"tasks_per_min={len(tis) / wall * 60:.1f}"
        )
        say(
            f"[celery-e2e] killed {victim} {killed_at:.0f} s into the run; {SLOW_TASK} running "
            f"again on {survivor} {recovered_at - killed_at:.0f} s after the kill; "
            f"test total {time.monotonic() - t0:.0f} s"
        )
        fault_s = (slow.end_date - first_try.start_date).total_seconds()
        rest = len(tis) - 1
        say(
            f"[celery-e2e] {SLOW_TASK} (API slowed to 2 s a request, killed, retried) took "
            f"{fault_s:.0f} s of the run; the other {rest} tasks {wall - fault_s:.0f} s "
            f"({rest / (wall - fault_s) * 60:.1f} tasks/min)"
        )
        say(line)
        print(line)
        record_property("bench_celery", line)
    finally:
        stack.stop_all()
        meta_engine.dispose()
        source_engine.dispose()


def _forget_queues(broker_url: str, queue: str) -> None:
    """Leave nothing of this test in a shared Redis: its queues' keys and the killed
    worker's unacknowledged message (kombu's `unacked` hash and index)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        for tag, payload in client.hgetall("unacked").items():
            if queue.encode() in payload:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _scalar(engine: sa.Engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _one(engine: sa.Engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).first()


def _all(engine: sa.Engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def _run_and_kill(stack: Stack, engine: sa.Engine, run_id: str, say) -> tuple[str, float, float]:
    """Poll the run; SIGKILL the worker running SLOW_TASK's first try mid-task.
    Returns (victim, seconds into the run of the kill, of the retry's start)."""
    started = time.monotonic()
    victim: str | None = None
    killed_at = recovered_at = 0.0
    seen = ""
    while time.monotonic() - started < RUN_TIMEOUT_S:
        stack.check_alive(except_=(victim,) if victim else ())
        state = _scalar(
            engine,
            "select state from dag_run where dag_id = :d and run_id = :r",
            d=DAG_ID,
            r=run_id,
        )
        tis = {
            t.task_id: t
            for t in _all(
                engine,
                "select task_id, state, hostname, try_number from task_instance "
                "where dag_id = :d and run_id = :r",
                d=DAG_ID,
                r=run_id,
            )
        }
        line = " ".join(
            f"{k}={t.state}@{t.hostname or '-'}#{t.try_number}"
            for k, t in tis.items()
            if t.state not in (None, "success")
        )
        if line != seen:
            say(f"[celery-e2e] {time.monotonic() - started:5.0f}s {state}: {line}")
            seen = line
        slow = tis.get(SLOW_TASK)
        if victim is None and slow is not None and slow.state == "running":
            if slow.hostname in WORKERS:
                time.sleep(1.5)  # well inside the task (its API calls take 2 s each)
                still = _one(
                    engine,
                    "select state, hostname, try_number from task_instance "
                    "where dag_id = :d and run_id = :r and task_id = :t",
                    d=DAG_ID,
                    r=run_id,
                    t=SLOW_TASK,
                )
                assert still.state == "running", f"{SLOW_TASK} ended before the kill: {still}"
                victim = still.hostname
                pids = stack.kill_tree(victim)
                killed_at = time.monotonic() - started
                say(f"[celery-e2e] SIGKILL {victim} (pids {pids}) while {SLOW_TASK} runs")
        if victim and not recovered_at and slow is not None and slow.try_number >= 2:
            if slow.state == "running":
                recovered_at = time.monotonic() - started
        if state in ("success", "failed"):
            assert victim, (
                f"the run ended {state} before {SLOW_TASK} was seen running (no fault "
                f"injected): {line}\n{stack.task_logs()}\n{stack.all_logs()}"
            )
            return victim, killed_at, recovered_at or killed_at
        time.sleep(0.5)
    raise AssertionError(
        f"run {run_id} not finished in {RUN_TIMEOUT_S} s\n{stack.task_logs()}\n{stack.all_logs()}"
    )
