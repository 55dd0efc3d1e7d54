"""The run's folder and its checkpoints: an earlier run is never lost, a fault loses nothing.

Faults lose nothing:

- A folder that holds an earlier run is never replaced silently: a new run there needs
  ``resume`` (continue it) or ``overwrite`` (delete its metrics and checkpoints first), else
  ``ConfigError``.
- A run killed at any moment, during a checkpoint's write too, resumes from its last complete
  checkpoint and repeats the steps after it; batches and initialization are functions of the
  seed and the step, so ``metrics.jsonl`` ends with the same losses as an uninterrupted run's.
  Orbax writes a checkpoint under a temporary name and renames it when complete (and deletes
  such leftovers); ``Checkpoints`` then adds a manifest of its files' sizes and CRC-32s.
- A damaged checkpoint (a file missing, truncated or changed, or no manifest) is not restored:
  ``resume`` warns on stderr, naming it, moves it to ``rejected_checkpoints/`` and restores the
  newest intact one before it. If checkpoints exist but none is intact, it stops with a
  ``ConfigError`` and moves nothing; without any checkpoint it starts at step 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lmo_optax.example.errors import ConfigError, warn

# What a run writes in its folder; a folder holding any of them holds an earlier run.
REJECTED = "rejected_checkpoints"
RUN_FILES = ("metrics.jsonl", "checkpoints", REJECTED, "sample.txt", "result.json")
MANIFEST = "lmo_optax_manifest.json"


def check_out_dir(
    out: pathlib.Path, *, resume: bool, overwrite: bool, files: tuple[str, ...] = RUN_FILES
) -> None:
    """Raises ``ConfigError`` unless ``out`` can take this run; changes nothing.

    ``out`` must be a folder or creatable as one, and may hold an earlier run (any of
    ``files``) only with ``resume`` or ``overwrite``, which exclude each other.
    """
    if resume and overwrite:
        raise ConfigError(
            "--resume and --overwrite exclude each other: --resume continues the run in the "
            "folder, --overwrite replaces it"
        )
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"--out {out}: {folder} is a file, not a folder")
            break
    earlier = [name for name in files if (out / name).exists()]
    if earlier and not (resume or overwrite):
        raise ConfigError(
            f"--out {out} holds an earlier run ({', '.join(earlier)}); pass --resume to "
            "continue it or --overwrite to replace it"
        )


def prepare_out_dir(out: pathlib.Path, *, overwrite: bool, log: Callable[..., None]) -> None:
    """Creates ``out``; with ``overwrite``, deletes what an earlier run left there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    earlier = [out / name for name in RUN_FILES if (out / name).exists()]
    if overwrite and earlier:
        for path in earlier:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        log(f"--overwrite: deleted {', '.join(p.name for p in earlier)} in {out}")


def checkpoint_manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
    """Orbax's manager of the run's checkpoints, one folder per step (``step_<N>``).

    It keeps the latest ``keep``, restores a step, and saves atomically (on a local disk a
    step's folder is written under a temporary name and renamed once complete, so an
    interrupted save never looks like a checkpoint; the manager deletes such leftovers when it
    starts). Saves run in the background; use the manager in a ``with`` block, which waits for
    the last save and closes it.
    """
    options = ocp.CheckpointManagerOptions(
        step_prefix="step",
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        cleanup_tmp_directories=True,  # what a killed save left behind
    )
    return ocp.CheckpointManager(directory.resolve(), options=options)


class Checkpoints:
    """The run's checkpoints: orbax writes and prunes them; each complete one gets a manifest.

    A save runs in the background while training goes on; the next save (or leaving the
    ``with`` block) waits for it and then writes its manifest (``write_manifest``), which marks
    it complete. ``find_resume_point`` picks only a checkpoint that matches its manifest.
    """

    def __init__(self, directory: pathlib.Path, keep: int):
        self.directory = directory
        self.manager = checkpoint_manager(directory, keep)
        self._unsealed: tuple[int, dict[str, Any]] | None = None

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.seal()
        self.manager.close()

    def save(self, step: int, state: Any) -> None:
        """Starts saving ``state`` as the checkpoint of ``step`` (nothing if that step has one).

        Orbax reads the arrays after ``save`` returns, while training goes on, and the jitted
        step donates (deletes) the arrays it is given; so the save gets its own copy of each
        array (on its device, in its layout), which nothing else holds: the next step may run at
        once, at the cost of one more copy of ``state`` in device memory until the save ends.
        """
        self.seal()
        copy = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state), may_alias=False)
        if self.manager.save(step, args=ocp.args.StandardSave(copy)):
            self._unsealed = (step, array_signature(state))

    def seal(self) -> None:
        """Waits for the save in flight, then writes its manifest."""
        self.manager.wait_until_finished()
        if self._unsealed is not None:
            step, arrays = self._unsealed
            if jax.process_index() == 0:  # orbax's primary process completes the checkpoint
                write_manifest(self.directory / f"step_{step}", arrays)
            self._unsealed = None


