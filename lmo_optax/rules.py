"""From pytree paths to norms and radii: ordered rules, presets, a table, init on the ball.

A parameter's path is its key path joined by "/" (``"layers/0/attn/query/kernel"``; a trailing
``.value`` of a Flax NNX variable is dropped). Rules are tried in order; the first whose
pattern (a glob, or a regular expression with ``regex=True``) and shape conditions match gives
the parameter its norm and radius ρ_ℓ. Assignments depend only on paths and shapes, so they are
the same for params at ``init`` and for updates at ``update``.

Presets follow the paper's Recommendation 3.1 (first → hidden → last layer; radii and the
reasons for each choice in ``docs/algorithm.md`` §6.2):

=========  ===========================================================================
preset     norms
=========  ===========================================================================
gpt        ColNorm embedding → Spectral hidden → Sign(1/d_in) head; RMS vectors
gpt_tied   Sign(1/d_model) tied embedding/head → Spectral hidden; RMS vectors
vit        Spectral(input) patch embedding → Spectral hidden → Sign(1/d_in) head
cnn        SpectralConv(input) first conv → SpectralConv → Sign(1/d_in) last dense
mlp        Spectral(input) first → Spectral hidden → Sign(1/d_in) last
auto       Auto (RMS for vectors, Spectral for matrices, SpectralConv for 4-D kernels)
=========  ===========================================================================

>>> import jax.numpy as jnp
>>> params = {"embed": {"embedding": jnp.zeros((256, 64))},
...           "block": {"mlp": {"kernel": jnp.zeros((64, 256)), "bias": jnp.zeros(256)}},
...           "lm_head": {"kernel": jnp.zeros((64, 256))}}
>>> print(rules_table(params, gpt_rules()))  # doctest: +NORMALIZE_WHITESPACE
path              shape      norm          in → out  radius  scale    rule
----------------  ---------  ------------  --------  ------  -------  ---------------
block/mlp/bias    (256,)     RMS                     3       16       *bias
block/mlp/kernel  (64, 256)  Spectral      0 → 1     3       2        *kernel
embed/embedding   (256, 64)  ColNorm       0 → 1     1       8        token embedding
lm_head/kernel    (64, 256)  Sign(1/d_in)  0 → 1     10      0.01562  output head
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from lmo_optax import norms as norms_lib
from lmo_optax import validation
from lmo_optax.paths import path_to_str

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule: which parameters (by path and shape) get which norm and radius.

    Attributes:
      pattern: a glob on the "/"-joined path (``*`` matches across "/"), or a regular
        expression searched in the path when ``regex`` is True.
      norm: the unit-ball norm (a :class:`~lmo_optax.norms.Norm`; ``Auto()`` chooses by shape).
      radius: the radius ρ_ℓ of the parameter's ball; the LMO stage outputs ρ_ℓ·lmo(d). A
        finite number > 0 of any real scalar type (NumPy and concrete JAX scalars included),
        stored as a float.
      regex: treat ``pattern`` as a regular expression.
      ndim: only parameters with this number of axes (an int or a tuple of ints).
      shape: only parameters of this shape (None entries match any size).
      select: among the parameters this rule matches, take ``"all"``, or only the ``"first"``
        or ``"last"`` in natural path order (digits compared as numbers), e.g. the input and
        output layers of an MLP.
      name: a label for tables (defaults to the pattern).
    """

    pattern: str
    norm: norms_lib.Norm
    radius: float = 1.0
    regex: bool = False
    ndim: int | tuple[int, ...] | None = None
    shape: tuple[int | None, ...] | None = None
    select: Literal["all", "first", "last"] = "all"
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise TypeError(f"Rule pattern must be a string, got {self.pattern!r}")
        where = f"Rule {self.pattern!r}"
        if not isinstance(self.norm, norms_lib.Norm):
            raise TypeError(f"{where}: norm must be a lmo_optax Norm, got {self.norm!r}")
        radius = validation.positive_number(f"{where}: radius", self.radius, concrete=True)
        object.__setattr__(self, "radius", radius)
        validation.flag(f"{where}: regex", self.regex)
        if self.ndim is not None:
            object.__setattr__(self, "ndim", _sizes(f"{where}: ndim", self.ndim, scalar_ok=True))
        if self.shape is not None:
            object.__setattr__(self, "shape", _sizes(f"{where}: shape", self.shape, none_ok=True))
        validation.one_of(f"{where}: select", self.select, ("all", "first", "last"))
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"{where}: name must be None or a string, got {self.name!r}")
        if self.regex:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"{where}: not a valid regular expression: {e}") from None

    @property
    def label(self) -> str:
        return self.name or self.pattern

    def matches(self, path: str, shape: Shape) -> bool:
        """Whether the path and shape conditions hold (``select`` is applied by the resolver)."""
        if self.ndim is not None:
            allowed = (self.ndim,) if isinstance(self.ndim, int) else self.ndim
            if len(shape) not in allowed:
                return False
        if self.shape is not None and (
            len(self.shape) != len(shape)
            or any(s is not None and s != d for s, d in zip(self.shape, shape))
        ):
            return False
        if self.regex:
            return re.search(self.pattern, path) is not None
        return fnmatch.fnmatchcase(path, self.pattern)


