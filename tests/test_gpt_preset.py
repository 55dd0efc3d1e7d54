"""The tied GPT preset on GPT-2's parameter tree (Flax layout, tied embedding): every path gets
the norm the paper's nanoGPT run uses, at GPT-2 small's and medium's real shapes.

``tests/test_rules.py`` checks the preset on a small model with other parameter names
(``token_embedding``, DenseGeneral attention); this file checks GPT-2's names (``wte``, ``wpe``,
``h/<i>/attn/qkv``) and that nothing in the tree is left unmatched. Shapes are
``jax.ShapeDtypeStruct``s, so nothing is allocated.
"""

import jax
import jax.numpy as jnp
import pytest

import lmo_optax

GPT2 = {  # GPT-2 small and medium, vocabulary padded to 50304
    "124m": {"vocab": 50304, "width": 768, "layers": 12, "context": 1024},
    "350m": {"vocab": 50304, "width": 1024, "layers": 24, "context": 1024},
}
HIDDEN_RADIUS, HEAD_RADIUS = 50.0, 3000.0  # the paper's 124M nanoGPT run


def gpt2_shapes(vocab: int, width: int, layers: int, context: int) -> dict:
    """GPT-2's parameter tree as ShapeDtypeStructs: kernels (d_in, d_out), tied embedding."""

    def leaf(*shape: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    def dense(d_in: int, d_out: int) -> dict:
        return {"kernel": leaf(d_in, d_out), "bias": leaf(d_out)}

    def layer_norm() -> dict:
        return {"scale": leaf(width), "bias": leaf(width)}

    def block() -> dict:
        return {
            "ln_1": layer_norm(),
            "attn": {"qkv": dense(width, 3 * width), "proj": dense(width, width)},
            "ln_2": layer_norm(),
            "mlp": {"fc": dense(width, 4 * width), "proj": dense(4 * width, width)},
        }

    return {
        "wte": {"embedding": leaf(vocab, width)},
        "wpe": {"embedding": leaf(context, width)},
        "h": {str(i): block() for i in range(layers)},
        "ln_f": layer_norm(),
    }


def expected(path: str, shape: tuple[int, ...], width: int) -> tuple[str, float, float | None]:
    """(norm, radius, LMO scale or None if not checked) the tied preset must give a parameter."""
    if path == "wte/embedding":  # the tied embedding is also the head: Sign, fan-in d_model
        return "Sign(1/d_in)", HEAD_RADIUS, 1 / width
    if path == "wpe/embedding":  # per-position RMS
        return "ColNorm", 1.0, None
    if len(shape) == 2:  # attention and MLP kernels: √(d_out/d_in)
        return "Spectral", HIDDEN_RADIUS, (shape[1] / shape[0]) ** 0.5
    return "RMS", HIDDEN_RADIUS, None  # biases and layer-norm gains


def assignments(params: dict) -> list[lmo_optax.Assignment]:
    rules = lmo_optax.gpt_rules(tied=True, hidden_radius=HIDDEN_RADIUS, head_radius=HEAD_RADIUS)
    tree = lmo_optax.assign(params, rules)  # raises, naming them, if any path is unmatched
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, lmo_optax.Assignment))


@pytest.mark.parametrize("size", sorted(GPT2))
def test_tied_preset_gives_every_gpt2_parameter_its_norm(size: str) -> None:
    dims = GPT2[size]
    params = gpt2_shapes(**dims)
    got = assignments(params)
    assert len(got) == len(jax.tree.leaves(params)) == 4 + 12 * dims["layers"]
    for a in got:
        norm, radius, scale = expected(a.path, a.shape, dims["width"])
        assert (a.norm.describe(), a.radius) == (norm, radius), a.path
        if scale is not None:
            assert a.scale == pytest.approx(scale), a.path


def test_rules_table_agrees_with_the_assignments() -> None:
    params = gpt2_shapes(**GPT2["124m"])
    lines = lmo_optax.rules_table(params, lmo_optax.gpt_rules(tied=True)).splitlines()[2:]
    norms = {line.split()[0]: line for line in lines}
    assert len(norms) == len(jax.tree.leaves(params))
    assert "Sign(1/d_in)" in norms["wte/embedding"]
    assert "ColNorm" in norms["wpe/embedding"]
    assert "Spectral" in norms["h/11/mlp/proj/kernel"]
    assert "RMS" in norms["ln_f/scale"]
