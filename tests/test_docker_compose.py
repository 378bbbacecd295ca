"""docker-compose.yml is consistent (no Docker engine here: the file is checked statically)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|FERNET|_KEY$")
#: The secrets compose refuses to start without (`${VAR:?…}`), and `preflight` checks.
REQUIRED_SECRETS = (
    "SOURCE_DB_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "PAYMENTS_API_TOKEN",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
)
#: Components that sign or check the task tokens: one JWT secret for all of them.
TOKEN_SHARING = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_expected_services(compose: dict) -> None:
    services = set(compose["services"])
    assert AIRFLOW_SERVICES | {"source-db", "payments-api", "airflow-db", "redis"} <= services


def test_airflow_services_share_common_settings(compose: dict) -> None:
    for name in AIRFLOW_SERVICES:
        svc = compose["services"][name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert "@airflow-db:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:"), name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False", name
        assert env["AIRFLOW__USAGE_DATA_COLLECTION__ENABLED"] == "False", name
        assert "AIRFLOW_CONN_SOURCE_DB" in env and "AIRFLOW_CONN_PAYMENTS_API" in env, name
        assert svc["env_file"] == ".env", name


def test_dependencies_exist_and_conditions_make_sense(compose: dict) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, rule in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} health, none defined"
                )
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is one-shot: restart 'no'"
            else:
                assert condition == "service_started"


def test_long_running_services_have_healthchecks(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if svc.get("restart") == "always":
            check = svc.get("healthcheck")
            assert check and check["test"], f"{name} has no healthcheck"


def test_named_volumes_are_declared(compose: dict) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def _host_port(port: object) -> str:
    """The host side of "[ip:]host:container" (the ip may be ${NIGHTSHIFT_BIND:-…})."""
    parts = re.sub(r"\$\{[^}]*\}", "BIND", str(port)).split(":")
    return parts[-2] if len(parts) >= 2 else parts[-1]


def test_published_ports_are_unique(compose: dict) -> None:
    seen: dict[str, str] = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host = _host_port(port)
            assert host not in seen, f"port {host} published by {seen.get(host)} and {name}"
            seen[host] = name


def test_every_variable_is_documented_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(
        re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    assert used, "compose uses no variables: the check would be vacuous"
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"


def test_no_secret_is_committed_in_compose() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"(?m)^\s*[A-Z_]*PASSWORD:\s*[^$\s{]", text), "a password in compose"
    # no secret variable has a default value (`${X:-change-me}`): unset means refused
    for name, default in re.findall(r"\$\{([A-Z_][A-Z0-9_]*):?-([^}$]*)\}", text):
        if SECRET_NAME.search(name):
            assert default == "", f"${{{name}}} has the default {default!r}"


# ---------------------------------------------------------------- the official Airflow 3 shape
def _text(value: object) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def test_one_jwt_secret_and_fernet_key_for_every_component(compose: dict) -> None:
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
    assert common["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY:?")
    assert common["AIRFLOW__API__SECRET_KEY"].startswith("${AIRFLOW_API_SECRET_KEY:?")
    assert common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-apiserver:8080/execution/"
    )
    assert common["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://airflow:")
    for name in TOKEN_SHARING:
        env = compose["services"][name]["environment"]
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
            assert env[key] == common[key], f"{name}: {key} is not the shared value"


def test_health_checks_that_can_pass(compose: dict) -> None:
    services = compose["services"]
    common = compose["x-airflow-common"]["environment"]

    def check(name: str) -> str:
        return _text(services[name]["healthcheck"]["test"])

    # the scheduler's health server only listens when it is enabled
    assert common["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert "http://localhost:8974/health" in check("airflow-scheduler")
    assert re.search(r"localhost:8080/api/v2/(version|monitor/health)", check("airflow-apiserver"))
    assert "inspect ping" in check("airflow-worker") and "celery@$${HOSTNAME}" in check(
        "airflow-worker"
    )
    for db in ("source-db", "airflow-db"):
        assert "pg_isready" in check(db)
    assert "redis-cli" in check("redis") and "ping" in check("redis")
    assert "ready" in check("minio")
    for name in ("airflow-dag-processor", "airflow-triggerer"):
        assert "airflow jobs check" in check(name)


def test_everything_waits_for_preflight_and_the_init(compose: dict) -> None:
    services = compose["services"]

    def waits(name: str, dep: str, condition: str) -> bool:
        return services[name].get("depends_on", {}).get(dep, {}).get("condition") == condition

    done, healthy = "service_completed_successfully", "service_healthy"
    assert "depends_on" not in services["preflight"]
    for name in ("source-db", "airflow-db", "redis", "minio", "airflow-init"):
        assert waits(name, "preflight", done), f"{name} starts before the secrets are checked"
    for name in (*TOKEN_SHARING, "source-seed"):
        assert waits(name, "airflow-init", done), f"{name} does not wait for airflow-init"
    for name in TOKEN_SHARING:
        assert waits(name, "redis", healthy) and waits(name, "airflow-db", healthy), name
    assert waits("airflow-init", "airflow-db", healthy)
    assert waits("airflow-worker", "airflow-apiserver", healthy)
    assert waits("payments-api", "source-seed", done)
    assert waits("minio-init", "minio", healthy)


def test_init_owns_the_volumes_and_fails_loudly(compose: dict) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "|| true" not in text, "a failure is hidden with || true"
    init = compose["services"]["airflow-init"]
    assert init["user"] == "0:0" and init["entrypoint"] == "/bin/bash"
    assert init["command"][0] == "-c"
    script = init["command"][1]
    assert script.lstrip().startswith("set -euo pipefail")
    assert re.search(r"mkdir .*/opt/nightshift/data.* /opt/airflow/logs", script)
    assert re.search(r'chown "\$\$\{AIRFLOW_UID\}:0"', script)
    assert init["environment"]["AIRFLOW_UID"] == "${AIRFLOW_UID:-50000}"
    for step in ("airflow db migrate", "airflow pools set warehouse_writer", "users create"):
        assert step in script, step
    assert "--password" not in script, "the admin password is on a command line"


def test_logs_volume_is_shared_by_the_airflow_components(compose: dict) -> None:
    volumes = compose["x-airflow-common"]["volumes"]
    assert "./logs:/opt/airflow/logs" in volumes and "./data:/opt/nightshift/data" in volumes
    for name in (*TOKEN_SHARING, "airflow-init"):
        assert compose["services"][name]["volumes"] == volumes, name


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a matched directory takes its content."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_venvs_and_data_out_of_the_image() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".env",
        ".env.local",
        ".venv/bin/python",
        ".venv-adapters/bin/python",
        "bench/.venv-reladiff/bin/python",
        "data/warehouse.duckdb",
        ".airflow/airflow.db",
        ".airflow/passwords.json",
        ".git/HEAD",
        "dbt_project/target/manifest.json",
        "dbt_project/logs/dbt.log",
        "logs/dag_id=nightly_sales/attempt=1.log",
    ):
        assert _dockerignored(path, patterns), f"{path} would be copied into the image"
    for path in ("dags/nightly_sales.py", "demo/api.py", "requirements.txt", "constraints.txt"):
        assert not _dockerignored(path, patterns), f"{path} is needed in the image"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY --chown=airflow:0 . /opt/nightshift" in dockerfile
    assert "-e /opt/nightshift/.env" in dockerfile, "the build does not refuse a baked .env"
    assert not re.search(r"(?im)^\s*(ENV|ARG)\b.*(PASSWORD|TOKEN|SECRET)", dockerfile)


def test_ports_are_published_on_loopback_unless_the_operator_opts_in(compose: dict) -> None:
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published += 1
            assert str(port).startswith("${NIGHTSHIFT_BIND:-127.0.0.1}:"), f"{name}: {port}"
    assert published >= 2
    assert "NIGHTSHIFT_BIND=127.0.0.1" in (ROOT / ".env.example").read_text()


def test_no_default_or_well_known_credential_is_accepted(compose: dict) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in REQUIRED_SECRETS:
        assert f"${{{name}:?" in text, f"compose starts with {name} unset"
    example = (ROOT / ".env.example").read_text()
    assert not re.search(r"(?m)^[A-Z_]+=.*change-me", example), ".env.example offers change-me"
    for name in (*REQUIRED_SECRETS, "MINIO_ROOT_PASSWORD"):
        assert re.search(rf"(?m)^{name}=$", example), f".env.example gives {name} a value"


def _preflight(compose: dict, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run preflight's script for real: compose's `$$` is a literal `$`."""
    svc = compose["services"]["preflight"]
    assert svc["entrypoint"] == "/bin/bash" and svc["command"][0] == "-c"
    script = svc["command"][1]
    assert not re.search(r"(?<!\$)\$\{", script.replace("$$", "")), "compose would interpolate"
    path = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    return subprocess.run(
        ["bash", "-c", script.replace("$$", "$")],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = {
    "SOURCE_DB_PASSWORD": "src-7Qw9vK2mXp4t",
    "AIRFLOW_DB_PASSWORD": "meta-Lr8sN3bV6cZq",
    "PAYMENTS_API_TOKEN": "pay-Yh5dF1gJ9kWe",
    "AIRFLOW_ADMIN_PASSWORD": "adm-Tz2xC7nM4rPu",
    "AIRFLOW_FERNET_KEY": "Xn0sWbFtt3KoHgZ4nSdRoZ9BYjK3N0ZcFq0r8x4gW1M=",
    "AIRFLOW_JWT_SECRET": "jwt-Gc6vB8mQ2wEr5tYu",
    "AIRFLOW_API_SECRET_KEY": "api-Pq3rS8tU1vWx",
}


def test_preflight_passes_real_secrets(compose: dict) -> None:
    done = _preflight(compose, GOOD)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", REQUIRED_SECRETS)
@pytest.mark.parametrize("bad", ["change-me", "", "admin", "short-1"])
def test_preflight_fails_naming_the_variable(compose: dict, name: str, bad: str) -> None:
    done = _preflight(compose, {**GOOD, name: bad})
    assert done.returncode == 1
    assert name in done.stderr and "refusing to start" in done.stderr
    for other, value in GOOD.items():
        assert value not in done.stdout + done.stderr, f"preflight printed {other}"


def test_preflight_checks_minio_and_an_s3_landing(compose: dict) -> None:
    s3 = {**GOOD, "COMPOSE_PROFILES": "s3"}
    weak = _preflight(compose, {**s3, "MINIO_ROOT_PASSWORD": "change-me"})
    assert weak.returncode == 1 and "MINIO_ROOT_PASSWORD" in weak.stderr
    assert _preflight(compose, {**s3, "MINIO_ROOT_PASSWORD": "minio-Vb3nK8sLq2"}).returncode == 0
    no_store = _preflight(compose, {**GOOD, "NIGHTSHIFT_LANDING_URL": "s3://b/landing"})
    assert no_store.returncode == 1 and "AIRFLOW_CONN_LANDING" in no_store.stderr
    no_store = _preflight(compose, {**GOOD, "NIGHTSHIFT_DATA_URL": "s3://b/data"})
    assert no_store.returncode == 1 and "NIGHTSHIFT_DATA_URL is s3://" in no_store.stderr
    minio = {**s3, "MINIO_ROOT_PASSWORD": "minio-Vb3nK8sLq2", "NIGHTSHIFT_DATA_URL": "s3://b/d"}
    assert _preflight(compose, minio).returncode == 0
    bad_key = _preflight(compose, {**GOOD, "AIRFLOW_FERNET_KEY": "not-a-fernet-key-at-all"})
    assert bad_key.returncode == 1 and "AIRFLOW_FERNET_KEY" in bad_key.stderr


def _references(text: str, name: str) -> bool:
    return re.search(rf"\$\$?\{{?{name}\b", text) is not None


def test_no_secret_on_a_command_line(compose: dict) -> None:
    """A command's argv (and a healthcheck's) shows in `ps`: secrets travel in the
    environment. The one exception is bash's printf builtin feeding a pipe (no process)."""
    text = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text)) | {"AIRFLOW_CONN_SOURCE_DB"}
    secret_names = {n for n in names if SECRET_NAME.search(n) or n.startswith("AIRFLOW_CONN_")}
    assert set(REQUIRED_SECRETS) <= secret_names
    for svc_name, svc in compose["services"].items():
        if svc_name == "preflight":  # reads them by name (${!name}) and prints none
            continue
        argv = "\n".join(_text(svc.get(k)) for k in ("command", "entrypoint")) + _text(
            (svc.get("healthcheck") or {}).get("test")
        )
        for line in argv.splitlines():
            for name in secret_names:
                if _references(line, name):
                    assert line.strip().startswith("printf ") and line.rstrip().endswith("\\"), (
                        f"{svc_name}: {name} on a command line: {line.strip()}"
                    )
    api = compose["services"]["payments-api"]
    assert "--token" not in _text(api["command"])
    assert api["environment"]["DEMO_API_TOKEN"] == "${PAYMENTS_API_TOKEN}"
    assert "DEMO_API_FAULT_INJECTION" not in api["environment"], "fault injection is on"


