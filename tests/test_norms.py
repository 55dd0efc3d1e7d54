"""Property-based tests of every norm: its unit-ball LMO, norm, dual norm and boundary init.

The properties are those of an LMO (scale invariance, ‖lmo(g)‖ = 1, ⟨g, lmo(g)⟩ =
−‖g‖_*, lmo(0) = 0) and the closed forms of Table 2 of Pethick et al. (arXiv:2502.07529), checked
against a float64 NumPy reference written here from those formulas (never from the library).
The invariants and the formulas, in Flax layout, are in docs/algorithm.md §1.3 and §3.

Shapes: every compiled shape costs XLA compile time (about 0.1–1.5 s per new shape and op set on
a small CPU), so each case draws its shape from a short pool instead of from all of 1..24. The
pools cover dims from 1 to 24, tall and wide matrices, d_in = 1, scanned (batched) kernels, and
they are chosen so that the *matrices* of the different layouts (attention kernels, conv
kernels, tied tables) coincide, which lets Newton–Schulz reuse its compiled ops. Values are
random: a hypothesis-drawn seed for NumPy and a hypothesis-drawn log-scale factor in [1e-6, 1e6]
(zeroed entries too, for the entry-, row- and column-wise norms). Square matrices and
ill-conditioned spectra are covered by test_newton_schulz.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmo_optax import RMS, Auto, ColNorm, Linf, Norm, RowNorm, Sign, Spectral, SpectralConv

SETTINGS = settings(max_examples=20, deadline=None)
FEW = settings(max_examples=6, deadline=None)

# Polar Express (the library default) at 5 steps: for σ/‖G‖_F ∈ [1e-3, 1] the
# output singular values lie in [0.84, 1.12] in exact arithmetic (the composite polynomial, with
# the 1.01 safety factor, evaluates to [0.8402, 1.1236] on that interval). Below 1e-3 the
# polynomial is increasing from p(0) = 0, so it stays in [0, 0.84]; above, nothing is below 0.
# SLACK covers float32 round-off of the iteration and the rounding of the published band.
NS_LO, NS_HI, NS_SIGMA_MIN, SLACK = 0.84, 1.12, 1e-3, 0.01


# --------------------------------------------------------------------------------------------
# float64 NumPy references, from the paper's Table 2 (Flax layout, K is d_in × d_out)
# --------------------------------------------------------------------------------------------


def ref_spectral(m: np.ndarray, c: float):
    """lmo = −c·U Vᵀ per matrix; norm = max σ/c; dual = c·Σσ (batches: max and sum)."""
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return -c * (u @ vt), s.max() / c, c * s.sum()


def ref_vectors(v: np.ndarray, c: float):
    """lmo = −c·v/‖v‖₂ per vector (last axis); norm = max ‖v‖₂/c; dual = c·Σ‖v‖₂."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    lmo = -c * np.divide(v, n, out=np.zeros_like(v), where=n > 0)
    return lmo, n.max() / c, c * n.sum()


def ref_sign(m: np.ndarray, c: float):
    """lmo = −c·sign(g); norm = max|w|/c; dual = c·Σ|g|."""
    return -c * np.sign(m), np.abs(m).max() / c, c * np.abs(m).sum()


# Layouts: a tensor (NumPy) as the stack the reference acts on, written out by hand per layout:
# (B, d_in, d_out) matrices for matrix norms, (B, n) vectors for RMS and ℓ∞.
def default_mats(x):  # (..., d_in, d_out), leading axes are batch (scanned layers)
    return x.reshape((-1,) + x.shape[-2:])


def qkv_mats(x):  # (d_model, heads, head_dim): d_in = d_model, d_out = heads·head_dim
    return x.reshape(1, x.shape[0], x.shape[1] * x.shape[2])


def attn_out_mats(x):  # (heads, head_dim, d_model): d_in = heads·head_dim, d_out = d_model
    return x.reshape(1, x.shape[0] * x.shape[1], x.shape[2])