def _sizes(name: str, value: Any, *, scalar_ok: bool = False, none_ok: bool = False) -> Any:
    """``value`` checked to be a tuple (or list) of ints ≥ 0 (and Nones if ``none_ok``), or
    one int ≥ 0 if ``scalar_ok``; returned as a tuple of ints (or an int)."""
    allowed = ("an int ≥ 0 or " if scalar_ok else "") + "a tuple of ints ≥ 0"
    allowed += " and Nones" if none_ok else ""
    scalar = scalar_ok and not isinstance(value, (tuple, list))
    entries = (value,) if scalar else value
    if not isinstance(entries, (tuple, list)) or not all(
        (v is None and none_ok and not scalar)
        or (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)))
        for v in entries
    ):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if any(v is not None and v < 0 for v in entries):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    out = tuple(None if v is None else int(v) for v in entries)
    return out[0] if scalar else out


@dataclasses.dataclass(frozen=True)
class Assignment:
    """What one parameter got: its concrete norm, radius and the rule that matched."""

    path: str
    shape: Shape
    norm: norms_lib.Norm
    radius: float
    rule: str

    @property
    def scale(self) -> float:
        return self.norm.scale(self.shape)


RulesLike = str | Sequence[Rule] | None


def _natural_key(path: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path) if t]


def resolve_rules(rules: RulesLike) -> tuple[Rule, ...]:
    """None → the auto rules; a preset name → that preset; a sequence → a tuple of rules."""
    if rules is None:
        return tuple(auto_rules())
    if isinstance(rules, str):
        try:
            return tuple(PRESETS[rules]())
        except KeyError:
            raise ValueError(
                f"unknown rules preset {rules!r}; known presets: {sorted(PRESETS)}"
            ) from None
    rules = tuple(rules)
    for r in rules:
        if not isinstance(r, Rule):
            raise TypeError(f"rules must be lmo_optax.Rule objects, got {r!r}")
    return rules


def assign(params: Any, rules: RulesLike = None) -> Any:
    """Assigns a norm and radius to every leaf of ``params`` (arrays or ShapeDtypeStructs).

    Returns:
      A pytree of :class:`Assignment` with the structure of ``params``.

    Raises:
      ValueError: naming every parameter that no rule matched, or a parameter whose norm does
        not fit its shape, or whose dtype is not floating point.
    """
    rules = resolve_rules(rules)
    validation.floating_leaves(params)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_to_str(p) for p, _ in leaves]
    shapes = [validation.shape_of(x) for _, x in leaves]

    # Rules with select="first"/"last" match a single parameter among their candidates.
    selected: dict[int, int | None] = {}
    for k, rule in enumerate(rules):
        if rule.select != "all":
            candidates = [i for i in range(len(paths)) if rule.matches(paths[i], shapes[i])]
            candidates.sort(key=lambda i: _natural_key(paths[i]))
            selected[k] = (
                (candidates[0] if rule.select == "first" else candidates[-1])
                if candidates
                else None
            )

    out, unmatched, errors = [], [], []
    for i, (path, shape) in enumerate(zip(paths, shapes)):
        match = None
        for k, rule in enumerate(rules):
            if rule.select != "all":
                if selected[k] == i:
                    match = rule
                    break
            elif rule.matches(path, shape):
                match = rule
                break
        if match is None:
            unmatched.append(f"{path} {shape}")
            out.append(None)
            continue
        norm = match.norm.for_shape(shape)
        try:
            norm.check(shape)
        except ValueError as e:
            errors.append(f"parameter {path!r} with shape {shape} (rule {match.label!r}): {e}")
        out.append(Assignment(path, shape, norm, float(match.radius), match.label))
    if unmatched:
        raise ValueError(
            f"lmo_optax: no rule matched {len(unmatched)} parameter(s): "
            + "; ".join(unmatched)
            + f". Rules tried, in order: {[r.label for r in rules]}. Add a rule for them "
            "(e.g. Rule('*', Auto()) as a catch-all)."
        )
    if errors:
        raise ValueError("lmo_optax: " + "\n".join(errors))
    return jax.tree_util.tree_unflatten(treedef, out)


