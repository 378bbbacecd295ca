"""A real Airflow 3 deployment for tests: api-server, scheduler and dag-processor.

    with airflow_stack(home, metadata_url=..., extra_env={...}) as stack:
        stack.api("GET", "/api/v2/dags")

Everything lives in a temp AIRFLOW_HOME: LocalExecutor, the metadata database given
(PostgreSQL via psycopg2, or SQLite in the home when none), SimpleAuthManager with one
admin user and a random password, the project's `dags/` and PYTHONPATH = repo root.
Each component is started in its own session (process group) and the whole group,
task processes included, is stopped at the end, also when the body raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


@dataclass
class AirflowStack:
    """A running deployment: its URL, the admin login and a small REST client."""

    home: Path
    base_url: str
    username: str
    password: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None

    def token(self) -> str:
        """A JWT for the REST API (`POST /auth/token`), cached."""
        if self._token is None:
            r = httpx.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=30,
            )
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One REST call. GETs are retried on a timeout: on a loaded 2-core machine the
        api-server can be starved for a while by the tasks it runs beside."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        attempts = 3 if method.upper() == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                return httpx.request(
                    method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs
                )
            except httpx.TimeoutException:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def component_logs(self, tail: int = 4000) -> str:
        """The end of each component's stdout/stderr, for failure messages."""
        out = []
        for name in COMPONENTS:
            path = self.home / "component-logs" / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            out.append(f"----- {name} -----\n{text[-tail:]}")
        return "\n".join(out)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"airflow {name} exited with {proc.returncode}\n{self.component_logs()}"
                )


_SETTING_PREFIXES = ("AIRFLOW", "NIGHTSHIFT_", "DBT_", "SOURCE_DB_", "STATSD_")
_SETTING_NAMES = frozenset(
    "WAREHOUSE_PATH EXTRACT_CONFIG ALERTS_CONFIG QUALITY_DOCS_DIR REPORT_TZ "
    "PAYMENTS_API_TOKEN".split()
)


def _is_pipeline_setting(name: str) -> bool:
    return name.startswith(_SETTING_PREFIXES) or name in _SETTING_NAMES


def _async_url(metadata_url: str | None, home: Path) -> str:
    """Airflow derives `postgresql+asyncpg` by default; psycopg 3 is installed, asyncpg not."""
    if not metadata_url:
        return f"sqlite+aiosqlite:///{home}/airflow.db"
    scheme, rest = metadata_url.split(":", 1)
    if scheme.startswith("postgresql"):
        return f"postgresql+psycopg:{rest}"
    return metadata_url


def stack_env(
    home: Path,
    *,
    port: int,
    metadata_url: str | None,
    passwords_file: Path,
    username: str,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    # Nothing of the caller's Airflow or pipeline settings leaks in (a developer's
    # WAREHOUSE_PATH must never be written by a test): only what extra_env gives.
    env = {k: v for k, v in os.environ.items() if not _is_pipeline_setting(k)}
    base_url = f"http://127.0.0.1:{port}"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url or f"sqlite:///{home}/airflow.db",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": _async_url(metadata_url, home),
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            # Shared by every component: the api-server validates what the scheduler signs.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
            # Only the runs the test triggers: no scheduled run of the cron timetable.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "5",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PATH": os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", ""))),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    env.update(extra_env or {})
    return env


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the component's process group (and any child that left it), then SIGKILL."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    for p in family:
        # a child that exited since it was listed: os.getpgid raises ProcessLookupError
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) != proc.pid:
                p.terminate()
    _, alive = psutil.wait_procs(family, timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _cli(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        [airflow_bin(), *args], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"airflow {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


@contextlib.contextmanager
def airflow_stack(
    home: Path,
    *,
    metadata_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    pools: dict[str, tuple[int, str]] | None = None,
    wait_for_dags: tuple[str, ...] = (),
    startup_timeout: float = 180,
) -> Iterator[AirflowStack]:
    """Migrate the metadata DB, start the three components, wait until healthy, stop after.

    `metadata_url`: an Airflow SQLAlchemy URL (`postgresql+psycopg2://…`); SQLite in
    `home` when None. `wait_for_dags`: DAG ids the dag-processor must have parsed.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "component-logs").mkdir(exist_ok=True)
    username, password = "admin", secrets.token_urlsafe(16)
    passwords_file = home / "passwords.json"
    passwords_file.write_text(json.dumps({username: password}))
    port = _free_port()
    env = stack_env(
        home,
        port=port,
        metadata_url=metadata_url,
        passwords_file=passwords_file,
        username=username,
        extra_env=extra_env,
    )
    _cli(["db", "migrate"], env)
    for name, (slots, description) in (pools or {}).items():
        _cli(["pools", "set", name, str(slots), description], env)

    stack = AirflowStack(
        home=home,
        base_url=f"http://127.0.0.1:{port}",
        username=username,
        password=password,
        env=env,
    )
    commands = {
        "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
    }
    try:
        for name in COMPONENTS:
            log = open(home / "component-logs" / f"{name}.log", "wb")  # noqa: SIM115
            with log:
                stack.procs[name] = subprocess.Popen(
                    [airflow_bin(), *commands[name]],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # own process group: stopped as a whole
                )
        _wait_ready(stack, wait_for_dags, startup_timeout)
        yield stack
    finally:
        for name in reversed(COMPONENTS):
            if name in stack.procs:
                _stop(stack.procs[name])


def _wait_ready(stack: AirflowStack, dag_ids: tuple[str, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            health = httpx.get(f"{stack.base_url}/api/v2/monitor/health", timeout=5).json()
            states = {k: (v or {}).get("status") for k, v in health.items()}
            last = json.dumps(states)
            if states.get("scheduler") == "healthy" and states.get("dag_processor") == "healthy":
                missing = [
                    d for d in dag_ids if stack.api("GET", f"/api/v2/dags/{d}").status_code != 200
                ]
                if not missing:
                    return
                last += f"; DAGs not parsed yet: {missing}"
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        time.sleep(1)
    raise TimeoutError(
        f"Airflow not ready within {timeout:.0f} s ({last})\n{stack.component_logs()}"
    )
