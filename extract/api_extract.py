"""Extract the payments API into the landing zone (docs/interfaces.md).

Payments: incremental by `updated_since` = previous watermark - overlap; every page is
pulled and streamed (never the whole window in memory), each record validated; bad
ones go to quarantine (one file per attempt in the quarantine root, never removed by a
rerun, and `_quarantine.jsonl` in the landed run directory), the rest are deduplicated
by id (latest updated_at wins, because the API may repeat records across pages and the
overlap re-reads records) and landed as one Parquet run whose manifest carries the
window (`window_start`, `window_end`) the loader stores as the next watermark. Too many
quarantined records fail the run (after writing them). Quarantined records are
re-validated and landed by `extract.replay`. FX rates: one request per day,
landed exactly as decimal128(38,18), with a per-day cache so past days are not refetched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core import clock
from core.files import write_json_atomic
from extract.api_client import PaymentsApiClient
from extract.landing import (
    DriftAcceptance,
    LandingOptions,
    LandingTarget,
    write_landing_table,
)

log = logging.getLogger(__name__)

SOURCE = "payments_api"
PAYMENTS_TABLE = "payments"
FX_TABLE = "fx_rates"

_TS = pa.timestamp("us", tz="UTC")
PAYMENTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("order_id", pa.int64()),
        pa.field("amount", pa.decimal128(18, 2)),
        pa.field("currency", pa.string()),
        pa.field("status", pa.string()),
        pa.field("method", pa.string()),
        pa.field("created_at", _TS),
        pa.field("updated_at", _TS),
    ]
)
FX_SCHEMA = pa.schema(
    [
        pa.field("rate_date", pa.date32()),
        pa.field("base", pa.string()),
        pa.field("currency", pa.string()),
        pa.field("rate", pa.decimal128(38, 18)),
    ]
)
_STRING_FIELDS = ("id", "currency", "status", "method")
_TIMESTAMP_FIELDS = ("created_at", "updated_at")
_MAX_AMOUNT = Decimal(10) ** 16  # decimal128(18,2) holds 16 integer digits
_MAX_RATE = Decimal(10) ** 20  # decimal128(38,18) holds 20 integer digits
# Plain decimal notation only: Decimal() alone would also take "NaN", "1_000", "Infinity".
_DECIMAL_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class RecordError(ValueError):
    """One field of one record is invalid."""

    def __init__(self, field: str | None, error: str):
        super().__init__(f"{field}: {error}" if field else error)
        self.field = field
        self.error = error


def _parse_timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)  # Python 3.11 accepts a trailing 'Z'
    if parsed.tzinfo is None:  # the contract says UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def validate_payment(record: Any) -> dict[str, Any]:
    """Return the record with typed values (extra fields dropped), or raise RecordError."""
    if not isinstance(record, dict):
        raise RecordError(None, f"record is a {type(record).__name__}, not an object")
    for name in PAYMENTS_SCHEMA.names:
        if name not in record or record[name] is None:
            raise RecordError(name, "missing")
    out: dict[str, Any] = {}
    for name in _STRING_FIELDS:
        value = record[name]
        if not isinstance(value, str) or not value.strip():
            raise RecordError(name, f"expected a non-empty string, got {value!r}")
        out[name] = value
    order_id = record["order_id"]
    if isinstance(order_id, bool) or not isinstance(order_id, int):
        raise RecordError("order_id", f"expected an integer, got {order_id!r}")
    if not -(2**63) <= order_id < 2**63:
        raise RecordError("order_id", f"{order_id} does not fit in int64")
    out["order_id"] = order_id
    raw_amount = record["amount"]
    if not isinstance(raw_amount, str):
        raise RecordError("amount", f"expected a decimal string, got {raw_amount!r}")
    if not _DECIMAL_RE.match(raw_amount.strip()):
        raise RecordError("amount", f"{raw_amount!r} is not a number")
    with localcontext() as ctx:
        ctx.prec = 80  # exact: never round while checking
        amount = Decimal(raw_amount.strip())
        if amount < 0:
            raise RecordError("amount", f"{raw_amount!r} is negative")
        if amount >= _MAX_AMOUNT:
            raise RecordError("amount", f"{raw_amount!r} does not fit decimal(18,2)")
        if amount != amount.quantize(Decimal("0.01")):
            raise RecordError("amount", f"{raw_amount!r} has more than 2 decimals")
        out["amount"] = amount.quantize(Decimal("0.01"))
    for name in _TIMESTAMP_FIELDS:
        value = record[name]
        if not isinstance(value, str):
            raise RecordError(name, f"expected an ISO-8601 string, got {value!r}")
        try:
            out[name] = _parse_timestamp(value)
        except ValueError:
            raise RecordError(name, f"{value!r} is not an ISO-8601 timestamp") from None
    return out


def _jsonl_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str) + "\n"


QUARANTINE_FILE_NAME = "_quarantine.jsonl"  # beside the landed Parquet, in the run directory
_FIRST_REASONS = 5
_ATTEMPT = re.compile(r"^attempt=(\d+)\.jsonl$")
STAGE_BATCH_ROWS = 2_000  # valid records buffered before they go to the staging file
STAGE_MEMORY_LIMIT = "256MB"  # DuckDB's share while deduplicating (it spills beyond)


def quarantine_dir(quarantine_root: Path, run_id: str) -> Path:
    """`<quarantine_root>/payments_api/payments/run=<run_id>/`: one file per attempt."""
    return Path(quarantine_root) / SOURCE / PAYMENTS_TABLE / f"run={run_id}"


def quarantine_files(quarantine_root: Path, run_id: str | None = None) -> list[Path]:
    """Every payments quarantine file (of one run id, or all), oldest attempt first.

    Current layout `run=<id>/attempt=<nnn>.jsonl`; files of the earlier layout
    (`run=<id>.jsonl`, one per run id, replaced by each rerun) are listed too.
    """
    table = Path(quarantine_root) / SOURCE / PAYMENTS_TABLE
    if not table.is_dir():
        return []
    found: list[Path] = []
    for entry in sorted(table.iterdir()):
        if not entry.name.startswith("run="):
            continue
        if entry.is_file() and entry.name.endswith(".jsonl"):
            if run_id is None or entry.name == f"run={run_id}.jsonl":
                found.append(entry)
        elif entry.is_dir() and (run_id is None or entry.name == f"run={run_id}"):
            attempts = [
                (int(m.group(1)), f) for f in entry.iterdir() if (m := _ATTEMPT.match(f.name))
            ]
            found.extend(f for _, f in sorted(attempts))
    return found


class _Quarantine:
    """The attempt's quarantine file, written record by record (never held in memory),
    then given its own name `attempt=<nnn>.jsonl`: an earlier attempt's file is never
    replaced or removed."""

    def __init__(self, quarantine_root: Path, run_id: str) -> None:
        self.dir = quarantine_dir(quarantine_root, run_id)
        self.count = 0
        self.reasons: list[str] = []
        self.path: Path | None = None
        self._tmp: Path | None = None
        self._fh: Any = None

    def add(self, entry: dict[str, Any]) -> None:
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._tmp = self.dir / f".tmp-attempt-{uuid.uuid4().hex[:8]}.jsonl"
            self._fh = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed in close)
        entry.setdefault("quarantined_at", clock.now().isoformat())
        self._fh.write(_jsonl_line(entry))
        self.count += 1
        if len(self.reasons) < _FIRST_REASONS:
            self.reasons.append(
                f"id={entry['record_key']!r} {entry['field'] or 'record'}: {entry['error']}"
            )

    def close(self) -> Path | None:
        """Name the file (the next free attempt number); None when nothing was quarantined."""
        if self._fh is None or self._tmp is None:
            return None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        taken = [int(m.group(1)) for f in self.dir.iterdir() if (m := _ATTEMPT.match(f.name))]
        number = max(taken, default=0) + 1
        while True:
            target = self.dir / f"attempt={number:03d}.jsonl"
            try:
                os.link(self._tmp, target)  # fails if the name exists: never replaces
            except FileExistsError:
                number += 1
                continue
            break
        self._tmp.unlink()
        self.path = target
        return target

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tmp is not None and self.path is None:
            self._tmp.unlink(missing_ok=True)


_STAGE_SCHEMA = pa.schema(
    [
        *PAYMENTS_SCHEMA,
        pa.field("_seq", pa.int64()),  # read order: among equal updated_at the later read wins
        pa.field("_digest", pa.binary()),  # the typed content, to tell duplicates from conflicts
        pa.field("_replayed", pa.bool_()),  # from the replay queue, not from the API window
        # the payload as received (for a conflict's quarantine entry)
        pa.field("_raw", pa.string()),
    ]
)


def _digest(row: dict[str, Any]) -> bytes:
    content = repr(tuple(row[name] for name in PAYMENTS_SCHEMA.names))
    return hashlib.blake2b(content.encode(), digest_size=8).digest()


class _Stage:
    """Valid records, appended to a staging Parquet file in batches of STAGE_BATCH_ROWS,
    so the window is never held in memory; deduplicated afterwards by DuckDB."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "staged.parquet"
        self.rows = 0
        self._columns: dict[str, list[Any]] = {name: [] for name in _STAGE_SCHEMA.names}
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, row: dict[str, Any], seq: int, raw: Any, replayed: bool) -> None:
        columns = self._columns
        for name in PAYMENTS_SCHEMA.names:
            columns[name].append(row[name])
        columns["_seq"].append(seq)
        columns["_digest"].append(_digest(row))
        columns["_replayed"].append(replayed)
        columns["_raw"].append(json.dumps(raw, sort_keys=True, default=str))
        self._buffered += 1
        self.rows += 1
        if self._buffered >= STAGE_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._buffered:
            return
        batch = pa.record_batch(
            [pa.array(self._columns[f.name], type=f.type) for f in _STAGE_SCHEMA],
            schema=_STAGE_SCHEMA,
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, _STAGE_SCHEMA, compression="zstd")
        self._writer.write_batch(batch)
        for values in self._columns.values():
            values.clear()
        self._buffered = 0

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class QuarantineThresholdError(RuntimeError):
    """More records were quarantined than `max_quarantined` allows; the run fails.

    Raised only after both quarantine files (and the run directory) were written.
    """

    def __init__(
        self,
        *,
        quarantined: int,
        received: int,
        threshold: int | float,
        reasons: list[str],
        quarantine_file: Path,
    ) -> None:
        self.quarantined = quarantined
        self.received = received
        self.threshold = threshold
        self.reasons = reasons
        self.quarantine_file = quarantine_file
        allowed = (
            f"{threshold} records"
            if isinstance(threshold, int)
            else f"{threshold:.2%} of {received} received"
        )
        super().__init__(
            f"payments: {quarantined} of {received} record(s) quarantined, more than "
            f"max_quarantined={threshold} ({allowed}); first reasons: {'; '.join(reasons)}; "
            f"see {quarantine_file}"
        )


