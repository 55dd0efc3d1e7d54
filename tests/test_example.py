"""The training example: data, model ↔ preset rules, loop, metrics, resume, CLI errors."""

import dataclasses
import json

import flax.nnx as nnx
import jax
import numpy as np
import pytest

import lmo_optax
from lmo_optax.example import cli
from lmo_optax.example.checkpoints import Checkpoints, checkpoint_manager
from lmo_optax.example.config import ConfigError, OptimizerConfig, TrainConfig, apply_override
from lmo_optax.example.data import TokenDataset, default_corpus_text
from lmo_optax.example.model import GPT, GPTConfig, generate
from lmo_optax.example.train import build, load_data, read_metrics, restore, train

TINY = GPTConfig(context=16, width=32, depth=1, heads=2)


def tiny_config(**kw) -> TrainConfig:
    base = TrainConfig(
        model=TINY,
        batch_size=8,
        steps=6,
        eval_every=3,
        eval_batches=2,
        log_every=1,
        sample_bytes=8,
        optimizers={
            "scion": OptimizerConfig(learning_rate=0.05),
            "unconstrained_scion": OptimizerConfig(learning_rate=0.05),
            "adamw": OptimizerConfig(learning_rate=3e-3),
            "muon": OptimizerConfig(learning_rate=0.02),
        },
    )
    return dataclasses.replace(base, **kw)


def test_default_corpus_ships_with_python():
    text = default_corpus_text()
    assert len(text.encode()) > 400_000
    ds = TokenDataset.from_text(text, context=128)
    x, y = ds.batch("train", seed=0, step=5, batch_size=4, context=128)
    x2, _ = ds.batch("train", seed=0, step=5, batch_size=4, context=128)
    assert x.shape == (4, 128) and np.array_equal(x, x2)  # batches are a function of the step
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_data_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        TokenDataset.load(str(tmp_path / "missing.txt"), context=16)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        TokenDataset.load(str(tmp_path / "empty.txt"), context=16)
    (tmp_path / "short.txt").write_text("hello world")
    with pytest.raises(ConfigError, match="too short"):
        TokenDataset.load(str(tmp_path / "short.txt"), context=16)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00" * 100)
    with pytest.raises(ConfigError, match="UTF-8"):
        TokenDataset.load(str(tmp_path / "bin.txt"), context=16)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_gpt_preset_matches_every_model_parameter(tied, positions):
    model = GPT(dataclasses.replace(TINY, tied=tied, positions=positions), nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model))
    assigned = jax.tree.leaves(
        lmo_optax.assign(params, lmo_optax.gpt_rules(tied=tied)),
        is_leaf=lambda x: isinstance(x, lmo_optax.Assignment),
    )
    by_path = {a.path: a for a in assigned}
    expected_embedding = lmo_optax.Sign if tied else lmo_optax.ColNorm
    assert isinstance(by_path["token_embedding/embedding"].norm, expected_embedding)
    assert isinstance(by_path["blocks/0/mlp/fc/kernel"].norm, lmo_optax.Spectral)
    if not tied:
        assert isinstance(by_path["lm_head/kernel"].norm, lmo_optax.Sign)


def test_training_decreases_loss_and_writes_metrics(tmp_path):
    cfg = tiny_config(steps=8, eval_every=4)
    result = train(cfg, "scion", tmp_path, verbose=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"step", "train_loss", "tokens_per_s"} <= set(rows[0])
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    assert result.final_val_loss == rows[-1]["val_loss"]
    assert (tmp_path / "sample.txt").exists()


def test_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(steps=6, checkpoint_every=3)
    full = train(cfg, "scion", tmp_path / "full", verbose=False)
    train(cfg, "scion", tmp_path / "split", stop_after=3, verbose=False)
    assert len(read_metrics(tmp_path / "split" / "metrics.jsonl")) == 3
    resumed = train(cfg, "scion", tmp_path / "split", resume=True, verbose=False)
    a = read_metrics(tmp_path / "full" / "metrics.jsonl")
    b = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == rb["train_loss"]
        assert ra.get("val_loss") == rb.get("val_loss")
    assert full.final_val_loss == resumed.final_val_loss
    # Resuming a finished run (killed before its result.json, say) trains nothing and reports
    # the same losses.
    again = train(cfg, "scion", tmp_path / "split", resume=True, verbose=False)
    assert (again.steps, again.final_train_loss, again.final_val_loss) == (
        6,
        full.final_train_loss,
        full.final_val_loss,
    )
    assert len(read_metrics(tmp_path / "split" / "metrics.jsonl")) == 6


