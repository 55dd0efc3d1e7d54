"""The example's GPT (rotary positions, RMSNorm without gains, ReLU², untied head) written in
Flax Linen and in Equinox, with converters from the Flax NNX model's weights.

Linen keeps Flax's (d_in, d_out) kernels; Equinox's ``Linear.weight`` is (d_out, d_in), so the
converter transposes every dense kernel. The three models compute the same function.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmo_optax.example.model import GPTConfig, _rotary

EPSILON = 1e-6  # Flax's RMSNorm default; Equinox's must be set to it


class LinenBlock(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.cfg.heads
        dense = lambda features, name: nn.Dense(features, use_bias=False, name=name)  # noqa: E731
        y = nn.RMSNorm(use_scale=False, epsilon=EPSILON, name="attn_norm")(x)
        q, k, v = (dense(d, n)(y).reshape(b, t, h, d // h) for n in ("query", "key", "value"))
        a = jax.nn.dot_product_attention(_rotary(q), _rotary(k), v, is_causal=True)
        x = x + dense(d, "out")(a.reshape(b, t, d))
        y = nn.RMSNorm(use_scale=False, epsilon=EPSILON, name="mlp_norm")(x)
        y = jnp.square(jax.nn.relu(dense(self.cfg.mlp_ratio * d, "fc")(y)))
        return x + dense(d, "proj")(y)


class LinenGPT(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.cfg.vocab_size, self.cfg.width, name="token_embedding")(tokens)
        for i in range(self.cfg.depth):
            x = LinenBlock(self.cfg, name=f"blocks_{i}")(x)
        x = nn.RMSNorm(use_scale=False, epsilon=EPSILON, name="final_norm")(x)
        return nn.Dense(self.cfg.vocab_size, use_bias=False, name="lm_head")(x)


def linen_params(nnx_params: dict[str, Any], cfg: GPTConfig) -> dict[str, Any]:
    """The NNX model's weights (``nnx.to_pure_dict``) under Linen's names."""
    out: dict[str, Any] = {
        "token_embedding": {"embedding": nnx_params["token_embedding"]["embedding"]},
        "lm_head": {"kernel": nnx_params["lm_head"]["kernel"]},
    }
    for i in range(cfg.depth):
        block = nnx_params["blocks"][i]
        out[f"blocks_{i}"] = {
            **{n: {"kernel": block["attn"][n]["kernel"]} for n in ("query", "key", "value", "out")},
            **{n: {"kernel": block["mlp"][n]["kernel"]} for n in ("fc", "proj")},
        }
    return out


def equinox_gpt(cfg: GPTConfig) -> Any:
    """An Equinox GPT class for ``cfg`` (built here so that equinox stays optional)."""
    import equinox as eqx

    def norm() -> eqx.nn.RMSNorm:
        return eqx.nn.RMSNorm(cfg.width, eps=EPSILON, use_weight=False, use_bias=False)

    def linear(d_in: int, d_out: int, key: jax.Array) -> eqx.nn.Linear:
        return eqx.nn.Linear(d_in, d_out, use_bias=False, key=key)

    class Block(eqx.Module):
        attn_norm: eqx.nn.RMSNorm
        query: eqx.nn.Linear
        key: eqx.nn.Linear
        value: eqx.nn.Linear
        out: eqx.nn.Linear
        mlp_norm: eqx.nn.RMSNorm
        fc: eqx.nn.Linear
        proj: eqx.nn.Linear

        def __init__(self, key: jax.Array):
            d, keys = cfg.width, jax.random.split(key, 6)
            self.attn_norm, self.mlp_norm = norm(), norm()
            self.query, self.key, self.value, self.out = (linear(d, d, k) for k in keys[:4])
            self.fc = linear(d, cfg.mlp_ratio * d, keys[4])
            self.proj = linear(cfg.mlp_ratio * d, d, keys[5])

        def __call__(self, x: jax.Array) -> jax.Array:  # one sequence: (t, d)
            t, d = x.shape
            h = cfg.heads
            y = jax.vmap(self.attn_norm)(x)
            q, k, v = (
                jax.vmap(f)(y).reshape(1, t, h, d // h) for f in (self.query, self.key, self.value)
            )
            a = jax.nn.dot_product_attention(_rotary(q), _rotary(k), v, is_causal=True)
            x = x + jax.vmap(self.out)(a.reshape(t, d))
            y = jnp.square(jax.nn.relu(jax.vmap(self.fc)(jax.vmap(self.mlp_norm)(x))))
            return x + jax.vmap(self.proj)(y)

    class GPT(eqx.Module):
        token_embedding: eqx.nn.Embedding
        blocks: list
        final_norm: eqx.nn.RMSNorm
        lm_head: eqx.nn.Linear

        def __init__(self, key: jax.Array):
            keys = jax.random.split(key, cfg.depth + 2)
            self.token_embedding = eqx.nn.Embedding(cfg.vocab_size, cfg.width, key=keys[0])
            self.blocks = [Block(k) for k in keys[1:-1]]
            self.final_norm = norm()
            self.lm_head = linear(cfg.width, cfg.vocab_size, keys[-1])

        def __call__(self, tokens: jax.Array) -> jax.Array:  # (batch, t) → (batch, t, vocab)
            def one(seq: jax.Array) -> jax.Array:
                x = jax.vmap(self.token_embedding)(seq)
                for block in self.blocks:
                    x = block(x)
                return jax.vmap(self.lm_head)(jax.vmap(self.final_norm)(x))

            return jax.vmap(one)(tokens)

    return GPT


def equinox_from_nnx(nnx_params: dict[str, Any], cfg: GPTConfig) -> Any:
    """The Equinox GPT holding the NNX model's weights, dense kernels transposed."""
    import equinox as eqx

    model = equinox_gpt(cfg)(jax.random.key(0))
    weights = [nnx_params["token_embedding"]["embedding"]]
    for i in range(cfg.depth):
        block = nnx_params["blocks"][i]
        weights += [block["attn"][n]["kernel"].T for n in ("query", "key", "value", "out")]
        weights += [block["mlp"][n]["kernel"].T for n in ("fc", "proj")]
    weights.append(nnx_params["lm_head"]["kernel"].T)

    def where(m: Any) -> list[jax.Array]:
        leaves = [m.token_embedding.weight]
        for b in m.blocks:
            leaves += [b.query.weight, b.key.weight, b.value.weight, b.out.weight]
            leaves += [b.fc.weight, b.proj.weight]
        return [*leaves, m.lm_head.weight]

    return eqx.tree_at(where, model, weights)
