"""One GPT in three frameworks (Flax NNX, Flax Linen, Equinox) with the same weights: the rules
``infer_rules`` reads off each give the same norms, radii and factors, and 20 Scion steps give
the same losses (rtol 1e-5). Equinox stores (d_out, d_in) weights, so it is the layout test."""

from __future__ import annotations

import re

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from frameworks_gpt import LinenGPT, equinox_from_nnx, linen_params

import lmo_optax
from lmo_optax.example.model import GPT, GPTConfig

CFG = GPTConfig(context=16, width=32, depth=2, heads=4)
STEPS = 20


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def canonical(path: str) -> str:
    """A framework's parameter path as the NNX model names it."""
    path = re.sub(r"^blocks_(\d+)/", r"blocks/\1/", path)  # Linen
    path = re.sub(r"/weight$", "/kernel", path)  # Equinox
    path = re.sub(r"^(blocks/\d+)/(query|key|value|out)/", r"\1/attn/\2/", path)
    path = re.sub(r"^(blocks/\d+)/(fc|proj)/", r"\1/mlp/\2/", path)
    return path.replace("token_embedding/kernel", "token_embedding/embedding")


def norms_by_path(params, rules) -> dict[str, tuple]:
    return {
        canonical(a.path): (a.norm.describe(), a.radius, round(a.scale, 6), a.rule)
        for a in jax.tree.leaves(lmo_optax.assign(params, rules))
    }


def train(forward, params, batches):
    rules = lmo_optax.infer_rules(forward, params, batches[0][0])
    tx = lmo_optax.scion(2**-7, rules)

    @jax.jit
    def step(p, s, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(forward(p, x), y))(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    state, losses = tx.init(params), []
    for x, y in batches:
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    return norms_by_path(params, rules), np.asarray(losses)


@pytest.fixture(scope="module")
def setup():
    graphdef, state = nnx.split(GPT(CFG, nnx.Rngs(0)))
    weights = nnx.to_pure_dict(state)
    tokens = jax.random.randint(jax.random.key(1), (STEPS, 4, CFG.context + 1), 0, 256)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    return graphdef, weights, batches


def test_nnx_linen_and_equinox_get_the_same_norms_and_the_same_losses(setup):
    eqx = pytest.importorskip("equinox")
    graphdef, weights, batches = setup
    runs = {
        "nnx": train(lambda p, x: nnx.merge(graphdef, p)(x), weights, batches),
        "linen": train(
            lambda p, x: LinenGPT(CFG).apply({"params": p}, x), linen_params(weights, CFG), batches
        ),
    }
    model = equinox_from_nnx(weights, CFG)
    params, static = eqx.partition(model, eqx.is_array)
    runs["equinox"] = train(lambda p, x: eqx.combine(p, static)(x), params, batches)

    nnx_norms, nnx_losses = runs["nnx"]
    assert nnx_norms["token_embedding/embedding"][0] == "ColNorm"
    assert nnx_norms["lm_head/kernel"][0] == "Sign(1/d_in)"
    assert nnx_norms["blocks/0/mlp/fc/kernel"][:3] == ("Spectral", 3.0, 2.0)
    for name, (norms, losses) in runs.items():
        assert norms == nnx_norms, name
        np.testing.assert_allclose(losses, nnx_losses, rtol=1e-5, err_msg=name)
    assert nnx_losses[-1] < nnx_losses[0]  # it trains