class WatermarkJumpError(RuntimeError):
    """The payments watermark would move further than allowed in one run; nothing landed."""


def _invalid_record(run_id: str, record: Any, exc: RecordError) -> dict[str, Any]:
    key = record.get("id") if isinstance(record, dict) else None
    return {
        "source": SOURCE,
        "table": PAYMENTS_TABLE,
        "run_id": run_id,
        "kind": "invalid",
        "record_key": key if isinstance(key, str | int) else None,
        "field": exc.field,
        "error": exc.error,
        "record": record,
    }


def _future_record(run_id: str, record: Any, now: datetime, tolerance: timedelta) -> dict:
    """The quarantine entry of a record stamped after the run's clock (+ tolerance)."""
    return {
        "source": SOURCE,
        "table": PAYMENTS_TABLE,
        "run_id": run_id,
        "kind": "future",
        "record_key": record.get("id"),
        "field": "updated_at",
        "error": (
            f"{record.get('updated_at')!r} is later than the run's clock "
            f"{now.isoformat()} + {tolerance}: not landed, never a watermark"
        ),
        "record": record,
    }


def check_record(record: Any, latest_allowed: datetime) -> dict[str, Any]:
    """The typed record, or RecordError: the validation and the future-timestamp rule
    (`updated_at` after `latest_allowed`, the clock + tolerance), as the extract applies
    them; the replay re-applies them to quarantined records."""
    row = validate_payment(record)
    if row["updated_at"] > latest_allowed:
        raise RecordError(
            "updated_at",
            f"{record.get('updated_at')!r} is later than the clock + tolerance "
            f"({latest_allowed.isoformat()})",
        )
    return row