def conv_mats(x):  # HWIO (kh, kw, c_in, c_out) → (kh·kw·c_in, c_out); 1-D conv (k, c_in, c_out)
    return x.reshape(1, -1, x.shape[-1])


def transposed_mats(x):  # (vocab, d_model), reduction axis −1: d_in = d_model, d_out = vocab
    return x.T[None]


def whole_vector(x):  # RMS(axes=None), ℓ∞: the whole tensor is one vector
    return x.reshape(1, -1)


def last_axis_vectors(x):  # RMS(axes=-1): one vector per row
    return x.reshape(-1, x.shape[-1])


# Dimension factors of the paper's Table 2, from the stack shape (B, d_in, d_out) or (B, n) and the
# tensor shape.
def spectral_factor(stack, shape):  # √(d_out/d_in)
    return math.sqrt(stack[-1] / stack[-2])


def input_factor(stack, shape):  # first layers: max(1, √(d_out/d_in))
    return max(1.0, spectral_factor(stack, shape))


def conv_factor(stack, shape):  # √(c_out/c_in)/(kh·kw), /k for 1-D convolutions
    return math.sqrt(shape[-1] / shape[-2]) / math.prod(shape[:-2])


def conv_input_factor(stack, shape):
    return max(1.0, conv_factor(stack, shape))


def colnorm_factor(scaled):  # √d_out, /d_in when fan-in scaled
    return lambda stack, shape: math.sqrt(stack[-1]) / (stack[-2] if scaled else 1)


def rownorm_factor(scaled):  # 1/√d_in, or 1
    return lambda stack, shape: 1 / math.sqrt(stack[-2]) if scaled else 1.0


def sign_factor(scaled):  # 1/d_in, or 1
    return lambda stack, shape: 1 / stack[-2] if scaled else 1.0


def rms_factor(stack, shape):  # ‖z‖_RMS = ‖z‖₂/√n: lmo = −√n·z/‖z‖₂
    return math.sqrt(stack[-1])


def one(stack, shape):
    return 1.0


@dataclasses.dataclass(frozen=True)
class Case:
    """A norm, the shapes it is tested on, and its float64 reference.

    kind: "spectral" (polar factor of each matrix), "rows" (ℓ2-normalize each row of each
    matrix: ColNorm), "cols" (each column: RowNorm), "vectors" (each vector: RMS), "sign"
    (entrywise sign: Sign, ℓ∞).
    """

    id: str
    norm: Norm
    shapes: tuple[tuple[int, ...], ...]
    layout: Callable[[np.ndarray], np.ndarray]
    kind: str
    factor: Callable[[tuple[int, ...], tuple[int, ...]], float]
    newton_schulz: bool = False
    svd: bool = False

    def to_ref(self, x: np.ndarray) -> np.ndarray:
        """The stack the reference acts on: matrices, or the vectors it normalizes."""
        m = self.layout(x)
        if self.kind == "rows":
            return m.reshape(-1, m.shape[-1])
        if self.kind == "cols":
            return np.swapaxes(m, -1, -2).reshape(-1, m.shape[-2])
        return m

    def scale(self, shape) -> float:
        return self.factor(self.layout(np.zeros(shape)).shape, shape)

    def reference(self, g: np.ndarray):
        """(lmo, norm, dual norm) of g, lmo as a to_ref stack."""
        ref = {"spectral": ref_spectral, "sign": ref_sign}.get(self.kind, ref_vectors)
        return ref(self.to_ref(g), self.scale(g.shape))


P2 = ((1, 13), (24, 7))  # d_in = 1 (rank one, wide) and tall; wide rank > 1: QKV, CONV3
PB = ((3, 24, 7),)  # scanned layers: a leading batch axis
QKV = ((16, 4, 6),)  # matrices (16, 24): wide
ATTN_OUT = ((4, 4, 24),)  # matrices (16, 24)
CONV4 = ((3, 1, 8, 7),)  # matrices (24, 7), kh ≠ kw
CONV4_INPUT = ((2, 2, 4, 24),)  # matrices (16, 24); √(c_out/c_in)/(kh·kw) < 1, so max(1, ·) = 1
CONV3 = ((2, 8, 24),)  # 1-D convolution (k, c_in, c_out): matrices (16, 24)
NS = {"newton_schulz": True}
SVD = {"svd": True}

