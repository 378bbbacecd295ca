"""The Makefile: what a user types on the command line never becomes shell code."""

from __future__ import annotations

import json
import os
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
    assert "nightshift demo" in dry
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


# --- make reads .env ------------------------------------------------------------------------

SHOW_ENV = """
.PHONY: _show_env
_show_env:
\t@env | grep '^NSX_' | sort; echo "DEMO_API_TOKEN=[$$DEMO_API_TOKEN] PYTHON=[$(PYTHON)]"
"""


def _make_env(folder: Path, dotenv: str | None, *args: str, **env: str) -> list[str]:
    """`make` run in `folder` (the project's Makefile, a `.env` there), printing the
    environment its recipes see."""
    if dotenv is not None:
        (folder / ".env").write_text(dotenv)
    (folder / "show.mk").write_text(SHOW_ENV)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NSX_", "DEMO_API_"))}
    base.pop("PYTHON", None)
    out = subprocess.run(
        ["make", "-s", "-f", str(ROOT / "Makefile"), "-f", "show.mk", "_show_env", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        env={**base, **env},
    ).stdout
    return out.splitlines()


def test_make_exports_env_file_values_literally(tmp_path: Path) -> None:
    dotenv = (
        "# a comment\n"
        "NSX_DOLLAR=pa$$w0rd$HOME with  two spaces\n"
        'NSX_DOUBLE="quoted # not a comment"\n'
        "NSX_SINGLE='$(shell touch pwned)'\n"
        "NSX_COMMENTED=plain # a comment\n"
        "NSX_CRLF=windows\r\n"
    )
    lines = _make_env(tmp_path, dotenv)
    assert lines[:-1] == [
        "NSX_COMMENTED=plain",
        "NSX_CRLF=windows",
        "NSX_DOLLAR=pa$$w0rd$HOME with  two spaces",
        "NSX_DOUBLE=quoted # not a comment",
        "NSX_SINGLE=$(shell touch pwned)",
    ]
    assert not (tmp_path / "pwned").exists()


def test_empty_env_file_values_are_unset_and_the_shell_wins(tmp_path: Path) -> None:
    dotenv = "NSX_EMPTY=\nNSX_BLANK=   \nNSX_SHELL=from-file\nNSX_CLI=from-file\nDEMO_API_TOKEN=\nPYTHON=\n"
    lines = _make_env(tmp_path, dotenv, "NSX_CLI=from-cli", NSX_SHELL="from-shell")
    # empty: not exported, and the Makefile's own defaults (`?=`) still apply
    assert lines == [
        "NSX_CLI=from-cli",
        "NSX_SHELL=from-shell",
        "DEMO_API_TOKEN=[demo-token] PYTHON=[python3.11]",
    ]
    lines = _make_env(tmp_path, "DEMO_API_TOKEN=from-file\n")
    assert lines == ["DEMO_API_TOKEN=[from-file] PYTHON=[python3.11]"]


def test_make_runs_without_an_env_file(tmp_path: Path) -> None:
    assert _make_env(tmp_path, None) == ["DEMO_API_TOKEN=[demo-token] PYTHON=[python3.11]"]
    assert (
        "demo"
        in subprocess.run(
            ["make", "-s", "-f", str(ROOT / "Makefile"), "help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


def test_the_test_suite_drops_what_env_file_set(tmp_path: Path) -> None:
    """`make test` sees `.env` like every recipe; tests/conftest.py drops what it set
    (named by the Makefile in NIGHTSHIFT_DOTENV_NAMES) so the suite never runs against a
    warehouse or landing zone a `.env` names; the test servers' URLs and the shell's own
    variables stay."""
    (tmp_path / ".env").write_text(
        "AIRFLOW_CONN_WAREHOUSE=postgresql://u@prod-host/wh\n"
        "NIGHTSHIFT_TEST_PG_URL=postgresql://postgres@127.0.0.1:5432/postgres\n"
        "NSX_SHELL=from-file\n"
    )
    (tmp_path / "probe.mk").write_text(  # the suite's conftest loaded as a plugin
        ".PHONY: _probe\n_probe:\n\t@PYTHONPATH=$(ROOT) $(BIN)/python -m pytest -q "
        "-p no:cacheprovider -p tests.conftest -o addopts= test_probe.py\n"
    )
    (tmp_path / "test_probe.py").write_text(
        "import os\n\n"
        "def test_probe():\n"
        "    assert 'AIRFLOW_CONN_WAREHOUSE' not in os.environ\n"
        "    assert 'NIGHTSHIFT_DOTENV_NAMES' not in os.environ\n"
        "    assert os.environ['NIGHTSHIFT_TEST_PG_URL'].endswith('/postgres')\n"
        "    assert os.environ['NSX_SHELL'] == 'from-shell'\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NSX_", "AIRFLOW_CONN_"))}
    base.pop("NIGHTSHIFT_TEST_PG_URL", None)
    done = subprocess.run(
        [
            "make",
            "-s",
            "-f",
            str(ROOT / "Makefile"),
            "-f",
            "probe.mk",
            "_probe",
            f"BIN={ROOT / '.venv' / 'bin'}",
            f"ROOT={ROOT}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**base, "NSX_SHELL": "from-shell"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
