"""The training loop: jitted steps, periodic validation, metrics, checkpoints, samples.

``train`` reads top to bottom in five steps, each a function of this module:

1. ``load_data``: the byte corpus, split into train and validation.
2. ``build``: the model, the optimizer and the jitted step (laid out on a device mesh with
   ``cfg.mesh``), as a ``Run`` at step 0.
3. ``checkpoints.prepare_out_dir`` and, with ``resume``, ``checkpoints.find_resume_point``,
   ``accept_resume_point`` and ``restore``: the run's folder, then the parameters, optimizer
   state and step of its latest intact checkpoint (how faults lose nothing: the docstring of
   ``lmo_optax.example.checkpoints``).
4. ``loop``: the steps, validation, ``metrics.jsonl``, the progress line and checkpoints.
5. ``finish``: a text sample and ``result.json``.

Parameters are a plain pytree (``nnx.split``) and the step is a pure ``jax.jit`` function of
(params, optimizer state, batch), so a checkpoint is an ordinary pytree, which
``orbax.checkpoint.CheckpointManager`` saves, prunes and restores.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

import lmo_optax
from lmo_optax.example import (
    checkpoints,
    cluster,
    diagnostics_log,
    optimizers,
    parallel,
    prepare,
)
from lmo_optax.example.config import TrainConfig
from lmo_optax.example.data import BYTE_VOCABULARY, TokenDataset
from lmo_optax.example.errors import ConfigError
from lmo_optax.example.model import GPT, generate, loss_fn


@dataclasses.dataclass
class RunResult:
    """What one run reports (also written to ``result.json``).

    Attributes:
      optimizer: the optimizer's name.
      learning_rate: its peak learning rate.
      steps: the steps trained (fewer than ``cfg.steps`` when stopped early).
      final_train_loss: the last step's training loss (NaN if no step ran).
      final_val_loss: the last validation loss (NaN if none was taken).
      wall_time_s: seconds spent in the loop, compilation included.
      compile_time_s: seconds of this process's first step, which traces and compiles the
        jitted step and runs it once (NaN if no step ran).
      tokens_per_s: throughput of the last step.
      diagnostics_time_s: seconds this process spent computing and writing per-layer
        diagnostics (``diagnostics_every``), inside ``wall_time_s``; 0 when they are off.
      sample: text generated after the last step ("" when stopped early or disabled).
      out_dir: the run's folder.
    """

    optimizer: str
    learning_rate: float
    steps: int
    final_train_loss: float
    final_val_loss: float
    wall_time_s: float
    compile_time_s: float
    tokens_per_s: float
    diagnostics_time_s: float
    sample: str
    out_dir: str


@dataclasses.dataclass
class Run:
    """One optimizer's run: its jitted functions and its training state, which ``loop`` advances.

    Attributes:
      cfg: the config.
      optimizer: the optimizer's name, a key of ``cfg.optimizers``.
      data: the corpus.
      graphdef: the model's structure; ``nnx.merge(graphdef, params)`` is the model.
      params: the parameters (a pytree of arrays; sharded on the mesh with ``cfg.mesh``).
      opt_state: the optimizer state (laid out like ``params``).
      train_step: ``(params, opt_state, inputs, targets) -> (params, opt_state, loss)``, jitted
        with params and opt_state donated: the arrays passed in are deleted, so nothing may
        read them after the call (``checkpoints.Checkpoints.save`` saves a copy).
      eval_loss: ``(params, inputs, targets) -> loss``, jitted.
      batch_sharding: where batches go on the mesh; None on one device.
      step: the steps taken so far.
    """

    cfg: TrainConfig
    optimizer: str
    data: TokenDataset
    graphdef: nnx.GraphDef
    params: Any
    opt_state: Any
    train_step: Callable[..., tuple[Any, Any, jax.Array]]
    eval_loss: Callable[..., jax.Array]
    batch_sharding: jax.sharding.Sharding | None
    step: int = 0

    @property
    def state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the step: parameters and optimizer state."""
        return {"params": self.params, "opt_state": self.opt_state}

    def batch(self, split: str, step: int) -> tuple[jax.Array, jax.Array]:
        """(inputs, targets) of ``split`` for ``step``: the same on every run with this seed.

        On a mesh each process reads only the rows of its own devices (over several
        processes, the global batch is assembled from them without moving data between them).
        """
        cfg = self.cfg
        draw = functools.partial(
            self.data.batch,
            split,
            seed=cfg.seed,
            step=step,
            batch_size=cfg.batch_size,
            context=cfg.model.context,
        )
        if self.batch_sharding is None:
            return draw()
        shape, drawn = (cfg.batch_size, cfg.model.context), {}

        def rows(index: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
            key = index[0].indices(cfg.batch_size)
            if key not in drawn:  # devices that share rows (a model axis) read them once
                drawn[key] = draw(rows=index[0])
            return drawn[key]

        make = jax.make_array_from_callback
        x = make(shape, self.batch_sharding, lambda index: rows(index)[0][:, index[1]])
        y = make(shape, self.batch_sharding, lambda index: rows(index)[1][:, index[1]])
        return x, y

    def evaluate(self) -> float:
        """The mean loss of the parameters over ``cfg.eval_batches`` validation batches."""
        losses = [
            float(self.eval_loss(self.params, *self.batch("val", i)))
            for i in range(self.cfg.eval_batches)
        ]
        return float(np.mean(losses))


@dataclasses.dataclass
class LoopStats:
    """The latest measurements of ``loop``: losses, throughput and time."""

    train_loss: float = math.nan
    val_loss: float = math.nan
    tokens_per_s: float = 0.0
    wall_time_s: float = 0.0
    compile_time_s: float = math.nan
    diagnostics_time_s: float = 0.0

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> LoopStats:
        """The measurements that ``metrics.jsonl``'s ``rows`` end with (a resumed run's start)."""
        if not rows:
            return cls()
        vals = [row["val_loss"] for row in rows if "val_loss" in row]
        last = rows[-1]
        return cls(last["train_loss"], vals[-1] if vals else math.nan, last["tokens_per_s"])


def train(
    cfg: TrainConfig,
    optimizer_name: str,
    out_dir: str | pathlib.Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    verbose: bool = True,
    data: TokenDataset | None = None,
) -> RunResult:
    """Trains the GPT of ``cfg`` with one optimizer; writes metrics, checkpoints and a sample.

    Args:
      cfg: the run's settings.
      optimizer_name: a key of ``cfg.optimizers``.
      out_dir: the run's folder: ``metrics.jsonl``, ``checkpoints/``, ``sample.txt`` and
        ``result.json``.
      resume: continue from the latest intact checkpoint in ``out_dir`` (see the module
        docstring for damaged ones); step 0 when there is none.
      overwrite: delete the metrics and checkpoints of an earlier run in ``out_dir`` first.
        Without ``resume`` or ``overwrite``, a folder that holds an earlier run is an error.
      stop_after: stop (with a checkpoint) after this many steps, to simulate an interrupted
        run; ``cfg.steps`` still sets the schedule.
      verbose: print the rules table, the mesh and the model's size (the progress line and
        warnings go to stderr either way).
      data: the tokens of ``cfg.data`` (and ``cfg.val_data``) when already loaded
        (``load_data(cfg)``), so that several runs read them once.

    Raises:
      ConfigError: a setting that cannot be honoured: ``optimizer_name`` has no entry in
        ``cfg.optimizers``, the data, the mesh (more devices than JAX sees), the output folder
        (a file, an earlier run, both ``resume`` and ``overwrite``), or ``resume`` finds only
        damaged checkpoints or one saved with other shapes or past ``cfg.steps``.
      FloatingPointError: the training loss became NaN or infinite.
    """
    out = pathlib.Path(out_dir)
    log = print if verbose else _silent
    checkpoints.check_out_dir(out, resume=resume, overwrite=overwrite)
    point = checkpoints.find_resume_point(out / "checkpoints") if resume else None
    data = load_data(cfg) if data is None else data
    run = build(cfg, optimizer_name, data, log)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    if point is not None:  # every process checks it, so that all stop together on an error
        rejected = out / checkpoints.REJECTED
        primary = cluster.is_primary()
        checkpoints.accept_resume_point(point, run.state, cfg.steps, rejected, primary)
    cluster.barrier("output folder checked")  # by every process, before any writes to it
    if cluster.is_primary():  # one process of a multi-process run writes the run's files
        checkpoints.prepare_out_dir(out, overwrite=overwrite, log=log)
    cluster.barrier("output folder prepared")
    with checkpoints.Checkpoints(out / "checkpoints", cfg.keep_checkpoints) as saved:
        if point is not None and point.step is not None:
            restore(run, saved, point.step)
            log(f"resumed from {saved.directory / f'step_{point.step}'}")
        if cluster.is_primary():
            truncate_metrics(out / "metrics.jsonl", run.step)
        stats = loop(run, saved, out / "metrics.jsonl", end, log)
    return finish(run, stats, out, log)


def _silent(*args: Any, **kwargs: Any) -> None:
    """A ``print`` that prints nothing (``verbose=False``)."""


# 1. Data.


def load_data(cfg: TrainConfig) -> TokenDataset:
    """The tokens of ``cfg.data`` (and ``cfg.val_data``), as train and validation."""
    return TokenDataset.load(
        cfg.data,
        context=cfg.model.context,
        val_fraction=cfg.val_fraction,
        vocab_size=cfg.model.vocab_size,
        val_data=cfg.val_data or None,
    )


# 2. Model and optimizer.


def build(
    cfg: TrainConfig, optimizer_name: str, data: TokenDataset, log: Callable[..., None] = print
) -> Run:
    """The model, its optimizer and the jitted step and loss, as a ``Run`` at step 0.

    Scion's runs log their parameter → norm table and may start on the norm balls
    (``init="ball"``). With ``cfg.mesh`` the parameters, the optimizer state and the batches
    are laid out on the device mesh (``lmo_optax.example.parallel``) and the jitted step keeps
    those layouts.
    """
    if optimizer_name not in cfg.optimizers:
        raise ConfigError(
            f"optimizer {optimizer_name!r} has no entry in the config's optimizers "
            f"(have: {', '.join(cfg.optimizers)})"
        )
    oc = cfg.optimizers[optimizer_name]
    model = GPT(cfg.model, nnx.Rngs(cfg.seed))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    mesh = parallel.parse_mesh(cfg.mesh) if cfg.mesh else None
    tx = optimizers.build(
        optimizer_name, oc, cfg.steps, cfg.model.tied, cfg.grad_accum_steps, mesh=mesh
    )
    if optimizer_name in ("scion", "unconstrained_scion"):
        rules = optimizers.scion_rules(oc, cfg.model.tied)
        log(lmo_optax.rules_table(params, rules))
        if oc.init == "ball":
            params = lmo_optax.init_on_ball(jax.random.key(cfg.seed), params, rules)

    if mesh is not None:
        params, opt_state, batch_sharding, step_jit = _lay_out_on_mesh(params, tx, mesh)
        log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} devices")
        whole = parallel.kept_whole(params, mesh)
        if whole:
            log(
                f"mesh: {len(whole)} parameter dimensions stay whole along an axis that does "
                f"not divide them: {', '.join(whole[:4])}" + (", …" if len(whole) > 4 else "")
            )
    else:
        opt_state, batch_sharding = tx.init(params), None
        step_jit = functools.partial(jax.jit, donate_argnums=(0, 1))

    def loss_of(params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, params), inputs, targets, batch_sharding)

    train_step = step_jit(_step_function(loss_of, tx, cfg.grad_accum_steps))

    log(
        f"{optimizer_name}: {model.num_params():,} parameters, data {data.description} "
        "({:,} train / {:,} val tokens)".format(*data.sizes)
    )
    return Run(
        cfg=cfg,
        optimizer=optimizer_name,
        data=data,
        graphdef=graphdef,
        params=params,
        opt_state=opt_state,
        train_step=train_step,
        eval_loss=jax.jit(loss_of),
        batch_sharding=batch_sharding,
    )


