"""Rules inferred from how a forward pass uses each parameter: ``infer_rules``.

Presets pick norms by parameter names (``*embedding``, ``*lm_head/kernel``) and layouts by
convention (Flax kernels are (d_in, d_out)). That fails quietly on other models: an Equinox or
PyTorch-layout ``Linear.weight`` is (d_out, d_in), so a Flax-layout rule gives it the factor
√(d_in/d_out) instead of √(d_out/d_in). What a parameter *is* can be read off the forward pass
instead. :func:`infer_rules` traces ``fn(params, *args)`` to a jaxpr (no FLOPs spent) and follows
each parameter through the reshapes, transposes, casts and slices that keep it a view of itself
(``jit``, ``scan``, ``while``, ``cond``, ``remat`` and custom-derivative calls included; a
``scan`` over stacked layers slices off the layer axis, which becomes a batch axis) to how it
is used:

==================  =====================================================================
role                how it is recognized → norm (paper Table 2, Recommendation 3.1), radius
==================  =====================================================================
token embedding     rows gathered by integer inputs → ColNorm over the gathered axis
tied embedding      gathered, and also the head's matrix → Sign(1/d_in), d_in its features
positional table    rows gathered by indices that do not come from the inputs → ColNorm
input layer         a product with the inputs themselves (no parameter product before it:
                    pixels, features) → Spectral(input_layer=True) / SpectralConv(input)
head                a product whose result reaches the output with no parameter product
                    after it → Sign(1/d_in)
hidden              every other product → Spectral (SpectralConv for convolution kernels)
vector              only added or multiplied elementwise (biases, gains) → RMS
==================  =====================================================================

A product's contracted axes are the parameter's input axes, its free axes the output axes, and
the remaining axes (layers of a scan, experts, …) batch axes; so the same rule serves Flax's
(d_in, d_out) and PyTorch's (d_out, d_in). A parameter used in two incompatible ways (products
over different axes, or gathered and multiplied over the gathered axis) or not used at all is an
error naming its path; ``overrides`` gives such a parameter (or any other) its rule by hand.

>>> import jax, jax.numpy as jnp
>>> params = {"embed": jnp.zeros((16, 8)), "w": jnp.zeros((8, 8)), "head": jnp.zeros((4, 8))}
>>> def forward(p, tokens):  # the head in PyTorch layout: (d_out, d_in)
...     x = p["embed"][tokens]
...     x = x + jax.nn.relu(x @ p["w"])
...     return x @ p["head"].T
>>> rules = infer_rules(forward, params, jnp.zeros((2, 3), jnp.int32))
>>> print(rules_table(params, rules))  # doctest: +NORMALIZE_WHITESPACE
path   shape    norm          in → out  radius  scale  rule
-----  -------  ------------  --------  ------  -----  ---------------
embed  (16, 8)  ColNorm       0 → 1     1       2.828  token embedding
head   (4, 8)   Sign(1/d_in)  1 → 0     10      0.125  head
w      (8, 8)   Spectral      0 → 1     3       1      hidden
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jax_core

from lmo_optax import norms as norms_lib
from lmo_optax import validation
from lmo_optax.paths import flatten_with_paths
from lmo_optax.rules import Rule, rules_table

__all__ = ["infer_rules", "rules_table"]

Axes = frozenset[int]


@dataclasses.dataclass(frozen=True)
class _View:
    """A value that is parameter ``leaf`` rearranged: ``axes[i]`` are the parameter axes that
    its axis i spans (empty: an axis the parameter does not have)."""

    leaf: int
    axes: tuple[Axes, ...]


@dataclasses.dataclass(frozen=True)
class _Info:
    """What the analysis knows of one value of the jaxpr."""

    view: _View | None = None  # a view of a parameter
    last: frozenset[int] = frozenset()  # parameters whose product most recently made it
    raw: bool = False  # computed from the inputs with no parameter product on the way
    active: bool = False  # depends on an input or a parameter (else: a constant)


_CONSTANT = _Info()


@dataclasses.dataclass(frozen=True)
class _Use:
    """One use of a parameter: a product (``kind`` "dot" or "conv"), a gather, or other."""

    kind: str
    contract: Axes = frozenset()
    free: Axes = frozenset()
    spatial: Axes = frozenset()
    raw_other: bool = False  # the other operand of a product is raw input


_VIEW_UNARY = {
    "convert_element_type",
    "copy",
    "copy_p",
    "reduce_precision",
    "neg",
    "real",
    "stop_gradient",
    "optimization_barrier",
    "sharding_constraint",
    "device_put",
    "mesh_cast",
    "reshard",
}
_ELEMENTWISE_BINARY = {
    "add",
    "add_any",
    "sub",
    "mul",
    "div",
    "max",
    "min",
    "pow",
    "atan2",
    "rem",
    "select_n",
}


class _Tracer:
    """Walks a jaxpr, recording each parameter's uses."""

    def __init__(self, n_params: int):
        self.uses: list[set[_Use]] = [set() for _ in range(n_params)]

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def read(env: dict[Any, _Info], v: Any) -> _Info:
        if isinstance(v, jax_core.Literal):
            return _CONSTANT
        return env.get(v, _CONSTANT)

    @staticmethod
    def joined(infos: Sequence[_Info]) -> _Info:
        """An activation computed from ``infos`` (no view survives)."""
        return _Info(
            None,
            frozenset().union(*(i.last for i in infos)) if infos else frozenset(),
            any(i.raw for i in infos),
            any(i.active or i.view is not None for i in infos),
        )

    def other_use(self, infos: Sequence[_Info]) -> None:
        for i in infos:
            if i.view is not None:
                self.uses[i.view.leaf].add(_Use("other"))

    # -- the walk -----------------------------------------------------------------------------

    def run(self, jaxpr: Any, inputs: Sequence[_Info]) -> list[_Info]:
        env: dict[Any, _Info] = dict(zip(jaxpr.invars, inputs, strict=True))
        for eqn in jaxpr.eqns:
            infos = [self.read(env, v) for v in eqn.invars]
            outs = self.equation(eqn, infos)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [self.read(env, v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, infos: list[_Info]) -> list[_Info]:
        name, params = eqn.primitive.name, eqn.params
        n_out = len(eqn.outvars)
        views = [i for i in infos if i.view is not None]
        if not views and name not in _CALLS and name not in ("scan", "while", "cond"):
            return [self.joined(infos)] * n_out
        if name in _VIEW_UNARY:
            return list(infos[:n_out]) + [self.joined(infos)] * max(0, n_out - len(infos))
        if name == "transpose":
            (x,) = infos
            perm = params["permutation"]
            return [_view_of(x, tuple(x.view.axes[p] for p in perm))]
        if name == "reshape":
            x = infos[0]
            old = tuple(eqn.invars[0].aval.shape)
            return [_view_of(x, _reshaped_axes(x.view.axes, old, tuple(params["new_sizes"])))]
        if name == "squeeze":
            (x,) = infos
            drop = {d % len(x.view.axes) for d in params["dimensions"]}
            return [_view_of(x, tuple(a for i, a in enumerate(x.view.axes) if i not in drop))]
        if name == "expand_dims":
            (x,) = infos
            axes = list(x.view.axes)
            for d in sorted(params["dimensions"]):
                axes.insert(d, frozenset())
            return [_view_of(x, tuple(axes))]
        if name == "broadcast_in_dim":
            x = infos[0]
            out = [frozenset()] * len(params["shape"])
            for j, d in enumerate(params["broadcast_dimensions"]):
                out[d] = x.view.axes[j]
            return [_view_of(x, tuple(out))]
        if name in ("slice", "dynamic_slice", "rev"):
            x = infos[0]
            if x.view is None:
                return [self.joined(infos)]
            return [_view_of(x, x.view.axes)]
        if name == "gather":
            return [self.gather(eqn, infos)]
        if name == "dot_general":
            return [self.dot(eqn, infos)]
        if name == "conv_general_dilated":
            return [self.conv(eqn, infos)]
        if name in _ELEMENTWISE_BINARY:
            return [self.elementwise(infos)]
        if name in _CALLS:
            return self.call(eqn, infos)
        if name == "scan":
            return self.scan(eqn, infos)
        if name == "while":
            return self.while_loop(eqn, infos)
        if name == "cond":
            return self.cond(eqn, infos)
        self.other_use(infos)
        return [self.joined(infos)] * n_out

    def elementwise(self, infos: list[_Info]) -> _Info:
        views = [i for i in infos if i.view is not None]
        others = [i for i in infos if i.view is None]
        # A parameter scaled by a constant (or cast, or selected) is still that parameter.
        if len(views) == 1 and not any(o.active for o in others):
            return views[0]
        for v in views:
            self.uses[v.view.leaf].add(_Use("elementwise"))
        return self.joined(infos)

    def gather(self, eqn: Any, infos: list[_Info]) -> _Info:
        operand, indices = infos[0], infos[1]
        if operand.view is None:
            return self.joined(infos)
        dims, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
        shape = eqn.invars[0].aval.shape
        # Axes an index selects within (a start index on an axis taken whole selects nothing).
        chosen = [d for d in dims.start_index_map if sizes[d] < shape[d]]
        indexed = frozenset().union(*(operand.view.axes[d] for d in chosen))
        kind = "gather" if indices.raw else "positional"
        self.uses[operand.view.leaf].add(_Use(kind, contract=indexed))
        return _Info(None, frozenset(), False, True)  # a parameter's rows: not raw input

    def dot(self, eqn: Any, infos: list[_Info]) -> _Info:
        (contract, batch) = eqn.params["dimension_numbers"]
        last: set[int] = set()
        for side in (0, 1):
            x, other = infos[side], infos[1 - side]
            if x.view is None:
                continue
            c = _union(x.view.axes, contract[side])
            b = _union(x.view.axes, batch[side])
            rest = [d for d in range(len(x.view.axes)) if d not in contract[side]]
            free = _union(x.view.axes, [d for d in rest if d not in batch[side]]) - b
            self.uses[x.view.leaf].add(_Use("dot", c, free, raw_other=other.raw))
            last.add(x.view.leaf)
        if not last:
            return self.joined(infos)
        return _Info(None, frozenset(last), False, True)

    def conv(self, eqn: Any, infos: list[_Info]) -> _Info:
        lhs, rhs = infos[0], infos[1]
        if rhs.view is None:
            self.other_use(infos)
            return self.joined(infos)
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
        axes = rhs.view.axes
        self.uses[rhs.view.leaf].add(
            _Use(
                "conv",
                contract=axes[spec[1]],
                free=axes[spec[0]],
                spatial=_union(axes, spec[2:]),
                raw_other=lhs.raw,
            )
        )
        return _Info(None, frozenset({rhs.view.leaf}), False, True)

    def call(self, eqn: Any, infos: list[_Info]) -> list[_Info]:
        sub = _sub_jaxpr(eqn)
        if sub is None or len(sub.invars) != len(infos):
            self.other_use(infos)
            return [self.joined(infos)] * len(eqn.outvars)
        return self.run(sub, infos)

    def scan(self, eqn: Any, infos: list[_Info]) -> list[_Info]:
        body = eqn.params["jaxpr"].jaxpr
        n_consts, n_carry = _scan_counts(eqn)
        consts, carry = infos[:n_consts], infos[n_consts : n_consts + n_carry]
        xs = [_sliced(i) for i in infos[n_consts + n_carry :]]
        for _ in range(3):  # the carry's facts reach a fixed point in a pass or two
            outs = self.run(body, [*consts, *carry, *xs])
            new = [_join2(a, b) for a, b in zip(carry, outs[:n_carry], strict=True)]
            if new == carry:
                break
            carry = new
        ys = [_stacked(i) for i in outs[n_carry:]]
        return [*carry, *ys]

    def while_loop(self, eqn: Any, infos: list[_Info]) -> list[_Info]:
        p = eqn.params
        cond_n, body_n = p["cond_nconsts"], p["body_nconsts"]
        body_consts = infos[cond_n : cond_n + body_n]
        carry = infos[cond_n + body_n :]
        for _ in range(3):
            outs = self.run(p["body_jaxpr"].jaxpr, [*body_consts, *carry])
            new = [_join2(a, b) for a, b in zip(carry, outs, strict=True)]
            if new == carry:
                break
            carry = new
        return carry

    def cond(self, eqn: Any, infos: list[_Info]) -> list[_Info]:
        results = [self.run(branch.jaxpr, infos[1:]) for branch in eqn.params["branches"]]
        return [
            self.joined(list(outs)) if len({o.view for o in outs}) > 1 else outs[0]
            for outs in zip(*results, strict=True)
        ]


_CALLS = {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "shard_map",
    "custom_lin",
}


def _scan_counts(eqn: Any) -> tuple[int, int]:
    """(constants, carries) among a scan's operands, which are constants, carries, then xs.

    JAX 0.10 records the counts; later versions record the three groups as a flat tree
    (``ft_in``), whose ``update(operands).unpack()`` gives each group's operands.
    """
    params = eqn.params
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].update(list(eqn.invars)).unpack()
    return len(list(consts)), len(list(carry))