def array_signature(state: Any) -> dict[str, Any]:
    """``{path: [shape, dtype]}`` of every array in ``state``: what a checkpoint must match."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): [list(np.shape(x)), str(x.dtype)] for path, x in leaves}


def file_digest(path: pathlib.Path) -> list[int]:
    """``[size, CRC-32]`` of a file, read in chunks."""
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return [path.stat().st_size, crc]


def write_manifest(step_dir: pathlib.Path, arrays: dict[str, Any]) -> None:
    """Writes ``step_dir``'s manifest: its files' sizes and CRC-32s, and its arrays' signature.

    Written under a temporary name and renamed, so a manifest is complete or absent.
    """
    files = {
        str(f.relative_to(step_dir)): file_digest(f)
        for f in sorted(step_dir.rglob("*"))
        if f.is_file() and not f.name.startswith(MANIFEST)
    }
    tmp = step_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files, "arrays": arrays}))
    os.replace(tmp, step_dir / MANIFEST)


def read_manifest(step_dir: pathlib.Path) -> dict[str, Any] | None:
    """The manifest of ``step_dir``; None when it is missing or unreadable."""
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = isinstance(manifest, dict) and all(
        isinstance(manifest.get(k), dict) for k in ("files", "arrays")
    )
    return manifest if ok else None


def damage(step_dir: pathlib.Path) -> str | None:
    """What is wrong with the checkpoint in ``step_dir``, or None when it matches its manifest."""
    manifest = read_manifest(step_dir)
    if manifest is None:
        return "is incomplete (no readable manifest: its save did not finish)"
    for name, (size, crc) in manifest["files"].items():
        path = step_dir / name
        if not path.is_file():
            return f"is missing {name}"
        actual_size, actual_crc = file_digest(path)
        if actual_size != size:
            return f"has {name} truncated or changed ({actual_size} bytes, saved {size})"
        if actual_crc != crc:
            return f"has {name} corrupted (its CRC-32 differs from the saved one)"
    return None


def checkpoint_steps(directory: pathlib.Path) -> list[int]:
    """The steps of the ``step_<N>`` folders in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = (re.fullmatch(r"step_(\d+)", p.name) for p in directory.iterdir() if p.is_dir())
    return sorted((int(m[1]) for m in found if m), reverse=True)


@dataclasses.dataclass
class ResumePoint:
    """Where ``resume`` continues a run.

    Attributes:
      directory: the run's ``checkpoints/`` folder.
      step: the newest intact checkpoint's step; None when there is no checkpoint (step 0).
      damaged: ``(step, what is wrong)`` of each damaged checkpoint newer than ``step``.
    """

    directory: pathlib.Path
    step: int | None
    damaged: list[tuple[int, str]]


def find_resume_point(directory: pathlib.Path) -> ResumePoint:
    """The newest intact checkpoint in ``directory`` and the damaged ones after it; reads only.

    Raises:
      ConfigError: checkpoints exist but none is intact.
    """
    damaged = []
    for step in checkpoint_steps(directory):
        problem = damage(directory / f"step_{step}")
        if problem is None:
            return ResumePoint(directory, step, damaged)
        damaged.append((step, problem))
    if damaged:
        found = "; ".join(f"step_{s} {p}" for s, p in damaged)
        raise ConfigError(
            f"--resume: no checkpoint in {directory} can be restored ({found}); pass "
            "--overwrite to start the run over"
        )
    return ResumePoint(directory, None, [])


def accept_resume_point(
    point: ResumePoint,
    state: Any,
    steps: int,
    rejected: pathlib.Path,
    move_damaged: bool = True,
) -> None:
    """Checks the checkpoint against the run and moves the damaged ones into ``rejected``.

    ``state`` is the run's (params, optimizer state) pytree, ``steps`` its ``cfg.steps``. In a
    multi-process run every process checks (so that all stop together on an error) and only
    one moves (``move_damaged``).

    Each damaged checkpoint, and a resume without any checkpoint, is reported by ``warn``;
    moving the damaged ones away lets the run save those steps again.

    Raises:
      ConfigError: the checkpoint holds arrays of other shapes (saved with another config) or
        is past ``cfg.steps``; nothing is moved then.
    """
    if point.step is None:
        warn(f"--resume: no checkpoint in {point.directory}; starting at step 0")
        return
    check_compatible(point.directory / f"step_{point.step}", point.step, state, steps)
    for step, problem in point.damaged if move_damaged else ():
        path = point.directory / f"step_{step}"
        aside = _set_aside(path, rejected)
        warn(f"checkpoint {path} {problem}; moved to {aside}, resuming from step_{point.step}")


def check_compatible(step_dir: pathlib.Path, step: int, state: Any, steps: int) -> None:
    """Raises ``ConfigError`` unless the checkpoint fits: the arrays of ``state``, step ≤ steps."""
    saved, here = read_manifest(step_dir)["arrays"], array_signature(state)
    if saved != here:
        keys = sorted(saved.keys() | here.keys())
        key = [k for k in keys if saved.get(k) != here.get(k)][0]
        raise ConfigError(
            f"--resume: {step_dir} was saved with other settings ({key} is "
            f"{_array_text(saved.get(key))} there and {_array_text(here.get(key))} here); "
            "resume with the config it was saved with, or pass --overwrite"
        )
    if step > steps:
        raise ConfigError(
            f"--resume: {step_dir} is past steps={steps}; raise steps to at least "
            f"{step}, or pass --overwrite"
        )


def _array_text(signature: list | None) -> str:
    """``"float32[32, 256]"`` for an ``array_signature`` entry, ``"absent"`` for None."""
    return "absent" if signature is None else f"{signature[1]}{signature[0]}"


def _set_aside(path: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    """Moves ``path`` into ``folder`` under a name not yet taken there; returns where."""
    folder.mkdir(exist_ok=True)
    target, n = folder / path.name, 1
    while target.exists():
        n += 1
        target = folder / f"{path.name}.{n}"
    path.rename(target)
    return target
