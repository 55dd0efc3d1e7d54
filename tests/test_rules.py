"""Path → norm rules: matching order, presets, the table, init on the ball, and errors that
name the offending parameter paths."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmo_optax
from lmo_optax import Rule


def gpt_params(tied=False, scanned=False):
    layer = (lambda s: (2, *s)) if scanned else (lambda s: s)
    p = {
        "token_embedding": {"embedding": jnp.zeros((50, 16))},
        "position_embedding": {"embedding": jnp.zeros((8, 16))},
        "blocks": {
            "attn": {
                "query": {"kernel": jnp.zeros(layer((16, 2, 8)))},
                "key": {"kernel": jnp.zeros(layer((16, 2, 8)))},
                "value": {"kernel": jnp.zeros(layer((16, 2, 8)))},
                "out": {"kernel": jnp.zeros(layer((2, 8, 16)))},
            },
            "mlp": {
                "fc": {"kernel": jnp.zeros(layer((16, 64))), "bias": jnp.zeros(layer((64,)))},
                "proj": {"kernel": jnp.zeros(layer((64, 16)))},
            },
            "norm": {"scale": jnp.ones(layer((16,)))},
        },
    }
    if not tied:
        p["lm_head"] = {"kernel": jnp.zeros((16, 50))}
    return p


def by_path(params, rules):
    flat = jax.tree.leaves(
        lmo_optax.assign(params, rules), is_leaf=lambda x: isinstance(x, lmo_optax.Assignment)
    )
    return {a.path: a for a in flat}


def test_first_matching_rule_wins_and_glob_regex_shape():
    rules = [
        Rule("*bias", lmo_optax.RMS(), 0.5),
        Rule(r"^dense_\d+/kernel$", lmo_optax.ColNorm(), 2.0, regex=True, shape=(4, None)),
        Rule("*kernel", lmo_optax.Spectral(), 3.0, ndim=2),
        Rule("*", lmo_optax.Linf(), 7.0),
    ]
    params = {
        "dense_0": {"kernel": jnp.zeros((4, 5)), "bias": jnp.zeros(5)},
        "dense_1": {"kernel": jnp.zeros((5, 5))},
        "other": jnp.zeros((2, 2, 2)),
    }
    got = by_path(params, rules)
    assert isinstance(got["dense_0/kernel"].norm, lmo_optax.ColNorm)
    assert got["dense_0/kernel"].radius == 2.0
    assert isinstance(got["dense_1/kernel"].norm, lmo_optax.Spectral)  # shape (5, 5) ≠ (4, *)
    assert isinstance(got["dense_0/bias"].norm, lmo_optax.RMS)
    assert isinstance(got["other"].norm, lmo_optax.Linf) and got["other"].radius == 7.0


@pytest.mark.parametrize("scanned", [False, True])
def test_gpt_preset_untied(scanned):
    got = by_path(gpt_params(scanned=scanned), "gpt")
    assert isinstance(got["token_embedding/embedding"].norm, lmo_optax.ColNorm)
    assert got["token_embedding/embedding"].scale == pytest.approx(4.0)  # √d_model
    assert got["position_embedding/embedding"].rule == "positional embedding"
    head = got["lm_head/kernel"]
    assert isinstance(head.norm, lmo_optax.Sign) and head.scale == pytest.approx(1 / 16)
    q = got["blocks/attn/query/kernel"]
    assert isinstance(q.norm, lmo_optax.Spectral) and q.norm.dims(q.shape) == (16, 16)
    o = got["blocks/attn/out/kernel"]
    assert o.norm.dims(o.shape) == (16, 16)
    fc = got["blocks/mlp/fc/kernel"]
    assert fc.scale == pytest.approx(2.0)  # √(64/16); a scanned layer axis is a batch axis
    assert isinstance(got["blocks/norm/scale"].norm, lmo_optax.RMS)
    assert isinstance(got["blocks/mlp/fc/bias"].norm, lmo_optax.RMS)


def test_gpt_preset_tied_uses_d_model_as_fan_in():
    got = by_path(gpt_params(tied=True), lmo_optax.gpt_rules(tied=True, head_radius=3000.0))
    e = got["token_embedding/embedding"]
    assert isinstance(e.norm, lmo_optax.Sign) and e.radius == 3000.0
    assert e.scale == pytest.approx(1 / 16)  # 1/d_model, not 1/vocab


def test_mlp_and_cnn_presets_pick_first_and_last_layers_in_natural_order():
    params = {"layers": {str(i): {"kernel": jnp.zeros((4, 4))} for i in range(12)}}
    got = by_path(params, "mlp")
    assert got["layers/0/kernel"].rule == "first layer"
    assert got["layers/11/kernel"].rule == "last layer"  # 11 after 2, not after 1
    assert got["layers/2/kernel"].rule == "hidden"
    cnn = {
        "Conv_0": {"kernel": jnp.zeros((3, 3, 3, 8))},
        "Conv_1": {"kernel": jnp.zeros((3, 3, 8, 8))},
        "BatchNorm_0": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
        "Dense_0": {"kernel": jnp.zeros((8, 10))},
    }
    got = by_path(cnn, "cnn")
    assert got["Conv_0/kernel"].rule == "first conv"
    assert got["Conv_0/kernel"].scale == pytest.approx(max(1, np.sqrt(8 / 3) / 9))
    assert got["Conv_1/kernel"].scale == pytest.approx(1 / 9)  # √(c_out/c_in)/(kh·kw)
    assert got["Dense_0/kernel"].rule == "last dense"


def test_vit_preset():
    params = {
        "patch_embed": {"kernel": jnp.zeros((4, 4, 3, 16))},
        "pos_embedding": jnp.zeros((1, 17, 16)),
        "cls_token": jnp.zeros((1, 1, 16)),
        "blocks": {"mlp": {"kernel": jnp.zeros((16, 32))}},
        "head": {"kernel": jnp.zeros((16, 10)), "bias": jnp.zeros(10)},
    }
    got = by_path(params, "vit")
    assert got["patch_embed/kernel"].norm.input_layer
    pos = got["pos_embedding"].norm
    assert isinstance(pos, lmo_optax.RMS) and pos.axes == -1  # not over the size-1 axis
    assert isinstance(got["head/kernel"].norm, lmo_optax.Sign)


def test_auto_default_works_on_any_float_pytree():
    params = {
        "a": jnp.zeros(()),
        "b": jnp.zeros(3),
        "c": jnp.zeros((3, 4)),
        "d": jnp.zeros((2, 3, 4)),
        "e": jnp.zeros((3, 3, 2, 4)),
    }
    got = by_path(params, None)
    kinds = {k: type(v.norm).__name__ for k, v in got.items()}
    assert kinds == {"a": "RMS", "b": "RMS", "c": "Spectral", "d": "Spectral", "e": "SpectralConv"}
    tx = lmo_optax.scion(0.1)
    updates, _ = tx.update(params, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_rules_table_lists_every_parameter(capsys):
    params = gpt_params()
    lmo_optax.print_rules(params, "gpt")
    out = capsys.readouterr().out
    header = out.splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == [
        "path", "shape", "norm", "in → out", "radius", "scale", "rule"
    ]  # fmt: skip
    # Flax kernels read (d_in, d_out): input axis 0, output axis 1.
    assert any("Spectral" in line and "0 → 1" in line for line in out.splitlines())
    for path in by_path(params, "gpt"):
        assert path in out


def test_nnx_paths_drop_the_value_suffix():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    got = by_path(nnx.state(model, nnx.Param), "auto")
    assert set(got) == {"kernel", "bias"}


def test_init_on_ball_puts_every_parameter_on_its_sphere():
    params = gpt_params()
    rules = lmo_optax.gpt_rules(embedding_radius=2.0, hidden_radius=3.0, head_radius=5.0)
    new = lmo_optax.init_on_ball(jax.random.key(0), params, rules)
    for path, a in by_path(new, rules).items():
        x = new
        for k in path.split("/"):
            x = x[k]
        value = float(a.norm.norm(x))
        if path.endswith("bias"):
            assert value == 0.0  # biases start at zero (paper App. B.3)
        else:
            assert value == pytest.approx(a.radius, rel=1e-4), path


# ------------------------------------------------------------------------------------------
# Bad input: clear errors naming the parameter path
# ------------------------------------------------------------------------------------------


def test_unmatched_parameters_are_all_named():
    rules = [Rule("*kernel", lmo_optax.Spectral())]
    params = {"a": {"kernel": jnp.zeros((2, 2))}, "b": {"bias": jnp.zeros(2)}, "c": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"no rule matched 2 parameter\(s\): b/bias \(2,\); c"):
        lmo_optax.scion(0.1, rules).init(params)


def test_matrix_norm_on_vector_names_the_path():
    rules = [Rule("*", lmo_optax.Spectral())]
    with pytest.raises(ValueError, match=r"'dense/bias' with shape \(4,\).*matrix norm"):
        lmo_optax.scion(0.1, rules).init({"dense": {"bias": jnp.zeros(4)}})
    with pytest.raises(ValueError, match="'w'.*ColNorm"):
        lmo_optax.assign({"w": jnp.zeros(3)}, [Rule("*", lmo_optax.ColNorm())])


def test_unknown_coefficient_table():
    with pytest.raises(ValueError, match="unknown Newton–Schulz coefficient table 'fast'"):
        lmo_optax.scion(0.1, ns_coeffs="fast")
    # A norm's own table is checked when the norm is made, naming the argument.
    with pytest.raises(ValueError, match="Spectral.coeffs: unknown Newton–Schulz"):
        lmo_optax.Spectral(coeffs="fast")


def test_integer_leaves_are_named():
    params = {"w": jnp.zeros((2, 2)), "step": jnp.zeros((), jnp.int32), "mask": jnp.ones(2, bool)}
    with pytest.raises(ValueError, match=r"floating-point.*mask \(bool\), step \(int32\)"):
        lmo_optax.scion(0.1).init(params)


def test_bad_rule_arguments():
    with pytest.raises(ValueError, match="radius"):
        Rule("*", lmo_optax.Spectral(), radius=-1.0)
    with pytest.raises(TypeError, match="Norm"):
        Rule("*", "Spectral")
    with pytest.raises(ValueError, match="unknown rules preset"):
        lmo_optax.scion(0.1, rules="transformer")


def test_constrained_step_without_params_is_a_clear_error():
    tx = lmo_optax.scion(0.1)
    p = {"w": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(p, tx.init(p))


def test_torch_layout_lmos_are_the_flax_ones_transposed():
    key = jax.random.key(3)
    g = jax.random.normal(key, (24, 40))  # Flax (d_in, d_out)
    for flax_norm, torch_norm in (
        (lmo_optax.Auto(), lmo_optax.Auto(layout="torch")),
        (lmo_optax.Spectral(), lmo_optax.Spectral(**lmo_optax.norms.matrix_axes("torch"))),
    ):
        flax_lmo = flax_norm.lmo(g)
        torch_lmo = torch_norm.lmo(g.T)
        np.testing.assert_allclose(np.asarray(torch_lmo), np.asarray(flax_lmo.T), atol=1e-5)
        assert torch_norm.scale(g.T.shape) == flax_norm.scale(g.shape)
    conv = jax.random.normal(key, (3, 3, 8, 16))  # HWIO
    oihw = jnp.transpose(conv, (3, 2, 0, 1))
    flax_conv, torch_conv = (
        lmo_optax.Auto().for_shape(conv.shape),
        lmo_optax.Auto(layout="torch").for_shape(oihw.shape),
    )
    assert torch_conv.scale(oihw.shape) == flax_conv.scale(conv.shape)
    np.testing.assert_allclose(
        np.asarray(torch_conv.lmo(oihw)),
        np.asarray(jnp.transpose(flax_conv.lmo(conv), (3, 2, 0, 1))),
        atol=1e-5,
    )


@pytest.mark.parametrize("preset", ["gpt", "mlp", "cnn", "vit", "auto"])
def test_presets_in_torch_layout_read_weights_as_d_out_by_d_in(preset):
    make = lmo_optax.PRESETS[preset]
    params = {
        "embed_tokens": {"weight": jnp.zeros((64, 16))},
        "layers": {
            "0": {"fc": {"weight": jnp.zeros((48, 16)), "bias": jnp.zeros(48)}},
            "1": {"norm": {"weight": jnp.ones(48)}, "fc": {"weight": jnp.zeros((16, 48))}},
        },
        "lm_head": {"weight": jnp.zeros((64, 16))},
    }
    flat = {a.path: a for a in jax.tree.leaves(lmo_optax.assign(params, make(layout="torch")))}
    fc = flat["layers/0/fc/weight"]
    assert fc.norm.dims(fc.shape) == (16, 48)  # d_in 16, d_out 48
    assert flat["layers/1/norm/weight"].norm.describe() == "RMS"
    table = lmo_optax.rules_table(params, make(layout="torch"))
    assert "1 → 0" in table
    with pytest.raises(ValueError, match="layout"):
        make(layout="pytorch")


def test_gpt_rules_per_head_and_split_qkv():
    f = jnp.float32
    params = {
        "h": {
            "0": {
                "attn": {
                    "c_attn": {"kernel": jnp.zeros((32, 96), f)},
                    "query": {"kernel": jnp.zeros((32, 4, 8), f)},
                    "out": {"kernel": jnp.zeros((4, 8, 32), f)},
                    "o_proj": {"kernel": jnp.zeros((32, 32), f)},
                },
            }
        },
    }

    def norms_of(rules):
        flat = jax.tree.leaves(lmo_optax.assign(params, rules))
        return {a.path.split("/")[-2]: a.norm for a in flat}

    whole = norms_of(lmo_optax.gpt_rules())
    assert not whole["c_attn"].split and whole["query"].dims((32, 4, 8)) == (32, 32)
    fused = norms_of(lmo_optax.gpt_rules(split_qkv=True))
    assert fused["c_attn"].dims((32, 96)) == (32, 32) and fused["c_attn"].split_output == 3
    heads = norms_of(lmo_optax.gpt_rules(heads=4))
    assert heads["c_attn"].split_output == 12 and heads["c_attn"].dims((32, 96)) == (32, 8)
    assert heads["query"].dims((32, 4, 8)) == (32, 8)  # DenseGeneral: heads are a batch axis
    assert heads["out"].dims((4, 8, 32)) == (8, 32)
    assert heads["o_proj"].split_input == 4 and heads["o_proj"].dims((32, 32)) == (8, 32)
    with pytest.raises(ValueError, match="heads"):
        lmo_optax.gpt_rules(heads=0)
