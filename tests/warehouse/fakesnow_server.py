"""fakesnow's standalone server (Snowflake emulated on DuckDB) as a subprocess of
`.venv-adapters/bin/python` (fakesnow pins its own duckdb, so it cannot live in .venv),
on 127.0.0.1 on a free port; the tests talk to it from .venv with the Snowflake
connector, as the nightly would to a real account.

    with fakesnow_server(adapters_python) as url: ...   # snowflake://…?emulator=fakesnow
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DATABASE = "NIGHTSHIFT"

# The child prints its port once the server listens, then waits for stdin to close.
# Its logs (uvicorn's access log on stdout) go to stderr: a stdout pipe nobody reads
# would fill up and stop the server mid-request.
_SERVER = """
import faulthandler, json, os, signal, sys
port_out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
import fakesnow
faulthandler.register(signal.SIGUSR1, all_threads=True)
with fakesnow.server(host="127.0.0.1") as kwargs:
    port_out.write(json.dumps({"port": kwargs["port"]}) + chr(10))
    port_out.flush()
    sys.stdin.read()
"""


def url_for(port: int, database: str = DATABASE) -> str:
    """The `AIRFLOW_CONN_WAREHOUSE` of the emulated warehouse (fakesnow's fixed
    credentials fake/snow; network_timeout=5 keeps a refused statement from retrying)."""
    return (
        f"snowflake://fake:snow@127.0.0.1:{port}/{database}"
        "?account=fakesnow&protocol=http&network_timeout=5&emulator=fakesnow"
    )


@contextlib.contextmanager
def fakesnow_server(python: Path, *, timeout_s: float = 60) -> Iterator[str]:
    """A fakesnow server for the block; its URL. Stopped (stdin closed, then SIGTERM,
    SIGKILL) when the block ends."""
    import json

    proc = subprocess.Popen(
        [str(python), "-c", _SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None if os.environ.get("FAKESNOW_SERVER_LOG") else subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout_s
        port = None
        assert proc.stdout is not None
        while port is None:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"fakesnow server did not start (exit {proc.poll()})")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                line = proc.stdout.readline()
                if line.startswith("{"):
                    port = int(json.loads(line)["port"])
        yield url_for(port)
    finally:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
