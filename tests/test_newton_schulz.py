"""Newton–Schulz orthogonalization against float64 references written here.

Test matrices have a prescribed spectrum: G = U·diag(r)·Vᵀ with U, V random orthonormal (QR of
Gaussians, float64) and ‖G‖_F = 1 before a random overall scale, so r_i = σ_i/‖G‖_F exactly and
the ratios cover the design interval [1e-3, 1] of the tables. Coefficient tables are copied
here from their sources (Muon's modded-nanogpt quintic; You/Cesista; Polar Express, Amsel et
al. 2025; CANS, Grishina et al. 2025), not taken from the library. docs/algorithm.md §5 gives
the sources with their arXiv ids (§5.3), how the bands below are computed (§5.4) and the Gram
iteration's restart (§5.5).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmo_optax import COEFFICIENT_TABLES, CoefficientTable, coefficient_table, orthogonalize
from lmo_optax import newton_schulz as ns

# The published coefficients, verbatim. Polar Express divides by 1.01·‖G‖_F; the others by ‖G‖_F.
PUBLISHED_TABLES = {
    "jordan": [(3.4445, -4.7750, 2.0315)],
    "you": [
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ],
    "polar_express": [
        (8.2051, -22.9019, 16.4607),
        (4.0664, -2.8612, 0.5184),
        (3.9096, -2.8234, 0.5250),
        (3.2856, -2.4153, 0.4853),
        (2.2779, -1.6198, 0.3985),
        (1.8726, -1.2307, 0.3585),
        (1.8564, -1.2132, 0.3568),
        (1.875, -1.25, 0.375),
    ],
    "cans": [
        (8.4703, -25.1081, 18.6293),
        (4.1828, -3.1087, 0.5806),
        (3.9619, -2.9541, 0.5630),
        (3.2866, -2.4647, 0.5074),
        (2.2737, -1.6447, 0.4162),
    ],
}
PUBLISHED_SAFETY = {"jordan": 1.0, "you": 1.0, "polar_express": 1.01, "cans": 1.0}

# Output singular values for σ/‖G‖_F ∈ [1e-3, 1] in exact arithmetic (the composite
# polynomial evaluated on a fine grid).
BANDS = {
    ("polar_express", 5): (0.84, 1.12),
    ("jordan", 5): (0.47, 1.20),
    ("you", 5): (0.48, 1.15),
    ("cans", 5): (0.88, 1.12),
    ("polar_express", 4): (0.42, 1.56),
    ("polar_express", 6): (0.99, 1.00),
    ("jordan", 4): (0.14, 1.20),
    ("jordan", 6): (0.68, 1.20),
}
# float32 round-off plus the two-decimal rounding of the published bands (e.g. "you" reaches
# 0.4750 against the published 0.48, Polar Express 1.1236 against 1.12).
SLACK = 0.01

SQUARE, WIDE, TALL = (16, 16), (8, 24), (24, 8)
SHAPES = [SQUARE, WIDE, TALL]
METHODS = ["auto", "standard", "gram"]


def spec_schedule(name: str, steps: int) -> list[tuple[float, float, float]]:
    """The schedule: listed triples in order, the last one repeating."""
    listed = PUBLISHED_TABLES[name]
    return [listed[min(i, len(listed) - 1)] for i in range(steps)]


def composite(name: str, steps: int, x: np.ndarray) -> np.ndarray:
    """The scalar map σ/‖G‖_F ↦ output singular value (safety factor included)."""
    y = np.asarray(x, np.float64) / PUBLISHED_SAFETY[name]
    for a, b, c in spec_schedule(name, steps):
        y = a * y + b * y**3 + c * y**5
    return y


def max_slope(name: str, steps: int) -> float:
    """max |P'(x)| over x ∈ [0, 1] of the composite polynomial (chain rule on a fine grid)."""
    x = np.linspace(0.0, 1.0, 20001)
    y, d = x / PUBLISHED_SAFETY[name], np.full_like(x, 1 / PUBLISHED_SAFETY[name])
    for a, b, c in spec_schedule(name, steps):
        d = d * (a + 3 * b * y**2 + 5 * c * y**4)
        y = a * y + b * y**3 + c * y**5
    return float(np.abs(d).max())