CASES = [
    Case("spectral", Spectral(), P2, default_mats, "spectral", spectral_factor, **NS),
    Case(
        "spectral_input",
        Spectral(input_layer=True),
        P2,
        default_mats,
        "spectral",
        input_factor,
        **NS,
    ),
    Case(
        "spectral_svd", Spectral(method="svd"), P2, default_mats, "spectral", spectral_factor, **SVD
    ),
    Case(
        "spectral_svd_input",
        Spectral(method="svd", input_layer=True),
        P2,
        default_mats,
        "spectral",
        input_factor,
        **SVD,
    ),
    Case("spectral_scanned", Spectral(), PB, default_mats, "spectral", spectral_factor, **NS),
    Case(
        "spectral_qkv",
        Spectral(reduction_axes=-3, output_axes=(-2, -1)),
        QKV,
        qkv_mats,
        "spectral",
        spectral_factor,
        **NS,
    ),
    Case(
        "spectral_attn_out",
        Spectral(reduction_axes=(-3, -2), output_axes=-1),
        ATTN_OUT,
        attn_out_mats,
        "spectral",
        spectral_factor,
        **NS,
    ),
    Case(
        "spectral_svd_transposed",
        Spectral(method="svd", reduction_axes=-1, output_axes=-2),
        P2,
        transposed_mats,
        "spectral",
        spectral_factor,
        **SVD,
    ),
    Case("conv2d", SpectralConv(), CONV4, conv_mats, "spectral", conv_factor, **NS),
    Case("conv1d", SpectralConv(), CONV3, conv_mats, "spectral", conv_factor, **NS),
    Case(
        "conv2d_input",
        SpectralConv(input_layer=True),
        CONV4_INPUT,
        conv_mats,
        "spectral",
        conv_input_factor,
        **NS,
    ),
    Case("colnorm", ColNorm(), P2, default_mats, "rows", colnorm_factor(False)),
    Case(
        "colnorm_scaled",
        ColNorm(fan_in_scaled=True),
        P2,
        default_mats,
        "rows",
        colnorm_factor(True),
    ),
    Case("colnorm_scanned", ColNorm(), PB, default_mats, "rows", colnorm_factor(False)),
    Case("rownorm", RowNorm(), P2, default_mats, "cols", rownorm_factor(True)),
    Case(
        "rownorm_unscaled",
        RowNorm(fan_in_scaled=False),
        P2,
        default_mats,
        "cols",
        rownorm_factor(False),
    ),
    Case("rownorm_scanned", RowNorm(), PB, default_mats, "cols", rownorm_factor(True)),
    Case(
        "rownorm_attn_out",
        RowNorm(reduction_axes=(-3, -2), output_axes=-1),
        ATTN_OUT,
        attn_out_mats,
        "cols",
        rownorm_factor(True),
    ),
    Case("sign", Sign(), P2, default_mats, "sign", sign_factor(True)),
    Case("sign_unscaled", Sign(fan_in_scaled=False), P2, default_mats, "sign", sign_factor(False)),
    Case("sign_scanned", Sign(), PB, default_mats, "sign", sign_factor(True)),
    Case(
        "sign_tied",
        Sign(reduction_axes=-1, output_axes=-2),
        P2,
        transposed_mats,
        "sign",
        sign_factor(True),
    ),
    Case("rms", RMS(), ((), (7,), (24, 7)), whole_vector, "vectors", rms_factor),
    Case("rms_last_axis", RMS(axes=-1), ((7,), (24, 7)), last_axis_vectors, "vectors", rms_factor),
    Case("linf", Linf(), ((), (24, 7), (3, 24, 7)), whole_vector, "sign", one),
]
SPECTRAL_CASES = [c for c in CASES if c.kind == "spectral"]
INIT_CASES = [c for c in CASES if not isinstance(c.norm, RMS)]  # RMS: test_rms_init_values


