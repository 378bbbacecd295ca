"""The nightly schedule across DST: one run per night, consecutive business days.

With REPORT_TZ=America/New_York the 02:00 trigger does not exist on 2026-03-08 (the
clocks jump 02:00 → 03:00) and happens once on 2026-11-01 (01:00-02:00 repeats).
Each night must still run exactly once, and cover the previous business day, whose
UTC span is 23 h (2026-03-08) or 25 h (2026-11-01).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pendulum
import pytest

ROOT = Path(__file__).resolve().parents[2]
TZ = "America/New_York"


def _dag_timetable():
    """The timetable of the real DAG file, parsed with REPORT_TZ set."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "nightly_sales_dst", ROOT / "dags" / "nightly_sales.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.nightly_sales().timetable


def _runs(start_utc: datetime, count: int) -> list[datetime]:
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    declared = _dag_timetable()  # the SDK definition: schedule it with the core class
    timetable = CronTriggerTimetable(declared.expression, timezone=declared.timezone)
    last = DataInterval.exact(pendulum.instance(start_utc))
    runs = []
    for _ in range(count):
        info = timetable.next_dagrun_info(
            last_automated_data_interval=last,
            restriction=TimeRestriction(earliest=None, latest=None, catchup=True),
        )
        runs.append(info.run_after)
        last = info.data_interval
    return runs


@pytest.mark.parametrize(
    ("start", "dst_day", "hours"),
    [
        (datetime(2026, 3, 5, 7, tzinfo=ZoneInfo("UTC")), date(2026, 3, 8), 23),
        (datetime(2026, 10, 29, 6, tzinfo=ZoneInfo("UTC")), date(2026, 11, 1), 25),
    ],
)
def test_one_run_per_night_and_consecutive_business_days(
    start: datetime, dst_day: date, hours: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPORT_TZ", TZ)
    from core.business_day import business_date_for

    runs = _runs(start, 6)
    local_days = [r.in_timezone(TZ).date() for r in runs]
    assert len(set(local_days)) == len(local_days), "a night ran twice"
    assert local_days == [local_days[0] + timedelta(days=i) for i in range(6)], "a night ran never"
    business = [business_date_for(r) for r in runs]
    assert business == [d - timedelta(days=1) for d in local_days]
    assert dst_day in business
    tz = ZoneInfo(TZ)
    begin = datetime.combine(dst_day, datetime.min.time(), tz)
    end = datetime.combine(dst_day + timedelta(days=1), datetime.min.time(), tz)
    assert (end.astimezone(ZoneInfo("UTC")) - begin.astimezone(ZoneInfo("UTC"))) == timedelta(
        hours=hours
    )


def test_dag_schedule_uses_report_tz(tmp_path: Path) -> None:
    """The DAG file reads REPORT_TZ (an env var, no I/O) for its 02:00 trigger."""
    code = (
        "import importlib.util; spec = importlib.util.spec_from_file_location('d', {!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "print(m.REPORT_TZ)"
    ).format(str(ROOT / "dags" / "nightly_sales.py"))
    env = {**os.environ, "REPORT_TZ": TZ, "AIRFLOW_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == TZ