def _span(span: timedelta) -> str:
    """`30 days` for a whole number of days, else timedelta's own text."""
    if span % timedelta(days=1):
        return str(span)
    return f"{span.days} day" + ("" if span.days == 1 else "s")


def _check_jump(
    window: _Window,
    window_end: datetime | None,
    newest: list[tuple[str, datetime]],
    max_jump: Any,
) -> None:
    base = window.jump_base
    if window.previous_end is None or base is None or window_end is None or not max_jump:
        return
    if window_end - base <= max_jump:
        return
    shown = [f"{pid} ({when.isoformat()})" for pid, when in newest]
    read_at = "" if base == window.previous_end else f", read at {base.isoformat()}"
    raise WatermarkJumpError(
        f"payments: the watermark would jump from {window.previous_end.isoformat()}"
        f"{read_at} to {window_end.isoformat()}, more than {_span(max_jump)} in one run; "
        "newest records: "
        f"{', '.join(shown)}. Nothing was landed. If the API really moved that far (a long "
        "pause), raise WATERMARK_MAX_JUMP_DAYS (0: no limit) for one run; otherwise fix the "
        "records' updated_at at the source."
    )


def _conflict(
    run_id: str, superseded: dict[str, Any], payload: Any, kept: dict[str, Any]
) -> dict[str, Any]:
    """Quarantine entry for a copy that an equal-`updated_at` copy with other content
    replaced: the API changed the record without moving its cursor, so which one is right
    is unknown. The later read is landed; this one is kept for a person to decide."""
    fields = sorted(k for k in kept if kept[k] != superseded.get(k))
    return {
        "source": SOURCE,
        "table": PAYMENTS_TABLE,
        "run_id": run_id,
        "kind": "conflict",
        "record_key": kept["id"],
        "field": ",".join(fields),
        "error": (
            f"conflicting duplicate: a later copy with the same id and updated_at "
            f"({kept['updated_at'].isoformat()}) has other {', '.join(fields)}; "
            "the later copy was landed, this one is kept here"
        ),
        "record": payload,
    }