def ids(cases):
    return [c.id for c in cases]


# --------------------------------------------------------------------------------------------
# Strategies and helpers
# --------------------------------------------------------------------------------------------

seeds = st.integers(0, 2**32 - 1)
log_scales = st.floats(-6.0, 6.0)


def gaussian(shape, seed, log_scale, sparse=False) -> np.ndarray:
    """Float32 Gaussian values times 10**log_scale; ``sparse`` zeroes about half the entries."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0**log_scale
    if sparse:
        x = np.where(rng.random(shape) < 0.5, 0.0, x)
    return np.asarray(x, np.float32)


@st.composite
def gradients(draw, case: Case):
    """A float32 gradient for ``case``: pool shape, drawn seed and log-scale.

    Entry-, row- and column-wise norms also get sparse gradients (zero entries, rows or
    columns); Spectral cases do not, since the LMO of a rank-deficient matrix is not unique.
    """
    shape = draw(st.sampled_from(case.shapes))
    sparse = case.kind != "spectral" and draw(st.booleans())
    return gaussian(shape, draw(seeds), draw(log_scales), sparse)


def ones(shape) -> jax.Array:
    return jnp.asarray(np.ones(shape, np.float32))


def f64(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def rel_fro(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def condition(case: Case, g: np.ndarray) -> float:
    s = np.linalg.svd(case.to_ref(g.astype(np.float64)), compute_uv=False)
    return float(s.max() / s.min(axis=-1).min())


def svd_tolerance(case: Case, g: np.ndarray) -> float:
    """Relative Frobenius tolerance of an SVD-computed polar factor in float32.

    The polar factor U Vᵀ moves by about ‖ΔG‖/σ_min under a perturbation ΔG, and float32
    round-off (in the input scaling or inside the SVD) is ΔG ≈ 1e-7·‖G‖: so the error is
    about 1e-7·κ(G). 1e-5 + 1e-6·κ leaves an order of magnitude of room.
    """
    return 1e-5 + 1e-6 * condition(case, g)


def in_range_sigmas(case: Case, g: np.ndarray):
    """Singular values per matrix and a mask of those inside the tables' design interval."""
    s = np.linalg.svd(case.to_ref(g.astype(np.float64)), compute_uv=False)
    fro = np.sqrt(np.sum(s**2, axis=-1, keepdims=True))
    return s, s / fro >= NS_SIGMA_MIN


# --------------------------------------------------------------------------------------------
# 1. Scale invariance: lmo(c·g) = lmo(g) for c > 0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
@SETTINGS
@given(data=st.data(), log_c=log_scales)
def test_lmo_is_scale_invariant(case, data, log_c):
    g = data.draw(gradients(case))
    cg = np.asarray(g.astype(np.float64) * 10.0**log_c, np.float32)
    a, b = f64(case.norm.lmo(jnp.asarray(g))), f64(case.norm.lmo(jnp.asarray(cg)))
    if case.newton_schulz:
        # Normalization by the peak entry and ‖G‖_F absorbs c up to one float32 rounding of
        # each entry; Newton–Schulz amplifies it at most by the slope of the composite
        # polynomial (p'(0) ≈ 1e3 for Polar Express), so ≈ 6e-8·1e3 relative.
        assert rel_fro(b, a) <= 1e-4
    elif case.svd:
        assert rel_fro(b, a) <= svd_tolerance(case, g)
    else:
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())


# --------------------------------------------------------------------------------------------
# 2. The LMO lies on the unit sphere: norm(lmo(g)) = 1 for g ≠ 0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
@SETTINGS
@given(data=st.data())
def test_lmo_has_unit_norm(case, data):
    g = data.draw(gradients(case))
    if not np.any(g):
        return  # all entries zeroed by the sparse mask: covered by the zero-gradient test
    d = case.norm.lmo(jnp.asarray(g))
    n = float(case.norm.norm(d))
    if case.newton_schulz:
        # σ_max(lmo)/factor = p(σ_max/‖G‖_F) and σ_max/‖G‖_F ∈ [1/√rank, 1] lies inside the
        # design interval [1e-3, 1]: the Polar Express 5-step band applies (see NS_LO).
        assert NS_LO - SLACK <= n <= NS_HI + SLACK
    else:
        assert n == pytest.approx(1.0, rel=1e-5)


