"""Extract the payments API into the landing zone (docs/interfaces.md).

Payments: incremental by `updated_since` = previous watermark - overlap; every page is
pulled, each record validated; bad ones go to quarantine (a file in the quarantine
root and `_quarantine.jsonl` in the landed run directory), the rest are deduplicated by
id (latest updated_at wins, because the API may repeat records across pages and the
overlap re-reads records) and landed as one Parquet run whose manifest carries the
window (`window_start`, `window_end`) the loader stores as the next watermark. Too many
quarantined records fail the run (after writing them). FX rates: one request per day,
landed exactly as decimal128(38,18), with a per-day cache so past days are not refetched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pyarrow as pa

from extract.api_client import PaymentsApiClient
from extract.landing import write_landing_table
from pipeline import clock

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


def _jsonl_bytes(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, sort_keys=True, default=str) + "\n" for line in lines).encode()


def _write_jsonl_atomically(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(_jsonl_bytes(lines))
    os.replace(tmp, path)


QUARANTINE_FILE_NAME = "_quarantine.jsonl"  # beside the landed Parquet, in the run directory
_FIRST_REASONS = 5


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


def _future_record(run_id: str, record: Any, now: datetime, tolerance: timedelta) -> dict:
    """The quarantine entry of a record stamped after the run's clock (+ tolerance)."""
    return {
        "source": SOURCE,
        "table": PAYMENTS_TABLE,
        "run_id": run_id,
        "record_key": record.get("id"),
        "field": "updated_at",
        "error": (
            f"{record.get('updated_at')!r} is later than the run's clock "
            f"{now.isoformat()} + {tolerance}: not landed, never a watermark"
        ),
        "record": record,
    }


