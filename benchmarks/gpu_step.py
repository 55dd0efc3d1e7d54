"""Throughput of the example's whole jitted train step on an accelerator, per optimizer.

On synthetic tokens, the GPT-2 small shape (124M parameters: vocabulary 50304, context 1024,
width 768, 12 scanned layers, tied embedding, bfloat16 compute with float32 parameters) is
trained with the jitted, donated step (forward, backward, update) under AdamW, Muon and Scion.
For each: tokens per second, the optimizer's share of the step (the step's time minus that of
the same step with the optimizer replaced by plain SGD, whose update is one multiply-add), and
the process's peak device memory after its runs (``device.memory_stats()``, where the backend
has it; the optimizers run in the order listed, so each peak includes those before).

Full mode needs a GPU: on a CPU backend it writes a report that says it was not measured.

    .venv/bin/python benchmarks/gpu_step.py           # GPT-2 small on the GPU
    .venv/bin/python benchmarks/gpu_step.py --quick   # a tiny GPT on any backend (CI)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import _common
import _gpt2
import flax.nnx as nnx
import jax
import optax

from lmo_optax.example import optimizers
from lmo_optax.example.config import OptimizerConfig
from lmo_optax.example.model import GPT, GPTConfig, loss_fn

OPTIMIZERS = {
    "adamw": OptimizerConfig(learning_rate=6e-4),
    "muon": OptimizerConfig(learning_rate=0.02),
    "scion": OptimizerConfig(learning_rate=0.02, hidden_radius=50.0, head_radius=3000.0),
}
_SHAPE = _gpt2.SHAPES["124m"]
FULL = GPTConfig(
    vocab_size=_SHAPE["vocab"],
    context=_SHAPE["context"],
    width=_SHAPE["width"],
    depth=_SHAPE["layers"],
    heads=12,
    activation="gelu",
    positions="learned",
    tied=True,
    scan_layers=True,
    compute_dtype="bfloat16",
)
QUICK = GPTConfig(
    context=32, width=64, depth=2, heads=2, tied=True, scan_layers=True, compute_dtype="bfloat16"
)
FULL_BATCH, QUICK_BATCH = 8, 4
FULL_REPEATS, QUICK_REPEATS = 10, 3


def step_function(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation | None
) -> Callable[..., Any]:
    """The donated train step; with ``tx=None`` the update is plain SGD (no optimizer work)."""

    def step(params: Any, opt_state: Any, tokens: jax.Array) -> tuple[Any, Any, jax.Array]:
        def loss_of(p: Any) -> jax.Array:
            return loss_fn(nnx.merge(graphdef, p), tokens[:, :-1], tokens[:, 1:])

        loss, grads = jax.value_and_grad(loss_of)(params)
        if tx is None:
            return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), opt_state, loss
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def time_step(
    model: GPTConfig, tx: optax.GradientTransformation | None, batch: int, repeats: int
) -> float:
    """The median seconds of one step after a warm-up (compiling) call."""
    graphdef, state = nnx.split(GPT(model, nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    opt_state = tx.init(params) if tx is not None else ()
    step = step_function(graphdef, tx)
    tokens = jax.random.randint(jax.random.key(1), (batch, model.context + 1), 0, model.vocab_size)
    carry = [params, opt_state]

    def call() -> jax.Array:
        carry[0], carry[1], loss = step(carry[0], carry[1], tokens)
        return loss

    jax.block_until_ready(call())
    return statistics.median(_common.time_calls(call, repeats))


def peak_memory() -> int | None:
    """The process's peak bytes on the first device, where the backend reports it."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(model: GPTConfig, batch: int, repeats: int) -> dict[str, Any]:
    """Per optimizer: step time, tokens/s, the optimizer's share of the step, peak memory."""
    tokens = batch * model.context
    sgd = time_step(model, None, batch, repeats)
    rows = {}
    for name, oc in OPTIMIZERS.items():
        tx = optimizers.build(name, oc, 1000, model.tied)
        seconds = time_step(model, tx, batch, repeats)
        rows[name] = {
            "step_s": seconds,
            "tokens_per_s": tokens / seconds,
            "optimizer_s": seconds - sgd,
            "optimizer_share": (seconds - sgd) / seconds,
            "peak_bytes": peak_memory(),
        }
    return {"sgd_step_s": sgd, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = _common.parser(__doc__, quick_help="a 2-layer width-64 GPT, 3 timed steps").parse_args(
        argv
    )
    model, batch, repeats = (
        (QUICK, QUICK_BATCH, QUICK_REPEATS) if args.quick else (FULL, FULL_BATCH, FULL_REPEATS)
    )
    backend = jax.default_backend()
    report: dict[str, Any] = {
        "backend": backend,
        "model": {
            "vocab_size": model.vocab_size,
            "context": model.context,
            "width": model.width,
            "depth": model.depth,
            "compute_dtype": model.compute_dtype,
            "batch": batch,
        },
        "measured": args.quick or backend != "cpu",
    }
    if report["measured"]:
        report.update(measure(model, batch, repeats))
    _common.write_report(args, "gpu_step", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
