"""The layers, read from the code: which package may import which.

`core/` (settings, clock, run ids, atomic files, the `ops` schema, the source tables) is
the bottom: every package may import it. `pipeline/` is the top: it composes the steps of
extract, warehouse, quality, transform, report and alerting, and none of them imports it
back. The demo composes the pipeline (`demo/run.py` runs it through Airflow), so the
pipeline never imports the demo, and the demo's other modules (generator, API, servers,
the migration demo) stand beside it; `migrate/` holds the migration tools only.
Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "extract", "warehouse", "quality", "transform", "report", "alerting")
#: Modules that compose the pipeline themselves: they may import it.
COMPOSERS = frozenset({"demo/run.py"})
#: Imports of the top layer from below that remain, each to move into `core/`. None may
#: be added; remove an entry with its import.
REMAINING: dict[str, set[str]] = {}
#: Every package of the project, and the steps the pipeline composes: a step imports
#: `core/` and other steps, never the pipeline, the demo, the migration tools or a DAG.
PROJECT = (*PACKAGES, "pipeline", "demo", "migrate", "dags")
STEPS = ("extract", "warehouse", "quality", "transform", "report", "alerting")
#: What `core/` still imports from above, inside the functions that need it (importing
#: `core` loads none of it): the settings open the configured object store (data,
#: landing, quarantine) and warehouse, and the run files mirror the report through the
#: store; the store's client lives beside the landing's commit protocol in
#: extract/object_landing.py. Moving that client and the backend factory into `core/`
#: removes these; none may be added.
CORE_REMAINING = {
    "core/settings.py": {"extract.object_landing", "warehouse.backends"},
    "core/run_files.py": {"extract.object_landing"},
}


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports, anywhere in it (relative imports resolved)."""
    package = ".".join(path.relative_to(root).parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _importers(of: str, paths: list[Path]) -> dict[str, set[str]]:
    """The modules among `paths` that import package `of`, and which of its modules
    (`of` itself or `of.<module>`: the names a module imports from them are left out)."""
    found = {}
    for path in paths:
        modules = {n for n in _imported(path) if n == of or n.startswith(f"{of}.")}
        modules = {m for m in modules if m.count(".") <= 1 and not _is_name(m, path)}
        if modules:
            found[path.relative_to(ROOT).as_posix()] = modules
    return found


def _is_name(dotted: str, path: Path) -> bool:
    """`pipeline.x` where `x` is a name imported from `pipeline` that is no module of it."""
    package, _, name = dotted.partition(".")
    return bool(name) and not (
        (ROOT / package / f"{name}.py").exists() or (ROOT / package / name).is_dir()
    )


@pytest.mark.parametrize("package", [*PACKAGES, "migrate", "demo"])
def test_no_lower_layer_imports_the_pipeline(package: str) -> None:
    paths = [p for p in _sources(package) if p.relative_to(ROOT).as_posix() not in COMPOSERS]
    assert paths, f"no modules in {package}/"
    crossings = {
        module: imported - REMAINING.get(module, set())
        for module, imported in _importers("pipeline", paths).items()
    }
    crossings = {module: sorted(names) for module, names in crossings.items() if names}
    assert crossings == {}, f"{package}/ imports pipeline/ (the top layer): {crossings}"


def _crossings(paths: list[Path], into: tuple[str, ...], allowed: dict[str, set[str]]) -> dict:
    """The modules among `paths` that import a package of `into`, less `allowed`."""
    found: dict[str, set[str]] = {}
    for package in into:
        for module, names in _importers(package, paths).items():
            found.setdefault(module, set()).update(names)
    crossings = {m: sorted(names - allowed.get(m, set())) for m, names in found.items()}
    return {m: names for m, names in crossings.items() if names}


def test_core_imports_no_other_package() -> None:
    others = tuple(p for p in PROJECT if p != "core")
    crossings = _crossings(_sources("core"), others, CORE_REMAINING)
    assert crossings == {}, f"core/ (the bottom layer) imports from above: {crossings}"


@pytest.mark.parametrize("package", STEPS)
def test_a_step_never_imports_the_demo_the_migration_tools_or_a_dag(package: str) -> None:
    crossings = _crossings(_sources(package), ("demo", "migrate", "dags"), {})
    assert crossings == {}, f"{package}/ imports the demo, migrate/ or dags/: {crossings}"


def test_every_listed_crossing_still_happens() -> None:
    """A crossing that is gone leaves the lists, so they only shrink."""
    stale = {}
    for listed in (REMAINING, CORE_REMAINING):
        for module, names in listed.items():
            imported = {n for n in _imported(ROOT / module) if n.count(".") <= 1}
            if names - imported:
                stale[module] = sorted(names - imported)
    assert stale == {}, f"listed crossings no longer imported (remove them): {stale}"


def test_the_pipeline_never_imports_the_demo() -> None:
    assert _importers("demo", _sources("pipeline")) == {}


def test_the_migration_tools_never_import_the_demo() -> None:
    assert _importers("demo", _sources("migrate")) == {}


def test_the_steps_module_imports_at_its_top_only() -> None:
    """pipeline/nightly.py names every step it composes in its import block; the DAG
    file, not the steps module, is what must stay light at parse time."""
    path = ROOT / "pipeline" / "nightly.py"
    tree = ast.parse(path.read_text())
    inside = [
        f"line {node.lineno}"
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert inside == [], f"imports inside functions of pipeline/nightly.py: {inside}"


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    probe = tmp_path / "extract" / "probe.py"
    probe.parent.mkdir()
    probe.write_text(
        "import json\n"
        "def step():\n"
        "    from pipeline import nightly\n"
        "    from .landing import write\n"
        "    import pipeline.settings as s\n"
    )
    names = _imported(probe, tmp_path)
    assert {"pipeline", "pipeline.nightly", "pipeline.settings", "extract.landing"} <= names
    assert "extract.landing.write" in names and "json" in names
