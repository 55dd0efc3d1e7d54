"""The largest GPT whose training step fits a TPU slice, Scion against AdamW, read off compiles.

For each slice (v5e-16, v5e-256, v5p-16: TPU v5e slices of 16 and 256 chips, and a TPU v5p
slice of 8 chips, whose name counts its 16 TensorCores) and each optimizer, the example's whole
train step (forward, backward, update; parameters and optimizer state donated) is compiled by
the real TPU compiler for the slice without a TPU (``lmo_optax.example.aot``, libtpu from
``pip install "lmo-optax[tpu-aot]"``), and the bytes it needs per chip
(``compiled.memory_analysis()``: arguments, outputs and temporaries, donated buffers once) are
compared with the chip's HBM (the compiler itself refuses a program whose temporaries exceed
it). A search over one family of shapes finds the widest that fits: width 512·k, depth 4k,
4k heads of 128 (k = 8: width 4096, 32 layers); a second, at that width, the deepest (up to
8k layers). Each search starts from a guess (``width_guess``, ``depth_guess``; a slice's
later optimizers start at the width found for its first), steps up or down until the answer
changes and bisects. On v5e a shape that does not fit is mostly refused
in seconds, so a good guess costs one long compile; on v5p, and for some v5e-256 shapes, the
refusal comes only after a full compile. Every shape has context 2048, GPT-2's vocabulary (50304,
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
    .venv/bin/python benchmarks/tpu_scale.py --slices v5e-256 --variants scion,adamw
    .venv/bin/python benchmarks/tpu_scale.py --resume   # reuse the last report's compiles

Each search is written to the report as it finishes (the v5e-256 compiles take minutes each).
"""

from __future__ import annotations

import dataclasses
import json
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


def shape(k: int, depth: int | None = None) -> dict[str, int]:
    """The k-th width of the family, 512·k with 4k heads of 128, at ``depth`` (default 4k)."""
    return {"width": 512 * k, "depth": 4 * k if depth is None else depth, "heads": 4 * k}


def parameters(k: int, depth: int | None = None) -> int:
    """Parameters of a shape (embedding, head, blocks; norms have no gains)."""
    s = shape(k, depth)
    width = s["width"]
    block = 4 * width * width + 2 * 4 * width * width  # attention, MLP (ratio 4)
    return 2 * VOCAB * width + s["depth"] * block


def config(k: int, data: int, variant: str = "scion", depth: int | None = None) -> Any:
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
        **shape(k, depth),
    )
    optimizer, settings = VARIANTS[variant]
    optimizers = dict(base.optimizers)
    optimizers[optimizer] = dataclasses.replace(optimizers[optimizer], **settings)
    return dataclasses.replace(base, model=model, batch_size=data, mesh="", optimizers=optimizers)


