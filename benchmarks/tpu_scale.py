"""The largest GPT whose training step fits a TPU slice, Scion against AdamW, read off compiles.

For each slice (v5e-16, v5e-256, v5p-16: TPU v5e slices of 16 and 256 chips, and a TPU v5p
slice of 8 chips, whose name counts its 16 TensorCores) and each optimizer, the example's whole
train step (forward, backward, update; parameters and optimizer state donated) is compiled by
the real TPU compiler for the slice without a TPU (``lmo_optax.example.aot``, libtpu from
``pip install "lmo-optax[tpu-aot]"``), and the bytes it needs per chip
(``compiled.memory_analysis()``: arguments, outputs and temporaries, donated buffers once) are
compared with the chip's HBM (the compiler itself refuses a program whose temporaries exceed
it). A bisection over one family of shapes finds the largest that fits: width 512·k, depth 4k,
4k heads of 128 (k = 8: width 4096, 32 layers), context 2048, GPT-2's vocabulary (50304,
untied), bfloat16 activations and float32 parameters, blocks under ``nnx.scan`` and
rematerialized (``model.remat``), one sequence per ``data`` shard. Layout: FSDP over ``data``
and Megatron-style tensor parallelism over ``model`` (``lmo_optax.example.parallel``), 4 ways,
which divides every shape's heads.

Optimizer state per parameter: AdamW keeps two float32 moments (8 bytes), Scion one float32
average of the gradient (4 bytes), Scion with ``state_dtype="bfloat16"`` one bfloat16 average
(2 bytes); parameters and gradients add 4 bytes each to all three.

    .venv/bin/python benchmarks/tpu_scale.py            # three slices, Scion and AdamW
    .venv/bin/python benchmarks/tpu_scale.py --quick    # v5e:2x4, a small range of shapes
    .venv/bin/python benchmarks/tpu_scale.py --slices v5e-256  # one slice; keeps the others'

Each search is written to the report as it finishes (the v5e-256 compiles take minutes each).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from typing import Any

import _common

FULL = {
    "slices": (
        ("v5e-16", "v5e:4x4", "data=4,model=4"),
        ("v5p-16", "v5p:2x2x2", "data=2,model=4"),
        ("v5e-256", "v5e:16x16", "data=64,model=4"),
    ),
    "k_range": (1, 48),
}
QUICK = {"slices": (("v5e-8", "v5e:2x4", "data=2,model=4"),), "k_range": (1, 2)}
VARIANTS = {  # label: (optimizer, settings changed from the tiny config's)
    "scion": ("scion", {}),
    "scion, bfloat16 state": ("scion", {"state_dtype": "bfloat16"}),
    "adamw": ("adamw", {}),
}
CONTEXT = 2048
VOCAB = 50304


def shape(k: int) -> dict[str, int]:
    """The k-th shape of the family: width 512·k, depth 4k, heads of 128."""
    return {"width": 512 * k, "depth": 4 * k, "heads": 4 * k}


def parameters(k: int) -> int:
    """Parameters of the k-th shape (embedding, head, blocks; norms have no gains)."""
    s = shape(k)
    width = s["width"]
    block = 4 * width * width + 2 * 4 * width * width  # attention, MLP (ratio 4)
    return 2 * VOCAB * width + s["depth"] * block


def config(k: int, data: int, variant: str = "scion") -> Any:
    from lmo_optax.example import configs
    from lmo_optax.example.config import load_config
    from lmo_optax.example.model import GPTConfig

    base = load_config(str(configs.path_of("tiny")))
    model = GPTConfig(
        vocab_size=VOCAB,
        context=CONTEXT,
        scan_layers=True,
        remat=True,
        compute_dtype="bfloat16",
        **shape(k),
    )
    optimizer, settings = VARIANTS[variant]
    optimizers = dict(base.optimizers)
    optimizers[optimizer] = dataclasses.replace(optimizers[optimizer], **settings)
    return dataclasses.replace(base, model=model, batch_size=data, mesh="", optimizers=optimizers)


def fits(
    k: int, variant: str, topology: str, mesh_text: str, cache: dict[Any, Any]
) -> dict[str, Any]:
    """Compiles the k-th shape's step and says whether it fits (memoized)."""
    key = (k, variant, topology)
    if key in cache:
        return cache[key]
    from lmo_optax.example import aot
    from lmo_optax.example.config import mesh_axes

    devices = aot.topology_devices(topology)
    mesh = aot.mesh_on(devices, mesh_text)
    hbm = aot.hbm_per_device(topology, devices)
    cfg = config(k, mesh_axes(mesh_text)["data"], variant)
    t0 = time.perf_counter()
    try:
        run = aot.compile_step(cfg, VARIANTS[variant][0], mesh, hbm, update_alone=False)
        entry = {
            "k": k,
            **shape(k),
            "parameters": parameters(k),
            "bytes_per_chip": run.per_device_bytes["total"],
            "fits": run.fits,
        }
    except Exception as e:  # the compiler itself may refuse a program too large for the chip
        entry = {"k": k, **shape(k), "parameters": parameters(k), "fits": False}
        entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    entry["compile_s"] = time.perf_counter() - t0
    size = entry.get("bytes_per_chip")
    print(
        f"  {topology} {variant:21s} k={k:2d} (width {entry['width']}, depth {entry['depth']},"
        f" {entry['parameters'] / 1e9:.2f} B params): "
        + (f"{size / 2**30:.2f} GiB per chip" if size is not None else entry["error"])
        + f" of {hbm / 2**30:.0f} → {'fits' if entry['fits'] else 'does not fit'}"
        f" ({entry['compile_s']:.0f} s)",
        flush=True,
    )
    cache[key] = entry
    return entry


