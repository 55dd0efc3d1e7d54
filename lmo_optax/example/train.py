"""The training loop: jitted steps, periodic validation, metrics, checkpoints, samples.

It reads top to bottom: data → model → optimizer → (resume) → loop → final eval → sample.
Parameters are a plain pytree (``nnx.split``); the step is a pure ``jax.jit`` function of
(params, optimizer state, batch), so checkpoints are ordinary pytrees.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from typing import Any, TextIO

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lmo_optax
from lmo_optax.example import optimizers, parallel
from lmo_optax.example.config import TrainConfig
from lmo_optax.example.data import ByteDataset
from lmo_optax.example.model import GPT, generate, loss_fn


@dataclasses.dataclass
class RunResult:
    optimizer: str
    learning_rate: float
    steps: int
    final_train_loss: float
    final_val_loss: float
    wall_time_s: float
    tokens_per_s: float
    sample: str
    out_dir: str


class Progress:
    """A one-line progress bar (rewritten in place on a terminal, periodic lines otherwise)."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr, every: int = 10):
        self.total, self.label, self.stream, self.every = total, label, stream, every
        self.tty = stream.isatty()

    def update(self, step: int, loss: float, tokens_per_s: float, val: float | None) -> None:
        if not self.tty and step % self.every and step != self.total and val is None:
            return
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        text = (
            f"{self.label:>20} [{bar}] {step:>5}/{self.total}  loss {loss:.4f}"
            f"  {tokens_per_s:,.0f} tok/s" + (f"  val {val:.4f}" if val is not None else "")
        )
        if self.tty:
            self.stream.write("\r" + text + ("\n" if step == self.total else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _latest_checkpoint(out: pathlib.Path) -> pathlib.Path | None:
    ckpts = sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return ckpts[-1].resolve() if ckpts else None


def train(
    cfg: TrainConfig,
    optimizer_name: str,
    out_dir: str | pathlib.Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    verbose: bool = True,
) -> RunResult:
    """Trains the GPT of ``cfg`` with one optimizer; writes metrics, checkpoints, samples.

    Args:
      stop_after: stop (with a checkpoint) after this many steps, to simulate an interrupted
        run; ``cfg.steps`` still sets the schedule.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if optimizer_name not in cfg.optimizers:
        raise ValueError(
            f"optimizer {optimizer_name!r} has no entry in the config's optimizers "
            f"(have: {', '.join(cfg.optimizers)})"
        )
    oc = cfg.optimizers[optimizer_name]
    log = print if verbose else (lambda *a, **k: None)

    # Data and model.
    mcfg = cfg.model
    data = ByteDataset.load(cfg.data, context=mcfg.context, val_fraction=cfg.val_fraction)
    model = GPT(mcfg, nnx.Rngs(cfg.seed))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tx = optimizers.build(optimizer_name, oc, cfg.steps, mcfg.tied)
    if optimizer_name in ("scion", "unconstrained_scion"):
        rules = optimizers.scion_rules(oc, mcfg.tied)
        log(lmo_optax.rules_table(params, rules))
        if oc.init == "ball":
            params = lmo_optax.init_on_ball(jax.random.key(cfg.seed), params, rules)
    # On a mesh (--mesh data=4,model=2): parameters FSDP/TP-sharded, batches split over data,
    # and the jitted step keeps every layout (lmo_optax.example.parallel).
    mesh = parallel.parse_mesh(cfg.mesh) if cfg.mesh else None
    if mesh is not None:
        shardings = parallel.param_shardings(params, mesh)
        params = jax.device_put(params, shardings)
        opt_state = tx.init(params)  # outside jit: the buffers keep the params' shardings
        opt_shardings = parallel.state_shardings(opt_state, mesh)
        opt_state = jax.device_put(opt_state, opt_shardings)
        batch = parallel.batch_sharding(mesh, cfg.batch_size)
        scalar = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        step_jit = functools.partial(
            jax.jit,
            in_shardings=(shardings, opt_shardings, batch, batch),
            out_shardings=(shardings, opt_shardings, scalar),
        )
        log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} devices")
    else:
        opt_state = tx.init(params)
        batch = None
        step_jit = jax.jit
    log(
        f"{optimizer_name}: {model.num_params():,} parameters, data {data.description} "
        f"({len(data.train):,} train / {len(data.val):,} val bytes)"
    )

    def loss_of(params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, params), inputs, targets)

    @step_jit
    def train_step(params: Any, opt_state: Any, inputs: jax.Array, targets: jax.Array):
        loss, grads = jax.value_and_grad(loss_of)(params, inputs, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    eval_loss = jax.jit(loss_of)

    def get_batch(split: str, step: int) -> tuple[jax.Array, jax.Array]:
        x, y = data.batch(
            split, seed=cfg.seed, step=step, batch_size=cfg.batch_size, context=mcfg.context
        )
        return (x, y) if batch is None else (jax.device_put(x, batch), jax.device_put(y, batch))

    def evaluate(params: Any) -> float:
        losses = [float(eval_loss(params, *get_batch("val", i))) for i in range(cfg.eval_batches)]
        return float(np.mean(losses))

    # Resume from the latest checkpoint: params, optimizer state and step round-trip exactly.
    start = 0
    metrics_path = out / "metrics.jsonl"
    if resume:
        latest = _latest_checkpoint(out)
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'}")
        target = {"params": params, "opt_state": opt_state, "step": 0}
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), target
        )
        restored = _checkpointer().restore(latest, abstract)
        params, opt_state, start = restored["params"], restored["opt_state"], int(restored["step"])
        if mesh is not None:
            params = jax.device_put(params, shardings)
            opt_state = jax.device_put(opt_state, opt_shardings)
        kept = (
            [
                line
                for line in metrics_path.read_text().splitlines()
                if line and json.loads(line)["step"] <= start
            ]
            if metrics_path.exists()
            else []
        )
        metrics_path.write_text("".join(line + "\n" for line in kept))
        log(f"resumed from {latest} at step {start}")
    elif metrics_path.exists():
        metrics_path.unlink()

    def save(step: int) -> None:
        path = (out / "checkpoints" / f"step_{step}").resolve()
        if path.exists():
            return
        ckpt = _checkpointer()
        ckpt.save(path, {"params": params, "opt_state": opt_state, "step": step})
        ckpt.wait_until_finished()

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    tokens_per_step = cfg.batch_size * mcfg.context
    progress = Progress(cfg.steps, optimizer_name, every=cfg.log_every)
    t_start = time.perf_counter()
    train_loss = val_loss = math.nan
    tokens_per_s = 0.0
    with metrics_path.open("a") as metrics:
        for step in range(start + 1, end + 1):
            x, y = get_batch("train", step)
            t0 = time.perf_counter()
            params, opt_state, loss = train_step(params, opt_state, x, y)
            train_loss = float(loss)  # blocks until the step is done
            tokens_per_s = tokens_per_step / (time.perf_counter() - t0)
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"{optimizer_name}: the training loss is {train_loss} at step {step}; "
                    f"lower optimizers.{optimizer_name}.learning_rate ({oc.learning_rate})"
                )
            record: dict[str, Any] = {
                "step": step,
                "train_loss": train_loss,
                "tokens_per_s": tokens_per_s,
            }
            evaluated = None
            if step % cfg.eval_every == 0 or step == cfg.steps:
                evaluated = val_loss = evaluate(params)
                record["val_loss"] = val_loss
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            progress.update(step, train_loss, tokens_per_s, evaluated)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save(step)
    save(end)
    wall = time.perf_counter() - t_start

    sample = ""
    if end == cfg.steps and cfg.sample_bytes > 0:
        prompt = jnp.asarray(np.frombuffer(cfg.sample_prompt.encode(), np.uint8).astype(np.int32))
        if mesh is not None:  # sample on one device
            params = jax.device_put(params, jax.devices()[0])
        tokens = generate(
            nnx.merge(graphdef, params), prompt, cfg.sample_bytes, jax.random.key(cfg.seed)
        )
        sample = bytes(np.asarray(tokens, np.uint8)).decode("utf-8", errors="replace")
        (out / "sample.txt").write_text(sample)
    result = RunResult(
        optimizer_name,
        oc.learning_rate,
        end,
        train_loss,
        val_loss,
        wall,
        tokens_per_s,
        sample,
        str(out),
    )
    (out / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]


def plot(results: list[RunResult], path: str | pathlib.Path, title: str = "") -> None:
    """Train (smoothed) and validation loss curves of several runs in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(results):
        rows = read_metrics(pathlib.Path(r.out_dir) / "metrics.jsonl")
        color = f"C{i}"
        steps = np.array([m["step"] for m in rows])
        train = np.array([m["train_loss"] for m in rows])
        k = max(1, len(train) // 30)
        smooth = np.convolve(train, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color=color, alpha=0.5, label=f"{r.optimizer} train")
        val = [(m["step"], m["val_loss"]) for m in rows if "val_loss" in m]
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=color, label=f"{r.optimizer} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/byte)")
    ax.set_title(title or "byte-level GPT")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(results: list[RunResult]) -> str:
    rows = [("optimizer", "lr", "steps", "train loss", "val loss", "wall (s)", "tok/s")]
    for r in results:
        rows.append(
            (
                r.optimizer,
                f"{r.learning_rate:g}",
                str(r.steps),
                f"{r.final_train_loss:.4f}",
                f"{r.final_val_loss:.4f}",
                f"{r.wall_time_s:.1f}",
                f"{r.tokens_per_s:,.0f}",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
