"""Great Expectations 1.x project of the pipeline: the file-backed context over `gx/`.

`gx/` is a GX project in GX's own layout, committed and read-only at run time:
`expectations/` holds one suite per landed table (`source_db.users`, ...,
`payments_api.fx_rates`) and one for the ETL output (`analytics.daily_sales`);
`great_expectations.yml` a pandas datasource with one dataframe asset per table;
`validation_definitions/` one per (asset, suite); `checkpoints/` one per validation
definition, whose action updates the Data Docs site (a checkpoint run stores its result).
Each expectation's native `severity` decides the gate ("critical" stops publishing,
"warning" is reported); suite `meta` names the table and the key columns by which
offending rows are shown: `{"table": "source_db.orders", "key_columns": ["id"]}`.

What a run writes (validation results, the Data Docs site) goes to a folder of its own
process under QUALITY_DOCS_DIR (`runtime_dir()`), never into `gx/`: two processes never
share a store, and a read-only checkout works.

GX's pandas type expectations cannot tell decimal128(12,2) from any other object column, so
column types are checked with `expect_column_arrow_type_to_be` (defined here, a real GX
BatchExpectation): the exact Arrow type for Arrow-backed columns (how the landed Parquet
batches are read), the type family for plain pandas columns.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import threading
import uuid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# GX logs its own internals at INFO, hundreds of lines a night (its docs registry at
# import, metrics declared twice, its config loaded and substituted for every asset): a
# task's log keeps GX's warnings and errors only.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

# Great Expectations is imported when a suite is first loaded or a frame validated, not
# with this module: the steps that only store or summarise results (dbt_build's tests as
# the suite `dbt`, quality/results.py) do not pay its import (~2 s of CPU).

GX_DIR = Path(__file__).resolve().parent.parent / "gx"
SUITES_DIR = GX_DIR / "expectations"
DOCS_SITE = "nightshift"
# Serialises this process's checkpoint runs and Data Docs publishing (one store per process).
GX_LOCK = threading.RLock()
SEVERITIES = ("critical", "warning")

LANDED_SUITES = (
    "source_db.users",
    "source_db.products",
    "source_db.orders",
    "source_db.order_items",
    "payments_api.payments",
    "payments_api.fx_rates",
)
OUTPUT_SUITES = ("analytics.daily_sales",)
ALL_SUITES = LANDED_SUITES + OUTPUT_SUITES

# Expectations that need the whole table: per-batch validation cannot decide them.
# For landed tables they are evaluated over all Parquet files (DuckDB / file metadata).
TABLE_WIDE_TYPES = frozenset(
    {
        "expect_column_values_to_be_unique",
        "expect_compound_columns_to_be_unique",
        "expect_table_row_count_to_equal",
    }
)


TYPE_FAMILIES = frozenset(
    {"decimal", "integer", "floating", "string", "date", "timestamp", "boolean"}
)


def _family(t: pa.DataType) -> str:
    checks = (
        ("decimal", pa.types.is_decimal),
        ("integer", pa.types.is_integer),
        ("floating", pa.types.is_floating),
        ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
        ("date", pa.types.is_date),
        ("timestamp", pa.types.is_timestamp),
        ("boolean", pa.types.is_boolean),
    )
    for name, check in checks:
        if check(t):
            return name
    return str(t)


def _parse_arrow_type(text: str) -> pa.DataType:
    """The few Arrow type spellings used in the suites -> pa.DataType."""
    simple = {
        "int64": pa.int64(),
        "int32": pa.int32(),
        "string": pa.string(),
        "large_string": pa.large_string(),
        "bool": pa.bool_(),
        "double": pa.float64(),
        "date32[day]": pa.date32(),
    }
    if text in simple:
        return simple[text]
    if text.startswith("decimal128(") and text.endswith(")"):
        precision, scale = (int(x) for x in text[len("decimal128(") : -1].split(","))
        return pa.decimal128(precision, scale)
    if text.startswith("timestamp[") and text.endswith("]"):
        inner = [p.strip() for p in text[len("timestamp[") : -1].split(",")]
        tz = inner[1].removeprefix("tz=") if len(inner) > 1 else None
        return pa.timestamp(inner[0], tz=tz)
    raise ValueError(f"unsupported Arrow type in a suite: {text!r}")


def observed_arrow_type(series: pd.Series) -> tuple[pa.DataType | None, bool]:
    """(Arrow type of a pandas column, exact?): exact for ArrowDtype, inferred otherwise."""
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return dtype.pyarrow_dtype, True
    sample = series.dropna().head(1000)
    try:
        inferred = pa.array(sample, from_pandas=True).type if len(sample) else None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None, False
    if inferred is not None and pa.types.is_null(inferred):
        inferred = None
    return inferred, False


@cache
def register_expectations() -> type:
    """Define (and so register with GX) the project's own expectation, once per process:
    `expect_column_arrow_type_to_be`. Returns its class."""
    from great_expectations.expectations.expectation import BatchExpectation

    class ExpectColumnArrowTypeToBe(BatchExpectation):
        """Expect a column to exist and to have an Arrow type.

        Exact comparison (`decimal128(12, 2)`, `timestamp[us, tz=UTC]`) when the column is Arrow
        backed (pd.ArrowDtype); otherwise the type family of the values (decimal, integer,
        string, date, timestamp, ...). A column with only NULLs in a plain pandas frame passes.
        """

        column: str
        type_: str

        metric_dependencies: ClassVar[tuple[str, ...]] = ("table.column_types",)
        success_keys: ClassVar[tuple[str, ...]] = ("column", "type_")
        args_keys: ClassVar[tuple[str, ...]] = ("column", "type_")

        def _validate(
            self,
            metrics: dict,
            runtime_configuration: dict | None = None,
            execution_engine: Any = None,
        ) -> dict:
            column = self.configuration.kwargs["column"]
            expected_text = self.configuration.kwargs["type_"]
            types = {d["name"]: d["type"] for d in metrics["table.column_types"]}
            if column not in types:
                return {"success": False, "result": {"observed_value": "<missing column>"}}
            dtype = types[column]
            if expected_text in TYPE_FAMILIES:  # any precision/width of the family will do
                if isinstance(dtype, pd.ArrowDtype):
                    observed = dtype.pyarrow_dtype
                else:
                    df, _, _ = execution_engine.get_compute_domain({}, domain_type="table")
                    observed, _ = observed_arrow_type(df[column])
                    if observed is None:
                        return {
                            "success": True,
                            "result": {"observed_value": f"{dtype} (no values)"},
                        }
                return {
                    "success": _family(observed) == expected_text,
                    "result": {"observed_value": str(observed)},
                }
            expected = _parse_arrow_type(expected_text)
            if isinstance(dtype, pd.ArrowDtype):
                observed = dtype.pyarrow_dtype
                return {
                    "success": observed == expected,
                    "result": {"observed_value": str(observed)},
                }
            # Plain pandas column: infer from the values through the execution engine's frame.
            df, _, _ = execution_engine.get_compute_domain({}, domain_type="table")
            inferred, _ = observed_arrow_type(df[column])
            if inferred is None:
                return {"success": True, "result": {"observed_value": f"{dtype} (no values)"}}
            success = _family(inferred) == _family(expected)
            return {
                "success": success,
                "result": {"observed_value": f"{inferred} (pandas {dtype})"},
            }

    return ExpectColumnArrowTypeToBe


def suite_path(name: str) -> Path:
    """Where GX's expectations store keeps suite `name`: `gx/expectations/<a>/<b>.json`."""
    return SUITES_DIR.joinpath(*name.split(".")).with_suffix(".json")


