"""Validate landed tables and ETL output against the GX suites; severity-aware gate.

- `validate_landed_table` reads a landed run's Parquet files batch by batch (pyarrow ->
  pandas, Arrow-backed dtypes) and runs the table's GX checkpoint on each batch (its
  validation definition on the batch as a dataframe; the checkpoint stores the result and
  updates Data Docs), merging the row-wise and schema outcomes. Expectations that need the whole table
  (`TABLE_WIDE_TYPES`: unique keys, row count == manifest) are evaluated over all files at
  once: uniqueness with DuckDB over the Parquet files (key columns only, spills to disk),
  the row count from the Parquet footers. Memory is bounded by `batch_rows`.
- `validate_frame` runs the suite's checkpoint on an in-memory frame (the ETL output
  before it is published).
- `SuiteResult.raise_for_critical()` raises `QualityGateError` naming the suite, the
  expectation, the table and a few offending rows; warnings never raise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core import clock, run_ids
from quality.suites import (
    GX_LOCK,
    TABLE_WIDE_TYPES,
    checkpoint,
    suite_for_table,
    suite_json,
    suite_meta,
)
from warehouse.backends.duckdb import connect

MANIFEST_NAME = "_manifest.json"
MAX_SAMPLES = 5
#: DuckDB's cap in the landed gate's uniqueness check, an in-memory connection over the
#: run's Parquet that spills past it (docs/benchmarks.md: a 51M-item first night fits)
UNIQUE_CHECK_MEMORY_LIMIT = "256MB"
ROW_COUNT_PARAMETER = "manifest_rows"


class QualityGateError(RuntimeError):
    """A critical expectation failed: the data must not be published."""

    def __init__(self, message: str, results: list[SuiteResult]) -> None:
        super().__init__(message)
        self.results = results


def jsonable(value: Any) -> Any:
    """Values from pandas/Arrow/GX -> plain JSON types (Decimal and dates as text)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return jsonable(value.item())
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


@dataclass
class ExpectationOutcome:
    """One expectation's result over a whole table (merged over its batches)."""

    suite: str
    table: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    observed_value: Any = None
    unexpected_count: int | None = None
    element_count: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs and the gate's message."""
        target = f"({self.column})" if self.column else ""
        line = (
            f"[{self.severity}] suite {self.suite}, table {self.table}: "
            f"{self.expectation}{target} {'passed' if self.success else 'FAILED'}"
        )
        if self.unexpected_count is not None and self.element_count is not None:
            line += f": {self.unexpected_count} of {self.element_count} row(s) unexpected"
        elif self.observed_value is not None:
            line += f": observed {json.dumps(jsonable(self.observed_value))}"
        expected = {k: v for k, v in self.kwargs.items() if k not in ("column", "column_list")}
        if expected:
            line += f"; expected {json.dumps(jsonable(expected), sort_keys=True)}"
        if self.samples:
            shown = "; ".join(json.dumps(s, sort_keys=True) for s in self.samples[:MAX_SAMPLES])
            line += f"; e.g. {shown}"
        if self.details.get("error"):
            line += f"; error: {self.details['error']}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


@dataclass
class SuiteResult:
    """All expectation outcomes of one suite on one table (one run)."""

    suite: str
    table: str
    run_id: str | None
    outcomes: list[ExpectationOutcome]
    rows: int | None = None
    # GX's keys of the validation results the checkpoints stored (one per batch).
    gx_keys: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        """Failed expectations of severity warning."""
        return [o for o in self.outcomes if not o.success and o.severity != "critical"]

    def raise_for_critical(self) -> None:
        raise_for_critical([self])

    def summary(self) -> str:
        status = "FAILED" if self.critical_failures else "passed"
        return (
            f"suite {self.suite} on {self.table} (run {self.run_id}): {status}; "
            f"{len(self.outcomes)} expectation(s), {len(self.critical_failures)} critical "
            f"failure(s), {len(self.warnings)} warning(s), rows={self.rows}"
        )


