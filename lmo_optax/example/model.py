"""A small GPT in Flax NNX, in the spirit of nanoGPT / modded-nanogpt.

Token embedding → pre-norm blocks (RMSNorm, causal self-attention with rotary or learned
positions, MLP with ReLU² or GELU) → RMSNorm → tied or untied head. Parameter paths
(``token_embedding/embedding``, ``blocks/0/attn/query/kernel``, ``blocks/0/mlp/fc/kernel``,
``lm_head/kernel``, …) are those the library's ``gpt_rules`` preset expects.

With ``scan_layers`` the blocks are one stacked ``Block`` (made with ``nnx.vmap``, run with
``nnx.scan``): every block parameter gains a leading layer axis, and the paths lose the layer
index (``blocks/mlp/fc/kernel`` of shape (depth, width, 4·width)). Its attention projections are
``nnx.LinearGeneral`` kernels (depth, width, heads, head_dim) and (depth, heads, head_dim,
width), the layouts that ``gpt_rules`` reads as one (width, width) matrix per layer: a stacked
``nnx.Linear`` kernel (depth, width, width) would read as an unscanned attention kernel. The
same weights give the same model in both forms (``stack_layers``).

With ``remat`` each block is rematerialized (``nnx.remat``): the backward pass recomputes the
block's activations from its input instead of keeping them, so a step keeps one (batch, seq,
width) input per block rather than every intermediate (attention scores included), for about
a third more compute. The result is the same. With ``scan_layers`` the saving is large (8
blocks of width 128 at context 512: 5.5 times fewer temporary bytes for the gradient, compiled
for CPU); XLA's CPU backend keeps the unscanned program's temporaries as they are.

With ``compute_dtype="bfloat16"`` the parameters stay float32 and the layers compute in
bfloat16 (Flax's ``dtype=``, ``param_dtype=float32``); ``loss_fn`` takes the cross-entropy in
float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from lmo_optax.example.errors import ConfigError, Interval, check_ranges, check_types


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """The GPT's shape; every field is checked when it is made (``ConfigError``).

    ``width`` must be divisible by ``heads``, and the head dimension even with rotary
    positions.
    """

    vocab_size: int = 256
    context: int = 128
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    activation: Literal["relu2", "gelu"] = "relu2"
    scale_activation: bool = False  # multiply the activation by √2 (reference models)
    positions: Literal["rotary", "learned"] = "rotary"
    tied: bool = False
    norm_gains: bool = False  # learnable RMSNorm gains (modded-nanogpt uses none)
    scan_layers: bool = False  # one stacked block run with nnx.scan (module docstring)
    remat: bool = False  # recompute each block's activations in the backward pass
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # activations; params float32

    def __post_init__(self) -> None:
        check_types(self, "model.")
        check_ranges(self, dict.fromkeys(_SIZES, Interval(1)), "model.")
        if self.width % self.heads:
            raise ConfigError(
                f"model.width={self.width} must be divisible by model.heads={self.heads}"
            )
        if (self.width // self.heads) % 2 and self.positions == "rotary":
            raise ConfigError(
                f"rotary positions need an even head dimension, got model.width / model.heads "
                f"= {self.width} / {self.heads}"
            )


_SIZES = ("vocab_size", "context", "width", "depth", "heads", "mlp_ratio")


def _rotary(x: jax.Array) -> jax.Array:
    """Rotary position embedding over (batch, seq, heads, head_dim)."""
    seq, dim = x.shape[1], x.shape[-1]
    freqs = 1.0 / (10000 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = jnp.arange(seq, dtype=jnp.float32)[:, None] * freqs[None, :]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def _dtypes(cfg: GPTConfig) -> dict[str, Any]:
    """The ``dtype`` (computation) and ``param_dtype`` keywords of every layer."""
    return {"dtype": jnp.dtype(cfg.compute_dtype), "param_dtype": jnp.float32}


class Attention(nnx.Module):
    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        d, h = cfg.width, cfg.heads
        self.cfg = cfg
        kw = {"use_bias": False, "rngs": rngs, **_dtypes(cfg)}
        if cfg.scan_layers:  # per-head kernels: the layouts gpt_rules reads per layer
            self.query, self.key, self.value = (
                nnx.LinearGeneral(d, (h, d // h), **kw) for _ in range(3)
            )
            self.out = nnx.LinearGeneral((h, d // h), d, axis=(-2, -1), **kw)
        else:
            self.query, self.key, self.value = (nnx.Linear(d, d, **kw) for _ in range(3))
            self.out = nnx.Linear(d, d, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.cfg.heads
        q, k, v = (f(x).reshape(b, t, h, d // h) for f in (self.query, self.key, self.value))
        if self.cfg.positions == "rotary":
            q, k = _rotary(q), _rotary(k)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        if self.cfg.scan_layers:
            return self.out(y)
        return self.out(y.reshape(b, t, d))


class MLP(nnx.Module):
    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        hidden = cfg.mlp_ratio * cfg.width
        self.cfg = cfg
        kw = {"use_bias": False, "rngs": rngs, **_dtypes(cfg)}
        self.fc = nnx.Linear(cfg.width, hidden, **kw)
        self.proj = nnx.Linear(hidden, cfg.width, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.fc(x)
        h = jnp.square(jax.nn.relu(h)) if self.cfg.activation == "relu2" else jax.nn.gelu(h)
        if self.cfg.scale_activation:
            h = math.sqrt(2) * h
        return self.proj(h)


def _norm(cfg: GPTConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(cfg.width, use_scale=cfg.norm_gains, rngs=rngs, **_dtypes(cfg))


class Block(nnx.Module):
    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.attn_norm = _norm(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = _norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nnx.Module):
    """Byte-level GPT. ``model(tokens)`` maps (batch, seq) int tokens to (batch, seq, vocab)."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = _dtypes(cfg)
        self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.width, rngs=rngs, **kw)
        if cfg.positions == "learned":
            self.position_embedding = nnx.Embed(cfg.context, cfg.width, rngs=rngs, **kw)
        if cfg.scan_layers:
            self.blocks = _stacked_blocks(cfg, rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.depth)])
        self.final_norm = _norm(cfg, rngs)
        if not cfg.tied:
            self.lm_head = nnx.Linear(cfg.width, cfg.vocab_size, use_bias=False, rngs=rngs, **kw)

    def __call__(
        self, tokens: jax.Array, activations: jax.sharding.Sharding | None = None
    ) -> jax.Array:
        """Logits of ``tokens``. On a mesh, ``activations`` lays out the (batch, seq, width)
        residual stream (``parallel.batch_sharding``: batch over ``data``). Without it, the TPU
        compiler gives the embedding lookup's output the table's layout (vocabulary over
        ``data``) and every device computes the whole batch's activations."""
        x = self.token_embedding(tokens)
        if activations is not None:
            x = jax.lax.with_sharding_constraint(x, activations)
        if self.cfg.positions == "learned":
            x = x + self.position_embedding(jnp.arange(tokens.shape[1]))
        if self.cfg.scan_layers:
            x = _scan_blocks(self.blocks, x, self.cfg.remat)
        else:
            for block in self.blocks:
                x = _run_block(block, x) if self.cfg.remat else block(x)
        x = self.final_norm(x)
        if self.cfg.tied:
            return self.token_embedding.attend(x)
        return self.lm_head(x)

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(nnx.state(self, nnx.Param)))


