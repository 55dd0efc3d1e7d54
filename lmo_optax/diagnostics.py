"""Per-layer diagnostics: where each parameter sits on its ball, its gradient's dual norm, and
how well Newton–Schulz orthogonalized it (``docs/algorithm.md`` §5.9).

For each parameter ℓ with norm ‖·‖_ℓ and radius ρ_ℓ from the rules (§6):

* ``norm_over_radius`` = ‖x_ℓ‖_ℓ/(ρ_ℓ·radius_scale): 1 on the sphere of the ball; SCG keeps it
  ≤ 1 up to the Newton–Schulz band (§2.3, §5.4);
* ``dual_norm`` = ‖d_ℓ‖_{ℓ,*} of the averaged gradient d (when given): compare ρ_ℓ·‖d_ℓ‖_{ℓ,*},
  the decrease a step of the LMO promises (§1.1), across layers;
* ``ns_error`` (Spectral parameters, when d is given) = ‖O Oᵀ − I‖_F/√m, O the polar factor
  the step computes from d (Newton–Schulz, or the SVD with ``method="svd"``) in its wide
  orientation, m = min(d_in, d_out): the RMS of σᵢ(O)² − 1 over its m singular values, the
  max over the matrices of a batched parameter.

>>> import jax, jax.numpy as jnp
>>> from lmo_optax.rules import Rule, init_on_ball
>>> from lmo_optax.norms import RMS, Spectral
>>> rules = (Rule("*kernel", Spectral(), 3.0), Rule("*bias", RMS(), 1.0))  # hashable: static
>>> params = init_on_ball(jax.random.key(0), {"kernel": jnp.zeros((64, 32)),
...                                           "bias": jnp.zeros(32)}, rules)
>>> d = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
>>> result = jax.jit(diagnostics, static_argnames="rules")(params, rules, d)
>>> round(float(result["kernel"]["norm_over_radius"]), 4)
1.0
>>> 0.01 < float(result["kernel"]["ns_error"]) < 0.3  # Polar Express, 5 steps (§5.4)
True
>>> print(diagnostics_table(result))
path    norm/ρ  dual norm  NS error
------  ------  ---------  --------
bias    0       30.76      -
kernel  1       167.6      0.1693
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmo_optax import layouts, newton_schulz, scaling, strategies, validation
from lmo_optax import norms as norms_lib
from lmo_optax import rules as rules_lib
from lmo_optax.transforms import AverageGradientsState

Diagnostics = dict[str, dict[str, jax.Array]]

DEFAULT_POWER_ITERATIONS = 32
"""Power iterations for σ_max of a Spectral parameter (``exact=False``)."""


def diagnostics(
    params: Any,
    rules: rules_lib.RulesLike = None,
    averaged_gradients: Any = None,
    *,
    ns_coeffs: newton_schulz.CoeffsLike | None = None,
    ns_steps: int | None = None,
    ns_dtype: Any = None,
    radius_scale: float = 1.0,
    exact: bool = False,
    power_iterations: int = DEFAULT_POWER_ITERATIONS,
) -> Diagnostics:
    """Per-parameter norm/ρ, dual norm of the averaged gradient and Newton–Schulz error.

    A pure function of arrays (``rules`` and the keywords other than ``radius_scale`` are
    static), so it can be jitted: ``jax.jit(diagnostics, static_argnames="rules")`` with rules
    that hash (a preset name or a tuple of rules), or ``functools.partial`` over the rules.
    Sharded parameters are used in their layouts; the only gathers are those the norms do
    (Explicit mesh axes), and the Newton–Schulz work is shared as in ``scale_by_lmo``.

    Args:
      params: the parameters x (a pytree of floating-point arrays).
      rules: the rules of the optimizer (a preset name, a sequence of rules, or None for
        ``"auto"``).
      averaged_gradients: the average d the LMO stage sees (:func:`average_from_state` takes it
        from an optimizer state), shaped like ``params``; None skips ``dual_norm`` and
        ``ns_error``.
      ns_coeffs, ns_steps, ns_dtype: the optimizer's Newton–Schulz settings (``scale_by_lmo``),
        so that the polar factor is the one the step computes.
      radius_scale: the optimizer's ``radius_scale`` (may be traced).
      exact: the Spectral norm (σ_max) and its dual (Σσᵢ) by SVD (the norms' own ``norm`` and
        ``dual_norm``). False (default): σ_max by ``power_iterations`` power iterations on
        x'x from a fixed random start (a lower bound; exact when the top singular values are
        equal, as on the sphere after ``init_on_ball``; at the default, 0.2% below σ_max on an
        SCG iterate and 0.2–1.3% on Gaussian matrices up to 768 × 3072, whose continuous
        spectrum at σ_max is the hard case), and the dual norm as −⟨d, lmo(d)⟩ from the step's
        own polar factor, as the clipped variant computes it (§2.4): Σσᵢ·P(σᵢ/‖d‖_F),
        inside the Newton–Schulz band of Σσᵢ. The other norms are always exact.
      power_iterations: iterations of the power method (``exact=False``).

    Returns:
      ``{path: {"norm_over_radius": …, "dual_norm": …, "ns_error": …}}`` of float32 scalars,
      keyed by the "/"-joined parameter path; ``dual_norm`` only with ``averaged_gradients``
      and ``ns_error`` only for Spectral parameters with ``averaged_gradients``.
      ``ns_error`` is ‖O Oᵀ − I‖_F/√m (module doc): about 1e-6 for the exact polar factor of a
      full-rank d; at most max(1 − lo², hi² − 1) for the band [lo, hi] of §5.4 (0.294 for
      Polar Express at 5 steps) when every σᵢ/‖d‖_F ≥ 1e-3; smaller singular values come out
      below the band (a d of rank r < m adds (m − r)/m to its square, as σ = 0 maps to 0), and
      a zero matrix counts 0.

    Raises:
      ValueError: naming every parameter no rule matched, whose norm does not fit its shape
        or that is not floating point; or a path where ``averaged_gradients`` differs from
        ``params`` in structure or shape.

    Cost (jitted, float32, CPU with two shared cores, so the ratios matter more than the
    seconds): with 12 layers of GPT-2 small's shapes at width 256 (DenseGeneral attention,
    vocabulary 50257, untied head; 35.5M parameters, preset ``"gpt"``), one Scion update
    takes 2.2–2.6 s; ``diagnostics`` with d 2.6–3.2 s (about 1.2×: mostly its Newton–Schulz
    pass, as in the step), without d 0.36 s (0.15×), and with ``exact=True`` and d 24–46 s
    (SVDs of every matrix). Called every N steps it adds about 1.2/N updates.
    """
    rules = rules_lib.resolve_rules(rules)
    if ns_coeffs is not None:
        newton_schulz.coefficient_table(ns_coeffs, argument="ns_coeffs")
    ns_steps = None if ns_steps is None else validation.positive_int("ns_steps", ns_steps)
    dtype = validation.floating_dtype("ns_dtype", ns_dtype)
    ns_dtype = None if dtype is None else dtype.name  # as scale_by_lmo has them
    radius_scale = validation.positive_number("radius_scale", radius_scale)
    exact = validation.flag("exact", exact)
    power_iterations = validation.positive_int("power_iterations", power_iterations)

    assignments = rules_lib.assign(params, rules)  # names unmatched and non-floating paths
    if averaged_gradients is not None:
        validation.floating_leaves(averaged_gradients, "averaged gradients")
        validation.same_shapes(
            params,
            averaged_gradients,
            reference_name="the parameters",
            name="averaged gradients",
            hint="pass the average of these parameters' gradients (average_from_state(opt_state))",
        )
    is_assignment = lambda x: isinstance(x, rules_lib.Assignment)  # noqa: E731
    flat_assignments, treedef = jax.tree.flatten(assignments, is_leaf=is_assignment)
    flat_params = treedef.flatten_up_to(params)
    norms = [
        a.norm.with_newton_schulz(ns_coeffs, ns_steps, ns_dtype)
        if isinstance(a.norm, norms_lib.Spectral)
        else a.norm
        for a in flat_assignments
    ]

    out: Diagnostics = {}
    for a, norm, x in zip(flat_assignments, norms, flat_params, strict=True):
        if isinstance(norm, norms_lib.Spectral) and not exact:
            n = _spectral_norm_estimate(norm, x, power_iterations)
        else:
            n = norm.norm(x)
        radius = a.radius * radius_scale
        out[a.path] = {"norm_over_radius": (n / radius).astype(jnp.float32)}
    if averaged_gradients is None:
        return out

    flat_d = treedef.flatten_up_to(averaged_gradients)
    # The polar factors of the step (§5), the Newton–Schulz work shared as in scale_by_lmo.
    spectral = [i for i, n in enumerate(norms) if isinstance(n, norms_lib.Spectral)]
    iterated = [i for i in spectral if norms[i].method == "newton_schulz"]
    together = strategies.spectral_lmos([norms[i] for i in iterated], [flat_d[i] for i in iterated])
    directions = dict(zip(iterated, together, strict=True))
    for i in spectral:
        if i not in directions:
            directions[i] = norms[i].lmo(flat_d[i])

    for i, (a, norm, d) in enumerate(zip(flat_assignments, norms, flat_d, strict=True)):
        entry = out[a.path]
        if i in directions and not exact:
            entry["dual_norm"] = _dual_norm_from_lmo(d, directions[i])
        else:
            entry["dual_norm"] = norm.dual_norm(d).astype(jnp.float32)
        if i in directions:
            entry["ns_error"] = _orthogonality_error(norm, d, directions[i])
    return out


def _spectral_norm_estimate(norm: norms_lib.Spectral, x: jax.Array, iterations: int) -> jax.Array:
    """‖x‖ = σ_max/s by the power method on each matrix (§3.3): a lower bound.

    Runs at unit peak (§1.4) from a fixed random start, on the smaller side of x'x.
    """
    m = norm.as_matrices(layouts.gather(x)).astype(jnp.promote_types(x.dtype, jnp.float32))
    if m.size == 0:
        return jnp.zeros((), jnp.float32)
    y, e = scaling.to_unit_peak(m, (-2, -1))
    if y.shape[-2] < y.shape[-1]:
        y = jnp.swapaxes(y, -1, -2)  # tall: the vector lives on the smaller side
    v = jax.random.normal(jax.random.key(0), y.shape[:-2] + y.shape[-1:], y.dtype)

    def unit(v: jax.Array) -> jax.Array:
        n = jnp.linalg.norm(v, axis=-1, keepdims=True)
        return jnp.where(n > 0, v / jnp.where(n > 0, n, 1), 0)

    def step(_: int, v: jax.Array) -> jax.Array:
        return unit(jnp.einsum("...ij,...i->...j", y, jnp.einsum("...ij,...j->...i", y, v)))

    v = jax.lax.fori_loop(0, iterations, step, unit(v))
    sigma = jnp.linalg.norm(jnp.einsum("...ij,...j->...i", y, v), axis=-1)
    n = scaling.reduce_scaled(sigma, e[..., 0, 0], scaling.max_of, 1 / norm.scale(x.shape))
    return n.astype(jnp.float32)


def _dual_norm_from_lmo(d: jax.Array, direction: jax.Array) -> jax.Array:
    """−⟨d, lmo(d)⟩, summed at unit peak as the clipped step does (§1.4, §2.4)."""
    f32 = jnp.promote_types(d.dtype, jnp.float32)
    unit, e = scaling.to_unit_peak(d.astype(f32), tuple(range(d.ndim)))
    # A sum of products, not vdot: vdot flattens, which Explicit mesh axes do not allow.
    dual = scaling.times_power_of_two(-jnp.sum(unit * direction.astype(f32)), e)
    return dual.reshape(()).astype(jnp.float32)


def _orthogonality_error(norm: norms_lib.Spectral, d: jax.Array, direction: jax.Array) -> jax.Array:
    """max over matrices of ‖O Oᵀ − I‖_F/√m, O = lmo(d)/(−s) in its wide orientation."""
    shape = direction.shape
    if math.prod(shape) == 0:
        return jnp.zeros((), jnp.float32)
    f32 = jnp.promote_types(direction.dtype, jnp.float32)
    o = norm.as_matrices(layouts.gather(direction)).astype(f32) * (-1 / norm.scale(shape))
    if o.shape[-2] > o.shape[-1]:
        o = jnp.swapaxes(o, -1, -2)
    rows = o.shape[-2]
    gram = o @ jnp.swapaxes(o, -1, -2)
    error = jnp.sqrt(jnp.sum(jnp.square(gram - jnp.eye(rows, dtype=f32)), axis=(-2, -1)) / rows)
    nonzero = jnp.any(norm.as_matrices(layouts.gather(d)) != 0, axis=(-2, -1))
    return jnp.max(jnp.where(nonzero, error, 0), initial=0).astype(jnp.float32)


def average_from_state(opt_state: Any) -> Any:
    """The averaged gradient d held in an optimizer state, for :func:`diagnostics`.

    Finds the one :class:`~lmo_optax.AverageGradientsState` anywhere in ``opt_state``: the
    state of ``scion``, of a chain, of ``optax.inject_hyperparams`` (its ``inner_state``) and
    other wrappers whose states are pytrees. With ``nesterov=True`` the step orthogonalizes the
    look-ahead (1 − α)·d + α·g (§2.1), not d itself.

    Raises:
      ValueError: there is none (``gradient_weight=1`` keeps no average: pass the gradients)
        or more than one (pass the one meant, e.g. ``state.inner_state[0].average``).

    >>> import jax.numpy as jnp, optax
    >>> from lmo_optax.optimizers import scion
    >>> tx = optax.inject_hyperparams(scion)(learning_rate=0.1)
    >>> average_from_state(tx.init({"w": jnp.zeros((4, 4))}))["w"].shape
    (4, 4)
    """
    is_state = lambda x: isinstance(x, AverageGradientsState)  # noqa: E731
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]
    if len(found) != 1:
        raise ValueError(
            f"lmo_optax: the optimizer state holds {len(found)} AverageGradientsState(s), "
            "expected one. "
            + (
                "With gradient_weight=1 there is no average: pass the gradients themselves."
                if not found
                else "Pass the average meant (its .average) to diagnostics."
            )
        )
    return found[0].average


_COLUMNS = (("norm_over_radius", "norm/ρ"), ("dual_norm", "dual norm"), ("ns_error", "NS error"))


def diagnostics_table(result: Diagnostics) -> str:
    """A text table of :func:`diagnostics`' result: path, norm/ρ, dual norm, NS error.

    Rows in natural path order (``layers/2`` before ``layers/10``); "-" where a value is absent.
    """
    rows = [
        (path,)
        + tuple(
            f"{float(np.asarray(values[key])):.4g}" if key in values else "-" for key, _ in _COLUMNS
        )
        for path, values in sorted(result.items(), key=lambda kv: rules_lib._natural_key(kv[0]))
    ]
    header = ("path",) + tuple(title for _, title in _COLUMNS)
    # Hand-written, like rules_table: the library depends only on jax, optax and numpy.
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])