def _sub_jaxpr(eqn: Any) -> Any:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is not None:
            return getattr(sub, "jaxpr", sub)
    return None


def _union(axes: tuple[Axes, ...], dims: Sequence[int]) -> Axes:
    return frozenset().union(*(axes[d] for d in dims)) if dims else frozenset()


def _view_of(x: _Info, axes: tuple[Axes, ...]) -> _Info:
    assert x.view is not None
    return dataclasses.replace(x, view=_View(x.view.leaf, axes))


def _sliced(x: _Info) -> _Info:
    """A scanned-over value inside the body: the leading axis is gone (a batch axis)."""
    if x.view is None:
        return x
    return _view_of(x, x.view.axes[1:])


def _stacked(x: _Info) -> _Info:
    if x.view is None:
        return x
    return _view_of(x, (frozenset(), *x.view.axes))


def _join2(a: _Info, b: _Info) -> _Info:
    if a == b:
        return a
    return _Info(a.view if a.view == b.view else None, a.last | b.last, a.raw or b.raw, True)


def _reshaped_axes(axes: tuple[Axes, ...], old: tuple[int, ...], new: tuple[int, ...]) -> tuple:
    """The parameter axes each axis of a reshape spans: runs of old and new axes with equal
    products are matched, and every new axis of a run spans all of that run's old axes."""
    if 0 in old or 0 in new:  # an empty array: every new axis may hold any old one
        return tuple(frozenset().union(*axes) for _ in new)
    out: list[Axes] = []
    i = j = 0
    while j < len(new):
        if new[j] == 1:
            out.append(frozenset())
            j += 1
            continue
        while i < len(old) and old[i] == 1:
            i += 1
        group_old, group_new = [i], [j]
        a, b = old[i], new[j]
        while a != b:
            if a < b:
                i += 1
                group_old.append(i)
                a *= old[i]
            else:
                j += 1
                group_new.append(j)
                b *= new[j]
        spanned = frozenset().union(*(axes[k] for k in group_old))
        out.extend(spanned for _ in group_new)
        i, j = i + 1, j + 1
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _Radii:
    embedding: float
    input: float
    hidden: float
    head: float
    vector: float


