"""Resolve configuration once, at the edge.

Connections follow Airflow's convention (`AIRFLOW_CONN_<ID>` environment variables),
so the same values are read inside Airflow tasks and in plain Python (tests, CLI).
Inside Airflow, a connection defined in the metadata DB or a secrets backend is also
found. Everything else is a plain environment variable with a documented default: a
field of `NightshiftSettings` (type, default, bounds) read through its reader function,
or, outside this module, read through `env()`. Either way an empty or blank value means
unset (tests/test_configuration.py checks that every variable read is in `.env.example`
and docs/configuration.md's table).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, overload
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SOURCE_DB_CONN_ID = "source_db"
SOURCE_DB_REPLICA_CONN_ID = "source_db_replica"
PAYMENTS_API_CONN_ID = "payments_api"


class ConfigError(RuntimeError):
    """A required setting is missing or invalid; the message names it."""


@overload
def env(name: str) -> str | None: ...
@overload
def env(name: str, default: str) -> str: ...
def env(name: str, default: str | None = None) -> str | None:
    """Environment variable `name`, stripped; unset, empty or whitespace: `default`.

    How the project reads a variable that is not a field of `NightshiftSettings`:
    `.env.example` leaves optional variables empty (`NIGHTSHIFT_DATA_DIR=`), and empty
    must mean "unset", never "" or the current directory.
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


# --- plain variables: one model, read at call time -------------------------------------

DUCKDB_MEMORY_LIMIT_DEFAULT = "512MB"  # also dbt_project/profiles.yml's default
_DUCKDB_MEMORY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|B)$", re.IGNORECASE)
_DRIFT_SPEC = re.compile(r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.:-]*\.(\*|[^,]+))$")
_RAW_TABLES = ("users", "products", "orders", "order_items", "payments", "fx_rates")

DbtTarget = Literal["duckdb", "postgres", "snowflake", "bigquery"]
DBT_TARGETS: tuple[str, ...] = get_args(DbtTarget)

# A validator's ValueError reads after "NAME='value' " in the ConfigError.


def _s3_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(
            "is not s3://bucket/prefix; unset it to keep the folders under NIGHTSHIFT_DATA_DIR"
        )
    return url.rstrip("/")


def _memory_size(value: str) -> str:
    if not _DUCKDB_MEMORY_RE.match(value):
        raise ValueError(
            f"is not a size such as 512MB or 2GiB (unset: {DUCKDB_MEMORY_LIMIT_DEFAULT})"
        )
    return value.replace(" ", "")


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not an IANA time zone name") from None
    return name


def _comma_list(raw: str | tuple[str, ...]) -> tuple[str, ...]:
    """`" a, b ,a"` → `("a", "b")`: stripped, blanks dropped, the first of repeats kept."""
    items = raw.split(",") if isinstance(raw, str) else raw
    return tuple(dict.fromkeys(item.strip() for item in items if item.strip()))


def _drift_specs(specs: tuple[str, ...]) -> tuple[str, ...]:
    for spec in specs:
        if not _DRIFT_SPEC.match(spec):
            raise ValueError(
                f"is refused: {spec!r} is not <table>.<column> (or <table>.*), e.g. orders.total"
            )
    return specs


