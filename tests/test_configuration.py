"""Configuration without traps: every environment variable the code reads is in
`.env.example` and in docs/configuration.md's table, every read goes through
`core.settings` (a field of its settings model, or `settings.env`: empty means unset),
and no document names a repository file that does not exist.

Re-run after adding a variable: `.venv/bin/python -m pytest tests/test_configuration.py -q`
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "core",
    "pipeline",
    "extract",
    "warehouse",
    "transform",
    "quality",
    "report",
    "alerting",
    "migrate",
    "demo",
    "dags",
)
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")

# Read by the code but deliberately in neither list. Keep it short; say why.
EXEMPT = {
    # URLs of the throwaway test servers (demo/servers.py), for the test suite only.
    "NIGHTSHIFT_TEST_*": "test-only",
    # Set by warehouse/dbt_runner.py for the dbt process it starts (per-run values).
    "DBT_NIGHTSHIFT_*": "internal: the pipeline hands them to dbt",
    # Set by pipeline/airflow_run.py for the Airflow run a `make` command starts, so its
    # tasks share the command's warehouse lease.
    "NIGHTSHIFT_WAREHOUSE_LEASE_*": "internal: the pipeline hands them to its tasks",
    # The demo API's fault-injection endpoint, switched on by the end-to-end tests only.
    "DEMO_API_FAULT_INJECTION": "test-only",
    "DEMO_API_ADMIN_TOKEN": "test-only",
    # libpq's own default user, honoured as libpq itself does (docs of PostgreSQL).
    "PGUSER": "libpq's own",
}


def _exempt(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in EXEMPT)


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "string"` assignments."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = node.value.value
    return found


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        owner = _call_name(func.value) if isinstance(func.value, ast.Attribute | ast.Name) else ""
        return f"{owner}.{func.attr}" if owner else func.attr
    return ""


def _is_env_read(name: str) -> bool:
    """`env(…)`, `settings.env(…)`, `_int_env(…)`, `os.getenv(…)`, `os.environ.get(…)`:
    a call whose first argument names a variable."""
    last = name.rsplit(".", 1)[-1]
    return last in ("env", "getenv") or last.endswith("_env") or name.endswith("environ.get")


def settings_fields(tree: ast.Module) -> Iterator[tuple[str, int]]:
    """(variable, line) of each field of a pydantic-settings model (`class X(BaseSettings)`):
    the field's name is the variable it reads (core.settings.NightshiftSettings)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            _call_name(base).endswith("BaseSettings") for base in node.bases
        ):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    yield item.target.id, item.lineno


def _parsed() -> Iterator[tuple[Path, ast.Module]]:
    for path in _sources():
        yield path, ast.parse(path.read_text(), filename=str(path))


def variables_in_code() -> dict[str, str]:
    """Every environment variable the packages read → where (first place found)."""
    trees = list(_parsed())
    everywhere: dict[str, str] = {}
    for _, tree in trees:
        everywhere.update(_constants(tree))
    found: dict[str, str] = {}

    def add(name: str | None, where: str) -> None:
        if name and ENV_NAME.match(name):
            found.setdefault(name, where)

    for path, tree in trees:
        local = {**everywhere, **_constants(tree)}
        rel = path.relative_to(ROOT)

        def resolve(arg: ast.expr, local: dict[str, str] = local) -> str | None:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                return arg.value
            if isinstance(arg, ast.Name):
                return local.get(arg.id)
            if isinstance(arg, ast.Attribute):  # settings.SOME_CONSTANT
                return everywhere.get(arg.attr)
            return None

        for name, line in settings_fields(tree):
            add(name, f"{rel}:{line}")
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and node.args and _is_env_read(_call_name(node.func)):
                add(resolve(node.args[0]), where)
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.ctx, ast.Load)
                and _call_name(node.value).endswith("environ")
            ):
                add(resolve(node.slice), where)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                # an Airflow connection id: read as AIRFLOW_CONN_<ID> (settings.get_connection_uri)
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_CONN_ID"):
                        add(f"AIRFLOW_CONN_{str(node.value.value).upper()}", where)
    for path in sorted((ROOT / "dbt_project").rglob("*")):
        if path.suffix in (".yml", ".sql") and not {"target", "dbt_packages"} & set(path.parts):
            for match in re.finditer(r"env_var\(\s*['\"]([A-Z0-9_]+)['\"]", path.read_text()):
                add(match.group(1), str(path.relative_to(ROOT)))
    return found


def in_env_example() -> set[str]:
    """`NAME=` lines, also commented out (`# NAME=…`: documented, off by default)."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"(?m)^#?\s*([A-Z][A-Z0-9_]*)=", text))


def configuration_section() -> str:
    """docs/configuration.md: every variable, in its table (the README keeps a short one)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert "| variable |" in text, "docs/configuration.md has no table of variables"
    return text


