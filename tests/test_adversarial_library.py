"""The library's edges: every bad input gets one clear error, and LMOs are exact and finite
everywhere (docs/algorithm.md §1.4).

1. Extreme scales: LMOs, norms and updates over each dtype's whole normal range, up to its
   maximum (float32, bfloat16, float16 here; float64 in a subprocess with x64 enabled).
2. Parameters with no entries: LMOs, norms, init, rules and whole updates.
3. Arguments: every constructor rejects a bad value at construction, naming the argument, the
   value and what is allowed; numbers of any NumPy/JAX scalar type are numbers.
4. init/update: errors name the parameter path (shapes that changed, RNG keys, integers).
"""

import functools
import math
import re
import subprocess
import sys
import textwrap

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lmo_optax
from lmo_optax import newton_schulz

# --------------------------------------------------------------------------------------------
# 1. Extreme scales
# --------------------------------------------------------------------------------------------

# Exponents k for which base·2^k stays normal and finite: the base's entries lie in [½, 2)
# in magnitude (the largest is the dtype's largest mantissa), so k ranges from
# (smallest normal exponent + 1) to the largest exponent.
DTYPES = {
    "float32": (jnp.float32, -125, 127),
    "bfloat16": (jnp.bfloat16, -125, 127),
    "float16": (jnp.float16, -13, 15),
}

SCALE_CASES = [  # (norm, shape): every LMO family, each shape once
    (lmo_optax.Spectral(), (5, 3)),
    (lmo_optax.Spectral(method="svd"), (5, 3)),
    (lmo_optax.Auto(), (2, 3, 4)),  # scanned: Spectral per layer
    (lmo_optax.SpectralConv(), (2, 1, 3, 2)),
    (lmo_optax.ColNorm(), (5, 3)),
    (lmo_optax.RowNorm(), (5, 3)),
    (lmo_optax.Sign(), (5, 3)),
    (lmo_optax.RMS(), (7,)),
]


@functools.cache
def measures(norm):
    """(lmo, norm, dual norm) of g, compiled once per norm (and shape and dtype)."""
    return jax.jit(lambda g: (norm.lmo(g), norm.norm(g), norm.dual_norm(g)))