def test_minio_landing_zone_profile(compose: dict) -> None:
    services = compose["services"]
    for name in ("minio", "minio-init"):
        assert services[name]["profiles"] == ["s3"], name
        assert re.search(r":RELEASE\.\d{4}-", services[name]["image"]), "unpinned image"
    assert "minio-data:/data" in services["minio"]["volumes"] and "minio-data" in compose["volumes"]
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "${MINIO_ROOT_PASSWORD:-}"
    init = services["minio-init"]
    assert init["restart"] == "no"
    assert "@minio:9000" in init["environment"]["MC_HOST_local"]
    assert "mc mb --ignore-existing" in _text(init["command"])
    assert "NIGHTSHIFT_LANDING_URL" in _text(init["command"])
    common = compose["x-airflow-common"]["environment"]
    for name in ("NIGHTSHIFT_LANDING_URL", "NIGHTSHIFT_QUARANTINE_URL", "NIGHTSHIFT_DATA_URL"):
        assert common[name] == f"${{{name}:-}}", name
        assert init["environment"][name] == f"${{{name}:-}}", name
    conn = common["AIRFLOW_CONN_LANDING"]
    assert conn.startswith("${AIRFLOW_CONN_LANDING:-aws://")
    assert "endpoint_url=http%3A%2F%2Fminio%3A9000" in conn


