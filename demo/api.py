"""Demo payments/FX HTTP API (docs/contract.md, "Sources"), with switchable fault injection.

Serves payments from the SQLite file the demo generator writes, and deterministic FX
rates from `demo.fx`. Faults imitate a real third-party API (429 + Retry-After, 5xx,
slow pages, a page repeating records of the page before, schema-breaking records) and
are chosen by request counters, so a test run always sees the same sequence. Besides,
`fx_missing_days` makes `/v1/fx-rates` lack the rates of chosen days (only the base
`USD`, or a 404 with `fx_missing_status=404`), as a provider that has not published a
day yet does.

The fault-injection endpoint (`POST /_admin/faults`, which changes how the API answers)
is off unless the operator enables it, and then it needs its own token, never the data
token: a client that can read payments cannot switch faults on. Tokens are read from the
environment only (a command line is visible to every user through `ps`).

Run: DEMO_API_TOKEN=… python -m demo.api --payments-db data/demo/payments.db
     (+ DEMO_API_FAULT_INJECTION=1 DEMO_API_ADMIN_TOKEN=… to enable /_admin/faults)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import socket
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import settings
from demo.fx import rates_for

TOKEN_ENV = "DEMO_API_TOKEN"  # the data (bearer) token
FAULT_INJECTION_ENV = "DEMO_API_FAULT_INJECTION"  # 1/true/yes: /_admin/faults is served
ADMIN_TOKEN_ENV = "DEMO_API_ADMIN_TOKEN"  # the fault-injection endpoint's own token
FAULT_INJECTION_OFF = (
    f"fault injection is off ({FAULT_INJECTION_ENV}=1 and {ADMIN_TOKEN_ENV} enable it)"
)
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
FAULT_MODES = (
    "rate_limit",
    "server_error",
    "slow",
    "repeat_page",
    "malformed",
    "missing_cursor",  # a full page without the next_cursor key (looks like the last)
    "endless_cursor",  # a new cursor on every page, also past the last record
    "html_page",  # a 200 with an HTML body (a proxy's error page) instead of JSON
)
_ERROR_MODES = ("rate_limit", "server_error")  # answer with an error instead of data
_SERVER_ERROR_STATUSES = (500, 502, 503)
_REPEAT_RECORDS = 2  # how many records of the page before a repeated page starts with

PAYMENTS_DDL = """
CREATE TABLE IF NOT EXISTS payments (
    id TEXT PRIMARY KEY,
    order_id INTEGER,
    amount TEXT,
    currency TEXT,
    status TEXT,
    method TEXT,
    created_at TEXT,
    updated_at TEXT
)
"""


@dataclass
class FaultConfig:
    """Which faults to inject and how often (every Nth request/page)."""

    modes: frozenset[str] = frozenset()
    every: int = 3
    retry_after: int = 1
    slow_seconds: float = 2.0
    fx_missing_days: frozenset[str] = frozenset()  # YYYY-MM-DD days without rates
    fx_missing_status: int = 200  # 200: only {"USD": "1"}; 404: "no rates for that day"
    # A provider's revisions: {"YYYY-MM-DD": {"EUR": "0.9500"}} replace those rates.
    fx_revisions: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modes = frozenset(self.modes)
        self.fx_missing_days = frozenset(self.fx_missing_days)
        for day in self.fx_missing_days:
            if not isinstance(day, str) or len(day) != 10:
                raise ValueError(f"fx_missing_days: {day!r} is not a YYYY-MM-DD date")
            date.fromisoformat(day)
        for day, revised in self.fx_revisions.items():
            date.fromisoformat(day)
            if not isinstance(revised, dict) or not all(
                isinstance(v, str) for v in revised.values()
            ):
                raise ValueError(f"fx_revisions[{day!r}] must map currency -> decimal string")
        if self.fx_missing_status not in (200, 404):
            raise ValueError(
                f"fx_missing_status must be 200 or 404, got {self.fx_missing_status!r}"
            )
        unknown = sorted(self.modes - set(FAULT_MODES))
        if unknown:
            raise ValueError(f"unknown fault mode(s) {unknown}; known: {', '.join(FAULT_MODES)}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an integer >= 1, got {self.every!r}")
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise ValueError(f"retry_after must be an integer >= 0, got {self.retry_after!r}")
        if not isinstance(self.slow_seconds, int | float) or self.slow_seconds < 0:
            raise ValueError(f"slow_seconds must be a number >= 0, got {self.slow_seconds!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "modes": sorted(self.modes),
            "every": self.every,
            "retry_after": self.retry_after,
            "slow_seconds": self.slow_seconds,
            "fx_missing_days": sorted(self.fx_missing_days),
            "fx_missing_status": self.fx_missing_status,
            "fx_revisions": self.fx_revisions,
        }


@dataclass
class _State:
    """Mutable server state; only touched from the event loop, so no locking."""

    faults: FaultConfig
    requests: int = 0  # /v1/* requests since the faults were last set
    served: int = 0  # /v1/* requests answered with data (not a fault error)
    payment_pages: int = 0  # /v1/payments pages answered with data
    error_faults: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)

    def reset_counters(self) -> None:
        self.requests = self.served = self.payment_pages = self.error_faults = 0


class _BadRequest(Exception):
    pass


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _format_ts(value: datetime) -> str:
    """Canonical form of the stored timestamps, so string order == time order."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_since(raw: str) -> str:
    text = raw.strip()
    if "T" in text and " " in text:  # an unencoded "+00:00" arrives as " 00:00"
        text = text.replace(" ", "+")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _BadRequest(f"updated_since={raw!r} is not an ISO-8601 timestamp") from exc
    if parsed.tzinfo is None:  # the contract speaks UTC; a naive value means UTC
        parsed = parsed.replace(tzinfo=UTC)
    return _format_ts(parsed)


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError as exc:
        raise _BadRequest(f"limit={raw!r} is not an integer") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise _BadRequest(f"limit={limit} is out of range 1..{MAX_LIMIT}")
    return limit


