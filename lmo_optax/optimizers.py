"""One-line optimizers: Scion (constrained SCG) and unconstrained Scion (uSCG).

Both are ``optax.chain(average_gradients, scale_by_lmo, scion_step)`` (the stages are in
:mod:`lmo_optax.transforms`; the mathematics in ``docs/algorithm.md`` §2.5). :func:`scion` has
every option once; ``unconstrained_scion`` is ``scion`` with ``constrained=False``, the way
optax defines ``nadamw`` from ``adamw``. Each option keeps the name, default and type of the
stage it is passed to (a test compares the signatures), so it is documented there.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from lmo_optax import newton_schulz, strategies, transforms
from lmo_optax import rules as rules_lib


def scion(
    learning_rate: optax.ScalarOrSchedule,
    rules: rules_lib.RulesLike = None,
    *,
    constrained: bool = True,
    gradient_weight: float = 0.1,
    nesterov: bool = False,
    state_dtype: Any = None,
    ns_coeffs: newton_schulz.CoeffsLike | None = None,
    ns_steps: int | None = None,
    ns_dtype: Any = None,
    clip: bool = False,
    radius_scale: float = 1.0,
    ns_sharding: strategies.StrategyName = "auto",
    ns_mesh: jax.sharding.Mesh | None = None,
    ns_axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformation:
    """Scion, constrained (SCG, the paper's default): x_ℓ ← (1 − γ)·x_ℓ + γ·ρ_ℓ·lmo_ℓ(d_ℓ).

    Args:
      learning_rate: γ, a number or an optax schedule (the paper uses no warmup and a linear
        warmdown). A constant must be in [0, 1] for SCG and a finite number ≥ 0 for uSCG
        (checked here). A schedule's values are not checked: with SCG, γ > 1 leaves the ball,
        γ < 0 ascends (for uSCG too), and a non-finite γ makes the parameters non-finite; see
        :func:`~lmo_optax.scion_step`.
      rules: list of :class:`~lmo_optax.Rule`, a preset name (``"gpt"``, ``"gpt_tied"``,
        ``"vit"``, ``"cnn"``, ``"mlp"``, ``"auto"``), or None: ``Auto`` by shape with radius 1.
      constrained: True for SCG, a convex combination that keeps x_ℓ in the ball of radius
        ρ_ℓ once there; False for uSCG, x_ℓ ← x_ℓ + γ·ρ_ℓ·lmo_ℓ(d_ℓ). See
        :func:`~lmo_optax.scion_step`.
      gradient_weight, nesterov, state_dtype: the gradient average d ← (1 − α)·d + α·g; see
        :func:`~lmo_optax.average_gradients` (α = 0.1 is the usual momentum 0.9).
      ns_coeffs, ns_steps, ns_dtype, clip, radius_scale, ns_sharding, ns_mesh, ns_axis_name:
        how the LMOs are computed (Newton–Schulz table, steps and dtype, the clipped step,
        a factor on every radius, and how sharded parameters share the Newton–Schulz work);
        see :func:`~lmo_optax.scale_by_lmo`. Pass ``ns_steps`` in ``static_args`` of
        ``optax.inject_hyperparams`` when you set it there.

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


unconstrained_scion = functools.partial(scion, constrained=False)
unconstrained_scion.__doc__ = """Unconstrained Scion (uSCG): x_ℓ ← x_ℓ + γ·ρ_ℓ·lmo_ℓ(d_ℓ).

    :func:`scion` with ``constrained=False``; the same arguments. With Spectral norms on hidden
    matrices this is Muon, up to the radius and the √(d_out/d_in) factor (docs/algorithm.md §2.7).
    Each step moves each parameter by exactly γ·ρ_ℓ in its norm (for exact LMOs).

    Example:
      >>> import jax.numpy as jnp
      >>> tx = unconstrained_scion(learning_rate=0.01, rules="mlp")
      >>> state = tx.init({"layers": [{"kernel": jnp.ones((2, 3))}, {"kernel": jnp.ones((3, 1))}]})
    """

# doctest does not look inside functools.partial objects; this runs the example above.
__test__ = {"unconstrained_scion": unconstrained_scion.__doc__}