def rules_table(params: Any, rules: RulesLike = None) -> str:
    """A text table of every parameter: path, shape, norm, its input → output axes (the
    layout it assumes: Flax kernels 0 → 1, PyTorch-layout weights 1 → 0; other axes are batch
    axes), radius, LMO scale factor, rule."""
    assignments = jax.tree.leaves(
        assign(params, rules), is_leaf=lambda x: isinstance(x, Assignment)
    )
    rows = [
        (
            a.path,
            str(a.shape),
            a.norm.describe(),
            _axes_text(a.norm, a.shape),
            f"{a.radius:.4g}",
            f"{a.scale:.4g}",
            a.rule,
        )
        for a in sorted(assignments, key=lambda a: _natural_key(a.path))
    ]
    header = ("path", "shape", "norm", "in → out", "radius", "scale", "rule")
    # Hand-written (eight lines) because the library depends only on jax, optax and numpy.
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def _axes_text(norm: norms_lib.Norm, shape: Shape) -> str:
    """ "0 → 1" for a matrix norm's input and output axes; "" for norms of whole tensors."""
    if not isinstance(norm, norms_lib.MatrixNorm) or len(shape) < 2:
        return ""
    if isinstance(norm, norms_lib.Sign) and not norm.fan_in_scaled:
        return ""
    red, out, _ = norm.axes(shape)
    return f"{','.join(map(str, red))} → {','.join(map(str, out))}"


def print_rules(params: Any, rules: RulesLike = None) -> None:
    """Prints :func:`rules_table`."""
    print(rules_table(params, rules))


def init_on_ball(key: jax.Array, params: Any, rules: RulesLike = None) -> Any:
    """New parameters on the boundary of each ball: ρ_ℓ · norm.init (paper App. B.3; §4 of
    ``docs/algorithm.md``).

    ``params`` gives structure, shapes and dtypes (arrays or ``jax.ShapeDtypeStruct``).

    >>> import jax, jax.numpy as jnp
    >>> from lmo_optax.norms import Spectral
    >>> p = init_on_ball(jax.random.key(0), {"w": jnp.zeros((8, 4))}, [Rule("*", Spectral(), 2.0)])
    >>> round(float(Spectral().norm(p["w"])), 4)
    2.0
    """
    _check_key(key)
    assignments = assign(params, rules)
    leaves, treedef = jax.tree_util.tree_flatten(
        assignments, is_leaf=lambda x: isinstance(x, Assignment)
    )
    dtypes = [validation.dtype_of(x) for x in jax.tree.leaves(params)]
    keys = jax.random.split(key, max(len(leaves), 1))
    new = [a.radius * a.norm.init(k, a.shape, jnp.float32) for a, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, [x.astype(d) for x, d in zip(new, dtypes)])