def base_array(shape, dtype, seed=0):
    """Random signs times magnitudes in [½, 2), the largest one the dtype's largest mantissa
    (so base·2^(max exponent) is the dtype's maximum); exactly representable in ``dtype``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    x = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64)
    x.flat[0] = float(jnp.finfo(dtype).max) / 2.0 ** int(jnp.finfo(dtype).maxexp - 1)
    return x


def scaled(base, k, dtype):
    """base·2^k in ``dtype``, exactly (the product is exact in float64)."""
    return jnp.asarray(base * 2.0**k, dtype)


def exponent(position, dtype_name):
    _, low, high = DTYPES[dtype_name]
    return round(low + position * (high - low))


def times_two_to(x, k):
    """float32 ``x`` times 2^k, exactly, or inf where that exceeds float32."""
    with np.errstate(over="ignore"):
        return np.float32(np.float64(x) * 2.0**k)


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@settings(max_examples=6, deadline=None)
@given(position=st.floats(0.0, 1.0))
@example(position=0.0)  # the smallest normal magnitudes
@example(position=1.0)  # the largest entry is the dtype's maximum
def test_lmo_norm_and_dual_norm_are_exact_at_every_scale(dtype_name, position):
    """lmo(base·2^k) = lmo(base) bit for bit (it is scale invariant and the scaling is exact),
    and norm and dual norm scale by exactly 2^k (inf only where the value exceeds float32)."""
    dtype = DTYPES[dtype_name][0]
    k = exponent(position, dtype_name)
    for norm, shape in SCALE_CASES:
        base = base_array(shape, dtype)
        (d, *values), (d0, *values0) = (
            measures(norm)(scaled(base, k, dtype)),
            measures(norm)(scaled(base, 0, dtype)),
        )
        assert d.dtype == dtype and bool(jnp.isfinite(d).all()), (norm, k)
        np.testing.assert_array_equal(np.asarray(d, np.float32), np.asarray(d0, np.float32))
        assert float(jnp.abs(d0.astype(jnp.float32)).max()) > 0, norm
        for value, value0 in zip(values, values0):  # the norm, then the dual norm
            assert float(value) == times_two_to(value0, k), (norm, k, value, value0)


ORTHOGONALIZE = [
    jax.jit(functools.partial(lmo_optax.orthogonalize, method=m)) for m in ("standard", "gram")
]
_RULES = [lmo_optax.Rule("*", lmo_optax.Spectral(), 2.0)]
UPDATES = [  # (transformation, its jitted update): SCG, and uSCG with the clipped step
    (tx, jax.jit(tx.update))
    for tx in (
        lmo_optax.scion(0.5, _RULES, gradient_weight=1.0),
        lmo_optax.unconstrained_scion(0.5, _RULES, gradient_weight=1.0, clip=True),
    )
]


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@settings(max_examples=4, deadline=None)
@given(position=st.floats(0.0, 1.0))
@example(position=1.0)
def test_newton_schulz_and_optimizer_updates_are_exact_at_every_scale(dtype_name, position):
    """orthogonalize (standard and Gram) and the Spectral LMOs of scale_by_lmo (grouped in
    lmo_optax.strategies), SCG and uSCG updates: the same at base·2^k as at the base."""
    dtype = DTYPES[dtype_name][0]
    k = exponent(position, dtype_name)
    base = base_array((6, 4), dtype)
    g, g0 = scaled(base, k, dtype), scaled(base, 0, dtype)
    for orthogonalize in ORTHOGONALIZE:
        o = orthogonalize(g)
        np.testing.assert_array_equal(o, orthogonalize(g0))
        s = jnp.linalg.svd(o.astype(jnp.float32), compute_uv=False)
        assert float(s.min()) > 0.5, s
    params = {"w": jnp.zeros((6, 4), dtype)}
    for tx, update in UPDATES:
        u, _ = update({"w": g}, tx.init(params), params)
        u0, _ = update({"w": g0}, tx.init(params), params)
        assert bool(jnp.isfinite(u["w"]).all())
        if tx is UPDATES[1][0] and k < 0:
            continue  # clipped: min(ρ, ‖g‖_*)·lmo shrinks with small gradients, as it should
        np.testing.assert_array_equal(u["w"], u0["w"])
        # γ·ρ·‖lmo‖ with γ = 0.5, ρ = 2 (the base's dual norm is above ρ: no clipping)
        norm = float(lmo_optax.Spectral(method="svd").norm(u["w"]))
        assert 0.84 - 0.02 < norm < 1.12 + 0.02, norm


@settings(max_examples=3, deadline=None)
@given(high=st.integers(100, 127), low=st.integers(-125, 0))
@example(high=127, low=-125)
def test_each_matrix_and_row_is_scaled_on_its_own(high, low):
    """A scanned stack with one layer near float32's maximum and one near its smallest normal
    number: each layer's LMO is that layer's own, a unit direction. Likewise ColNorm's rows;
    a row of subnormals counts as zero where XLA flushes them (on CPU) and is never NaN, and
    non-finite input gives non-finite output, not a silent zero."""
    base = base_array((2, 3, 4), jnp.float32)
    g = jnp.asarray(base * np.array([2.0**high, 2.0**low])[:, None, None], jnp.float32)
    d = measures(lmo_optax.Auto())(g)[0]
    for i in range(2):
        alone = measures(lmo_optax.Spectral())(g[i])[0]
        np.testing.assert_allclose(d[i], alone, rtol=1e-6, atol=1e-7)
        assert 0.84 - 0.01 < float(lmo_optax.Spectral(method="svd").norm(d[i])) < 1.12 + 0.01
    scales = np.array([2.0**high, 1.0, 2.0**low, 2.0**-140])[:, None]  # the last: subnormal
    rows = jnp.asarray(np.concatenate([base[0], base[0, :1]]) * scales, jnp.float32)
    norms = jnp.linalg.norm(measures(lmo_optax.ColNorm())(rows)[0], axis=1)
    np.testing.assert_allclose(norms[:3], [2.0, 2.0, 2.0], rtol=1e-6)  # √d_out
    assert float(norms[3]) in (0.0, pytest.approx(2.0))
    poisoned = measures(lmo_optax.Auto())(g.at[0, 0, 0].set(jnp.inf))[0]  # stays in its layer
    assert not bool(jnp.isfinite(poisoned[0]).any()) and bool(jnp.isfinite(poisoned[1]).all())


def test_float64_over_its_whole_range():
    """With x64 enabled (in a subprocess: the flag is global): float64 gradients near 1.8e308
    and near its smallest normal number."""
    code = """
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp, numpy as np, lmo_optax
        rng = np.random.default_rng(0)
        base = rng.uniform(0.5, 2.0, (5, 3)) * rng.choice([-1.0, 1.0], (5, 3))
        base[0, 0] = np.finfo(np.float64).max / 2.0**1023
        for norm in (lmo_optax.Spectral(), lmo_optax.Spectral(method="svd"),
                     lmo_optax.ColNorm()):
            f = jax.jit(lambda g: (norm.lmo(g), norm.norm(g)))
            d0, n0 = f(jnp.asarray(base))
            assert d0.dtype == jnp.float64 and float(jnp.abs(d0).max()) > 0
            for k in (-1021, 1023):
                d, n = f(jnp.asarray(base * 2.0**k))
                np.testing.assert_array_equal(d, d0)
                with np.errstate(over="ignore"):
                    assert float(n) == np.float64(n0) * 2.0**k, (norm, k)
        o = jax.jit(lambda g: lmo_optax.orthogonalize(g, method="gram"))
        np.testing.assert_array_equal(o(jnp.asarray(base * 2.0**1023)), o(jnp.asarray(base)))
        print("ok")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# 2. Parameters with no entries