def _check_threshold(max_quarantined: int | float) -> None:
    if isinstance(max_quarantined, bool) or not isinstance(max_quarantined, int | float):
        raise TypeError(f"max_quarantined must be an int or a float, got {max_quarantined!r}")
    if isinstance(max_quarantined, int):
        if max_quarantined < 0:
            raise ValueError(f"max_quarantined must be >= 0, got {max_quarantined}")
    elif not 0 < max_quarantined < 1:
        raise ValueError(
            f"max_quarantined as a float is a share of received records and must be in "
            f"(0, 1), got {max_quarantined}; pass an int for a count"
        )


def _exceeds(quarantined: int, received: int, max_quarantined: int | float) -> bool:
    if isinstance(max_quarantined, int):
        return quarantined > max_quarantined
    return quarantined > max_quarantined * received


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _from_us(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAYMENT_COLUMNS = ", ".join(f'"{name}"' for name in PAYMENTS_SCHEMA.names)


def _conflicts(con: Any, run_id: str, quarantine: _Quarantine) -> int:
    """Quarantine the copies an equal-`updated_at` copy with other content replaced.

    Only ids with two contents at one `updated_at` are read back (normally none), and
    their copies are walked in read order exactly as they came: among equal
    `updated_at` the later read wins and the copy it replaced is quarantined."""
    rows = con.execute(
        "select id, _raw from staged where id in ("
        "  select id from staged group by id, updated_at having count(distinct _digest) > 1"
        ") order by id, _seq"
    ).fetchall()
    conflicts = 0
    best: tuple[dict[str, Any], Any] | None = None
    for pid, raw_text in rows:
        raw = json.loads(raw_text)
        row = validate_payment(raw)
        if best is not None and best[0]["id"] != pid:
            best = None
        if best is None or row["updated_at"] >= best[0]["updated_at"]:
            if best is not None and row["updated_at"] == best[0]["updated_at"] and row != best[0]:
                quarantine.add(_conflict(run_id, best[0], best[1], row))
                conflicts += 1
            best = (row, raw)
    return conflicts


@dataclass(frozen=True)
class PaymentsPlan:
    """What one payments extract run asks the API for and where it lands it.

    Landing target: run `run_id` under `landing_root`, this attempt's quarantine file
    under `quarantine_root`, the operator's schema-drift acceptance `accept_drift`
    (extract/landing.py `check_schema_drift`). Window: `updated_since` is the previous
    watermark (the `window_end` of the last payments run loaded into the warehouse,
    `extract.watermark.last_watermark(warehouse, "payments_api", "payments").window_end`;
    None on the first run: everything); the API is asked for
    `updated_at >= updated_since - overlap`, `page_size` records a page. `replayed`: raw
    records from the replay queue (`extract.replay.open_replays`).

    Guards: `max_quarantined` (an int: the largest allowed number of quarantined
    records; a float in (0, 1): the largest allowed share of received records); a record
    whose `updated_at` is later than `now` (None: the pipeline clock) + `future_tolerance`
    is quarantined; a window end more than `max_jump` (None: no limit) past the previous
    one fails the run. The jump counts from the later of the previous window's end and
    `previously_extracted_at` (when that window was read): an API that was quiet for a
    while, or a history older than the runs, moves the watermark up to the present
    without a jump; a run clock far past the previous run's, or a long pause, is one. A negative `overlap` or an unusable `max_quarantined` fails here.
    """

    run_id: str
    landing_root: Path
    quarantine_root: Path
    updated_since: datetime | None = None
    overlap: timedelta = timedelta(minutes=15)
    max_quarantined: int | float = 100
    page_size: int = 500
    accept_drift: DriftAcceptance = False
    now: datetime | None = None
    future_tolerance: timedelta = timedelta(hours=1)
    max_jump: timedelta | None = timedelta(days=30)
    previously_extracted_at: datetime | None = None
    replayed: Iterable[Any] = ()

    def __post_init__(self) -> None:
        _check_threshold(self.max_quarantined)
        if self.overlap < timedelta(0):
            raise ValueError(f"overlap must not be negative, got {self.overlap}")

    def window(self) -> _Window:
        """The previous watermark (in UTC) and the start of the window asked for."""
        if self.updated_since is None:
            return _Window(previous_end=None, start=None, jump_base=None)
        previous_end = _utc(self.updated_since)
        read_at = self.previously_extracted_at
        return _Window(
            previous_end=previous_end,
            start=previous_end - self.overlap,
            jump_base=previous_end if read_at is None else max(previous_end, _utc(read_at)),
        )


@dataclass(frozen=True)
class _Window:
    """The previous watermark (`previous_end`), the window's start (minus the overlap)
    and where a jump of the watermark counts from (`jump_base`)."""

    previous_end: datetime | None
    start: datetime | None
    jump_base: datetime | None


@dataclass
class _Counts:
    """Records received (replayed ones included), valid, replayed, and pages read."""

    received: int = 0
    valid: int = 0
    replayed: int = 0
    pages: int = 0


class _Intake:
    """Validates each record as it comes: valid ones to the staging file, the others
    (invalid, or stamped after `latest_allowed`) to the attempt's quarantine file."""

    def __init__(
        self, plan: PaymentsPlan, stage: _Stage, quarantine: _Quarantine, latest_allowed: datetime
    ) -> None:
        self.plan = plan
        self.stage = stage
        self.quarantine = quarantine
        self.latest_allowed = latest_allowed
        self.counts = _Counts()

    def read(self, client: PaymentsApiClient, window_start: datetime | None) -> None:
        """The replayed records first, then every page of the API's window, in order."""
        for record in self.plan.replayed:
            self.take(record, True)
        for page in client.iter_payment_pages(window_start, limit=self.plan.page_size):
            self.counts.pages += 1
            for record in page:
                self.take(record, False)

    def take(self, record: Any, from_replay: bool) -> None:
        counts = self.counts
        counts.received += 1
        try:
            row = validate_payment(record)
        except RecordError as exc:
            self.quarantine.add(_invalid_record(self.plan.run_id, record, exc))
            return
        if row["updated_at"] > self.latest_allowed:
            tolerance = self.plan.future_tolerance
            self.quarantine.add(
                _future_record(self.plan.run_id, record, self.latest_allowed - tolerance, tolerance)
            )
            return
        counts.valid += 1
        counts.replayed += from_replay
        self.stage.add(row, counts.received, record, from_replay)


@dataclass(frozen=True)
class _Outcome:
    """What the staged records decided: the new watermark `window_end`, the duplicates
    dropped, the attempt's quarantine file (None: nothing quarantined) and whether the
    quarantined records exceed `max_quarantined`."""

    window_end: datetime | None
    duplicates: int
    quarantine_file: Path | None
    exceeded: bool


def extract_payments(client: PaymentsApiClient, plan: PaymentsPlan) -> dict[str, Any]:
    """Land the payments changed since the last loaded watermark; return the manifest.

    The API is asked for `updated_at >= plan.updated_since - plan.overlap`: the overlap
    re-reads records the API made visible late; they are deduplicated by id here (latest
    `updated_at` wins) and by the loader's upsert.

    Streaming: pages are validated as they come; valid records go to a staging Parquet
    file (STAGE_BATCH_ROWS at a time) and quarantined ones straight to the attempt's
    quarantine file, so memory stays flat however large the window; DuckDB (memory
    limited to STAGE_MEMORY_LIMIT, spilling beyond) then deduplicates and sorts the
    staged records, and the winners are streamed into the landed run, which appears
    atomically (temporary directory renamed into place).

    Manifest (besides the landing fields): `mode` "incremental" (the loader upserts; a
    first run with no watermark is simply an unbounded window), `window_start`
    (updated_since - overlap, or None), `window_end` (the largest `updated_at` landed
    from the API, never before `updated_since`: a run with no new records keeps the old
    watermark; None only when there is neither a record nor a previous watermark),
    `received`, `quarantined`, `duplicates_dropped`, `pages`, `replayed`, `status`.

    Two valid copies of one id with the same `updated_at` but different content (the
    API changed a record without moving its cursor) are not a plain duplicate: the one
    read last is landed and the other is quarantined with the differing fields named,
    so neither disappears silently.

    Quarantine: a record that fails validation is not landed; it is written with the
    reason (`kind` "invalid", "future" or "conflict", `record_key`, `field`, `error`) and
    its raw payload (`record`) to this attempt's own file
    `<quarantine_root>/payments_api/payments/run=<id>/attempt=<nnn>.jsonl` (a rerun
    writes the next number and never removes an earlier attempt's file), and to
    `_quarantine.jsonl` inside the landed run directory (replaced with it).
    `window_end` only counts landed records, so a broken record that is the newest
    one does not move the watermark past itself (the next run asks for it again). But a
    broken record older than `window_end` is NOT read again by later runs (unless it
    falls within the overlap): its id comes back only if the API updates it again. The
    quarantine files are the record of it: `python -m extract.replay` re-validates them
    once the cause is fixed (see extract/replay.py).

    Replayed records (`plan.replayed`) are validated like the API's, read before the
    API's pages (an API copy with the same `updated_at` is the fresher read and wins),
    landed with the run (manifest `replayed`) and never move `window_end`.

    Too many quarantined records (`plan.max_quarantined`): the quarantine files and the
    run directory (manifest `status` "quarantine_threshold_exceeded") are written first,
    then QuarantineThresholdError is raised, so nothing is lost and the failed run must
    not be loaded.

    Guards on the watermark: a record whose `updated_at` is later than the clock +
    `future_tolerance` is quarantined with that reason and never moves the watermark
    (one record stamped 2099 would otherwise make every later run ask for nothing); a
    window whose end would move more than `max_jump` past the previous one raises
    WatermarkJumpError before anything is landed.
    """
    latest_allowed = _utc(plan.now or clock.now()) + plan.future_tolerance
    window = plan.window()
    table_dir = Path(plan.landing_root) / SOURCE / PAYMENTS_TABLE
    table_dir.mkdir(parents=True, exist_ok=True)
    stage_dir = table_dir / f".tmp-stage-{uuid.uuid4().hex[:8]}"  # not a run: readers skip
    stage_dir.mkdir()
    intake = _Intake(
        plan,
        _Stage(stage_dir),
        _Quarantine(plan.quarantine_root, plan.run_id),
        latest_allowed,
    )
    try:
        intake.read(client, window.start)
        intake.stage.close()
        return _land(intake, window)
    finally:
        intake.stage.close()
        intake.quarantine.discard()
        shutil.rmtree(stage_dir, ignore_errors=True)


def _land(intake: _Intake, window: _Window) -> dict[str, Any]:
    """Deduplicate the staged records, write the quarantine file, land the winners;
    QuarantineThresholdError after landing when too many records were quarantined."""
    plan, counts, quarantine = intake.plan, intake.counts, intake.quarantine
    con = _stage_connection(intake.stage)
    try:
        outcome = _settle(con, intake, window)
        manifest = write_landing_table(
            _winners(con),
            schema=PAYMENTS_SCHEMA,
            target=LandingTarget(
                landing_root=Path(plan.landing_root),
                source=SOURCE,
                table_name=PAYMENTS_TABLE,
                run_id=plan.run_id,
            ),
            options=LandingOptions(
                cursor_column="updated_at",
                accept_drift=plan.accept_drift,
                extra_files=(
                    {QUARANTINE_FILE_NAME: outcome.quarantine_file.read_bytes()}
                    if outcome.quarantine_file
                    else None
                ),
                extra_manifest=_payments_manifest_fields(intake, window, outcome),
            ),
        )
    finally:
        con.close()
    log.info(
        "payments: landed %d row(s) from %d page(s) in window [%s, %s] "
        "(%d duplicate(s) dropped, %d quarantined, %d replayed)",
        manifest["rows"],
        counts.pages,
        manifest["window_start"],
        manifest["window_end"],
        outcome.duplicates,
        quarantine.count,
        counts.replayed,
    )
    if outcome.exceeded:
        raise QuarantineThresholdError(
            quarantined=quarantine.count,
            received=counts.received,
            threshold=plan.max_quarantined,
            reasons=quarantine.reasons,
            quarantine_file=outcome.quarantine_file,
        )
    return manifest


def _stage_connection(stage: _Stage) -> Any:
    """An in-memory DuckDB (STAGE_MEMORY_LIMIT, 2 threads, spilling beside the staging
    file, TimeZone UTC) with the staged records as the view `staged` (an empty one when
    nothing was staged)."""
    from warehouse.backends.duckdb import connect

    con = connect(memory_limit=STAGE_MEMORY_LIMIT, threads=2, preserve_insertion_order=False)
    try:
        con.execute("set temp_directory = ?", [str(stage.path.parent / "spill")])
        if stage.rows:
            path = str(stage.path).replace("'", "''")
            con.execute(f"create view staged as select * from read_parquet('{path}')")
        else:
            con.register("staged", _STAGE_SCHEMA.empty_table())  # no file was written
    except BaseException:
        con.close()
        raise
    return con


def _settle(con: Any, intake: _Intake, window: _Window) -> _Outcome:
    """Quarantine the conflicting copies, find the new watermark (WatermarkJumpError
    when it moves too far: nothing is landed), then name the attempt's quarantine file."""
    plan, counts, quarantine = intake.plan, intake.counts, intake.quarantine
    conflicts = _conflicts(con, plan.run_id, quarantine)
    winners, max_api_us = con.execute(
        "select count(distinct id), epoch_us(max(updated_at) filter (where not _replayed)) "
        "from staged"
    ).fetchone()
    newest = con.execute(
        "select id, epoch_us(max(updated_at)) as t from staged group by id "
        "order by t desc, id desc limit 3"
    ).fetchall()
    max_landed = _from_us(max_api_us)
    candidates = [t for t in (window.previous_end, max_landed) if t is not None]
    window_end = max(candidates) if candidates else None  # never backwards
    _check_jump(
        window,
        window_end,
        [(pid, _from_us(t)) for pid, t in reversed(newest)],
        plan.max_jump,
    )
    quarantine_file = quarantine.close()
    if quarantine_file is not None:
        log.warning(
            "payments: quarantined %d record(s) in %s (first: %s)",
            quarantine.count,
            quarantine_file,
            quarantine.reasons[0],
        )
    return _Outcome(
        window_end=window_end,
        duplicates=counts.valid - winners - conflicts,
        quarantine_file=quarantine_file,
        exceeded=_exceeds(quarantine.count, counts.received, plan.max_quarantined),
    )


def _winners(con: Any) -> pa.RecordBatchReader:
    """The latest copy of each id (among equal `updated_at` the later read), ordered by
    `updated_at` and id, streamed STAGE_BATCH_ROWS rows at a time."""
    return con.sql(
        f"select {_PAYMENT_COLUMNS} from staged "
        "qualify row_number() over (partition by id order by updated_at desc, _seq desc) = 1 "
        "order by updated_at, id"
    ).to_arrow_reader(STAGE_BATCH_ROWS)


def _payments_manifest_fields(
    intake: _Intake, window: _Window, outcome: _Outcome
) -> dict[str, Any]:
    """The payments run's manifest fields beyond the landing's own (see extract_payments)."""
    plan, counts = intake.plan, intake.counts
    return {
        "mode": "incremental",
        "cursor_key": None,
        "updated_since": window.previous_end.isoformat() if window.previous_end else None,
        "overlap_seconds": plan.overlap.total_seconds(),
        "window_start": window.start.isoformat() if window.start else None,
        "window_end": outcome.window_end.isoformat() if outcome.window_end else None,
        "pages": counts.pages,
        "received": counts.received,
        "replayed": counts.replayed,
        "quarantined": intake.quarantine.count,
        "max_quarantined": plan.max_quarantined,
        "duplicates_dropped": outcome.duplicates,
        "quarantine_file": str(outcome.quarantine_file) if outcome.quarantine_file else None,
        "status": "quarantine_threshold_exceeded" if outcome.exceeded else "ok",
    }


def parse_rate(raw: Any, *, day: date, currency: str) -> Decimal:
    """An exact decimal(38,18) rate from the API's decimal string, or ValueError."""
    where = f"fx rate for {day.isoformat()} {currency}"
    if not isinstance(raw, str):
        raise ValueError(f"{where}: {raw!r} is not a decimal string")
    if not _DECIMAL_RE.match(raw.strip()):
        raise ValueError(f"{where}: {raw!r} is not a number")
    with localcontext() as ctx:
        ctx.prec = 80  # exact: never round while checking
        rate = Decimal(raw.strip())
        if rate <= 0:
            raise ValueError(f"{where}: {raw!r} is not a positive number")
        if rate >= _MAX_RATE:
            raise ValueError(f"{where}: {raw!r} does not fit decimal(38,18)")
        quantized = rate.quantize(Decimal(1).scaleb(-18))
        if quantized != rate:
            raise ValueError(f"{where}: {raw!r} needs more than 18 decimals")
    return quantized


def _fx_cache_path(landing_root: Path, day: date, api: str = "") -> Path:
    """Per API (a hash of its base URL): another API's rates must never be reused."""
    key = hashlib.sha256(api.encode()).hexdigest()[:12] if api else "default"
    return Path(landing_root) / SOURCE / FX_TABLE / "_cache" / key / f"{day.isoformat()}.json"


def _read_fx_cache(path: Path, day: date) -> dict[str, Any] | None:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or corrupt: fetch again
    if (
        not isinstance(cached, dict)
        or cached.get("date") != day.isoformat()
        or cached.get("base") != "USD"
        or not isinstance(cached.get("rates"), dict)
    ):
        return None
    return cached


@dataclass(frozen=True)
class FxPlan:
    """Which days' USD-based FX rates one run lands, and where: run `run_id` under
    `landing_root`; `days` (every one landed, old restated days included); `refresh`
    (days always asked again, their cache entry replaced: providers revise recent
    rates); the operator's schema-drift acceptance `accept_drift`."""

    run_id: str
    landing_root: Path
    days: Collection[date]
    refresh: Collection[date] = ()
    accept_drift: DriftAcceptance = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "days", tuple(sorted(set(self.days))))
        object.__setattr__(self, "refresh", frozenset(self.refresh))


