"""The three stages of (u)SCG as composable optax transformations.

    optax.chain(
        average_gradients(gradient_weight=0.1),   # d ← (1 − α)·d + α·g      (paper eq. 3)
        scale_by_lmo(rules),                     # v_ℓ = ρ_ℓ · lmo_ℓ(d_ℓ)     (per parameter)
        scion_step(learning_rate, constrained=True),  # SCG: x ← (1 − γ)x + γ·v;  uSCG: x ← x + γ·v
    )

Each stage is an ordinary ``optax.GradientTransformation``, so clipping, schedules,
``optax.apply_if_finite``, ``optax.inject_hyperparams`` and ``optax.MultiSteps`` compose with it.
The mathematics of each stage is in ``docs/algorithm.md`` §2.1–§2.4.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lmo_optax import layouts, newton_schulz, scaling, strategies, validation
from lmo_optax import norms as norms_lib
from lmo_optax import rules as rules_lib


def _zeros_like(x: Any, dtype: Any) -> jax.Array:
    """Zeros of x's shape (and sharding, for arrays), also for jax.ShapeDtypeStruct."""
    if isinstance(x, jax.Array):
        return jnp.zeros_like(x, dtype=dtype)
    sharding = getattr(x, "sharding", None)
    zeros = jnp.zeros(x.shape, dtype)
    # device_put, not jnp.zeros(out_sharding=...): that refuses Auto axes under a trace
    # (jax.eval_shape of an init on abstract parameters).
    return zeros if sharding is None else jax.device_put(zeros, sharding)


# --------------------------------------------------------------------------------------------
# Stage 1: gradient averaging, d^k = (1 − α) d^{k−1} + α ∇f(x^k, ξ_k)   (paper eq. 3)
# --------------------------------------------------------------------------------------------


class AverageGradientsState(NamedTuple):
    """State of :func:`average_gradients`."""

    average: optax.Updates  # d^k: one buffer per parameter, params' shapes, ``state_dtype``


