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

import statistics
from pathlib import Path
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np

from lmo_optax import newton_schulz

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


def measure(table: str, steps: int, inputs: dict[str, np.ndarray], repeats: int) -> dict:
    """One row: quality on each kind of input, and the time of one jitted call."""
    coeffs = newton_schulz.COEFFICIENT_TABLES[table]
    fn = jax.jit(lambda x: newton_schulz.orthogonalize(x, coeffs=coeffs, steps=steps))
    row: dict[str, Any] = {"table": table, "steps": steps}
    for kind, g64 in inputs.items():
        row[kind] = quality(g64, np.asarray(fn(jnp.asarray(g64, jnp.float32))))
    x = jnp.asarray(inputs["random"], jnp.float32)
    row["seconds"] = statistics.median(_common.time_calls(lambda: fn(x), repeats))
    row["seconds_per_step"] = row["seconds"] / steps
    g, r = row["gradient"], row["random"]
    print(
        f"{table:14s} {steps}  gradient [{g['sigma_min']:.3f}, {g['sigma_max']:.3f}] "
        f"err {g['polar_error']:.3f}  random [{r['sigma_min']:.3f}, {r['sigma_max']:.3f}] "
        f"err {r['polar_error']:.3f}  {1e3 * row['seconds']:.1f} ms",
        flush=True,
    )
    return row


def markdown_table(rows: list[dict[str, Any]], d: int) -> str:
    """The table of every row, under a line saying what was measured."""
    header = ["table", "steps", "gradient-like σ range", "error", "random σ range", "error"]
    header += ["ms", "ms/step"]
    cells = [
        [r["table"], r["steps"]]
        + [
            cell
            for kind in ("gradient", "random")
            for cell in (
                f"[{r[kind]['sigma_min']:.3f}, {r[kind]['sigma_max']:.3f}]",
                f"{r[kind]['polar_error']:.3f}",
            )
        ]
        + [f"{1e3 * r['seconds']:.1f}", f"{1e3 * r['seconds_per_step']:.1f}"]
        for r in rows
    ]
    return (
        f"Input ({d}, {4 * d}) float32; σ range and polar error over input directions with "
        f"σ ≥ {RELEVANT:g}·σ_max, against a float64 SVD. Time: one jitted call, "
        f"{jax.default_backend().upper()}.\n\n" + _common.markdown_table(header, cells)
    )


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="d = 128 instead of 512", img=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    d = 128 if args.quick else 512
    inputs = {kind: test_matrix(kind, d, seed=i) for i, kind in enumerate(("gradient", "random"))}
    rows = [
        measure(table, steps, inputs, args.repeats)
        for table in newton_schulz.COEFFICIENT_TABLES
        for steps in STEPS
    ]
    report = {
        "d": d,
        "relevant": RELEVANT,
        "default_table": newton_schulz.DEFAULT_COEFFS,
        "rows": rows,
        "table_md": markdown_table(rows, d),
    }
    print(report["table_md"])
    _common.write_report(args, "ns_quality", report, plot)
    return 0


def plot(report: dict[str, Any], path: Path) -> None:
    """Output σ range (min solid, max dashed) against steps, per table and kind of input."""
    rows = report["rows"]
    with _common.figure(path, 2, figsize=(11, 4)) as (_, axes):
        for name in dict.fromkeys(r["table"] for r in rows):
            mine = [r for r in rows if r["table"] == name]
            steps = [r["steps"] for r in mine]
            for ax, kind in zip(axes, ("gradient", "random"), strict=True):
                (line,) = ax.plot(steps, [r[kind]["sigma_min"] for r in mine], "o-", label=name)
                ax.plot(steps, [r[kind]["sigma_max"] for r in mine], "o--", color=line.get_color())
        titles = ("gradient-like (low stable rank)", "random Gaussian")
        for ax, title in zip(axes, titles, strict=True):
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xlabel("Newton–Schulz steps")
            ax.set_ylabel("output σ: min (solid), max (dashed)")
            ax.set_title(title)
            ax.legend()


if __name__ == "__main__":
    raise SystemExit(main())