def largest(
    variant: str, topology: str, mesh_text: str, k_range: tuple[int, int]
) -> dict[str, Any]:
    """Bisection for the largest k in ``k_range`` that fits (bytes grow with k)."""
    cache: dict[Any, Any] = {}
    low, high = k_range
    if not fits(low, variant, topology, mesh_text, cache)["fits"]:
        return {"largest": None, "tried": sorted(cache.values(), key=lambda e: e["k"])}
    high += 1  # the first k known not to fit, or past the range
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle, variant, topology, mesh_text, cache)["fits"]:
            low = middle
        else:
            high = middle
    return {
        "largest": cache[(low, variant, topology)],
        "range_end_fits": low == k_range[1],
        "tried": sorted(cache.values(), key=lambda e: e["k"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="v5e:2x4, k from 1 to 2")
    parser.add_argument(
        "--slices",
        default="",
        help="comma-separated slice names to search (default: all); the report keeps the "
        "results of the others from its previous run",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if importlib.util.find_spec("libtpu") is None:
        _common.write_report(
            args, "tpu_scale", {"measured": False, "reason": "libtpu is not installed"}
        )
        print('not measured: libtpu is not installed (pip install "lmo-optax[tpu-aot]")')
        return 0
    sizes = QUICK if args.quick else FULL
    names = [entry[0] for entry in sizes["slices"]]
    chosen = args.slices.split(",") if args.slices else names
    if unknown := set(chosen) - set(names):
        parser.error(f"--slices: unknown {sorted(unknown)}; choose from {names}")
    kept = []
    previous = _common.result_path(args.results, "tpu_scale", args.quick)
    if args.slices and previous.exists():
        old = json.loads(previous.read_text())
        kept = [e for e in old.get("results", []) if e["slice"] not in chosen]
    report: dict[str, Any] = {
        "measured": True,
        "context": CONTEXT,
        "vocab": VOCAB,
        "family": "width 512k, depth 4k, heads 4k (head size 128)",
        "slices": [list(entry) for entry in sizes["slices"]],
        "complete": False,
        "results": kept,
    }
    for name, topology, mesh_text in sizes["slices"]:
        if name not in chosen:
            continue
        from lmo_optax.example import aot

        devices = aot.topology_devices(topology)
        for variant in VARIANTS:
            print(f"{name} ({topology}, mesh {mesh_text}): {variant}", flush=True)
            found = largest(variant, topology, mesh_text, sizes["k_range"])
            report["results"].append(
                {
                    "slice": name,
                    "topology": topology,
                    "chips": aot.chips(devices),
                    "hbm_bytes_per_chip": aot.HBM_BYTES[aot.generation(topology)],
                    "mesh": mesh_text,
                    "optimizer": variant,
                    **found,
                }
            )
            _common.write_report(args, "tpu_scale", report)  # after each search: hours in all
    searched = {e["slice"] for e in report["results"]}
    report["complete"] = all(name in searched for name in names)
    report["results"].sort(
        key=lambda e: (names.index(e["slice"]), list(VARIANTS).index(e["optimizer"]))
    )
    _common.write_report(args, "tpu_scale", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
