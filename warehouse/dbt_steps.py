"""`dbt source freshness`, then another dbt command, in one process and one parse.

Why: the nightly wants the sources' freshness beside its `dbt build`; a second `dbt`
process would pay the interpreter start-up, dbt's imports and the partial-parse load
again. Here dbt parses once (`dbt parse`) and both commands reuse that manifest through
`dbtRunner(manifest=...)`. The freshness results go to `DBT_NIGHTSHIFT_FRESHNESS_OUTPUT`
(one file per call: `target/sources.json` is shared by every dbt run of the dir); their
failures never stop the second command (the caller judges them). Imports dbt only, so any environment's
python runs it as a script (`.venv-adapters/bin/python dbt_steps.py build ...`).

    python warehouse/dbt_steps.py build --select ... --project-dir ... --target ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


def run_with_freshness(args: list[str], callbacks: list[Callable[[Any], None]]) -> Any:
    """`dbt parse`, `dbt source freshness`, then `dbt <args>` on the same manifest; the
    dbtRunnerResult of the parse when it fails, else of `<args>`. `args` carries the
    options both commands share from `--project-dir` on (as warehouse/dbt_runner.py
    builds them)."""
    from dbt.cli.main import dbtRunner

    shared = args[args.index("--project-dir") :]
    parsed = dbtRunner(callbacks=callbacks).invoke(["parse", *shared])
    if not parsed.success or parsed.result is None:
        return parsed
    fresh = dbtRunner(manifest=parsed.result, callbacks=callbacks).invoke(
        ["source", "freshness", *shared]
    )
    # This script runs in other venvs too (dbt adapters): it cannot import core.settings;
    # an empty value means unset, as settings.env has it.
    output = os.environ.get("DBT_NIGHTSHIFT_FRESHNESS_OUTPUT", "").strip()
    if output and hasattr(fresh.result, "write"):
        fresh.result.write(output)
    return dbtRunner(manifest=parsed.result, callbacks=callbacks).invoke(args)


def main(argv: list[str]) -> int:
    result = run_with_freshness(argv, [])  # dbt logs to stdout itself, as its CLI does
    if result.exception is not None:
        print(f"{type(result.exception).__name__}: {result.exception}", flush=True)
        return 2
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.path.pop(0)  # this folder's modules (load.py, publish.py) must not shadow dbt's imports
    raise SystemExit(main(sys.argv[1:]))