def raise_for_critical(results: list[SuiteResult], where: str | None = None) -> None:
    """Raise QualityGateError listing every critical failure of `results` (if any).

    `where` (e.g. "results in ops.quality_results of <warehouse>") ends the message, so
    the on-call knows where the full results are.
    """
    failing = [r for r in results if r.critical_failures]
    if not failing:
        return
    count = sum(len(r.critical_failures) for r in failing)
    lines = [f"quality gate failed: {count} critical expectation(s) failed"]
    for result in failing:
        lines.append(f"suite {result.suite}, table {result.table}, run {result.run_id}:")
        lines.extend(f"  - {o.describe()}" for o in result.critical_failures)
    if where:
        lines.append(where)
    raise QualityGateError("\n".join(lines), failing)


# --------------------------------------------------------------------------------------
# GX on one frame, and merging the per-batch outcomes


def _resolve(kwargs: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """kwargs with `{"$PARAMETER": name}` replaced by the parameter's value when known."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, Mapping) and value.get("$PARAMETER") in parameters:
            value = parameters[value["$PARAMETER"]]
        out[key] = value
    return out


def _column_of(kwargs: Mapping[str, Any]) -> str | None:
    if kwargs.get("column"):
        return str(kwargs["column"])
    if kwargs.get("column_list"):
        return ",".join(kwargs["column_list"])
    if kwargs.get("column_A"):
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return None


@dataclass
class _ExpectationTally:
    """Accumulates one expectation over the batches of a table."""

    config: dict[str, Any]
    success: bool = True
    evaluated: bool = False
    element_count: int = 0
    unexpected_count: int = 0
    missing_count: int = 0
    is_map: bool = False
    observed: Any = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    def outcome(self, suite: str, table: str) -> ExpectationOutcome:
        kwargs = _resolve(self.config["kwargs"], self.parameters)
        success = self.success
        if self.is_map and kwargs.get("mostly") is not None:
            nonmissing = self.element_count - self.missing_count
            ratio = 1.0 if nonmissing == 0 else 1 - self.unexpected_count / nonmissing
            success = success and ratio >= float(kwargs["mostly"])
        observed = self.observed
        if self.is_map and observed is None:
            observed = {
                "element_count": self.element_count,
                "unexpected_count": self.unexpected_count,
                "missing_count": self.missing_count,
            }
        return ExpectationOutcome(
            suite=suite,
            table=table,
            expectation=self.config["type"],
            column=_column_of(kwargs),
            severity=self.config["severity"],
            success=success,
            observed_value=jsonable(observed),
            unexpected_count=self.unexpected_count if self.is_map else None,
            element_count=self.element_count if self.is_map else None,
            samples=self.samples[:MAX_SAMPLES],
            kwargs=jsonable(kwargs),
            details=jsonable(self.details),
        )


@dataclass(frozen=True)
class _Batch:
    """A frame for a suite's checkpoint: its expectation parameters, the run name its
    stored result is filed under, and where its rows come from (`{"file": ...}`, added
    to every sample)."""

    df: pd.DataFrame
    parameters: Mapping[str, Any]
    run_name: str
    location: dict[str, Any] = field(default_factory=dict)


def _run_gx(
    batch: _Batch, suite_name: str, accs: list[_ExpectationTally], key_columns: list[str]
) -> Any:
    """Run the suite's checkpoint on one batch and fold each result into its accumulator;
    return the stored result's key.

    The checkpoint stores the result and updates Data Docs under the batch's run name;
    results of expectations without an accumulator (the table-wide ones of a landed
    run's batches, decided over the whole run) are left out of the gate.
    """
    by_id = {a.config["id"]: a for a in accs}
    key, result = _checkpoint_run(batch, suite_name)
    for item in result.results:
        acc = by_id.get(item.expectation_config.id)
        if acc is not None:
            _fold(acc, item, batch, key_columns)
    return key


def _checkpoint_run(batch: _Batch, suite_name: str) -> tuple[Any, Any]:
    """The suite's checkpoint on the batch, one at a time (GX_LOCK): (stored key, result)."""
    from great_expectations.core.run_identifier import RunIdentifier

    with GX_LOCK:
        checkpoint_result = checkpoint(suite_name).run(
            batch_parameters={"dataframe": batch.df},
            expectation_parameters=dict(batch.parameters),
            run_id=RunIdentifier(run_name=batch.run_name, run_time=clock.now()),
        )
    [(key, result)] = checkpoint_result.run_results.items()
    return key, result


def _fold(acc: _ExpectationTally, item: Any, batch: _Batch, key_columns: list[str]) -> None:
    """One expectation's result on one batch into its accumulator: success, the row
    counts and a few samples, the observed value, GX's details of a failure."""
    acc.evaluated = True
    info = item.exception_info or {}
    if info.get("raised_exception"):
        acc.success = False
        acc.details.setdefault("error", info.get("exception_message"))
        return
    res = dict(item.result or {})
    if not item.success:
        acc.success = False
    if "unexpected_count" in res and "element_count" in res:
        acc.is_map = True
        acc.element_count += int(res.get("element_count") or 0)
        acc.unexpected_count += int(res.get("unexpected_count") or 0)
        acc.missing_count += int(res.get("missing_count") or 0)
        if not item.success and len(acc.samples) < MAX_SAMPLES:
            found = _samples(batch.df, item, res, key_columns, batch.location)
            acc.samples.extend(found[: MAX_SAMPLES - len(acc.samples)])
    if "observed_value" in res and (acc.observed is None or not item.success):
        acc.observed = res["observed_value"]
    if not item.success and res.get("details"):
        acc.details.update(jsonable(res["details"]))


def _samples(
    df: pd.DataFrame,
    item: Any,
    res: dict[str, Any],
    key_columns: list[str],
    location: dict[str, Any],
) -> list[dict[str, Any]]:
    """A few offending rows: key columns, the checked column(s), file and row number."""
    kwargs = item.expectation_config.kwargs
    checked = [kwargs["column"]] if kwargs.get("column") else list(kwargs.get("column_list", []))
    columns = [c for c in dict.fromkeys(key_columns + checked) if c in df.columns]
    out: list[dict[str, Any]] = []
    for index in list(res.get("partial_unexpected_index_list") or [])[:MAX_SAMPLES]:
        if isinstance(index, dict) or index not in df.index:
            continue
        row = {c: jsonable(df.at[index, c]) for c in columns}
        row.update(location)
        row["row"] = int(index)
        out.append(row)
    if not out:  # no usable index: fall back to the values GX listed
        for value in list(res.get("partial_unexpected_list") or [])[:MAX_SAMPLES]:
            out.append({**({checked[0]: jsonable(value)} if checked else {}), **location})
    return out


# --------------------------------------------------------------------------------------
# Public API


def validate_frame(
    df: pd.DataFrame | pa.Table,
    suite_name: str,
    *,
    parameters: Mapping[str, Any] | None = None,
    table: str | None = None,
    run_id: str | None = None,
) -> SuiteResult:
    """Validate an in-memory frame with the suite's checkpoint (the whole suite).

    A `pa.Table` is converted with Arrow-backed dtypes (exact type checks). Table-wide
    expectations whose `$PARAMETER` is not in `parameters` (the manifest row count) are
    left out of the result (GX gets the frame's own row count for them).
    """
    if isinstance(df, pa.Table):
        df = df.to_pandas(types_mapper=pd.ArrowDtype)
    if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0:
        df = df.reset_index(drop=True)
    parameters = dict(parameters or {})
    data = suite_json(suite_name)
    skipped = [
        e
        for e in data["expectations"]
        if _missing_parameter(e["kwargs"], parameters) and e["type"] in TABLE_WIDE_TYPES
    ]
    accs = [
        _ExpectationTally(config=e, parameters=parameters)
        for e in data["expectations"]
        if e not in skipped
    ]
    gx_parameters = {**{name: len(df) for e in skipped for name in _parameters(e)}, **parameters}
    key_columns = list(suite_meta(suite_name).get("key_columns", []))
    key = _run_gx(_Batch(df, gx_parameters, run_id or "adhoc"), suite_name, accs, key_columns)
    table = table or suite_meta(suite_name).get("table", suite_name)
    return SuiteResult(
        suite=suite_name,
        table=table,
        run_id=run_id,
        outcomes=[a.outcome(suite_name, table) for a in accs],
        rows=len(df),
        gx_keys=[key],
    )


def _parameters(expectation: Mapping[str, Any]) -> list[str]:
    """The `$PARAMETER` names an expectation's kwargs use."""
    return [
        v["$PARAMETER"]
        for v in expectation["kwargs"].values()
        if isinstance(v, Mapping) and "$PARAMETER" in v
    ]


def _missing_parameter(kwargs: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    for value in kwargs.values():
        if isinstance(value, Mapping) and "$PARAMETER" in value:
            if value["$PARAMETER"] not in parameters:
                return True
    return False


def validate_landed_table(
    landing_root: Path,
    source: str,
    table: str,
    run_id: str,
    *,
    manifest: Mapping[str, Any] | None = None,
    batch_rows: int = 200_000,
) -> SuiteResult:
    """Validate one landed run (`<landing>/<source>/<table>/run=<run_id>/`) in bounded memory.

    `manifest` defaults to the run's `_manifest.json`; its `rows` is the expected row count.
    """
    suite_name = suite_for_table(source, table)
    qualified = f"{source}.{table}"
    directory = Path(landing_root) / source / table / run_ids.dir_name(run_id)
    if not directory.is_dir():
        raise FileNotFoundError(f"no landed run for {qualified} run={run_id}: {directory}")
    if manifest is None and (directory / MANIFEST_NAME).exists():
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    files = sorted(directory.glob("*.parquet"))
    data = suite_json(suite_name)
    key_columns = list(suite_meta(suite_name).get("key_columns", []))
    accs = [_ExpectationTally(config=e) for e in data["expectations"]]
    batch_accs = [a for a in accs if a.config["type"] not in TABLE_WIDE_TYPES]

    total_rows = 0
    per_file_rows: dict[str, int] = {}
    gx_keys = []
    one_batch = len(files) == 1 and pq.ParquetFile(files[0]).metadata.num_rows <= batch_rows
    for name, offset, frame in _iter_frames(files, batch_rows):
        if offset == 0:
            per_file_rows.setdefault(name, 0)
        per_file_rows[name] += len(frame)
        total_rows += len(frame)
        slice_name = f"{run_id} {name} rows {offset}-{offset + len(frame)}"
        batch = _Batch(
            frame,
            _batch_parameters(manifest, len(frame), one_batch),
            run_name=run_id if one_batch else slice_name,
            location={"file": name},
        )
        gx_keys.append(_run_gx(batch, suite_name, batch_accs, key_columns))
        del frame, batch  # one batch in memory at a time
    if not files:
        for acc in batch_accs:
            acc.success = False
            acc.details["error"] = f"no Parquet files in {directory}"

    for acc in accs:
        kind = acc.config["type"]
        if kind == "expect_table_row_count_to_equal":
            _row_count(acc, total_rows, per_file_rows, manifest, directory)
        elif kind in ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"):
            kwargs = acc.config["kwargs"]
            columns = [kwargs["column"]] if "column" in kwargs else list(kwargs["column_list"])
            _unique_over_files(acc, files, columns, key_columns)
    return SuiteResult(
        suite=suite_name,
        table=qualified,
        run_id=run_id,
        outcomes=[a.outcome(suite_name, qualified) for a in accs],
        rows=total_rows,
        gx_keys=gx_keys,
    )


def _batch_parameters(
    manifest: Mapping[str, Any] | None, rows: int, one_batch: bool
) -> dict[str, int]:
    """GX's `manifest_rows` for one batch: the manifest's rows when the batch is the whole
    run (GX's row-count result is then the gate's), else the batch's own rows (the gate
    decides the row count over all files, `_row_count`)."""
    if one_batch and manifest is not None and manifest.get("rows") is not None:
        return {ROW_COUNT_PARAMETER: int(manifest["rows"])}
    return {ROW_COUNT_PARAMETER: rows}


def _iter_frames(files: list[Path], batch_rows: int) -> Iterator[tuple[str, int, pd.DataFrame]]:
    """(file name, row offset in file, frame) per batch; an empty file yields one empty frame."""
    for path in files:
        parquet = pq.ParquetFile(path)
        try:
            if parquet.metadata.num_rows == 0:
                yield (
                    path.name,
                    0,
                    parquet.schema_arrow.empty_table().to_pandas(types_mapper=pd.ArrowDtype),
                )
                continue
            offset = 0
            for batch in parquet.iter_batches(batch_size=batch_rows):
                frame = pa.Table.from_batches([batch]).to_pandas(types_mapper=pd.ArrowDtype)
                frame.index = pd.RangeIndex(offset, offset + len(frame))
                yield path.name, offset, frame
                offset += len(frame)
        finally:
            parquet.close()


def _row_count(
    acc: _ExpectationTally,
    total_rows: int,
    per_file_rows: dict[str, int],
    manifest: Mapping[str, Any] | None,
    directory: Path,
) -> None:
    acc.evaluated = True
    acc.observed = total_rows
    acc.details["rows_per_file"] = per_file_rows
    if manifest is None or manifest.get("rows") is None:
        acc.success = False
        acc.details["error"] = f"no manifest rows to compare with ({directory / MANIFEST_NAME})"
        return
    expected = int(manifest["rows"])
    acc.parameters[ROW_COUNT_PARAMETER] = expected
    acc.details["manifest_rows"] = expected
    listed = manifest.get("files")
    if listed is not None and sorted(listed) != sorted(per_file_rows):
        acc.details["manifest_files"] = list(listed)
    acc.success = total_rows == expected
    if not acc.success:
        acc.samples = [{"landed_rows": total_rows, "manifest_rows": expected}]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _unique_over_files(
    acc: _ExpectationTally, files: list[Path], columns: list[str], key_columns: list[str]
) -> None:
    """Duplicates of `columns` across all files of the run (rows with all NULL are ignored)."""
    acc.evaluated = True
    acc.is_map = True
    if not files:
        acc.success = False
        acc.details["error"] = "no Parquet files"
        return
    cols = ", ".join(_quote(c) for c in columns)
    all_null = " and ".join(f"{_quote(c)} is null" for c in columns)
    same_key = " and ".join(f"d.{_quote(c)} is not distinct from f.{_quote(c)}" for c in columns)
    # Two passes: the duplicated keys by count alone (a hash aggregate that can spill),
    # then the files of those few keys only; listing every key's files first ran out of
    # memory at 51M order items.
    find_dups = f"""
        create temp table dups as
        select {cols}, count(*) as n
        from read_parquet($files)
        where not ({all_null})
        group by all
        having count(*) > 1
    """
    samples = f"""
        with sampled as (
            select * from dups order by n desc, {cols} limit {MAX_SAMPLES}
        )
        select {", ".join(f"d.{_quote(c)}" for c in columns)}, d.n,
               list(distinct parse_filename(f.filename) order by parse_filename(f.filename))
                   as files,
               (select sum(n) from dups) as rows_total,
               (select count(*) from dups) as keys_total
        from sampled as d
        join read_parquet($files, filename = true) as f on {same_key}
        group by all
        order by d.n desc, {", ".join(f"d.{_quote(c)}" for c in columns)}
    """
    params = {"files": [str(f) for f in files]}
    con = connect(memory_limit=UNIQUE_CHECK_MEMORY_LIMIT, threads=2, preserve_insertion_order=False)
    try:
        con.execute(find_dups, params)
        rows = con.execute(samples, params).fetchall()
        counts = con.execute(
            f"select count(*), count(*) filter (where {all_null}) from read_parquet($files)",
            params,
        ).fetchone()
    except duckdb.Error as exc:
        acc.success = False
        acc.details["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return
    finally:
        con.close()
    acc.element_count, acc.missing_count = int(counts[0]), int(counts[1])
    if not rows:
        acc.unexpected_count = 0
        return
    width = len(columns)
    acc.success = False
    acc.unexpected_count = int(rows[0][width + 2])
    acc.details["duplicated_keys"] = int(rows[0][width + 3])
    for row in rows:
        sample = {c: jsonable(v) for c, v in zip(columns, row[:width], strict=True)}
        sample["duplicates"] = int(row[width])
        sample["files"] = list(row[width + 1])
        acc.samples.append(sample)
