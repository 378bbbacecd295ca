"""Whitespace hooks for pre-commit (local, so `pre-commit run` needs no network).

The two fixers of pre-commit-hooks, as one module:

    python -m tools.whitespace end-of-file FILE...          # exactly one newline at the end
    python -m tools.whitespace trailing-whitespace FILE...  # no spaces/tabs before a newline

Files are fixed in place; the exit status is 1 when a file was changed (pre-commit then
fails the run and shows the diff), 0 otherwise. `--check` reports without writing.
Binary files (a NUL byte) and empty files are left alone.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

_TRAILING = re.compile(rb"[ \t]+(?=\r?\n|\r|\Z)")


def fix_end_of_file(data: bytes) -> bytes:
    """Content with its trailing blank lines dropped and one final newline."""
    if not data.strip(b"\r\n"):
        return b""  # only newlines: an empty file
    stripped = data.rstrip(b"\r\n")
    ending = b"\r\n" if data[len(stripped) :].startswith(b"\r\n") else b"\n"
    return stripped + ending


def fix_trailing_whitespace(data: bytes) -> bytes:
    """Content without spaces or tabs at the end of any line."""
    return _TRAILING.sub(b"", data)


FIXERS: dict[str, Callable[[bytes], bytes]] = {
    "end-of-file": fix_end_of_file,
    "trailing-whitespace": fix_trailing_whitespace,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.whitespace", description=__doc__)
    parser.add_argument("fixer", choices=sorted(FIXERS))
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="report, do not write")
    args = parser.parse_intermixed_args(argv)
    fix = FIXERS[args.fixer]
    changed = 0
    for path in args.files:
        data = path.read_bytes()
        if not data or b"\0" in data:
            continue
        fixed = fix(data)
        if fixed != data:
            changed += 1
            print(f"{'would fix' if args.check else 'fixed'} {args.fixer}: {path}")
            if not args.check:
                path.write_bytes(fixed)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
