"""Resolve configuration once, at the edge.

Connections follow Airflow's convention (`AIRFLOW_CONN_<ID>` environment variables),
so the same values are read inside Airflow tasks and in plain Python (tests, CLI).
Inside Airflow, a connection defined in the metadata DB or a secrets backend is also
found. Everything else is a plain environment variable with a documented default, read
through `env()`: an empty or blank value means unset (tests/test_configuration.py checks
that every variable read is in `.env.example` and docs/configuration.md's table).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SOURCE_DB_CONN_ID = "source_db"
SOURCE_DB_REPLICA_CONN_ID = "source_db_replica"
PAYMENTS_API_CONN_ID = "payments_api"

DBT_TARGETS = ("duckdb", "postgres", "snowflake", "bigquery")


class ConfigError(RuntimeError):
    """A required setting is missing or invalid; the message names it."""


@overload
def env(name: str) -> str | None: ...
@overload
def env(name: str, default: str) -> str: ...
def env(name: str, default: str | None = None) -> str | None:
    """Environment variable `name`, stripped; unset, empty or whitespace: `default`.

    The one way the project reads a variable: `.env.example` leaves optional variables
    empty (`NIGHTSHIFT_DATA_DIR=`), and empty must mean "unset", never "" or the current
    directory.
    """
    value = os.environ.get(name, "").strip()
    return value or default


def _mask(secret: str | None) -> None:
    """Register a secret with Airflow's log masker when Airflow is present."""
    if not secret:
        return
    try:
        from airflow.sdk.log import mask_secret  # type: ignore[import-not-found]
    except Exception:  # Airflow not installed or not configured: nothing to mask into
        try:
            from airflow.sdk.execution_time.secrets_masker import mask_secret  # type: ignore
        except Exception:
            return
    try:
        mask_secret(secret)
    except Exception:
        return


def get_connection_uri(conn_id: str, *, required: bool = True) -> str | None:
    """Return the URI of an Airflow connection.

    `AIRFLOW_CONN_<ID>` is read verbatim first (it must stay a valid SQLAlchemy URL,
    which Airflow's URI round trip does not always preserve); otherwise Airflow's own
    lookup (metadata DB, secrets backends) is asked when Airflow is importable.
    """
    env_name = f"AIRFLOW_CONN_{conn_id.upper()}"
    uri = env(env_name, "")
    if not uri:
        uri = _airflow_lookup(conn_id) or ""
    if not uri:
        if required:
            raise ConfigError(
                f"connection {conn_id!r} is not configured: set {env_name} "
                f"(see .env.example) or define it in Airflow"
            )
        return None
    for secret in secrets_in_uri(uri):
        _mask(secret)
    return uri


_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "token", "access_token", "secret"})


def secrets_in_uri(uri: str) -> list[str]:
    """Every secret a connection URI carries: the userinfo password and query parameters
    such as `?password=` (drivers accept both); registered with the log masker."""
    parts = urlsplit(uri)
    found = [unquote(parts.password)] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS and v]
    return found


def _airflow_lookup(conn_id: str) -> str | None:
    if env("NIGHTSHIFT_NO_AIRFLOW_LOOKUP"):
        return None
    try:
        from airflow.sdk import BaseHook  # type: ignore[import-not-found]
    except Exception:
        return None
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:
        return None
    return conn.get_uri()


def sqlalchemy_url(uri: str) -> str:
    """Airflow writes `postgres://`; SQLAlchemy wants `postgresql://` (+driver)."""
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://") :]
    if uri.startswith("postgresql://"):
        uri = "postgresql+psycopg://" + uri[len("postgresql://") :]
    if uri.startswith("mysql://"):
        uri = "mysql+pymysql://" + uri[len("mysql://") :]
    return uri


@dataclass(frozen=True)
class ApiConfig:
    base_url: str
    token: str

    def __repr__(self) -> str:  # never print the token
        return f"ApiConfig(base_url={self.base_url!r}, token='***')"


def _masked(uri: str) -> str:
    """`uri` with every secret it carries, as written or percent-encoded, replaced by `***`
    (for error messages)."""
    raw = urlsplit(uri).password
    secrets = {*secrets_in_uri(uri), *([raw] if raw else [])}
    for secret in sorted(secrets, key=len, reverse=True):
        uri = uri.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return uri


