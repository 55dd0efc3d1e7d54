"""The example's data: token shards (both formats), ``prepare``, ``--data stdlib``, batches.

Errors go through ``cli.main`` and must be one line naming the file, with exit status 2 (the
helpers of ``test_adversarial_cli``); the shards are small files written in ``tmp_path``.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

from lmo_optax.example import cli, configs, corpus, shards
from lmo_optax.example.config import load_config
from lmo_optax.example.data import TokenDataset
from lmo_optax.example.errors import ConfigError
from lmo_optax.example.prepare import prepare

# The one-line-error helpers of the CLI's adversarial tests (test files are not a package).
_spec = importlib.util.spec_from_file_location(
    "adversarial_cli_helpers", pathlib.Path(__file__).with_name("test_adversarial_cli.py")
)
_helpers = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
TINY, assert_one_line_error, run_main = (
    _helpers.TINY,
    _helpers.assert_one_line_error,
    _helpers.run_main,
)

TEXT = "Shards hold token ids; a window of context + 1 tokens never crosses two shards.\n" * 60


def write_headerless(path: pathlib.Path, tokens: np.ndarray) -> None:
    """nanoGPT's ``train.bin``: uint16 ids, no header."""
    np.asarray(tokens, "<u2").tofile(path)


# --- Shards and prepare ----------------------------------------------------------------------


