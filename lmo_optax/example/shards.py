"""Token shards: ``.bin`` files of uint16 token ids, memory-mapped, never read whole.

Two formats are read:

- llm.c / modded-nanogpt: a header of 256 little-endian int32 (magic 20240520, version 1, the
  token count, the rest zero), then that many uint16 token ids. ``lmo-optax prepare`` writes it.
- nanoGPT's ``train.bin`` / ``val.bin``: uint16 token ids with no header.

The rule that tells them apart: a file whose first int32 is the magic has a header, and its
version and token count are checked against the file. A file of at least 1024 bytes whose
int32 words 3 to 255 are all zero has a header's shape (506 token ids 0 in a row in real data
is not credible), so a wrong magic there is an error rather than headerless data. Any other
file is headerless and must hold an even number of bytes.

Token ids are checked against the vocabulary in two places, so that no token is ever fed to
the model unchecked and no shard is scanned whole at the start: ``check_ids`` on the first
``SCAN_TOKENS`` tokens of every shard when it is opened, and on every batch when it is drawn
(the maximum of a batch costs microseconds).
"""

from __future__ import annotations

import glob
import json
import pathlib

import numpy as np

from lmo_optax.example.errors import ConfigError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
# Tokens of each shard checked against the vocabulary when it is opened (2 MB of reading).
SCAN_TOKENS = 1 << 20


def is_pattern(value: str) -> bool:
    """Whether ``--data value`` names token shards: a glob, or a path ending in ``.bin``.

    >>> is_pattern("data/*.bin"), is_pattern("shard_000.bin"), is_pattern("notes.txt")
    (True, True, False)
    """
    return value.endswith(".bin") or any(c in value for c in "*?[")


def find(pattern: str, flag: str = "--data") -> list[pathlib.Path]:
    """The files that ``pattern`` matches, sorted by path.

    Raises:
      ConfigError: nothing matches, or only folders do.
    """
    paths = sorted(pathlib.Path(p) for p in glob.glob(pattern, recursive=True))
    files = [p for p in paths if p.is_file()]
    if not files:
        raise ConfigError(f"{flag} {pattern}: no file matches")
    return files


def read(path: pathlib.Path, flag: str = "--data") -> np.ndarray:
    """The token ids of the shard at ``path``, memory-mapped (see the module docstring).

    Raises:
      ConfigError: a header with a wrong magic or version, a token count that disagrees with
        the file's size, or a headerless file of an odd number of bytes; each names the file.
    """
    where = f"{flag} {path}"
    try:
        size = path.stat().st_size
        head = np.fromfile(path, dtype="<i4", count=min(HEADER_INTS, size // 4))
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror or e})") from None
    if len(head) and head[0] == MAGIC:
        if len(head) < HEADER_INTS:
            raise ConfigError(f"{where}: the header is cut short ({size} bytes, it needs 1024)")
        if head[1] != VERSION:
            raise ConfigError(
                f"{where}: header version {head[1]}, expected {VERSION} (uint16 token ids)"
            )
        count, payload = int(head[2]), size - HEADER_BYTES
        if count < 0 or count * TOKEN_DTYPE.itemsize != payload:
            raise ConfigError(
                f"{where}: the header says {count} tokens but the file holds "
                f"{payload} bytes after it ({payload / TOKEN_DTYPE.itemsize:g} tokens)"
            )
        offset = HEADER_BYTES
    elif len(head) == HEADER_INTS and not head[3:].any():
        raise ConfigError(
            f"{where}: bad magic {head[0]} in what has the shape of a shard header "
            f"(expected {MAGIC})"
        )
    else:
        if size % TOKEN_DTYPE.itemsize:
            raise ConfigError(
                f"{where}: {size} bytes is not a whole number of uint16 tokens (a headerless "
                f"shard), and the file does not start with the magic {MAGIC}"
            )
        offset = 0
    count = (size - offset) // TOKEN_DTYPE.itemsize
    if count == 0:
        return np.zeros(0, TOKEN_DTYPE)
    try:
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=offset, shape=(count,))
    except OSError as e:
        raise ConfigError(f"{where}: cannot map it into memory ({e.strerror or e})") from None


def check_ids(tokens: np.ndarray, vocab_size: int, where: str, start: int = 0) -> None:
    """Raises ``ConfigError`` naming ``where`` if a token id of ``tokens`` is ≥ ``vocab_size``.

    ``start`` is the position of ``tokens[0]`` in its file, for the message.
    """
    if len(tokens) and int(tokens.max()) >= vocab_size:
        i = int(np.argmax(tokens >= vocab_size))
        raise ConfigError(
            f"{where}: token id {int(tokens[i])} at token {start + i} is not below "
            f"model.vocab_size={vocab_size}; set model.vocab_size to the tokenizer's (50304 "
            "for GPT-2)"
        )


def tokenizer_of(shard: pathlib.Path) -> str | None:
    """The tokenizer that ``prepare.json`` beside ``shard`` names (``lmo-optax prepare``
    writes it), or None when there is none or it cannot be read."""
    try:
        manifest = json.loads((shard.parent / "prepare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tokenizer = manifest.get("tokenizer") if isinstance(manifest, dict) else None
    return tokenizer if isinstance(tokenizer, str) else None


def write(path: pathlib.Path, tokens: np.ndarray) -> None:
    """Writes ``tokens`` (ids below 65536) as a shard with a header (llm.c's format)."""
    tokens = np.asarray(tokens)
    if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(TOKEN_DTYPE).max):
        raise ValueError("token ids must be in [0, 65535] for uint16 shards")
    header = np.zeros(HEADER_INTS, "<i4")
    header[:3] = MAGIC, VERSION, len(tokens)
    with path.open("wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE).tobytes())
