"""``infer_rules``: roles and axes read off a traced forward pass.

On the example's Flax NNX GPT (scanned or not, tied or not) the inferred rules give every
parameter the norm, radius and dimension factor of the hand-written preset; on Linen and
Equinox models the same roles, with Equinox's (d_out, d_in) weights read in their own layout;
MLP, CNN and ViT inputs become input layers; bad uses are errors that name the parameter.
"""

from __future__ import annotations

import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax
import pytest

import lmo_optax
from lmo_optax import norms
from lmo_optax.example.model import GPT, GPTConfig
from lmo_optax.inference import infer_rules


def summary(params, rules) -> dict[str, tuple]:
    """path → (norm description, radius, dimension factor, input axes, output axes)."""
    out = {}
    for a in jax.tree.leaves(lmo_optax.assign(params, rules)):
        path = a.path
        axes = a.norm.axes(a.shape)[:2] if isinstance(a.norm, norms.MatrixNorm) else None
        if isinstance(a.norm, norms.SpectralConv):
            axes = None
        out[path] = (a.norm.describe(), a.radius, round(a.scale, 6), axes)
    return out


def forward_summary(params, rules):
    """Like :func:`summary`, without the axes (presets spell them differently)."""
    return {p: s[:3] for p, s in summary(params, rules).items()}


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_the_example_gpt_gets_the_presets_norms_radii_and_factors(scan, tied):
    cfg = GPTConfig(
        context=8,
        width=32,
        depth=2,
        heads=4,
        scan_layers=scan,
        tied=tied,
        positions="learned" if tied else "rotary",
        norm_gains=True,
    )
    graphdef, state = nnx.split(GPT(cfg, nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    tokens = jnp.zeros((2, 8), jnp.int32)
    rules = infer_rules(lambda p, t: nnx.merge(graphdef, p)(t), params, tokens)
    assert forward_summary(params, rules) == forward_summary(params, lmo_optax.gpt_rules(tied=tied))
    names = {a.path: a.rule for a in jax.tree.leaves(lmo_optax.assign(params, rules))}
    assert names["token_embedding/embedding"].startswith(
        "tied embedding/head" if tied else "token embedding"
    )


def test_a_loss_function_finds_the_head_through_the_cross_entropy():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(2):
                x = jax.nn.relu(nn.Dense(64, name=f"layers_{i}")(x))
            return nn.Dense(10, name="out")(x)

    model, x, y = MLP(), jnp.zeros((4, 784)), jnp.zeros((4,), jnp.int32)
    params = model.init(jax.random.key(0), x)["params"]

    def loss(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    got = summary(params, infer_rules(loss, params, x, y))
    assert got["layers_0/kernel"][:2] == ("Spectral(input)", 3.0)  # the pixels' layer
    assert got["layers_1/kernel"][0] == "Spectral"
    assert got["out/kernel"][:2] == ("Sign(1/d_in)", 10.0)
    assert got["out/bias"][0] == "RMS"
    # The same norms as the hand-written MLP preset (radii are per-role here).
    preset = forward_summary(params, lmo_optax.mlp_rules())
    assert {p: s[0] for p, s in got.items()} == {p: s[0] for p, s in preset.items()}


def test_convolutions_and_patch_embeddings():
    class ViT(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(32, (4, 4), strides=(4, 4), name="patch_embedding")(x)
            x = x.reshape(x.shape[0], -1, 32)
            pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], 32))
            x = nn.relu(nn.Conv(32, (3,), name="conv")(x + pos))
            x = x + nn.Dense(32, name="mlp")(nn.LayerNorm(name="ln")(x))
            return nn.Dense(10, name="head")(x[:, 0])

    model, x = ViT(), jnp.zeros((2, 16, 16, 3))
    params = model.init(jax.random.key(0), x)["params"]
    got = summary(params, infer_rules(lambda p, x: model.apply({"params": p}, x), params, x))
    assert got["patch_embedding/kernel"][0] == "SpectralConv(input)"
    assert got["conv/kernel"][0] == "SpectralConv"
    assert got["mlp/kernel"] == ("Spectral", 3.0, 1.0, ((0,), (1,)))
    assert got["head/kernel"][0] == "Sign(1/d_in)"
    assert got["pos_embedding"][0] == "RMS"


def test_pytorch_layout_weights_get_their_own_input_and_output_axes():
    # A (d_out, d_in) weight used as x @ W.T: input axis 1, factor √(d_out/d_in).
    params = {"embed": jnp.zeros((16, 8)), "up": jnp.zeros((32, 8)), "head": jnp.zeros((16, 32))}

    def forward(p, tokens):
        return jax.nn.relu(p["embed"][tokens] @ p["up"].T) @ p["head"].T

    got = summary(params, infer_rules(forward, params, jnp.zeros((3,), jnp.int32)))
    assert got["up"] == ("Spectral", 3.0, 2.0, ((1,), (0,)))
    assert got["head"] == ("Sign(1/d_in)", 10.0, 1 / 32, ((1,), (0,)))
    assert got["embed"] == ("ColNorm", 1.0, round(8**0.5, 6), ((0,), (1,)))


def test_the_equinox_gpt_reads_weights_as_d_out_by_d_in():
    eqx = pytest.importorskip("equinox")
    keys = jax.random.split(jax.random.key(0), 4)

    class Model(eqx.Module):
        embed: eqx.nn.Embedding
        fc: eqx.nn.Linear
        head: eqx.nn.Linear

        def __call__(self, tokens):
            x = jax.vmap(self.embed)(tokens)
            return jax.vmap(self.head)(jax.nn.relu(jax.vmap(self.fc)(x)))

    model = Model(
        eqx.nn.Embedding(256, 32, key=keys[0]),
        eqx.nn.Linear(32, 128, key=keys[1]),
        eqx.nn.Linear(128, 256, use_bias=False, key=keys[2]),
    )
    params, static = eqx.partition(model, eqx.is_array)
    rules = infer_rules(lambda p, t: eqx.combine(p, static)(t), params, jnp.zeros((8,), jnp.int32))
    got = summary(params, rules)
    assert got["fc/weight"] == ("Spectral", 3.0, 2.0, ((1,), (0,)))  # √(128/32)
    assert got["fc/bias"][0] == "RMS"
    assert got["head/weight"] == ("Sign(1/d_in)", 10.0, round(1 / 128, 6), ((1,), (0,)))
    assert got["embed/weight"][0] == "ColNorm"


def test_inferred_rules_train():
    params = {"w1": jnp.ones((4, 8)) * 0.1, "w2": jnp.ones((8, 2)) * 0.1}

    def loss(p, x):
        return jnp.sum((jnp.tanh(x @ p["w1"]) @ p["w2"]) ** 2)

    x = jax.random.normal(jax.random.key(1), (5, 4))
    tx = lmo_optax.scion(0.1, infer_rules(loss, params, x))
    state = tx.init(params)
    grads = jax.grad(loss)(params, x)
    updates, _ = tx.update(grads, state, params)
    assert all(jnp.isfinite(u).all() for u in jax.tree.leaves(updates))


def test_an_unused_parameter_is_an_error_naming_it_and_overrides_fix_it():
    params = {"a": jnp.zeros((3, 3)), "unused": jnp.zeros((3,))}
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="'unused' .* is not used by the function"):
        infer_rules(lambda p, x: x @ p["a"], params, x)
    rules = infer_rules(lambda p, x: x @ p["a"], params, x, overrides={"unused": norms.RMS()})
    assert summary(params, rules)["unused"][0] == "RMS"


