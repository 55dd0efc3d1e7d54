"""Training configuration: plain dataclasses, filled by Python config files.

The configs shipped with the package (``lmo_optax/example/configs/``) are found by name
(``tiny``); any other config file by its path. A config file defines
``get_config() -> TrainConfig``. Fields can be overridden from the command line as
``field=value`` with dotted names, e.g. ``model.width=64`` or
``optimizers.scion.learning_rate=0.05``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import types
import typing
from typing import Any, Literal

from lmo_optax.example import configs
from lmo_optax.example.data import BYTE_VOCABULARY, DEFAULT_CORPUS
from lmo_optax.example.errors import ConfigError, Interval, check_ranges, check_types
from lmo_optax.example.model import GPTConfig

__all__ = [
    "OPTIMIZER_NAMES",
    "ConfigError",
    "OptimizerConfig",
    "TrainConfig",
    "apply_override",
    "apply_overrides",
    "load_config",
    "mesh_axes",
]

OPTIMIZER_NAMES = ("scion", "unconstrained_scion", "adamw", "muon")
SCION_NAMES = ("scion", "unconstrained_scion")
MESH_AXES = ("data", "model")


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
    init: Literal["default", "ball"] = "default"
    gradient_weight: float = 0.1
    embedding_radius: float = 1.0
    hidden_radius: float = 3.0
    head_radius: float = 10.0
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.0
    momentum: float = 0.95
    ns_steps: int = 5
    state_dtype: Literal["float32", "bfloat16"] = "float32"

    def check(self, name: str) -> None:
        """Raises ``ConfigError`` naming ``optimizers.<name>.<field>`` for a value it rejects."""
        prefix = f"optimizers.{name}."
        check_types(self, prefix)
        check_ranges(self, _OPTIMIZER_RANGES, prefix)
        if self.init == "ball" and name not in SCION_NAMES:
            raise ConfigError(
                f"{prefix}init='ball' is for {' and '.join(SCION_NAMES)} only (it starts the "
                "parameters on their norm balls); use 'default'"
            )


_POSITIVE = Interval(0, low_open=True)
_FRACTION = Interval(0, 1, high_open=True)  # a decay rate β
_OPTIMIZER_RANGES = {
    "learning_rate": _POSITIVE,
    "warmup_steps": Interval(0),
    "warmdown_fraction": Interval(0, 1),
    "gradient_weight": Interval(0, 1, low_open=True),
    "embedding_radius": _POSITIVE,
    "hidden_radius": _POSITIVE,
    "head_radius": _POSITIVE,
    "b1": _FRACTION,
    "b2": _FRACTION,
    "weight_decay": Interval(0),
    "momentum": _FRACTION,
    "ns_steps": Interval(1),
}


@dataclasses.dataclass
class TrainConfig:
    """One training run: what a config file's ``get_config()`` returns.

    Every field is checked when the config is made (``__post_init__``): a setting that cannot
    be honoured raises ``ConfigError`` rather than being adjusted.

    Attributes:
      model: the GPT's shape (its vocabulary must hold the 256 byte values).
      data: ``"pydoc_data"`` (the CPython documentation that ships with Python), ``"stdlib"``
        (the standard library's sources), a glob of ``.bin`` token shards, or the path of a
        local UTF-8 text file (``lmo_optax.example.data``).
      val_data: validation data in any of those forms; empty: the end of ``data``.
      val_fraction: the fraction of the corpus, taken from its end, held out for validation
        (without ``val_data``).
      batch_size: sequences per step, each ``model.context`` bytes long.
      steps: training steps; the learning-rate schedules span them.
      eval_every: steps between validation losses (one is also taken at the last step).
      eval_batches: validation batches averaged into one validation loss.
      log_every: steps between progress lines when stderr is not a terminal.
      checkpoint_every: steps between checkpoints; 0 saves only at the end.
      diagnostics_every: steps between per-layer diagnostics of Scion runs
        (``lmo_optax.diagnostics`` → ``diagnostics.jsonl`` and ``diagnostics.png``); 0: off.
      keep_checkpoints: how many of the latest checkpoints stay on disk (older ones are deleted).
      seed: seeds the initialization, the batches and the sample.
      optimizers: the settings of each optimizer (keys from ``OPTIMIZER_NAMES``).
      run: the optimizers (comma-separated) that ``lmo-optax train`` and ``compare`` run when
        ``--optimizer`` is not given.
      sample_bytes: tokens generated after training, bytes for text data (0: no sample); the
        model slides its context window over a sample longer than ``model.context``. Token
        shards are decoded with the tokenizer that made them when it is available offline
        (``train.text_codec``); otherwise the run logs that it has no sample.
      sample_prompt: the text the sample continues (not empty when ``sample_bytes`` > 0).
      mesh: e.g. ``"data=4,model=2"``: train sharded over a device mesh
        (``lmo_optax.example.parallel``); empty: one device. ``data`` must divide
        ``batch_size`` and ``model`` must divide ``model.heads``.
      grad_accum_steps: k > 1 splits each step's batch into k micro-batches of
        ``batch_size / k`` sequences inside the jitted step and averages their gradients
        (``optax.MultiSteps``) into one optimizer update: ``steps``, the schedules and the
        checkpoints count optimizer steps, and activations take the memory of one micro-batch.
        k must divide ``batch_size`` (and ``data`` the micro-batch).
    """

    model: GPTConfig = dataclasses.field(default_factory=GPTConfig)
    data: str = DEFAULT_CORPUS
    val_data: str = ""
    val_fraction: float = 0.1
    batch_size: int = 32
    steps: int = 300
    eval_every: int = 50
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 0
    diagnostics_every: int = 0
    keep_checkpoints: int = 3
    seed: int = 0
    optimizers: dict[str, OptimizerConfig] = dataclasses.field(default_factory=dict)
    run: str = "scion,adamw"
    sample_bytes: int = 300
    sample_prompt: str = "The "
    mesh: str = ""
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        check_types(self)
        check_ranges(self, _TRAIN_RANGES)
        for name, oc in self.optimizers.items():
            if name not in OPTIMIZER_NAMES:
                raise ConfigError(
                    f"optimizers: unknown optimizer {name!r}; choose from "
                    f"{', '.join(OPTIMIZER_NAMES)}"
                )
            oc.check(name)
        if self.model.vocab_size < BYTE_VOCABULARY:
            raise ConfigError(
                f"model.vocab_size must be at least {BYTE_VOCABULARY} (the tokens are bytes), "
                f"got {self.model.vocab_size}"
            )
        if self.sample_bytes and not self.sample_prompt:
            raise ConfigError(
                "sample_prompt must not be empty when sample_bytes > 0 (the sample continues it)"
            )
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"grad_accum_steps={self.grad_accum_steps} must divide "
                f"batch_size={self.batch_size} (each step's batch is split into micro-batches)"
            )
        self._check_mesh()

    def _micro_batch_name(self) -> str:
        """How an error names the sequences of one micro-batch."""
        return "batch_size" + (" / grad_accum_steps" if self.grad_accum_steps > 1 else "")

    def _check_mesh(self) -> None:
        """The mesh's axes divide what they split: ``data`` the batch, ``model`` the heads."""
        axes = mesh_axes(self.mesh)
        for axis, field, size in (
            ("data", self._micro_batch_name(), self.batch_size // self.grad_accum_steps),
            ("model", "model.heads", self.model.heads),
        ):
            if size % axes.get(axis, 1):
                raise ConfigError(
                    f"--mesh {self.mesh}: the {axis} axis ({axes[axis]} devices) must divide "
                    f"{field}={size}"
                )


_TRAIN_RANGES = {
    "val_fraction": Interval(0, 1, low_open=True, high_open=True),
    "batch_size": Interval(1),
    "steps": Interval(1),
    "eval_every": Interval(1),
    "eval_batches": Interval(1),
    "log_every": Interval(1),
    "checkpoint_every": Interval(0),
    "diagnostics_every": Interval(0),
    # The latest checkpoint is what --resume reads.
    "keep_checkpoints": Interval(1),
    "sample_bytes": Interval(0),
    "grad_accum_steps": Interval(1),
}


def mesh_axes(text: str) -> dict[str, int]:
    """The axis sizes of a mesh spelled ``"data=4,model=2"`` (``{}`` for ``""``).

    Raises:
      ConfigError: not ``axis=size`` pairs, an axis twice, a size below 1, or an axis other
        than ``data`` and ``model``.

    >>> mesh_axes("data=4,model=2")
    {'data': 4, 'model': 2}
    """
    axes: dict[str, int] = {}
    if not text:
        return axes
    for part in text.split(","):
        name, sep, size = (s.strip() for s in part.partition("="))
        if not sep or not size.isdigit():
            raise ConfigError(
                f"--mesh {text}: expected axis=size pairs such as 'data=4,model=2', "
                f"got {part.strip()!r}"
            )
        if name not in MESH_AXES:
            raise ConfigError(
                f"--mesh {text}: the example shards over axes 'data' and 'model', got {name!r}"
            )
        if name in axes:
            raise ConfigError(f"--mesh {text}: axis {name!r} appears twice")
        if int(size) < 1:
            raise ConfigError(f"--mesh {text}: axis {name!r} needs a size of at least 1")
        axes[name] = int(size)
    return axes


def load_config(path: str) -> TrainConfig:
    """Runs the config file and returns its ``get_config()``.

    Args:
      path: a packaged config's name (``"tiny"``, see ``configs.is_name``) or a file's path.

    Raises:
      ConfigError: no packaged config has the name, the file is missing or unreadable, has a
        syntax error (named with its line), defines no ``get_config``, or its config has a
        field out of range.
    """
    p = configs.path_of(path) if configs.is_name(path) else pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        source = p.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"--config {path}: cannot read it ({e})") from None
    try:
        code = compile(source, str(p), "exec")
    except SyntaxError as e:
        raise ConfigError(f"--config {path}, line {e.lineno}: {e.msg}") from None
    module = types.ModuleType(f"lmo_optax_config_{p.stem}")
    module.__file__ = str(p)
    exec(code, module.__dict__)  # the config file is the user's Python program
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"--config {path}: the file must define get_config() -> TrainConfig")
    try:
        cfg = get_config()
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(
            f"--config {path}: get_config() returned {type(cfg).__name__}, "
            "expected lmo_optax.example.config.TrainConfig"
        )
    return cfg


