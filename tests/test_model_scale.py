"""The example at scale: scanned blocks, bfloat16 compute, gradient accumulation, donation.

Each feature is checked against the plain float32 model: scanned blocks carrying the stacked
weights of the unscanned ones give the same loss and the same Scion step with per-layer LMOs;
k micro-batches give the step of the whole batch; a bfloat16-compute step keeps float32
parameters and state and a loss close to float32's; the jitted step donates its inputs.
"""

import dataclasses
import json

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmo_optax
from lmo_optax.example import optimizers, parallel
from lmo_optax.example.config import ConfigError, OptimizerConfig, TrainConfig
from lmo_optax.example.data import TokenDataset, default_corpus_text
from lmo_optax.example.model import GPT, GPTConfig, loss_fn, stack_layers
from lmo_optax.example.train import build, train

MODEL = GPTConfig(context=8, width=32, depth=3, heads=4)
SCANNED = dataclasses.replace(MODEL, scan_layers=True)
OPTIMIZERS = {
    "scion": OptimizerConfig(learning_rate=0.05),
    "adamw": OptimizerConfig(learning_rate=3e-3),
    "muon": OptimizerConfig(learning_rate=0.02),
}
RTOL = 2e-5  # float32 round-off of a loss
# ... and of parameters after a step: Newton–Schulz amplifies the round-off of its input.
STEP_TOL = {"rtol": 1e-4, "atol": 2e-5}


@pytest.fixture(scope="module")
def data() -> TokenDataset:
    return TokenDataset.from_text(default_corpus_text()[:20_000], context=MODEL.context)


def config(model: GPTConfig = MODEL, **kw) -> TrainConfig:
    return TrainConfig(model=model, batch_size=4, steps=10, optimizers=OPTIMIZERS, **kw)


def params_of(model_cfg: GPTConfig) -> dict:
    return nnx.to_pure_dict(nnx.state(GPT(model_cfg, nnx.Rngs(0))))


def one_step(cfg: TrainConfig, name: str, data: TokenDataset, params=None):
    """(loss, params, opt_state) after one step of ``build``'s jitted step from ``params``."""
    run = build(cfg, name, data, log=lambda *a, **k: None)
    if params is not None:
        run.params = jax.tree.map(jnp.copy, params)  # the step donates its inputs
        run.opt_state = optimizers.build(
            name, cfg.optimizers[name], cfg.steps, cfg.model.tied, cfg.grad_accum_steps
        ).init(params)
    params, opt_state, loss = run.train_step(run.params, run.opt_state, *run.batch("train", 1))
    return float(loss), params, opt_state


@pytest.fixture(scope="module")
def flat_step(data):
    """The unscanned float32 model's params and its Scion step: (params, loss, new params)."""
    flat = params_of(MODEL)
    loss, new, _ = one_step(config(), "scion", data, flat)
    return flat, loss, new


def test_scanned_model_has_stacked_params_and_the_unscanned_loss():
    flat, scanned = params_of(MODEL), params_of(SCANNED)
    stacked = stack_layers(flat, MODEL)
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scanned)
    assert scanned["blocks"]["mlp"]["fc"]["kernel"].shape == (3, 32, 128)
    assert scanned["blocks"]["attn"]["query"]["kernel"].shape == (3, 32, 4, 8)
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 256)
    graph, scanned_graph = (
        nnx.graphdef(GPT(MODEL, nnx.Rngs(0))),
        nnx.graphdef(GPT(SCANNED, nnx.Rngs(0))),
    )
    want = jax.jit(lambda p: loss_fn(nnx.merge(graph, p), tokens, tokens))(flat)
    got = jax.jit(lambda p: loss_fn(nnx.merge(scanned_graph, p), tokens, tokens))(stacked)
    np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("tied", [False, True])
