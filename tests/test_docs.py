"""The documentation stands alone: the README fits in 12 KB, every relative link and
anchor resolves inside the repository, no link leaves it, and the docs index links every
page and picture of docs/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000  # bytes: "12 KB" read the strict way

# [text](target) and ![alt](target); targets in code spans and fenced blocks are not links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _markdown_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    files = [ROOT / line for line in out.splitlines() if line]
    # a clone always has these; an empty list would make every check below vacuous
    assert ROOT / "README.md" in files and ROOT / "docs" / "README.md" in files
    return files


def _links(text: str) -> list[str]:
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text)))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def _broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Every link of one markdown file that does not resolve to a file (and heading) of
    the repository at `root`, or that leaves it."""
    problems = []
    for target in _links(path.read_text(encoding="utf-8")):
        where, _, anchor = target.partition("#")
        if re.match(r"^[a-z][a-z0-9+.-]*:", where) or where.startswith("/"):
            problems.append(f"{target}: leaves the repository")
            continue
        dest = (path.parent / where).resolve() if where else path
        if not dest.is_relative_to(root):
            problems.append(f"{target}: leaves the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return [f"{path.relative_to(root)}: {p}" for p in problems]


def test_the_readme_fits_in_12_kb() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}"


def test_every_link_resolves_inside_the_repository() -> None:
    problems = [p for md in _markdown_files() for p in _broken_links(md)]
    assert not problems, "\n".join(problems)


def test_the_docs_index_links_every_page_and_picture() -> None:
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in _links(index.read_text())}
    pages = [
        p
        for p in sorted((ROOT / "docs").iterdir())
        if p.suffix in {".md", ".png"} and p.name != "README.md"
    ]
    assert len(pages) >= 10
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see [a](docs/nope.md)", ["nope.md: no such file"]),
        ("see [a](../../outside.md)", ["leaves the repository"]),
        ("see [a](https://example.com/x)", ["leaves the repository"]),
        ("see [a](/work/shared/contract.md)", ["leaves the repository"]),
        ("see [a](docs/operating.md#no-such-heading)", ["no heading #no-such-heading"]),
        ("see [a](docs/operating.md#a-night) and `[b](nope.md)`", []),
    ],
)
def test_a_bad_link_is_caught(text: str, expected: list[str], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "operating.md").write_text("# Operating\n\n## A night\n")
    probe = repo / "probe.md"
    probe.write_text(text, encoding="utf-8")
    found = _broken_links(probe, repo)
    assert len(found) == len(expected), found
    for problem, want in zip(found, expected, strict=True):
        assert want in problem