def _check_key(key: Any) -> None:
    """Raises TypeError unless ``key`` is one JAX PRNG key (typed, or a raw uint32 vector)."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == jnp.uint32 and np.ndim(key) == 1
    if not ((typed and np.shape(key) == ()) or raw):
        raise TypeError(
            f"init_on_ball: key must be one JAX PRNG key such as jax.random.key(0), got {key!r}"
        )


# --------------------------------------------------------------------------------------------
# Presets (paper Recommendation 3.1, Tables 3–4)
# --------------------------------------------------------------------------------------------


def _check_radii(preset: str, **radii: float | None) -> None:
    """Each radius keyword of a preset is None (a default) or a finite number > 0."""
    for name, value in radii.items():
        if value is not None:
            validation.positive_number(f"{preset}: {name}", value)


_VECTOR = Rule("*", norms_lib.RMS(), 1.0, ndim=(0, 1), name="vectors")
_POSITIONAL = r"(^|/)(wpe|pos\w*|position\w*)(/|$)"
_HEAD = r"(^|/)(lm_head|head|unembed\w*|output|logits|classifier)(/|$)"
_EMBED = r"(^|/)(wte|tok\w*|embed\w*|embedder)(/|$)|embedding$"
_QKV = r"(^|/)(query|key|value|q|k|v|qkv|q_proj|k_proj|v_proj)(/|$)"
_OUT = r"(^|/)(out|o|o_proj|out_proj)(/|$)"
_NORM_WEIGHT = r"(^|/)(\w*norm\w*|ln\w*)/weight$"  # PyTorch-layout norm gains: vectors


def _kernel(layout: norms_lib.Layout) -> str:
    """The glob of dense and convolution weights: Flax ``kernel``, PyTorch ``weight``."""
    validation.one_of("layout", layout, norms_lib.LAYOUTS)
    return "*weight" if layout == "torch" else "*kernel"


def _vectors(radius: float) -> list[Rule]:
    # 2-D biases and gains are the vectors of scanned layers (layer axis first): RMS per layer.
    return [
        Rule("*bias", norms_lib.RMS(), radius, ndim=(0, 1)),
        Rule("*bias", norms_lib.RMS(axes=-1), radius, ndim=2, name="*bias (scanned)"),
        Rule("*scale", norms_lib.RMS(init_value="ones"), radius, ndim=(0, 1)),
        Rule(
            "*scale",
            norms_lib.RMS(axes=-1, init_value="ones"),
            radius,
            ndim=2,
            name="*scale (scanned)",
        ),
        dataclasses.replace(_VECTOR, radius=radius),
    ]


_FUSED_QKV = r"(^|/)(qkv|c_attn|in_proj|wqkv|query_key_value)(/|$)"


def _attention_and_hidden(
    radius: float,
    layout: norms_lib.Layout = "flax",
    split_qkv: bool = False,
    heads: int | None = None,
) -> list[Rule]:
    axes = norms_lib.matrix_axes(layout)
    kernels = Rule(_kernel(layout), norms_lib.Spectral(**axes), radius, ndim=(2, 3))
    per_head: list[Rule] = []
    if split_qkv or heads:
        # A fused (d, 3·d) kernel: Q, K and V (and each head of them) as separate blocks.
        blocks = 3 * (heads or 1)
        per_head.append(
            Rule(_FUSED_QKV, norms_lib.Spectral(split_output=blocks, **axes), radius,
                 regex=True, ndim=(2, 3), name=f"fused q/k/v ({blocks} blocks)")
        )  # fmt: skip
    if heads:
        per_head += [
            Rule(_QKV, norms_lib.Spectral(split_output=heads, **axes), radius, regex=True,
                 ndim=(2, 3), name="q/k/v per head"),
            Rule(_OUT, norms_lib.Spectral(split_input=heads, **axes), radius, regex=True,
                 ndim=(2, 3), name="attention out per head"),
        ]  # fmt: skip
    if layout == "torch":  # fused and per-projection attention weights are matrices already
        return [*per_head, kernels]
    dense_general = [
        # DenseGeneral attention kernels: q/k/v (d_model, heads, head_dim), out (heads,
        # head_dim, d_model); a leading layer axis of scanned blocks is a batch axis. Per
        # head, the heads axis is a batch axis too.
        Rule(
            _QKV,
            norms_lib.Spectral(reduction_axes=-3, output_axes=-1 if heads else (-2, -1)),
            radius,
            regex=True,
            ndim=(3, 4),
            name="attention q/k/v" + (" per head" if heads else ""),
        ),
        Rule(
            _OUT,
            norms_lib.Spectral(reduction_axes=-2 if heads else (-3, -2), output_axes=-1),
            radius,
            regex=True,
            ndim=(3, 4),
            name="attention out" + (" per head" if heads else ""),
        ),
    ]
    return [*dense_general, *per_head, kernels]


def gpt_rules(
    *,
    tied: bool = False,
    embedding_radius: float = 1.0,
    hidden_radius: float = 3.0,
    head_radius: float = 10.0,
    vector_radius: float | None = None,
    layout: norms_lib.Layout = "flax",
    split_qkv: bool = False,
    heads: int | None = None,
) -> list[Rule]:
    """Rules for a GPT (one-hot token inputs), Flax layout unless ``layout="torch"``.

    Untied: ColNorm → Spectral → Sign(1/d_in) (Recommendation 3.1 for one-hot inputs). Tied
    (the embedding table is also the head, logits = x @ Eᵀ): Sign with fan-in d_model, the
    paper's nanoGPT choice. Positional embedding tables get per-position RMS (ColNorm, which is
    the same map on a (positions, d_model) table); biases and norm gains get RMS.

    Default radii are the paper's shallow-GPT width sweeps (input 1, hidden 3, head 10); its
    124M nanoGPT run used hidden 50 and tied embedding 3000. ``vector_radius`` defaults to
    ``hidden_radius``. ``layout="torch"``: weights are (d_out, d_in) and named ``weight``
    (embedding tables are (vocab, d_model) in both layouts).

    ``split_qkv=True`` orthogonalizes a fused q/k/v kernel (``qkv``, ``c_attn``, ``in_proj``…,
    (d, 3·d)) as three (d, d) blocks; ``heads=H`` orthogonalizes attention per head: q/k/v
    (d, H·head_dim) as H blocks, the output projection (H·head_dim, d) as H blocks, a fused
    kernel as 3·H, and Flax DenseGeneral kernels with their heads axis as a batch axis
    (``Spectral(split_input=, split_output=)``).
    """
    validation.flag("gpt_rules: tied", tied)
    validation.flag("gpt_rules: split_qkv", split_qkv)
    if heads is not None:
        heads = validation.positive_int("gpt_rules: heads", heads)
    _kernel(layout)
    _check_radii(
        "gpt_rules",
        embedding_radius=embedding_radius,
        hidden_radius=hidden_radius,
        head_radius=head_radius,
        vector_radius=vector_radius,
    )
    vector_radius = hidden_radius if vector_radius is None else vector_radius
    if tied:
        embedding = Rule(
            _EMBED,
            norms_lib.Sign(reduction_axes=-1, output_axes=-2),
            head_radius,
            regex=True,
            ndim=2,
            name="tied embedding/head",
        )
    else:
        embedding = Rule(
            _EMBED,
            norms_lib.ColNorm(),
            embedding_radius,
            regex=True,
            ndim=2,
            name="token embedding",
        )
    return [
        Rule(
            _POSITIONAL,
            norms_lib.ColNorm(),
            embedding_radius,
            regex=True,
            ndim=2,
            name="positional embedding",
        ),
        Rule(
            _HEAD,
            norms_lib.Sign(**norms_lib.matrix_axes(layout)),
            head_radius,
            regex=True,
            ndim=2,
            name="output head",
        ),
        embedding,
        *_vectors_first(vector_radius, layout),
        *_attention_and_hidden(hidden_radius, layout, split_qkv, heads),
        *_vectors(vector_radius),
    ]


def _vectors_first(radius: float, layout: norms_lib.Layout) -> list[Rule]:
    """Rules that must come before the matrices': PyTorch-layout norm gains are ``weight``."""
    if layout != "torch":
        return []
    return [
        Rule(_NORM_WEIGHT, norms_lib.RMS(init_value="ones"), radius, regex=True, ndim=1,
             name="norm weight"),
        Rule(_NORM_WEIGHT, norms_lib.RMS(axes=-1, init_value="ones"), radius, regex=True,
             ndim=2, name="norm weight (scanned)"),
    ]  # fmt: skip


