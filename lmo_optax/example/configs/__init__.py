"""The configs shipped with the package, one Python file each, found by name.

``lmo-optax train --config tiny`` reads ``tiny.py`` of this folder; a value that ends in ``.py``
or holds a path separator is a config file of the user's instead. Each file defines
``get_config() -> TrainConfig`` and opens with a docstring whose first line describes it
(``lmo-optax configs`` lists them).
"""

from __future__ import annotations

import ast
import importlib.resources
import os
import pathlib

from lmo_optax.example.errors import ConfigError


def names() -> list[str]:
    """The names of the packaged configs, sorted.

    >>> names()
    ['gpt2_small', 'shallow_gpt', 'stdlib', 'tiny']
    """
    folder = importlib.resources.files(__name__)
    return sorted(
        f.name[:-3]
        for f in folder.iterdir()
        if f.name.endswith(".py") and not f.name.startswith("_")
    )


def is_name(value: str) -> bool:
    """Whether ``--config value`` names a packaged config rather than a file.

    >>> is_name("tiny"), is_name("configs/tiny.py"), is_name("mine.py")
    (True, False, False)
    """
    return not value.endswith(".py") and os.sep not in value and "/" not in value


def path_of(name: str) -> pathlib.Path:
    """The file of the packaged config ``name``.

    Raises:
      ConfigError: no packaged config has that name (the message lists the names).
    """
    known = names()
    if name not in known:
        raise ConfigError(
            f"--config {name}: no such config; the packaged configs are {', '.join(known)} "
            "(or give the path of a .py file)"
        )
    return pathlib.Path(str(importlib.resources.files(__name__) / f"{name}.py"))


def description(name: str) -> str:
    """The first line of the packaged config's docstring (read, not run)."""
    source = path_of(name).read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source)) or ""
    return doc.strip().split("\n", 1)[0]
