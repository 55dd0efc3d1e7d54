"""GPT-2's parameters and the optimizers that ``update_step.py`` and ``sharded_update.py`` run
on them.

GPT-2 in Flax layout: kernels are (d_in, d_out), the token embedding is tied to the output head
(logits = x @ Eᵀ). Nothing is trained: parameters are initialized as GPT-2 is, gradients are
random, and only the optimizer's update is measured.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import lmo_optax
from lmo_optax.rules import path_to_str

SHAPES = {  # GPT-2 small and medium; vocabulary padded to a multiple of 128
    "124m": {"vocab": 50304, "width": 768, "layers": 12, "context": 1024},
    "350m": {"vocab": 50304, "width": 1024, "layers": 24, "context": 1024},
}
NS_STEPS = 5  # Newton–Schulz steps of every optimizer that orthogonalizes
SCION_LR = 3.6e-4
BASELINE_LR = 3e-4  # AdamW's and Muon's


def shapes(vocab: int, width: int, layers: int, context: int) -> dict[str, Any]:
    """GPT-2's parameter tree, with a shape tuple at each leaf."""

    def dense(d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        return {"kernel": (d_in, d_out), "bias": (d_out,)}

    def layer_norm() -> dict[str, tuple[int, ...]]:
        return {"scale": (width,), "bias": (width,)}

    def block() -> dict[str, Any]:
        return {
            "ln_1": layer_norm(),
            "attn": {"qkv": dense(width, 3 * width), "proj": dense(width, width)},
            "ln_2": layer_norm(),
            "mlp": {"fc": dense(width, 4 * width), "proj": dense(4 * width, width)},
        }

    return {
        "wte": {"embedding": (vocab, width)},
        "wpe": {"embedding": (context, width)},
        "h": {str(i): block() for i in range(layers)},
        "ln_f": layer_norm(),
    }


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def make_params(shape_tree: Any, key: jax.Array) -> Any:
    """float32 parameters: N(0, 0.02²) matrices, zero biases, unit layer-norm scales."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shape_tree, is_leaf=_is_shape)
    keys = jax.random.split(key, len(leaves))

    def init(path: Any, shape: tuple[int, ...], k: jax.Array) -> jax.Array:
        if len(shape) >= 2:
            return 0.02 * jax.random.normal(k, shape, jnp.float32)
        fill = jnp.ones if path_to_str(path).endswith("scale") else jnp.zeros
        return fill(shape, jnp.float32)

    return jax.tree.unflatten(treedef, [init(p, s, k) for (p, s), k in zip(leaves, keys)])


def random_like(tree: Any, key: jax.Array) -> Any:
    """Standard-normal float32 arrays shaped like the leaves of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, jnp.float32) for x, k in zip(leaves, keys)]
    )


def param_count(tree: Any) -> int:
    """Number of parameters in a tree of arrays."""
    return sum(x.size for x in jax.tree.leaves(tree))


def scion_rules() -> list[lmo_optax.Rule]:
    """The tied GPT preset with the radii of the paper's 124M nanoGPT run (hidden 50, head
    3000); ``tests/test_gpt_preset.py`` checks what it gives each GPT-2 parameter."""
    return lmo_optax.gpt_rules(tied=True, hidden_radius=50.0, head_radius=3000.0)


def muon(learning_rate: float = BASELINE_LR) -> optax.GradientTransformation:
    """``optax.contrib.muon``: Newton–Schulz on the hidden kernels, AdamW on the rest."""
    return optax.contrib.muon(
        learning_rate=learning_rate,
        ns_steps=NS_STEPS,
        muon_weight_dimension_numbers=muon_dimension_numbers,
    )


def muon_dimension_numbers(params: Any) -> Any:
    """MuonDimensionNumbers() (reduction axis 0 = d_in, output axis 1 = d_out) for the hidden
    2-D kernels; None (AdamW inside optax.contrib.muon) for wte, wpe and every vector.

    optax calls this with params and with masked updates, whose MaskedNode subtrees have no
    leaves and pass through unchanged.
    """

    def label(path: Any, x: Any) -> optax.contrib.MuonDimensionNumbers | None:
        hidden = len(x.shape) == 2 and path_to_str(path).endswith("kernel")
        return optax.contrib.MuonDimensionNumbers() if hidden else None

    return jax.tree_util.tree_map_with_path(label, params)