def float32_tolerance(name: str, steps: int) -> float:
    """Accuracy a float32 evaluation of the iteration must reach on singular values/vectors.

    A backward-stable float32 evaluation is the exact map of an input perturbed by a few
    float32 ulps (≈ 1e-7 relative to ‖X‖ ≤ 1); allowing 1e-6 (about 16 ulps, for the
    accumulation over the steps and the matrix products), the output moves by at most
    1e-6·max|P'| (about 1e-3 for Polar Express at 5 steps; 0.05 for CANS, whose composite
    polynomial is very steep at σ/‖G‖_F = 1).
    """
    return 1e-5 + 1e-6 * max_slope(name, steps)


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def ratios(kind: str, k: int) -> np.ndarray:
    """σ_i/‖G‖_F in [1e-3, 1] with Σ r_i² = 1 (so that ‖G‖_F = 1).

    log: a dominant value ≈ 0.95 and k−1 values log-spaced over [1e-3, 0.2];
    near_rank_one: one value ≈ 1 − 1e-5 and k−1 values at exactly 1e-3 (both ends);
    flat: all 1/√k (the middle of the interval).
    """
    if k == 1:
        return np.ones(1)
    if kind == "flat":
        return np.full(k, 1 / math.sqrt(k))
    rest = np.logspace(-3, math.log10(0.2), k - 1) if kind == "log" else np.full(k - 1, 1e-3)
    return np.concatenate([[math.sqrt(1 - np.sum(rest**2))], rest])


def prescribed(seed: int, shape, kind: str):
    """(G, U, r, V) with G = scale·U diag(r) Vᵀ; G rounded to float32."""
    rng = np.random.default_rng(seed)
    m, n = shape
    k = min(m, n)
    u, v, r = orthonormal(rng, m, k), orthonormal(rng, n, k), ratios(kind, k)
    g = (u * r) @ v.T * 10.0 ** rng.uniform(-3, 3)
    return np.asarray(g, np.float32), u, r, v


