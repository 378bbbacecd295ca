"""docker-compose.yml is consistent (no Docker engine here: the file is checked statically)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
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


def test_published_ports_are_unique(compose: dict) -> None:
    seen: dict[str, str] = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host = str(port).split(":")[0]
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
    assert not re.search(r"PASSWORD:\s*[^$\s{]", text), "a password literal is in compose"
    assert "change-me" not in text
