"""Training configuration: plain dataclasses, filled by Python files in ``configs/``.

A config file defines ``get_config() -> TrainConfig``. Fields can be overridden from the
command line as ``field=value`` with dotted names, e.g. ``model.width=64`` or
``optimizers.scion.learning_rate=0.05``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import typing
from typing import Any

from lmo_optax.example.model import GPTConfig

OPTIMIZER_NAMES = ("scion", "unconstrained_scion", "adamw", "muon")


@dataclasses.dataclass
class OptimizerConfig:
    """One optimizer and its schedule.

    Attributes:
      learning_rate: peak learning rate (γ for Scion).
      warmup_steps: linear warmup steps (the paper uses none for Scion).
      warmdown_fraction: fraction of the run with a linear decay to zero at the end.
      init: ``"default"`` (Flax's initializers) or ``"ball"`` (``lmo_optax.init_on_ball`` with
        this optimizer's rules: the paper's boundary initialization, Scion only).
      gradient_weight: α of Scion (1 − momentum).
      embedding_radius, hidden_radius, head_radius: Scion radii for ``gpt_rules``.
      b1, b2, weight_decay: AdamW (and the Adam part of Muon).
      momentum: Muon's β.
      ns_steps: Newton–Schulz steps (Scion and Muon).
      state_dtype: dtype of Scion's averaged-gradient buffer (``"bfloat16"``: 2 bytes per
        parameter instead of 4).
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 0
    warmdown_fraction: float = 0.0
    init: str = "default"
    gradient_weight: float = 0.1
    embedding_radius: float = 1.0
    hidden_radius: float = 3.0
    head_radius: float = 10.0
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.0
    momentum: float = 0.95
    ns_steps: int = 5
    state_dtype: str = "float32"


@dataclasses.dataclass
class TrainConfig:
    model: GPTConfig = dataclasses.field(default_factory=GPTConfig)
    data: str = "pydoc_data"  # or a path to a local UTF-8 text file
    val_fraction: float = 0.1
    batch_size: int = 32
    steps: int = 300
    eval_every: int = 50
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    seed: int = 0
    optimizers: dict[str, OptimizerConfig] = dataclasses.field(default_factory=dict)
    run: str = "scion,adamw"  # the optimizers `train` runs when --optimizer is not given
    sample_bytes: int = 300
    sample_prompt: str = "The "
    mesh: str = ""  # e.g. "data=4,model=2": train sharded over a device mesh (example.parallel)


def load_config(path: str) -> TrainConfig:
    """Runs the config file and returns its ``get_config()``."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"lmo_optax_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {path}: the file must define get_config() -> TrainConfig")
    cfg = module.get_config()
    if not isinstance(cfg, TrainConfig):
        raise ValueError(
            f"--config {path}: get_config() returned {type(cfg).__name__}, "
            "expected lmo_optax.example.config.TrainConfig"
        )
    return cfg


def _parse(value: str, kind: Any, name: str) -> Any:
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={value}: expected true or false")
    if kind in (int, float, str):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{name}={value}: expected {kind.__name__}") from None
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"{name}={value}: expected one of {typing.get_args(kind)}")
        return value
    raise ValueError(f"{name}: cannot be set from the command line")


def apply_override(cfg: TrainConfig, assignment: str) -> TrainConfig:
    """Applies one ``dotted.field=value`` override; unknown fields are an error."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r}: expected field=value, e.g. model.width=64")
    name, value = assignment.split("=", 1)
    parts = name.split(".")
    return _set(cfg, parts, value, name)


def _set(obj: Any, parts: list[str], value: str, full: str) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(obj, dict):
        if head not in obj:
            raise ValueError(f"override {full}: unknown key {head!r}; known: {sorted(obj)}")
        new = dict(obj)
        if not rest:
            raise ValueError(f"override {full}: name a field inside {head!r}")
        new[head] = _set(obj[head], rest, value, full)
        return new
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"override {full}: {head!r} is not a config section")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if head not in fields:
        raise ValueError(f"override {full}: unknown field {head!r}; known: {sorted(fields)}")
    current = getattr(obj, head)
    if rest:
        return dataclasses.replace(obj, **{head: _set(current, rest, value, full)})
    hints = typing.get_type_hints(type(obj))
    return dataclasses.replace(obj, **{head: _parse(value, hints[head], full)})