def average_gradients(
    gradient_weight: float = 0.1,
    *,
    nesterov: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """Exponential average of gradients, d ← (1 − α)·d + α·g, starting from d⁰ = 0.

    Args:
      gradient_weight: α of the paper: the weight of the *new* gradient. It is one minus the
        usual momentum: ``gradient_weight=0.1`` is optax's momentum/β = 0.9. Must be in (0, 1];
        1 disables averaging (no state is kept).
      nesterov: output (1 − α)·d^k + α·g^k (Nesterov look-ahead) instead of d^k.
      state_dtype: dtype of the stored average (e.g. ``jnp.bfloat16`` for 2 bytes per
        parameter); None keeps the parameters' dtype. The average is computed in at least
        float32 and only rounded when stored, so this step's output is not degraded.

    Returns:
      An ``optax.GradientTransformation`` whose updates are the averaged gradients (in the
      gradients' dtype).

    Example:
      >>> import jax.numpy as jnp
      >>> tx = average_gradients(gradient_weight=0.5)
      >>> state = tx.init(jnp.zeros(2))
      >>> d, state = tx.update(jnp.array([2.0, 4.0]), state)
      >>> d, state = tx.update(jnp.array([2.0, 4.0]), state)
      >>> d
      Array([1.5, 3. ], dtype=float32)
    """
    gradient_weight = validation.number(
        "gradient_weight", gradient_weight, low=0, high=1, low_open=True
    )
    validation.flag("nesterov", nesterov)
    no_averaging = isinstance(gradient_weight, float) and gradient_weight == 1.0
    state_dtype = validation.floating_dtype("state_dtype", state_dtype)
    param_layouts = layouts.ParamLayouts()

    def init_fn(params: optax.Params) -> AverageGradientsState | optax.EmptyState:
        validation.floating_leaves(params)
        param_layouts.record(params)
        if no_averaging:
            return optax.EmptyState()
        return AverageGradientsState(
            jax.tree.map(lambda p: _zeros_like(p, state_dtype or jnp.result_type(p)), params)
        )

    def update_fn(
        updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra_args: Any
    ):
        del params, extra_args
        validation.floating_leaves(updates, "gradients")
        if no_averaging:
            return updates, state
        validation.same_shapes(
            state.average,
            updates,
            reference_name="the optimizer state from init",
            name="gradients",
            hint="call init again after changing the parameters",
        )
        alpha = gradient_weight

        def average(g: jax.Array, d: jax.Array) -> jax.Array:
            dtype = jnp.promote_types(jnp.promote_types(g.dtype, d.dtype), jnp.float32)
            return (1 - alpha) * d.astype(dtype) + alpha * g.astype(dtype)

        new_average = jax.tree.map(average, updates, state.average)
        if nesterov:
            out = jax.tree.map(average, updates, new_average)
        else:
            out = new_average
        out = jax.tree.map(lambda o, g: o.astype(g.dtype), out, updates)
        stored = jax.tree.map(lambda d, old: d.astype(old.dtype), new_average, state.average)
        # Under Auto mesh axes: the parameters' layouts recorded at init (else the identity).
        return param_layouts.keep(out), AverageGradientsState(param_layouts.keep(stored))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Stage 2: the per-parameter LMO, v_ℓ = ρ_ℓ · lmo_ℓ(d_ℓ)   (Scion's layer-wise max-norm, §4)
# --------------------------------------------------------------------------------------------


def scale_by_lmo(
    rules: rules_lib.RulesLike = None,
    *,
    ns_coeffs: newton_schulz.CoeffsLike | None = None,
    ns_steps: int | None = None,
    ns_dtype: Any = None,
    clip: bool = False,
    radius_scale: float = 1.0,
    ns_sharding: strategies.StrategyName = "auto",
    ns_mesh: jax.sharding.Mesh | None = None,
    ns_axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformation:
    """Replaces each (averaged) gradient d_ℓ by ρ_ℓ · lmo_ℓ(d_ℓ), the norm chosen by the rules.

    Args:
      rules: a list of :class:`~lmo_optax.rules.Rule`, a preset name (``"gpt"``,
        ``"gpt_tied"``, ``"vit"``, ``"cnn"``, ``"mlp"``, ``"auto"``) or None for ``"auto"``.
      ns_coeffs: Newton–Schulz table for Spectral norms that do not set their own (default
        ``"polar_express"``).
      ns_steps: Newton–Schulz steps for Spectral norms that do not set their own (default 5).
      ns_dtype: Newton–Schulz computation dtype (default float32).
      clip: the clipped variant: step with η_ℓ = min{ρ_ℓ, ‖d_ℓ‖_*} instead of ρ_ℓ, where the
        dual norm is −⟨d_ℓ, lmo_ℓ(d_ℓ)⟩ (exact for exact LMOs, to Newton–Schulz accuracy for
        Spectral).
      radius_scale: multiplies every radius (convenient for sweeps; may be injected).
      ns_sharding: how the Newton–Schulz work of sharded parameters is shared across devices:
        ``"auto"`` (default), ``"replicate"``, ``"distribute"`` or ``"sharded"``; see
        :mod:`lmo_optax.strategies`. Without a mesh all are the plain computation.
      ns_mesh: the mesh to share the work over when the parameters' types (Explicit axes) do
        not carry one; default: the mesh set with ``jax.set_mesh``.
      ns_axis_name: inside ``jax.pmap`` (or ``shard_map``) over replicated parameters, the axis
        name to share the Newton–Schulz work over; None: every device does all of it.

    Returns:
      An ``optax.GradientTransformation`` with no state. It raises ValueError at ``init`` (and
      at trace time) naming every parameter no rule matched or whose norm does not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> from lmo_optax.norms import Sign
      >>> from lmo_optax.rules import Rule
      >>> tx = scale_by_lmo([Rule("*", Sign(fan_in_scaled=False), radius=2.0)])
      >>> v, _ = tx.update({"w": jnp.array([0.3, -4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> v["w"]
      Array([-2.,  2.], dtype=float32)
    """
    rules = rules_lib.resolve_rules(rules)
    strategies.check_strategy(ns_sharding, "ns_sharding")
    if ns_coeffs is not None:
        newton_schulz.coefficient_table(ns_coeffs, argument="ns_coeffs")
    if ns_steps is not None:
        ns_steps = validation.positive_int("ns_steps", ns_steps)
    ns_dtype = validation.floating_dtype("ns_dtype", ns_dtype)
    ns_dtype = None if ns_dtype is None else ns_dtype.name
    validation.flag("clip", clip)
    radius_scale = validation.positive_number("radius_scale", radius_scale)
    if ns_mesh is not None and not hasattr(ns_mesh, "axis_names"):
        raise TypeError(f"ns_mesh must be None or a jax.sharding.Mesh, got {ns_mesh!r}")
    names = (ns_axis_name,) if isinstance(ns_axis_name, str) else ns_axis_name
    if names is not None and not (
        isinstance(names, tuple) and names and all(isinstance(n, str) for n in names)
    ):
        raise TypeError(
            f"ns_axis_name must be None, an axis name or a tuple of them, got {ns_axis_name!r}"
        )

    def concrete_norm(norm: norms_lib.Norm) -> norms_lib.Norm:
        if isinstance(norm, norms_lib.Spectral):
            return norm.with_newton_schulz(ns_coeffs, ns_steps, ns_dtype)
        return norm

    param_layouts = layouts.ParamLayouts()

    def init_fn(params: optax.Params) -> optax.EmptyState:
        rules_lib.assign(params, rules)  # validate now, with the parameter paths in the error
        param_layouts.record(params)
        return optax.EmptyState()

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ):
        del params, extra_args
        assignments = rules_lib.assign(updates, rules)
        is_assignment = lambda x: isinstance(x, rules_lib.Assignment)
        flat_assignments, treedef = jax.tree.flatten(assignments, is_leaf=is_assignment)
        flat_updates = treedef.flatten_up_to(updates)
        norms = [concrete_norm(a.norm) for a in flat_assignments]
        # Spectral LMOs are computed together, so their Newton–Schulz work can be shared
        # across devices (lmo_optax.strategies); the others are elementwise and reductions.
        spectral = [
            i
            for i, n in enumerate(norms)
            if isinstance(n, norms_lib.Spectral) and n.method == "newton_schulz"
        ]
        together = strategies.spectral_lmos(
            [norms[i] for i in spectral],
            [flat_updates[i] for i in spectral],
            strategy=ns_sharding,
            mesh=ns_mesh,
            axis_name=ns_axis_name,
        )
        by_index = dict(zip(spectral, together, strict=True))
        directions = [
            by_index[i] if i in by_index else norm.lmo(d)
            for i, (norm, d) in enumerate(zip(norms, flat_updates, strict=True))
        ]

        def project(a: rules_lib.Assignment, d: jax.Array, direction: jax.Array) -> jax.Array:
            radius = a.radius * radius_scale
            if not clip:
                return (radius * direction).astype(d.dtype)
            f32 = jnp.promote_types(d.dtype, jnp.float32)
            # ‖d‖_* = −⟨d, lmo(d)⟩, summed at unit peak so that it overflows only if it is
            # above the dtype's range (docs/algorithm.md §1.4); min(ρ, ∞) is then ρ.
            unit, e = scaling.to_unit_peak(d.astype(f32), tuple(range(d.ndim)))
            # A plain sum, not jnp.vdot: a dot product of sharded operands has no output
            # sharding under Explicit mesh axes (ShardingTypeError).
            inner = jnp.sum(unit * direction.astype(f32))
            dual = scaling.times_power_of_two(-inner, e)
            dual = dual.reshape(())
            return (jnp.minimum(radius, dual) * direction.astype(f32)).astype(d.dtype)

        out = [
            project(*args) for args in zip(flat_assignments, flat_updates, directions, strict=True)
        ]
        return param_layouts.keep(treedef.unflatten(out)), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Stage 3: the step. uSCG: x ← x + γ·v.  SCG: x ← (1 − γ)·x + γ·v  (paper Algorithms 1–2)
# --------------------------------------------------------------------------------------------


class ScionStepState(NamedTuple):
    """State of :func:`scion_step`."""

    count: jax.Array  # int32 scalar: steps taken, the argument of a learning-rate schedule


def scion_step(
    learning_rate: optax.ScalarOrSchedule,
    *,
    constrained: bool = True,
) -> optax.GradientTransformation:
    """The (u)SCG step from LMO directions v (already scaled by the radii).

    Args:
      learning_rate: γ, a number or an optax schedule of the step count. For SCG it is also
        the weight of the convex combination: a constant must be in [0, 1]; for uSCG, a
        finite number ≥ 0. A schedule's values are not checked (they are only known inside
        the step): with SCG, γ > 1 leaves the ball (the iterate overshoots past v), γ < 0
        ascends the objective (for uSCG too), and a non-finite γ makes the parameters
        non-finite. An injected (``optax.inject_hyperparams``) value is checked where it is
        concrete (at ``init``), not inside ``jit``.
      constrained: SCG (True): x ← (1 − γ)·x + γ·v, which keeps every iterate inside its ball
        when it starts inside (paper Insight 3.1); needs ``params``. uSCG (False): x ← x + γ·v.

    Returns:
      An ``optax.GradientTransformation`` whose updates have the parameters' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scion_step(0.5, constrained=True)
      >>> x = jnp.array([4.0])
      >>> u, _ = tx.update(jnp.array([1.0]), tx.init(x), x)
      >>> x + u   # (1 − 0.5)·4 + 0.5·1
      Array([2.5], dtype=float32)
    """
    constrained = validation.flag("constrained", constrained)
    if not callable(learning_rate):
        high = 1.0 if constrained else math.inf
        name = "learning_rate of the constrained (SCG) step" if constrained else "learning_rate"
        learning_rate = validation.number(name, learning_rate, low=0, high=high)

    param_layouts = layouts.ParamLayouts()

    def init_fn(params: optax.Params) -> ScionStepState:
        validation.floating_leaves(params)
        param_layouts.record(params)
        count = jnp.zeros([], jnp.int32)
        # Auto mesh axes: the count lives on the parameters' mesh from the start, as the
        # jitted step returns it, so the second step does not compile again.
        on_mesh = param_layouts.replicated()
        return ScionStepState(count if on_mesh is None else jax.device_put(count, on_mesh))

    def update_fn(
        updates: optax.Updates,
        state: ScionStepState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ):
        del extra_args
        gamma = learning_rate(state.count) if callable(learning_rate) else learning_rate
        if constrained and params is None:
            raise ValueError(
                "the constrained (SCG) step x ← (1 − γ)x + γ·lmo needs the parameters: "
                "call tx.update(grads, state, params)"
            )
        if params is not None:
            validation.same_shapes(
                params,
                updates,
                reference_name="the parameter",
                name="updates",
                hint="pass the parameters the updates are for",
            )
        if constrained:

            def step(v: jax.Array, x: jax.Array) -> jax.Array:
                f32 = jnp.promote_types(x.dtype, jnp.float32)
                return (gamma * (v.astype(f32) - x.astype(f32))).astype(x.dtype)

            out = jax.tree.map(step, updates, params)
        else:

            def step(v: jax.Array, x: Any = None) -> jax.Array:
                dtype = v.dtype if x is None else jnp.result_type(x)
                return (gamma * v.astype(jnp.promote_types(v.dtype, jnp.float32))).astype(dtype)

            out = (
                jax.tree.map(step, updates)
                if params is None
                else jax.tree.map(step, updates, params)
            )
        out = param_layouts.keep(out)  # Auto mesh axes: the parameters' layouts
        return out, ScionStepState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
