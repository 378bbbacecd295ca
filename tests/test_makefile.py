"""The Makefile: what a user types on the command line never becomes shell code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVIL = "2026-01-01; touch /tmp/nightshift-pwned"


@pytest.mark.parametrize(
    "target, assignment",
    [
        ("nightly", f"DATE={EVIL}"),
        ("backfill", f"FROM={EVIL}"),
        ("rollback", f"TO={EVIL}"),
        ("replay", f"DATE={EVIL}"),
    ],
)
def test_typed_values_reach_recipes_as_quoted_variables(target: str, assignment: str) -> None:
    extra = ["TO=2026-01-02"] if target == "backfill" else []
    dry = subprocess.run(
        ["make", "-n", target, assignment, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pwned" not in dry, f"`make {target}` pastes the value into its recipe:\n{dry}"
    assert '"$DATE"' in dry or '"$FROM"' in dry or '"$TO"' in dry
