"""The demo payments/FX API against a real uvicorn server on loopback."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from demo.api import PAYMENTS_DDL, FaultConfig, create_app, serve_in_thread
from demo.fx import rates_for

TOKEN = "demo-test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_TOKEN = "demo-fault-token-456"  # the fault-injection endpoint's own token
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
START = datetime(2024, 3, 1, tzinfo=UTC)


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_payments_db(path: Path, n: int) -> list[dict]:
    """n payments; pairs share updated_at so the keyset tie-break on id is exercised."""
    rows = []
    for i in range(n):
        updated = START + timedelta(minutes=i // 2)
        rows.append(
            {
                "id": f"pay_{i:05d}",
                "order_id": 1000 + i,
                "amount": f"{i}.{i % 100:02d}",
                "currency": ["USD", "EUR", "GBP"][i % 3],
                "status": "succeeded",
                "method": "card",
                "created_at": _ts(updated - timedelta(hours=1)),
                "updated_at": _ts(updated),
            }
        )
    conn = sqlite3.connect(path)
    conn.execute(PAYMENTS_DDL)
    conn.executemany(
        "INSERT INTO payments VALUES (:id, :order_id, :amount, :currency, :status, :method,"
        " :created_at, :updated_at)",
        rows,
    )
    conn.commit()
    conn.close()
    return rows


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "payments.db"
    make_payments_db(path, 25)
    return path


@pytest.fixture
def server(db: Path) -> Iterator[str]:
    with serve_in_thread(create_app(db, TOKEN)) as url:
        yield url


def _get(url: str, path: str, **params) -> httpx.Response:
    return httpx.get(url + path, params=params, headers=AUTH, timeout=10)


def _all_pages(url: str, **params) -> tuple[list[dict], int]:
    records, pages, cursor = [], 0, None
    while True:
        query = dict(params) if cursor is None else {"limit": params["limit"], "cursor": cursor}
        body = _get(url, "/v1/payments", **query).raise_for_status().json()
        pages += 1
        records += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return records, pages


def test_healthz_needs_no_auth(server: str) -> None:
    assert httpx.get(server + "/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/v1/payments", "/v1/fx-rates?date=2024-01-01", "/_admin/stats"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_auth_required(server: str, path: str, headers: dict) -> None:
    response = httpx.get(server + path, headers=headers)
    assert response.status_code == 401
    assert "error" in response.json()


def test_pagination_returns_every_record_once_in_order(server: str, db: Path) -> None:
    records, pages = _all_pages(server, limit=7)
    assert pages == 4
    ids = [r["id"] for r in records]
    assert ids == [f"pay_{i:05d}" for i in range(25)]
    first = records[0]
    assert set(first) == {
        "id",
        "order_id",
        "amount",
        "currency",
        "status",
        "method",
        "created_at",
        "updated_at",
    }
    assert isinstance(first["order_id"], int) and isinstance(first["amount"], str)


def test_page_size_exact_multiple_ends_with_empty_page(server: str) -> None:
    records, pages = _all_pages(server, limit=5)
    assert len(records) == 25 and pages == 6


def test_updated_since_is_inclusive(server: str) -> None:
    since = START + timedelta(minutes=5)  # pay_00010 and pay_00011 have exactly this
    for value in (_ts(since), since.isoformat(), "2024-03-01T00:05:00Z"):
        records, _ = _all_pages(server, limit=4, updated_since=value)
        assert [r["id"] for r in records] == [f"pay_{i:05d}" for i in range(10, 25)], value


def test_limit_default_and_bounds(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    make_payments_db(db, 600)
    with serve_in_thread(create_app(db, TOKEN)) as url:
        body = _get(url, "/v1/payments").json()
        assert len(body["data"]) == 100 and body["next_cursor"]
        assert len(_get(url, "/v1/payments", limit=500).json()["data"]) == 500
        for bad in ("501", "0", "-1", "abc", "1.5"):
            response = _get(url, "/v1/payments", limit=bad)
            assert response.status_code == 400, bad
            assert bad in response.json()["error"]


def test_bad_updated_since_and_cursor_are_400(server: str) -> None:
    response = _get(server, "/v1/payments", updated_since="yesterday")
    assert response.status_code == 400 and "yesterday" in response.json()["error"]
    assert _get(server, "/v1/payments", cursor="not-a-cursor!").status_code == 400


def test_missing_database_or_table_serves_empty_list(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    for path in (tmp_path / "absent.db", empty):
        with serve_in_thread(create_app(path, TOKEN)) as url:
            assert _get(url, "/v1/payments").json() == {"data": [], "next_cursor": None}


def test_fx_rates_shape(server: str) -> None:
    body = _get(server, "/v1/fx-rates", date="2024-02-29").json()
    assert body["base"] == "USD" and body["date"] == "2024-02-29"
    assert body["rates"]["USD"] == "1"
    assert {"EUR", "GBP", "JPY", "CAD", "AUD", "CHF"} <= set(body["rates"])
    assert all(Decimal(v) > 0 for v in body["rates"].values())
    assert body["rates"] == rates_for(date(2024, 2, 29))
    other = _get(server, "/v1/fx-rates", date="2024-03-01").json()["rates"]
    assert other["EUR"] != body["rates"]["EUR"]  # rates move from day to day
    for bad in ("2024-02-30", "20240101", "tomorrow", ""):
        response = _get(server, "/v1/fx-rates", date=bad)
        assert response.status_code == 400, bad


def test_rate_limit_and_server_error_faults(db: Path) -> None:
    faults = FaultConfig(modes=frozenset({"rate_limit", "server_error"}), every=2, retry_after=7)
    with serve_in_thread(create_app(db, TOKEN, faults)) as url:
        statuses = []
        for _ in range(8):
            response = _get(url, "/v1/fx-rates", date="2024-01-01")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["Retry-After"] == "7"
        # Every 2nd request fails, alternating rate limit and rotating 5xx.
        assert statuses == [200, 429, 200, 500, 200, 429, 200, 502]
        assert httpx.get(url + "/healthz").status_code == 200  # faults only on /v1
        stats = _get(url, "/_admin/stats").json()
        assert stats["by_status"] == {"200": 4, "429": 2, "500": 1, "502": 1}
        assert stats["faults"] == {"rate_limit": 2, "server_error": 2}


def test_slow_fault(db: Path) -> None:
    faults = FaultConfig(modes=frozenset({"slow"}), every=2, slow_seconds=0.4)
    with serve_in_thread(create_app(db, TOKEN, faults)) as url:
        durations = []
        for _ in range(2):
            started = time.monotonic()
            _get(url, "/v1/payments", limit=5).raise_for_status()
            durations.append(time.monotonic() - started)
        assert durations[0] < 0.3 <= 0.4 <= durations[1]


def test_repeat_page_fault_repeats_records_of_the_page_before(db: Path) -> None:
    faults = FaultConfig(modes=frozenset({"repeat_page"}), every=2)
    with serve_in_thread(create_app(db, TOKEN, faults)) as url:
        first = _get(url, "/v1/payments", limit=5).json()
        second = _get(url, "/v1/payments", limit=5, cursor=first["next_cursor"]).json()
        assert [r["id"] for r in second["data"]] == [f"pay_{i:05d}" for i in (3, 4, 5, 6, 7)]
        # Paging still reaches the end, every record at least once.
        records, _ = _all_pages(url, limit=5)
        assert {r["id"] for r in records} == {f"pay_{i:05d}" for i in range(25)}
        assert len(records) > 25
        assert _get(url, "/_admin/stats").json()["faults"]["repeat_page"] >= 2


def test_malformed_fault_breaks_one_record_per_nth_page(db: Path) -> None:
    faults = FaultConfig(modes=frozenset({"malformed"}), every=1)
    with serve_in_thread(create_app(db, TOKEN, faults)) as url:
        records, pages = _all_pages(url, limit=10)
        broken = [r for r in records if "amount" not in r or r["amount"] == "not-a-number"]
        assert len(broken) == 3 == pages
        assert any("amount" not in r for r in broken)
        assert any(r.get("amount") == "not-a-number" for r in broken)


def test_runtime_fault_switch(db: Path) -> None:
    with serve_in_thread(create_app(db, TOKEN, admin_token=ADMIN_TOKEN)) as url:
        assert _get(url, "/v1/payments").status_code == 200
        settings = {"modes": ["rate_limit"], "every": 1, "retry_after": 3}
        assert httpx.post(url + "/_admin/faults", json=settings).status_code == 401
        # the data token reads payments; it cannot switch faults on
        assert httpx.post(url + "/_admin/faults", json=settings, headers=AUTH).status_code == 401
        assert _get(url, "/_admin/faults").status_code == 401
        response = httpx.post(url + "/_admin/faults", json=settings, headers=ADMIN)
        assert response.json()["modes"] == ["rate_limit"]
        response = _get(url, "/v1/payments")
        assert response.status_code == 429 and response.headers["Retry-After"] == "3"
        bad = httpx.post(url + "/_admin/faults", json={"modes": ["boom"]}, headers=ADMIN)
        assert bad.status_code == 400 and "boom" in bad.json()["error"]
        httpx.post(url + "/_admin/faults", json={"modes": []}, headers=ADMIN)
        assert _get(url, "/v1/payments").status_code == 200
        assert _get(url, "/_admin/stats").json()["by_status"] == {"200": 2, "429": 1}


def test_cli_serves_on_loopback(db: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.api", "--port", str(port)]
        + ["--payments-db", str(db), "--faults", "rate_limit", "--fault-every", "2"],
        cwd=repo,
        env={**_clean_env(), "DEMO_API_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "CLI did not start"
            time.sleep(0.1)
        assert _get(url, "/v1/payments").status_code == 200
        assert _get(url, "/v1/payments").status_code == 429
        # started without DEMO_API_FAULT_INJECTION: the switch does not exist
        off = httpx.post(url + "/_admin/faults", json={}, headers=AUTH)
        assert off.status_code == 404 and "DEMO_API_FAULT_INJECTION" in off.json()["error"]
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert TOKEN not in cmdline
    finally:
        proc.terminate()
        proc.wait(10)


def test_fault_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="nope"):
        FaultConfig(modes=frozenset({"nope"}))
    with pytest.raises(ValueError, match="every"):
        FaultConfig(every=0)


def _clean_env() -> dict[str, str]:
    drop = {"DEMO_API_TOKEN", "DEMO_API_FAULT_INJECTION", "DEMO_API_ADMIN_TOKEN"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.mark.parametrize("headers", [{}, AUTH, ADMIN])
def test_fault_injection_is_off_unless_enabled(db: Path, headers: dict) -> None:
    with serve_in_thread(create_app(db, TOKEN)) as url:
        for method in ("GET", "POST"):
            response = httpx.request(
                method, url + "/_admin/faults", json={"modes": ["rate_limit"]}, headers=headers
            )
            assert response.status_code == 404, (method, headers)
        assert _get(url, "/v1/payments").status_code == 200
        assert _get(url, "/_admin/stats").json()["config"]["modes"] == []


def test_fault_injection_token_is_its_own(db: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        create_app(db, TOKEN, admin_token=TOKEN)
    with pytest.raises(ValueError, match="non-empty"):
        create_app(db, TOKEN, admin_token="")


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--token", TOKEN], {"DEMO_API_TOKEN": TOKEN}, "--token is refused"),
        ([], {}, "DEMO_API_TOKEN"),
        ([], {"DEMO_API_TOKEN": TOKEN, "DEMO_API_FAULT_INJECTION": "1"}, "DEMO_API_ADMIN_TOKEN"),
        (
            [],
            {
                "DEMO_API_TOKEN": TOKEN,
                "DEMO_API_FAULT_INJECTION": "1",
                "DEMO_API_ADMIN_TOKEN": TOKEN,
            },
            "must differ",
        ),
    ],
)
def test_cli_refuses_unsafe_tokens(
    db: Path, argv: list[str], env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "demo.api", "--payments-db", str(db), "--port", "1", *argv],
        cwd=Path(__file__).resolve().parents[2],
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_running_api_passes_tokens_in_the_environment(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo runner (make demo, the e2e tests) never puts a token on a command line,
    and enables the fault switch only when asked, behind its own token."""
    from demo import servers

    for name in ("DEMO_API_FAULT_INJECTION", "DEMO_API_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def recording_popen(cmd, **kwargs):
        seen.append((list(cmd), dict(kwargs["env"])))
        return real_popen(cmd, **kwargs)

    monkeypatch.setattr(servers.subprocess, "Popen", recording_popen)
    with servers.running_api(db, token=TOKEN) as uri:
        base = "http://" + uri.split("@", 1)[1]
        assert httpx.post(base + "/_admin/faults", json={}, headers=ADMIN).status_code == 404
    with servers.running_api(db, token=TOKEN, admin_token=ADMIN_TOKEN) as uri:
        base = "http://" + uri.split("@", 1)[1]
        switched = httpx.post(base + "/_admin/faults", json={"every": 2}, headers=ADMIN)
        assert switched.status_code == 200 and switched.json()["every"] == 2
    (plain_cmd, plain_env), (admin_cmd, admin_env) = seen
    for cmd in (plain_cmd, admin_cmd):
        assert TOKEN not in " ".join(cmd) and ADMIN_TOKEN not in " ".join(cmd)
    assert plain_env["DEMO_API_TOKEN"] == TOKEN and "DEMO_API_FAULT_INJECTION" not in plain_env
    assert admin_env["DEMO_API_ADMIN_TOKEN"] == ADMIN_TOKEN
