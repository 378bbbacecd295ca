"""The Makefile: what a user types on the command line never becomes shell code."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVIL = "2026-01-01; touch /tmp/nightshift-pwned"


@pytest.mark.parametrize(
    "target, assignment",
    [
        ("nightly", f"DATE={EVIL}"),
        ("backfill", f"FROM={EVIL}"),
        ("rollback", f"TO={EVIL}"),
        ("replay", f"DATE={EVIL}"),
    ],
)
def test_typed_values_reach_recipes_as_quoted_variables(target: str, assignment: str) -> None:
    extra = ["TO=2026-01-02"] if target == "backfill" else []
    dry = subprocess.run(
        ["make", "-n", target, assignment, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pwned" not in dry, f"`make {target}` pastes the value into its recipe:\n{dry}"
    assert '"$DATE"' in dry or '"$FROM"' in dry or '"$TO"' in dry


def _dry(*args: str) -> str:
    return subprocess.run(
        ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_up_and_down_wrap_docker_compose() -> None:
    assert "docker compose up --detach --build" in _dry("up")
    assert "docker compose down" in _dry("down")
    assert "podman compose down" in _dry("down", "COMPOSE=podman compose")


def test_demo_puts_no_token_on_a_command_line() -> None:
    dry = _dry("demo", "DEMO_API_TOKEN=s3cret-demo")
    assert "demo.run" in dry
    assert "--token" not in dry and "s3cret-demo" not in dry


@pytest.fixture
def ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`make airflow`'s serve_ui with Airflow itself replaced by a recorder."""
    from pipeline import airflow_run

    started: list[dict[str, str]] = []

    def fake_run(cmd, env, **kwargs):
        started.append(env)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    for name in ("AIRFLOW_ADMIN_PASSWORD", "AIRFLOW__API__HOST", "AIRFLOW__API__PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(airflow_run, "ensure_airflow_initialised", lambda env: None)
    monkeypatch.setattr(airflow_run.subprocess, "run", fake_run)
    return airflow_run, tmp_path / "passwords.json", started


def test_make_airflow_listens_on_loopback_with_a_private_random_password(
    ui, capsys: pytest.CaptureFixture[str]
) -> None:
    airflow_run, passwords, started = ui
    assert airflow_run.serve_ui({}) == 0
    env = started[0]
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(passwords)
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    password = json.loads(passwords.read_text())["admin"]
    assert password not in {"admin", "airflow", "change-me"} and len(password) >= 16
    assert password not in capsys.readouterr().out
    airflow_run.serve_ui({})  # a second start keeps the password
    assert json.loads(passwords.read_text())["admin"] == password


def test_make_airflow_replaces_an_old_admin_admin_file_and_refuses_defaults(
    ui, monkeypatch: pytest.MonkeyPatch
) -> None:
    airflow_run, passwords, started = ui
    passwords.write_text(json.dumps({"admin": "admin"}))
    passwords.chmod(0o644)
    airflow_run.serve_ui({})
    assert json.loads(passwords.read_text())["admin"] != "admin"
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    monkeypatch.setenv("AIRFLOW_ADMIN_PASSWORD", "admin")
    with pytest.raises(SystemExit, match="AIRFLOW_ADMIN_PASSWORD"):
        airflow_run.serve_ui({})
    monkeypatch.setenv("AIRFLOW_ADMIN_PASSWORD", "a-chosen-passphrase")
    monkeypatch.setenv("AIRFLOW__API__HOST", "0.0.0.0")  # the operator opts in
    airflow_run.serve_ui({})
    assert json.loads(passwords.read_text())["admin"] == "a-chosen-passphrase"
    assert started[-1]["AIRFLOW__API__HOST"] == "0.0.0.0"
