"""The README's "Your own model" examples run, and print the tables the README shows."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def examples(text: str) -> list[tuple[str, str]]:
    """(python code, the output block right after it) pairs."""
    return re.findall(r"```python\n(.*?)```\n\n[^`]*?```\n(.*?)```", text, flags=re.S)


def test_the_your_own_model_examples_print_what_the_readme_shows():
    pytest.importorskip("equinox")
    pairs = examples(section("Your own model"))
    assert len(pairs) == 2
    namespace: dict = {}
    for code, shown in pairs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), namespace)
        assert out.getvalue().split() == shown.split(), out.getvalue()