def _source_tables(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name != "*" and name not in _RAW_TABLES:
            raise ValueError(
                f"is refused: {name!r} is not a source table; use {', '.join(_RAW_TABLES)} or *"
            )
    return names


TASK_TIMEOUT_MINUTES_DEFAULT = 180
TASK_TIMEOUT_MINUTES_MIN = 1


@cache
def _settings_model() -> type[BaseSettings]:
    """`NightshiftSettings`, built when first used: importing pydantic-settings and building
    the model cost a DAG file's parse ~95 ms, and a parse reads `TASK_TIMEOUT_MINUTES` only
    (`task_timeout_minutes` reads it without the model)."""
    from pydantic import AfterValidator, BeforeValidator, Field, model_validator
    from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

    CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]

    class NightshiftSettings(BaseSettings):
        """The plain environment variables, one field each, named as the variable: its type,
        default, bounds and meaning. Only the process environment is read (`make` reads
        `.env`); an empty or blank value is unset."""

        model_config = SettingsConfigDict(
            case_sensitive=True, env_ignore_empty=True, frozen=True, use_attribute_docstrings=True
        )

        # Folders and files: unset, under NIGHTSHIFT_DATA_DIR (default data/) or in config/;
        # relative paths resolve against the current folder when read.
        NIGHTSHIFT_DATA_DIR: Path | None = None
        NIGHTSHIFT_DATA_URL: Annotated[str, AfterValidator(_s3_url)] | None = None
        NIGHTSHIFT_DATA_STAGE: Path | None = None
        NIGHTSHIFT_LANDING_URL: str | None = None
        NIGHTSHIFT_LANDING_STAGE: Path | None = None
        LANDING_DIR: Path | None = None
        NIGHTSHIFT_QUARANTINE_URL: str | None = None
        NIGHTSHIFT_QUARANTINE_STAGE: Path | None = None
        QUARANTINE_DIR: Path | None = None
        REPORT_DIR: Path | None = None
        QUALITY_DOCS_DIR: Path | None = None
        WAREHOUSE_PATH: Path | None = None
        EXTRACT_CONFIG: Path | None = None
        RETENTION_CONFIG: Path | None = None
        GUARDS_CONFIG: Path | None = None
        ALERTS_CONFIG: Path | None = None
        SOURCE_DB_SHARD_MAP: Path | None = None

        FX_REVISION_DAYS: int = Field(7, ge=0)
        """Trailing business days whose FX rates are asked again every night (0: never)."""
        FUTURE_TOLERANCE_MINUTES: int = Field(60, ge=0)
        """How far past the pipeline's clock an `updated_at` may be before it is quarantined."""
        WATERMARK_MAX_JUMP_DAYS: int = Field(30, ge=0)
        """The furthest the payments watermark may move in one run (0: no limit)."""
        EXTRACT_PARALLELISM: int = Field(1, ge=1)
        """Key ranges of a large table read at once, unless its config sets `parallel_ranges`."""
        SOURCE_DB_SHARD_WORKERS: int = Field(8, ge=1)
        """Shards extracted at the same time."""
        SOURCE_CONNECT_TIMEOUT_S: int = Field(30, ge=1)
        """Seconds to open a source database connection."""
        SOURCE_STATEMENT_TIMEOUT_S: int = Field(3600, ge=0)
        """Seconds one statement of the extract (a whole COPY too) may run on the source (0: none)."""
        SOURCE_READ_STALL_TIMEOUT_S: int = Field(600, ge=1)
        """Seconds a source read may receive nothing before the extract fails naming the table."""
        SOURCE_DB_REPLICA_MAX_LAG_SECONDS: float = Field(300, ge=0)
        """The most lag a replica may have."""
        SOURCE_DB_REPLICA_ON_LAG: Literal["primary", "fail"] = "primary"
        """A replica past its lag: read the primary instead, or fail."""
        ACCEPT_SCHEMA_DRIFT: Annotated[CommaList, AfterValidator(_drift_specs)] = ()
        """`<table>.<column>` (or `<table>.*`) whose schema drift this run lands anyway."""
        ACCEPT_STALE_SOURCES: Annotated[CommaList, AfterValidator(_source_tables)] = ()
        """Raw tables (or `*`) whose error-level staleness this run publishes as a warning."""
        NIGHTSHIFT_DUCKDB_MEMORY_LIMIT: Annotated[str, AfterValidator(_memory_size)] = (
            DUCKDB_MEMORY_LIMIT_DEFAULT
        )
        """DuckDB's `memory_limit` (warehouse and dbt): past it DuckDB spills to disk."""
        DBT_TARGET: DbtTarget | None = None
        """The dbt target; unset: the warehouse's kind (`warehouse_backend` checks the two)."""
        DBT_TIMEOUT_S: int = Field(3600, ge=0)
        """Seconds one dbt invocation may run before it is stopped (0: none)."""
        WAREHOUSE_LEASE_TTL_MINUTES: float = Field(30, gt=0)
        """A warehouse lease not renewed for this long is expired: the next run takes it over."""
        WAREHOUSE_LEASE_WAIT_S: float = Field(60, ge=0)
        """Seconds a run waits for another run's warehouse lease before it fails."""
        REPORT_TZ: Annotated[str, AfterValidator(_time_zone)] = "UTC"
        """The IANA time zone of the report's business days."""
        TASK_TIMEOUT_MINUTES: int = Field(TASK_TIMEOUT_MINUTES_DEFAULT, ge=TASK_TIMEOUT_MINUTES_MIN)
        """Every Airflow task's `execution_timeout`, read when the DAG files are parsed."""
        STATSD_HOST: str | None = None
        """Where run metrics go as StatsD gauges (unset: nowhere)."""
        STATSD_PORT: int = Field(8125, ge=1, le=65535)

        @model_validator(mode="before")
        @classmethod
        def _blank_is_unset(cls, values: Any) -> Any:
            """Every value stripped; a blank one (`NAME=  `) left out: its field's default."""
            if not isinstance(values, dict):
                return values
            stripped = {k: v.strip() if isinstance(v, str) else v for k, v in values.items()}
            return {k: v for k, v in stripped.items() if v != ""}

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any, **_: Any
        ) -> tuple[Any, ...]:
            """The process environment only: no `.env` file, no secrets folder."""
            return init_settings, env_settings

    # named in reprs and pickles as the module attribute it is read through
    NightshiftSettings.__qualname__ = "NightshiftSettings"
    return NightshiftSettings


