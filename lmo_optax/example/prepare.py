"""``lmo-optax prepare``: local text files → token shards (llm.c's format) for ``--data``.

The inputs are read one at a time and tokenized; their token ids (2 bytes each, not the text)
are held until the end, whose last ``val_fraction`` becomes ``val_*.bin`` and the rest
``train_*.bin``, each shard at most ``shard_tokens`` long. ``prepare.json`` in the same folder
records the tokenizer, the inputs and the shards. Then::

    lmo-optax train --data 'DIR/train_*.bin' --val-data 'DIR/val_*.bin' model.vocab_size=...

Tokenizers: ``bytes`` (ids 0-255, always available) and ``gpt2`` (GPT-2's BPE through
``tiktoken``, only when it is installed and its files are already in its cache: nothing is
downloaded; each input is preceded by ``<|endoftext|>``, as llm.c does; ``model.vocab_size``
50304).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

from lmo_optax.example import shards
from lmo_optax.example.errors import ConfigError, Interval

TOKENIZERS = ("bytes", "gpt2")
GPT2_TOKENS = 50257  # GPT-2's BPE vocabulary
VOCAB_SIZES = {"bytes": 256, "gpt2": 50304}  # GPT-2's, padded to a multiple of 128
# tiktoken's GPT-2 files: it caches each under the SHA-1 of its address.
GPT2_FILES = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)
HOW_TO_GET_GPT2 = (
    "--tokenizer gpt2 needs tiktoken with GPT-2's files in its cache, and nothing is downloaded "
    'here: on a machine online run `pip install tiktoken && python -c "import tiktoken; '
    "tiktoken.get_encoding('gpt2')\"` (set TIKTOKEN_CACHE_DIR to keep the files where this "
    "machine finds them), or use --tokenizer bytes"
)


def tiktoken_cache() -> pathlib.Path | None:
    """The folder where tiktoken looks for its files (its own rule), or None when a variable
    set to the empty string turns its cache off (tiktoken would then download every time)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            return pathlib.Path(os.environ[variable]) if os.environ[variable] else None
    return pathlib.Path(tempfile.gettempdir()) / "data-gym-cache"


def gpt2_encoder() -> Any:
    """tiktoken's GPT-2 encoding, only if it can be made offline.

    Raises:
      ConfigError: tiktoken is not installed or GPT-2's files are not in its cache (the
        message says how to get them).
    """
    if importlib.util.find_spec("tiktoken") is None:
        raise ConfigError(f"tiktoken is not installed; {HOW_TO_GET_GPT2}")
    cache = tiktoken_cache()
    if cache is None:
        raise ConfigError(
            f"tiktoken's cache is turned off (an empty cache variable); {HOW_TO_GET_GPT2}"
        )
    missing = [u for u in GPT2_FILES if not (cache / hashlib.sha1(u.encode()).hexdigest()).exists()]
    if missing:
        raise ConfigError(f"GPT-2's files are not in tiktoken's cache {cache}; {HOW_TO_GET_GPT2}")
    import tiktoken

    return tiktoken.get_encoding("gpt2")


def tokenize(path: pathlib.Path, tokenizer: str, encoder: Any) -> np.ndarray:
    """The token ids of one input file (uint16)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"prepare: {path}: cannot read it ({e.strerror})") from None
    if tokenizer == "bytes":
        return np.frombuffer(data, np.uint8).astype(np.uint16)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"prepare: {path}: not UTF-8 text (byte {e.start})") from None
    ids = [encoder.eot_token, *encoder.encode_ordinary(text)]
    return np.asarray(ids, np.uint16)


def check_arguments(
    inputs: list[str], out: pathlib.Path, shard_tokens: int, val_fraction: float
) -> None:
    """Raises ``ConfigError`` for an input that is not a file, a folder that already holds
    shards, or a size or fraction out of range."""
    for name in inputs:
        if not pathlib.Path(name).is_file():
            raise ConfigError(f"prepare: {name}: no such file")
    if shard_tokens not in Interval(1):
        raise ConfigError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if val_fraction not in Interval(0, 1, high_open=True):
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder")
    earlier = sorted(out.glob("*.bin")) if out.is_dir() else []
    if earlier:
        raise ConfigError(
            f"--out {out} holds shards already ({earlier[0].name}, …); choose an empty folder"
        )


def prepare(
    inputs: list[str],
    out: pathlib.Path,
    *,
    tokenizer: str = "bytes",
    shard_tokens: int = 100_000_000,
    val_fraction: float = 0.1,
) -> dict[str, Any]:
    """Writes the shards of ``inputs`` into ``out`` and returns the manifest (``prepare.json``)."""
    check_arguments(inputs, out, shard_tokens, val_fraction)
    encoder = gpt2_encoder() if tokenizer == "gpt2" else None
    tokens = np.concatenate([tokenize(pathlib.Path(p), tokenizer, encoder) for p in inputs])
    n_val = int(len(tokens) * val_fraction)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, part in (
        ("train", tokens[: len(tokens) - n_val]),
        ("val", tokens[len(tokens) - n_val :]),
    ):
        for i, start in enumerate(range(0, len(part), shard_tokens)):
            path = out / f"{split}_{i:06d}.bin"
            shards.write(path, part[start : start + shard_tokens])
            written.append({"path": path.name, "tokens": len(part[start : start + shard_tokens])})
    manifest = {
        "tokenizer": tokenizer,
        "vocab_size": VOCAB_SIZES[tokenizer],
        "inputs": [str(p) for p in inputs],
        "tokens": len(tokens),
        "val_tokens": n_val,
        "shards": written,
    }
    (out / "prepare.json").write_text(json.dumps(manifest, indent=2))
    return manifest