# --------------------------------------------------------------------------------------------
# 3. The LMO attains the dual norm: ⟨g, lmo(g)⟩ = −dual_norm(g)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
@SETTINGS
@given(data=st.data())
def test_lmo_attains_the_dual_norm(case, data):
    g = data.draw(gradients(case))
    d = f64(case.norm.lmo(jnp.asarray(g)))
    inner = float(np.vdot(g.astype(np.float64), d))
    dual = float(case.norm.dual_norm(jnp.asarray(g)))
    if not case.newton_schulz:
        assert inner == pytest.approx(-dual, rel=1e-5, abs=1e-30)
        return
    # Newton–Schulz: ⟨g, lmo⟩ = −factor·Σ σ_i p(σ_i/‖G‖_F) with p in [0.84, 1.12] on the design
    # interval and in [0, 0.84] below it, so −⟨g, lmo⟩/dual lies in
    # [0.84·(Σ_{in range} σ)/(Σ σ), 1.12].
    s, inside = in_range_sigmas(case, g)
    weight = s[inside].sum() / s.sum()
    ratio = -inner / dual
    assert (NS_LO - SLACK) * weight <= ratio <= NS_HI + SLACK


# --------------------------------------------------------------------------------------------
# 4. lmo(0) = 0: finite, exactly zero, same shape and dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_zero_gradient_gives_zero_update(case, dtype):
    # every pool shape in float32; bf16 (a cast around the same ops) on the first one only
    for shape in case.shapes if dtype == jnp.float32 else case.shapes[:1]:
        d = case.norm.lmo(jnp.asarray(np.zeros(shape), dtype))
        assert d.shape == shape and d.dtype == dtype
        x = np.asarray(d, np.float32)
        assert np.all(np.isfinite(x)) and np.all(x == 0)


def test_zero_matrix_in_a_batch_gives_zero_only_there():
    """Scanned layers: one all-zero layer gets a zero update, the others a full one."""
    g = gaussian((3, 24, 7), 0, 0.0)
    g[1] = 0
    for norm in (Spectral(), Spectral(method="svd"), ColNorm(), RowNorm(), Sign()):
        d = np.asarray(norm.lmo(jnp.asarray(g)))
        assert np.all(np.isfinite(d)) and np.all(d[1] == 0), norm
        assert np.all(np.abs(d[[0, 2]]).sum(axis=(-2, -1)) > 0), norm


# --------------------------------------------------------------------------------------------
# 5. Equality with the float64 NumPy reference of the paper's Table 2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
@SETTINGS
@given(data=st.data())
def test_matches_float64_reference(case, data):
    g = data.draw(gradients(case))
    lmo_ref, norm_ref, dual_ref = case.reference(g.astype(np.float64))
    lmo = case.to_ref(f64(case.norm.lmo(jnp.asarray(g))))
    assert lmo.shape == lmo_ref.shape
    if case.newton_schulz:
        # lmo − lmo_ref = factor·U (diag(p(σ_i/‖G‖_F)) − I) Vᵀ, whose Frobenius norm relative
        # to ‖lmo_ref‖_F = factor·√k is √(Σ(p_i − 1)²/k); |p_i − 1| ≤ 0.16 inside the design
        # interval (band [0.84, 1.12]) and ≤ 1 below it (p ∈ [0, 0.84]).
        _, inside = in_range_sigmas(case, g)
        bound = math.sqrt(((NS_LO - 1) ** 2 * inside.sum() + (~inside).sum()) / inside.size)
        assert rel_fro(lmo, lmo_ref) <= bound + SLACK
    elif case.svd:
        assert rel_fro(lmo, lmo_ref) <= svd_tolerance(case, g)
    else:
        np.testing.assert_allclose(lmo, lmo_ref, rtol=1e-5, atol=1e-6 * np.abs(lmo_ref).max())
    # norm() and dual_norm() are exact (SVD-based for the spectral norms) for every case.
    assert float(case.norm.norm(jnp.asarray(g))) == pytest.approx(norm_ref, rel=1e-5)
    assert float(case.norm.dual_norm(jnp.asarray(g))) == pytest.approx(dual_ref, rel=1e-5)


