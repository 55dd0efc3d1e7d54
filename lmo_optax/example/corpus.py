"""``--data stdlib``: the Python standard library's own sources, a larger corpus with no download.

The corpus is every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (its modules'
docstrings are the library's documentation; ``pydoc_data/topics.py`` holds the reference
manual), in the order of their sorted relative paths, each followed by a blank line. Left out:
what varies by machine (``site-packages``, ``dist-packages``, ``__pycache__``, the build's
``_sysconfigdata*`` and its ``config-*`` folder) and the test suites (``test``, ``tests``,
``idle_test`` folders), whose generated data and deliberately malformed files are not prose or
idiomatic code. About 12 MB on
CPython 3.11 to 3.13; the corpus differs between Python versions, and its manifest (files,
bytes, SHA-256) says which one a run used.

The files are read one at a time into one uint8 array (bytes, never Python strings).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys
import sysconfig
from typing import Any

import numpy as np

NAME = "stdlib"
SKIP_FOLDERS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
SEPARATOR = b"\n\n"


def stdlib_root() -> pathlib.Path:
    """The folder of this interpreter's standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def files(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """The corpus's files, relative to ``root`` (default ``stdlib_root()``), sorted."""
    root = root or stdlib_root()
    found = []
    for folder, dirs, names in os.walk(root):
        # config-3.x-<platform>: the build's files, whose scripts name the install prefix.
        dirs[:] = [d for d in dirs if d not in SKIP_FOLDERS and not d.startswith("config-")]
        rel = pathlib.Path(folder).relative_to(root)
        found.extend(
            rel / n for n in names if n.endswith(".py") and not n.startswith("_sysconfigdata")
        )
    return sorted(found, key=lambda p: p.as_posix())


def load(
    max_bytes: int | None = None, root: pathlib.Path | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """(bytes as uint8, manifest) of the corpus; with ``max_bytes``, its first files up to then.

    The manifest holds the Python version, the number of files, the bytes and the SHA-256 of
    the corpus, and the relative paths in order.
    """
    root = root or stdlib_root()
    paths = files(root)
    sizes = [(root / p).stat().st_size + len(SEPARATOR) for p in paths]
    total = sum(sizes) if max_bytes is None else min(sum(sizes), max_bytes)
    out = np.empty(total, np.uint8)
    digest, used, filled = hashlib.sha256(), [], 0
    for path, size in zip(paths, sizes, strict=True):
        if filled + size > total:
            break
        chunk = (root / path).read_bytes() + SEPARATOR
        out[filled : filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
        digest.update(chunk)
        filled += len(chunk)
        used.append(path.as_posix())
    manifest = {
        "corpus": NAME,
        "python": ".".join(map(str, sys.version_info[:3])),
        "files": len(used),
        "bytes": filled,
        "sha256": digest.hexdigest(),
        "paths": used,
    }
    return out[:filled], manifest
