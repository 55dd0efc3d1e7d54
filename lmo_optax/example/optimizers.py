"""The optimizers the example compares, each built from its OptimizerConfig."""

from __future__ import annotations

from typing import Any

import jax
import optax

import lmo_optax
from lmo_optax.example.config import OPTIMIZER_NAMES, OptimizerConfig


def schedule(oc: OptimizerConfig, steps: int) -> optax.Schedule:
    """Linear warmup, constant, then linear warmdown to zero over the last fraction."""
    warmdown = int(round(oc.warmdown_fraction * steps))
    warmup = min(oc.warmup_steps, steps)
    lr = oc.learning_rate

    def fn(count: Any) -> Any:
        up = (count + 1) / max(warmup, 1) if warmup else 1.0
        down = (steps - count) / warmdown if warmdown else 1.0
        return lr * jax.numpy.clip(jax.numpy.minimum(up, down), 0.0, 1.0)

    return fn


def scion_rules(oc: OptimizerConfig, tied: bool) -> list[lmo_optax.Rule]:
    return lmo_optax.gpt_rules(
        tied=tied,
        embedding_radius=oc.embedding_radius,
        hidden_radius=oc.hidden_radius,
        head_radius=oc.head_radius,
    )


def _muon_dims(params: Any) -> Any:
    """Newton–Schulz on hidden matrices (inside blocks), AdamW on embeddings, head, vectors.

    Scanned blocks (``GPTConfig.scan_layers``, paths ``blocks/<name>`` without a layer index)
    have a leading layer axis, a batch axis of Muon's orthogonalization: (layer, d_in, d_out)
    kernels, and the per-head attention kernels (layer, d, heads, head_dim) and, for ``out``,
    (layer, heads, head_dim, d), each one (d_in, d_out) matrix per layer.
    """

    def dims(path: Any, x: Any) -> Any:
        p = lmo_optax.paths.path_to_str(path)
        if not p.startswith("blocks/"):
            return None
        if x.ndim == 2 and p.split("/")[1].isdigit():
            return optax.contrib.MuonDimensionNumbers()
        if x.ndim == 3:
            return optax.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=2)
        if x.ndim == 4 and p.endswith("attn/out/kernel"):
            return optax.contrib.MuonDimensionNumbers(reduction_axis=(1, 2), output_axis=3)
        if x.ndim == 4:
            return optax.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=(2, 3))
        return None

    return jax.tree_util.tree_map_with_path(dims, params)


def build(
    name: str,
    oc: OptimizerConfig,
    steps: int,
    tied: bool,
    grad_accum_steps: int = 1,
    mesh: jax.sharding.Mesh | None = None,
) -> optax.GradientTransformation:
    """The optimizer ``name`` with its schedule over ``steps`` optimizer steps.

    ``mesh``: the device mesh the parameters are laid out on (Auto axes). Scion shares its
    Newton–Schulz work over it (``ns_mesh``; the strategy per shape group is ``"auto"``'s).

    With ``grad_accum_steps`` k > 1 it is wrapped in ``optax.MultiSteps``: k calls of
    ``update`` average their gradients and the k-th applies one update (the others return
    zeros), so the schedule still counts optimizer steps.
    """
    tx = _build(name, oc, steps, tied, mesh)
    if grad_accum_steps > 1:
        return optax.MultiSteps(tx, every_k_schedule=grad_accum_steps)
    return tx


def _build(
    name: str, oc: OptimizerConfig, steps: int, tied: bool, mesh: jax.sharding.Mesh | None
) -> optax.GradientTransformation:
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZER_NAMES)}")
    lr = schedule(oc, steps)
    if name in ("scion", "unconstrained_scion"):
        make = lmo_optax.scion if name == "scion" else lmo_optax.unconstrained_scion
        return make(
            lr,
            scion_rules(oc, tied),
            gradient_weight=oc.gradient_weight,
            ns_steps=oc.ns_steps,
            state_dtype=oc.state_dtype,
            ns_mesh=mesh,
        )
    if name == "adamw":
        return optax.adamw(lr, b1=oc.b1, b2=oc.b2, weight_decay=oc.weight_decay)
    return optax.contrib.muon(
        lr,
        ns_steps=oc.ns_steps,
        beta=oc.momentum,
        adam_b1=oc.b1,
        adam_b2=oc.b2,
        weight_decay=oc.weight_decay,
        muon_weight_dimension_numbers=_muon_dims,
    )