@pytest.mark.parametrize("case", SPECTRAL_CASES, ids=ids(SPECTRAL_CASES))
def test_spectral_factor_matches_table_2(case):
    """The library's dimension factor of each spectral layout equals the paper's Table 2."""
    for shape in case.shapes:
        assert case.norm.scale(shape) == pytest.approx(case.scale(shape))


# --------------------------------------------------------------------------------------------
# 6. init(key, shape) lies on the unit sphere
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", INIT_CASES, ids=ids(INIT_CASES))
@FEW
@given(data=st.data(), seed=seeds)
def test_init_lies_on_the_unit_sphere(case, data, seed):
    # The "rbg" PRNG compiles about 10× faster than threefry for each new shape on CPU; init is
    # independent of the PRNG implementation (the default one is used in test_init_dtype).
    shape = data.draw(st.sampled_from(case.shapes))
    w = case.norm.init(jax.random.key(seed, impl="rbg"), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    assert float(case.norm.norm(w)) == pytest.approx(1.0, rel=1e-5)
    x = case.to_ref(np.asarray(w, np.float64))
    c = case.scale(shape)
    if case.kind == "spectral":
        # semi-orthogonal times the LMO's factor: every singular value equals the factor
        np.testing.assert_allclose(np.linalg.svd(x, compute_uv=False), c, rtol=1e-5)
    elif case.kind in ("rows", "cols"):
        # every row (ColNorm) or column (RowNorm) is on its sphere, not only the largest
        np.testing.assert_allclose(np.linalg.norm(x, axis=-1), c, rtol=1e-5)
    else:
        np.testing.assert_allclose(np.abs(x), c, rtol=1e-6)  # random ±factor


@pytest.mark.parametrize("shape", [(), (7,), (24, 7)])
def test_rms_init_values(shape):
    key = jax.random.key(0, impl="rbg")
    assert np.all(np.asarray(RMS(init_value="zeros").init(key, shape)) == 0)
    w = RMS(init_value="ones").init(key, shape)
    assert np.all(np.asarray(w) == 1)
    assert float(RMS(init_value="ones").norm(w)) == pytest.approx(1.0, rel=1e-6)
    for norm in (RMS(init_value="sphere"), RMS(axes=-1, init_value="sphere")):
        if norm.axes is not None and not shape:
            continue
        w = norm.init(key, shape)
        assert w.shape == shape
        assert float(norm.norm(w)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_init_dtype(dtype):
    # the default (threefry) PRNG
    for norm in (Spectral(), ColNorm()):
        w = norm.init(jax.random.key(0), (24, 7), dtype)
        assert w.dtype == dtype and w.shape == (24, 7)
        assert float(norm.norm(w)) == pytest.approx(
            1.0, rel=1e-2 if dtype == jnp.bfloat16 else 1e-5
        )
    assert RMS(init_value="sphere").init(jax.random.key(0), (7,), dtype).dtype == dtype


# --------------------------------------------------------------------------------------------
# 7. dtype preservation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_lmo_preserves_bf16_and_f32(case):
    shape = case.shapes[0]
    g = gaussian(shape, 1, 0.0)
    g16 = jnp.asarray(g, jnp.bfloat16)
    d16, d32 = case.norm.lmo(g16), case.norm.lmo(jnp.asarray(g))
    assert d16.dtype == jnp.bfloat16 and d32.dtype == jnp.float32
    assert d16.shape == d32.shape == shape
    # bf16 in, bf16 out: the float32 LMO of the bf16-rounded input, rounded to bf16.
    expected = f64(case.norm.lmo(g16.astype(jnp.float32)))
    np.testing.assert_allclose(f64(d16), expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())


X64_CASES = [c for c in CASES if c.id in ("spectral", "colnorm")]


@pytest.mark.parametrize("case", X64_CASES, ids=ids(X64_CASES))
def test_lmo_preserves_float64_under_x64(case):
    shape = (24, 7) if (24, 7) in case.shapes else case.shapes[-1]
    with jax.enable_x64(True):
        g = jnp.asarray(gaussian(shape, 2, 0.0), jnp.float64)
        d = case.norm.lmo(g)
        assert d.dtype == jnp.float64 and d.shape == shape
        lmo_ref, _, _ = case.reference(np.asarray(g))
        if case.newton_schulz:
            # float64 Newton–Schulz: singular values within the Polar Express band
            s = np.linalg.svd(case.to_ref(np.asarray(d)), compute_uv=False) / case.scale(shape)
            assert np.all((s >= NS_LO - SLACK) & (s <= NS_HI + SLACK))
        else:
            lmo = case.to_ref(np.asarray(d))
            np.testing.assert_allclose(lmo, lmo_ref, rtol=1e-10, atol=1e-12)


def test_spectral_newton_schulz_dtype_option():
    """Spectral(dtype="bfloat16") iterates in bf16 and still returns the input dtype."""
    g = jnp.asarray(gaussian((24, 7), 6, 0.0))
    d = Spectral(dtype="bfloat16").lmo(g)
    assert d.dtype == jnp.float32 and d.shape == (24, 7)
    s = np.linalg.svd(np.asarray(d, np.float64), compute_uv=False) / math.sqrt(7 / 24)
    # bf16 keeps about 3 significant digits: a looser band around [0.84, 1.12]
    assert np.all((s >= NS_LO - 0.1) & (s <= NS_HI + 0.1))


# --------------------------------------------------------------------------------------------
# 8. Bad input: helpful ValueErrors
# --------------------------------------------------------------------------------------------

MATRIX_NORMS = [Spectral(), Spectral(method="svd"), ColNorm(), RowNorm(), Sign(fan_in_scaled=True)]


@pytest.mark.parametrize("norm", MATRIX_NORMS, ids=lambda n: n.describe())
def test_matrix_norm_on_a_vector_raises(norm):
    v = ones((7,))
    with pytest.raises(ValueError, match=r"matrix norm.*\(7,\).*RMS"):
        norm.check((7,))
    for method in (norm.lmo, norm.norm, norm.dual_norm):
        with pytest.raises(ValueError, match=r"matrix norm.*\(7,\)"):
            method(v)
    with pytest.raises(ValueError, match=r"matrix norm.*\(7,\)"):
        norm.init(jax.random.key(0), (7,))


def test_vector_norms_accept_vectors():
    v = jnp.asarray(gaussian((7,), 3, 0.0))
    for norm in (RMS(), Linf(), Sign(fan_in_scaled=False)):
        norm.check((7,))
        assert float(norm.norm(norm.lmo(v))) == pytest.approx(1.0, rel=1e-6)


def test_conv_norm_on_a_matrix_raises():
    with pytest.raises(ValueError, match=r"SpectralConv.*three axes.*\(5, 5\)"):
        SpectralConv().lmo(ones((5, 5)))


@pytest.mark.parametrize(
    "norm, shape",
    [
        (Spectral(reduction_axes=-3), (5, 5)),
        (Spectral(output_axes=2), (5, 5)),
        (Spectral(reduction_axes=(-3, -2), output_axes=-1), (4, 5)),
        (ColNorm(reduction_axes=0, output_axes=3), (2, 5, 5)),
        (RowNorm(reduction_axes=-4), (2, 5, 5)),
        (Sign(output_axes=5), (5, 5)),
    ],
)
def test_out_of_range_axes_raise(norm, shape):
    with pytest.raises(ValueError, match="out of range"):
        norm.check(shape)
    with pytest.raises(ValueError, match="out of range"):
        norm.lmo(ones(shape))


@pytest.mark.parametrize(
    "norm",
    [
        Spectral(reduction_axes=-1, output_axes=-1),
        ColNorm(reduction_axes=(), output_axes=-1),
        RowNorm(reduction_axes=(0, 0), output_axes=-1),
    ],
)
def test_overlapping_or_empty_axes_raise(norm):
    with pytest.raises(ValueError, match="disjoint"):
        norm.lmo(ones((2, 5, 5)))


def test_rms_out_of_range_axes_raise():
    with pytest.raises(ValueError, match="out of range"):
        RMS(axes=2).check((5, 5))
    with pytest.raises(ValueError, match="out of range"):
        RMS(axes=-3).lmo(ones((5, 5)))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="method"):
        Spectral(method="qr").check((5, 5))
    with pytest.raises(ValueError, match="known tables"):
        Spectral(coeffs="nope").check((5, 5))
    with pytest.raises(ValueError, match="init_value"):
        RMS(init_value="random").check((5,))


# --------------------------------------------------------------------------------------------
# 9. Auto picks by shape
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((), RMS()),
        ((7,), RMS()),
        ((24, 7), Spectral()),
        ((3, 24, 7), Spectral()),
        ((3, 1, 8, 7), SpectralConv()),
    ],
)
def test_auto_picks_by_shape(shape, expected):
    chosen = Auto().for_shape(shape)
    assert type(chosen) is type(expected) and chosen == expected
    g = jnp.asarray(gaussian(shape, 4, 0.0))
    np.testing.assert_array_equal(np.asarray(Auto().lmo(g)), np.asarray(expected.lmo(g)))
    assert float(Auto().norm(g)) == float(expected.norm(g))


