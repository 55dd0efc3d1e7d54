"""The example's user errors: ``ConfigError`` and the field checks that raise it.

A ``ConfigError`` is a setting that cannot be honoured (a field out of range, a mesh that does
not divide the batch, a missing data file, an output folder that holds an earlier run, …). The
``lmo-optax`` command prints it as one line and exits with status 2; anything else that goes
wrong is a bug and keeps its traceback. The checks here serve the config dataclasses of
``config.py`` and ``model.py``, so that each rule is written once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from typing import Any


class ConfigError(ValueError):
    """A user error: its message names the flag, field or file, the value and what is allowed."""


class PeerLost(RuntimeError):
    """Another process of a multi-process run stopped; ``lmo-optax`` exits with status 1."""


def warn(message: str) -> None:
    """One line on stderr: ``lmo-optax: warning: <message>``."""
    print(f"lmo-optax: warning: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Interval:
    """The finite numbers from ``low`` to ``high``, each end open or closed.

    >>> str(Interval(0, 1, low_open=True)), 0.0 in Interval(0, 1, low_open=True)
    ('in (0, 1]', False)
    >>> str(Interval(1)), math.inf in Interval(0)
    ('at least 1', False)
    """

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def check_types(obj: Any, prefix: str = "") -> None:
    """Raises ``ConfigError`` for a field of the dataclass ``obj`` that its annotation rejects.

    Handles bool, int (not bool), float (int too), str, ``Literal`` choices, dataclass types and
    ``dict[str, X]``; ``prefix`` (e.g. ``"model."``) goes before the field's name.
    """
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        kind, value = hints[field.name], getattr(obj, field.name)
        if typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            if value not in choices:
                allowed = ", ".join(repr(c) for c in choices)
                raise ConfigError(f"{prefix}{field.name} must be one of {allowed}, got {value!r}")
        elif not _is_a(value, kind):
            raise ConfigError(f"{prefix}{field.name} must be {_type_name(kind)}, got {value!r}")


def _is_a(value: Any, kind: Any) -> bool:
    """Whether ``value`` is of the annotated type ``kind`` (see ``check_types``)."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(kind) is dict:
        item = typing.get_args(kind)[1]
        return isinstance(value, dict) and all(_is_a(v, item) for v in value.values())
    return isinstance(value, kind) if isinstance(kind, type) else True


def _type_name(kind: Any) -> str:
    """``"an int"``, ``"a GPTConfig"``, ``"a dict of OptimizerConfig"``."""
    if typing.get_origin(kind) is dict:
        return f"a dict of {typing.get_args(kind)[1].__name__}"
    name = getattr(kind, "__name__", str(kind))
    return ("an " if name[0] in "aeiou" else "a ") + name


def check_ranges(obj: Any, ranges: dict[str, Interval], prefix: str = "") -> None:
    """Raises ``ConfigError`` for the first field named in ``ranges`` that is outside its range."""
    for name, interval in ranges.items():
        value = getattr(obj, name)
        if value not in interval:
            raise ConfigError(f"{prefix}{name} must be {interval}, got {value!r}")
