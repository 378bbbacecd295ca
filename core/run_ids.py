"""Run ids and the names built from them.

A run id names one pipeline run in folder names, file names and SQL values, so it is
restricted to letters, digits and `_.:-`, starts with a letter or digit and never holds
`..`: it cannot climb out of a folder or need quoting. Landed runs live in folders
`run=<run_id>`; one shard's part of a sharded run is the run `<run_id>.shard-<name>`.
"""

from __future__ import annotations

import re
from datetime import date, datetime

RUN_PREFIX = "run="
SHARD_INFIX = ".shard-"
PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})")


def is_valid(run_id: str) -> bool:
    """Whether `run_id` may name a run (see the module docstring)."""
    return isinstance(run_id, str) and PATTERN.match(run_id) is not None and ".." not in run_id


def check(run_id: str) -> str:
    """`run_id` itself, or ValueError naming it and the characters allowed."""
    if not is_valid(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: letters, digits and _.:- only, starting with a "
            "letter or digit, no '..'"
        )
    return run_id


def dir_name(run_id: str) -> str:
    """The folder (or file stem) of a run: `run=<run_id>`."""
    return f"{RUN_PREFIX}{check(run_id)}"


def of_dir_name(name: str) -> str | None:
    """The run id in a folder name `run=<run_id>`, or None for any other name."""
    return name[len(RUN_PREFIX) :] if name.startswith(RUN_PREFIX) else None


def shard_run_id(run_id: str, shard: str) -> str:
    """The landing run id of one shard's part of a run: `<run_id>.shard-<shard>`."""
    return f"{run_id}{SHARD_INFIX}{shard}"


def shard_dirs_glob(run_id: str) -> str:
    """A glob for the folders of every shard's part of a run."""
    return f"{RUN_PREFIX}{check(run_id)}{SHARD_INFIX}*"


def stamp(moment: datetime, *, micros: bool = True) -> str:
    """A UTC time as a sortable, filename-safe token: `20261205T082845123456Z`
    (`micros=False`: `20261205T082845Z`)."""
    return moment.strftime("%Y%m%dT%H%M%S%fZ" if micros else "%Y%m%dT%H%M%SZ")


def day_of(name: str) -> date | None:
    """The first ISO day in a run's name or file name (`run=2027-01-15`, `2027-01-15.json`),
    or None: retention keeps what no day names."""
    match = _DAY.search(name)
    if not match:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def expired(name: str, cutoff: date, run_day: date | None, protected: set[str]) -> bool:
    """Named by a day before `cutoff`, not the running night's day, not protected."""
    day = day_of(name)
    return day is not None and day < cutoff and day != run_day and name not in protected