def parse_api_uri(uri: str) -> ApiConfig:
    """`http://:TOKEN@host:port` → base URL + bearer token (token = the password)."""
    parts = urlsplit(uri)
    where = f"payments_api (AIRFLOW_CONN_PAYMENTS_API={_masked(uri)!r})"
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{where}: scheme must be http or https, got {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigError(f"{where}: the URI has no host, e.g. https://:TOKEN@api.example.com")
    token = unquote(parts.password or "")
    if not token:
        raise ConfigError(
            f"{where}: no token: put it in the password field, http://:TOKEN@host:port"
        )
    _mask(token)
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rstrip("/")
    return ApiConfig(base_url=f"{parts.scheme}://{netloc}{path}", token=token)


def data_dir() -> Path:
    return Path(env("NIGHTSHIFT_DATA_DIR") or PROJECT_ROOT / "data").resolve()


def data_url() -> str | None:
    """`NIGHTSHIFT_DATA_URL=s3://bucket/prefix`: the shared folders on object storage, the
    same names as under `NIGHTSHIFT_DATA_DIR` (`landing/`, `quarantine/`, `runs/`,
    `report/`, `docs/quality/`), for workers on several hosts; None (unset): local."""
    url = env("NIGHTSHIFT_DATA_URL")
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(
            f"NIGHTSHIFT_DATA_URL={url!r} is not s3://bucket/prefix; "
            "unset it to keep the folders under NIGHTSHIFT_DATA_DIR"
        )
    return url.rstrip("/")


def _kind_url(name: str, kind: str) -> str:
    """`name` (`NIGHTSHIFT_LANDING_URL`, …) when set, else `<NIGHTSHIFT_DATA_URL>/<kind>`,
    else "" (the local folder)."""
    root = data_url()
    return env(name) or (f"{root}/{kind}" if root else "")


def data_stage_dir() -> Path:
    """`NIGHTSHIFT_DATA_STAGE` (default `DATA_DIR/data-stage`): this host's local copy of
    the report and Data Docs folders when `NIGHTSHIFT_DATA_URL` is set."""
    return Path(env("NIGHTSHIFT_DATA_STAGE") or data_dir() / "data-stage").resolve()


def data_store(kind: str) -> Any:
    """The object store of `<NIGHTSHIFT_DATA_URL>/<kind>` (`runs`, `report`,
    `docs/quality`; the landing zone's credentials), or None when the URL is unset."""
    root = data_url()
    if root is None:
        return None
    from extract.object_landing import open_store

    return open_store(f"{root}/{kind}", landing_store_options())


def runs_dir() -> Path:
    """The local run files (`<run_id>/steps/*.json`, `alerts.json`) without a data store."""
    return data_dir() / "runs"


def landing_dir() -> Path:
    """The local landing folder readers and writers use. With `NIGHTSHIFT_LANDING_URL` a
    local path, that path; with `s3://…`, the local stage of the object store
    (`NIGHTSHIFT_LANDING_STAGE`, default `DATA_DIR/landing-stage`; extract/object_landing.py)."""
    url = _kind_url("NIGHTSHIFT_LANDING_URL", "landing")
    if url.startswith("s3://"):
        stage = env("NIGHTSHIFT_LANDING_STAGE")
        return Path(stage or data_dir() / "landing-stage").resolve()
    if url:
        return Path(url.removeprefix("file://")).resolve()
    return Path(env("LANDING_DIR") or data_dir() / "landing").resolve()


LANDING_CONN_ID = "landing"


def landing_url() -> str:
    """`NIGHTSHIFT_LANDING_URL`: a local path (default: the landing folder) or
    `s3://bucket/prefix`."""
    url = _kind_url("NIGHTSHIFT_LANDING_URL", "landing")
    return url if url.startswith("s3://") else str(landing_dir())


def landing_store_options() -> dict[str, Any]:
    """`pyarrow.fs.S3FileSystem` options for the landing store, from the Airflow
    connection `landing` (`AIRFLOW_CONN_LANDING=aws://KEY:SECRET@/?endpoint_url=…&
    region_name=…`) or else the standard AWS variables (`AWS_ACCESS_KEY_ID`,
    `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`,
    `AWS_REGION`/`AWS_DEFAULT_REGION`). Secrets are registered with the log masker."""
    uri = get_connection_uri(LANDING_CONN_ID, required=False)
    key = env("AWS_ACCESS_KEY_ID")
    secret = env("AWS_SECRET_ACCESS_KEY")
    token = env("AWS_SESSION_TOKEN")
    endpoint = env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL")
    region = env("AWS_REGION") or env("AWS_DEFAULT_REGION")
    if uri:
        parts = urlsplit(uri)
        if parts.scheme not in ("aws", "s3"):
            raise ConfigError(
                f"landing: scheme must be aws (aws://KEY:SECRET@/?…), got {parts.scheme!r} "
                f"in AIRFLOW_CONN_LANDING={_masked(uri)!r}"
            )
        extra = dict(parse_qsl(parts.query))
        key = unquote(parts.username or "") or extra.get("aws_access_key_id") or key
        secret = unquote(parts.password or "") or extra.get("aws_secret_access_key") or secret
        token = extra.get("aws_session_token") or token
        endpoint = extra.get("endpoint_url") or endpoint
        region = extra.get("region_name") or region
    for value in (secret, token):
        _mask(value)
    options: dict[str, Any] = {
        "access_key": key,
        "secret_key": secret,
        "session_token": token,
        "region": region or "us-east-1",
    }
    if endpoint:
        ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = ep.netloc
        options["scheme"] = ep.scheme
    return options


def landing_store() -> Any:
    """The object store of the landing zone (`extract.object_landing.LandingStore`), or
    None when the landing zone is the local folder (the default)."""
    url = _kind_url("NIGHTSHIFT_LANDING_URL", "landing")
    if not url.startswith("s3://"):
        return None
    from extract.object_landing import open_store

    return open_store(url, landing_store_options())


def quarantine_dir() -> Path:
    """The local quarantine folder. With `NIGHTSHIFT_QUARANTINE_URL` a local path, that
    path; with `s3://…`, the local mirror of the store (`NIGHTSHIFT_QUARANTINE_STAGE`,
    default `DATA_DIR/quarantine-stage`), pulled before and pushed after each step that
    uses it (`quarantine_store`)."""
    url = _kind_url("NIGHTSHIFT_QUARANTINE_URL", "quarantine")
    if url.startswith("s3://"):
        stage = env("NIGHTSHIFT_QUARANTINE_STAGE")
        return Path(stage or data_dir() / "quarantine-stage").resolve()
    if url:
        return Path(url.removeprefix("file://")).resolve()
    return Path(env("QUARANTINE_DIR") or data_dir() / "quarantine").resolve()


def quarantine_store() -> Any:
    """The object store of the quarantine (`NIGHTSHIFT_QUARANTINE_URL=s3://…`, the same
    credentials as the landing zone: connection `landing` or the AWS variables), or None."""
    url = _kind_url("NIGHTSHIFT_QUARANTINE_URL", "quarantine")
    if not url.startswith("s3://"):
        return None
    from extract.object_landing import open_store

    return open_store(url, landing_store_options())


def report_dir() -> Path:
    """The report folder; with `NIGHTSHIFT_DATA_URL`, this host's copy of `report/` there
    (`report.build` works on a folder; pulled before and pushed after each step)."""
    if data_url():
        return data_stage_dir() / "report"
    return Path(env("REPORT_DIR") or data_dir() / "report").resolve()


def warehouse_path() -> Path:
    return Path(env("WAREHOUSE_PATH") or data_dir() / "warehouse.duckdb").resolve()


DUCKDB_MEMORY_LIMIT_DEFAULT = "512MB"  # also dbt_project/profiles.yml's default
_DUCKDB_MEMORY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|B)$", re.IGNORECASE)