@dataclass
class _FxRows:
    """The rows gathered so far, each day's currencies, the days to cache once the
    run is known complete ({day: (cache file, payload)}), and fetched / cached counts."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    per_day: dict[date, set[str]] = field(default_factory=dict)
    to_cache: dict[date, tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    fetched: int = 0
    cache_hits: int = 0


def extract_fx_rates(client: PaymentsApiClient, plan: FxPlan) -> dict[str, Any]:
    """Land the USD-based FX rates of each day in `plan.days`; return the manifest.

    Every day is landed: a past day comes from the per-day cache when an earlier run
    fetched it, otherwise from the API; days in `plan.refresh` are always asked again.
    A day whose answer lacks a currency that other days have still lands the currencies
    it has; the gaps are listed in the manifest (`missing_currencies`: {day: [currency]})
    and logged; the FX completeness check downstream decides whether a missing rate
    matters; such a day (or one with only USD) is not cached, so a later run asks the API
    again. `USD` is 1 by definition (base USD): it is added when the API left it out,
    and a USD rate other than 1 fails. A rate that is not a positive decimal fails the
    run naming the day and the currency. The manifest lists `days` (ISO dates).
    """
    today = clock.now().date()
    gathered = _FxRows()
    for day in plan.days:
        _add_fx_day(client, plan, day, today, gathered)
    missing = _missing_currencies(gathered.per_day)
    if missing:
        log.warning("fx_rates: currencies missing on some days (others landed): %s", missing)
    _write_fx_cache(gathered, missing)
    manifest = write_landing_table(
        pa.Table.from_pylist(gathered.rows, schema=FX_SCHEMA),
        schema=FX_SCHEMA,
        target=LandingTarget(
            landing_root=Path(plan.landing_root),
            source=SOURCE,
            table_name=FX_TABLE,
            run_id=plan.run_id,
        ),
        options=LandingOptions(
            cursor_column="rate_date",
            accept_drift=plan.accept_drift,
            extra_manifest={
                "days": [day.isoformat() for day in plan.days],
                "day_count": len(plan.days),
                "fetched": gathered.fetched,
                "cache_hits": gathered.cache_hits,
                "refreshed": sorted(d.isoformat() for d in set(plan.refresh) & set(plan.days)),
                "missing_currencies": missing,
            },
        ),
    )
    log.info(
        "fx_rates: landed %d row(s) for %d day(s) (%d fetched, %d from cache)",
        manifest["rows"],
        len(plan.days),
        gathered.fetched,
        gathered.cache_hits,
    )
    return manifest


def _add_fx_day(
    client: PaymentsApiClient, plan: FxPlan, day: date, today: date, gathered: _FxRows
) -> None:
    """One day's rates (from the cache, or the API when refreshed or not cached),
    checked, added to `gathered`; a past day's fresh answer is kept for the cache."""
    cache_file = _fx_cache_path(plan.landing_root, day, getattr(client, "base_url", ""))
    refreshed = day in plan.refresh
    payload = None if refreshed else _read_fx_cache(cache_file, day)
    if payload is not None:
        gathered.cache_hits += 1
    else:
        payload = client.get_fx_rates(day)
        gathered.fetched += 1
    rates = _day_rates(payload, day)
    # Cache only once validated, and only past days: today's rates may still move.
    if day < today and (refreshed or not cache_file.exists()):
        gathered.to_cache[day] = (cache_file, payload)
    gathered.per_day[day] = set(rates)
    for currency in sorted(rates):
        gathered.rows.append(
            {"rate_date": day, "base": "USD", "currency": currency, "rate": rates[currency]}
        )


