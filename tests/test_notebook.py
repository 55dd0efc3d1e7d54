"""The Colab notebook executes end to end (reduced to a few steps by an environment variable)."""

import os
import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

from lmo_optax.example.config import load_config

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LMO_OPTAX_NOTEBOOK_STEPS", "3")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "| scion" in outputs and "| adamw" in outputs
    assert (tmp_path / "runs" / "notebook" / "loss.png").exists()
    if path.name == "quickstart.ipynb":
        # The notebook says its learning rates are those of the tiny config: the table's lr
        # column shows them.
        tiny = load_config("tiny")
        for name in ("scion", "adamw"):
            lr = f"{tiny.optimizers[name].learning_rate:g}"
            assert re.search(rf"^\| {name} +\| {re.escape(lr)} +\|", outputs, re.M), (name, lr)
