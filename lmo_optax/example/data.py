"""The training data: token ids from text, the standard library or token shards; no download.

``--data`` (``TrainConfig.data``) takes one of:

- ``pydoc_data`` (the default): the CPython documentation that ships with every Python in the
  standard-library module ``pydoc_data.topics`` (about 465 KB of English), as bytes;
- ``stdlib``: the standard library's own sources, about 12 MB (``lmo_optax.example.corpus``);
- a glob of ``.bin`` token shards, or one shard (``lmo_optax.example.shards``; ``lmo-optax
  prepare`` writes them), memory-mapped;
- the path of any other local file: UTF-8 text, as bytes.

Text tokens are bytes (vocabulary 256); shards hold a tokenizer's ids, below
``model.vocab_size``. Without ``--val-data`` (``TrainConfig.val_data``) the last
``val_fraction`` of the tokens is held out for validation; with it, the whole of ``--data`` is
trained on and the whole of ``--val-data`` (any of the forms above) validated on.

Batches are functions of (seed, split, step): a resumed run sees the same batches, and the
processes of a multi-process run read their rows of the same global batch that one process
would draw. Validation batch ``i`` is drawn with step ``i``, so every evaluation sees the same
windows.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, NamedTuple

import numpy as np

from lmo_optax.example import corpus, shards
from lmo_optax.example.errors import ConfigError

DEFAULT_CORPUS = "pydoc_data"
BYTE_VOCABULARY = 256  # the tokens of text are bytes
_SPLITS = {"train": 0, "val": 1}


def default_corpus_text() -> str:
    """The text of every topic of ``pydoc_data.topics``, in sorted topic order."""
    from pydoc_data import topics  # standard library; no download

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def load_text(path: str | None, flag: str = "--data") -> tuple[str, str]:
    """(text, description) of the text file at ``path``, or of the default corpus for None."""
    if path is None or path == DEFAULT_CORPUS:
        return default_corpus_text(), "pydoc_data.topics (CPython documentation, stdlib)"
    p = pathlib.Path(path)
    if not p.exists():
        raise ConfigError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise ConfigError(f"{flag} {path}: not a regular file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag} {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read it ({e.strerror})") from None
    if not text:
        raise ConfigError(f"{flag} {path}: the file is empty")
    return text, str(p)


class Piece(NamedTuple):
    """Token ids from one file, or a part of them: ``tokens`` start at token ``start`` of the
    file ``name`` (for messages)."""

    tokens: np.ndarray
    name: str
    start: int = 0


@dataclasses.dataclass(frozen=True)
class Source:
    """Token ids from one ``--data`` or ``--val-data`` value.

    Attributes:
      pieces: the token arrays (one per shard, or one for text), each with the name of the
        file it comes from, for messages.
      description: what the tokens are, for the log.
      manifest: what identifies them (for ``stdlib``: files, bytes and SHA-256).
      tokenizer: what the ids mean: ``"bytes"`` for text, the tokenizer that ``prepare.json``
        beside the shards names, or ``None`` for shards without one (unknown).
    """

    pieces: list[Piece]
    description: str
    manifest: dict[str, Any]
    tokenizer: str | None = "bytes"

    def __len__(self) -> int:
        return sum(len(p.tokens) for p in self.pieces)


def load_source(spec: str | None, *, context: int, vocab_size: int, flag: str = "--data") -> Source:
    """The tokens of ``spec`` (see the module docstring); ``flag`` names it in errors.

    Raises:
      ConfigError: a text file that is missing, empty or not UTF-8; shards that no file
        matches, that are malformed, shorter than ``context + 2`` tokens, or start with an id
        outside the vocabulary (``shards.read``, ``shards.check_ids``).
    """
    if spec == corpus.NAME:
        data, manifest = corpus.load()
        description = (
            f"the Python {manifest['python']} standard library ({manifest['files']} files, "
            f"sha256 {manifest['sha256'][:12]})"
        )
        return Source([Piece(data, description)], description, manifest)
    if spec is not None and shards.is_pattern(spec):
        pieces = []
        for path in shards.find(spec, flag):
            tokens = shards.read(path, flag)
            if len(tokens) < context + 2:
                raise ConfigError(
                    f"{flag} {path}: {len(tokens)} tokens, shorter than model.context + 2 = "
                    f"{context + 2} (one window and its next token)"
                )
            shards.check_ids(tokens[: shards.SCAN_TOKENS], vocab_size, f"{flag} {path}")
            pieces.append(Piece(tokens, str(path)))
        total = sum(len(p.tokens) for p in pieces)
        description = f"{spec} ({len(pieces)} shards, {total:,} tokens)"
        manifest = {"shards": [{"path": p.name, "tokens": len(p.tokens)} for p in pieces]}
        tokenizer = shards.tokenizer_of(pathlib.Path(pieces[0].name))
        return Source(pieces, description, manifest, tokenizer)
    text, description = load_text(spec, flag)
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return Source([Piece(data, description)], description, {"bytes": len(data)})


def _tail(pieces: list[Piece], n: int) -> tuple[list[Piece], list[Piece]]:
    """(head, tail) of the concatenated ``pieces``, the tail holding their last ``n`` tokens."""
    head, tail = [], []
    for p in reversed(pieces):
        keep = len(p.tokens) - min(n, len(p.tokens))
        if keep < len(p.tokens):
            tail.insert(0, Piece(p.tokens[keep:], p.name, p.start + keep))
        if keep:
            head.insert(0, Piece(p.tokens[:keep], p.name, p.start))
        n -= len(p.tokens) - keep
    return head, tail


@dataclasses.dataclass(frozen=True)
class TokenDataset:
    """Train and validation tokens; batches draw windows with replacement.

    Any batch size fits a split with one window; a split shorter than that is a
    ``ConfigError``. A window never crosses from one shard into the next.

    Attributes:
      train_pieces, val_pieces: the token arrays of each split (shards or parts of them),
        each with the name of its file.
      description: what the data are, for the log.
      vocab_size: every token id drawn is checked to be below it.
      manifest: what identifies the data (in the run's ``summary.json``).
      tokenizer: what the training ids mean (``Source.tokenizer``), for samples.
    """

    train_pieces: list[Piece]
    val_pieces: list[Piece]
    description: str
    vocab_size: int = BYTE_VOCABULARY
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: str | None = "bytes"

    @property
    def sizes(self) -> tuple[int, int]:
        """(train tokens, validation tokens)."""
        return tuple(sum(len(p.tokens) for p in x) for x in (self.train_pieces, self.val_pieces))

    @classmethod
    def from_text(
        cls, text: str, *, context: int, val_fraction: float = 0.1, description: str = ""
    ) -> TokenDataset:
        """The bytes of ``text``, the last ``val_fraction`` held out."""
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        source = Source([Piece(data, description or "text")], description, {"bytes": len(data)})
        return cls.split(source, context=context, val_fraction=val_fraction)

    @classmethod
    def split(
        cls,
        source: Source,
        *,
        context: int,
        val_fraction: float,
        vocab_size: int = BYTE_VOCABULARY,
    ) -> TokenDataset:
        """``source`` with its last ``val_fraction`` of tokens held out for validation."""
        n_val = int(len(source) * val_fraction)
        train, val = _tail(source.pieces, n_val)
        need = context + 2  # a window of context + 1 tokens, at two offsets at least
        train = [p for p in train if len(p.tokens) >= need]
        val = [p for p in val if len(p.tokens) >= need]
        if not train or not val:
            n_train = len(source) - n_val
            raise ConfigError(
                f"--data {source.description or 'text'} is too short: {len(source)} tokens give "
                f"{n_train} train / {n_val} validation tokens (val_fraction={val_fraction:g}), "
                f"and each split needs a piece of at least model.context + 2 = {need}; use "
                "more data, a smaller model.context or another val_fraction"
            )
        return cls(train, val, source.description, vocab_size, source.manifest, source.tokenizer)

    @classmethod
    def load(
        cls,
        path: str | None,
        *,
        context: int,
        val_fraction: float = 0.1,
        vocab_size: int = BYTE_VOCABULARY,
        val_data: str | None = None,
    ) -> TokenDataset:
        """The data of ``--data path`` (and ``--val-data val_data``); see the module docstring."""
        source = load_source(path, context=context, vocab_size=vocab_size)
        if not val_data:
            return cls.split(
                source, context=context, val_fraction=val_fraction, vocab_size=vocab_size
            )
        val = load_source(val_data, context=context, vocab_size=vocab_size, flag="--val-data")
        for flag, whole in (("--data", source), ("--val-data", val)):
            if len(whole) < context + 2:  # shards are checked one by one as they are read
                raise ConfigError(
                    f"{flag} {whole.description}: {len(whole)} tokens, shorter than "
                    f"model.context + 2 = {context + 2} (one window and its next token)"
                )
        manifest = {"train": source.manifest, "val": val.manifest}
        description = f"{source.description}, validation {val.description}"
        return cls(source.pieces, val.pieces, description, vocab_size, manifest, source.tokenizer)

    def batch(
        self,
        split: str,
        *,
        seed: int,
        step: int,
        batch_size: int,
        context: int,
        rows: slice = slice(None),
    ) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of the global batch's ``rows``, each (context,) long: a function
        of (seed, split, step) only.

        Every process of a multi-process run draws the same global batch and reads only the
        rows of its devices. Raises ``ConfigError`` naming the file when a window holds a token
        id ≥ ``vocab_size``.
        """
        pieces = self.train_pieces if split == "train" else self.val_pieces
        rng = np.random.default_rng([seed, _SPLITS[split], step])
        counts = np.array([len(p.tokens) - context - 1 for p in pieces])
        ends = np.cumsum(counts)
        starts = rng.integers(0, ends[-1], size=batch_size)[rows]
        batch_size = len(starts)
        which = np.searchsorted(ends, starts, side="right")
        offsets = starts - (ends - counts)[which]
        window = np.empty((batch_size, context + 1), np.int32)
        for i in np.unique(which):
            rows = which == i
            array, name, first = pieces[i]
            idx = offsets[rows, None] + np.arange(context + 1)[None, :]
            window[rows] = array[idx]
            if window[rows].max() >= self.vocab_size:  # a few microseconds a batch
                start = int(offsets[rows][np.argmax(window[rows].max(axis=1) >= self.vocab_size)])
                window_ids = array[start : start + context + 1]
                shards.check_ids(window_ids, self.vocab_size, name, first + start)
        return window[:, :-1], window[:, 1:]