def __getattr__(name: str) -> Any:
    """`NightshiftSettings`, the model, is built on first access (`_settings_model`)."""
    if name == "NightshiftSettings":
        return _settings_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_PROBLEMS = {
    "int_parsing": "is not an integer",
    "int_from_float": "is not an integer",
    "float_parsing": "is not a number",
    "greater_than_equal": "must be >= {ge:g}",
    "greater_than": "must be > {gt:g}",
    "less_than_equal": "must be <= {le:g}",
    "literal_error": "is not one of {expected}",
}


def _refusal(error: Any) -> ConfigError:
    """A pydantic error of one field → ConfigError naming the variable, the value and what
    is accepted: `FX_REVISION_DAYS='-1' must be >= 0`."""
    name, value, ctx = error["loc"][0], error["input"], error.get("ctx") or {}
    if error["type"] == "value_error":  # one of the validators above
        problem = str(ctx["error"])
    elif error["type"] in _PROBLEMS:
        # literal_error's "'primary' or 'fail'" → "primary, fail"
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        problem = _PROBLEMS[error["type"]].format(**{**ctx, "expected": expected})
    else:
        problem = f"is refused: {error['msg']}"
    return ConfigError(f"{name}={value!r} {problem}")


@dataclass(frozen=True)
class _Snapshot:
    """The model of one environment (`raw`: each field's variable as `env` reads it) and
    the refusal of each field that did not validate (that field holds its default)."""

    raw: dict[str, str | None]
    model: BaseSettings  # a NightshiftSettings
    refused: dict[str, ConfigError]


_last: _Snapshot | None = None


def _load() -> _Snapshot:
    """Validate the environment (a few ms): every field, a refused one replaced by its
    default so that the others still load."""
    global _last
    from pydantic import ValidationError

    model_class = _settings_model()
    raw = {name: env(name) for name in model_class.model_fields}
    refused: dict[str, ConfigError] = {}
    try:
        model = model_class()
    except ValidationError as exc:
        for error in exc.errors():
            refused.setdefault(error["loc"][0], _refusal(error))
        model = model_class(**{name: model_class.model_fields[name].default for name in refused})
    _last = _Snapshot(raw, model, refused)
    return _last


def setting(name: str) -> Any:
    """Field `name` of `NightshiftSettings` for the environment of the moment (tests change
    it between calls); ConfigError naming the variable, its value and what is accepted
    when it is refused. A field depends on its own variable only, so the model is
    validated again when that variable changed, and one bad variable fails its own
    readers, never another's."""
    snapshot = _last
    if snapshot is None or snapshot.raw[name] != env(name):
        snapshot = _load()
    if name in snapshot.refused:
        raise snapshot.refused[name]
    return getattr(snapshot.model, name)