def test_presets_give_scanned_kernels_the_norms_and_radii_of_each_layer(tied):
    rules = "gpt_tied" if tied else "gpt"
    model = dataclasses.replace(MODEL, tied=tied, norm_gains=True)
    flat = lmo_optax.assign(params_of(model), rules)
    scanned = lmo_optax.assign(params_of(dataclasses.replace(model, scan_layers=True)), rules)
    for module, names in (("attn", ("query", "key", "value", "out")), ("mlp", ("fc", "proj"))):
        for name in names:
            one = flat["blocks"][0][module][name]["kernel"]
            stack = scanned["blocks"][module][name]["kernel"]
            assert type(stack.norm) is type(one.norm) is lmo_optax.Spectral
            assert stack.norm.dims(stack.shape) == one.norm.dims(one.shape)
            assert (stack.radius, stack.scale) == (one.radius, one.scale)
    gain = scanned["blocks"]["attn_norm"]["scale"]
    assert isinstance(gain.norm, lmo_optax.RMS) and gain.shape == (3, 32)
    table = lmo_optax.rules_table(params_of(dataclasses.replace(model, scan_layers=True)), rules)
    assert "blocks/attn/query/kernel   (3, 32, 4, 8)" in table


def test_a_scanned_scion_step_equals_the_unscanned_step(data, flat_step):
    flat, loss, new_flat = flat_step
    scanned_loss, new_scanned, _ = one_step(
        config(SCANNED), "scion", data, stack_layers(flat, MODEL)
    )
    np.testing.assert_allclose(scanned_loss, loss, rtol=RTOL)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, **STEP_TOL),
        new_scanned,
        stack_layers(new_flat, MODEL),
    )


@pytest.mark.parametrize("scanned", [False, True], ids=["unscanned", "scanned"])
def test_a_rematerialized_step_equals_the_plain_step_and_keeps_less(data, flat_step, scanned):
    flat, loss, new_flat = flat_step
    model = dataclasses.replace(SCANNED if scanned else MODEL, remat=True)
    start = stack_layers(flat, MODEL) if scanned else flat
    remat_loss, new, _ = one_step(config(model), "scion", data, start)
    np.testing.assert_allclose(remat_loss, loss, rtol=RTOL)
    expected = stack_layers(new_flat, MODEL) if scanned else new_flat
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **STEP_TOL), new, expected)

    if not scanned:  # XLA's CPU backend keeps the unscanned program's temporaries as they are
        return

    # The scanned gradient keeps one input per block: the compiled program's temporaries
    # shrink (5.5x for these shapes).
    def temporaries(model_cfg: GPTConfig) -> int:
        graphdef, state = nnx.split(GPT(model_cfg, nnx.Rngs(0)))
        params = nnx.to_pure_dict(state)
        tokens = jnp.zeros((4, model_cfg.context), jnp.int32)

        def loss_of(p):
            return loss_fn(nnx.merge(graphdef, p), tokens, tokens)

        compiled = jax.jit(jax.grad(loss_of)).lower(params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    big = dataclasses.replace(model, remat=False, context=512, width=128, depth=8)
    assert 3 * temporaries(dataclasses.replace(big, remat=True)) < temporaries(big)


def test_a_scanned_muon_update_equals_the_unscanned_update():
    """Muon orthogonalizes each layer's matrix of the scanned kernels (its dimension numbers)."""
    flat = params_of(MODEL)
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape), flat)
    tx = optimizers.build("muon", OPTIMIZERS["muon"], 10, tied=False)
    update = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])
    updates = update(grads, flat)
    scanned_updates = update(stack_layers(grads, MODEL), stack_layers(flat, MODEL))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, **STEP_TOL),
        scanned_updates,
        stack_layers(updates, MODEL),
    )


