"""optax conformance, after optax/contrib/_common_test.py: every one-liner and stage must
compose with the usual optax wrappers and keep dtypes, shapes and compilation stable."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lmo_optax

# name -> (factory, keyword arguments); every optimizer is built with learning_rate=0.05.
SPECS = {
    "scion": (lmo_optax.scion, {}),
    "unconstrained_scion": (lmo_optax.unconstrained_scion, {}),
    "scion_bf16_state": (lmo_optax.scion, {"state_dtype": jnp.bfloat16}),
    "scion_nesterov_clip": (lmo_optax.scion, {"nesterov": True, "clip": True}),
}
OPTIMIZERS = {name: (lambda f=f, kw=kw: f(0.05, **kw)) for name, (f, kw) in SPECS.items()}


def mixed_params(dtype=jnp.float32):
    k = iter(jax.random.split(jax.random.key(0), 8))
    return {
        "dense": {
            "kernel": jax.random.normal(next(k), (6, 4), dtype),
            "bias": jnp.zeros((4,), dtype),
        },
        "scanned": {"kernel": jax.random.normal(next(k), (3, 4, 5), dtype)},
        "conv": {"kernel": jax.random.normal(next(k), (3, 3, 2, 4), dtype)},
        "gain": jnp.ones((), dtype),
    }


def loss_fn(params):
    leaves = jax.tree.leaves(params)
    return sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) ** 2) for x in leaves)


@pytest.fixture(params=sorted(OPTIMIZERS))
def make_opt(request):
    return OPTIMIZERS[request.param]


def test_jit_no_recompilation_and_extra_args(make_opt, compiles):
    opt = make_opt()
    params = mixed_params()

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, unexpected_extra_arg=1)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    params, state = step(params, state)
    with compiles() as counter:
        params, state = step(params, state)
        params, state = step(params, state)
    assert counter.count == 0
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.filterwarnings("error::DeprecationWarning")  # e.g. an injected dtype
def test_inject_hyperparams_matches_plain(name):
    factory, kwargs = SPECS[name]
    params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
    injected = optax.inject_hyperparams(factory)(learning_rate=0.05, **kwargs)
    plain = factory(0.05, **kwargs)
    u1, s1 = jax.jit(plain.update)(grads, plain.init(params), params)
    u2, s2 = jax.jit(injected.update)(grads, injected.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s1, s2.inner_state)
    # The schedule can be changed on the fly through the injected state.
    s2.hyperparams["learning_rate"] = jnp.asarray(0.0)
    u3, _ = jax.jit(injected.update)(grads, s2, params)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u3))


def test_tree_map_params(make_opt):
    opt = make_opt()
    params = mixed_params()
    state = opt.init(params)
    mapped = optax.tree.map_params(opt, lambda v: v + 1, state)
    # The averaged-gradient buffer has the params' structure: map_params reaches it.
    avg = [s for s in mapped if isinstance(s, lmo_optax.AverageGradientsState)]
    assert avg and all(float(x.min()) == 1 for x in jax.tree.leaves(avg[0].average))
    counts = [s for s in mapped if isinstance(s, lmo_optax.ScionStepState)]
    assert int(counts[0].count) == 0


def test_apply_if_finite_skips_nan_steps(make_opt):
    opt = optax.apply_if_finite(make_opt(), max_consecutive_errors=5)
    params = mixed_params()
    state = opt.init(params)
    grads = jax.grad(loss_fn)(params)
    _, state = opt.update(grads, state, params)  # one good step so the state is non-trivial
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    updates, new_state = jax.jit(opt.update)(bad, state, params)
    new_params = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), new_params, params)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b), new_state.inner_state, state.inner_state
    )
    assert int(new_state.notfinite_count) == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_multisteps_accumulates(make_opt, dtype):
    opt = optax.MultiSteps(make_opt(), every_k_schedule=4)
    params = jnp.array([[1.0, 2.0], [3.0, -1.0]], dtype)
    grads = jax.grad(lambda x: jnp.sum(x.astype(jnp.float32) ** 2))(params)
    state = jax.jit(opt.init)(params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    np.testing.assert_array_equal(updates, jnp.zeros_like(grads))
    for _ in range(3):
        updates, state = jax.jit(opt.update)(grads, state, params)
    assert updates.dtype == dtype and float(jnp.abs(updates).max()) > 0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_updates_keep_param_dtype(make_opt, dtype):
    opt = make_opt()
    params = mixed_params(dtype)
    grads = jax.grad(loss_fn)(params)
    state = jax.jit(opt.init)(params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        assert u.dtype == p.dtype and u.shape == p.shape
    # State dtypes are stable across steps (no silent promotion).
    _, state2 = jax.jit(opt.update)(grads, state, params)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state2), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape


def test_bf16_state_dtype_and_bytes():
    params = mixed_params()
    n = sum(x.size for x in jax.tree.leaves(params))
    for dtype, expected in ((None, 4), (jnp.bfloat16, 2)):
        state = lmo_optax.scion(0.1, state_dtype=dtype).init(params)
        bytes_ = sum(x.nbytes for x in jax.tree.leaves(state))
        assert bytes_ == expected * n + 4  # one buffer per parameter plus the int32 count


def test_init_on_shape_dtype_structs(make_opt):
    opt = make_opt()
    params = mixed_params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    from_structs = opt.init(abstract)
    from_arrays = opt.init(params)
    assert jax.tree.structure(from_structs) == jax.tree.structure(from_arrays)
    for a, b in zip(jax.tree.leaves(from_structs), jax.tree.leaves(from_arrays), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    shapes = jax.eval_shape(opt.init, abstract)
    assert jax.tree.structure(shapes) == jax.tree.structure(from_arrays)


def test_learning_rate_schedule_is_followed():
    schedule = optax.linear_schedule(0.2, 0.0, transition_steps=2)
    opt = lmo_optax.unconstrained_scion(schedule, rules=[lmo_optax.Rule("*", lmo_optax.Linf())])
    params = jnp.zeros(3)
    state = opt.init(params)
    grads = jnp.array([1.0, -2.0, 3.0])
    sizes = []
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
        sizes.append(float(jnp.abs(updates).max()))
    np.testing.assert_allclose(sizes, [0.2, 0.1, 0.0], atol=1e-7)


class _MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(16, 8, rngs=rngs)
        self.hidden = nnx.Linear(8, 8, rngs=rngs)
        self.lm_head = nnx.Linear(8, 16, use_bias=False, rngs=rngs)
        self.norm = nnx.RMSNorm(8, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + jax.nn.relu(self.hidden(self.norm(x)))
        return self.lm_head(x)


@pytest.mark.parametrize("optimizer", [lmo_optax.scion, lmo_optax.unconstrained_scion])
def test_flax_nnx_optimizer_end_to_end(optimizer):
    model = _MLP(nnx.Rngs(0))
    print(lmo_optax.rules_table(nnx.state(model, nnx.Param), "gpt"))
    opt = nnx.Optimizer(model, optimizer(0.02, rules="gpt"), wrt=nnx.Param)
    tokens = jnp.arange(16) % 16
    targets = (tokens + 1) % 16

    def loss(model):
        logits = model(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @nnx.jit
    def train_step(model, opt):
        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    first = float(train_step(model, opt))
    for _ in range(60):
        last = float(train_step(model, opt))
    assert last < 0.5 * first, (first, last)


def test_one_liner_options_match_their_stages():
    """Every option of ``scion`` has the name, default and type of the stage it goes to."""
    import inspect

    one_liner = inspect.signature(lmo_optax.scion).parameters
    stages = [
        (lmo_optax.average_gradients, {"gradient_weight"}),
        (lmo_optax.scale_by_lmo, set()),
        (lmo_optax.scion_step, set()),
    ]
    forwarded = set()
    for stage, positional in stages:
        for name, p in inspect.signature(stage).parameters.items():
            mine = one_liner[name]
            assert mine.default == p.default, (stage.__name__, name, mine.default, p.default)
            assert mine.annotation == p.annotation, (stage.__name__, name, mine.annotation)
            if name not in positional:
                assert mine.kind in (p.kind, inspect.Parameter.KEYWORD_ONLY), name
            forwarded.add(name)
    assert forwarded == set(one_liner), set(one_liner) ^ forwarded
    # unconstrained_scion is scion with constrained=False, nothing else.
    assert lmo_optax.unconstrained_scion.func is lmo_optax.scion
    assert lmo_optax.unconstrained_scion.keywords == {"constrained": False}