class _FieldReader:
    """Calling it gives field `name` of `NightshiftSettings` (`setting`); like a function
    documented by the field, its `__doc__` and `__annotations__` are the field's, looked up
    when asked for (the model is built on first use)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> Any:
        return setting(self.name)

    def __repr__(self) -> str:
        return f"<reader of {self.name}>"

    @property
    def __doc__(self) -> str:
        field = _settings_model().model_fields[self.name]
        return f"`{self.name}` (default {field.default!r}): {field.description}"

    @property
    def __annotations__(self) -> dict[str, Any]:
        return {"return": _settings_model().model_fields[self.name].annotation}


_PLAIN_INT = re.compile(r"[0-9]{1,18}")


class _TaskTimeoutReader(_FieldReader):
    """`TASK_TIMEOUT_MINUTES`, read by every DAG file at parse time: unset, or plain digits
    at or above its minimum, it is read without the model (no pydantic-settings in the
    parse); any other value goes to the model, so what is accepted and the refusal are
    the model's own."""

    __slots__ = ()

    def __call__(self) -> int:
        raw = env(self.name)
        if raw is None:
            return TASK_TIMEOUT_MINUTES_DEFAULT
        if _PLAIN_INT.fullmatch(raw) and int(raw) >= TASK_TIMEOUT_MINUTES_MIN:
            return int(raw)
        return setting(self.name)


fx_revision_days = _FieldReader("FX_REVISION_DAYS")
future_tolerance_minutes = _FieldReader("FUTURE_TOLERANCE_MINUTES")
watermark_max_jump_days = _FieldReader("WATERMARK_MAX_JUMP_DAYS")
extract_parallelism = _FieldReader("EXTRACT_PARALLELISM")
shard_max_workers = _FieldReader("SOURCE_DB_SHARD_WORKERS")
source_connect_timeout_s = _FieldReader("SOURCE_CONNECT_TIMEOUT_S")
source_statement_timeout_s = _FieldReader("SOURCE_STATEMENT_TIMEOUT_S")
source_read_stall_timeout_s = _FieldReader("SOURCE_READ_STALL_TIMEOUT_S")
replica_max_lag_seconds = _FieldReader("SOURCE_DB_REPLICA_MAX_LAG_SECONDS")
replica_on_lag = _FieldReader("SOURCE_DB_REPLICA_ON_LAG")
accept_stale_sources = _FieldReader("ACCEPT_STALE_SOURCES")
duckdb_memory_limit = _FieldReader("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT")
dbt_timeout_s = _FieldReader("DBT_TIMEOUT_S")
warehouse_lease_wait_seconds = _FieldReader("WAREHOUSE_LEASE_WAIT_S")
report_tz_name = _FieldReader("REPORT_TZ")
task_timeout_minutes = _TaskTimeoutReader("TASK_TIMEOUT_MINUTES")


def report_tz() -> ZoneInfo:
    return ZoneInfo(report_tz_name())


def dbt_target() -> str:
    """`DBT_TARGET`, default duckdb."""
    return setting("DBT_TARGET") or "duckdb"


def statsd_address() -> tuple[str | None, int]:
    """`STATSD_HOST` / `STATSD_PORT` (8125): where run metrics go as StatsD gauges."""
    return setting("STATSD_HOST"), setting("STATSD_PORT")


def warehouse_lease_ttl_seconds() -> float:
    """`WAREHOUSE_LEASE_TTL_MINUTES` (default 30), in seconds."""
    return setting("WAREHOUSE_LEASE_TTL_MINUTES") * 60


def accept_schema_drift(param: str | None = None) -> tuple[str, ...]:
    """`ACCEPT_SCHEMA_DRIFT` plus the DAG param `accept_schema_drift` (default: none):
    comma-separated `<table>.<column>` (or `<table>.*`) whose schema drift (a dropped
    column, a type change that is not a lossless widening) this run lands anyway; the
    landing records it in the manifest, the load in `ops.guard_overrides`."""
    from_env = setting("ACCEPT_SCHEMA_DRIFT")
    try:
        from_param = _drift_specs(_comma_list(param or ""))
    except ValueError as exc:
        raise ConfigError(f"accept_schema_drift={param!r} {exc}") from None
    return tuple(dict.fromkeys((*from_env, *from_param)))


def _path(name: str, default: Path) -> Path:
    """Path variable `name` (unset: `default`), resolved against the current folder."""
    return (setting(name) or default).resolve()


def _optional_path(name: str) -> Path | None:
    value = setting(name)
    return value.resolve() if value else None