def _classify(
    path: str, shape: tuple[int, ...], uses: set[_Use], is_head: bool, radii: _Radii
) -> Rule:
    """The rule of one parameter from its uses (module docstring)."""

    def rule(norm: norms_lib.Norm, radius: float, role: str) -> Rule:
        return Rule("^" + re.escape(path) + "$", norm, radius, regex=True, shape=shape, name=role)

    def axes(a: Axes) -> tuple[int, ...]:
        return tuple(sorted(a))

    gathers = {u for u in uses if u.kind in ("gather", "positional")}
    products = {u for u in uses if u.kind in ("dot", "conv")}
    everything = frozenset(range(len(shape)))
    if gathers:
        indexed = frozenset().union(*(u.contract for u in gathers))
        features = everything - indexed
        if products:
            if all(u.contract == features and u.free == indexed for u in products):
                norm = norms_lib.Sign(reduction_axes=axes(features), output_axes=axes(indexed))
                return rule(norm, radii.head, "tied embedding/head")
            raise ValueError(
                f"infer_rules: parameter {path!r} {shape} is gathered along axes "
                f"{axes(indexed)} and also multiplied in a way that is not a tied output head "
                f"(contracting {sorted(axes(u.contract) for u in products)}); give it a rule "
                "with overrides={path: ...}"
            )
        if not features:
            raise ValueError(
                f"infer_rules: parameter {path!r} {shape} is gathered along all its axes; "
                "give it a rule with overrides={path: ...}"
            )
        role = "token embedding" if any(u.kind == "gather" for u in gathers) else "positional"
        norm = norms_lib.ColNorm(reduction_axes=axes(indexed), output_axes=axes(features))
        return rule(norm, radii.embedding, role)
    if products:
        kinds = {(u.kind, u.contract, u.free, u.spatial) for u in products}
        if len(kinds) > 1:
            seen = "; ".join(
                f"{k} contracting {axes(c | s)} into {axes(f)}"
                for k, c, f, s in sorted(kinds, key=str)
            )
            raise ValueError(
                f"infer_rules: parameter {path!r} {shape} is used in incompatible products "
                f"({seen}); give it a rule with overrides={{{path!r}: ...}}"
            )
        ((kind, contract, free, spatial),) = kinds
        if not contract or not free or contract & free:
            raise ValueError(
                f"infer_rules: parameter {path!r} {shape}: a product contracts its axes "
                f"{axes(contract)} into {axes(free)}, which is not a matrix; give it a rule "
                "with overrides={path: ...}"
            )
        first = any(u.raw_other for u in products)
        inputs = contract | spatial
        if kind == "conv":
            return _conv_rule(path, shape, contract, free, spatial, first, is_head, radii, rule)
        if is_head:
            norm = norms_lib.Sign(reduction_axes=axes(inputs), output_axes=axes(free))
            return rule(norm, radii.head, "head")
        if first:
            norm = norms_lib.Spectral(
                reduction_axes=axes(inputs), output_axes=axes(free), input_layer=True
            )
            return rule(norm, radii.input, "input layer")
        norm = norms_lib.Spectral(reduction_axes=axes(inputs), output_axes=axes(free))
        return rule(norm, radii.hidden, "hidden")
    if any(u.kind in ("elementwise", "other") for u in uses):
        norm = norms_lib.RMS() if len(shape) <= 1 else norms_lib.RMS(axes=-1)
        return rule(norm, radii.vector, "vector")
    raise ValueError(
        f"infer_rules: parameter {path!r} {shape} is not used by the function; give it a rule "
        f"with overrides={{{path!r}: ...}} or leave it out of params"
    )


