"""Records ``lmo_optax.diagnostics`` during training: ``diagnostics.jsonl`` and one PNG per run.

Each call of :meth:`DiagnosticsLog.record` appends one JSON line,
``{"step": 100, "params": {"blocks/0/mlp/fc/kernel": {"norm_over_radius": 0.98, ...}, ...}}``;
:meth:`DiagnosticsLog.plot` draws ``diagnostics.png`` from the file: norm/ρ per parameter over
the steps, the dual norms and the Newton–Schulz errors (``docs/algorithm.md`` §5.9).
matplotlib (the ``examples`` extra) is imported only by :meth:`plot`.

>>> import tempfile, jax, jax.numpy as jnp, optax, lmo_optax
>>> params = {"w": jnp.eye(4), "b": jnp.zeros(4)}
>>> tx = lmo_optax.scion(0.1, "auto")
>>> state = tx.init(params)
>>> updates, state = tx.update({"w": jnp.ones((4, 4)), "b": jnp.ones(4)}, state, params)
>>> folder = tempfile.mkdtemp()
>>> log = DiagnosticsLog(folder, "auto")
>>> values = log.record(1, optax.apply_updates(params, updates), state)
>>> sorted(values["w"]), log.read()[0]["params"] == values
(['dual_norm', 'norm_over_radius', 'ns_error'], True)
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import lmo_optax

FILENAME = "diagnostics.jsonl"
PLOT = "diagnostics.png"
MAX_LEGEND = 32  # more parameters than this: no legend (read the values in the JSON lines)
_PANELS = (
    ("norm_over_radius", "‖x‖/ρ", False),
    ("dual_norm", "dual norm ‖d‖*", True),
    ("ns_error", "NS error ‖OOᵀ − I‖_F/√m", True),
)


class DiagnosticsLog:
    """Appends the diagnostics of a run to ``out_dir/diagnostics.jsonl`` and plots them.

    Args:
      out_dir: the run's folder (created if missing).
      rules: the optimizer's rules (a preset name or a sequence of rules).
      **options: the optimizer's settings that the diagnostics use (``ns_coeffs``,
        ``ns_steps``, ``ns_dtype``, ``radius_scale``) and ``exact``/``power_iterations``
        (see :func:`lmo_optax.diagnostics`).
    """

    def __init__(self, out_dir: str | pathlib.Path, rules: Any, **options: Any) -> None:
        self.out_dir = pathlib.Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / FILENAME
        rules = rules if isinstance(rules, str) else tuple(rules)  # hashable: static under jit
        radius_scale = options.pop("radius_scale", 1.0)
        diagnose = functools.partial(lmo_optax.diagnostics, rules=rules, **options)
        self._diagnose = jax.jit(
            lambda params, average: diagnose(
                params, averaged_gradients=average, radius_scale=radius_scale
            )
        )

    def record(self, step: int, params: Any, opt_state: Any) -> dict[str, dict[str, float]]:
        """Computes the diagnostics of ``params`` and the average in ``opt_state`` (after the
        step), appends them as one line and returns them as floats.

        A state without an average (``gradient_weight=1``) gives ``norm_over_radius`` only.
        """
        try:
            average = lmo_optax.average_from_state(opt_state)
        except ValueError:
            average = None
        result = self._diagnose(params, average)
        values = {
            path: {key: float(np.asarray(v)) for key, v in entry.items()}
            for path, entry in jax.device_get(result).items()
        }
        if jax.process_index() == 0:  # one line per step in a multi-process run
            with self.path.open("a") as f:
                f.write(json.dumps({"step": int(step), "params": values}) + "\n")
        return values

    def read(self) -> list[dict[str, Any]]:
        """The recorded lines in step order; a step recorded twice (a resumed run) keeps its
        last line."""
        if not self.path.exists():
            return []
        by_step = {}
        for line in self.path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_step[row["step"]] = row
        return [by_step[s] for s in sorted(by_step)]

    def plot(self, path: str | pathlib.Path | None = None, title: str = "") -> pathlib.Path:
        """Draws the recorded values (one line per parameter, a panel per quantity) into a
        PNG (default ``out_dir/diagnostics.png``) and returns its path."""
        try:
            from matplotlib.figure import Figure  # the examples extra; no pyplot state
        except ImportError as e:
            raise ImportError(
                f"plotting {FILENAME} needs matplotlib: pip install 'lmo-optax[examples]'"
            ) from e

        rows = self.read()
        steps = [row["step"] for row in rows]
        names = sorted({p for row in rows for p in row["params"]}, key=_natural_key)
        fig = Figure(figsize=(15, 4.5), layout="constrained")
        axes = fig.subplots(1, len(_PANELS))
        for ax, (key, label, log_scale) in zip(axes, _PANELS):
            for name in names:
                ys = [row["params"].get(name, {}).get(key, math.nan) for row in rows]
                if not all(math.isnan(y) for y in ys):
                    ax.plot(steps, ys, label=name, linewidth=1)
            if key == "norm_over_radius":
                ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            if log_scale and ax.has_data():
                ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_title(label)
        if 0 < len(names) <= MAX_LEGEND:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right", fontsize="x-small")
        if title:
            fig.suptitle(title)
        out = pathlib.Path(path) if path is not None else self.out_dir / PLOT
        fig.savefig(out, dpi=100)
        return out


def _natural_key(path: str) -> Sequence[Any]:
    return lmo_optax.rules._natural_key(path)