def duckdb_memory_limit() -> str:
    """`NIGHTSHIFT_DUCKDB_MEMORY_LIMIT` (default 512MB): DuckDB's `memory_limit` in the
    warehouse's connections and dbt's. Above it DuckDB spills to disk, so a night's memory
    stays flat as history grows (DuckDB's own default is 80% of RAM)."""
    value = env("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", DUCKDB_MEMORY_LIMIT_DEFAULT)
    if not _DUCKDB_MEMORY_RE.match(value):
        raise ConfigError(
            f"NIGHTSHIFT_DUCKDB_MEMORY_LIMIT={value!r} is not a size such as 512MB or 2GiB "
            f"(unset: {DUCKDB_MEMORY_LIMIT_DEFAULT})"
        )
    return value.replace(" ", "")


def extract_config_path() -> Path | None:
    """`EXTRACT_CONFIG`: optional YAML overriding the per-table extract settings."""
    value = env("EXTRACT_CONFIG")
    return Path(value).resolve() if value else None


def _positive_int_env(name: str, default: int, minimum: int = 1) -> int:
    """An integer >= `minimum` from env var `name` (unset or blank: `default`)."""
    raw = env(name, str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


def fx_revision_days() -> int:
    """`FX_REVISION_DAYS` (default 7; 0 = never): the trailing business days, up to the
    published horizon, whose FX rates are asked again every night (providers revise
    recent rates; a changed rate restates its day)."""
    return _positive_int_env("FX_REVISION_DAYS", 7, minimum=0)


def retention_config_path() -> Path:
    """`RETENTION_CONFIG` (default config/retention.yml): what a successful night prunes."""
    value = env("RETENTION_CONFIG")
    return Path(value).resolve() if value else PROJECT_ROOT / "config" / "retention.yml"


def guards_config_path() -> Path:
    """`GUARDS_CONFIG` (default config/guards.yml): limits of the load's guards."""
    value = env("GUARDS_CONFIG")
    return Path(value).resolve() if value else PROJECT_ROOT / "config" / "guards.yml"


def future_tolerance_minutes() -> int:
    """`FUTURE_TOLERANCE_MINUTES` (default 60): how far after the pipeline's clock a
    record's `updated_at` may be before it is quarantined instead of landed."""
    return _positive_int_env("FUTURE_TOLERANCE_MINUTES", 60, minimum=0)


_DRIFT_SPEC = re.compile(r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.:-]*\.(\*|[^,]+))$")