def _check_jump(
    previous_end: datetime | None, window_end: datetime | None, rows: list, max_jump: Any
) -> None:
    if previous_end is None or window_end is None or not max_jump:
        return
    if window_end - previous_end <= max_jump:
        return
    newest = [f"{r['id']} ({r['updated_at'].isoformat()})" for r in rows[-3:]]
    raise WatermarkJumpError(
        f"payments: the watermark would jump from {previous_end.isoformat()} to "
        f"{window_end.isoformat()}, more than {max_jump} in one run; newest records: "
        f"{', '.join(newest)}. Nothing was landed. If the API really moved that far (a long "
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


def extract_payments(
    client: PaymentsApiClient,
    *,
    run_id: str,
    landing_root: Path,
    quarantine_root: Path,
    updated_since: datetime | None = None,
    overlap: timedelta = timedelta(minutes=15),
    max_quarantined: int | float = 100,
    page_size: int = 500,
    accept_drift: bool = False,
    now: datetime | None = None,
    future_tolerance: timedelta = timedelta(hours=1),
    max_jump: timedelta | None = timedelta(days=30),
) -> dict[str, Any]:
    """Land the payments changed since the last loaded watermark; return the manifest.

    `updated_since` is the previous watermark: the `window_end` of the last payments run
    loaded into the warehouse (`extract.watermark.last_watermark(warehouse,
    "payments_api", "payments").window_end`), or None on the first run (everything).
    The API is asked for `updated_at >= updated_since - overlap`: the overlap re-reads
    records the API made visible late; they are deduplicated by id here (latest
    `updated_at` wins) and by the loader's upsert.

    Manifest (besides the landing fields): `mode` "incremental" (the loader upserts; a
    first run with no watermark is simply an unbounded window), `window_start`
    (updated_since - overlap, or None), `window_end` (the largest `updated_at` landed,
    never before `updated_since`: a run with no new records keeps the old watermark;
    None only when there is neither a record nor a previous watermark), `received`,
    `quarantined`, `duplicates_dropped`, `pages`, `status`.

    Two valid copies of one id with the same `updated_at` but different content (the
    API changed a record without moving its cursor) are not a plain duplicate: the one
    read last is landed and the other is quarantined with the differing fields named,
    so neither disappears silently.

    Quarantine: a record that fails validation is not landed; it is written with the
    reason and its raw payload to `<quarantine_root>/payments_api/payments/run=<id>.jsonl`
    and to `_quarantine.jsonl` inside the landed run directory (replaced with it).
    `window_end` only counts landed records, so a broken record that is the newest
    one does not move the watermark past itself (the next run asks for it again). But a
    broken record older than `window_end` is NOT read again by later runs (unless it
    falls within the overlap): its id comes back only if the API updates it again. The
    quarantine files are the record of it; replay or fix it from there.

    `max_quarantined`: an int is the largest allowed number of quarantined records, a
    float in (0, 1) the largest allowed share of received records. When exceeded, the
    quarantine files and the run directory (manifest `status`
    "quarantine_threshold_exceeded") are written first, then QuarantineThresholdError
    is raised, so nothing is lost and the failed run must not be loaded.

    Guards on the watermark: a record whose `updated_at` is later than `now` (the
    pipeline clock) + `future_tolerance` is quarantined with that reason and never moves
    the watermark (one record stamped 2099 would otherwise make every later run ask for
    nothing); a window whose end would move more than `max_jump` (None: no limit) past
    the previous one raises WatermarkJumpError before anything is landed.
    """
    _check_threshold(max_quarantined)
    latest_allowed = _utc(now or clock.now()) + future_tolerance
    if overlap < timedelta(0):
        raise ValueError(f"overlap must not be negative, got {overlap}")
    previous_end = _utc(updated_since) if updated_since is not None else None
    window_start = previous_end - overlap if previous_end is not None else None
    latest: dict[str, dict[str, Any]] = {}
    raw: dict[str, Any] = {}  # the payload each kept row came from
    conflicts = 0
    rejected: list[dict[str, Any]] = []
    received = 0
    valid = 0
    pages = 0
    for page in client.iter_payment_pages(window_start, limit=page_size):
        pages += 1
        for record in page:
            received += 1
            try:
                row = validate_payment(record)
            except RecordError as exc:
                key = record.get("id") if isinstance(record, dict) else None
                rejected.append(
                    {
                        "source": SOURCE,
                        "table": PAYMENTS_TABLE,
                        "run_id": run_id,
                        "record_key": key if isinstance(key, str | int) else None,
                        "field": exc.field,
                        "error": exc.error,
                        "record": record,
                    }
                )
                continue
            if row["updated_at"] > latest_allowed:
                rejected.append(
                    _future_record(
                        run_id, record, latest_allowed - future_tolerance, future_tolerance
                    )
                )
                continue
            valid += 1
            seen = latest.get(row["id"])
            # >= so that among equal updated_at the copy seen last (the freshest read) wins.
            if seen is None or row["updated_at"] >= seen["updated_at"]:
                if seen is not None and row["updated_at"] == seen["updated_at"] and row != seen:
                    rejected.append(_conflict(run_id, seen, raw[row["id"]], row))
                    conflicts += 1
                latest[row["id"]] = row
                raw[row["id"]] = record
    duplicates = valid - len(latest) - conflicts
    rows = sorted(latest.values(), key=lambda r: (r["updated_at"], r["id"]))

    max_landed = rows[-1]["updated_at"] if rows else None
    candidates = [t for t in (previous_end, max_landed) if t is not None]
    window_end = max(candidates) if candidates else None  # never backwards
    _check_jump(previous_end, window_end, rows, max_jump)

    quarantine_file = Path(quarantine_root) / SOURCE / PAYMENTS_TABLE / f"run={run_id}.jsonl"
    reasons = [
        f"id={r['record_key']!r} {r['field'] or 'record'}: {r['error']}"
        for r in rejected[:_FIRST_REASONS]
    ]
    exceeded = _exceeds(len(rejected), received, max_quarantined)
    if rejected:
        _write_jsonl_atomically(quarantine_file, rejected)
        log.warning(
            "payments: quarantined %d record(s) in %s (first: %s)",
            len(rejected),
            quarantine_file,
            reasons[0],
        )
    else:
        quarantine_file.unlink(missing_ok=True)  # a rerun must not keep a stale file

    table = pa.Table.from_pylist(rows, schema=PAYMENTS_SCHEMA)
    manifest = write_landing_table(
        table,
        schema=PAYMENTS_SCHEMA,
        landing_root=Path(landing_root),
        source=SOURCE,
        table_name=PAYMENTS_TABLE,
        run_id=run_id,
        cursor_column="updated_at",
        accept_drift=accept_drift,
        extra_files={QUARANTINE_FILE_NAME: _jsonl_bytes(rejected)} if rejected else None,
        extra_manifest={
            "mode": "incremental",
            "cursor_key": None,
            "updated_since": previous_end.isoformat() if previous_end else None,
            "overlap_seconds": overlap.total_seconds(),
            "window_start": window_start.isoformat() if window_start else None,
            "window_end": window_end.isoformat() if window_end else None,
            "pages": pages,
            "received": received,
            "quarantined": len(rejected),
            "max_quarantined": max_quarantined,
            "duplicates_dropped": duplicates,
            "quarantine_file": str(quarantine_file) if rejected else None,
            "status": "quarantine_threshold_exceeded" if exceeded else "ok",
        },
    )
    log.info(
        "payments: landed %d row(s) from %d page(s) in window [%s, %s] "
        "(%d duplicate(s) dropped, %d quarantined)",
        manifest["rows"],
        pages,
        manifest["window_start"],
        manifest["window_end"],
        duplicates,
        len(rejected),
    )
    if exceeded:
        raise QuarantineThresholdError(
            quarantined=len(rejected),
            received=received,
            threshold=max_quarantined,
            reasons=reasons,
            quarantine_file=quarantine_file,
        )
    return manifest


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


def extract_fx_rates(
    client: PaymentsApiClient,
    *,
    days: Iterable[date],
    run_id: str,
    landing_root: Path,
    accept_drift: bool = False,
    refresh: Iterable[date] = (),
) -> dict[str, Any]:
    """Land the USD-based FX rates of each day in `days`; return the manifest.

    Every day passed in is landed, old (restated) days included: a past day comes from
    the per-day cache when an earlier run fetched it, otherwise from the API. Days in
    `refresh` are always asked again (providers revise recent rates) and their cache
    entry replaced. A day
    whose answer lacks a currency that other days have still lands the currencies it
    has; the gaps are listed in the manifest (`missing_currencies`: {day: [currency]})
    and logged; the FX completeness check downstream decides whether a missing rate
    matters; such a day (or one with only USD) is not cached, so a later run asks the API
    again. `USD` is 1 by definition (base USD): it is added when the API left it out,
    and a USD rate other than 1 fails. A rate that is not a positive decimal fails the
    run naming the day and the currency. The manifest lists `days` (ISO dates).
    """
    today = clock.now().date()
    rows: list[dict[str, Any]] = []
    fetched = cache_hits = 0
    wanted = sorted(set(days))
    refresh = set(refresh)
    per_day: dict[date, set[str]] = {}
    to_cache: dict[date, tuple[Path, dict[str, Any]]] = {}
    for day in wanted:
        cache_file = _fx_cache_path(landing_root, day, getattr(client, "base_url", ""))
        payload = None if day in refresh else _read_fx_cache(cache_file, day)
        if payload is not None:
            cache_hits += 1
        else:
            payload = client.get_fx_rates(day)
            fetched += 1
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
        # Cache only once validated, and only past days: today's rates may still move.
        if day < today and (day in refresh or not cache_file.exists()):
            to_cache[day] = (cache_file, payload)
        per_day[day] = set(rates)
        for currency in sorted(rates):
            rows.append(
                {"rate_date": day, "base": "USD", "currency": currency, "rate": rates[currency]}
            )
    every_currency = set().union(*per_day.values()) if per_day else set()
    missing = {
        day.isoformat(): sorted(every_currency - have)
        for day, have in per_day.items()
        if every_currency - have
    }
    if missing:
        log.warning("fx_rates: currencies missing on some days (others landed): %s", missing)
    for day, (cache_file, payload) in to_cache.items():
        # An incomplete day (the provider had not published it all) is asked for again
        # by the next run instead of being frozen in the cache.
        if day.isoformat() not in missing and per_day[day] != {"USD"}:
            _write_json_atomically(cache_file, payload)
    table = pa.Table.from_pylist(rows, schema=FX_SCHEMA)
    manifest = write_landing_table(
        table,
        schema=FX_SCHEMA,
        landing_root=Path(landing_root),
        source=SOURCE,
        table_name=FX_TABLE,
        run_id=run_id,
        cursor_column="rate_date",
        accept_drift=accept_drift,
        extra_manifest={
            "days": [day.isoformat() for day in wanted],
            "day_count": len(wanted),
            "fetched": fetched,
            "cache_hits": cache_hits,
            "refreshed": sorted(d.isoformat() for d in refresh & set(wanted)),
            "missing_currencies": missing,
        },
    )
    log.info(
        "fx_rates: landed %d row(s) for %d day(s) (%d fetched, %d from cache)",
        manifest["rows"],
        len(wanted),
        fetched,
        cache_hits,
    )
    return manifest


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(payload, sort_keys=True))
    os.replace(tmp, path)