def gaussian(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run(g, **kw) -> np.ndarray:
    return np.asarray(orthogonalize(jnp.asarray(g), **kw), np.float64)


def numpy_newton_schulz(g: np.ndarray, schedule, safety: float = 1.0) -> np.ndarray:
    """Newton–Schulz in float64: X = G/(s·‖G‖_F) on the wide orientation, then
    A = X Xᵀ; B = b·A + c·A A; X = a·X + B X."""
    x = np.asarray(g, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (safety * np.linalg.norm(x))
    for a, b, c in schedule:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


KINDS = ["log", "near_rank_one", "flat"]
SEEDS = [0, 1]


# --------------------------------------------------------------------------------------------
# 1. Singular values within the published bands; singular vectors preserved
# --------------------------------------------------------------------------------------------


def test_library_tables_match_the_published_ones():
    assert set(COEFFICIENT_TABLES) == set(PUBLISHED_TABLES)
    for name, table in COEFFICIENT_TABLES.items():
        assert [tuple(t) for t in table.steps] == PUBLISHED_TABLES[name], name
        assert table.safety == PUBLISHED_SAFETY[name], name


def test_bands_hold_for_the_exact_polynomials():
    """Sanity check of this file's reference: the bands of docs/algorithm.md §5.4."""
    x = np.logspace(-3, 0, 20001)
    for (name, steps), (lo, hi) in BANDS.items():
        y = composite(name, steps, x)
        assert lo - 0.006 <= y.min() and y.max() <= hi + 0.006, (name, steps, y.min(), y.max())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, steps", list(BANDS), ids=[f"{n}-{s}" for n, s in BANDS])
def test_singular_values_within_band(name, steps, method):
    lo, hi = BANDS[name, steps]
    bad = []
    for shape in SHAPES:
        for kind in KINDS:
            for seed in SEEDS:
                g, *_ = prescribed(seed, shape, kind)
                o = run(g, coeffs=name, steps=steps, method=method)
                assert np.all(np.isfinite(o))
                s = np.linalg.svd(o, compute_uv=False)
                if not (lo - SLACK <= s.min() and s.max() <= hi + SLACK):
                    bad.append(f"{shape} {kind} seed={seed}: σ ∈ [{s.min():.4f}, {s.max():.4f}]")
    assert not bad, f"outside [{lo}, {hi}] ± {SLACK}:\n" + "\n".join(bad)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=["square", "wide", "tall"])
def test_output_is_the_polynomial_of_the_singular_values(shape, method):
    """O = U·diag(P(r))·Vᵀ: the singular vectors are kept (UᵀOV is diagonal, nothing outside
    span U ⊗ span V) and each singular value is mapped by the composite polynomial P of the
    table, to float32 accuracy (see float32_tolerance)."""
    bad = []
    for name, steps in BANDS:
        tol = float32_tolerance(name, steps)
        for kind in KINDS:
            g, u, r, v = prescribed(7, shape, kind)
            scale = np.linalg.norm(g.astype(np.float64))
            o = run(g, coeffs=name, steps=steps, method=method)
            m = u.T @ o @ v
            diag = np.diag(m)
            off = np.abs(m - np.diag(diag)).max()
            outside = np.abs(o - u @ m @ v.T).max()
            # r is known in float64; G was rounded to float32, so recompute its ratios.
            r32 = np.diag(u.T @ g.astype(np.float64) @ v) / scale
            value_err = np.abs(diag - composite(name, steps, r32)).max()
            if max(off, outside, value_err) > tol:
                bad.append(
                    f"{name}-{steps} {kind}: off-diagonal {off:.1e}, outside {outside:.1e}, "
                    f"|σ' − P(σ)| {value_err:.1e} > {tol:.1e}"
                )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("method", ["standard", "gram"])
def test_matches_the_float64_iteration_on_the_design_interval(method):
    """Both methods evaluate the same polynomial of X, so on inputs inside the tables' design
    interval each must match the float64 NumPy iteration to float32 accuracy (see
    float32_tolerance)."""
    bad = []
    for shape in (WIDE, TALL):
        for kind in KINDS:
            g, *_ = prescribed(3, shape, kind)
            for name, steps in [("polar_express", 5), ("jordan", 5)]:
                ref = numpy_newton_schulz(g, spec_schedule(name, steps), PUBLISHED_SAFETY[name])
                err = np.abs(run(g, coeffs=name, steps=steps, method=method) - ref).max()
                if err > float32_tolerance(name, steps):
                    bad.append(f"{shape} {kind} {name}-{steps}: max error {err:.1e}")
    assert not bad, "\n".join(bad)


def test_auto_is_one_of_the_methods():
    """'auto' runs the method choose_method names; in 16-bit dtypes that is 'standard'."""
    assert ns.choose_method(8, 24, 5, jnp.bfloat16) == "standard"
    for shape in (WIDE, TALL, SQUARE):
        g = gaussian(0, shape)
        chosen = ns.choose_method(*shape, 5, jnp.float32)
        assert chosen in ("standard", "gram")
        np.testing.assert_array_equal(run(g), run(g, method=chosen))


# --------------------------------------------------------------------------------------------
# 2. Tall, wide, square; batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_transpose_equivariance(method):
    for shape in (WIDE, SQUARE):
        g = gaussian(1, shape)
        # an orientation mistake would be O(1); round-off is bounded as in float32_tolerance
        tol = float32_tolerance("polar_express", 5)
        np.testing.assert_allclose(run(g.T, method=method), run(g, method=method).T, atol=tol)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "batch, shape", [((3,), TALL), ((2, 3), WIDE)], ids=["one_batch_axis", "two_batch_axes"]
)
def test_batched_equals_per_matrix(shape, batch, method):
    g = gaussian(2, batch + shape)
    out = run(g, method=method)
    assert out.shape == g.shape
    for idx in np.ndindex(*batch):
        np.testing.assert_allclose(out[idx], run(g[idx], method=method), rtol=1e-5, atol=1e-6)