def test_prepare_round_trips_through_the_reader(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    m = prepare([str(tmp_path / "a.txt")], tmp_path / "out", shard_tokens=1000, val_fraction=0.2)
    expected = np.frombuffer(TEXT.encode(), np.uint8)
    names = [s["path"] for s in m["shards"]]
    assert names[0] == "train_000000.bin" and names[-1].startswith("val_")
    read = [shards.read(tmp_path / "out" / n) for n in names]
    assert all(isinstance(r, np.memmap) for r in read)
    np.testing.assert_array_equal(np.concatenate(read), expected)
    assert max(len(r) for r in read) == 1000
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["tokens"] == len(expected)


def test_headerless_shards_read_as_uint16(tmp_path):
    tokens = np.arange(5000) % 50000
    write_headerless(tmp_path / "train.bin", tokens)
    np.testing.assert_array_equal(shards.read(tmp_path / "train.bin"), tokens)
    ds = TokenDataset.load(str(tmp_path / "train.bin"), context=16, vocab_size=50304)
    assert ds.sizes == (4500, 500)  # the last 10% held out


def test_prepare_refuses_gpt2_without_tiktoken_and_its_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "no-cache"))
    (tmp_path / "a.txt").write_text(TEXT)
    argv = ["prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--tokenizer", "gpt2"]
    line = assert_one_line_error(*run_main(argv, capsys), "tiktoken", "--tokenizer bytes")
    assert "pip install tiktoken" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra, names",
    [
        (["{tmp}/missing.txt"], ["missing.txt", "no such file"]),
        (["--shard-tokens", "0"], ["--shard-tokens", "0"]),
        (["--val-fraction", "1"], ["--val-fraction", "1"]),
        (["--out", "{tmp}/a.txt"], ["--out", "a.txt", "not a folder"]),
        (["--out", "{tmp}/full"], ["--out", "full", "holds shards"]),
    ],
    ids=["missing input", "shard-tokens 0", "val-fraction 1", "out is a file", "out has shards"],
)
def test_prepare_errors_are_one_line(extra, names, tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "full").mkdir()
    write_headerless(tmp_path / "full" / "train_000000.bin", np.ones(100))
    argv = ["prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), *extra]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert_one_line_error(*run_main(argv, capsys), *names)
    assert not (tmp_path / "o").exists()


def bad_shards(tmp: pathlib.Path) -> dict[str, tuple[str, list[str]]]:
    """Malformed shards: name → (the --data value, what the error must name)."""
    good = np.zeros(256, "<i4")
    good[:3] = shards.MAGIC, shards.VERSION, 100

    def header(path: str, words: dict[int, int], n: int = 100) -> str:
        h = good.copy()
        for i, v in words.items():
            h[i] = v
        (tmp / path).write_bytes(h.tobytes() + np.ones(n, "<u2").tobytes())
        return str(tmp / path)

    write_headerless(tmp / "big_id.bin", np.full(500, 300))
    write_headerless(tmp / "short.bin", np.ones(20))
    (tmp / "odd.bin").write_bytes(b"\x01\x02\x03")
    return {
        "empty glob": (str(tmp / "none_*.bin"), ["none_*.bin", "no file matches"]),
        "bad magic": (header("magic.bin", {0: 1234}), ["magic.bin", "magic 1234"]),
        "bad version": (header("version.bin", {1: 7}), ["version.bin", "version 7"]),
        "count vs size": (header("count.bin", {2: 99}), ["count.bin", "99 tokens"]),
        "token id >= vocab": (str(tmp / "big_id.bin"), ["big_id.bin", "300", "vocab_size=256"]),
        "shorter than a context": (str(tmp / "short.bin"), ["short.bin", "model.context"]),
        "odd size": (str(tmp / "odd.bin"), ["odd.bin", "uint16"]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty glob",
        "bad magic",
        "bad version",
        "count vs size",
        "token id >= vocab",
        "shorter than a context",
        "odd size",
    ],
)
@pytest.mark.parametrize("flag", ["--data", "--val-data"])
def test_shard_errors_are_one_line_naming_the_file(case, flag, tmp_path, capsys):
    value, names = bad_shards(tmp_path)[case]
    argv = ["train", "--out", str(tmp_path / "run"), *TINY, flag, value]
    assert_one_line_error(*run_main(argv, capsys), flag, *names)
    assert not (tmp_path / "run").exists()


def test_a_token_beyond_the_first_scan_is_caught_by_its_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SCAN_TOKENS", 100)
    tokens = np.ones(1000, np.uint16)
    tokens[500:] = 999
    write_headerless(tmp_path / "late.bin", tokens)
    ds = TokenDataset.load(str(tmp_path / "late.bin"), context=16, vocab_size=256)
    with pytest.raises(ConfigError, match=r"late\.bin: token id 999 at token \d+"):
        for step in range(50):
            ds.batch("train", seed=0, step=step, batch_size=8, context=16)


def test_an_unreadable_shard_is_named(tmp_path, monkeypatch):
    write_headerless(tmp_path / "locked.bin", np.ones(100))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(shards.np, "fromfile", refuse)  # root may read any file: simulate it
    with pytest.raises(ConfigError, match=r"--data .*locked\.bin: cannot read it \(Permission"):
        shards.read(tmp_path / "locked.bin")


def test_a_bad_token_in_the_held_out_part_is_located_in_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SCAN_TOKENS", 100)  # found by a batch, not when loading
    tokens = np.ones(1000, np.uint16)
    tokens[950] = 999  # in the last 10%, held out for validation
    write_headerless(tmp_path / "tail.bin", tokens)
    ds = TokenDataset.load(str(tmp_path / "tail.bin"), context=16, vocab_size=256)
    with pytest.raises(ConfigError, match=r"tail\.bin: token id 999 at token 950 "):
        for step in range(200):
            ds.batch("val", seed=0, step=step, batch_size=8, context=16)


def test_short_text_with_val_data_is_one_line_error(tmp_path, capsys):
    (tmp_path / "short.txt").write_text("abc")
    (tmp_path / "long.txt").write_text(TEXT)
    for data, val in (("short.txt", "long.txt"), ("long.txt", "short.txt")):
        argv = ["train", "--out", str(tmp_path / "run"), *TINY, "--data", str(tmp_path / data)]
        argv += ["--val-data", str(tmp_path / val)]
        flag = "--data" if data == "short.txt" else "--val-data"
        assert_one_line_error(*run_main(argv, capsys), flag, "short.txt", "3 tokens")


def test_an_empty_tiktoken_cache_variable_is_refused(monkeypatch):
    from lmo_optax.example import prepare as prepare_module

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert prepare_module.tiktoken_cache() is None
    if importlib.util.find_spec("tiktoken") is not None:
        with pytest.raises(ConfigError, match="cache is turned off"):
            prepare_module.gpt2_encoder()


# --- Batches ---------------------------------------------------------------------------------


def test_batches_depend_on_seed_and_step_only_and_rows_are_parts_of_them(tmp_path):
    for i in range(3):  # windows are drawn from several shards
        write_headerless(tmp_path / f"s{i}.bin", np.arange(300) + 1000 * i)
    ds = TokenDataset.load(str(tmp_path / "s*.bin"), context=16, vocab_size=4000)

    def batch(**kw):
        args = {"seed": 0, "step": 3, **kw}
        return ds.batch("train", batch_size=32, context=16, **args)[0]

    assert np.array_equal(batch(), batch())
    for change in ({"seed": 1}, {"step": 4}):
        assert not np.array_equal(batch(), batch(**change)), change
    # A process reads the rows of its devices: the same rows of the same global batch.
    np.testing.assert_array_equal(batch(rows=slice(8, 16)), batch()[8:16])
    x, y = ds.batch("train", seed=0, step=3, batch_size=32, context=16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert (np.diff(x, axis=1) == 1).all()  # no window crosses from one shard into the next
    assert len({int(v) // 1000 for v in x[:, 0]}) > 1


def test_validation_windows_are_fixed_and_val_data_is_separate(tmp_path):
    write_headerless(tmp_path / "train.bin", np.arange(2000) % 300)
    write_headerless(tmp_path / "val.bin", np.arange(500) % 7)
    ds = TokenDataset.load(
        str(tmp_path / "train.bin"), context=16, vocab_size=300, val_data=str(tmp_path / "val.bin")
    )
    assert ds.sizes == (2000, 500)
    first = [ds.batch("val", seed=0, step=i, batch_size=4, context=16)[0] for i in range(3)]
    ds.batch("train", seed=0, step=1, batch_size=4, context=16)  # training in between
    again = [ds.batch("val", seed=0, step=i, batch_size=4, context=16)[0] for i in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert int(max(v.max() for v in first)) < 7  # drawn from val.bin


# --- The standard library corpus -------------------------------------------------------------


def test_stdlib_manifest_is_deterministic_and_leaves_out_what_varies():
    a, first = corpus.load(max_bytes=300_000)
    b, second = corpus.load(max_bytes=300_000)
    assert first == second and np.array_equal(a, b)
    assert first["bytes"] == len(a) > 50_000 and first["files"] == len(first["paths"])
    assert first["paths"] == sorted(first["paths"])
    every = [p.as_posix() for p in corpus.files()]
    assert len(every) > 300 and every == sorted(every)
    for path in every:
        parts = path.split("/")
        assert not corpus.SKIP_FOLDERS & set(parts[:-1]), path
        assert not parts[-1].startswith("_sysconfigdata"), path


# --- Configs by name ---------------------------------------------------------------------------


def test_configs_are_found_by_name_and_listed(capsys):
    assert configs.names() == ["gpt2_small", "shallow_gpt", "stdlib", "tiny"]
    assert load_config("tiny").model.width == 128
    assert load_config(str(configs.path_of("tiny"))) == load_config("tiny")
    assert cli.main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in configs.names():
        assert f"{name} " in out and configs.description(name) in out


def test_an_unknown_config_name_lists_the_known_ones(capsys):
    line = assert_one_line_error(*run_main(["train", "--config", "tinny"], capsys), "tinny")
    assert all(name in line for name in configs.names())


# --- End to end --------------------------------------------------------------------------------


def test_samples_are_decoded_with_the_tokenizer_of_the_data(tmp_path, monkeypatch):
    from lmo_optax.example.train import text_codec

    encode, decode = text_codec("bytes", 256)
    assert decode(encode("Größe")) == "Größe" and decode([72, 105, 300]) == "Hi"  # 300: no byte
    assert text_codec(None, 256) is not None  # shards of unknown origin, byte-sized vocabulary
    assert text_codec(None, 1000) is None  # unknown ids: no sample rather than garbled bytes
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "no-cache"))
    assert text_codec("gpt2", 50304) is None  # GPT-2's files not available offline
    (tmp_path / "a.txt").write_text(TEXT)
    prepare([str(tmp_path / "a.txt")], tmp_path / "out", shard_tokens=1000, val_fraction=0.2)
    assert shards.tokenizer_of(tmp_path / "out" / "train_000000.bin") == "bytes"
    write_headerless(tmp_path / "train.bin", np.arange(100))
    assert shards.tokenizer_of(tmp_path / "train.bin") is None


class WordEncoder:
    """A stand-in for tiktoken's GPT-2 encoding (whose files need a download): one id per
    distinct word, ids from 50000 up, and GPT-2's end-of-text id."""

    eot_token = 50256

    def __init__(self):
        self.ids: dict[str, int] = {}

    def encode_ordinary(self, text: str) -> list[int]:
        return [self.ids.setdefault(w, 50000 + len(self.ids)) for w in text.split(" ")]

    def decode(self, ids: list[int]) -> str:
        words = {i: w for w, i in self.ids.items()}
        return " ".join(words.get(i, "?") for i in ids)


def test_gpt2_shards_carry_their_tokenizer_to_training_and_samples(tmp_path, capsys, monkeypatch):
    from lmo_optax.example import prepare as prepare_module

    encoder = WordEncoder()
    monkeypatch.setattr(prepare_module, "gpt2_encoder", lambda: encoder)
    (tmp_path / "a.txt").write_text("The cat sat on the mat " * 200)
    m = prepare([str(tmp_path / "a.txt")], tmp_path / "s", tokenizer="gpt2", val_fraction=0.2)
    assert m["tokenizer"] == "gpt2" and m["vocab_size"] == 50304
    ids = np.concatenate([shards.read(tmp_path / "s" / x["path"]) for x in m["shards"]])
    assert ids[0] == WordEncoder.eot_token and ids.min() >= 50000  # every input opens with it
    run = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--optimizer", "adamw", "--out", str(run), *TINY]
    argv += ["--data", f"{tmp_path}/s/train_*.bin", "--val-data", f"{tmp_path}/s/val_*.bin"]
    argv += ["model.vocab_size=50304", "steps=2", "sample_bytes=5", "sample_prompt=The cat"]
    assert cli.main(argv) == 0
    sample = (run / "sample.txt").read_text()
    assert sample.startswith("The cat ") and len(sample.split(" ")) == 7  # prompt + 5 tokens


def test_unknown_token_ids_give_no_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "no-cache"))
    write_headerless(tmp_path / "train.bin", (np.arange(4000) * 7919) % 50257)
    argv = ["train", "--config", "tiny", "--optimizer", "adamw", "--out", str(tmp_path / "r")]
    argv += [*TINY, "--data", str(tmp_path / "train.bin"), "model.vocab_size=50304", "steps=2"]
    assert cli.main(argv) == 0
    assert "no sample: the token ids of" in capsys.readouterr().out
    assert not (tmp_path / "r" / "sample.txt").exists()


def test_train_on_prepared_shards(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT * 3)
    out = tmp_path / "shards"
    argv = ["prepare", str(tmp_path / "a.txt"), "--out", str(out), "--shard-tokens", "4000"]
    assert cli.main(argv) == 0
    assert f"--data '{out}/train_*.bin'" in capsys.readouterr().out
    run = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--optimizer", "adamw", "--out", str(run), *TINY]
    argv += ["--data", f"{out}/train_*.bin", "--val-data", f"{out}/val_*.bin", "steps=3"]
    assert cli.main(argv + ["sample_bytes=20"]) == 0
    assert len((run / "sample.txt").read_bytes()) >= 20  # byte shards: the prompt and 20 bytes
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "val_loss" in rows[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["data"]["manifest"]["train"]["shards"]) == 4