def _stacked_blocks(cfg: GPTConfig, rngs: nnx.Rngs) -> Block:
    """``cfg.depth`` blocks as one ``Block`` whose parameters have a leading layer axis."""

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs)

    return make(rngs)


@nnx.remat
def _run_block(block: Block, x: jax.Array) -> jax.Array:
    """``block(x)``, its activations recomputed in the backward pass."""
    return block(x)


def _scan_blocks(blocks: Block, x: jax.Array, remat: bool = False) -> jax.Array:
    """Runs the stacked ``blocks`` in order over the layer axis (one compiled block)."""

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def step(x: jax.Array, block: Block) -> jax.Array:
        return _run_block(block, x) if remat else block(x)

    return step(x, blocks)


def stack_layers(params: dict[str, Any], cfg: GPTConfig) -> dict[str, Any]:
    """The parameters of an unscanned GPT (``nnx.to_pure_dict``) in the layout of the scanned
    GPT of ``cfg`` (``scan_layers=True``): the same model.

    Block parameters are stacked over a new leading layer axis; attention kernels are reshaped
    to their per-head layouts (query/key/value (width, heads, head_dim), out (heads, head_dim,
    width)).
    """
    d, h = cfg.width, cfg.heads
    per_head = {"query": (d, h, d // h), "key": (d, h, d // h), "value": (d, h, d // h)}
    per_head["out"] = (h, d // h, d)

    def layout(path: Any, x: jax.Array) -> jax.Array:
        keys = [getattr(k, "key", None) for k in path]
        if keys[0] == "attn" and keys[1] in per_head:
            return x.reshape(x.shape[0], *per_head[keys[1]])
        return x

    layers = [params["blocks"][i] for i in range(cfg.depth)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return {**params, "blocks": jax.tree_util.tree_map_with_path(layout, stacked)}


def loss_fn(
    model: GPT,
    inputs: jax.Array,
    targets: jax.Array,
    activations: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """Mean next-token cross-entropy (nats; per byte for byte data); ``activations`` as in
    ``GPT.__call__``."""
    logits = model(inputs, activations).astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(logz - picked)


def generate(
    model: GPT, prompt: jax.Array, steps: int, key: jax.Array, temperature: float = 0.8
) -> jax.Array:
    """Samples ``steps`` tokens after ``prompt`` (1-D int array), with a sliding context.

    The window is always ``context`` long (right-padded while shorter: causal attention makes
    the padding invisible to the position being predicted), so one compiled function serves
    every step.
    """
    ctx = model.cfg.context
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, window, last, key):
        logits = nnx.merge(graphdef, state)(window[None, :])[0, last].astype(jnp.float32)
        return jax.random.categorical(key, logits / temperature)

    tokens = [int(t) for t in prompt]
    for i in range(steps):
        recent = tokens[-ctx:]
        window = jnp.zeros(ctx, jnp.int32).at[: len(recent)].set(jnp.asarray(recent, jnp.int32))
        tokens.append(int(next_token(state, window, len(recent) - 1, jax.random.fold_in(key, i))))
    return jnp.asarray(tokens, jnp.int32)