def test_rank_one_and_vector_shaped_matrices():
    for shape in [(1, 9), (9, 1)]:
        g = gaussian(3, shape)
        o = run(g)
        # a single singular value r = 1: Polar Express maps it to P(1/1.01), sign kept
        np.testing.assert_allclose(
            o, composite("polar_express", 5, 1.0) * g / np.linalg.norm(g), rtol=1e-5
        )


# --------------------------------------------------------------------------------------------
# 3. Zero in, zero out
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_zero_gives_exact_zero(method):
    for shape in SHAPES + [(1, 9)]:
        o = run(np.zeros(shape, np.float32), method=method)
        assert np.all(o == 0), shape
    g = gaussian(4, (3,) + WIDE)
    g[1] = 0
    o = run(g, method=method)
    assert np.all(np.isfinite(o)) and np.all(o[1] == 0)
    np.testing.assert_allclose(o[0], run(g[0], method=method), rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(o[2]) > 1


# --------------------------------------------------------------------------------------------
# 4. Coefficients: custom tables, schedules, errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_single_custom_triple_repeats(method):
    triple = (2.0, -1.5, 0.5)
    for shape in (WIDE, TALL, SQUARE):
        g = gaussian(5, shape)
        ref = numpy_newton_schulz(g, [triple, triple])
        np.testing.assert_allclose(run(g, coeffs=triple, steps=2, method=method), ref, atol=1e-5)
        np.testing.assert_allclose(run(g, coeffs=[triple], steps=2, method=method), ref, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_list_of_triples_repeats_the_last(method):
    t1, t2 = (3.0, -3.2, 1.2), (1.5, -0.5, 0.0)
    g = gaussian(6, WIDE)
    np.testing.assert_allclose(
        run(g, coeffs=[t1, t2], steps=3, method=method),
        numpy_newton_schulz(g, [t1, t2, t2]),
        atol=1e-5,
    )
    # fewer steps than listed: the first ones
    np.testing.assert_allclose(
        run(g, coeffs=[t1, t2], steps=1, method=method), numpy_newton_schulz(g, [t1]), atol=1e-5
    )


@pytest.mark.parametrize("name", list(PUBLISHED_TABLES))
def test_named_tables_follow_the_spec_schedule(name):
    """Named tables, two steps: the spec's first two triples and safety factor."""
    g = gaussian(7, TALL)
    for steps in (1, 2):
        ref = numpy_newton_schulz(g, spec_schedule(name, steps), PUBLISHED_SAFETY[name])
        np.testing.assert_allclose(run(g, coeffs=name, steps=steps), ref, atol=2e-5)


def test_identity_coefficients_give_the_frobenius_normalized_input():
    g = gaussian(8, WIDE) * np.float32(1e3)
    np.testing.assert_allclose(
        run(g, coeffs=(1, 0, 0), steps=3), g / np.linalg.norm(g.astype(np.float64)), rtol=1e-5
    )


def test_coefficient_table_object_is_accepted():
    table = CoefficientTable("mine", ((3.0, -3.2, 1.2),), safety=1.5)
    g = gaussian(9, WIDE)
    np.testing.assert_allclose(
        run(g, coeffs=table, steps=2),
        numpy_newton_schulz(g, [(3.0, -3.2, 1.2)] * 2, safety=1.5),
        atol=1e-5,
    )
    assert coefficient_table(table) is table


def test_unknown_table_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown") as info:
        orthogonalize(jnp.ones((3, 3)), coeffs="muon")
    for name in PUBLISHED_TABLES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "coeffs",
    [(1.0, 2.0), (1.0, 2.0, 3.0, 4.0), [(1.0, 2.0, 3.0), (1.0, 2.0)], [], 5, None, [[1.0]]],
    ids=["pair", "quadruple", "ragged", "empty", "int", "none", "nested"],
)
def test_malformed_coefficients_raise(coeffs):
    with pytest.raises(ValueError, match="coefficients"):
        coefficient_table(coeffs)
    with pytest.raises(ValueError):
        orthogonalize(jnp.ones((3, 3)), coeffs=coeffs)


def test_empty_coefficient_table_raises_value_error():
    """A CoefficientTable with no triples is malformed: ValueError, not an IndexError."""
    with pytest.raises(ValueError):
        orthogonalize(jnp.ones((3, 3)), coeffs=CoefficientTable("empty", ()))


def test_float32_triple_is_accepted():
    """A triple of float32 numbers (NumPy scalars or arrays, a jax array) is a valid triple."""
    triple = (3.4445, -4.7750, 2.0315)
    expected = coefficient_table(triple).steps
    for coeffs in [
        tuple(np.float32(c) for c in triple),
        np.asarray(triple, np.float32),
        jnp.asarray(triple, jnp.float32),
    ]:
        got = coefficient_table(coeffs).steps
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)