@cache
def _raw_suite(name: str) -> dict[str, Any]:
    path = suite_path(name)
    if not path.exists():
        raise KeyError(f"no expectation suite {name!r} (looked for {path})")
    data = json.loads(path.read_text())
    if data.get("name") != name:
        raise ValueError(f"{path}: suite name {data.get('name')!r} != file name {name!r}")
    ids = [exp.get("id") for exp in data["expectations"]]
    for exp in data["expectations"]:
        if not exp.get("id") or ids.count(exp["id"]) > 1:
            raise ValueError(
                f"{path}: {exp['type']} {exp.get('kwargs')} needs an id of its own (the gate "
                "matches GX's results by it): add one, e.g. from "
                "`python -c 'import uuid; print(uuid.uuid4())'`"
            )
        if exp.get("severity") not in SEVERITIES:
            raise ValueError(
                f"{path}: {exp['type']} (id {exp.get('id')}) has severity "
                f"{exp.get('severity')!r}: set it to one of {SEVERITIES}"
            )
    return data


def suite_json(name: str) -> dict[str, Any]:
    """The suite file's content (a fresh copy), read without importing GX."""
    return json.loads(json.dumps(_raw_suite(name)))


def load_suite(name: str) -> ExpectationSuite:
    """The GX ExpectationSuite `name` from the project's expectations store."""
    return gx_context().suites.get(name)