# Overrides: hand-written rather than with tyro, ml_collections or simple_parsing, since none is
# a dependency and these few lines cover the configs' sections, the optimizers dict, bool and
# Literal fields, with errors that name the field.


def apply_overrides(cfg: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Applies ``dotted.name=value`` overrides together and returns the new config.

    All of them are applied before the config is checked, so their order does not matter
    (``model.heads=8 model.width=64`` works although width 128 / heads 8 alone might not).

    Args:
      cfg: the config; it is not modified.
      assignments: e.g. ``["model.width=64", "optimizers.scion.learning_rate=0.05"]``; a
        later assignment of the same field wins.

    Raises:
      ConfigError: no ``=``, an unknown field or key, a value of the wrong type, or a config
        whose fields are out of range.
    """
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep:
            raise ConfigError(f"override {assignment!r}: expected field=value, e.g. model.width=64")
        _record(changes, name.split("."), value, name)
    return _rebuild(cfg, changes, "")


def apply_override(cfg: TrainConfig, assignment: str) -> TrainConfig:
    """``apply_overrides`` with one assignment."""
    return apply_overrides(cfg, [assignment])


def _record(changes: dict[str, Any], parts: list[str], value: str, full: str) -> None:
    """Stores ``value`` at ``parts`` in the nested dict ``changes``."""
    node = changes
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {full}: {part!r} is also set as a value")
    if isinstance(node.get(parts[-1]), dict):
        raise ConfigError(f"override {full}: {parts[-1]!r} is a section; name a field inside it")
    node[parts[-1]] = value


def _rebuild(obj: Any, changes: dict[str, Any], prefix: str) -> Any:
    """A copy of ``obj`` (a dataclass or dict) with ``changes`` (nested, by name) applied."""
    if isinstance(obj, dict):
        for key in changes:
            if key not in obj:
                raise ConfigError(
                    f"override {prefix}{key}: unknown key {key!r}; known: {sorted(obj)}"
                )
        updated = {}
        for key, change in changes.items():
            if not isinstance(change, dict):
                raise ConfigError(f"override {prefix}{key}: name a field inside {key!r}")
            updated[key] = _rebuild(obj[key], change, f"{prefix}{key}.")
        return {**obj, **updated}
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(
            f"override {prefix[:-1]}.…: {prefix[:-1]} is a value, not a section; "
            f"set it as {prefix[:-1]}=VALUE"
        )
    hints = typing.get_type_hints(type(obj))
    updates = {}
    for name, change in changes.items():
        if name not in hints:
            raise ConfigError(
                f"override {prefix}{name}: unknown field {name!r}; known: "
                f"{sorted(f.name for f in dataclasses.fields(obj))}"
            )
        if isinstance(change, dict):
            updates[name] = _rebuild(getattr(obj, name), change, f"{prefix}{name}.")
        else:
            updates[name] = _parse(change, hints[name], prefix + name)
    return dataclasses.replace(obj, **updates)


def _parse(value: str, kind: Any, name: str) -> Any:
    """``value`` as the field's type: bool, int, float or str (a ``Literal``'s choices are
    checked with the config's other rules, in ``errors.check_types``)."""
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={value}: expected true or false")
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{name}={value}: expected {kind.__name__}") from None
    if kind is str or typing.get_origin(kind) is typing.Literal:
        return value
    raise ConfigError(f"{name}: cannot be set from the command line")