def test_auto_3d_is_spectral_per_leading_batch_entry():
    g = gaussian((3, 24, 7), 5, 0.0)
    d = np.asarray(Auto().lmo(jnp.asarray(g)))
    for i in range(3):
        np.testing.assert_allclose(d[i], np.asarray(Spectral().lmo(jnp.asarray(g[i]))), atol=1e-6)


def test_split_spectral_orthogonalizes_each_block_on_its_own():
    g = jax.random.normal(jax.random.key(7), (2, 16, 3 * 8))  # scanned fused QKV (d, 3·d_head)
    fused = Spectral(split_output=3, method="svd")
    blocks = [Spectral(method="svd").lmo(g[..., 8 * i : 8 * (i + 1)]) for i in range(3)]
    np.testing.assert_allclose(
        np.asarray(fused.lmo(g)), np.asarray(jnp.concatenate(blocks, -1)), atol=1e-6
    )
    assert fused.scale(g.shape) == Spectral().scale((16, 8))  # each block's factor
    assert fused.describe() == "Spectral[1×3 blocks]"
    # Per-head output projection (heads·head_dim, d): split the input side.
    out = jax.random.normal(jax.random.key(8), (4 * 6, 10))
    per_head = Spectral(split_input=4, method="svd")
    rows = [Spectral(method="svd").lmo(out[6 * i : 6 * (i + 1)]) for i in range(4)]
    np.testing.assert_allclose(
        np.asarray(per_head.lmo(out)), np.asarray(jnp.concatenate(rows, 0)), atol=1e-6
    )
    # Newton–Schulz agrees with the SVD blocks, the init lies on the ball, and the dual norm
    # is attained by the LMO: ⟨g, lmo(g)⟩ = −‖g‖_*.
    ns = Spectral(split_output=3)
    np.testing.assert_allclose(np.asarray(ns.lmo(g)), np.asarray(fused.lmo(g)), atol=0.3)
    w = fused.init(jax.random.key(9), g.shape)
    np.testing.assert_allclose(float(fused.norm(w)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        float(jnp.sum(g * fused.lmo(g))), -float(fused.dual_norm(g)), rtol=1e-5
    )


def test_a_split_that_does_not_divide_is_an_error():
    with pytest.raises(ValueError, match="does not split into 1 input and 5 output blocks"):
        Spectral(split_output=5).lmo(jnp.ones((4, 12)))
    with pytest.raises(ValueError, match="split_input"):
        Spectral(split_input=0)