def _day_rates(payload: dict[str, Any], day: date) -> dict[str, Decimal]:
    """The day's exact rates by currency, USD (the base, 1) added when left out; a
    ValueError naming the day for another base, no rates object, or USD other than 1."""
    if payload.get("base") != "USD":
        raise ValueError(f"fx rates for {day.isoformat()}: base {payload.get('base')!r}")
    raw_rates = payload.get("rates")
    if not isinstance(raw_rates, dict):
        raise ValueError(f"fx rates for {day.isoformat()}: rates={raw_rates!r}")
    rates = {cur: parse_rate(raw, day=day, currency=cur) for cur, raw in raw_rates.items()}
    if "USD" not in rates:
        log.warning("fx rates for %s: no USD rate; using 1 (the base)", day.isoformat())
        rates["USD"] = Decimal(1)
    elif rates["USD"] != Decimal(1):
        raise ValueError(f"fx rates for {day.isoformat()}: USD is {rates['USD']!r}, not 1")
    return rates


def _missing_currencies(per_day: dict[date, set[str]]) -> dict[str, list[str]]:
    """{ISO day: currencies other days have and it lacks}, only days with a gap."""
    every_currency = set().union(*per_day.values()) if per_day else set()
    return {
        day.isoformat(): sorted(every_currency - have)
        for day, have in per_day.items()
        if every_currency - have
    }


def _write_fx_cache(gathered: _FxRows, missing: dict[str, list[str]]) -> None:
    """Cache the complete days: an incomplete day (the provider had not published it
    all, or only USD) is asked for again by the next run instead of being frozen."""
    for day, (cache_file, payload) in gathered.to_cache.items():
        if day.isoformat() not in missing and gathered.per_day[day] != {"USD"}:
            write_json_atomic(cache_file, payload, indent=None)
