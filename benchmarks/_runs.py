"""Training runs of the example GPT for the benchmark sweeps, cached on disk.

Each run is identified by a name; its validation curve and final losses are stored as JSON
under a cache folder, so an interrupted sweep resumes where it stopped and several processes
can share a sweep (each run is claimed by creating its file first). A record also holds a
fingerprint of the settings that made it; when they change, the run is trained again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lmo_optax.example.config import TrainConfig
from lmo_optax.example.train import read_metrics, train


def add_optimizers_option(parser: argparse.ArgumentParser, optimizers: list[str]) -> None:
    """``--optimizers a,b``: the part of a sweep this process runs (default: all of it)."""
    parser.add_argument(
        "--optimizers",
        type=lambda text: [o.strip() for o in text.split(",") if o.strip()],
        default=list(optimizers),
        help=f"comma-separated subset of {','.join(optimizers)} (default: all)",
    )


def is_partial(chosen: list[str], optimizers: list[str]) -> bool:
    """Whether this process runs only part of a sweep (then it writes no report)."""
    if set(chosen) == set(optimizers):
        return False
    print("partial sweep done; run again with every optimizer for the report")
    return True


def run_cached(
    cfg: TrainConfig, optimizer: str, name: str, cache: Path, *, wait: bool = True
) -> dict[str, Any] | None:
    """Trains (or loads) one run; None if another process holds it and ``wait`` is False."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.json"
    claim = cache / f"{name}.running"
    fp = fingerprint(cfg, optimizer)
    while True:
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("fingerprint") == fp:
                return record
            path.unlink()  # the settings changed since: train again
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            break
        except FileExistsError:
            if not wait:
                return None
            time.sleep(5)
    try:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = train(
                    dataclasses.replace(cfg, sample_bytes=0), optimizer, tmp, verbose=False
                )
                metrics = read_metrics(Path(tmp) / "metrics.jsonl")
                diverged = False
            except FloatingPointError:
                metrics, result, diverged = [], None, True
        record = {
            "name": name,
            "fingerprint": fp,
            "optimizer": optimizer,
            "learning_rate": cfg.optimizers[optimizer].learning_rate,
            "seed": cfg.seed,
            "width": cfg.model.width,
            "steps": cfg.steps,
            "diverged": diverged,
            "final_val_loss": math.nan if result is None else result.final_val_loss,
            "final_train_loss": math.nan if result is None else result.final_train_loss,
            "val_curve": [[m["step"], m["val_loss"]] for m in metrics if "val_loss" in m],
            "train_curve": [[m["step"], m["train_loss"]] for m in metrics],
            "wall_s": time.perf_counter() - t0,
        }
        path.write_text(json.dumps(record) + "\n")
        return record
    finally:
        claim.unlink(missing_ok=True)


def fingerprint(cfg: TrainConfig, optimizer: str) -> str:
    """A hash of every setting that shapes one run (not the other optimizers' settings)."""
    relevant = {
        "model": dataclasses.asdict(cfg.model),
        "optimizer": optimizer,
        "optimizer_config": dataclasses.asdict(cfg.optimizers[optimizer]),
        **{
            k: getattr(cfg, k)
            for k in ("data", "val_fraction", "batch_size", "steps", "eval_every", "seed")
        },
        "eval_batches": cfg.eval_batches,
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def with_learning_rate(cfg: TrainConfig, optimizer: str, lr: float, **fields: Any) -> TrainConfig:
    """cfg with ``optimizer``'s learning rate (and other OptimizerConfig fields) replaced."""
    oc = dataclasses.replace(cfg.optimizers[optimizer], learning_rate=lr, **fields)
    return dataclasses.replace(cfg, optimizers={**cfg.optimizers, optimizer: oc})


def final_loss(record: dict[str, Any]) -> float:
    """A run's final validation loss; inf if it diverged."""
    value = record["final_val_loss"]
    return math.inf if record["diverged"] or not math.isfinite(value) else value


def steps_to_reach(curve: list[list[float]], target: float) -> float:
    """First step at which a validation curve reaches ``target`` (linear interpolation)."""
    previous = None
    for step, value in curve:
        if value <= target:
            if previous is None:
                return float(step)
            s0, v0 = previous
            return s0 + (step - s0) * (v0 - target) / (v0 - value)
        previous = (step, value)
    return math.inf