def accept_schema_drift(param: str | None = None) -> tuple[str, ...]:
    """`ACCEPT_SCHEMA_DRIFT` plus the DAG param `accept_schema_drift` (default: none):
    comma-separated `<table>.<column>` (or `<table>.*`) whose schema drift (a dropped
    column, a type change that is not a lossless widening) this run lands anyway; the
    landing records it in the manifest, the load in `ops.guard_overrides`."""
    specs: list[str] = []
    for where, raw in (
        ("ACCEPT_SCHEMA_DRIFT", env("ACCEPT_SCHEMA_DRIFT", "")),
        ("accept_schema_drift", param or ""),
    ):
        for spec in (s.strip() for s in raw.split(",")):
            if not spec:
                continue
            if not _DRIFT_SPEC.match(spec):
                raise ConfigError(
                    f"{where}: {spec!r} is not <table>.<column> (or <table>.*), e.g. orders.total"
                )
            specs.append(spec)
    return tuple(dict.fromkeys(specs))


_RAW_TABLES = ("users", "products", "orders", "order_items", "payments", "fx_rates")


def accept_stale_sources() -> tuple[str, ...]:
    """`ACCEPT_STALE_SOURCES` (default: none): comma-separated raw tables (`orders`, or
    `*` for all) whose error-level staleness (`dbt source freshness`) this run publishes
    anyway, as a warning: a source that is really quiet, e.g. on a holiday."""
    names = [n.strip() for n in env("ACCEPT_STALE_SOURCES", "").split(",") if n.strip()]
    for name in names:
        if name != "*" and name not in _RAW_TABLES:
            raise ConfigError(
                f"ACCEPT_STALE_SOURCES: {name!r} is not a source table; use "
                f"{', '.join(_RAW_TABLES)} or *"
            )
    return tuple(dict.fromkeys(names))


def watermark_max_jump_days() -> int:
    """`WATERMARK_MAX_JUMP_DAYS` (default 30; 0: no limit): the furthest the payments
    watermark may move in one run before the run fails."""
    return _positive_int_env("WATERMARK_MAX_JUMP_DAYS", 30, minimum=0)


def source_connect_timeout_s() -> int:
    """`SOURCE_CONNECT_TIMEOUT_S` (default 30): seconds to open a source database
    connection (libpq `connect_timeout`, the driver's own elsewhere)."""
    return _positive_int_env("SOURCE_CONNECT_TIMEOUT_S", 30)


def source_statement_timeout_s() -> int:
    """`SOURCE_STATEMENT_TIMEOUT_S` (default 3600; 0: none): the longest one statement of
    the extract may run on the source (PostgreSQL `statement_timeout`, MySQL/MariaDB
    `max_statement_time` / `max_execution_time`), a whole table's COPY included."""
    return _positive_int_env("SOURCE_STATEMENT_TIMEOUT_S", 3600, minimum=0)


def source_read_stall_timeout_s() -> int:
    """`SOURCE_READ_STALL_TIMEOUT_S` (default 600): seconds a source read (a COPY, a
    fetch) may go without receiving a byte, or a statement without an answer, before the
    extract closes the connection and fails naming the table (a server or network that
    stays connected but stops sending)."""
    return _positive_int_env("SOURCE_READ_STALL_TIMEOUT_S", 600)


