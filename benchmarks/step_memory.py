"""Memory of a whole training step of the example GPT under each optimizer, from XLA.

Compiles the example's jitted train step (forward, backward, optimizer update, apply) with
the parameters and optimizer state donated, as a training loop would, and reads
``compiled.memory_analysis()``: argument, output, aliased (donated and reused) and temporary
bytes. The peak is estimated as arguments + outputs − aliased + temporaries. Nothing runs;
shapes come from ``jax.eval_shape``, so even GPT-2 small only compiles. Full mode compiles at
the config's batch (activations dominate) and at batch 1 (a per-device micro-batch, where the
parameters and the optimizer state weigh more).

    .venv/bin/python benchmarks/step_memory.py           # the gpt2_small config (124M)
    .venv/bin/python benchmarks/step_memory.py --quick   # the tiny config
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import _common
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax

from lmo_optax.example import optimizers
from lmo_optax.example.config import OptimizerConfig, TrainConfig, load_config
from lmo_optax.example.model import GPT, loss_fn

VARIANTS = {
    "scion": ("scion", {}),
    "scion (bf16 state)": ("scion", {"state_dtype": "bfloat16"}),
    "unconstrained_scion": ("unconstrained_scion", {}),
    "adamw": ("adamw", {}),
    "muon": ("muon", {}),
}


def step_memory(cfg: TrainConfig, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """memory_analysis() of the donated train step of ``cfg``'s GPT with one optimizer."""
    oc = dataclasses.replace(cfg.optimizers.get(name, OptimizerConfig()), **overrides)
    abstract_model = nnx.eval_shape(lambda: GPT(cfg.model, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract_model)
    params = nnx.to_pure_dict(state)
    tx = optimizers.build(name, oc, cfg.steps, cfg.model.tied)
    opt_state = jax.eval_shape(tx.init, params)
    tokens = jax.ShapeDtypeStruct((cfg.batch_size, cfg.model.context), jnp.int32)

    def train_step(params: Any, opt_state: Any, inputs: jax.Array, targets: jax.Array):
        def loss_of(p: Any) -> jax.Array:
            return loss_fn(nnx.merge(graphdef, p), inputs, targets)

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, tokens, tokens)
    m = lowered.compile().memory_analysis()
    n_params = sum(x.size for x in jax.tree.leaves(params))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state))
    row = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),
        "temporaries": int(m.temp_size_in_bytes),
        "optimizer_state": int(state_bytes),
        "state_bytes_per_param": state_bytes / n_params,
        "params": int(n_params),
        "compile_s": time.perf_counter() - t0,
    }
    row["peak_estimate"] = row["arguments"] + row["outputs"] - row["aliased"] + row["temporaries"]
    return row


def mb(n: float) -> str:
    """Bytes in MB (2^20), with thousands separators."""
    return f"{n / 2**20:,.1f}"


def render(config: str, cfg: TrainConfig, rows: dict[str, dict[str, Any]]) -> str:
    """The markdown table of one batch size; adds the ratios to AdamW to ``rows``."""
    base = rows["adamw"]
    for r in rows.values():
        r["peak_ratio_to_adamw"] = r["peak_estimate"] / base["peak_estimate"]
        r["temporaries_ratio_to_adamw"] = r["temporaries"] / max(base["temporaries"], 1)
    header = ["optimizer", "state B/param", "arguments MB", "outputs MB", "aliased MB"]
    header += ["temporaries MB", "peak ≈ MB", "peak / AdamW", "temporaries / AdamW"]
    cells = [
        [label, f"{r['state_bytes_per_param']:.2f}"]
        + [mb(r[k]) for k in ("arguments", "outputs", "aliased", "temporaries", "peak_estimate")]
        + [f"{r['peak_ratio_to_adamw']:.3f}", f"{r['temporaries_ratio_to_adamw']:.3f}"]
        for label, r in rows.items()
    ]
    return (
        f"`{config}`: {base['params'] / 1e6:.2f}M parameters, batch {cfg.batch_size} × "
        f"{cfg.model.context}; params and state donated; MB = 2^20 bytes.\n\n"
        + _common.markdown_table(header, cells)
    )


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="the tiny config")
    parser.add_argument("--config", default=None, help="a config name or file (overrides --quick)")
    args = parser.parse_args(argv)
    config = args.config or ("tiny" if args.quick else "gpt2_small")
    cfg = load_config(config)
    # The config's batch, and one sequence: activations dominate the first, the parameters and
    # optimizer state weigh more in the second (a per-device micro-batch on a large mesh).
    batches = [cfg.batch_size] if args.quick else [cfg.batch_size, 1]
    tables, per_batch = [], {}
    for batch in batches:
        run_cfg = dataclasses.replace(cfg, batch_size=batch)
        rows = {}
        for label, (name, overrides) in VARIANTS.items():
            r = rows[label] = step_memory(run_cfg, name, overrides)
            print(
                f"batch {batch}: {label:22s} args {mb(r['arguments'])} MB, temps "
                f"{mb(r['temporaries'])} MB, peak ≈ {mb(r['peak_estimate'])} MB "
                f"({r['compile_s']:.0f} s to compile)",
                flush=True,
            )
        tables.append(render(Path(config).name, run_cfg, rows))
        per_batch[str(batch)] = rows
    report = {
        "config": Path(config).name,
        "rows": per_batch[str(cfg.batch_size)],  # at the config's batch size
        "rows_by_batch": per_batch,
        "table_md": "\n\n".join(tables),
    }
    print(report["table_md"])
    _common.write_report(args, "step_memory", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