def in_config_table() -> set[str]:
    """The names in the first column of docs/configuration.md's table."""
    names: set[str] = set()
    for line in configuration_section().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split(" | ")[0]))
    return names


def test_the_scan_finds_reads_of_every_kind() -> None:
    """The scanner itself: it must see each way the code reads a variable, so that a
    missing entry below is a real gap and not a blind spot."""
    found = variables_in_code()
    for name in (
        "NIGHTSHIFT_DATA_DIR",  # settings.env("…") in settings.py
        "FX_REVISION_DAYS",  # a field of core.settings.NightshiftSettings
        "NIGHTSHIFT_NOW",  # settings.env(ENV), a module constant
        "DEMO_API_TOKEN",  # settings.env(TOKEN_ENV)
        "AIRFLOW_CONN_SOURCE_DB",  # SOURCE_DB_CONN_ID = "source_db"
        "AIRFLOW_CONN_ALERTS_WEBHOOK",  # alerting/sinks.py's connection id
        "DBT_POSTGRES_PASSWORD",  # env_var('…') in dbt_project/profiles.yml
        "REPORT_TZ",  # the DAG file
    ):
        assert name in found, f"the scan misses {name}"


def test_the_scan_finds_every_field_of_the_settings_model() -> None:
    from core.settings import NightshiftSettings

    missing = set(NightshiftSettings.model_fields) - set(variables_in_code())
    assert not missing, f"the scan misses the settings model's {sorted(missing)}"


def test_a_settings_field_is_caught() -> None:
    tree = ast.parse(
        "from pydantic_settings import BaseSettings\n"
        "class S(BaseSettings):\n"
        "    model_config = {}\n"
        "    SOME_DAYS: int = 7\n"
        '    """doc"""\n'
        "class Other:\n"
        "    NOT_READ: int = 1\n"
    )
    assert list(settings_fields(tree)) == [("SOME_DAYS", 4)]


def test_every_variable_the_code_reads_is_in_env_example() -> None:
    found = variables_in_code()
    missing = sorted(n for n in set(found) - in_env_example() if not _exempt(n))
    assert not missing, "add to .env.example (with a comment): " + ", ".join(
        f"{n} ({found[n]})" for n in missing
    )


def test_every_variable_the_code_reads_is_in_the_configuration_table() -> None:
    found = variables_in_code()
    missing = sorted(n for n in set(found) - in_config_table() if not _exempt(n))
    assert not missing, "add to docs/configuration.md's table: " + ", ".join(
        f"{n} ({found[n]})" for n in missing
    )


def test_the_exemptions_are_still_needed() -> None:
    found = variables_in_code()
    stale = [p for p in EXEMPT if not any(fnmatch(n, p) for n in found)]
    assert not stale, f"EXEMPT names what the code no longer reads: {stale}"
    documented = in_env_example() | in_config_table()
    both = sorted(n for n in documented if _exempt(n) and n in found)
    assert not both, f"documented after all, drop from EXEMPT: {both}"


def test_the_docs_say_make_reads_env() -> None:
    for text in (configuration_section(), (ROOT / "README.md").read_text()):
        assert "`make` reads `.env`" in text or ("`make`" in text and "`.env`" in text)


# --- every other read goes through settings.env ------------------------------------------


def _raw_reads(tree: ast.Module) -> Iterator[int]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _call_name(node.func)
            if name in ("os.getenv", "getenv") or name.endswith("environ.get"):
                yield node.lineno
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _call_name(node.value) in ("os.environ", "environ")
        ):
            yield node.lineno


def test_every_read_goes_through_settings_env() -> None:
    """`os.environ.get("X", default)` gives "" for `X=` and ignores the default: the trap.
    Copies of the whole environment (`{**os.environ}`) and writes are fine."""
    offenders = []
    for path, tree in _parsed():
        for line in _raw_reads(tree):
            where = f"{path.relative_to(ROOT)}:{line}"
            # settings.env itself, and the dbt script that runs in the adapters' venv
            # (it cannot import pipeline) with the same empty-means-unset read.
            if where.startswith(("core/settings.py", "warehouse/dbt_steps.py")):
                text = path.read_text().splitlines()[line - 1]
                if re.search(r'os\.environ\.get\((name|"[A-Z_]+"), ""\)\.strip\(\)', text):
                    continue
            offenders.append(where)
    assert not offenders, f"read through core.settings.env instead: {offenders}"