def gpt_tied_rules(**kwargs: Any) -> list[Rule]:
    """:func:`gpt_rules` with ``tied=True``."""
    return gpt_rules(tied=True, **kwargs)


def vit_rules(
    *,
    hidden_radius: float = 25.0,
    head_radius: float = 500.0,
    embedding_radius: float | None = None,
    vector_radius: float | None = None,
    layout: norms_lib.Layout = "flax",
) -> list[Rule]:
    """Rules for a ViT: Spectral(input) patch embedding (conv or dense) → Spectral hidden
    → Sign(1/d_in) head (``layout``: see :func:`gpt_rules`); positional embeddings and class
    token RMS; biases, gains RMS.

    Default radii are the paper's DeiT-base run (Auto radius 25, head Sign 500, positional
    embeddings RMS 25).
    """
    _check_radii(
        "vit_rules",
        hidden_radius=hidden_radius,
        head_radius=head_radius,
        embedding_radius=embedding_radius,
        vector_radius=vector_radius,
    )
    embedding_radius = hidden_radius if embedding_radius is None else embedding_radius
    vector_radius = hidden_radius if vector_radius is None else vector_radius
    axes = norms_lib.matrix_axes(layout)
    patch = r"(^|/)(patch\w*|embedding|stem|conv_proj|to_patch\w*)(/|$)"
    return [
        Rule(
            patch,
            norms_lib.SpectralConv(input_layer=True, layout=layout),
            embedding_radius,
            regex=True,
            ndim=(3, 4),
            name="patch embedding (conv)",
        ),
        Rule(
            patch,
            norms_lib.Spectral(input_layer=True, **axes),
            embedding_radius,
            regex=True,
            ndim=2,
            name="patch embedding (dense)",
        ),
        Rule(
            _POSITIONAL,
            norms_lib.RMS(axes=-1, init_value="sphere"),
            embedding_radius,
            regex=True,
            name="positional embedding",
        ),
        Rule(
            r"(^|/)(cls\w*|class_token)(/|$)",
            norms_lib.RMS(axes=-1, init_value="sphere"),
            embedding_radius,
            regex=True,
            name="class token",
        ),
        Rule(_HEAD, norms_lib.Sign(**axes), head_radius, regex=True, ndim=2, name="output head"),
        *_vectors_first(vector_radius, layout),
        *_attention_and_hidden(hidden_radius, layout),
        *_vectors(vector_radius),
    ]


