"""The ``lmo-optax`` command under adversarial use.

Every user error is one line on stderr, ``lmo-optax: error: …`` naming the flag, field or file,
with exit status 2 and no traceback; these run ``cli.main`` in this process and stop before any
training. A run killed at any moment (during a checkpoint's write too) resumes to the metrics of
an uninterrupted run, and damaged checkpoints are reported and set aside; these run the command
in subprocesses (SIGKILL needs one) that share a JAX compilation cache, each under a timeout.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from lmo_optax.example import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "tiny"
# A model small enough for a few hundred milliseconds per step with a checkpoint every step.
TINY = ["model.width=32", "model.depth=1", "model.context=32", "batch_size=4", "eval_batches=1"]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``cli.main(argv)`` in this process (argparse exits too)."""
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, *names: str) -> str:
    """Status 2 and one stderr line ``lmo-optax: error: …`` that contains each of ``names``."""
    assert "Traceback" not in err, err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmo-optax: error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --- User errors: one line, exit status 2 ---------------------------------------------------


@dataclasses.dataclass
class Case:
    """One user error: the arguments after ``train`` and what the message must name."""

    argv: list[str]
    names: list[str]


def make_files(tmp: pathlib.Path) -> None:
    """The files the cases point at."""
    (tmp / "syntax.py").write_text("x = 1\ndef get_config(:\n")
    (tmp / "noget.py").write_text("x = 1\n")
    (tmp / "scion_only.py").write_text(
        "from lmo_optax.example.config import OptimizerConfig, TrainConfig\n\n\n"
        "def get_config():\n"
        "    return TrainConfig(optimizers={'scion': OptimizerConfig()})\n"
    )
    (tmp / "afile").write_text("a regular file\n")
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 200)
    (tmp / "short.txt").write_text("too short for a context of 32 bytes " * 2)
    (tmp / "folder").mkdir()


