"""The repository stands alone: no file refers to notes, folders or machines outside it.

Everything the code, tests and benchmarks rely on is in the repository (the mathematics in
``docs/algorithm.md``) or in a cited paper or public project. This test reads every file of
the repository (what git tracks, or every file below the root in a copy without ``.git``) and
fails on a reference that a reader of the repository alone could not follow.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# What a reader of the repository alone could not follow, and the pattern that finds it. A notes
# file is only a hit when the repository has no file of that name (see ``references_outside``).
NOTES_FILE = re.compile(r"\b[A-Z][A-Z0-9_]*\.md\b")
FORBIDDEN = {
    "a path that climbs out of the repository": re.compile(r"(?<![\w.])\.\./"),
    "an absolute path of one machine": re.compile(
        r"(?<![\w.:/])/(?:home|Users|root|mnt|work|srv)/\w"
    ),
    "an issue or work-item number": re.compile(r"\b[Ii](ssue|tem)s?\s*#?\d"),
    "how the work was organised": re.compile(
        r"\b(this|that|the|a|our) session\b|\blent an? (GPU|machine)|\bsubagent|\bsandbox\b"
    ),
}

# Build outputs and environments that a working copy may hold but the repository does not.
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".ipynb_checkpoints",
    "build",
    "dist",
}


def repository_files() -> list[pathlib.Path]:
    """The files of the repository: git's list in a checkout, else every file below the root."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        out = subprocess.run(
            [git, "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        files.extend(pathlib.Path(folder) / n for n in names)
    return files


def text_of(path: pathlib.Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def references_outside(
    text: str, known: frozenset[str] = frozenset()
) -> list[tuple[int, str, str]]:
    """(line number, what, line) of every forbidden reference in ``text``; ``known`` holds the
    file names the repository has (a notes file of one of those names is fine)."""
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        found = [what for what, pattern in FORBIDDEN.items() if pattern.search(line)]
        if any(name not in known for name in NOTES_FILE.findall(line)):
            found.append("a notes file that is not in the repository")
        hits += [(number, what, line.strip()[:160]) for what in found]
    return hits


def test_no_file_refers_to_anything_outside_the_repository():
    files = [p for p in repository_files() if p.is_file()]
    assert len(files) > 20, f"found only {len(files)} files under {ROOT}"
    known = frozenset(p.name for p in files)
    hits = []
    for path in files:
        text = text_of(path)
        if text is not None:
            rel = path.relative_to(ROOT)
            hits += [
                f"{rel}:{n}: {what}: {line}" for n, what, line in references_outside(text, known)
            ]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


# One example of each kind. They are assembled from parts so that this file, which the test
# above reads too, holds none of them as written.
SLASH = "/"
OUTSIDE = [
    "the bands of " + "NOTES" + ".md §5",
    "see " + SLASH.join(["..", "spec", "notes"]),
    "cited by an absolute path, " + SLASH.join(["", "home", "alice", "lmo", "benchmarks"]),
    "as asked in " + "issue " + "4",
    "benchmark for " + "item #" + "2",
    "not measured: this " + "session was not " + "lent" + " a GPU machine",
]


@pytest.mark.parametrize("line", OUTSIDE)
def test_each_kind_of_reference_is_found(line):
    assert references_outside(line)


@pytest.mark.parametrize(
    "line",
    [
        "Pethick et al., arXiv:2502.07529",
        "docs/algorithm.md §5.2, README.md and LICENSE",
        "python benchmarks/run_all.py --quick --results /tmp/bench",
        "#!/usr/bin/env bash; 2>/dev/null",
        "not measured: no GPU was available",
        "pytest session setup: eight simulated CPU devices",
        '"items": 3',
    ],
)
def test_ordinary_text_passes(line):
    assert not references_outside(line, frozenset({"README.md"}))
