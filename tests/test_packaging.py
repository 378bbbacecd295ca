"""pyproject.toml declares the package: its dependency ranges hold the exact pins the
Makefile installs (requirements*.txt), and `nightshift` is its one console script."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline import cli

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(name: str) -> dict[str, Requirement]:
    """The `name==version` lines of a requirements file (its `-r` includes left out)."""
    lines = (ROOT / name).read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and line[0] not in "#-"]
    return {canonicalize_name(r.name): r for r in reqs}


def _ranges(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


@pytest.mark.parametrize(
    "pins_file, declared",
    [
        ("requirements.txt", PROJECT["dependencies"]),
        ("requirements-dev.txt", PROJECT["optional-dependencies"]["dev"]),
    ],
)
def test_declared_ranges_hold_the_pins(pins_file: str, declared: list[str]) -> None:
    pins, ranges = _pins(pins_file), _ranges(declared)
    assert sorted(ranges) == sorted(pins), f"pyproject.toml and {pins_file} list other packages"
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pins_file}: {pin} is not an exact pin"
        assert ranges[name].specifier.contains(spec.version), (
            f"pyproject.toml: {ranges[name]} excludes the pin {pin} of {pins_file}: widen the range"
        )
        assert ranges[name].extras == pin.extras, f"{name}: extras differ from {pins_file}"


def test_one_console_script() -> None:
    assert PROJECT["scripts"] == {"nightshift": "pipeline.cli:main"}


def test_the_makefile_runs_only_commands_that_exist() -> None:
    used = re.findall(r"\$\(BIN\)/nightshift ([a-z-]+)", (ROOT / "Makefile").read_text())
    assert used, "the Makefile runs no nightshift command"
    assert set(used) <= set(cli.COMMANDS), set(used) - set(cli.COMMANDS)