CASES = {
    # The cases found by probing.
    "config syntax error": Case(["--config", "{tmp}/syntax.py"], ["syntax.py", "line 2"]),
    "steps=0": Case(["steps=0"], ["steps", "0"]),
    "--steps 0": Case(["--steps", "0"], ["steps", "0"]),
    "eval_every=0": Case(["eval_every=0"], ["eval_every", "0"]),
    "log_every=0": Case(["log_every=0"], ["log_every", "0"]),
    "model.width=0": Case(["model.width=0"], ["model.width", "0"]),
    "--out under a file": Case(["--out", "{tmp}/afile/run"], ["--out", "afile", "not a folder"]),
    "--out is a file": Case(["--out", "{tmp}/afile"], ["--out", "afile", "not a folder"]),
    "unknown state_dtype": Case(
        ["optimizers.scion.state_dtype=float8"], ["optimizers.scion.state_dtype", "float8"]
    ),
    "--optimizer ''": Case(["--optimizer", ""], ["--optimizer", "optimizer names"]),
    "--optimizer ,": Case(["--optimizer", ","], ["--optimizer", "optimizer names"]),
    "unknown optimizer": Case(["--optimizer", "sgd"], ["--optimizer", "'sgd'", "scion"]),
    "--mesh data=3, batch 4": Case(["--mesh", "data=3"], ["--mesh data=3", "batch_size=4"]),
    "--mesh model=3, 4 heads": Case(
        ["--mesh", "model=3", "model.heads=4"], ["--mesh model=3", "model.heads=4"]
    ),
    "val_fraction=1.5": Case(["val_fraction=1.5"], ["val_fraction", "1.5", "(0, 1)"]),
    "init=bogus": Case(["optimizers.scion.init=bogus"], ["optimizers.scion.init", "bogus"]),
    "eval_batches=0": Case(["eval_batches=0"], ["eval_batches", "0"]),
    "batch_size=0": Case(["batch_size=0"], ["batch_size", "0"]),
    "--data missing": Case(["--data", "{tmp}/missing.txt"], ["--data", "missing.txt"]),
    "--data a folder": Case(["--data", "{tmp}/folder"], ["--data", "folder"]),
    "--data empty": Case(["--data", "{tmp}/empty.txt"], ["--data", "empty.txt", "empty"]),
    "--data not UTF-8": Case(["--data", "{tmp}/latin1.txt"], ["--data", "latin1.txt", "UTF-8"]),
    "corpus too short": Case(["--data", "{tmp}/short.txt"], ["short.txt", "model.context"]),
    "corpus too short for val_fraction": Case(
        ["val_fraction=0.00001"], ["val_fraction=1e-05", "model.context"]
    ),
    # Added: more settings that cannot be honoured.
    "sample with an empty prompt": Case(["sample_bytes=8", "sample_prompt="], ["sample_prompt"]),
    "vocabulary smaller than a byte": Case(["model.vocab_size=100"], ["model.vocab_size", "256"]),
    "width not divisible by heads": Case(["model.heads=3"], ["model.width", "model.heads=3"]),
    "learning rate nan": Case(
        ["optimizers.adamw.learning_rate=nan"], ["optimizers.adamw.learning_rate", "nan"]
    ),
    "ball init for adamw": Case(["optimizers.adamw.init=ball"], ["optimizers.adamw.init"]),
    "optimizer twice": Case(["--optimizer", "scion,scion"], ["--optimizer", "twice"]),
    "config without get_config": Case(["--config", "{tmp}/noget.py"], ["noget.py", "get_config"]),
    "optimizer without settings": Case(
        ["--config", "{tmp}/scion_only.py", "--optimizer", "adamw"], ["'adamw'", "scion_only.py"]
    ),
    "unknown field": Case(["model.widht=64"], ["model.widht", "unknown field"]),
    "int field given a word": Case(["steps=many"], ["steps=many", "int"]),
    "unknown mesh axis": Case(["--mesh", "pipe=2"], ["--mesh pipe=2", "'data' and 'model'"]),
    "mesh larger than the devices": Case(
        ["--mesh", "data=1024", "batch_size=1024"], ["--mesh data=1024", "1024 devices"]
    ),
    "keep_checkpoints=0": Case(["keep_checkpoints=0"], ["keep_checkpoints", "0"]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_user_error_is_one_line_with_status_2(case, tmp_path, capsys):
    make_files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    base = ["train", "--config", CONFIG, "--out", str(tmp_path / "out"), *TINY]
    status, err = run_main(base + argv, capsys)
    assert_one_line_error(status, err, *case.names)
    assert not (tmp_path / "out").exists()  # nothing was written


@pytest.mark.parametrize(
    "argv, names",
    [
        (["rules", "--config", CONFIG, "--optimizer", "adamw"], ["--optimizer adamw", "scion"]),
        (["rules", "--config", CONFIG, "model.depth=0"], ["model.depth", "0"]),
        (["digits", "--optimizer", ","], ["--optimizer", "optimizer names"]),
        (["digits", "--optimizer", "muon"], ["--optimizer", "'muon'"]),
        (["digits", "--steps", "0"], ["steps", "0"]),
    ],
    ids=["rules adamw", "rules depth=0", "digits ,", "digits muon", "digits steps=0"],
)
def test_other_commands_report_user_errors_in_one_line(argv, names, capsys):
    assert_one_line_error(*run_main(argv, capsys), *names)


def test_overrides_may_follow_flags_and_are_checked_together(capsys):
    # The tiny config has width 128 and 4 heads: 6 heads alone would not divide the width.
    assert cli.main(["rules", "model.heads=6", "--config", CONFIG, "model.width=96"]) == 0
    assert "(96, 96)" in capsys.readouterr().out


def test_a_new_run_never_replaces_an_earlier_one_silently(tmp_path, capsys):
    out = tmp_path / "runs"
    (out / "adamw" / "checkpoints" / "step_3").mkdir(parents=True)
    argv = ["compare", "--config", CONFIG, "--out", str(out), "--optimizer", "scion,adamw"]
    line = assert_one_line_error(*run_main(argv + TINY, capsys), str(out / "adamw"))
    assert "--resume" in line and "--overwrite" in line
    # Refused before the first run: scion's folder was not even made.
    assert sorted(p.name for p in out.iterdir()) == ["adamw"]
    assert (out / "adamw" / "checkpoints" / "step_3").is_dir()
    # The summary of an earlier comparison counts too.
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "summary.json").write_text("{}")
    argv = ["train", "--config", CONFIG, "--out", str(tmp_path / "single")]
    assert_one_line_error(*run_main(argv + TINY, capsys), "single", "summary.json")


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    argv = ["train", "--config", CONFIG, "--out", str(tmp_path), "--resume", "--overwrite"]
    status, err = run_main(argv, capsys)
    assert status == 2 and "not allowed with argument --resume" in err
    assert "Traceback" not in err


# --- Faults: kills, damaged checkpoints --------------------------------------------------------

STEPS = 10
RUN = [
    "train",
    "--config",
    CONFIG,
    "--optimizer",
    "scion",
    *TINY,
    f"steps={STEPS}",
    "eval_every=3",
    "checkpoint_every=1",
    "sample_bytes=0",
    "log_every=1",
]
TIMEOUT_S = 240  # one subprocess, compilation included, on a slow shared machine


def subprocess_env(cache: pathlib.Path) -> dict[str, str]:
    """This environment, on CPU, with a persistent compilation cache shared by the runs."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


@dataclasses.dataclass
class Outcome:
    """How a subprocess ended."""

    returncode: int
    killed: bool
    stderr: str


def run_cli(
    args: list[str],
    env: dict[str, str],
    log: pathlib.Path,
    kill_when: Callable[[], bool] | None = None,
) -> Outcome:
    """Runs ``lmo-optax args`` in a subprocess; SIGKILLs it as soon as ``kill_when()`` holds.

    The condition is polled every millisecond; the run is killed and the test fails after
    ``TIMEOUT_S``.
    """
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmo_optax.example.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        killed = False
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while proc.poll() is None:
                if kill_when is not None and kill_when():
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"lmo-optax {' '.join(args)} ran past {TIMEOUT_S} s")
                time.sleep(0.001)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Outcome(proc.returncode, killed, log.read_text())


def losses(out: pathlib.Path) -> list[tuple]:
    """(step, train loss, validation loss) of each line of a run's ``metrics.jsonl``."""
    from lmo_optax.example.train import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in rows]