def test_scanned_lmos_are_per_layer():
    """Each layer's matrix gets its own LMO: a zero layer a zero update, the others an update
    of spectral norm radius × scale however small or large their gradients (exact LMOs)."""
    exact = lmo_optax.Rule("*fc/kernel", lmo_optax.Spectral(method="svd"), 3.0)
    tx = lmo_optax.scale_by_lmo([exact, *optimizers.scion_rules(OPTIMIZERS["scion"], False)])
    params = params_of(SCANNED)
    grads = jax.tree.map(jnp.zeros_like, params)
    size = jnp.array([0.0, 1e-3, 1e3])[:, None, None]
    grads["blocks"]["mlp"]["fc"]["kernel"] = size * jax.random.normal(
        jax.random.key(2), (3, 32, 128)
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    update = np.asarray(updates["blocks"]["mlp"]["fc"]["kernel"], np.float64)
    assert not np.any(update[0])
    norms = np.linalg.norm(update[1:], ord=2, axis=(1, 2))
    np.testing.assert_allclose(norms, 3.0 * 2.0, rtol=1e-4)  # radius 3, scale √(128 / 32)


def test_parallel_keeps_the_layer_axis_whole():
    mesh = parallel.parse_mesh("data=4,model=2")
    P = jax.sharding.PartitionSpec
    assert parallel.param_spec("blocks/mlp/fc/kernel", (3, 32, 128), mesh) == P(
        None, "data", "model"
    )
    assert parallel.param_spec("blocks/mlp/proj/kernel", (3, 128, 32), mesh) == P(
        None, "model", "data"
    )
    assert parallel.param_spec("blocks/attn/query/kernel", (3, 32, 4, 8), mesh) == P(
        None, "data", "model"
    )
    assert parallel.param_spec("blocks/attn/out/kernel", (3, 4, 8, 32), mesh) == P(
        None, "model", None, "data"
    )
    assert parallel.param_spec("blocks/attn_norm/scale", (4, 32), mesh) == P()
    assert parallel.param_spec("blocks/0/mlp/fc/kernel", (32, 128), mesh) == P("data", "model")


def test_a_scanned_step_on_a_mesh_equals_one_device(data):
    cfg = config(SCANNED, grad_accum_steps=2)
    loss, params, _ = one_step(cfg, "scion", data)
    mesh_cfg = dataclasses.replace(cfg, mesh="data=2,model=2")
    mesh_loss, mesh_params, _ = one_step(mesh_cfg, "scion", data)
    np.testing.assert_allclose(mesh_loss, loss, rtol=RTOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **STEP_TOL), mesh_params, params)


def test_grad_accumulation_equals_one_batch(data, flat_step):
    flat, loss, params = flat_step
    acc_loss, acc_params, acc_state = one_step(config(grad_accum_steps=4), "scion", data, flat)
    np.testing.assert_allclose(acc_loss, loss, rtol=RTOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **STEP_TOL), acc_params, params)
    assert int(acc_state.gradient_step) == 1 and int(acc_state.mini_step) == 0


def test_grad_accumulation_is_validated():
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        config(grad_accum_steps=0)
    with pytest.raises(ConfigError, match="grad_accum_steps=3 must divide batch_size=4"):
        config(grad_accum_steps=3)
    with pytest.raises(ConfigError, match="batch_size / grad_accum_steps=1"):
        config(grad_accum_steps=4, mesh="data=2")


def test_bfloat16_compute_keeps_float32_params_and_a_close_loss(data, flat_step):
    flat, f32_loss, _ = flat_step
    model = dataclasses.replace(MODEL, compute_dtype="bfloat16")
    assert GPT(model, nnx.Rngs(0)).blocks[0].mlp.fc.dtype == jnp.bfloat16
    loss, params, state = one_step(config(model), "scion", data, flat)
    for leaf in jax.tree.leaves((params, state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert abs(loss - f32_loss) < 0.01 * f32_loss


def test_compute_dtype_is_validated():
    with pytest.raises(ConfigError, match="compute_dtype"):
        GPTConfig(compute_dtype="float16")


def test_the_step_donates_params_and_state(data):
    run = build(config(), "adamw", data, log=lambda *a, **k: None)
    params, state = run.params, run.opt_state
    run.train_step(params, state, *run.batch("train", 1))
    assert all(x.is_deleted() for x in jax.tree.leaves((params, state)))


def test_a_run_reports_its_compile_time_once_and_saves_what_it_donates(tmp_path, capsys):
    cfg = dataclasses.replace(
        config(SCANNED), steps=3, checkpoint_every=1, eval_every=3, eval_batches=1, sample_bytes=0
    )
    result = train(cfg, "adamw", tmp_path)
    assert capsys.readouterr().out.count("jitted step compiled") == 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["compile_time_s"] == result.compile_time_s > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_1",
        "step_2",
        "step_3",
    ]
