"""Exact rescaling by powers of two, so that norms and LMOs work over a dtype's whole range.

Squaring an entry near float32's maximum (≈3.4e38) overflows, and dividing by such an entry
is not safe either: XLA may compute x / p as x · (1/p), and 1/p is then subnormal, which the
CPU backend flushes to zero. So nothing here divides by a data-dependent magnitude. Instead an
array is brought to a peak in [½, 1) by multiplying with 2^−e, e the exponent of its largest
entry (``jnp.frexp``), which is exact; sums of squares and Newton–Schulz then run on that, and
a norm is multiplied back by 2^e at the end, overflowing only when the true value does
(``docs/algorithm.md`` §1.4). The power 2^e is applied as two factors 2^⌊e/2⌋·2^⌈e/2⌉, each
well inside the normal range (2^128 itself is not a float32).

>>> import jax.numpy as jnp
>>> x = jnp.array([3e38, -1e38], jnp.float32)
>>> y, e = to_unit_peak(x, (0,))
>>> y.tolist(), e.tolist()
([0.8816207647323608, -0.2938735783100128], [128])
>>> n = jnp.sqrt(jnp.sum(y * y))  # ‖x‖₂ = n·2^e, with no overflow on the way
>>> print(f"{float(times_power_of_two(n, e[0])):.6e}", float(jnp.sqrt(jnp.sum(x * x))))  # naive
3.162278e+38 inf
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Axes = Sequence[int]


def _power_of_two(k: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """2^k in ``dtype``, built from its exponent bits (exact; k within the normal range)."""
    info = jnp.finfo(dtype)
    biased = k.astype(jnp.dtype(f"int{info.bits}")) + (info.maxexp - 1)
    return jax.lax.bitcast_convert_type(biased << info.nmant, dtype)


def times_power_of_two(x: jax.Array, e: jax.Array) -> jax.Array:
    """x · 2^e (e an integer array broadcasting against x), exact unless the result overflows
    or is subnormal. e is clipped to twice the dtype's exponent range, beyond which any x of
    a few units overflows or vanishes anyway."""
    bias = jnp.finfo(x.dtype).maxexp - 1
    e = jnp.clip(e, -2 * (bias - 1), 2 * bias)
    half = e // 2
    return x * _power_of_two(half, x.dtype) * _power_of_two(e - half, x.dtype)


def to_unit_peak(x: jax.Array, axes: Axes) -> tuple[jax.Array, jax.Array]:
    """(y, e) with x = y · 2^e exactly and max |y| over ``axes`` in [½, 1) (keepdims).

    Where x is zero over ``axes`` (or has no entries there), y = 0 and e = 0. Non-finite
    entries stay non-finite.
    """
    peak = jnp.max(jnp.abs(x), axis=tuple(axes), keepdims=True, initial=0)
    _, e = jnp.frexp(peak)
    e = jnp.where(jnp.isfinite(peak), e, 0)
    return times_power_of_two(x, -e), e


def reduce_scaled(
    values: jax.Array,
    exponents: jax.Array,
    reduce: Callable[[jax.Array], jax.Array],
    factor: float,
) -> jax.Array:
    """reduce(values · 2^exponents) · factor, with no intermediate overflow.

    ``values`` (non-negative, at most a few units each) are the mantissas of the numbers to
    reduce, ``exponents`` their powers of two (broadcasting against them). Everything is
    taken relative to the largest exponent, reduced, multiplied by ``factor``, and only then
    scaled back, so the result overflows only when the true value does. ``reduce`` must map
    an array with no entries to 0 (``jnp.sum``, or ``jnp.max`` with ``initial=0``).
    """
    top = jnp.max(exponents) if exponents.size else jnp.zeros((), exponents.dtype)
    return times_power_of_two(reduce(times_power_of_two(values, exponents - top)) * factor, top)


def sum_of(values: jax.Array) -> jax.Array:
    """Σ values (0 for none): a ``reduce`` for :func:`reduce_scaled`."""
    return jnp.sum(values)


def max_of(values: jax.Array) -> jax.Array:
    """max values (0 for none; values are non-negative): a ``reduce`` for :func:`reduce_scaled`."""
    return jnp.max(values, initial=0)