def extract_config_path() -> Path | None:
    """`EXTRACT_CONFIG`: optional YAML overriding the per-table extract settings."""
    return _optional_path("EXTRACT_CONFIG")


def retention_config_path() -> Path:
    """`RETENTION_CONFIG` (default config/retention.yml): what a successful night prunes."""
    return _path("RETENTION_CONFIG", PROJECT_ROOT / "config" / "retention.yml")


def guards_config_path() -> Path:
    """`GUARDS_CONFIG` (default config/guards.yml): limits of the load's guards."""
    return _path("GUARDS_CONFIG", PROJECT_ROOT / "config" / "guards.yml")


def alerts_config_path() -> Path | None:
    """`ALERTS_CONFIG`: the alert thresholds file (default config/alerts.yml)."""
    return _optional_path("ALERTS_CONFIG")


def shard_map_path() -> Path | None:
    """`SOURCE_DB_SHARD_MAP`: optional YAML/JSON virtual-shard map (docs/sharding.md).

    When set, `source_db` is the logical source behind that map (each shard has its own
    `url` or `conn_id`) and `AIRFLOW_CONN_SOURCE_DB` is not read; unset: one database.
    """
    path = _optional_path("SOURCE_DB_SHARD_MAP")
    if path is not None and not path.is_file():
        raise ConfigError(f"SOURCE_DB_SHARD_MAP: file {path} does not exist")
    return path


def data_dir() -> Path:
    return _path("NIGHTSHIFT_DATA_DIR", PROJECT_ROOT / "data")


def data_url() -> str | None:
    """`NIGHTSHIFT_DATA_URL=s3://bucket/prefix`: the shared folders on object storage, the
    same names as under `NIGHTSHIFT_DATA_DIR` (`landing/`, `quarantine/`, `runs/`,
    `report/`, `docs/quality/`), for workers on several hosts; None (unset): local."""
    return setting("NIGHTSHIFT_DATA_URL")


def _kind_url(name: str, kind: str) -> str:
    """`name` (`NIGHTSHIFT_LANDING_URL`, …) when set, else `<NIGHTSHIFT_DATA_URL>/<kind>`,
    else "" (the local folder)."""
    root = data_url()
    return setting(name) or (f"{root}/{kind}" if root else "")


def data_stage_dir() -> Path:
    """`NIGHTSHIFT_DATA_STAGE` (default `DATA_DIR/data-stage`): this host's local copy of
    the report and Data Docs folders when `NIGHTSHIFT_DATA_URL` is set."""
    return _path("NIGHTSHIFT_DATA_STAGE", data_dir() / "data-stage")


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
        return _path("NIGHTSHIFT_LANDING_STAGE", data_dir() / "landing-stage")
    if url:
        return Path(url.removeprefix("file://")).resolve()
    return _path("LANDING_DIR", data_dir() / "landing")


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
        return _path("NIGHTSHIFT_QUARANTINE_STAGE", data_dir() / "quarantine-stage")
    if url:
        return Path(url.removeprefix("file://")).resolve()
    return _path("QUARANTINE_DIR", data_dir() / "quarantine")


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
    return _path("REPORT_DIR", data_dir() / "report")


def quality_docs_dir() -> Path:
    """Great Expectations Data Docs (static site), one folder per pipeline step; with
    `NIGHTSHIFT_DATA_URL`, the local copy each built site is pushed from."""
    if data_url():
        return data_stage_dir() / "docs" / "quality"
    return _path("QUALITY_DOCS_DIR", data_dir() / "docs" / "quality")


def warehouse_path() -> Path:
    return _path("WAREHOUSE_PATH", data_dir() / "warehouse.duckdb")


def dbt_project_dir() -> Path:
    return PROJECT_ROOT / "dbt_project"


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


def safe_warehouse_url(uri: str) -> str:
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
        where = f"AIRFLOW_CONN_WAREHOUSE ({safe_warehouse_url(uri)})"
        if not kind:
            raise ConfigError(
                f"{where}: scheme {scheme!r} is not a warehouse; use postgresql://, "
                "snowflake:// or bigquery://, or unset it for the DuckDB file at WAREHOUSE_PATH"
            )
    target = setting("DBT_TARGET")
    if target:
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
