"""Great Expectations 1.x suites of the pipeline: loaded from `quality/expectations/*.json`.

One suite per landed table (`source_db.users`, ..., `payments_api.fx_rates`) and one for the
ETL output (`analytics.daily_sales`), kept as version-controlled JSON in GX's own
ExpectationSuite format. Each expectation carries its severity in `meta.severity`
("critical" stops publishing, "warning" is reported); the loader mirrors it into GX's native
`severity` field.

Suite-level `meta` says which table the suite guards and by which key columns offending rows
are named: `{"table": "source_db.orders", "key_columns": ["id"]}`.

GX's pandas type expectations cannot tell decimal128(12,2) from any other object column, so
column types are checked with `expect_column_arrow_type_to_be` (defined here, a real GX
BatchExpectation): the exact Arrow type for Arrow-backed columns (how the landed Parquet
batches are read), the type family for plain pandas columns.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

# Great Expectations is imported when a suite is first loaded or a frame validated, not
# with this module: the steps that only store or summarise results (dbt_build's tests as
# the suite `dbt`, quality/results.py) do not pay its import (~2 s of CPU).

SUITES_DIR = Path(__file__).resolve().parent / "expectations"
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


@cache
def _raw_suite(name: str) -> dict[str, Any]:
    path = SUITES_DIR / f"{name}.json"
    if not path.exists():
        raise KeyError(f"no expectation suite {name!r} (looked for {path})")
    data = json.loads(path.read_text())
    if data.get("name") != name:
        raise ValueError(f"{path}: suite name {data.get('name')!r} != file name {name!r}")
    for exp in data["expectations"]:
        severity = (exp.get("meta") or {}).get("severity")
        if severity not in SEVERITIES:
            raise ValueError(f"{path}: {exp['type']} has no meta.severity in {SEVERITIES}")
    return data


def suite_json(name: str) -> dict[str, Any]:
    """The suite file's content (a fresh copy)."""
    return json.loads(json.dumps(_raw_suite(name)))


def load_suite(name: str, *, exclude_types: frozenset[str] = frozenset()) -> ExpectationSuite:
    """A GX ExpectationSuite from `quality/expectations/<name>.json` (severity from meta)."""
    from great_expectations.core.expectation_suite import ExpectationSuite

    register_expectations()
    data = suite_json(name)
    data["expectations"] = [e for e in data["expectations"] if e["type"] not in exclude_types]
    for exp in data["expectations"]:
        exp["severity"] = exp["meta"]["severity"]
    return ExpectationSuite(**data)


def suite_meta(name: str) -> dict[str, Any]:
    return dict(_raw_suite(name).get("meta") or {})


def suite_for_table(source: str, table: str) -> str:
    name = f"{source}.{table}"
    if name not in ALL_SUITES:
        raise KeyError(f"no expectation suite for table {name}")
    return name


@cache
def _context_and_batch_definition() -> tuple[Any, Any]:
    """One ephemeral GX context per process, with a whole-dataframe batch definition.

    GX fingerprints every pandas batch below 1 GB with `pd.util.hash_pandas_object` (a
    batch marker only, twice per validation); on Arrow-backed frames that costs ~4 s per
    200k rows, more than all the expectations together. It is switched off here.
    """
    import great_expectations as gx
    from great_expectations.execution_engine import pandas_execution_engine

    register_expectations()
    pandas_execution_engine.HASH_THRESHOLD = 0
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    asset = context.data_sources.add_pandas("nightshift_frames").add_dataframe_asset("frame")
    return context, asset.add_batch_definition_whole_dataframe("whole_frame")


def gx_context() -> Any:
    """The process's one ephemeral GX context (validation and the Data Docs build share
    it: `quality.results.build_data_docs`)."""
    return _context_and_batch_definition()[0]


def gx_batch(df: pd.DataFrame) -> Any:
    """A GX Batch over an in-memory pandas DataFrame."""
    _, batch_definition = _context_and_batch_definition()
    return batch_definition.get_batch(batch_parameters={"dataframe": df})