def test_incompatible_uses_are_an_error_naming_the_parameter():
    params = {"a": jnp.zeros((4, 4))}
    with pytest.raises(ValueError, match="'a' .* incompatible products"):
        infer_rules(lambda p, x: x @ p["a"] + x @ p["a"].T, params, jnp.zeros((2, 4)))
    embed = {"e": jnp.zeros((6, 4))}
    with pytest.raises(ValueError, match="'e' .* gathered along axes \\(0,\\)"):
        infer_rules(lambda p, t: p["e"][t] @ p["e"][:4], embed, jnp.zeros((2,), jnp.int32))
    fixed = infer_rules(
        lambda p, x: x @ p["a"] + x @ p["a"].T,
        params,
        jnp.zeros((2, 4)),
        overrides={"a": (norms.Spectral(), 2.0)},
    )
    assert summary(params, fixed)["a"][:2] == ("Spectral", 2.0)


def test_bad_arguments_are_errors():
    params = {"a": jnp.zeros((3, 3))}
    with pytest.raises(ValueError, match="overrides name \\['b'\\]"):
        infer_rules(
            lambda p, x: x @ p["a"], params, jnp.zeros((1, 3)), overrides={"b": norms.RMS()}
        )
    with pytest.raises(TypeError, match="fn must be callable"):
        infer_rules("forward", params)
    with pytest.raises(ValueError, match="failed while tracing"):
        infer_rules(lambda p, x: x @ p["a"], params, jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="hidden_radius"):
        infer_rules(lambda p, x: x @ p["a"], params, jnp.zeros((1, 3)), hidden_radius=-1.0)
    with pytest.raises(TypeError, match="overrides\\['a'\\]"):
        infer_rules(lambda p, x: x @ p["a"], params, jnp.zeros((1, 3)), overrides={"a": 3})