def _conv_rule(
    path: str,
    shape: tuple[int, ...],
    contract: Axes,
    free: Axes,
    spatial: Axes,
    first: bool,
    is_head: bool,
    radii: _Radii,
    rule: Callable[..., Rule],
) -> Rule:
    ndim = len(shape)
    hwio = spatial == frozenset(range(ndim - 2)) and contract == {ndim - 2} and free == {ndim - 1}
    if not hwio:
        raise ValueError(
            f"infer_rules: convolution kernel {path!r} {shape} is not in (spatial..., c_in, "
            f"c_out) layout (input axes {sorted(contract)}, spatial {sorted(spatial)}, output "
            f"{sorted(free)}); SpectralConv needs that layout: give it a rule with "
            "overrides={path: ...}"
        )
    role = "input conv" if first else "conv"
    radius = radii.input if first else radii.hidden
    norm = norms_lib.SpectralConv(input_layer=first)
    if is_head:
        raise ValueError(
            f"infer_rules: convolution kernel {path!r} {shape} produces the output; give it a "
            "rule with overrides={path: ...}"
        )
    return rule(norm, radius, role)


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def infer_rules(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    overrides: Mapping[str, Rule | norms_lib.Norm | tuple[norms_lib.Norm, float]] | None = None,
    embedding_radius: float = 1.0,
    input_radius: float | None = None,
    hidden_radius: float = 3.0,
    head_radius: float = 10.0,
    vector_radius: float | None = None,
    **kwargs: Any,
) -> list[Rule]:
    """One :class:`~lmo_optax.rules.Rule` per parameter, read off ``fn(params, *args, **kwargs)``.

    Args:
      fn: the forward pass (or loss); its output is what the head's product must reach.
      params: the parameters (any pytree; non-array leaves are left out).
      *args, **kwargs: example inputs (arrays or ``jax.ShapeDtypeStruct``; other values are
        passed as they are). Integer inputs that index a table make it a token embedding.
      overrides: ``{path: rule}`` for parameters to leave to the user (a :class:`Rule`, a norm,
        or ``(norm, radius)``); they are not analysed, so their errors do not arise.
      embedding_radius, input_radius, hidden_radius, head_radius, vector_radius: radii by
        role (the paper's shallow-GPT values; input and vector radii default to the hidden one).

    Returns:
      Rules matching each parameter by its exact path and shape, named by role with the input
      and output axes, usable as ``rules=`` anywhere and printable with ``rules_table``.

    Raises:
      ValueError: a parameter not used by ``fn``, or used in incompatible ways (the message
        names its path); a path in ``overrides`` that is not a parameter.
    """
    if not callable(fn):
        raise TypeError(f"infer_rules: fn must be callable, got {fn!r}")

    def radius(name: str, value: float) -> float:
        return validation.positive_number(f"infer_rules: {name}", value, concrete=True)

    hidden = radius("hidden_radius", hidden_radius)
    radii = _Radii(
        embedding=radius("embedding_radius", embedding_radius),
        input=hidden if input_radius is None else radius("input_radius", input_radius),
        hidden=hidden,
        head=radius("head_radius", head_radius),
        vector=hidden if vector_radius is None else radius("vector_radius", vector_radius),
    )
    named, treedef = flatten_with_paths(params)
    overrides = dict(overrides or {})
    paths = [p for p, _ in named]
    if unknown := sorted(set(overrides) - set(paths)):
        raise ValueError(
            f"infer_rules: overrides name {unknown}, which are not parameters; the parameters "
            f"are {paths}"
        )
    arrays = [_is_array(x) for _, x in named]
    inputs, input_def = jax.tree_util.tree_flatten((args, kwargs))
    input_arrays = [_is_array(x) for x in inputs]

    def traced(param_arrays: list[Any], input_values: list[Any]) -> Any:
        it = iter(param_arrays)
        leaves = [next(it) if a else x for (_, x), a in zip(named, arrays, strict=True)]
        it_in = iter(input_values)
        values = [next(it_in) if a else x for x, a in zip(inputs, input_arrays, strict=True)]
        a, k = jax.tree_util.tree_unflatten(input_def, values)
        return fn(jax.tree_util.tree_unflatten(treedef, leaves), *a, **k)

    param_values = [_abstract(x) for (_, x), a in zip(named, arrays, strict=True) if a]
    input_values = [_abstract(x) for x, a in zip(inputs, input_arrays, strict=True) if a]
    try:
        closed = jax.make_jaxpr(traced)(param_values, input_values)
    except Exception as e:
        raise ValueError(
            f"infer_rules: calling fn(params, *args, **kwargs) failed while tracing: "
            f"{type(e).__name__}: {e}"
        ) from e
    jaxpr = closed.jaxpr
    n_params = len(param_values)
    tracer = _Tracer(n_params)
    start = [
        _Info(_View(i, tuple(frozenset({d}) for d in range(len(x.shape)))))
        for i, x in enumerate(param_values)
    ]
    start += [_Info(None, frozenset(), True, True)] * (len(jaxpr.invars) - n_params)
    outputs = tracer.run(jaxpr, start)
    heads = frozenset().union(*(o.last for o in outputs))

    rules = []
    array_paths = [p for (p, _), a in zip(named, arrays, strict=True) if a]
    for leaf, (path, x) in enumerate(zip(array_paths, param_values, strict=True)):
        shape = tuple(x.shape)
        if path in overrides:
            rules.append(_override(path, shape, overrides[path]))
            continue
        rules.append(_classify(path, shape, tracer.uses[leaf], leaf in heads, radii))
    return rules


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(np.shape(x)), x.dtype)


def _override(path: str, shape: tuple[int, ...], given: Any) -> Rule:
    pattern = "^" + re.escape(path) + "$"
    if isinstance(given, Rule):
        return dataclasses.replace(given, pattern=pattern, regex=True, shape=shape)
    if isinstance(given, norms_lib.Norm):
        return Rule(pattern, given, 1.0, regex=True, shape=shape, name="override")
    if isinstance(given, tuple) and len(given) == 2 and isinstance(given[0], norms_lib.Norm):
        return Rule(pattern, given[0], given[1], regex=True, shape=shape, name="override")
    raise TypeError(
        f"infer_rules: overrides[{path!r}] must be a Rule, a Norm or (Norm, radius), got {given!r}"
    )