def dbt_timeout_s() -> int:
    """`DBT_TIMEOUT_S` (default 3600; 0: none): the longest one dbt invocation may run
    before it is stopped and the step fails."""
    return _positive_int_env("DBT_TIMEOUT_S", 3600, minimum=0)


def task_timeout_minutes() -> int:
    """`TASK_TIMEOUT_MINUTES` (default 180): every Airflow task's `execution_timeout`
    (read when the DAG files are parsed); a task past it is stopped and, where the task
    has retries, retried."""
    return _positive_int_env("TASK_TIMEOUT_MINUTES", 180)


def extract_parallelism() -> int:
    """`EXTRACT_PARALLELISM` (default 1): key ranges of a large table read at once (PostgreSQL,
    one shared snapshot), for tables whose config sets no `parallel_ranges`."""
    return _positive_int_env("EXTRACT_PARALLELISM", 1)


def shard_map_path() -> Path | None:
    """`SOURCE_DB_SHARD_MAP`: optional YAML/JSON virtual-shard map (docs/sharding.md).

    When set, `source_db` is the logical source behind that map (each shard has its own
    `url` or `conn_id`) and `AIRFLOW_CONN_SOURCE_DB` is not read; unset: one database.
    """
    value = env("SOURCE_DB_SHARD_MAP")
    if not value:
        return None
    path = Path(value).resolve()
    if not path.is_file():
        raise ConfigError(f"SOURCE_DB_SHARD_MAP: file {path} does not exist")
    return path


def shard_max_workers() -> int:
    """`SOURCE_DB_SHARD_WORKERS` (default 8): shards extracted at the same time."""
    return _positive_int_env("SOURCE_DB_SHARD_WORKERS", 8)


def quality_docs_dir() -> Path:
    """Great Expectations Data Docs (static site), one folder per pipeline step; with
    `NIGHTSHIFT_DATA_URL`, the local copy each built site is pushed from."""
    if data_url():
        return data_stage_dir() / "docs" / "quality"
    return Path(env("QUALITY_DOCS_DIR") or data_dir() / "docs" / "quality").resolve()


def replica_max_lag_seconds() -> float:
    """`SOURCE_DB_REPLICA_MAX_LAG_SECONDS` (default 300): the most lag a replica may have."""
    raw = env("SOURCE_DB_REPLICA_MAX_LAG_SECONDS", "300")
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"SOURCE_DB_REPLICA_MAX_LAG_SECONDS={raw!r} is not a number") from exc
    if value < 0:
        raise ConfigError(f"SOURCE_DB_REPLICA_MAX_LAG_SECONDS={raw!r} must be >= 0")
    return value


def replica_on_lag() -> str:
    """`SOURCE_DB_REPLICA_ON_LAG`: `primary` (default: read the primary) or `fail`."""
    value = env("SOURCE_DB_REPLICA_ON_LAG", "primary")
    if value not in ("primary", "fail"):
        raise ConfigError(f"SOURCE_DB_REPLICA_ON_LAG={value!r} is not one of primary, fail")
    return value


def alerts_config_path() -> Path | None:
    """`ALERTS_CONFIG`: the alert thresholds file (default config/alerts.yml)."""
    value = env("ALERTS_CONFIG")
    return Path(value).resolve() if value else None


def statsd_address() -> tuple[str | None, int]:
    """`STATSD_HOST` / `STATSD_PORT` (8125): where run metrics go as StatsD gauges."""
    host = env("STATSD_HOST")
    raw = env("STATSD_PORT", "8125")
    try:
        port = int(raw)
    except ValueError as exc:
        raise ConfigError(f"STATSD_PORT={raw!r} is not a port number") from exc
    if not 0 < port < 65536:
        raise ConfigError(f"STATSD_PORT={raw!r} is not a port number (1-65535)")
    return host, port


def dbt_project_dir() -> Path:
    return PROJECT_ROOT / "dbt_project"


def dbt_target() -> str:
    target = env("DBT_TARGET", "duckdb")
    if target not in DBT_TARGETS:
        raise ConfigError(f"DBT_TARGET={target!r} is not one of {', '.join(DBT_TARGETS)}")
    return target


def report_tz_name() -> str:
    name = env("REPORT_TZ", "UTC")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"REPORT_TZ={name!r} is not an IANA time zone name") from exc
    return name


def report_tz() -> ZoneInfo:
    return ZoneInfo(report_tz_name())