def test_params_and_inputs_may_be_shape_structs_and_kwargs_pass_through():
    params = {"a": jax.ShapeDtypeStruct((3, 5), jnp.float32)}
    x = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    got = summary(
        {"a": jnp.zeros((3, 5))}, infer_rules(lambda p, x, scale=1.0: scale * x @ p["a"], params, x)
    )
    assert got["a"][0] == "Sign(1/d_in)"  # the only product reaches the output: a head


def test_stacked_experts_are_batch_axes():
    # (layers, experts, d_in, d_out) under a scan over layers and a vmap over experts.
    params = {"experts": jnp.zeros((2, 4, 8, 16)), "head": jnp.zeros((16, 3))}

    def forward(p, x):  # x: (experts, tokens, d_in)
        def layer(h, w):
            return jax.vmap(lambda hi, wi: jax.nn.relu(hi @ wi))(h, w)[..., :8], None

        h, _ = jax.lax.scan(layer, x, p["experts"])
        return h @ p["head"][:8]

    got = summary(params, infer_rules(forward, params, jnp.zeros((4, 5, 8))))
    # The inputs go straight into the experts: an input layer, per (layer, expert) matrix.
    assert got["experts"] == ("Spectral(input)", 3.0, round(2**0.5, 6), ((2,), (3,)))


def test_reshapes_of_empty_and_unit_axes_keep_track_of_the_parameter():
    from lmo_optax.inference import _reshaped_axes

    a = tuple(frozenset({d}) for d in range(3))
    assert _reshaped_axes(a, (2, 3, 4), (6, 4)) == (frozenset({0, 1}), frozenset({2}))
    assert _reshaped_axes(a, (2, 3, 4), (2, 1, 12)) == (
        frozenset({0}), frozenset(), frozenset({1, 2}),
    )  # fmt: skip
    assert _reshaped_axes(a, (0, 3, 4), (3, 0)) == (frozenset({0, 1, 2}),) * 2
    # An empty parameter reshaped away: its axes cannot be told apart, an error naming it.
    params = {"w": jnp.zeros((0, 4)), "v": jnp.zeros((4, 3))}
    with pytest.raises(ValueError, match="'w' \\(0, 4\\)"):
        infer_rules(lambda p, x: x @ p["w"].reshape(4, 0) @ jnp.zeros((0, 4)) @ p["v"], params,
                    jnp.zeros((2, 4)))  # fmt: skip
