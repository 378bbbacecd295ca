"""The business day a nightly run covers, and the run id that names it.

Light at import (settings only): the DAG file, its task wrapper and the alert callbacks
name a run's day without loading the steps (pipeline/nightly.py).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from core import settings


def run_id_for(business_date: date) -> str:
    """Landing run id of a nightly run: the business day (a rerun replaces it)."""
    return business_date.isoformat()


def business_date_for(logical_date: datetime, override: str | None = None) -> date:
    """The business day a run covers: the day before the run's date in REPORT_TZ."""
    if override:
        return date.fromisoformat(str(override))
    local = logical_date.astimezone(settings.report_tz())
    return local.date() - timedelta(days=1)
