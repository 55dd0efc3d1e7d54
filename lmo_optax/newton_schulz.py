"""Newton–Schulz orthogonalization: G = U Σ Vᵀ ↦ ≈ U Vᵀ, the heart of the spectral LMO.

Each step applies the odd quintic p(x) = a·x + b·x³ + c·x⁵ to the singular
values of X, computed with matrix products only:

    A = X Xᵀ;  B = b·A + c·A A;  X = a·X + B X          (4m²n + 2m³ FLOPs for m ≤ n)

after normalizing X = G / (s·‖G‖_F) so that every singular value is at most one (s ≥ 1 is the
table's safety factor). Matrices are the last two axes; leading axes are batch axes.
``docs/algorithm.md`` §5 derives the iteration, gives each coefficient table's source (§5.3),
the singular-value bands the tests assert (§5.4) and the Gram iteration with its restart (§5.5).

>>> import jax, jax.numpy as jnp
>>> g = jax.random.normal(jax.random.key(0), (64, 32))
>>> o = orthogonalize(g, coeffs="polar_express", steps=5)
>>> s = jnp.linalg.svd(o, compute_uv=False)
>>> bool((s > 0.8).all() and (s < 1.15).all())
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from lmo_optax import scaling, validation

Coefficients = tuple[float, float, float]


def _triples(coeffs: object) -> np.ndarray | None:
    """``coeffs`` as an (n, 3) float64 array of finite numbers (n ≥ 1), or None."""
    try:
        array = np.asarray(coeffs, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    ok = array.ndim == 2 and array.shape[0] > 0 and array.shape[1] == 3
    return array if ok and np.isfinite(array).all() else None


@dataclasses.dataclass(frozen=True)
class CoefficientTable:
    """Coefficients (a, b, c) per Newton–Schulz step.

    Attributes:
      name: a label for tables and logs.
      steps: the coefficient triple of each step. With more steps requested than listed, the
        last triple repeats; with fewer, the first ones are used (every table here is designed
        greedily, step by step, so a prefix is the best shorter schedule).
      safety: the input is divided by ``safety · ‖G‖_F``; a factor slightly above one leaves
        room for round-off (Polar Express uses 1.01).
    """

    name: str
    steps: tuple[Coefficients, ...]
    safety: float = 1.0

    def __post_init__(self) -> None:
        if _triples(self.steps) is None:
            raise ValueError(
                f"coefficient table {self.name!r} needs one or more (a, b, c) triples of "
                f"finite numbers, got {self.steps!r}"
            )
        validation.number(f"coefficient table {self.name!r}: safety", self.safety, low=1)

    def schedule(self, num_steps: int, *, argument: str = "num_steps") -> tuple[Coefficients, ...]:
        """The coefficient triples of ``num_steps`` steps (a positive integer; ``argument``
        names it in the error)."""
        num_steps = validation.positive_int(argument, num_steps)
        listed = self.steps[:num_steps]
        return listed + (self.steps[-1],) * (num_steps - len(listed))


# The coefficient tables. Jordan: the quintic of Muon (modded-nanogpt), one triple for all steps.
JORDAN = CoefficientTable("jordan", ((3.4445, -4.7750, 2.0315),))
# You / Cesista: five triples tuned for five steps (optax's "dion" preset).
YOU = CoefficientTable(
    "you",
    (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
)
# Polar Express (Amsel et al. 2025), optimal per step on [1e-3, 1], with safety factor 1.01.
POLAR_EXPRESS = CoefficientTable(
    "polar_express",
    (
        (8.2051, -22.9019, 16.4607),
        (4.0664, -2.8612, 0.5184),
        (3.9096, -2.8234, 0.5250),
        (3.2856, -2.4153, 0.4853),
        (2.2779, -1.6198, 0.3985),
        (1.8726, -1.2307, 0.3585),
        (1.8564, -1.2132, 0.3568),
        (1.875, -1.25, 0.375),
    ),
    safety=1.01,
)
# CANS (Grishina et al. 2025), Chebyshev-type five-step schedule.
CANS = CoefficientTable(
    "cans",
    (
        (8.4703, -25.1081, 18.6293),
        (4.1828, -3.1087, 0.5806),
        (3.9619, -2.9541, 0.5630),
        (3.2866, -2.4647, 0.5074),
        (2.2737, -1.6447, 0.4162),
    ),
)

COEFFICIENT_TABLES: dict[str, CoefficientTable] = {
    t.name: t for t in (POLAR_EXPRESS, JORDAN, YOU, CANS)
}
DEFAULT_COEFFS = "polar_express"
DEFAULT_STEPS = 5

CoeffsLike = str | CoefficientTable | Coefficients | Sequence[Coefficients]


def coefficient_table(coeffs: CoeffsLike, *, argument: str = "coeffs") -> CoefficientTable:
    """Turns a table name, a table, one (a, b, c) triple or a list of triples into a table.

    ``argument`` names the argument the coefficients came from in error messages.
    """
    if isinstance(coeffs, CoefficientTable):
        return coeffs
    if isinstance(coeffs, str):
        try:
            return COEFFICIENT_TABLES[coeffs]
        except KeyError:
            raise ValueError(
                f"{argument}: unknown Newton–Schulz coefficient table {coeffs!r}; "
                f"known tables: {sorted(COEFFICIENT_TABLES)}, or pass (a, b, c) triples"
            ) from None
    array = _triples(coeffs)
    if array is None:
        array = _triples([coeffs])  # one (a, b, c) triple
    if array is None:
        raise ValueError(
            f"{argument}: Newton–Schulz coefficients must be a table name "
            f"{sorted(COEFFICIENT_TABLES)}, an (a, b, c) triple or a sequence of triples of "
            f"finite numbers, got {coeffs!r}"
        )
    steps = tuple(tuple(float(x) for x in row) for row in array)
    return CoefficientTable("custom", steps)


def _safe_frobenius_normalize(x: jax.Array, safety: float) -> jax.Array:
    """x / (safety·‖x‖_F) per matrix, exactly scale invariant, 0 ↦ 0, no overflow.

    Scaling by the power of two that brings the largest entry into [½, 1) first (exact; no
    division by a huge or tiny number, ``lmo_optax.scaling``) keeps the sum of squares
    finite over the dtype's whole range and avoids an additive ε (which would break scale
    invariance for tiny inputs).
    """
    x, _ = scaling.to_unit_peak(x, (-2, -1))
    fro = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
    return x / (safety * jnp.where(fro > 0, fro, 1))


Matmul = Callable[[jax.Array, jax.Array, Literal["gram", "x"]], jax.Array]
"""How products are formed: ``matmul(a, b, kind)`` is a @ b, where ``kind`` says whether the
result is a small Gram-side matrix (``"gram"``) or shaped like X (``"x"``). The sharded
strategy of ``lmo_optax.strategies`` passes one that gives each product its output sharding."""


def _plain_matmul(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
    del kind
    return a @ b


def _standard_iteration(
    x: jax.Array, schedule: Sequence[Coefficients], matmul: Matmul = _plain_matmul
) -> jax.Array:
    """X ← a·X + (b·A + c·A²)·X with A = X Xᵀ, on the wide orientation (rows ≤ columns)."""
    for a, b, c in schedule:
        gram = matmul(x, _mT(x), "gram")
        poly = b * gram + c * matmul(gram, gram, "gram")
        x = a * x + matmul(poly, x, "x")
    return x


GRAM_RESTART = 3  # recompute the Gram matrix from X after this many steps


def _gram_iteration(
    x: jax.Array,
    schedule: Sequence[Coefficients],
    tall: bool,
    matmul: Matmul = _plain_matmul,
) -> jax.Array:
    """The same polynomial, iterated on the small Gram matrix ("Gram Newton–Schulz").

    Every iterate is X_k = Q_k·X₀ with Q_k a polynomial in R = X₀X₀ᵀ, so all the small
    matrices commute: with A_k = X_k X_kᵀ and P_k = a·I + b·A_k + c·A_k²,
        Q_{k+1} = P_k·Q_k,   A_{k+1} = P_k·A_k·P_k,   and finally X = Q·X₀.
    Squaring into A puts float32 round-off next to σ² of the smallest singular values, which
    the first, steep steps amplify; so after ``GRAM_RESTART`` steps X is formed and A is
    recomputed from it (the "one restart"), which brings the error back to that of the
    standard iteration (≈2e-5 vs 1e-5 relative, against 1e-3 without it). Cost for an m×n
    matrix (m ≤ n) over T > ``GRAM_RESTART`` steps: 8m²n + (8T − 12)m³ FLOPs (4m²n + (8T − 6)m³
    for T ≤ ``GRAM_RESTART``; :func:`newton_schulz_flops`) instead of T(4m²n + 2m³), a third
    less for GPT's (d, 4d) MLP matrices at T = 5. Tall matrices use XᵀX and X·Q, so no
    transpose is materialized.
    """

    def gram(x: jax.Array) -> jax.Array:
        return matmul(_mT(x), x, "gram") if tall else matmul(x, _mT(x), "gram")

    def apply(q: jax.Array, x: jax.Array) -> jax.Array:
        return matmul(x, q, "x") if tall else matmul(q, x, "x")

    small = gram(x)
    eye = jnp.eye(small.shape[-1], dtype=x.dtype)
    q = None
    last = len(schedule) - 1
    for k, (a, b, c) in enumerate(schedule):
        if k == GRAM_RESTART and q is not None:
            x, q = apply(q, x), None
            small = gram(x)
        poly = a * eye + b * small + c * matmul(small, small, "gram")
        q = poly if q is None else matmul(poly, q, "gram")
        if k < last and k + 1 != GRAM_RESTART:
            small = matmul(matmul(poly, small, "gram"), poly, "gram")
    return apply(q, x)


def _mT(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def newton_schulz_flops(
    rows: int, cols: int, steps: int, method: str, split: int = 1, gram_split: int = 1
) -> float:
    """Floating-point operations of one orthogonalization of a rows×cols matrix.

    ``split``: the number of devices sharing the products with X (the 4m²n terms) when X is
    sharded along its long axis, as in the "sharded" strategy of ``lmo_optax.strategies``.
    ``gram_split``: the number sharing the m×m products (the m³ terms), which are otherwise
    repeated on every device; ``distribute`` over device subgroups splits both.
    """
    m, n = min(rows, cols), max(rows, cols)
    if method == "gram":
        segments = [min(steps, GRAM_RESTART), max(steps - GRAM_RESTART, 0)]
        return sum(4 * m * m * n / split + (8 * s - 6) * m**3 / gram_split for s in segments if s)
    return steps * (4 * m * m * n / split + 2 * m**3 / gram_split)


def choose_method(rows: int, cols: int, steps: int, dtype: jnp.dtype) -> str:
    """ "gram" where it needs fewer FLOPs and the dtype has float32 precision, else "standard"."""
    if jnp.finfo(dtype).bits < 32:  # Gram iterates square the conditioning: not in 16 bits
        return "standard"
    gram = newton_schulz_flops(rows, cols, steps, "gram")
    return "gram" if gram < newton_schulz_flops(rows, cols, steps, "standard") else "standard"


def orthogonalize(
    g: jax.Array,
    *,
    coeffs: CoeffsLike = DEFAULT_COEFFS,
    steps: int = DEFAULT_STEPS,
    dtype: jnp.dtype | None = None,
    method: Literal["auto", "standard", "gram"] = "auto",
    matmul: Matmul | None = None,
) -> jax.Array:
    """Approximates the polar factor U Vᵀ of each matrix in the last two axes of ``g``.

    Args:
      g: array with at least two axes; leading axes are independent batch axes.
      coeffs: a table name (``"polar_express"``, ``"jordan"``, ``"you"``, ``"cans"``), a
        :class:`CoefficientTable`, one (a, b, c) triple or a sequence of triples.
      steps: number of Newton–Schulz steps.
      dtype: computation dtype; defaults to float32 (or float64 for float64 input). The
        result is cast back to ``g.dtype``.
      method: ``"standard"`` iterates on X (the module doc); ``"gram"`` iterates on the small
        Gram matrix, the same polynomial with fewer FLOPs for rectangular matrices;
        ``"auto"`` (default) takes whichever needs fewer FLOPs (standard in 16-bit dtypes).
      matmul: how products are formed (see :data:`Matmul`); None multiplies plainly. Used by
        ``lmo_optax.strategies`` to give each product an output sharding.

    Returns:
      An array of ``g``'s shape and dtype whose matrices have singular values near one (for Polar
      Express at 5 steps, within [0.84, 1.12] for σ/‖G‖_F ∈ [1e-3, 1]) and the singular
      vectors of ``g``; zero maps to zero.

    Example:
      >>> import jax.numpy as jnp
      >>> orthogonalize(jnp.diag(jnp.array([3.0, 0.5])), steps=8).round(2)
      Array([[1., 0.],
             [0., 1.]], dtype=float32)
    """
    table = coefficient_table(coeffs)
    schedule = table.schedule(steps, argument="steps")
    validation.one_of("orthogonalize: method", method, ("auto", "standard", "gram"))
    validation.floating_array("orthogonalize: g", g)
    if g.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix (ndim >= 2), got shape {g.shape}")
    dtype = validation.floating_dtype("orthogonalize: dtype", dtype)
    if dtype is None:
        dtype = jnp.promote_types(g.dtype, jnp.float32)
    if g.size == 0:
        return g  # no entries: nothing to orthogonalize
    rows, cols = g.shape[-2:]
    if method == "auto":
        method = choose_method(rows, cols, len(schedule), dtype)
    x = _safe_frobenius_normalize(g.astype(dtype), table.safety)
    tall = rows > cols
    matmul = matmul or _plain_matmul
    if method == "gram":
        x = _gram_iteration(x, schedule, tall, matmul)
    elif tall:  # work on the wide orientation so X Xᵀ is the small Gram matrix
        x = _mT(_standard_iteration(_mT(x), schedule, matmul))
    else:
        x = _standard_iteration(x, schedule, matmul)
    return x.astype(g.dtype)
