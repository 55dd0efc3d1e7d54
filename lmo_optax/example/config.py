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

from lmo_optax.example.data import DEFAULT_CORPUS
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
    """One training run: what a config file's ``get_config()`` returns.

    Attributes:
      model: the GPT's shape.
      data: ``"pydoc_data"`` (the CPython documentation that ships with Python) or the path of
        a local UTF-8 text file.
      val_fraction: the fraction of the corpus, taken from its end, held out for validation.
      batch_size: sequences per step, each ``model.context`` bytes long.
      steps: training steps; the learning-rate schedules span them.
      eval_every: steps between validation losses (one is also taken at the last step).
      eval_batches: validation batches averaged into one validation loss.
      log_every: steps between progress lines when stderr is not a terminal.
      checkpoint_every: steps between checkpoints; 0 saves only at the end.
      keep_checkpoints: how many of the latest checkpoints stay on disk (older ones are deleted).
      seed: seeds the initialization, the batches and the sample.
      optimizers: the settings of each optimizer (keys from ``OPTIMIZER_NAMES``).
      run: the optimizers (comma-separated) that ``lmo-optax train`` and ``compare`` run when
        ``--optimizer`` is not given.
      sample_bytes: bytes generated after training (0: no sample).
      sample_prompt: the text the sample continues.
      mesh: e.g. ``"data=4,model=2"``: train sharded over a device mesh
        (``lmo_optax.example.parallel``); empty: one device.
    """

    model: GPTConfig = dataclasses.field(default_factory=GPTConfig)
    data: str = DEFAULT_CORPUS
    val_fraction: float = 0.1
    batch_size: int = 32
    steps: int = 300
    eval_every: int = 50
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    seed: int = 0
    optimizers: dict[str, OptimizerConfig] = dataclasses.field(default_factory=dict)
    run: str = "scion,adamw"
    sample_bytes: int = 300
    sample_prompt: str = "The "
    mesh: str = ""

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(
                f"keep_checkpoints must be at least 1 (the latest checkpoint is what --resume "
                f"reads), got {self.keep_checkpoints}"
            )
        for name in ("checkpoint_every", "sample_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")


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
    try:
        cfg = module.get_config()
    except ValueError as e:  # a field out of range (TrainConfig and GPTConfig check them)
        raise ValueError(f"--config {path}: {e}") from None
    if not isinstance(cfg, TrainConfig):
        raise ValueError(
            f"--config {path}: get_config() returned {type(cfg).__name__}, "
            "expected lmo_optax.example.config.TrainConfig"
        )
    return cfg


# Overrides: hand-written rather than with tyro, ml_collections or simple_parsing, since none is
# a dependency and these few lines cover the configs' sections, the optimizers dict, bool and
# Literal fields, with errors that name the field.


def apply_override(cfg: TrainConfig, assignment: str) -> TrainConfig:
    """Applies one ``dotted.name=value`` override and returns the new config.

    Args:
      cfg: the config; it is not modified.
      assignment: e.g. ``"model.width=64"`` or ``"optimizers.scion.learning_rate=0.05"``.

    Raises:
      ValueError: no ``=``, an unknown field or key, or a value of the wrong type.
    """
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r}: expected field=value, e.g. model.width=64")
    name, value = assignment.split("=", 1)
    return _set(cfg, name.split("."), value, name)


def _set(obj: Any, parts: list[str], value: str, full: str) -> Any:
    """A copy of ``obj`` (a dataclass or dict) with the field at ``parts`` set from ``value``."""
    head, rest = parts[0], parts[1:]
    if isinstance(obj, dict):
        if head not in obj:
            raise ValueError(f"override {full}: unknown key {head!r}; known: {sorted(obj)}")
        if not rest:
            raise ValueError(f"override {full}: name a field inside {head!r}")
        return {**obj, head: _set(obj[head], rest, value, full)}
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"override {full}: {head!r} is not a config section")
    fields = {f.name for f in dataclasses.fields(obj)}
    if head not in fields:
        raise ValueError(f"override {full}: unknown field {head!r}; known: {sorted(fields)}")
    if rest:
        return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value, full)})
    kind = typing.get_type_hints(type(obj))[head]
    return dataclasses.replace(obj, **{head: _parse(value, kind, full)})


def _parse(value: str, kind: Any, name: str) -> Any:
    """``value`` as the field's type: bool, int, float, str or a Literal of strings."""
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
    if typing.get_origin(kind) is typing.Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"{name}={value}: expected one of {typing.get_args(kind)}")
        return value
    raise ValueError(f"{name}: cannot be set from the command line")