def _lay_out_on_mesh(
    params: Any, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> tuple[Any, Any, jax.sharding.Sharding, Callable[[Callable], Callable]]:
    """Sharded params and optimizer state, the batch layout, and a ``jax.jit`` that keeps them.

    Parameters are FSDP/TP-sharded, batches split over ``data``; the optimizer state is made
    outside jit so that its per-parameter buffers keep the parameters' shardings.
    """
    shardings = parallel.param_shardings(params, mesh)
    params = jax.device_put(params, shardings)
    opt_state = tx.init(params)
    opt_shardings = parallel.state_shardings(opt_state, mesh)
    opt_state = jax.device_put(opt_state, opt_shardings)
    batch = parallel.batch_sharding(mesh)
    scalar = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step_jit = functools.partial(
        jax.jit,
        in_shardings=(shardings, opt_shardings, batch, batch),
        out_shardings=(shardings, opt_shardings, scalar),
        donate_argnums=(0, 1),
    )
    return params, opt_state, batch, step_jit


def _step_function(
    loss_of: Callable[..., jax.Array], tx: optax.GradientTransformation, grad_accum_steps: int
) -> Callable[..., tuple[Any, Any, jax.Array]]:
    """``(params, opt_state, inputs, targets) -> (params, opt_state, loss)``: one optimizer step.

    With ``grad_accum_steps`` k > 1 (``tx`` is then ``optax.MultiSteps``) the batch is split
    into k micro-batches (sequence i goes to micro-batch i mod k, so each stays spread over a
    mesh's ``data`` axis) and a ``lax.scan`` gives each its gradient and ``tx.update``: the
    first k − 1 updates are zero and the k-th applies the mean gradient. The loss is the mean of
    the micro-batches' losses.
    """

    def micro_step(params: Any, opt_state: Any, inputs: jax.Array, targets: jax.Array):
        loss, grads = jax.value_and_grad(loss_of)(params, inputs, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if grad_accum_steps == 1:
        return micro_step

    def split(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, -1).swapaxes(0, 1)

    def train_step(params: Any, opt_state: Any, inputs: jax.Array, targets: jax.Array):
        def body(carry: tuple[Any, Any], batch: tuple[jax.Array, jax.Array]):
            params, opt_state, loss = micro_step(*carry, *batch)
            return (params, opt_state), loss

        batches = (split(inputs), split(targets))
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), batches)
        return params, opt_state, jnp.mean(losses)

    return train_step