def _nonnegative_float_env(name: str, default: float) -> float:
    raw = env(name, str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if not value >= 0:
        raise ConfigError(f"{name}={raw!r} must be >= 0")
    return value


def warehouse_lease_ttl_seconds() -> float:
    """`WAREHOUSE_LEASE_TTL_MINUTES` (default 30): a run's warehouse lease not renewed for
    this long (its tasks renew it while they run) is expired: the next run takes it over."""
    minutes = _nonnegative_float_env("WAREHOUSE_LEASE_TTL_MINUTES", 30)
    if minutes <= 0:
        raise ConfigError(
            f"WAREHOUSE_LEASE_TTL_MINUTES={env('WAREHOUSE_LEASE_TTL_MINUTES')!r} must be > 0"
        )
    return minutes * 60


def warehouse_lease_wait_seconds() -> float:
    """`WAREHOUSE_LEASE_WAIT_S` (default 60): how long a run waits for another run's
    warehouse lease before it fails naming that run."""
    return _nonnegative_float_env("WAREHOUSE_LEASE_WAIT_S", 60)


WAREHOUSE_CONN_ID = "warehouse"
_WAREHOUSE_SCHEMES = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "postgresql+psycopg": "postgres",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
}


def safe_url(url: str) -> str:
    """The URL with its password hidden (`***`), for logs, error messages, manifests and
    stored shard maps: the userinfo password and a secret in the query string
    (`?password=`, `?token=`: drivers accept both; `secrets_in_uri`)."""
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(sqlalchemy_url(url))
        secret = {k: "***" for k in parsed.query if k.lower() in _SECRET_PARAMS}
        if secret:
            parsed = parsed.update_query_dict(secret)
        return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:
        return "<unparseable URL>"


def _safe_warehouse_url(uri: str) -> str:
    """The URL with every secret it carries replaced by `***` (for messages)."""
    masked = safe_url(uri)
    if masked == "<unparseable URL>" or any(s in masked for s in secrets_in_uri(uri)):
        return uri.split("://", 1)[0] + "://***"
    return uri.split("://", 1)[0] + "://" + masked.split("://", 1)[-1]


def warehouse_url() -> str | None:
    """`AIRFLOW_CONN_WAREHOUSE` (or Airflow's `warehouse` connection): the server the
    warehouse lives on; None (unset): the DuckDB file at `WAREHOUSE_PATH`."""
    return get_connection_uri(WAREHOUSE_CONN_ID, required=False)


def warehouse_backend() -> str:
    """The warehouse's kind (`duckdb`, `postgres`, `snowflake`, `bigquery`: the dbt target
    it pairs with), from `AIRFLOW_CONN_WAREHOUSE`. `DBT_TARGET` unset follows it; set to
    another target, ConfigError naming both (the URL without its password)."""
    uri = warehouse_url()
    if uri is None:
        kind, where = "duckdb", f"WAREHOUSE_PATH ({warehouse_path()})"
    else:
        scheme = urlsplit(uri).scheme.lower()
        kind = _WAREHOUSE_SCHEMES.get(scheme, "")
        where = f"AIRFLOW_CONN_WAREHOUSE ({_safe_warehouse_url(uri)})"
        if not kind:
            raise ConfigError(
                f"{where}: scheme {scheme!r} is not a warehouse; use postgresql://, "
                "snowflake:// or bigquery://, or unset it for the DuckDB file at WAREHOUSE_PATH"
            )
    if env("DBT_TARGET"):
        target = dbt_target()
        if target != kind:
            raise ConfigError(
                f"DBT_TARGET={target!r} does not match the warehouse: {where} is a {kind} "
                f"warehouse. Set DBT_TARGET={kind} or unset DBT_TARGET (it follows the warehouse)"
            )
    return kind


def warehouse_dbt_target() -> str:
    """The dbt target the nightly builds with: the warehouse's kind (checked against
    `DBT_TARGET` by `warehouse_backend`)."""
    return warehouse_backend()


def warehouse() -> Any:
    """The configured `Warehouse` (warehouse/backends): DuckDB at `WAREHOUSE_PATH` unless
    `AIRFLOW_CONN_WAREHOUSE` names a server."""
    from warehouse.backends import backend_for

    return backend_for()


def warehouse_lease_target() -> Any:
    """What the run's lease is taken on: the DuckDB file (`WAREHOUSE_PATH`), or the server
    warehouse (its lease lives in the warehouse itself)."""
    if warehouse_url() is None:
        return warehouse_path()
    return warehouse()