def test_a_raw_read_is_caught() -> None:
    tree = ast.parse('import os\nx = os.environ.get("A", "b")\ny = os.getenv("C")\n')
    assert list(_raw_reads(tree)) == [2, 3]
    tree = ast.parse('import os\nz = os.environ["D"]\nos.environ["E"] = "1"\nw = {**os.environ}\n')
    assert list(_raw_reads(tree)) == [2]


# --- no document names a file that does not exist -------------------------------------------

DOCUMENTS = (
    "*.md",
    "docs/**/*.md",
    "dbt_project/*.md",
    ".env.example",
    "Makefile",
    "docker-compose.yml",
)
REPO_PATH = re.compile(
    r"(?<![\w./$<{~-])"  # not the tail of a longer path, URL, variable or placeholder
    r"((?:\.?[A-Za-z0-9_-]+/)*\.?[A-Za-z0-9_-]+"
    r"\.(?:txt|toml|ya?ml|py|md|sql|cfg|ini|json|sh|lock|example))"
    r"(?![\w/-])"
)


def _documents() -> Iterator[Path]:
    seen: set[Path] = set()
    for pattern in DOCUMENTS:
        for path in sorted(ROOT.glob(pattern)):
            if path not in seen and path.is_file() and "node_modules" not in path.parts:
                seen.add(path)
                yield path


def _repo_files() -> tuple[set[str], set[str]]:
    """(paths, base names) of the repository's files: tracked, or new and not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    paths = {p for p in listed if (ROOT / p).exists()}
    return paths, {Path(p).name for p in paths}


def exists_in_repo(name: str, document: Path, files: tuple[set[str], set[str]]) -> bool:
    """A path with a folder exists from the root, the document's folder or dbt_project/;
    a bare file name (`nightly.py` beside its folder in the text) is some file's name."""
    paths, names = files
    if "/" not in name:
        return name in names
    for base in (ROOT, document.parent, ROOT / "dbt_project"):
        candidate = (base / name).resolve()
        if candidate.is_relative_to(ROOT) and (
            str(candidate.relative_to(ROOT)) in paths or candidate.is_dir()
        ):
            return True
    return False


def named_paths(document: Path) -> Iterator[tuple[int, str]]:
    """Repository-looking file names a document names: in backticks and link targets of
    Markdown; anywhere in comments of .env.example, the Makefile and compose's file."""
    text = document.read_text()
    for number, line in enumerate(text.splitlines(), 1):
        if document.suffix == ".md":
            pieces = re.findall(r"`([^`]+)`", line) + re.findall(r"\]\(([^)#\s]+)", line)
        elif line.lstrip().startswith("#"):
            pieces = [line]
        else:
            continue
        for piece in pieces:
            if "://" in piece or "*" in piece:
                continue
            for match in REPO_PATH.finditer(piece):
                yield number, match.group(1)


# Files the project writes at run time (named in the docs, never in the repository).
WRITTEN_AT_RUN_TIME = {
    "passwords.json",  # .airflow/passwords.json, by `make airflow`
    "_commit.json",  # a landing run's commit record
    "_latest.json",  # the landing zone's pointer to a table's newest run
    ".publish.lock",  # the warehouse's publish lock
    "_manifest.json",  # a landed table's manifest
    "run_results.json",  # dbt's record of a run (dbt_project/target/)
}


def test_no_document_names_a_file_that_does_not_exist() -> None:
    files = _repo_files()
    missing = []
    for document in _documents():
        for number, name in named_paths(document):
            if Path(name).name in WRITTEN_AT_RUN_TIME:
                continue
            if not exists_in_repo(name, document, files):
                missing.append(f"{document.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "documents name files that do not exist:\n" + "\n".join(missing)


def test_a_missing_file_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "install `requirements-warehouses.txt`; see [ok](README.md), `pipeline/nope.py`\n"
    )
    assert [n for _, n in named_paths(doc)] == [
        "requirements-warehouses.txt",
        "pipeline/nope.py",
        "README.md",
    ]
    files = _repo_files()
    assert not exists_in_repo("requirements-warehouses.txt", ROOT / "README.md", files)
    assert not exists_in_repo("pipeline/nope.py", ROOT / "README.md", files)
    assert exists_in_repo("core/settings.py", ROOT / "README.md", files)
    assert exists_in_repo("settings.py", ROOT / "README.md", files)
    env = tmp_path / ".env.example"
    env.write_text("# needs requirements-warehouses.txt\nX=config/alerts.yml\n")
    assert [n for _, n in named_paths(env)] == ["requirements-warehouses.txt"]


@pytest.mark.parametrize("name", ["README.md", ".env.example", "Makefile"])
def test_the_documents_are_scanned(name: str) -> None:
    assert ROOT / name in set(_documents())