# 3. The output folder and checkpoints: lmo_optax.example.checkpoints.


def restore(run: Run, saved: checkpoints.Checkpoints, step: int) -> None:
    """Loads the checkpoint of ``step`` into ``run``: parameters, optimizer state and step.

    The abstract target carries each array's sharding, so on a mesh every array comes back in
    the layout the jitted step expects.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), run.state
    )
    restored = saved.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    run.params, run.opt_state, run.step = restored["params"], restored["opt_state"], step


def truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Keeps the lines of ``metrics.jsonl`` up to ``step`` (none for a fresh run).

    A resumed run repeats the steps after its checkpoint, so their lines are written again.
    """
    rows = read_metrics(path) if path.exists() else []
    path.write_text("".join(json.dumps(row) + "\n" for row in rows if row["step"] <= step))


# 4. The loop.


def loop(
    run: Run,
    saved: checkpoints.Checkpoints,
    metrics_path: pathlib.Path,
    end: int,
    log: Callable[..., None] = _silent,
) -> LoopStats:
    """Trains ``run`` from its step to ``end``, then saves a checkpoint at ``end``.

    Every step appends a line to ``metrics.jsonl`` (``step``, ``train_loss``, ``tokens_per_s``,
    and ``val_loss`` every ``eval_every`` steps and at ``cfg.steps``) and updates the progress
    line; a checkpoint is saved every ``checkpoint_every`` steps. The first step's time, which
    compiles the jitted step, is logged once (``LoopStats.compile_time_s``).
    """
    cfg = run.cfg
    progress = Progress(cfg.steps, run.optimizer, every=cfg.log_every)
    # Process 0 alone keeps metrics.jsonl (the others may not see its latest writes yet).
    stats = LoopStats.of(read_metrics(metrics_path) if cluster.is_primary() else [])
    tokens_per_step = cfg.batch_size * cfg.model.context
    t_start = time.perf_counter()
    diagnostics, diagnostics_calls = None, []
    if cfg.diagnostics_every and run.optimizer in ("scion", "unconstrained_scion"):
        oc = cfg.optimizers[run.optimizer]
        diagnostics = diagnostics_log.DiagnosticsLog(
            metrics_path.parent, optimizers.scion_rules(oc, cfg.model.tied), ns_steps=oc.ns_steps
        )
    written = metrics_path if cluster.is_primary() else pathlib.Path(os.devnull)
    with written.open("a") as metrics:
        while run.step < end:
            step = run.step + 1
            x, y = run.batch("train", step)
            t0 = time.perf_counter()
            if math.isnan(stats.compile_time_s):  # several processes: compiled, then a barrier
                run.train_step = cluster.compiled_together(
                    run.train_step, run.params, run.opt_state, x, y, name="train step"
                )
                run.eval_loss = cluster.compiled_together(
                    run.eval_loss, run.params, x, y, name="validation loss"
                )
            run.params, run.opt_state, loss = run.train_step(run.params, run.opt_state, x, y)
            run.step = step
            stats.train_loss = float(loss)  # waits for the step to finish
            stats.tokens_per_s = tokens_per_step / (time.perf_counter() - t0)
            if math.isnan(stats.compile_time_s):
                stats.compile_time_s = time.perf_counter() - t0
                log(f"jitted step compiled and run once in {stats.compile_time_s:.1f} s")
            if not math.isfinite(stats.train_loss):
                oc = cfg.optimizers[run.optimizer]
                raise FloatingPointError(
                    f"{run.optimizer}: the training loss is {stats.train_loss} at step {step}; "
                    f"lower optimizers.{run.optimizer}.learning_rate ({oc.learning_rate})"
                )
            record = {
                "step": step,
                "train_loss": stats.train_loss,
                "tokens_per_s": stats.tokens_per_s,
            }
            val = None
            if step % cfg.eval_every == 0 or step == cfg.steps:
                val = record["val_loss"] = stats.val_loss = run.evaluate()
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            progress.update(step, stats.train_loss, stats.tokens_per_s, val)
            if diagnostics is not None and step % cfg.diagnostics_every == 0:
                t_diagnostics = time.perf_counter()
                diagnostics.record(step, run.params, run.opt_state)
                diagnostics_calls.append(time.perf_counter() - t_diagnostics)
                stats.diagnostics_time_s += diagnostics_calls[-1]
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                saved.save(run.step, run.state)
    if diagnostics is not None:
        if importlib.util.find_spec("matplotlib") is None:  # an optional dependency
            log(f"no {diagnostics_log.PLOT}: pip install 'lmo-optax[examples]' for matplotlib")
        elif cluster.is_primary():
            diagnostics.plot(title=run.optimizer)
        share = stats.diagnostics_time_s / max(time.perf_counter() - t_start, 1e-9)
        later = diagnostics_calls[1:]
        log(
            f"diagnostics: {len(diagnostics_calls)} calls, {stats.diagnostics_time_s:.1f} s "
            f"({100 * share:.1f}% of the loop; the first call compiles"
            + (f", the others took {sum(later) / len(later):.3f} s each)" if later else ")")
        )
    saved.save(run.step, run.state)
    saved.seal()
    stats.wall_time_s = time.perf_counter() - t_start
    return stats