def read_checkpoint(out_dir, step):
    """The state saved at ``step`` in a run's folder, restored as it was saved."""
    with checkpoint_manager(out_dir / "checkpoints", keep=1) as manager:
        return manager.restore(step)


def test_checkpoint_round_trips_the_optimizer_state_exactly(tmp_path):
    import orbax.checkpoint as ocp

    cfg = tiny_config(steps=2)
    train(cfg, "scion", tmp_path, verbose=False)
    restored = read_checkpoint(tmp_path, 2)
    leaves = jax.tree.leaves(restored["opt_state"])
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    # Saving what was restored and restoring again gives identical bytes.
    with checkpoint_manager(tmp_path / "again", keep=1) as manager:
        manager.save(2, args=ocp.args.StandardSave(restored))
    with checkpoint_manager(tmp_path / "again", keep=1) as manager:
        twice = manager.restore(2)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(twice), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoints_keep_the_latest_and_an_earlier_run_is_replaced_only_on_request(tmp_path):
    cfg = tiny_config(steps=6, checkpoint_every=1, keep_checkpoints=2, sample_bytes=0)
    train(cfg, "adamw", tmp_path, verbose=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_5", "step_6"]
    # A new run in the same folder needs --resume or --overwrite; refused, it changes nothing.
    with pytest.raises(ConfigError, match="holds an earlier run.*--resume.*--overwrite"):
        train(cfg, "adamw", tmp_path, stop_after=2, verbose=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_5", "step_6"]
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 6
    # With overwrite it starts over: its own checkpoints and metrics.
    train(cfg, "adamw", tmp_path, stop_after=2, overwrite=True, verbose=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 2


def test_resume_without_a_checkpoint_starts_at_step_0_and_says_so(tmp_path, capsys):
    cfg = tiny_config(steps=2, sample_bytes=0)
    train(cfg, "scion", tmp_path / "fresh", verbose=False)
    resumed = train(cfg, "scion", tmp_path / "none", resume=True, verbose=False)
    assert "no checkpoint in" in capsys.readouterr().err
    assert resumed.steps == 2
    a = read_metrics(tmp_path / "fresh" / "metrics.jsonl")
    b = read_metrics(tmp_path / "none" / "metrics.jsonl")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_sample_longer_than_the_context_slides_the_window():
    model = GPT(TINY, nnx.Rngs(0))
    prompt = jax.numpy.arange(20, dtype=jax.numpy.int32)  # longer than the context (16)
    tokens = generate(model, prompt, 2 * TINY.context, jax.random.key(0))
    assert tokens.shape == (20 + 2 * TINY.context,)
    np.testing.assert_array_equal(tokens[:20], prompt)


def test_config_overrides():
    cfg = tiny_config()
    cfg = apply_override(cfg, "model.width=64")
    cfg = apply_override(cfg, "optimizers.scion.learning_rate=0.1")
    cfg = apply_override(cfg, "model.tied=true")
    assert cfg.model.width == 64 and cfg.model.tied
    assert cfg.optimizers["scion"].learning_rate == 0.1
    with pytest.raises(ValueError, match="unknown field 'widht'"):
        apply_override(cfg, "model.widht=64")
    with pytest.raises(ValueError, match="expected int"):
        apply_override(cfg, "steps=many")
    with pytest.raises(ValueError, match="expected true or false"):
        apply_override(cfg, "model.tied=maybe")
    with pytest.raises(ValueError, match="model.activation must be one of 'relu2', 'gelu'"):
        apply_override(cfg, "model.activation=tanh")
    with pytest.raises(ValueError, match="unknown key 'sgd'"):
        apply_override(cfg, "optimizers.sgd.learning_rate=0.1")
    with pytest.raises(ValueError, match="expected field=value"):
        apply_override(cfg, "steps")
    with pytest.raises(ValueError, match="keep_checkpoints must be at least 1"):
        apply_override(cfg, "keep_checkpoints=0")
    assert apply_override(cfg, "keep_checkpoints=5").keep_checkpoints == 5


def test_cli_errors(capsys):
    assert cli.main(["train", "--config", "tiny", "model.widht=3"]) == 2
    assert "unknown field 'widht'" in capsys.readouterr().err
    assert cli.main(["train", "--config", "tiny", "--optimizer", "sgd"]) == 2
    assert "unknown optimizer 'sgd'" in capsys.readouterr().err
    assert cli.main(["train", "--config", "nope.py"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["train", "--config", "tiny", "keep_checkpoints=0"]) == 2
    assert "keep_checkpoints must be at least 1" in capsys.readouterr().err


def test_cli_compare_writes_plot_and_summary(tmp_path, capsys):
    argv = [
        "compare",
        "--config",
        "tiny",
        "--optimizer",
        "scion,adamw",
        "--steps",
        "3",
        "--out",
        str(tmp_path),
        "model.width=32",
        "model.depth=1",
        "model.context=16",
        "batch_size=4",
        "eval_every=3",
        "eval_batches=1",
        "sample_bytes=4",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| scion" in out and "| adamw" in out and "lowest validation loss" in out
    assert (tmp_path / "loss.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["optimizer"] for r in summary["results"]] == ["scion", "adamw"]
    for name in ("scion", "adamw"):
        assert (tmp_path / name / "metrics.jsonl").exists()


def test_digits_cnn_uses_conv_rules_and_learns():
    from lmo_optax.example.digits import CNN, DigitsConfig, train_digits

    params = nnx.to_pure_dict(nnx.state(CNN((4, 8), nnx.Rngs(0))))
    table = lmo_optax.rules_table(params, "cnn")
    assert "SpectralConv(input)" in table and "Sign(1/d_in)" in table
    result = train_digits(DigitsConfig(steps=60, channels=(8, 16)), "scion", verbose=False)
    assert result["test_accuracy"] > 0.3  # chance is 0.1


@pytest.mark.parametrize("optimizer", ["scion", "adamw"])
def test_training_on_a_mesh_matches_one_device(tmp_path, optimizer):
    cfg = tiny_config(steps=2, eval_every=2, sample_bytes=0)
    one = train(cfg, optimizer, tmp_path / "one", verbose=False)
    # On the mesh, interrupted after one step and resumed from its checkpoint.
    meshed = dataclasses.replace(cfg, mesh="data=4,model=2")
    train(meshed, optimizer, tmp_path / "mesh", stop_after=1, verbose=False)
    sharded = train(meshed, optimizer, tmp_path / "mesh", resume=True, verbose=False)
    a = read_metrics(tmp_path / "one" / "metrics.jsonl")
    b = read_metrics(tmp_path / "mesh" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose(rb["train_loss"], ra["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(sharded.final_val_loss, one.final_val_loss, rtol=1e-5)
    # The whole training state after two steps: params and optimizer state.
    x, y = read_checkpoint(tmp_path / "one", 2), read_checkpoint(tmp_path / "mesh", 2)
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-4, atol=1e-5)
    # Restoring puts every array back in the layout the jitted step was built for.
    run = build(meshed, optimizer, load_data(meshed), log=lambda *args: None)
    layouts = [x.sharding for x in jax.tree.leaves(run.state)]
    with Checkpoints(tmp_path / "mesh" / "checkpoints", keep=1) as checkpoints:
        restore(run, checkpoints, 2)
    assert run.step == 2
    assert [x.sharding for x in jax.tree.leaves(run.state)] == layouts
    assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(run.params))


def test_mesh_layouts_and_errors():
    from jax.sharding import PartitionSpec as P

    from lmo_optax.example import parallel

    mesh = parallel.parse_mesh("data=4,model=2")
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert parallel.param_spec("blocks/0/attn/query/kernel", (32, 32), mesh) == P("data", "model")
    assert parallel.param_spec("blocks/0/mlp/proj/kernel", (128, 32), mesh) == P("model", "data")
    assert parallel.param_spec("lm_head/kernel", (32, 255), mesh) == P("data")  # 255 % 2 != 0
    assert parallel.param_spec("final_norm/scale", (32,), mesh) == P()
    for text, message in [
        ("data4", "axis=size"),
        ("data=2,data=2", "twice"),
        ("pipe=2", "'data' and 'model'"),
        ("data=64", "needs 64 devices"),
    ]:
        with pytest.raises(ValueError, match=message):
            parallel.parse_mesh(text)
