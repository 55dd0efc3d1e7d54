"""One-line optimizers: Scion (constrained SCG) and unconstrained Scion (uSCG).

Both are ``optax.chain(average_gradients, scale_by_lmo, scion_step)``; see
``lmo_optax.transforms`` for the stages.
"""

from __future__ import annotations

from typing import Any

import optax

from lmo_optax import newton_schulz, strategies, transforms
from lmo_optax import rules as rules_lib


def _scion(
    learning_rate: optax.ScalarOrSchedule,
    rules: rules_lib.RulesLike,
    *,
    constrained: bool,
    gradient_weight: float,
    nesterov: bool,
    ns_coeffs: newton_schulz.CoeffsLike,
    ns_steps: int | None,
    ns_dtype: Any,
    state_dtype: Any,
    clip: bool,
    radius_scale: float,
    ns_sharding: strategies.StrategyName,
    ns_mesh: Any,
    ns_axis_name: Any,
) -> optax.GradientTransformation:
    return optax.chain(
        transforms.average_gradients(gradient_weight, nesterov=nesterov, state_dtype=state_dtype),
        transforms.scale_by_lmo(
            rules,
            ns_coeffs=ns_coeffs,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            clip=clip,
            radius_scale=radius_scale,
            ns_sharding=ns_sharding,
            ns_mesh=ns_mesh,
            ns_axis_name=ns_axis_name,
        ),
        transforms.scion_step(learning_rate, constrained=constrained),
    )


def scion(
    learning_rate: optax.ScalarOrSchedule,
    rules: rules_lib.RulesLike = None,
    *,
    gradient_weight: float = 0.1,
    nesterov: bool = False,
    ns_coeffs: newton_schulz.CoeffsLike = newton_schulz.DEFAULT_COEFFS,
    ns_steps: int | None = None,
    ns_dtype: Any = None,
    state_dtype: Any = None,
    clip: bool = False,
    radius_scale: float = 1.0,
    ns_sharding: strategies.StrategyName = "auto",
    ns_mesh: Any = None,
    ns_axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformation:
    """Scion, constrained (SCG, the paper's default): x_ℓ ← (1 − γ)·x_ℓ + γ·ρ_ℓ·lmo_ℓ(d_ℓ).

    Args:
      learning_rate: γ ∈ [0, 1], a float or an optax schedule (the paper uses no warmup and
        a linear warmdown).
      rules: list of :class:`~lmo_optax.Rule`, a preset name (``"gpt"``, ``"gpt_tied"``,
        ``"vit"``, ``"cnn"``, ``"mlp"``, ``"auto"``), or None: ``Auto`` by shape with radius 1.
      gradient_weight: α, the weight of the new gradient in d ← (1 − α)·d + α·g; α = 0.1 is
        the usual momentum 0.9 (the paper's default).
      nesterov: use the Nesterov look-ahead of the average.
      ns_coeffs: Newton–Schulz coefficient table (``"polar_express"``, ``"jordan"``,
        ``"you"``, ``"cans"``, or (a, b, c) triples) for Spectral norms.
      ns_steps: Newton–Schulz steps (None: 5). Pass it in ``static_args`` of
        ``optax.inject_hyperparams`` when you set it there.
      ns_dtype: Newton–Schulz computation dtype (None: float32).
      state_dtype: dtype of the single averaged-gradient buffer (e.g. ``jnp.bfloat16``).
      clip: step with min{ρ_ℓ, ‖d_ℓ‖_*} instead of ρ_ℓ (clipped Scion).
      radius_scale: multiplies every radius.
      ns_sharding: how sharded parameters share the Newton–Schulz work across devices:
        ``"auto"`` (default: the fewest FLOPs per device), ``"replicate"``, ``"distribute"``
        (each device orthogonalizes its share of the same-shape matrices) or ``"sharded"``
        (Newton–Schulz on the sharded matrix); see :mod:`lmo_optax.strategies`.
      ns_mesh: the mesh to share the work over when the parameters' types (Explicit axes) do
        not carry one; default: the mesh set with ``jax.set_mesh``.
      ns_axis_name: inside ``jax.pmap`` over replicated parameters, the axis name over which
        to share the Newton–Schulz work (each device orthogonalizes its share, then
        ``all_gather``); None: each device does all of it.

    Returns:
      An ``optax.GradientTransformation``; ``update`` needs ``params``. Under Auto mesh axes,
      ``init`` records the parameters' layouts (call it outside ``jit``) and ``update`` keeps
      updates and state in them (:class:`lmo_optax.layouts.ParamLayouts`).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> tx = scion(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum((jnp.ones(4) @ p["w"] + p["b"] - 1) ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    return _scion(
        learning_rate,
        rules,
        constrained=True,
        gradient_weight=gradient_weight,
        nesterov=nesterov,
        ns_coeffs=ns_coeffs,
        ns_steps=ns_steps,
        ns_dtype=ns_dtype,
        state_dtype=state_dtype,
        clip=clip,
        radius_scale=radius_scale,
        ns_sharding=ns_sharding,
        ns_mesh=ns_mesh,
        ns_axis_name=ns_axis_name,
    )


def unconstrained_scion(
    learning_rate: optax.ScalarOrSchedule,
    rules: rules_lib.RulesLike = None,
    *,
    gradient_weight: float = 0.1,
    nesterov: bool = False,
    ns_coeffs: newton_schulz.CoeffsLike = newton_schulz.DEFAULT_COEFFS,
    ns_steps: int | None = None,
    ns_dtype: Any = None,
    state_dtype: Any = None,
    clip: bool = False,
    radius_scale: float = 1.0,
    ns_sharding: strategies.StrategyName = "auto",
    ns_mesh: Any = None,
    ns_axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformation:
    """Unconstrained Scion (uSCG): x_ℓ ← x_ℓ + γ·ρ_ℓ·lmo_ℓ(d_ℓ).

    Same arguments as :func:`scion`. With Spectral norms on hidden matrices and no Nesterov,
    this is Muon (up to the radius and the √(d_out/d_in) factor). Each step moves each
    parameter by exactly γ·ρ_ℓ in its norm (for exact LMOs).

    Example:
      >>> import jax.numpy as jnp
      >>> tx = unconstrained_scion(learning_rate=0.01, rules="mlp")
      >>> state = tx.init({"layers": [{"kernel": jnp.ones((2, 3))}, {"kernel": jnp.ones((3, 1))}]})
    """
    return _scion(
        learning_rate,
        rules,
        constrained=False,
        gradient_weight=gradient_weight,
        nesterov=nesterov,
        ns_coeffs=ns_coeffs,
        ns_steps=ns_steps,
        ns_dtype=ns_dtype,
        state_dtype=state_dtype,
        clip=clip,
        radius_scale=radius_scale,
        ns_sharding=ns_sharding,
        ns_mesh=ns_mesh,
        ns_axis_name=ns_axis_name,
    )