class Search:
    """Compiles shapes of one slice and variant, each once (``tried`` may hold earlier
    compiles of the same code, read back from a report)."""

    def __init__(self, variant: str, topology: str, mesh_text: str, tried: list[dict]):
        self.variant, self.topology, self.mesh_text = variant, topology, mesh_text
        self.tried = {(e["k"], e["depth"]): e for e in tried}

    def fits(self, k: int, depth: int | None = None) -> bool:
        """Whether the step of width 512·k and ``depth`` (default 4k) fits the chip's HBM."""
        depth = 4 * k if depth is None else depth
        if (k, depth) not in self.tried:
            self.tried[(k, depth)] = self._compile(k, depth)
        return self.tried[(k, depth)]["fits"]

    def _compile(self, k: int, depth: int) -> dict[str, Any]:
        from lmo_optax.example import aot
        from lmo_optax.example.config import mesh_axes

        devices = aot.topology_devices(self.topology)
        mesh = aot.mesh_on(devices, self.mesh_text)
        hbm = aot.hbm_per_device(self.topology, devices)
        cfg = config(k, mesh_axes(self.mesh_text)["data"], self.variant, depth)
        entry: dict[str, Any] = {"k": k, **shape(k, depth), "parameters": parameters(k, depth)}
        t0 = time.perf_counter()
        try:
            run = aot.compile_step(cfg, VARIANTS[self.variant][0], mesh, hbm, update_alone=False)
            entry.update(
                bytes_per_chip=run.per_device_bytes["total"],
                bytes=run.per_device_bytes,  # arguments, temporaries, ...
                fits=run.fits,
            )
        except Exception as e:  # the compiler refuses a program whose temporaries exceed HBM
            entry.update(fits=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        entry["compile_s"] = time.perf_counter() - t0
        size = entry.get("bytes_per_chip")
        print(
            f"  {self.topology} {self.variant:21s} width {entry['width']:5d} depth "
            f"{depth:3d} ({entry['parameters'] / 1e9:.2f} B params): "
            + (f"{size / 2**30:.2f} GiB per chip" if size is not None else entry["error"])
            + f" of {hbm / 2**30:.0f} → {'fits' if entry['fits'] else 'does not fit'}"
            f" ({entry['compile_s']:.0f} s)",
            flush=True,
        )
        return entry


def bisect(fits: Any, low: int, high: int) -> int:
    """The largest n in [low, high) with fits(n), given fits(low), not fits(high), and that
    fits is monotone."""
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def search_from(fits: Any, guess: int, low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n) (None if not even low fits), starting at
    ``guess`` and galloping (steps 1, 2, 4, ...) up or down before bisecting.

    A good guess costs about two compiles: the guess, which fits, and the next, which does
    not (often refused within seconds, where a compile that fits takes minutes).
    """
    guess = min(max(guess, low), high)
    if fits(guess):
        known, step = guess, 1
        while known < high:
            trial = min(known + step, high)
            if not fits(trial):
                return bisect(fits, known, trial)
            known, step = trial, 2 * step
        return known
    refused, step = guess, 1
    while refused > low:
        trial = max(refused - step, low)
        if fits(trial):
            return bisect(fits, trial, refused)
        refused, step = trial, 2 * step
    return None


def width_guess(variant: str, chips: int, hbm: int, k_range: tuple[int, int]) -> int:
    """Where the width search starts: the largest k whose parameters, at the variant's bytes
    per parameter (parameters, gradients and state), take 60 % of the slice's memory. Only
    a starting point: what fits is decided by the compiles."""
    per_parameter = {"scion": 12, "scion, bfloat16 state": 10, "adamw": 16}[variant]
    low, high = k_range
    budget = 0.6 * hbm * chips
    fitting = [k for k in range(low, high + 1) if parameters(k) * per_parameter <= budget]
    return fitting[-1] if fitting else low


def depth_guess(entry: dict[str, Any], hbm: int) -> int:
    """Where the depth search starts at a width that fits at depth 4k: the blocks' share of
    the measured bytes per chip, per block, extended until the chip's memory is used."""
    k, depth, used = entry["k"], entry["depth"], entry["bytes_per_chip"]
    blocks = entry["parameters"] - parameters(k, 0)
    per_block = used * blocks / entry["parameters"] / depth
    return depth + int((hbm - used) // per_block)


def largest(search: Search, k_range: tuple[int, int], guess: int, hbm: int) -> dict[str, Any]:
    """The largest shape that fits: first the width (depth 4k), then, at that width, the depth
    (up to twice as deep)."""
    low, high = k_range
    result: dict[str, Any] = {"largest": None}
    k = search_from(search.fits, guess, low, high)
    if k is not None:
        start = depth_guess(search.tried[(k, 4 * k)], hbm)
        depth = search_from(lambda d: search.fits(k, d), start, 4 * k, 8 * k)
        assert depth is not None  # depth 4k fits
        result = {
            "largest": search.tried[(k, depth)],
            "range_end_fits": k == high,
            "depth_end_fits": depth == 8 * k,
        }
    tried = sorted(search.tried.values(), key=lambda e: (e["k"], e["depth"]))
    return {**result, "tried": tried}


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="v5e:2x4, k from 1 to 2")
    parser.add_argument(
        "--slices",
        default="",
        help="comma-separated slice names to search (default: all); the report keeps the "
        "results of the others from its previous run",
    )
    parser.add_argument(
        "--variants",
        default="",
        help=f"comma-separated subset of {', '.join(VARIANTS)} (default: all); the report "
        "keeps the others' results from its previous run",
    )
    parser.add_argument(
        "--width-guess",
        type=int,
        default=0,
        help="k where each width search starts (default: ``width_guess``, then the width found "
        "for the slice's first optimizer)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the compiles of the previous report's searches (same code) instead of "
        "compiling those shapes again",
    )
    args = parser.parse_args(argv)
    if _common.libtpu_missing(args, "tpu_scale"):
        return 0
    sizes = QUICK if args.quick else FULL
    names = [entry[0] for entry in sizes["slices"]]
    chosen = args.slices.split(",") if args.slices else names
    if unknown := set(chosen) - set(names):
        parser.error(f"--slices: unknown {sorted(unknown)}; choose from {names}")
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    kept, earlier = [], {}
    previous = _common.result_path(args.results, "tpu_scale", args.quick)
    if previous.exists():
        old = json.loads(previous.read_text())
        kept = [
            e
            for e in old.get("results", [])
            if e["slice"] not in chosen or e["optimizer"] not in variants
        ]
        earlier = {(e["slice"], e["optimizer"]): e["tried"] for e in old.get("results", [])}
    if not args.resume:
        earlier = {}
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
        hbm = aot.hbm_per_device(topology, devices)
        answer = None  # the width found for an earlier variant: the next search starts there
        for variant in variants:
            print(f"{name} ({topology}, mesh {mesh_text}): {variant}", flush=True)
            search = Search(variant, topology, mesh_text, earlier.get((name, variant), []))
            guess = (
                args.width_guess
                or answer
                or width_guess(variant, len(devices), hbm, sizes["k_range"])
            )
            found = largest(search, sizes["k_range"], guess, hbm)
            answer = found["largest"]["k"] if found["largest"] else answer
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
    searched = {(e["slice"], e["optimizer"]) for e in report["results"]}
    report["complete"] = all((n, v) in searched for n in names for v in VARIANTS)
    report["results"].sort(
        key=lambda e: (names.index(e["slice"]), list(VARIANTS).index(e["optimizer"]))
    )
    _common.write_report(args, "tpu_scale", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