def test_minio_init_creates_the_bucket_of_each_s3_url(compose: dict, tmp_path: Path) -> None:
    """minio-init's script for real (sh), `mc` a stub that logs its argv."""
    script = compose["services"]["minio-init"]["command"][1].replace("$$", "$")
    (tmp_path / "mc").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/mc.log\n')
    (tmp_path / "mc").chmod(0o755)
    path = f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"

    def init(**urls: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "mc.log").unlink(missing_ok=True)
        env = {"PATH": path, "NIGHTSHIFT_LANDING_URL": "", "NIGHTSHIFT_QUARANTINE_URL": ""}
        return subprocess.run(
            ["sh", "-c", script],
            env={**env, "NIGHTSHIFT_DATA_URL": "", **urls},
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert init(NIGHTSHIFT_DATA_URL="s3://shared/night").returncode == 0
    assert (tmp_path / "mc.log").read_text() == "mb --ignore-existing local/shared\n"
    both = init(NIGHTSHIFT_LANDING_URL="s3://land/x", NIGHTSHIFT_DATA_URL="s3://shared/night")
    assert both.returncode == 0
    assert (tmp_path / "mc.log").read_text().split("\n")[:2] == [
        "mb --ignore-existing local/land",
        "mb --ignore-existing local/shared",
    ]
    none = init(NIGHTSHIFT_LANDING_URL="/data/landing")
    assert none.returncode == 1 and "NIGHTSHIFT_DATA_URL" in none.stderr


def _run_init(compose: dict, tmp_path: Path, airflow_stub: str) -> subprocess.CompletedProcess:
    """airflow-init's script for real, with its two folders under tmp_path and `airflow`
    replaced by a stub that logs its argv and stdin."""
    script = compose["services"]["airflow-init"]["command"][1].replace("$$", "$")
    data, logs = tmp_path / "data", tmp_path / "logs"
    script = script.replace("/opt/nightshift/data", str(data)).replace(
        "/opt/airflow/logs", str(logs)
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "airflow"
    stub.write_text(
        "#!/bin/bash\n"
        f'echo "argv: $*" >> {tmp_path}/calls\n'
        f'if [ "$1 $2" = "users create" ]; then cat >> {tmp_path}/calls; fi\n' + airflow_stub
    )
    stub.chmod(0o755)
    return subprocess.run(
        ["bash", "-c", script],
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "AIRFLOW_UID": "54321",
            "AIRFLOW_ADMIN_PASSWORD": GOOD["AIRFLOW_ADMIN_PASSWORD"],
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_init_stops_at_the_first_failure(compose: dict, tmp_path: Path) -> None:
    done = _run_init(compose, tmp_path, 'if [ "$1 $2" = "db migrate" ]; then exit 3; fi\n')
    assert done.returncode == 3, done.stderr
    calls = (tmp_path / "calls").read_text()
    assert "pools" not in calls and "users" not in calls and "airflow-init: done" not in done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_init_creates_and_owns_the_folders_password_on_stdin(compose: dict, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "old.log").write_text("x")
    done = _run_init(compose, tmp_path, "exit 0\n")
    assert done.returncode == 0, done.stderr
    for path in (tmp_path / "data", tmp_path / "data" / "demo", tmp_path / "logs" / "old.log"):
        assert (path.stat().st_uid, path.stat().st_gid) == (54321, 0), path
    calls = (tmp_path / "calls").read_text().splitlines()
    password = GOOD["AIRFLOW_ADMIN_PASSWORD"]
    argv = [line for line in calls if line.startswith("argv: ")]
    assert argv[0] == "argv: db migrate" and any("users create" in a for a in argv)
    assert not any(password in a for a in argv), "the admin password is on a command line"
    assert calls.count(password) == 2  # the password and its confirmation, on stdin