def cnn_rules(
    *, radius: float = 8.0, head_radius: float = 128.0, layout: norms_lib.Layout = "flax"
) -> list[Rule]:
    """Rules for a CNN: SpectralConv(input) first conv → SpectralConv → Sign(1/d_in) on
    the last dense layer (``layout``: see :func:`gpt_rules`); other dense kernels Spectral;
    BatchNorm/bias vectors RMS.

    Default radii are the paper's airbench CIFAR-10 run (convs and BatchNorm 8, head 128).
    The first conv is the first 3-D or 4-D kernel in natural path order, the head the last
    2-D kernel.
    """
    _check_radii("cnn_rules", radius=radius, head_radius=head_radius)
    kernel, axes = _kernel(layout), norms_lib.matrix_axes(layout)
    return [
        *_vectors_first(radius, layout),
        Rule(
            kernel,
            norms_lib.SpectralConv(input_layer=True, layout=layout),
            radius,
            ndim=(3, 4),
            select="first",
            name="first conv",
        ),
        Rule(kernel, norms_lib.Sign(**axes), head_radius, ndim=2, select="last", name="last dense"),
        Rule(kernel, norms_lib.SpectralConv(layout=layout), radius, ndim=(3, 4), name="conv"),
        Rule(kernel, norms_lib.Spectral(**axes), radius, ndim=2, name="dense"),
        *_vectors(radius),
    ]


def mlp_rules(
    *,
    radius: float = 1.0,
    head_radius: float | None = None,
    vector_radius: float | None = None,
    layout: norms_lib.Layout = "flax",
) -> list[Rule]:
    """Rules for an MLP: Spectral(input) → Spectral → Sign(1/d_in) (paper Table 3;
    ``layout``: see :func:`gpt_rules`).

    The first and last layers are the first and last 2-D kernels in natural path order
    (``layers/2`` before ``layers/10``). ``head_radius`` and ``vector_radius`` default to
    ``radius``.
    """
    _check_radii("mlp_rules", radius=radius, head_radius=head_radius, vector_radius=vector_radius)
    head_radius = radius if head_radius is None else head_radius
    vector_radius = radius if vector_radius is None else vector_radius
    kernel, axes = _kernel(layout), norms_lib.matrix_axes(layout)
    return [
        *_vectors_first(vector_radius, layout),
        Rule(
            kernel,
            norms_lib.Spectral(input_layer=True, **axes),
            radius,
            ndim=2,
            select="first",
            name="first layer",
        ),
        Rule(kernel, norms_lib.Sign(**axes), head_radius, ndim=2, select="last", name="last layer"),
        Rule(kernel, norms_lib.Spectral(**axes), radius, ndim=2, name="hidden"),
        *_vectors(vector_radius),
    ]


def auto_rules(radius: float = 1.0, layout: norms_lib.Layout = "flax") -> list[Rule]:
    """One catch-all rule: ``Auto(layout)`` chooses the norm from each parameter's shape."""
    _check_radii("auto_rules", radius=radius)
    return [Rule("*", norms_lib.Auto(layout=layout), radius, name="auto")]


PRESETS: dict[str, Callable[[], list[Rule]]] = {
    "auto": auto_rules,
    "gpt": gpt_rules,
    "gpt_tied": gpt_tied_rules,
    "vit": vit_rules,
    "cnn": cnn_rules,
    "mlp": mlp_rules,
}
