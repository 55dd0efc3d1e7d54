"""The method itself: SCG stays in the ball (paper Insight 3.1), uSCG moves each parameter by
exactly γ·ρ in its norm, and both variants converge on small problems (docs/algorithm.md §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lmo_optax
from lmo_optax import Rule

# Exact LMOs (Spectral by SVD) so that the ball and step-length statements hold exactly.
EXACT_RULES = [
    Rule("*embed*", lmo_optax.ColNorm(), 2.0, ndim=2),
    Rule("*head*", lmo_optax.Sign(), 5.0, ndim=2),
    Rule("*rows*", lmo_optax.RowNorm(), 1.5, ndim=2),
    Rule("*kernel", lmo_optax.Spectral(method="svd"), 3.0),
    Rule("*", lmo_optax.RMS(), 0.5, ndim=(0, 1)),
]


def exact_params():
    k = iter(jax.random.split(jax.random.key(1), 8))
    return {
        "embed": jax.random.normal(next(k), (10, 6)),
        "head": jax.random.normal(next(k), (6, 10)),
        "rows": jax.random.normal(next(k), (6, 7)),
        "hidden": {"kernel": jax.random.normal(next(k), (6, 6))},
        "scanned": {"kernel": jax.random.normal(next(k), (2, 6, 3))},
        "bias": jax.random.normal(next(k), (6,)),
    }


def norms_of(params, rules):
    assignments = lmo_optax.assign(params, rules)
    return jax.tree.map(
        lambda a, x: (float(a.norm.norm(x)), a.radius),
        assignments,
        params,
        is_leaf=lambda x: isinstance(x, lmo_optax.Assignment),
    )


def random_grads(key, params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [10.0 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


@pytest.mark.parametrize("gamma", [0.05, 0.5, 1.0])
def test_scg_iterates_never_leave_the_ball(gamma):
    """Insight 3.1: started inside the ball, x ← (1−γ)x + γ·ρ·lmo stays inside it."""
    params = lmo_optax.init_on_ball(jax.random.key(0), exact_params(), EXACT_RULES)
    for norm, radius in jax.tree.leaves(
        norms_of(params, EXACT_RULES), is_leaf=lambda x: isinstance(x, tuple)
    ):
        assert norm <= radius * (1 + 1e-5)
    opt = lmo_optax.scion(gamma, EXACT_RULES, gradient_weight=0.3)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for i in range(20):
        grads = random_grads(jax.random.key(100 + i), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for norm, radius in jax.tree.leaves(
            norms_of(params, EXACT_RULES), is_leaf=lambda x: isinstance(x, tuple)
        ):
            assert norm <= radius * (1 + 1e-5), (i, norm, radius)


def test_scg_with_newton_schulz_stays_within_the_band():
    """With Newton–Schulz the LMO's spectral norm is at most the table's upper band (1.12
    for Polar Express at 5 steps, see tests/test_newton_schulz.py), so SCG stays within that
    factor of ρ."""
    rules = [Rule("*", lmo_optax.Spectral(), 2.0)]
    params = lmo_optax.init_on_ball(jax.random.key(0), {"w": jnp.zeros((16, 8))}, rules)
    opt = lmo_optax.scion(0.5, rules)
    state = opt.init(params)
    for i in range(20):
        updates, state = opt.update(random_grads(jax.random.key(i), params), state, params)
        params = optax.apply_updates(params, updates)
        assert float(lmo_optax.Spectral().norm(params["w"])) <= 2.0 * 1.12


@pytest.mark.parametrize("gamma", [0.01, 0.3])
def test_uscg_moves_each_parameter_by_gamma_rho(gamma):
    """uSCG: ‖x_{k+1} − x_k‖_ℓ = γ·ρ_ℓ exactly, for every parameter, every step."""
    params = exact_params()
    opt = lmo_optax.unconstrained_scion(gamma, EXACT_RULES, gradient_weight=0.5)
    state = opt.init(params)
    assignments = lmo_optax.assign(params, EXACT_RULES)
    for i in range(5):
        updates, state = opt.update(random_grads(jax.random.key(i), params), state, params)
        params = optax.apply_updates(params, updates)
        moved = jax.tree.map(
            lambda a, u: (float(a.norm.norm(u)), gamma * a.radius),
            assignments,
            updates,
            is_leaf=lambda x: isinstance(x, lmo_optax.Assignment),
        )
        for step, expected in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)):
            np.testing.assert_allclose(step, expected, rtol=1e-5)


def test_clipped_step_is_min_of_radius_and_dual_norm():
    rules = [Rule("*", lmo_optax.Sign(fan_in_scaled=False), 1.0)]
    opt = lmo_optax.unconstrained_scion(1.0, rules, gradient_weight=1.0, clip=True)
    params = jnp.zeros(4)
    state = opt.init(params)
    small = jnp.array([0.1, -0.1, 0.05, 0.0])  # ‖g‖₁ = 0.25 < ρ = 1
    updates, state = opt.update(small, state, params)
    np.testing.assert_allclose(updates, -0.25 * jnp.sign(small), rtol=1e-6)
    large = 10 * jnp.ones(4)  # ‖g‖₁ = 40 > ρ: the radius wins
    updates, state = opt.update(large, state, params)
    np.testing.assert_allclose(updates, -jnp.ones(4), rtol=1e-6)


def test_gradient_weight_is_the_papers_alpha():
    """d^k = (1−α)d^{k−1} + α g^k from d⁰ = 0: with α = 0.25 and constant g, d² = 0.4375 g."""
    opt = lmo_optax.average_gradients(gradient_weight=0.25)
    state = opt.init(jnp.zeros(2))
    g = jnp.array([4.0, -8.0])
    d, state = opt.update(g, state)
    d, state = opt.update(g, state)
    np.testing.assert_allclose(d, 0.4375 * g)
    nesterov = lmo_optax.average_gradients(gradient_weight=0.25, nesterov=True)
    s = nesterov.init(jnp.zeros(2))
    d, s = nesterov.update(g, s)  # (1−α)·(α g) + α g
    np.testing.assert_allclose(d, (0.75 * 0.25 + 0.25) * g)
    with pytest.raises(ValueError, match="gradient_weight"):
        lmo_optax.average_gradients(gradient_weight=0.9 + 0.2)


@pytest.mark.parametrize("optimizer", [lmo_optax.scion, lmo_optax.unconstrained_scion])
def test_converges_on_a_quadratic(optimizer):
    """f(W) = ½‖W − W*‖_F² with ‖W*‖ inside the ball; γ decays linearly to zero."""
    on_ball = lmo_optax.init_on_ball(jax.random.key(3), {"w": jnp.zeros((8, 4))}, "auto")
    target = {"w": 0.5 * on_ball["w"], "b": jnp.array([0.3, -0.2, 0.1, 0.4])}
    loss = lambda p: 0.5 * sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
    steps = 300
    opt = optimizer(optax.linear_schedule(0.2, 0.0, steps), "auto")
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(loss)(params)
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state

    initial = float(loss(params))
    for _ in range(steps):
        params, state = step(params, state)
    assert float(loss(params)) < 1e-3 * initial


@pytest.mark.parametrize("optimizer", [lmo_optax.scion, lmo_optax.unconstrained_scion])
def test_trains_a_small_mlp_regression(optimizer):
    """A 2-hidden-layer MLP fits a smooth 1-D→1-D function with the MLP preset."""
    x = jnp.linspace(-2, 2, 128)[:, None]
    y = jnp.sin(2 * x)
    sizes = [1, 32, 32, 1]
    keys = jax.random.split(jax.random.key(0), len(sizes))
    params = {
        "layers": [
            {"kernel": jnp.zeros((a, b)), "bias": jnp.zeros(b)}
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ]
    }
    rules = lmo_optax.mlp_rules(radius=4.0, head_radius=16.0)
    params = lmo_optax.init_on_ball(keys[0], params, rules)

    def predict(params, x):
        for layer in params["layers"][:-1]:
            x = jnp.tanh(x @ layer["kernel"] + layer["bias"])
        last = params["layers"][-1]
        return x @ last["kernel"] + last["bias"]

    loss = lambda p: jnp.mean((predict(p, x) - y) ** 2)
    steps = 400
    opt = optimizer(optax.linear_schedule(0.05, 0.0, steps), rules)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        value, g = jax.value_and_grad(loss)(params)
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state, value

    initial = float(loss(params))
    for _ in range(steps):
        params, state, _ = step(params, state)
    final = float(loss(params))
    # The fixed-norm steps make the trajectory chaotic: float round-off that differs between
    # XLA versions moves the final loss between 0.003 and 0.023. Ask for what holds on all of
    # them: at least 90% of the target's variance explained (the best constant fits none).
    best_constant = float(jnp.var(y))
    assert final < 0.1 * best_constant < 0.05 * initial, (initial, best_constant, final)