# --------------------------------------------------------------------------------------------

EMPTY_NORMS = [  # one of each code path (Auto and Linf only delegate to these)
    lmo_optax.Spectral(),
    lmo_optax.Spectral(method="svd"),
    lmo_optax.ColNorm(),
    lmo_optax.RowNorm(),
    lmo_optax.Sign(),
    lmo_optax.RMS(),
]


@settings(max_examples=2, deadline=None)
@given(
    shape=st.lists(st.integers(0, 3), min_size=1, max_size=3).filter(lambda s: 0 in s).map(tuple)
)
@example(shape=(0, 5))
@example(shape=(5, 0))
@example(shape=(3, 0, 4))
def test_norms_on_empty_parameters(shape):
    """An empty LMO, norm and dual norm 0, factor 1, an empty init, for every norm that fits."""
    g = jnp.zeros(shape, jnp.bfloat16)
    norms = EMPTY_NORMS + ([lmo_optax.SpectralConv()] if len(shape) >= 3 else [])
    for norm in norms:
        try:
            norm.check(shape)
        except ValueError:
            assert len(shape) < 2  # matrix norms on vectors only
            continue
        d, value, dual = measures(norm)(g)
        assert d.shape == shape and d.dtype == g.dtype, norm
        assert float(value) == 0.0 and float(dual) == 0.0, norm
        assert norm.scale(shape) == 1.0, norm
        assert norm.init(jax.random.key(0), shape, jnp.float16).shape == shape, norm


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (3, 0, 4), (0,)])
def test_optimizers_on_empty_parameters(shape):
    """Whole SCG/uSCG updates (jitted, with the grouped Newton–Schulz strategies), rules
    tables and init_on_ball, next to an ordinary parameter."""
    params = {"empty": jnp.zeros(shape), "w": jnp.ones((4, 3))}
    for tx in (
        lmo_optax.scion(0.1),
        lmo_optax.unconstrained_scion(0.1, clip=True, ns_sharding="distribute"),
    ):
        u, _ = jax.jit(tx.update)(params, tx.init(params), params)
        assert u["empty"].shape == shape and bool(jnp.isfinite(u["w"]).all())
        assert float(jnp.abs(u["w"]).max()) > 0
    assert str(shape) in lmo_optax.rules_table(params)
    assert lmo_optax.init_on_ball(jax.random.key(0), params)["empty"].shape == shape