def suite_meta(name: str) -> dict[str, Any]:
    return dict(_raw_suite(name).get("meta") or {})


def suite_for_table(source: str, table: str) -> str:
    name = f"{source}.{table}"
    if name not in ALL_SUITES:
        raise KeyError(f"no expectation suite for table {name}")
    return name


_CONTEXT: dict[int, tuple[Any, Path]] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _new_runtime_dir() -> Path:
    """A folder of this process under QUALITY_DOCS_DIR for GX's results and site; the
    folders of this host's dead processes (killed, or ended without exit handlers) go."""
    from core import settings

    host = socket.gethostname()
    root = settings.quality_docs_dir() / ".gx-runtime"
    if root.is_dir():
        for old in root.glob(f"{host}-*-*"):
            pid = old.name.removeprefix(f"{host}-").split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    path = root / f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _disable_batch_fingerprint() -> None:
    """Set GX's pandas fingerprint threshold to 0 (see `_context`); a GX without the
    setting is refused here instead of silently making every gate several times slower."""
    from great_expectations.execution_engine import pandas_execution_engine

    if not isinstance(getattr(pandas_execution_engine, "HASH_THRESHOLD", None), int | float):
        raise RuntimeError(
            "great_expectations.execution_engine.pandas_execution_engine.HASH_THRESHOLD is "
            "gone: this GX version fingerprints batches another way; find its switch (or "
            "pass frames that hash cheaply) before upgrading, the gates depend on it"
        )
    pandas_execution_engine.HASH_THRESHOLD = 0


def _context() -> tuple[Any, Path]:
    """This process's file-backed GX context over `gx/` and its runtime folder, made once
    per process (a forked child makes its own: it must not share its parent's stores).

    GX fingerprints every pandas batch below 1 GB with `pd.util.hash_pandas_object`, a
    batch marker only (`pandas_data_fingerprint`), and has no public setting for it: every
    pandas asset, the dataframe asset included, goes through the same batch loading. It is
    switched off here through the engine's `HASH_THRESHOLD` (`_disable_batch_fingerprint`).
    Measured on 200k landed orders, gate CPU in one process, best of 3: 0.64 s with the
    fingerprint off; 4.88 s with it on (pandas hashes Arrow timestamps one Python object per
    value, ~0.8 s per column); 0.86 s with it on and the timestamps handed over as
    datetime64 (lossless, zero-copy), the decimal columns still hashed as Decimal objects
    (~0.18 s per column), with no exact pandas dtype to hand them over as. 1M rows: 3.46 s,
    24.30 s, 4.58 s.
    """
    with GX_LOCK:
        made = _CONTEXT.get(os.getpid())
        if made is not None:
            return made
        import great_expectations as gx

        register_expectations()
        _disable_batch_fingerprint()
        runtime = _new_runtime_dir()
        context = gx.get_context(
            mode="file",
            context_root_dir=str(GX_DIR),
            runtime_environment={"gx_runtime_dir": str(runtime)},
        )
        _CONTEXT.clear()
        _CONTEXT[os.getpid()] = (context, runtime)
        return context, runtime


def gx_context() -> Any:
    """The process's one file-backed GX context (validation and Data Docs share it)."""
    return _context()[0]


def runtime_dir() -> Path:
    """The process's folder for GX's validation results (`validations/`) and Data Docs
    site (`data_docs/`), under QUALITY_DOCS_DIR."""
    return _context()[1]


def checkpoint(name: str) -> Any:
    """The checkpoint of suite `name` (its one validation definition, on the dataframe
    asset of the same name; its action updates the Data Docs site)."""
    return gx_context().checkpoints.get(name)
