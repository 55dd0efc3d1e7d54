"""Norms, their unit-ball LMOs, dual norms and boundary initializations, in Flax layout.

Pethick et al., arXiv:2502.07529: the paper's Table 2 and Recommendation 3.1; every formula
here is derived in ``docs/algorithm.md`` §1 and §3 (one subsection per norm). A Flax kernel
K has shape (d_in, d_out) and acts as y = x @ K. Every norm here is the *unit-ball* version;
the radius ρ_ℓ of a parameter is attached by the rules (``lmo_optax.rules``). For every norm:

* ``lmo(g)`` ∈ argmin_{‖x‖ ≤ 1} ⟨g, x⟩: descent sign, same shape and dtype as g, lmo(0) = 0;
* ``norm(lmo(g)) = 1`` for g ≠ 0 and ``⟨g, lmo(g)⟩ = −dual_norm(g)``;
* ``init(key, shape)`` draws a point on the unit sphere shaped like the LMO (paper App. B.3).

Tensors with more than two axes name their reduction (input) and output axes; all other axes
are batch axes, each batch entry a separate matrix. The norm of a batched tensor is the max over
its matrices and its dual norm the sum (the layer-wise max-norm of Scion, paper §4).

>>> import jax, jax.numpy as jnp
>>> g = jax.random.normal(jax.random.key(0), (32, 16))
>>> for n in (Spectral(method="svd"), ColNorm(), RowNorm(), Sign()):
...     d = n.lmo(g)
...     print(type(n).__name__, round(float(n.norm(d)), 4),
...           bool(jnp.isclose(jnp.vdot(g, d), -n.dual_norm(g), rtol=1e-4)))
Spectral 1.0 True
ColNorm 1.0 True
RowNorm 1.0 True
Sign 1.0 True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from lmo_optax import layouts, newton_schulz, scaling, validation

Shape = tuple[int, ...]
Axes = tuple[int, ...]


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _safe_divide(x: jax.Array, y: jax.Array) -> jax.Array:
    """x / y where y > 0, else 0: exact scale invariance and lmo(0) = 0, with no ε."""
    positive = y > 0
    return jnp.where(positive, x / jnp.where(positive, y, 1), 0)


def _is_int(a: object) -> bool:
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def _as_axes(axes: int | Sequence[int]) -> Axes:
    return (int(axes),) if _is_int(axes) else tuple(int(a) for a in axes)


def _check_axes(name: str, axes: object, optional: bool = False) -> None:
    """Raises TypeError unless ``axes`` is an int or a sequence of ints (or None if optional)."""
    if optional and axes is None:
        return
    if _is_int(axes):
        return
    if isinstance(axes, Sequence) and not isinstance(axes, str) and all(map(_is_int, axes)):
        return
    allowed = "an int or a sequence of ints" + (" or None" if optional else "")
    raise TypeError(f"{name} must be {allowed}, got {axes!r}")


@dataclasses.dataclass(frozen=True)
class Norm:
    """Base class: a norm, its unit-ball LMO, its dual norm and its boundary init."""

    def __post_init__(self) -> None:
        # Every flag is a bool: a truthy string or number would silently pick a variant.
        for field in dataclasses.fields(self):
            if field.type in ("bool", bool):
                validation.flag(f"{type(self).__name__}.{field.name}", getattr(self, field.name))

    def for_shape(self, shape: Shape) -> Norm:
        """The concrete norm for a parameter of this shape (``Auto`` chooses; others: self)."""
        del shape
        return self

    def check(self, shape: Shape) -> None:
        """Raises ValueError when this norm cannot be applied to a parameter of ``shape``."""
        del shape

    def scale(self, shape: Shape) -> float:
        """The dimension factor s of the LMO (e.g. √(d_out/d_in) for Spectral; §1.2).

        A parameter with no entries has factor 1: there is nothing to scale, its LMO is empty
        and its norm and dual norm are 0.
        """
        self.check(shape)
        return 1.0 if math.prod(shape) == 0 else self.dimension_factor(shape)

    def dimension_factor(self, shape: Shape) -> float:
        """The factor s for a ``shape`` with at least one entry (subclasses define it)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short name for tables."""
        return type(self).__name__

    def lmo(self, g: jax.Array) -> jax.Array:
        raise NotImplementedError

    def norm(self, w: jax.Array) -> jax.Array:
        raise NotImplementedError

    def dual_norm(self, g: jax.Array) -> jax.Array:
        raise NotImplementedError

    def init(self, key: jax.Array, shape: Shape, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class MatrixNorm(Norm):
    """A norm on the matrices formed by reduction (input) and output axes; the rest is batch.

    Attributes:
      reduction_axes: the input axes (d_in is the product of their sizes).
      output_axes: the output axes (d_out is the product of their sizes).
    """

    reduction_axes: int | Sequence[int] = -2
    output_axes: int | Sequence[int] = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_axes(f"{type(self).__name__}.reduction_axes", self.reduction_axes)
        _check_axes(f"{type(self).__name__}.output_axes", self.output_axes)

    def axes(self, shape: Shape) -> tuple[Axes, Axes, Axes]:
        """(reduction, output, batch) axes as sorted non-negative indices for ``shape``."""
        ndim = len(shape)
        red, out = _as_axes(self.reduction_axes), _as_axes(self.output_axes)
        if ndim < 2:
            raise ValueError(
                f"{self.describe()} is a matrix norm and needs a parameter with at least two "
                f"axes, got shape {tuple(shape)}; use RMS or Sign(fan_in_scaled=False) for vectors"
            )
        if any(not -ndim <= a < ndim for a in red + out):
            raise ValueError(
                f"{self.describe()}: axes reduction={red} output={out} are out of range for "
                f"shape {tuple(shape)}"
            )
        red = tuple(sorted(a % ndim for a in red))
        out = tuple(sorted(a % ndim for a in out))
        if (
            not red
            or not out
            or set(red) & set(out)
            or len(set(red)) < len(red)
            or len(set(out)) < len(out)
        ):
            raise ValueError(
                f"{self.describe()}: reduction axes {red} and output axes {out} must be "
                f"non-empty and disjoint for shape {tuple(shape)}"
            )
        batch = tuple(a for a in range(ndim) if a not in red and a not in out)
        return red, out, batch

    def check(self, shape: Shape) -> None:
        self.axes(shape)

    def dims(self, shape: Shape) -> tuple[int, int]:
        """(d_in, d_out) of the matrices of a parameter of ``shape``."""
        red, out, _ = self.axes(shape)
        return math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)

    def matrix_batch(self, shape: Shape) -> Shape:
        """The leading shape of :meth:`as_matrices` (the batch axes' sizes)."""
        return tuple(shape[a] for a in self.axes(shape)[2])

    def as_matrices(self, x: jax.Array) -> jax.Array:
        """x as (*batch, d_in, d_out); a no-op for the default (…, d_in, d_out) layout."""
        red, out, batch = self.axes(x.shape)
        d_in, d_out = MatrixNorm.dims(self, x.shape)  # the whole matrix (Spectral splits it)
        perm = batch + red + out
        if perm != tuple(range(x.ndim)):
            x = jnp.transpose(x, perm)
        return x.reshape(x.shape[: len(batch)] + (d_in, d_out))

    def from_matrices(self, m: jax.Array, shape: Shape) -> jax.Array:
        """The inverse of :meth:`as_matrices`: (*batch, d_in, d_out) back to ``shape``."""
        red, out, batch = self.axes(shape)
        perm = batch + red + out
        x = m.reshape(tuple(shape[a] for a in perm))
        if perm != tuple(range(len(shape))):
            x = jnp.transpose(x, np.argsort(perm))
        return x


# --------------------------------------------------------------------------------------------
# Spectral: RMS → RMS operator norm. lmo(g) = −√(d_out/d_in) · U Vᵀ  (paper Table 2; §3.3)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spectral(MatrixNorm):
    """RMS→RMS operator norm: ‖W‖ = √(d_in/d_out)·σ_max(W); LMO −√(d_out/d_in)·U Vᵀ.

    Attributes:
      input_layer: use the factor max(1, √(d_out/d_in)) of the paper's first layers (needed to
        transfer the learning rate when the width is below the input dimension).
      coeffs, steps: Newton–Schulz table and step count; None takes the optimizer's setting
        (``scion(ns_coeffs=..., ns_steps=...)``), else the library default (Polar Express, 5).
      dtype: Newton–Schulz computation dtype (None: float32).
      method: ``"newton_schulz"`` (default) or ``"svd"`` (exact, for tests and small models).
      split_input, split_output: orthogonalize blocks separately: d_in split into
        ``split_input`` equal blocks and d_out into ``split_output`` (a fused QKV kernel
        (d, 3d): ``split_output=3``; per-head q/k/v (d, heads·head_dim):
        ``split_output=heads``; per-head output projection (heads·head_dim, d):
        ``split_input=heads``). The norm is then the largest block's, each block with its own
        factor √(d_out/d_in) of its block sizes; the blocks are batch matrices to Newton–Schulz
        and to the sharding strategies.
    """

    input_layer: bool = False
    coeffs: newton_schulz.CoeffsLike | None = None
    steps: int | None = None
    dtype: str | None = None
    method: Literal["newton_schulz", "svd"] = "newton_schulz"
    split_input: int = 1
    split_output: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        validation.one_of(f"{name}.method", self.method, ("newton_schulz", "svd"))
        for field in ("split_input", "split_output"):
            value = validation.positive_int(f"{name}.{field}", getattr(self, field))
            object.__setattr__(self, field, value)
        if self.coeffs is not None:
            newton_schulz.coefficient_table(self.coeffs, argument=f"{name}.coeffs")
        if self.steps is not None:
            object.__setattr__(self, "steps", validation.positive_int(f"{name}.steps", self.steps))
        dtype = validation.floating_dtype(f"{name}.dtype", self.dtype)
        object.__setattr__(self, "dtype", None if dtype is None else dtype.name)

    def describe(self) -> str:
        name = "Spectral(input)" if self.input_layer else "Spectral"
        if (self.split_input, self.split_output) != (1, 1):
            name += f"[{self.split_input}×{self.split_output} blocks]"
        return name

    def dimension_factor(self, shape: Shape) -> float:
        d_in, d_out = self.dims(shape)
        s = math.sqrt(d_out / d_in)
        return max(1.0, s) if self.input_layer else s

    @property
    def split(self) -> bool:
        """Whether the matrices are split into blocks."""
        return (self.split_input, self.split_output) != (1, 1)

    def dims(self, shape: Shape) -> tuple[int, int]:
        """(d_in, d_out) of one block (the whole matrix when not split)."""
        d_in, d_out = super().dims(shape)
        if d_in % self.split_input or d_out % self.split_output:
            raise ValueError(
                f"{self.describe()}: a matrix of d_in={d_in}, d_out={d_out} (shape "
                f"{tuple(shape)}) does not split into {self.split_input} input and "
                f"{self.split_output} output blocks"
            )
        return d_in // self.split_input, d_out // self.split_output

    def matrix_batch(self, shape: Shape) -> Shape:
        extra = (self.split_input, self.split_output) if self.split else ()
        return super().matrix_batch(shape) + extra

    def as_matrices(self, x: jax.Array) -> jax.Array:
        m = super().as_matrices(x)
        if not self.split:
            return m
        b_in, b_out = self.dims(x.shape)
        lead = m.shape[:-2]
        m = m.reshape(lead + (self.split_input, b_in, self.split_output, b_out))
        n = len(lead)
        return jnp.transpose(m, tuple(range(n)) + (n, n + 2, n + 1, n + 3))

    def from_matrices(self, m: jax.Array, shape: Shape) -> jax.Array:
        if self.split:
            n = m.ndim - 4
            m = jnp.transpose(m, tuple(range(n)) + (n, n + 2, n + 1, n + 3))
            d_in, d_out = MatrixNorm.dims(self, shape)
            m = m.reshape(m.shape[:n] + (d_in, d_out))
        return super().from_matrices(m, shape)

    def with_newton_schulz(
        self, coeffs: newton_schulz.CoeffsLike | None, steps: int | None, dtype: str | None
    ) -> Spectral:
        """A copy whose unset Newton–Schulz settings take the given ones."""
        return dataclasses.replace(
            self,
            coeffs=self.coeffs if self.coeffs is not None else coeffs,
            steps=self.steps if self.steps is not None else steps,
            dtype=self.dtype if self.dtype is not None else dtype,
        )

    def newton_schulz_settings(self) -> tuple[newton_schulz.CoefficientTable, int, str | None]:
        """(table, steps, dtype) with the library defaults filled in; hashable (for grouping)."""
        coeffs = self.coeffs if self.coeffs is not None else newton_schulz.DEFAULT_COEFFS
        steps = self.steps if self.steps is not None else newton_schulz.DEFAULT_STEPS
        return newton_schulz.coefficient_table(coeffs), int(steps), self.dtype

    def polar(self, m: jax.Array, matmul: newton_schulz.Matmul | None = None) -> jax.Array:
        """U Vᵀ (approximately, by Newton–Schulz) of matrices in the last two axes.

        ``matmul`` forms the Newton–Schulz products (the ``"sharded"`` strategy of
        :mod:`lmo_optax.strategies` passes one that keeps the matrices sharded); None
        multiplies plainly.
        """
        if m.size == 0:
            return m
        if self.method == "svd":
            y, _ = scaling.to_unit_peak(m.astype(_compute_dtype(m)), (-2, -1))  # §1.4
            u, s, vt = jnp.linalg.svd(y, full_matrices=False)
            # Drop directions of exactly zero singular value so that lmo(0) = 0.
            keep = (s > 0).astype(u.dtype)[..., None, :]
            return ((u * keep) @ vt).astype(m.dtype)
        table, steps, dtype = self.newton_schulz_settings()
        return newton_schulz.orthogonalize(m, coeffs=table, steps=steps, dtype=dtype, matmul=matmul)

    def lmo(self, g: jax.Array) -> jax.Array:
        validation.floating_array(f"{self.describe()}.lmo's input", g)
        # One parameter at a time; scale_by_lmo shares the work of many across devices
        # (lmo_optax.strategies). Under Explicit mesh axes the matrix is used whole.
        return layouts.on_whole(self._lmo, g)

    def _lmo(self, g: jax.Array) -> jax.Array:
        m = self.as_matrices(g)
        o = self.polar(m.astype(_compute_dtype(g))) * (-self.scale(g.shape))
        return self.from_matrices(o, g.shape).astype(g.dtype)

    def _singular_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(s, e): the singular values of each matrix of x are s·2^e, e one exponent per
        matrix (§1.4: the SVD runs on the matrix scaled to a peak in [½, 1))."""
        m = self.as_matrices(layouts.gather(x)).astype(_compute_dtype(x))
        y, e = scaling.to_unit_peak(m, (-2, -1))
        if m.size == 0:
            s = jnp.zeros(m.shape[:-2] + (min(m.shape[-2:]),), m.dtype)
        else:
            s = jnp.linalg.svd(y, compute_uv=False)
        return s, e[..., 0]

    def norm(self, w: jax.Array) -> jax.Array:
        s, e = self._singular_values(w)
        return scaling.reduce_scaled(s, e, scaling.max_of, 1 / self.scale(w.shape))

    def dual_norm(self, g: jax.Array) -> jax.Array:
        s, e = self._singular_values(g)
        return scaling.reduce_scaled(s, e, scaling.sum_of, self.scale(g.shape))

    def init(self, key: jax.Array, shape: Shape, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """Semi-orthogonal matrices (QR with Q·sign(diag R)) times the LMO's factor."""
        d_in, d_out = self.dims(shape)
        if math.prod(shape) == 0:
            return jnp.zeros(shape, dtype)
        batch_shape = self.matrix_batch(shape)
        tall = d_in >= d_out
        z = jax.random.normal(key, batch_shape + ((d_in, d_out) if tall else (d_out, d_in)))
        q, r = jnp.linalg.qr(z)
        q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
        m = q if tall else jnp.swapaxes(q, -1, -2)
        return self.from_matrices(m * self.scale(shape), tuple(shape)).astype(dtype)


LAYOUTS = ("flax", "torch")
"""Weight layouts: Flax stores a dense kernel (d_in, d_out) and a convolution kernel
(spatial…, c_in, c_out); PyTorch, Equinox and their kin store (d_out, d_in) and (c_out, c_in,
spatial…)."""
Layout = Literal["flax", "torch"]


def matrix_axes(layout: Layout) -> dict[str, int]:
    """The ``reduction_axes``/``output_axes`` of a 2-D weight in ``layout``.

    >>> matrix_axes("flax"), matrix_axes("torch")
    ({'reduction_axes': -2, 'output_axes': -1}, {'reduction_axes': -1, 'output_axes': -2})
    """
    validation.one_of("layout", layout, LAYOUTS)
    if layout == "torch":
        return {"reduction_axes": -1, "output_axes": -2}
    return {"reduction_axes": -2, "output_axes": -1}


@dataclasses.dataclass(frozen=True)
class SpectralConv(Spectral):
    """Spectral norm of a convolution kernel: Flax HWIO (…spatial, c_in, c_out) layout, or
    PyTorch's (c_out, c_in, …spatial) with ``layout="torch"``.

    The (k₁·…·k_s·c_in, c_out) matrix is orthogonalized, as in the reference ``SpectralConv``,
    and scaled by √(c_out/c_in)/(k₁·…·k_s) (/k for 1-D, /(kh·kw) for 2-D).
    The reduction and output axes are fixed by the layout: spatial axes and c_in reduce.
    """

    layout: Layout = "flax"

    def __post_init__(self) -> None:
        super().__post_init__()
        validation.one_of("SpectralConv.layout", self.layout, LAYOUTS)

    def axes(self, shape: Shape) -> tuple[Axes, Axes, Axes]:
        if len(shape) < 3:
            layout = (
                "(c_out, c_in, spatial...)"
                if self.layout == "torch"
                else "(spatial..., c_in, c_out)"
            )
            raise ValueError(
                f"SpectralConv needs a convolution kernel {layout} with at least three axes, "
                f"got shape {tuple(shape)}"
            )
        ndim = len(shape)
        if self.layout == "torch":
            return tuple(range(1, ndim)), (0,), ()
        return tuple(range(ndim - 1)), (ndim - 1,), ()

    def describe(self) -> str:
        return "SpectralConv(input)" if self.input_layer else "SpectralConv"

    def dimension_factor(self, shape: Shape) -> float:
        if self.layout == "torch":
            c_out, c_in, spatial = shape[0], shape[1], shape[2:]
        else:
            c_in, c_out, spatial = shape[-2], shape[-1], shape[:-2]
        s = math.sqrt(c_out / c_in) / math.prod(spatial)
        return max(1.0, s) if self.input_layer else s


# --------------------------------------------------------------------------------------------
# ColNorm, RowNorm and RMS share one shape: the max over groups of a scaled ℓ2 norm (§3.2).
# ‖W‖ = max_group ‖W_group‖₂ / c, lmo = −c · g_group/‖g_group‖₂, dual = c · Σ_group ‖g_group‖₂
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupedL2(Norm):
    """Base of the norms that are a max over groups of entries of a scaled ℓ2 norm.

    A subclass names the axes one ℓ2 norm runs over (:meth:`l2_axes`; the other axes index the
    groups) and the factor c (:meth:`scale`). Then ‖W‖ = max_group ‖W_group‖₂/c, the LMO is
    −c · g_group/‖g_group‖₂ in every group (0 where g_group = 0), the dual norm is
    c · Σ_group ‖g_group‖₂, and the boundary init is c · z_group/‖z_group‖₂ for Gaussian z.
    """

    def l2_axes(self, shape: Shape) -> Axes:
        """The axes that one ℓ2 norm runs over."""
        raise NotImplementedError

    def _unit_groups(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(y, n, e): x = y·2^e with each group at a peak in [½, 1) (§1.4), n = ‖y_group‖₂,
        so ‖x_group‖₂ = n·2^e; all keepdims, in at least float32."""
        axes = self.l2_axes(x.shape)
        y, e = scaling.to_unit_peak(x.astype(_compute_dtype(x)), axes)
        return y, jnp.sqrt(jnp.sum(y * y, axis=axes, keepdims=True)), e

    def lmo(self, g: jax.Array) -> jax.Array:
        validation.floating_array(f"{self.describe()}.lmo's input", g)
        y, n, _ = self._unit_groups(g)
        return (-self.scale(g.shape) * _safe_divide(y, n)).astype(g.dtype)

    def norm(self, w: jax.Array) -> jax.Array:
        _, n, e = self._unit_groups(w)
        return scaling.reduce_scaled(n, e, scaling.max_of, 1 / self.scale(w.shape))

    def dual_norm(self, g: jax.Array) -> jax.Array:
        _, n, e = self._unit_groups(g)
        return scaling.reduce_scaled(n, e, scaling.sum_of, self.scale(g.shape))

    def init(self, key: jax.Array, shape: Shape, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        self.check(shape)
        z, n, _ = self._unit_groups(jax.random.normal(key, shape))
        return (self.scale(shape) * _safe_divide(z, n)).astype(dtype)


# ColNorm: 1 → RMS. Row i of K (input unit i): lmo = −√d_out · g[i,:]/‖g[i,:]‖₂  (§3.5)


@dataclasses.dataclass(frozen=True)
class ColNorm(GroupedL2, MatrixNorm):
    """1→RMS operator norm: ‖W‖ = max_i ‖W[i,:]‖₂/√d_out over input units i.

    The paper's "columns" (of A = Kᵀ) are the rows of a Flax kernel: the outgoing weights of one
    input unit, e.g. one token's embedding vector. LMO: −√d_out · g[i,:]/‖g[i,:]‖₂ per row.

    Attributes:
      fan_in_scaled: also divide by d_in (the reference's ``normalized=True``, for hidden and
        output layers in the "ColNorm everywhere" variant of paper Table 6).
    """

    fan_in_scaled: bool = False

    def l2_axes(self, shape: Shape) -> Axes:
        return self.axes(shape)[1]  # one ℓ2 norm over the outputs of each input unit

    def dimension_factor(self, shape: Shape) -> float:
        d_in, d_out = self.dims(shape)
        return math.sqrt(d_out) / (d_in if self.fan_in_scaled else 1)


# RowNorm: RMS → ∞. Column j of K (output unit j): lmo = −(1/√d_in) · g[:,j]/‖g[:,j]‖₂  (§3.6)


@dataclasses.dataclass(frozen=True)
class RowNorm(GroupedL2, MatrixNorm):
    """RMS→∞ operator norm: ‖W‖ = √d_in · max_j ‖W[:,j]‖₂ over output units j.

    The paper's "rows" (of A = Kᵀ) are the columns of a Flax kernel: the incoming weights of one
    output unit. LMO: −(1/√d_in) · g[:,j]/‖g[:,j]‖₂ per column.

    Attributes:
      fan_in_scaled: the 1/√d_in factor (default); False gives the ℓ2→∞ norm the reference
        uses on input layers (``normalized=False``).
    """

    fan_in_scaled: bool = True

    def l2_axes(self, shape: Shape) -> Axes:
        return self.axes(shape)[0]  # one ℓ2 norm over the inputs of each output unit

    def dimension_factor(self, shape: Shape) -> float:
        d_in, _ = self.dims(shape)
        return 1 / math.sqrt(d_in) if self.fan_in_scaled else 1.0


# --------------------------------------------------------------------------------------------
# Sign (§3.7): 1 → ∞, the max entry. lmo = −(1/d_in)·sign(g) on hidden/output layers, else −sign(g)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sign(MatrixNorm):
    """1→∞ operator norm (the largest entry): ‖W‖ = max|W_ij|/c; LMO −c·sign(g).

    Attributes:
      fan_in_scaled: c = 1/d_in (default; the paper's choice on hidden and output layers, and
        for tied embeddings, where d_in is d_model: pass ``reduction_axes=-1, output_axes=-2``
        for a (vocab, d_model) table). With False, c = 1 and any shape is accepted (the ℓ∞
        norm of vectors and of first layers).
    """

    fan_in_scaled: bool = True

    def check(self, shape: Shape) -> None:
        if self.fan_in_scaled:
            self.axes(shape)

    def describe(self) -> str:
        return "Sign(1/d_in)" if self.fan_in_scaled else "Sign"

    def dimension_factor(self, shape: Shape) -> float:
        return 1 / self.dims(shape)[0] if self.fan_in_scaled else 1.0

    def lmo(self, g: jax.Array) -> jax.Array:
        validation.floating_array(f"{self.describe()}.lmo's input", g)
        return (-self.scale(g.shape) * jnp.sign(g.astype(_compute_dtype(g)))).astype(g.dtype)

    def _unit_entries(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(|y|, e) with x = y·2^e and max |y| in [½, 1) (§1.4), in at least float32."""
        y, e = scaling.to_unit_peak(x.astype(_compute_dtype(x)), tuple(range(x.ndim)))
        return jnp.abs(y), e

    def norm(self, w: jax.Array) -> jax.Array:
        return scaling.reduce_scaled(
            *self._unit_entries(w), scaling.max_of, 1 / self.scale(w.shape)
        )

    def dual_norm(self, g: jax.Array) -> jax.Array:
        return scaling.reduce_scaled(*self._unit_entries(g), scaling.sum_of, self.scale(g.shape))

    def init(self, key: jax.Array, shape: Shape, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return (self.scale(shape) * jax.random.rademacher(key, shape, jnp.float32)).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Linf(Sign):
    """ℓ∞ norm of any tensor (vectors included): ‖w‖ = max|w_i|; LMO −sign(g)."""

    fan_in_scaled: bool = False

    def describe(self) -> str:
        return "Linf"


# --------------------------------------------------------------------------------------------
# RMS (§3.8): ‖z‖_RMS = ‖z‖₂/√n. lmo = −g/‖g‖_RMS (biases, norm gains, positional embeddings)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RMS(GroupedL2):
    """RMS norm ‖z‖₂/√n over ``axes``; LMO −√n · g/‖g‖₂.

    Attributes:
      axes: the axes normalized together (None: the whole tensor). Other axes are batch axes
        (max-norm over them). Name the axes explicitly for tensors such as (seq, d_model)
        positional embeddings: normalizing over an axis of size one would silently turn the
        LMO into −sign(g).
      init_value: boundary init: ``"zeros"`` (biases, paper App. B.3), ``"ones"`` (norm gains,
        on the unit sphere) or ``"sphere"`` (a random point on it).
    """

    axes: int | Sequence[int] | None = None
    init_value: Literal["zeros", "ones", "sphere"] = "zeros"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_axes("RMS.axes", self.axes, optional=True)
        validation.one_of("RMS.init_value", self.init_value, ("zeros", "ones", "sphere"))

    def l2_axes(self, shape: Shape) -> Axes:
        ndim = len(shape)
        if self.axes is None:
            return tuple(range(ndim))
        axes = _as_axes(self.axes)
        if any(not -ndim <= a < ndim for a in axes):
            raise ValueError(f"RMS axes {axes} are out of range for shape {tuple(shape)}")
        return tuple(sorted({a % ndim for a in axes}))

    def check(self, shape: Shape) -> None:
        self.l2_axes(shape)

    def dimension_factor(self, shape: Shape) -> float:
        return math.sqrt(math.prod(shape[a] for a in self.l2_axes(shape)))

    def init(self, key: jax.Array, shape: Shape, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        if self.init_value == "zeros":
            return jnp.zeros(shape, dtype)
        if self.init_value == "ones":
            return jnp.ones(shape, dtype)
        return super().init(key, shape, dtype)


# --------------------------------------------------------------------------------------------
# Auto (§3.9): the reference's shape-based default
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Auto(Norm):
    """Chooses a norm from the shape alone, like the reference's ``Auto``.

    0-D and 1-D: RMS; 2-D: Spectral; 3-D: Spectral on the last two axes with the leading axis
    as a batch axis (scanned layers; use ``SpectralConv`` for 1-D convolutions by a rule);
    4-D: SpectralConv (a 2-D convolution kernel); more axes: Spectral on the last two axes.

    Attributes:
      layout: ``"flax"`` (default: (…, d_in, d_out) matrices, HWIO convolutions) or
        ``"torch"`` ((…, d_out, d_in), OIHW): the shape alone cannot tell them apart.
    """

    layout: Layout = "flax"

    def __post_init__(self) -> None:
        super().__post_init__()
        validation.one_of("Auto.layout", self.layout, LAYOUTS)

    def for_shape(self, shape: Shape) -> Norm:
        ndim = len(shape)
        if ndim <= 1:
            return RMS()
        if ndim == 4:
            return SpectralConv(layout=self.layout)
        return Spectral(**matrix_axes(self.layout))

    def check(self, shape: Shape) -> None:
        self.for_shape(shape).check(shape)

    def dimension_factor(self, shape: Shape) -> float:
        return self.for_shape(shape).dimension_factor(shape)

    def lmo(self, g: jax.Array) -> jax.Array:
        return self.for_shape(g.shape).lmo(g)

    def norm(self, w: jax.Array) -> jax.Array:
        return self.for_shape(w.shape).norm(w)

    def dual_norm(self, g: jax.Array) -> jax.Array:
        return self.for_shape(g.shape).dual_norm(g)

    def init(self, key: jax.Array, shape: Shape, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return self.for_shape(shape).init(key, shape, dtype)