def encode_cursor(updated_at: str, payment_id: str, since: str | None) -> str:
    """Opaque keyset cursor: the last (updated_at, id) served plus the filter."""
    payload = json.dumps({"u": updated_at, "i": payment_id, "s": since}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_cursor(raw: str) -> tuple[str, str, str | None]:
    try:
        padded = raw + "=" * (-len(raw) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        updated_at, payment_id, since = payload["u"], payload["i"], payload["s"]
        if not isinstance(updated_at, str) or not isinstance(payment_id, str):
            raise TypeError("cursor fields must be strings")
        if since is not None and not isinstance(since, str):
            raise TypeError("cursor filter must be a string")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _BadRequest(f"cursor={raw!r} is not a valid cursor") from exc
    return updated_at, payment_id, since


def _connect_ro(db_path: Path) -> sqlite3.Connection | None:
    """Read-only connection, or None when the file does not exist yet."""
    if not db_path.exists():
        return None
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def _query(db_path: Path, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    conn = _connect_ro(db_path)
    if conn is None:
        return []
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # generator has not created it yet
            return []
        raise
    finally:
        conn.close()


def _fetch_page(
    db_path: Path, since: str | None, after: tuple[str, str] | None, limit: int
) -> list[dict[str, Any]]:
    where, params = [], []
    if since is not None:
        where.append("updated_at >= ?")
        params.append(since)
    if after is not None:
        where.append("(updated_at > ? OR (updated_at = ? AND id > ?))")
        params += [after[0], after[0], after[1]]
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT * FROM payments {clause} ORDER BY updated_at, id LIMIT ?"
    return _query(db_path, sql, (*params, limit))


def _fetch_before(
    db_path: Path, since: str | None, before: tuple[str, str], count: int
) -> list[dict[str, Any]]:
    """The `count` records just before `before` (inclusive of it), in ascending order."""
    where = ["(updated_at < ? OR (updated_at = ? AND id <= ?))"]
    params: list[Any] = [before[0], before[0], before[1]]
    if since is not None:
        where.append("updated_at >= ?")
        params.append(since)
    sql = (
        f"SELECT * FROM payments WHERE {' AND '.join(where)} "
        "ORDER BY updated_at DESC, id DESC LIMIT ?"
    )
    return list(reversed(_query(db_path, sql, (*params, count))))


class _StatusCounter:
    """ASGI middleware counting /v1/* responses by status (for /_admin/stats)."""

    def __init__(self, app: ASGIApp, counter: Counter[str]) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counter[str(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


@dataclass(frozen=True)
class _PageRequest:
    """One /v1/payments request: page size, keyset position (None: first page) and the
    `updated_since` filter (carried in the cursor after the first page)."""

    limit: int
    after: tuple[str, str] | None
    since: str | None


def _page_request(request: Request) -> _PageRequest:
    """Parse limit and cursor/updated_since; _BadRequest names the bad value."""
    limit = _parse_limit(request.query_params.get("limit"))
    raw_cursor = request.query_params.get("cursor")
    if raw_cursor:
        updated_at, payment_id, since = _decode_cursor(raw_cursor)
        return _PageRequest(limit, (updated_at, payment_id), since)
    raw_since = request.query_params.get("updated_since")
    return _PageRequest(limit, None, _parse_since(raw_since) if raw_since else None)


def _parse_fx_day(raw: str | None) -> date:
    """The `date` query parameter, strictly YYYY-MM-DD (ValueError otherwise)."""
    day = date.fromisoformat(raw or "")
    if len(raw or "") != 10:  # fromisoformat also takes 20240101
        raise ValueError(raw)
    return day


def _faults_from_body(body: Any, current: FaultConfig) -> FaultConfig:
    """The fault settings a POST /_admin/faults body asks for. Modes, missing FX days and
    revisions are replaced (absent: none); every/retry_after/slow_seconds keep `current`'s
    when absent. ValueError/TypeError on a bad body."""
    if not isinstance(body, dict):
        raise TypeError(f"expected a JSON object, got {type(body).__name__}")
    return FaultConfig(
        modes=frozenset(body.get("modes", [])),
        every=body.get("every", current.every),
        retry_after=body.get("retry_after", current.retry_after),
        slow_seconds=body.get("slow_seconds", current.slow_seconds),
        fx_missing_days=frozenset(body.get("fx_missing_days", [])),
        fx_missing_status=body.get("fx_missing_status", 200),
        fx_revisions=body.get("fx_revisions", {}),
    )


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class _PaymentsApi:
    """The API's handlers: payments of `db_path` and FX rates behind the data token, the
    fault-injection endpoint behind the admin token (None: endpoint off), and the
    mutable `state` (faults and counters) they share."""

    def __init__(self, db_path: Path, state: _State, token: str, admin_token: str | None):
        self.db_path = db_path
        self.state = state
        self._expected = f"Bearer {token}".encode()
        self._expected_admin = f"Bearer {admin_token}".encode() if admin_token else None

    def routes(self) -> list[Route]:
        return [
            Route("/v1/payments", self.payments),
            Route("/v1/fx-rates", self.fx_rates),
            Route("/healthz", _healthz),
            Route("/_admin/faults", self.admin_faults, methods=["GET", "POST"]),
            Route("/_admin/stats", self.admin_stats),
        ]

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, self._expected)

    def _admin_authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        expected = self._expected_admin
        return expected is not None and hmac.compare_digest(given, expected)

    async def _inject_error_fault(self) -> Response | None:
        """Count a /v1 request; answer 429/5xx when its turn has come."""
        state = self.state
        state.requests += 1
        cfg = state.faults
        active = [m for m in _ERROR_MODES if m in cfg.modes]
        if active and state.requests % cfg.every == 0:
            mode = active[(state.requests // cfg.every - 1) % len(active)]
            state.faults_injected[mode] += 1
            if mode == "rate_limit":
                return _error(429, "rate limited", {"Retry-After": str(cfg.retry_after)})
            status = _SERVER_ERROR_STATUSES[state.error_faults % len(_SERVER_ERROR_STATUSES)]
            state.error_faults += 1
            headers = {"Retry-After": str(cfg.retry_after)} if status == 503 else None
            return _error(status, "injected server error", headers)
        state.served += 1
        if "slow" in cfg.modes and state.served % cfg.every == 0:
            state.faults_injected["slow"] += 1
            await asyncio.sleep(cfg.slow_seconds)
        return None

    async def payments(self, request: Request) -> Response:
        """GET /v1/payments: a keyset page by (updated_at, id), with the page faults."""
        if not self._authorized(request):
            return _error(401, "missing or invalid bearer token")
        try:
            page = _page_request(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        fault = await self._inject_error_fault()
        if fault is not None:
            return fault
        state = self.state
        state.payment_pages += 1
        cfg = state.faults
        nth_page = state.payment_pages % cfg.every == 0
        rows = self._page_rows(page, repeat="repeat_page" in cfg.modes and nth_page)
        next_cursor = None
        if len(rows) == page.limit:  # a full page: there may be more
            next_cursor = encode_cursor(rows[-1]["updated_at"], rows[-1]["id"], page.since)
        if rows and "malformed" in cfg.modes and nth_page:
            self._break_a_record(rows)
        if "html_page" in cfg.modes and nth_page:
            state.faults_injected["html_page"] += 1
            return Response(
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
                status_code=200,
                media_type="text/html",
            )
        body: dict[str, Any] = {"data": rows, "next_cursor": next_cursor}
        if next_cursor is not None and "missing_cursor" in cfg.modes and nth_page:
            del body["next_cursor"]
            state.faults_injected["missing_cursor"] += 1
        if next_cursor is None and "endless_cursor" in cfg.modes:
            body["next_cursor"] = encode_cursor(
                "9999-12-31T23:59:59.999999Z", f"end-{state.payment_pages}", page.since
            )
            state.faults_injected["endless_cursor"] += 1
        return JSONResponse(body)

    def _page_rows(self, page: _PageRequest, *, repeat: bool) -> list[dict[str, Any]]:
        """The page's records; `repeat` (a later page's repeat_page turn) starts it with a
        few records of the page before, keeping >= 1 new record so paging advances."""
        db_path, since, after, limit = self.db_path, page.since, page.after, page.limit
        if after is None or not repeat:
            return _fetch_page(db_path, since, after, limit)
        count = min(_REPEAT_RECORDS, limit - 1)
        head = _fetch_before(db_path, since, after, count) if count else []
        rows = head + _fetch_page(db_path, since, after, limit - len(head))
        if head:
            self.state.faults_injected["repeat_page"] += 1
        return rows

    def _break_a_record(self, rows: list[dict[str, Any]]) -> None:
        """The malformed fault: one record of the page loses its amount, or gets a
        non-numeric one (alternating turns)."""
        turn = self.state.payment_pages // self.state.faults.every
        victim = dict(rows[turn % len(rows)])
        if turn % 2:
            victim.pop("amount", None)
        else:
            victim["amount"] = "not-a-number"
        rows[turn % len(rows)] = victim
        self.state.faults_injected["malformed"] += 1

    async def fx_rates(self, request: Request) -> Response:
        """GET /v1/fx-rates?date=YYYY-MM-DD, with the configured revisions and gaps."""
        if not self._authorized(request):
            return _error(401, "missing or invalid bearer token")
        raw = request.query_params.get("date")
        try:
            day = _parse_fx_day(raw)
        except ValueError:
            return _error(400, f"date={raw!r} is not a YYYY-MM-DD date")
        fault = await self._inject_error_fault()
        if fault is not None:
            return fault
        faults = self.state.faults
        rates = {**rates_for(day), **faults.fx_revisions.get(day.isoformat(), {})}
        if day.isoformat() in faults.fx_missing_days:
            self.state.faults_injected["fx_missing_day"] += 1
            if faults.fx_missing_status == 404:
                return _error(404, f"no rates published for {day.isoformat()}")
            rates = {"USD": rates["USD"]}
        return JSONResponse({"base": "USD", "date": day.isoformat(), "rates": rates})

    async def admin_faults(self, request: Request) -> Response:
        """GET/POST /_admin/faults: read or replace the faults (POST restarts the counters)."""
        if self._expected_admin is None:
            return _error(404, FAULT_INJECTION_OFF)
        if not self._admin_authorized(request):
            return _error(401, "missing or invalid fault-injection token")
        if request.method == "GET":
            return JSONResponse(self.state.faults.to_json())
        try:
            self.state.faults = _faults_from_body(await request.json(), self.state.faults)
        except (ValueError, TypeError) as exc:
            return _error(400, f"bad fault settings: {exc}")
        self.state.reset_counters()  # the new schedule starts from request 1
        return JSONResponse(self.state.faults.to_json())

    async def admin_stats(self, request: Request) -> Response:
        """GET /_admin/stats: /v1 responses by status, faults injected, the fault config."""
        if not self._authorized(request):
            return _error(401, "missing or invalid bearer token")
        state = self.state
        return JSONResponse(
            {
                "requests": sum(state.by_status.values()),
                "by_status": dict(state.by_status),
                "faults": dict(state.faults_injected),
                "config": state.faults.to_json(),
            }
        )


def create_app(
    payments_db: str | Path,
    token: str,
    faults: FaultConfig | None = None,
    *,
    admin_token: str | None = None,
) -> Starlette:
    """Build the ASGI app serving `payments_db` behind bearer `token`.

    `faults` are the faults injected from the start. `admin_token` enables the
    fault-injection endpoint (`/_admin/faults`, GET and POST) behind that token, which
    must differ from `token`; without it the endpoint answers 404 to everyone.
    """
    if not token:
        raise ValueError("token must be a non-empty string")
    if admin_token is not None and not admin_token:
        raise ValueError("admin_token must be a non-empty string (or None: endpoint off)")
    if admin_token is not None and hmac.compare_digest(admin_token, token):
        raise ValueError("the fault-injection token must differ from the data token")
    state = _State(faults=faults or FaultConfig())
    api = _PaymentsApi(Path(payments_db), state, token, admin_token)
    app = Starlette(
        routes=api.routes(),
        middleware=[Middleware(_StatusCounter, counter=state.by_status)],
    )
    app.state.api_state = state  # for in-process inspection in tests
    return app


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` under uvicorn in a background thread; yield its base URL; stop it.

    port=0 picks a free port (the socket is bound here, so there is no race).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="demo-api", daemon=True
    )
    thread.start()
    try:
        deadline = 10.0
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("demo API server thread died while starting")
            thread.join(0.01)
            deadline -= 0.01
            if deadline <= 0:
                raise RuntimeError("demo API server did not start within 10 s")
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def _parse_modes(raw: str) -> frozenset[str]:
    return frozenset(m.strip() for m in raw.split(",") if m.strip())


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description="The demo payments/FX API (docs/contract.md, Sources)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    parser.add_argument(
        "--token",
        help=f"refused: pass the bearer token in ${TOKEN_ENV} (a command line shows in `ps`)",
    )
    parser.add_argument("--payments-db", required=True, type=Path, help="generator's SQLite file")
    parser.add_argument(
        "--faults", default="", help=f"comma-separated fault modes: {', '.join(FAULT_MODES)}"
    )
    parser.add_argument("--fault-every", type=int, default=3, help="fault every Nth request")
    parser.add_argument("--retry-after", type=int, default=1, help="seconds in Retry-After")
    parser.add_argument(
        "--slow-seconds", type=float, default=2.0, help="delay of the slow fault (default 2)"
    )
    args = parser.parse_args(argv)
    if args.token is not None:
        parser.error(f"--token is refused (visible in `ps`): set ${TOKEN_ENV} instead")
    token = settings.env(TOKEN_ENV)
    if not token:
        parser.error(f"a token is required: set ${TOKEN_ENV}")
    admin_token = None
    if settings.env(FAULT_INJECTION_ENV, "").lower() in ("1", "true", "yes"):
        admin_token = settings.env(ADMIN_TOKEN_ENV)
        if not admin_token:
            parser.error(f"{FAULT_INJECTION_ENV} is set: {ADMIN_TOKEN_ENV} is required")
    try:
        faults = FaultConfig(
            modes=_parse_modes(args.faults),
            every=args.fault_every,
            retry_after=args.retry_after,
            slow_seconds=args.slow_seconds,
        )
        app = create_app(args.payments_db, token, faults, admin_token=admin_token)
    except ValueError as exc:  # e.g. the fault-injection token equal to the data token
        parser.error(str(exc))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
