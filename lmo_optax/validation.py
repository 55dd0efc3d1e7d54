"""Argument checks shared by the library: each rule is written once, and every error names the
argument (or the parameter path), the value and what is allowed.

Numbers are Python, NumPy and JAX real scalars (``np.float32(2.0)``, ``np.int64(3)``, 0-d
arrays); bools are not. A hyperparameter that JAX is tracing (one injected by
``optax.inject_hyperparams`` and read inside ``jit``) has no value yet: it cannot be checked and
is let through; a concrete array is checked like a number.

>>> import numpy as np
>>> number("radius", np.float32(2.0), low=0, low_open=True)
2.0
>>> number("learning_rate", 1.5, low=0, high=1)
Traceback (most recent call last):
...
ValueError: learning_rate must be a finite number in [0, 1], got 1.5
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmo_optax.paths import flatten_with_paths

_TRACED = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError)


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array, or None while JAX traces it."""
    try:
        return np.asarray(value)
    except _TRACED:
        return None


def _real_scalar(name: str, value: Any, allowed: str) -> float | None:
    """float(value) for a real number, None for a traced scalar; TypeError for anything else."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {allowed}, got the bool {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    if _is_array(value) and value.ndim == 0 and _is_real_dtype(value.dtype):
        concrete = _concrete(value)
        return None if concrete is None else float(concrete)
    raise TypeError(f"{name} must be {allowed}, got {value!r}")


def _is_real_dtype(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """ " in [0, 1]", " > 0", or "" for the whole line."""
    if high == math.inf:
        return "" if low == -math.inf else f" {'>' if low_open else '≥'} {low:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def number(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    concrete: bool = False,
) -> Any:
    """Checks that ``value`` is a finite real number in the interval; returns it.

    Returns ``float(value)`` for Python and NumPy numbers and the array itself for JAX arrays
    (concrete ones checked, traced ones let through), or always a float with ``concrete``
    (for values that must be known before tracing; a traced one is then a TypeError).

    Raises:
      TypeError: ``value`` is not a real number (a bool, a string, a non-scalar array, …).
      ValueError: it is not finite or outside the interval.
    """
    allowed = "a finite number" + _interval(low, high, low_open, high_open)
    x = _real_scalar(name, value, allowed)
    if x is None:
        if concrete:
            raise TypeError(f"{name} must be {allowed} known before tracing, got {value!r}")
        return value
    inside = (low < x if low_open else low <= x) and (x < high if high_open else x <= high)
    if not (math.isfinite(x) and inside):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value if isinstance(value, jax.Array) and not concrete else x


def positive_number(name: str, value: Any, *, concrete: bool = False) -> Any:
    """:func:`number` in (0, ∞)."""
    return number(name, value, low=0, low_open=True, concrete=concrete)


def positive_int(name: str, value: Any) -> int:
    """Checks that ``value`` is a concrete integer ≥ 1 (Python, NumPy or a 0-d array); returns
    it as an int. Step counts shape the computation, so a traced value is an error too.

    Raises:
      TypeError: not an integer (a float such as 2.5 or 2.0, a bool, a traced value).
      ValueError: an integer below one.
    """
    allowed = "a positive integer"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {allowed}, got the bool {value!r}")
    if _is_array(value) and value.ndim == 0 and jnp.issubdtype(value.dtype, jnp.integer):
        concrete = _concrete(value)
        if concrete is None:
            raise TypeError(
                f"{name} must be {allowed} known before tracing, got a traced value; with "
                f"optax.inject_hyperparams, pass static_args=({name!r},)"
            )
        value = concrete.item()
    if not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """Checks that ``value`` is a bool (Python or NumPy); returns it as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def one_of(name: str, value: Any, choices: Sequence[str]) -> str:
    """Checks that ``value`` is one of the strings ``choices``; returns it."""
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def floating_dtype(name: str, value: Any) -> jnp.dtype | None:
    """A floating-point dtype from a dtype-like (or None); raises for any other dtype.

    An array stands for its dtype: ``optax.inject_hyperparams`` treats a scalar type such as
    ``jnp.bfloat16`` as a schedule (it is callable) and injects ``jnp.bfloat16(count)``.
    """
    if value is None:
        return None
    if _is_array(value) or isinstance(value, np.generic):
        dtype = jnp.dtype(value.dtype)
    else:
        try:
            dtype = jnp.dtype(value)
        except TypeError:
            raise TypeError(
                f"{name} must be a floating-point dtype such as jnp.float32, got {value!r}"
            ) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating-point dtype (float32, bfloat16, float16, float64), "
            f"got {dtype.name}"
        )
    return dtype


def floating_array(name: str, x: Any) -> None:
    """Raises TypeError unless ``x`` has a floating-point dtype (an LMO keeps its input's
    dtype, which must be able to hold it)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {dtype}")


def dtype_of(x: Any) -> Any:
    """The dtype of an array, a ``jax.ShapeDtypeStruct`` or a Python number (RNG keys
    included, whose dtype ``jnp.result_type`` cannot determine)."""
    return x.dtype if hasattr(x, "dtype") else jnp.result_type(x)


def _is_floating(x: Any) -> bool:
    return jnp.issubdtype(dtype_of(x), jnp.floating)


def floating_leaves(tree: Any, what: str = "parameters") -> None:
    """Raises ValueError naming every leaf of ``tree`` that is not floating point.

    RNG keys, step counters and masks must stay out of an LMO optimizer: their LMO is not
    defined, and an update cannot be added to them.
    """
    leaves = flatten_with_paths(tree)[0]
    bad = [f"{path} ({dtype_of(x)})" for path, x in leaves if not _is_floating(x)]
    if bad:
        raise ValueError(
            f"lmo_optax: LMO optimizers need floating-point {what}; these are not: "
            + ", ".join(bad)
            + ". Exclude them from the optimizer (with Flax NNX: nnx.Optimizer(model, tx, "
            "wrt=nnx.Param); with optax: optax.partition or optax.masked), or keep them "
            "outside the params pytree."
        )


def same_shapes(reference: Any, tree: Any, *, reference_name: str, name: str, hint: str) -> None:
    """Raises ValueError when ``tree`` does not have the structure and leaf shapes of
    ``reference``, naming the parameter paths that differ.

    Args:
      reference: the tree the optimizer knows (its state, or the parameters).
      tree: the tree it is given (gradients or updates).
      reference_name: what ``reference`` is, for the message (e.g. "the optimizer state").
      name: what ``tree`` is, in the plural (e.g. "gradients").
      hint: what to do about it, appended to the message.
    """
    ref_leaves, ref_def = flatten_with_paths(reference)
    leaves, treedef = flatten_with_paths(tree)
    if ref_def != treedef:
        ref_paths, paths = [p for p, _ in ref_leaves], [p for p, _ in leaves]
        missing = [p for p in ref_paths if p not in paths]
        extra = [p for p in paths if p not in ref_paths]
        differs = ", ".join(
            [f"missing {missing}"] * bool(missing) + [f"unexpected {extra}"] * bool(extra)
        )
        raise ValueError(
            f"lmo_optax: the {name} do not have the tree structure of {reference_name} "
            f"({differs or 'nesting'}; {treedef} vs {ref_def}); {hint}"
        )
    for (path, ref), (_, x) in zip(ref_leaves, leaves):
        if shape_of(ref) != shape_of(x):
            raise ValueError(
                f"lmo_optax: parameter {path or '(the root)'!r}: the {name} have shape "
                f"{shape_of(x)} but {reference_name} has shape {shape_of(ref)}; {hint}"
            )


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of an array, a ``jax.ShapeDtypeStruct`` or a Python number."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
