"""extract.replay: the payments dead-letter queue is re-validated, queued once, landed by
the next extract and retired once published."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from extract.api_extract import PaymentsPlan, extract_payments, quarantine_files
from extract.replay import main, open_replays, read_ledger, replay, replay_dir

NOW = datetime(2024, 3, 2, tzinfo=UTC)


def _payment(pid: str, **overrides: Any) -> dict:
    record = {
        "id": pid,
        "order_id": 1,
        "amount": "10.50",
        "currency": "USD",
        "status": "succeeded",
        "method": "card",
        "created_at": "2024-03-01T00:00:00Z",
        "updated_at": "2024-03-01T01:00:00Z",
    }
    record.update(overrides)
    return record


class FakeClient:
    def __init__(self, *pages: list[Any]) -> None:
        self.pages = pages

    def iter_payment_pages(self, updated_since: datetime | None, limit: int = 500):
        yield from self.pages


AHEAD = "2024-03-02T05:00:00Z"  # 5 h after NOW: quarantined as from the future


def _night(tmp: Path, run_id: str, *pages: list[Any], now: datetime = NOW, **kw) -> dict:
    return extract_payments(
        FakeClient(*pages),  # type: ignore[arg-type]
        PaymentsPlan(
            run_id=run_id,
            landing_root=tmp / "landing",
            quarantine_root=tmp / "quarantine",
            now=now,
            **kw,
        ),
    )


def _landed(tmp: Path, run_id: str) -> dict[str, dict]:
    path = tmp / "landing" / "payments_api" / "payments" / f"run={run_id}"
    return {r["id"]: r for r in pq.read_table(path).to_pylist()}


def _quarantine_a_night(tmp: Path) -> None:
    page = [
        _payment("ok"),
        _payment("future1", updated_at=AHEAD),
        _payment("future2", updated_at=AHEAD, amount="3.00"),
        _payment("broken", amount="n/a"),
        _payment("twin", amount="1.00"),
        _payment("twin", amount="2.00"),  # same updated_at, other amount: a conflict
    ]
    first = _night(tmp, "2024-03-02", page)
    assert first["quarantined"] == 4 and first["status"] == "ok"
    second = _night(tmp, "2024-03-02", page)  # a same-day rerun: its own file
    assert second["quarantined"] == 4
    files = quarantine_files(tmp / "quarantine", "2024-03-02")
    assert [f.name for f in files] == ["attempt=001.jsonl", "attempt=002.jsonl"]
    assert files[0].read_text().count("\n") == files[1].read_text().count("\n") == 4


def test_replay_queues_what_now_passes_once(tmp_path: Path) -> None:
    _quarantine_a_night(tmp_path)
    q = tmp_path / "quarantine"
    # Same clock: nothing is fixed yet; the same broken record of two attempts is one.
    early = replay(q, now=NOW)
    assert (early["passed"], early["still_invalid"], early["conflicts_left"]) == (0, 3, 1)
    ledger = read_ledger(q)
    assert {e["record_key"]: e["status"] for e in ledger.values()} == {
        "future1": "still_invalid",
        "future2": "still_invalid",
        "broken": "still_invalid",
    }
    broken = next(e for e in ledger.values() if e["record_key"] == "broken")
    assert broken["field"] == "amount" and broken["error"] == "'n/a' is not a number"
    assert broken["quarantine_file"] == "payments_api/payments/run=2024-03-02/attempt=001.jsonl:3"

    # The clock caught up: the records from the future pass; the broken one does not.
    later = replay(q, now=NOW + timedelta(hours=6))
    assert (later["passed"], later["still_invalid"], later["already_replayed"]) == (2, 1, 0)
    queued = Path(later["queue_file"])
    assert queued.parent == replay_dir(q) / "pending"
    assert sorted(json.loads(x)["record_key"] for x in queued.read_text().splitlines()) == [
        "future1",
        "future2",
    ]
    again = replay(q, now=NOW + timedelta(hours=7))
    assert (again["passed"], again["already_replayed"], again["queue_file"]) == (2 - 2, 2, None)
    assert len(list((replay_dir(q) / "pending").iterdir())) == 1
    # The quarantine files are only read.
    assert [f.name for f in quarantine_files(q)] == ["attempt=001.jsonl", "attempt=002.jsonl"]


def test_the_next_extract_lands_the_queue_until_it_is_published(tmp_path: Path) -> None:
    _quarantine_a_night(tmp_path)
    q = tmp_path / "quarantine"
    replay(q, now=NOW + timedelta(hours=6))
    warehouse = tmp_path / "warehouse.duckdb"
    records = open_replays(q, warehouse)  # no warehouse yet: everything is open
    assert sorted(r["id"] for r in records) == ["future1", "future2"]
    later = NOW + timedelta(days=1)
    mark = datetime(2024, 3, 2, 12, tzinfo=UTC)
    manifest = _night(
        tmp_path,
        "2024-03-03",
        [_payment("new", updated_at="2024-03-02T12:00:00Z")],
        now=later,
        updated_since=mark,
        replayed=records,
    )
    assert manifest["replayed"] == 2 and manifest["rows"] == 3 and manifest["quarantined"] == 0
    # replayed records never move the watermark (future1/2 are 5 h after mark - 7 h)
    assert manifest["window_end"] == mark.isoformat()
    landed = _landed(tmp_path, "2024-03-03")
    assert str(landed["future2"]["amount"]) == "3.00"

    # Not published yet (the run failed later, say): the next night lands them again.
    assert len(open_replays(q, warehouse)) == 2
    con = duckdb.connect(str(warehouse))
    con.execute("create schema raw")
    con.execute("create table raw.payments (id varchar, updated_at timestamptz)")
    con.execute(
        "insert into raw.payments values ('future1', '2024-03-02 05:00:00+00'), "
        "('future2', '2024-03-02 04:00:00+00')"  # an older copy: future2 is still open
    )
    con.close()
    assert [r["id"] for r in open_replays(q, warehouse)] == ["future2"]
    con = duckdb.connect(str(warehouse))
    con.execute("update raw.payments set updated_at = '2024-03-02 05:00:00+00'")
    con.close()
    assert open_replays(q, warehouse) == []
    assert not list((replay_dir(q) / "pending").iterdir())
    assert len(list((replay_dir(q) / "done").iterdir())) == 1
    statuses = {e["record_key"]: e["status"] for e in read_ledger(q).values()}
    assert statuses["future1"] == statuses["future2"] == "published"
    assert replay(q, now=later)["passed"] == 0  # nothing twice


def test_a_conflicting_copy_is_left_for_a_person(tmp_path: Path) -> None:
    """The landed copy of a conflict is as new as the quarantined one: a replayed copy
    would silently replace it, so the replay leaves conflicts alone."""
    _quarantine_a_night(tmp_path)
    summary = replay(tmp_path / "quarantine", now=NOW + timedelta(hours=6))
    assert summary["conflicts_left"] == 1
    queued = Path(summary["queue_file"]).read_text()
    assert '"twin"' not in queued
    assert "twin" not in {e["record_key"] for e in read_ledger(tmp_path / "quarantine").values()}


def test_replay_of_one_day_and_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _quarantine_a_night(tmp_path)
    _night(tmp_path, "2024-03-05", [_payment("other", amount="x")])
    monkeypatch.setenv("QUARANTINE_DIR", str(tmp_path / "quarantine"))
    monkeypatch.setenv("NIGHTSHIFT_NOW", "2024-03-06T00:00:00Z")
    assert main(["--date", "2024-03-05"]) == 0
    out = capsys.readouterr().out
    assert "1 quarantine file(s); 0 record(s) pass" in out and "1 still invalid" in out
    assert "id='other' amount: 'x' is not a number" in out
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "3 quarantine file(s); 2 record(s) pass" in out and "1 conflicting" in out
    with pytest.raises(SystemExit):
        main(["--date", "../../etc"])
    assert "is not a YYYY-MM-DD date" in capsys.readouterr().err


def test_a_queued_record_the_night_rejects_stays_queued(tmp_path: Path) -> None:
    """The replay ran with a larger tolerance than the DAG: the night quarantines the
    records again (its own attempt file) and the queue keeps them for a later night."""
    _quarantine_a_night(tmp_path)
    q = tmp_path / "quarantine"
    replay(q, now=NOW, future_tolerance=timedelta(hours=6))
    records = open_replays(q, None)
    assert len(records) == 2
    night = _night(tmp_path, "2024-03-03", [], replayed=records)  # NOW + 1 h tolerance
    assert night["replayed"] == 0 and night["quarantined"] == 2 and night["rows"] == 0
    assert len(open_replays(q, None)) == 2
    later = _night(tmp_path, "2024-03-04", [], replayed=records, now=NOW + timedelta(hours=5))
    assert later["replayed"] == 2 and later["rows"] == 2