def saving(out: pathlib.Path, complete: int = 0) -> Callable[[], bool]:
    """True while a checkpoint is being written and at least ``complete`` others exist."""

    def check() -> bool:
        try:
            names = os.listdir(out / "checkpoints")
        except FileNotFoundError:
            return False
        writing = any("orbax-checkpoint-tmp" in n for n in names)
        done = sum(n.startswith("step_") and "tmp" not in n for n in names)
        return writing and done >= complete

    return check


def metrics_lines(out: pathlib.Path, n: int) -> Callable[[], bool]:
    """True once ``metrics.jsonl`` holds ``n`` lines."""

    def check() -> bool:
        try:
            return (out / "metrics.jsonl").read_bytes().count(b"\n") >= n
        except FileNotFoundError:
            return False

    return check


def after(seconds: float) -> Callable[[], bool]:
    """True once ``seconds`` have passed (from the first call, right after the start)."""
    start: list[float] = []

    def check() -> bool:
        start[:] = start or [time.monotonic()]
        return time.monotonic() - start[0] >= seconds

    return check


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[pathlib.Path, dict[str, str]]:
    """An uninterrupted run (its folder) and the environment the runs share."""
    tmp = tmp_path_factory.mktemp("reference")
    env = subprocess_env(tmp / "jax-cache")
    out = tmp / "run"
    outcome = run_cli([*RUN, "--out", str(out)], env, tmp / "stderr.txt")
    assert outcome.returncode == 0, outcome.stderr
    assert [row[0] for row in losses(out)] == list(range(1, STEPS + 1))
    return out, env