# --------------------------------------------------------------------------------------------
# 3. Arguments: checked at construction, the error naming argument, value and allowed range
# --------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
P = {"w": jnp.zeros(2)}

BAD_ARGUMENTS = {
    # id: (call, exception type, substrings the message must contain)
    "scion_lr_above_1": (lambda: lmo_optax.scion(1.5), ValueError, ["learning_rate", "[0, 1]"]),
    "scion_lr_negative": (
        lambda: lmo_optax.scion(-0.1),
        ValueError,
        ["learning_rate", "[0, 1]", "-0.1"],
    ),
    "scion_lr_nan": (lambda: lmo_optax.scion(NAN), ValueError, ["learning_rate", "[0, 1]", "nan"]),
    "uscg_lr_inf": (
        lambda: lmo_optax.unconstrained_scion(INF),
        ValueError,
        ["learning_rate", "≥ 0", "inf"],
    ),
    "lr_bool": (lambda: lmo_optax.scion(True), TypeError, ["learning_rate", "True"]),
    "lr_string": (lambda: lmo_optax.scion("0.1"), TypeError, ["learning_rate", "'0.1'"]),
    "lr_vector": (
        lambda: lmo_optax.scion(np.array([0.1, 0.2])),
        TypeError,
        ["learning_rate", "0.1"],
    ),
    "step_lr_above_1": (lambda: lmo_optax.scion_step(2.0), ValueError, ["learning_rate", "2.0"]),
    "constrained_flag": (
        lambda: lmo_optax.scion(0.1, constrained="no"),
        TypeError,
        ["constrained", "'no'"],
    ),
    "state_dtype_int8": (
        lambda: lmo_optax.scion(0.1, state_dtype=jnp.int8),
        ValueError,
        ["state_dtype", "int8", "floating-point"],
    ),
    "state_dtype_junk": (
        lambda: lmo_optax.average_gradients(state_dtype="fp8ish"),
        TypeError,
        ["state_dtype", "'fp8ish'"],
    ),
    "gradient_weight_0": (
        lambda: lmo_optax.scion(0.1, gradient_weight=0),
        ValueError,
        ["gradient_weight", "a finite number in (0, 1]", "got 0"],
    ),
    "gradient_weight_nan": (
        lambda: lmo_optax.average_gradients(gradient_weight=NAN),
        ValueError,
        ["gradient_weight", "a finite number in (0, 1]", "nan"],
    ),
    "nesterov_flag": (
        lambda: lmo_optax.scion(0.1, nesterov=1),
        TypeError,
        ["nesterov", "got 1"],
    ),
    "ns_steps_fraction": (
        lambda: lmo_optax.scion(0.1, ns_steps=2.5),
        TypeError,
        ["ns_steps", "positive integer", "2.5"],
    ),
    "ns_steps_0": (lambda: lmo_optax.scion(0.1, ns_steps=0), ValueError, ["ns_steps", "got 0"]),
    "ns_dtype_int": (
        lambda: lmo_optax.scion(0.1, ns_dtype=jnp.int32),
        ValueError,
        ["ns_dtype", "int32"],
    ),
    "ns_coeffs": (
        lambda: lmo_optax.scion(0.1, ns_coeffs="fast"),
        ValueError,
        ["ns_coeffs", "'fast'", "polar_express"],
    ),
    "clip_flag": (lambda: lmo_optax.scion(0.1, clip="yes"), TypeError, ["clip", "'yes'"]),
    "radius_scale_0": (
        lambda: lmo_optax.scale_by_lmo(radius_scale=0.0),
        ValueError,
        ["radius_scale", "> 0", "0.0"],
    ),
    "ns_sharding": (
        lambda: lmo_optax.scion(0.1, ns_sharding="spread"),
        ValueError,
        ["ns_sharding", "'spread'", "distribute"],
    ),
    "ns_axis_name": (
        lambda: lmo_optax.scion(0.1, ns_axis_name=3),
        TypeError,
        ["ns_axis_name", "got 3"],
    ),
    "ns_mesh": (lambda: lmo_optax.scion(0.1, ns_mesh="mesh"), TypeError, ["ns_mesh", "'mesh'"]),
    "rule_radius_0": (
        lambda: lmo_optax.Rule("*", lmo_optax.Auto(), 0.0),
        ValueError,
        ["Rule '*'", "radius", "> 0", "0.0"],
    ),
    "rule_radius_inf": (
        lambda: lmo_optax.Rule("*", lmo_optax.Auto(), np.float32(INF)),
        ValueError,
        ["Rule '*'", "radius", "a finite number > 0", "inf"],
    ),
    "rule_radius_bool": (
        lambda: lmo_optax.Rule("*", lmo_optax.Auto(), True),
        TypeError,
        ["radius", "True"],
    ),
    "rule_pattern": (lambda: lmo_optax.Rule(5, lmo_optax.Auto()), TypeError, ["pattern", "5"]),
    "rule_regex": (
        lambda: lmo_optax.Rule("(", lmo_optax.Auto(), regex=True),
        ValueError,
        ["Rule '('", "regular expression"],
    ),
    "rule_select": (
        lambda: lmo_optax.Rule("*", lmo_optax.Auto(), select="some"),
        ValueError,
        ["select", "'some'", "first"],
    ),
    "rule_ndim_negative": (
        lambda: lmo_optax.Rule("*", lmo_optax.Auto(), ndim=-1),
        ValueError,
        ["ndim", "-1"],
    ),
    "rule_ndim_string": (
        lambda: lmo_optax.Rule("*", lmo_optax.Auto(), ndim="2"),
        TypeError,
        ["ndim", "'2'"],
    ),
    "rule_shape": (
        lambda: lmo_optax.Rule("*", lmo_optax.Auto(), shape=(2, 2.5)),
        TypeError,
        ["shape", "2.5"],
    ),
    "preset_hidden_radius": (
        lambda: lmo_optax.gpt_rules(hidden_radius=0),
        ValueError,
        ["gpt_rules", "hidden_radius", "got 0"],
    ),
    "preset_head_radius": (
        lambda: lmo_optax.vit_rules(head_radius=-1.0),
        ValueError,
        ["vit_rules", "head_radius", "-1.0"],
    ),
    "preset_radius_nan": (
        lambda: lmo_optax.cnn_rules(radius=NAN),
        ValueError,
        ["cnn_rules", "radius", "nan"],
    ),
    "preset_vector_radius": (
        lambda: lmo_optax.mlp_rules(vector_radius="1"),
        TypeError,
        ["mlp_rules", "vector_radius", "'1'"],
    ),
    "preset_auto_radius": (
        lambda: lmo_optax.auto_rules(radius=INF),
        ValueError,
        ["auto_rules", "radius", "inf"],
    ),
    "preset_tied": (lambda: lmo_optax.gpt_rules(tied="yes"), TypeError, ["tied", "'yes'"]),
    "spectral_steps": (
        lambda: lmo_optax.Spectral(steps=2.5),
        TypeError,
        ["Spectral.steps", "2.5"],
    ),
    "spectral_steps_0": (
        lambda: lmo_optax.SpectralConv(steps=0),
        ValueError,
        ["SpectralConv.steps", "got 0"],
    ),
    "spectral_dtype": (
        lambda: lmo_optax.Spectral(dtype="int32"),
        ValueError,
        ["Spectral.dtype", "int32"],
    ),
    "spectral_method": (
        lambda: lmo_optax.Spectral(method="qr"),
        ValueError,
        ["Spectral.method", "'qr'", "svd"],
    ),
    "spectral_coeffs": (
        lambda: lmo_optax.Spectral(coeffs=[(1.0, 2.0)]),
        ValueError,
        ["Spectral.coeffs", "(1.0, 2.0)"],
    ),
    "spectral_input_layer": (
        lambda: lmo_optax.Spectral(input_layer="yes"),
        TypeError,
        ["input_layer", "'yes'"],
    ),
    "colnorm_flag": (
        lambda: lmo_optax.ColNorm(fan_in_scaled=1),
        TypeError,
        ["ColNorm.fan_in_scaled", "got 1"],
    ),
    "sign_axes": (
        lambda: lmo_optax.Sign(reduction_axes="a"),
        TypeError,
        ["Sign.reduction_axes", "'a'"],
    ),
    "rownorm_axes_bool": (
        lambda: lmo_optax.RowNorm(output_axes=True),
        TypeError,
        ["RowNorm.output_axes", "True"],
    ),
    "rms_axes": (lambda: lmo_optax.RMS(axes=1.5), TypeError, ["RMS.axes", "1.5"]),
    "rms_init_value": (
        lambda: lmo_optax.RMS(init_value="random"),
        ValueError,
        ["RMS.init_value", "'random'", "sphere"],
    ),
    "orthogonalize_steps": (
        lambda: lmo_optax.orthogonalize(jnp.ones((3, 3)), steps=2.5),
        TypeError,
        ["steps", "2.5"],
    ),
    "orthogonalize_method": (
        lambda: lmo_optax.orthogonalize(jnp.ones((3, 3)), method="svd"),
        ValueError,
        ["orthogonalize", "method", "'svd'", "gram"],
    ),
    "orthogonalize_dtype": (
        lambda: lmo_optax.orthogonalize(jnp.ones((3, 3)), dtype=jnp.int32),
        ValueError,
        ["dtype", "int32"],
    ),
    "orthogonalize_integer_input": (
        lambda: lmo_optax.orthogonalize(jnp.ones((3, 3), jnp.int32)),
        TypeError,
        ["g", "int32"],
    ),
    "lmo_integer_input": (
        lambda: lmo_optax.ColNorm().lmo(jnp.ones((3, 3), jnp.int32)),
        TypeError,
        ["ColNorm", "int32"],
    ),
    "table_safety": (
        lambda: lmo_optax.CoefficientTable("t", ((1.0, 2.0, 3.0),), safety=0.5),
        ValueError,
        ["'t'", "safety", "≥ 1", "0.5"],
    ),
    "table_nan": (
        lambda: lmo_optax.CoefficientTable("t", ((NAN, 2.0, 3.0),)),
        ValueError,
        ["'t'", "nan"],
    ),
    "coefficients_inf": (
        lambda: lmo_optax.coefficient_table([(1.0, 2.0, INF)]),
        ValueError,
        ["coeffs", "inf"],
    ),
    "schedule_steps": (
        lambda: newton_schulz.POLAR_EXPRESS.schedule(True),
        TypeError,
        ["num_steps", "True"],
    ),
    "init_on_ball_key": (
        lambda: lmo_optax.init_on_ball(0, P),
        TypeError,
        ["init_on_ball", "key", "got 0"],
    ),
    "init_on_ball_keys": (
        lambda: lmo_optax.init_on_ball(jax.random.split(jax.random.key(0)), P),
        TypeError,
        ["key"],
    ),
    "injected_lr": (
        lambda: optax.inject_hyperparams(lmo_optax.scion)(learning_rate=1.5).init(P),
        ValueError,
        ["learning_rate", "1.5"],
    ),
    "injected_state_dtype": (
        lambda: optax.inject_hyperparams(lmo_optax.scion)(0.1, state_dtype=jnp.int8).init(P),
        ValueError,
        ["state_dtype", "int8"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_name_argument_value_and_range(case):
    call, error, parts = BAD_ARGUMENTS[case]
    with pytest.raises(error) as info:
        call()
    assert info.type is error
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


NUMBERS = [np.float32(2.0), np.int64(2), np.asarray(2.0), jnp.asarray(2.0), 2, 2.0]


@pytest.mark.parametrize("value", NUMBERS, ids=lambda v: type(v).__name__)
def test_numbers_of_any_scalar_type_are_numbers(value):
    rule = lmo_optax.Rule("*", lmo_optax.Auto(), radius=value)
    assert rule.radius == 2.0 and type(rule.radius) is float
    assert "2" in lmo_optax.rules_table(P, [rule])
    lmo_optax.gpt_rules(hidden_radius=value)
    lmo_optax.unconstrained_scion(value, radius_scale=value)
    lmo_optax.scion(value / 4, gradient_weight=value / 4)
    assert lmo_optax.Spectral(steps=np.int64(3)).newton_schulz_settings()[1] == 3
    assert lmo_optax.Spectral(dtype=jnp.bfloat16).dtype == "bfloat16"


def test_injected_hyperparameters_are_checked_only_when_concrete():
    """Inside jit an injected value is a tracer: let through. ns_steps shapes the computation,
    so a traced one is an error that says how to make it static."""
    params = {"w": jnp.ones((4, 3))}
    tx = optax.inject_hyperparams(lmo_optax.scion)(learning_rate=0.5, radius_scale=2.0)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(params, state, params)
    assert bool(jnp.isfinite(updates["w"]).all())
    tx = optax.inject_hyperparams(lmo_optax.scion)(learning_rate=0.5, ns_steps=3)
    with pytest.raises(TypeError, match=r"ns_steps.*static_args=\('ns_steps',\)"):
        jax.jit(tx.update)(params, tx.init(params), params)
    tx = optax.inject_hyperparams(lmo_optax.scion, static_args="ns_steps")(0.5, ns_steps=3)
    jax.jit(tx.update)(params, tx.init(params), params)


def test_learning_rate_schedules_are_not_checked_and_documented():
    """A schedule's values are only known in the step; scion_step says what happens."""
    lmo_optax.scion(optax.constant_schedule(1.5))
    doc = " ".join(lmo_optax.scion_step.__doc__.split())
    for part in ("γ > 1 leaves the ball", "γ < 0 ascends", "non-finite γ"):
        assert part in doc


# --------------------------------------------------------------------------------------------
# 4. init/update errors name the parameter path
# --------------------------------------------------------------------------------------------


def test_a_shape_that_changed_since_init_is_named():
    tx = lmo_optax.scion(0.1)
    params = {"block": {"w": jnp.zeros((4, 4))}}
    state = tx.init(params)
    grads = {"block": {"w": jnp.zeros((3, 4))}}
    with pytest.raises(ValueError, match=r"'block/w'.*\(3, 4\).*\(4, 4\).*init again"):
        tx.update(grads, state, params)
    grads = {"block": {"w": jnp.zeros((4, 4)), "extra": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"tree structure.*unexpected \['block/extra'\]"):
        tx.update(grads, state, params)
    step = lmo_optax.scion_step(0.1)
    with pytest.raises(ValueError, match=r"'w'.*updates have shape \(3,\).*parameter.*\(2,\)"):
        step.update({"w": jnp.zeros(3)}, step.init(P), P)


def test_rng_keys_and_integers_are_named_with_a_hint():
    params = {"w": jnp.zeros((2, 2)), "rng": jax.random.key(0), "count": jnp.zeros((), int)}
    for make in (
        lambda: lmo_optax.scion(0.1).init(params),
        lambda: lmo_optax.scion(0.1, gradient_weight=1.0).init(params),
        lambda: lmo_optax.init_on_ball(jax.random.key(0), params),
        lambda: lmo_optax.average_gradients().update(params, None),
    ):
        with pytest.raises(ValueError) as info:
            make()
        message = str(info.value)
        assert re.search(r"count \(int\d+\), rng \(key<fry>\)", message), message
        assert "wrt=nnx.Param" in message


def test_nnx_model_with_rngs_in_wrt_names_the_key():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 4, rngs=rngs)
            self.dropout = nnx.Dropout(0.1, rngs=rngs)

    model = Model(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"dropout/rngs/key \(key<fry>\).*wrt=nnx.Param"):
        nnx.Optimizer(model, lmo_optax.scion(0.1), wrt=nnx.Variable)
    optimizer = nnx.Optimizer(model, lmo_optax.scion(0.1), wrt=nnx.Param)
    grads = nnx.grad(
        lambda m: jnp.sum(m.linear(jnp.ones((1, 3)))), argnums=nnx.DiffState(0, nnx.Param)
    )(model)
    optimizer.update(model, grads)
    assert math.isfinite(float(jnp.abs(model.linear.kernel[...]).max()))