class Progress:
    """A one-line progress bar: rewritten in place on a terminal, one line every ``every``
    steps otherwise (a log file, a notebook).

    Hand-written rather than ``rich.progress``: rich shows a non-terminal only the final bar
    (and a notebook without ipywidgets nothing), where a training log needs periodic lines.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every: int = 10):
        stream = sys.stderr if stream is None else stream  # read at call time (tests swap it)
        self.total, self.label, self.stream, self.every = total, label, stream, every
        self.tty = stream.isatty()

    def update(self, step: int, loss: float, tokens_per_s: float, val: float | None) -> None:
        """Shows ``step`` of ``total`` with its loss, throughput and validation loss if any."""
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


# 5. Finish: sample and result.


def text_codec(
    tokenizer: str | None, vocab_size: int
) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]] | None:
    """(encode, decode) between text and the data's token ids, for samples; None if unknown.

    Bytes for text data (and for shards of unknown origin with a 256-token vocabulary); GPT-2's
    BPE for shards that ``lmo-optax prepare`` made with it, or of unknown origin with a
    GPT-2-sized vocabulary (llm.c's and nanoGPT's shards), when tiktoken has its files offline.
    """
    if tokenizer == "bytes" or (tokenizer is None and vocab_size == BYTE_VOCABULARY):
        return (
            lambda text: list(text.encode("utf-8")),
            lambda ids: bytes(i for i in ids if i < BYTE_VOCABULARY).decode("utf-8", "replace"),
        )
    if tokenizer == "gpt2" or (tokenizer is None and vocab_size >= prepare.GPT2_TOKENS):
        try:
            encoder = prepare.gpt2_encoder()
        except ConfigError:
            return None
        return encoder.encode_ordinary, lambda ids: encoder.decode(
            [i for i in ids if i < prepare.GPT2_TOKENS]
        )
    return None


def finish(
    run: Run, stats: LoopStats, out: pathlib.Path, log: Callable[..., None] = _silent
) -> RunResult:
    """Samples text once the run is complete and writes ``sample.txt`` and ``result.json``."""
    cfg = run.cfg
    sample = ""
    codec = text_codec(run.data.tokenizer, cfg.model.vocab_size)
    if run.step == cfg.steps and cfg.sample_bytes > 0 and codec is None:
        log(
            f"no sample: the token ids of {run.data.description} are not bytes and no tokenizer "
            "for them is available offline"
        )
    elif run.step == cfg.steps and cfg.sample_bytes > 0:
        encode, decode = codec
        prompt = np.asarray(encode(cfg.sample_prompt), np.int32)
        params = run.params
        if jax.process_count() > 1:  # every process gets the whole parameters
            params = multihost_utils.process_allgather(params, tiled=True)
        if cfg.mesh:  # sample on one device
            params = jax.device_put(params, jax.local_devices()[0])
        model = nnx.merge(run.graphdef, params)
        tokens = generate(model, jnp.asarray(prompt), cfg.sample_bytes, jax.random.key(cfg.seed))
        sample = decode(np.asarray(tokens).tolist())
        if cluster.is_primary():
            (out / "sample.txt").write_text(sample)
    result = RunResult(
        optimizer=run.optimizer,
        learning_rate=cfg.optimizers[run.optimizer].learning_rate,
        steps=run.step,
        final_train_loss=stats.train_loss,
        final_val_loss=stats.val_loss,
        wall_time_s=stats.wall_time_s,
        compile_time_s=stats.compile_time_s,
        tokens_per_s=stats.tokens_per_s,
        diagnostics_time_s=stats.diagnostics_time_s,
        sample=sample,
        out_dir=str(out),
    )
    if cluster.is_primary():
        (out / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


# Reading and reporting runs.


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, one dict per step.

    An unfinished last line (no newline: the run was killed while writing it) is left out.

    Raises:
      ConfigError: a finished line is not a JSON record with a ``step``.
    """
    lines = pathlib.Path(path).read_text().split("\n")[:-1]  # the part after the last newline
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "step" not in row:
            raise ConfigError(f"{path}, line {number}: not a metrics record: {line[:80]!r}")
        rows.append(row)
    return rows


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
    """A Markdown table of the runs' results (printed, and written to ``summary.md``).

    Hand-written rather than ``rich.table``: its Markdown box would need a captured console and
    trimmed blank lines to give this same text.
    """
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