def test_killed_at_any_moment_resumes_to_the_uninterrupted_metrics(reference, tmp_path):
    ref, env = reference
    out = tmp_path / "run"
    args = [*RUN, "--out", str(out)]
    kills = [
        ("during the first checkpoint's write", [], saving(out)),
        ("during a later checkpoint's write", ["--resume"], saving(out, complete=3)),
        ("between steps", ["--resume"], metrics_lines(out, 7)),
        ("while starting up", ["--resume"], after(1.0)),
    ]
    for moment, flags, condition in kills:
        outcome = run_cli(args + flags, env, tmp_path / "stderr.txt", kill_when=condition)
        assert outcome.killed and outcome.returncode == -signal.SIGKILL, (moment, outcome)
    outcome = run_cli(args + ["--resume"], env, tmp_path / "stderr.txt")
    assert outcome.returncode == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert losses(out) == losses(ref)
    # No leftover of an interrupted write.
    assert not [p for p in (out / "checkpoints").iterdir() if "tmp" in p.name]


def files_by_size(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The files of a checkpoint, largest first."""
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def truncate(path: pathlib.Path) -> str:
    """Cuts a file to half its size; returns its name."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path.name


def test_damaged_checkpoints_are_named_set_aside_and_the_previous_one_restored(reference, tmp_path):
    ref, env = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    latest, before = (out / "checkpoints" / f"step_{s}" for s in (STEPS, STEPS - 1))
    truncated = truncate(files_by_size(latest)[0])
    deleted = files_by_size(before)[0]
    deleted.unlink()
    outcome = run_cli([*RUN, "--out", str(out), "--resume"], env, tmp_path / "stderr.txt")
    assert outcome.returncode == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr
    warnings = [line for line in outcome.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, outcome.stderr
    assert f"step_{STEPS} " in warnings[0] and truncated in warnings[0]
    assert f"step_{STEPS - 1} " in warnings[1] and deleted.name in warnings[1]
    assert all(f"resuming from step_{STEPS - 2}" in w for w in warnings)
    rejected = {p.name for p in (out / "rejected_checkpoints").iterdir()}
    assert rejected == {f"step_{STEPS - 1}", f"step_{STEPS}"}
    # The two steps after the restored checkpoint were trained again, to the same losses.
    assert losses(out) == losses(ref)
    assert (out / "checkpoints" / f"step_{STEPS}" / "lmo_optax_manifest.json").is_file()


def test_resume_with_no_intact_checkpoint_stops_and_moves_nothing(reference, tmp_path, capsys):
    ref, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    for name in steps:
        truncate(files_by_size(out / "checkpoints" / name)[0])
    argv = [*RUN, "--out", str(out), "--resume"]
    line = assert_one_line_error(*run_main(argv, capsys), "--resume", *steps)
    assert "--overwrite" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == steps
    assert not (out / "rejected_checkpoints").exists()


def test_resume_with_another_model_shape_is_an_error(reference, tmp_path, capsys):
    ref, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    argv = [*RUN, "--out", str(out), "--resume", "model.width=64"]
    line = assert_one_line_error(*run_main(argv, capsys), f"step_{STEPS}", "other settings")
    assert "float32[32, 32] there and float32[64, 64] here" in line and "--overwrite" in line
    assert not (out / "rejected_checkpoints").exists()


def test_a_huge_mesh_fails_at_once_instead_of_simulating_its_devices(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # let the command simulate the CPU devices itself
    args = ["train", "--config", CONFIG, "--out", str(tmp_path / "out"), "--mesh"]
    args += ["data=100000", "batch_size=100000"]
    start = time.monotonic()
    outcome = run_cli(args, env, tmp_path / "stderr.txt")
    assert time.monotonic() - start < 60
    assert_one_line_error(outcome.returncode, outcome.stderr, "--mesh data=100000", "devices")
