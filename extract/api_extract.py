"""Extract the payments API into the landing zone (docs/interfaces.md).

Payments: every page is pulled, each record validated; bad ones go to quarantine, the
rest are deduplicated by id (latest updated_at wins, because the API may repeat
records across pages) and landed as one Parquet run. FX rates: one request per day,
landed exactly as decimal128(38,18), with a per-day cache so past days are not refetched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pyarrow as pa

from extract.api_client import PaymentsApiClient
from extract.landing import write_landing_table

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


def _write_jsonl_atomically(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    with tmp.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def extract_payments(
    client: PaymentsApiClient,
    *,
    run_id: str,
    landing_root: Path,
    quarantine_root: Path,
    updated_since: datetime | None = None,
    page_size: int = 500,
) -> dict[str, Any]:
    """Land all payments updated at/after `updated_since` (all when None); return the manifest."""
    latest: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, Any]] = []
    received = 0
    valid = 0
    pages = 0
    for page in client.iter_payment_pages(updated_since, limit=page_size):
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
            valid += 1
            seen = latest.get(row["id"])
            # >= so that among equal updated_at the copy seen last (the freshest read) wins.
            if seen is None or row["updated_at"] >= seen["updated_at"]:
                latest[row["id"]] = row
    duplicates = valid - len(latest)
    rows = sorted(latest.values(), key=lambda r: (r["updated_at"], r["id"]))

    quarantine_file = Path(quarantine_root) / SOURCE / PAYMENTS_TABLE / f"run={run_id}.jsonl"
    if rejected:
        _write_jsonl_atomically(quarantine_file, rejected)
        log.warning(
            "payments: quarantined %d record(s) in %s (first: id=%r %s: %s)",
            len(rejected),
            quarantine_file,
            rejected[0]["record_key"],
            rejected[0]["field"],
            rejected[0]["error"],
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
        extra_manifest={
            "updated_since": updated_since.isoformat() if updated_since else None,
            "pages": pages,
            "received": received,
            "quarantined": len(rejected),
            "duplicates_dropped": duplicates,
            "quarantine_file": str(quarantine_file) if rejected else None,
        },
    )
    log.info(
        "payments: landed %d row(s) from %d page(s) (%d duplicate(s) dropped, %d quarantined)",
        manifest["rows"],
        pages,
        duplicates,
        len(rejected),
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


def _fx_cache_path(landing_root: Path, day: date) -> Path:
    return Path(landing_root) / SOURCE / FX_TABLE / "_cache" / f"{day.isoformat()}.json"


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
) -> dict[str, Any]:
    """Land the USD-based FX rates of each day in `days`; return the manifest."""
    today = datetime.now(UTC).date()
    rows: list[dict[str, Any]] = []
    fetched = cache_hits = 0
    wanted = sorted(set(days))
    for day in wanted:
        cache_file = _fx_cache_path(landing_root, day)
        payload = _read_fx_cache(cache_file, day)
        if payload is not None:
            cache_hits += 1
        else:
            payload = client.get_fx_rates(day)
            fetched += 1
        if payload.get("base") != "USD":
            raise ValueError(f"fx rates for {day.isoformat()}: base {payload.get('base')!r}")
        rates = {
            cur: parse_rate(raw, day=day, currency=cur) for cur, raw in payload["rates"].items()
        }
        if rates.get("USD") != Decimal(1):
            raise ValueError(f"fx rates for {day.isoformat()}: USD is {rates.get('USD')!r}, not 1")
        # Cache only once validated, and only past days: today's rates may still move.
        if day < today and not cache_file.exists():
            _write_json_atomically(cache_file, payload)
        for currency in sorted(rates):
            rows.append(
                {"rate_date": day, "base": "USD", "currency": currency, "rate": rates[currency]}
            )
    table = pa.Table.from_pylist(rows, schema=FX_SCHEMA)
    manifest = write_landing_table(
        table,
        schema=FX_SCHEMA,
        landing_root=Path(landing_root),
        source=SOURCE,
        table_name=FX_TABLE,
        run_id=run_id,
        cursor_column="rate_date",
        extra_manifest={"days": len(wanted), "fetched": fetched, "cache_hits": cache_hits},
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