@pytest.mark.parametrize("steps", [0, -1])
def test_non_positive_steps_raise(steps):
    with pytest.raises(ValueError, match="step"):
        orthogonalize(jnp.ones((3, 3)), steps=steps)


def test_bad_method_and_vector_input_raise():
    with pytest.raises(ValueError, match="method"):
        orthogonalize(jnp.ones((3, 3)), method="svd")
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(jnp.ones((3,)))


# --------------------------------------------------------------------------------------------
# 5. dtypes
# --------------------------------------------------------------------------------------------


def test_bfloat16_computation_returns_the_input_dtype():
    g = jnp.asarray(gaussian(10, WIDE))
    o = orthogonalize(g, dtype=jnp.bfloat16)
    assert o.dtype == jnp.float32 and o.shape == WIDE
    # auto takes the standard iteration in 16 bits
    np.testing.assert_array_equal(
        np.asarray(o), np.asarray(orthogonalize(g, dtype=jnp.bfloat16, method="standard"))
    )
    # bf16 keeps ~3 digits: a Gaussian 8×24 (σ/‖G‖_F ≳ 0.1) stays near the band
    s = np.linalg.svd(np.asarray(o, np.float64), compute_uv=False)
    assert 0.84 - 0.1 <= s.min() and s.max() <= 1.12 + 0.1


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_input_returns_bfloat16(method):
    g = jnp.asarray(gaussian(11, WIDE), jnp.bfloat16)
    o = orthogonalize(g, method=method)
    assert o.dtype == jnp.bfloat16 and o.shape == WIDE
    # computed in float32 by default: the float32 result rounded to bf16
    ref = np.asarray(orthogonalize(g.astype(jnp.float32), method=method), np.float64)
    np.testing.assert_allclose(np.asarray(o, np.float64), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", ["standard", "gram"])
def test_float64_under_x64(method):
    g, u, r, v = prescribed(12, WIDE, "log")
    with jax.enable_x64(True):
        o = orthogonalize(jnp.asarray(g, jnp.float64), method=method)
        assert o.dtype == jnp.float64
        o = np.asarray(o)
    r64 = np.diag(u.T @ g.astype(np.float64) @ v) / np.linalg.norm(g.astype(np.float64))
    np.testing.assert_allclose(np.diag(u.T @ o @ v), composite("polar_express", 5, r64), atol=1e-8)


# --------------------------------------------------------------------------------------------
# 6. Scale invariance, including extreme scales
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_scale_invariance(method):
    """orthogonalize(c·G) = orthogonalize(G) for c from 1e-30 to 1e30, no NaN or inf."""
    bad = []
    for shape in (WIDE, SQUARE):
        for kind in ("log", "near_rank_one"):
            g, *_ = prescribed(13, shape, kind)
            base = run(g, method=method)
            for scale in (1e-30, 1e-20, 1e-6, 0.37, 1e6, 1e20, 1e30):
                o = run(np.asarray(g.astype(np.float64) * scale, np.float32), method=method)
                assert np.all(np.isfinite(o)), (shape, kind, scale)
                # one float32 rounding per entry of c·G (≈ 6e-8), amplified at most by
                # max|P'| ≈ 1e3 (Polar Express, 5 steps): 1e-4 relative leaves room
                err = np.linalg.norm(o - base) / np.linalg.norm(base)
                if err > 1e-4:
                    bad.append(f"{shape} {kind} c={scale:g}: relative change {err:.1e}")
    assert not bad, "\n".join(bad)
