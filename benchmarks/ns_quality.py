"""Newton–Schulz quality against cost: every coefficient table at 3–8 steps.

For each table of ``lmo_optax.newton_schulz`` and each step count, orthogonalizes float32
test matrices with ``lmo_optax.orthogonalize`` and compares with a float64 SVD of the input:

* the range [min, max] of the output's singular values, over the singular directions that
  matter: those of the input with σ ≥ 1e-3·σ_max (the interval the tables are designed for;
  smaller ones are noise, and their outputs stay near zero by design);
* the relative Frobenius error to the exact polar factor U Vᵀ over those directions;
* the time of one jitted orthogonalization, and per Newton–Schulz step.

Two kinds of input, both (d, 4d) like a GPT MLP kernel (transposed to wide):

* ``gradient``: low stable rank, like the averaged gradients an optimizer sees — singular
  values decaying as i^-1.5 (stable rank ‖G‖²_F/‖G‖²₂ ≈ 1.3), random singular vectors;
* ``random``: i.i.d. Gaussian entries (Marchenko–Pastur spectrum, stable rank ≈ d/4).

    .venv/bin/python benchmarks/ns_quality.py           # d = 512: (512, 2048), ~3 min on CPU
    .venv/bin/python benchmarks/ns_quality.py --quick   # d = 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmo_optax import newton_schulz

HERE = Path(__file__).resolve().parent
STEPS = (3, 4, 5, 6, 7, 8)
RELEVANT = 1e-3  # singular values below RELEVANT·σ_max are ignored (the tables' interval)


def test_matrix(kind: str, d: int, seed: int) -> np.ndarray:
    """A (d, 4d) float64 matrix of the given kind."""
    rng = np.random.default_rng(seed)
    rows, cols = d, 4 * d
    if kind == "random":
        return rng.standard_normal((rows, cols))
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, rows)))
    s = np.arange(1, rows + 1, dtype=np.float64) ** -1.5
    return (u * s) @ v.T


def quality(g64: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Output singular values and polar error over the input's relevant directions."""
    u, s, vt = np.linalg.svd(g64, full_matrices=False)
    keep = s >= RELEVANT * s[0]
    u, vt = u[:, keep], vt[keep]
    o = out.astype(np.float64)
    # Singular values of the output restricted to the input's relevant singular directions.
    restricted = np.linalg.svd(u.T @ o @ vt.T, compute_uv=False)
    polar = u @ vt
    projected = u @ (u.T @ o @ vt.T) @ vt
    error = np.linalg.norm(projected - polar) / np.linalg.norm(polar)
    return {
        "sigma_min": float(restricted.min()),
        "sigma_max": float(restricted.max()),
        "polar_error": float(error),
        "relevant_directions": int(keep.sum()),
    }


def time_call(fn: Any, x: jax.Array, repeats: int) -> float:
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="d = 128 instead of 512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--img", default=None, help="folder for the plot (default docs/img)")
    args = parser.parse_args(argv)
    d = 128 if args.quick else 512

    inputs = {kind: test_matrix(kind, d, seed=i) for i, kind in enumerate(("gradient", "random"))}
    rows = []
    for name, table in newton_schulz.COEFFICIENT_TABLES.items():
        for steps in STEPS:
            fn = jax.jit(
                lambda x, t=table, n=steps: newton_schulz.orthogonalize(x, coeffs=t, steps=n)
            )
            row: dict[str, Any] = {"table": name, "steps": steps}
            for kind, g64 in inputs.items():
                x = jnp.asarray(g64, jnp.float32)
                out = np.asarray(fn(x))
                row[kind] = quality(g64, out)
            seconds = time_call(fn, jnp.asarray(inputs["random"], jnp.float32), args.repeats)
            row["seconds"] = seconds
            row["seconds_per_step"] = seconds / steps
            rows.append(row)
            print(
                f"{name:14s} {steps}  gradient [{row['gradient']['sigma_min']:.3f}, "
                f"{row['gradient']['sigma_max']:.3f}] err {row['gradient']['polar_error']:.3f}  "
                f"random [{row['random']['sigma_min']:.3f}, {row['random']['sigma_max']:.3f}] "
                f"err {row['random']['polar_error']:.3f}  {1e3 * seconds:.1f} ms",
                flush=True,
            )

    lines = [
        f"Input ({d}, {4 * d}) float32; σ range and polar error over input directions with "
        f"σ ≥ {RELEVANT:g}·σ_max, against a float64 SVD. Time: one jitted call, CPU.\n",
        "| table | steps | gradient-like σ range | error | random σ range | error | ms | ms/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g, x = r["gradient"], r["random"]
        lines.append(
            f"| {r['table']} | {r['steps']} | [{g['sigma_min']:.3f}, {g['sigma_max']:.3f}] "
            f"| {g['polar_error']:.3f} | [{x['sigma_min']:.3f}, {x['sigma_max']:.3f}] "
            f"| {x['polar_error']:.3f} | {1e3 * r['seconds']:.1f} "
            f"| {1e3 * r['seconds_per_step']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    report = {
        "benchmark": "ns_quality",
        "d": d,
        "relevant": RELEVANT,
        "jax": jax.__version__,
        "rows": rows,
        "table_md": table,
    }
    name = "ns_quality_quick.json" if args.quick else "ns_quality.json"
    out = Path(args.out or HERE / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    img = Path(args.img or HERE.parent / "docs" / "img")
    plot(rows, img / ("ns_quality_quick.png" if args.quick else "ns_quality.png"))
    print(f"wrote {out}")
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["table"] for r in rows):
        mine = [r for r in rows if r["table"] == name]
        steps = [r["steps"] for r in mine]
        for ax, kind in zip(axes, ("gradient", "random"), strict=True):
            lo = [r[kind]["sigma_min"] for r in mine]
            hi = [r[kind]["sigma_max"] for r in mine]
            (line,) = ax.plot(steps, lo, "o-", label=name)
            ax.plot(steps, hi, "o--", color=line.get_color())
    for ax, kind in zip(axes, ("gradient-like (low stable rank)", "random Gaussian"), strict=True):
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel("Newton–Schulz steps")
        ax.set_ylabel("output σ: min (solid), max (dashed)")
        ax.set_title(kind)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
