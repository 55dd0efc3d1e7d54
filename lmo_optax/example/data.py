"""Byte-level text data with no download.

The default corpus is the CPython documentation text that ships with every Python install in
the standard-library module ``pydoc_data.topics`` (about 465 KB of English). Any local UTF-8
text file can be used instead. Tokens are bytes (vocabulary 256). The split and the batches are
deterministic functions of the seed and the step, so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from lmo_optax.example.errors import ConfigError

DEFAULT_CORPUS = "pydoc_data"
BYTE_VOCABULARY = 256  # the tokens are bytes


def default_corpus_text() -> str:
    """The text of every topic of ``pydoc_data.topics``, in sorted topic order."""
    from pydoc_data import topics  # standard library; no download

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def load_text(path: str | None) -> tuple[str, str]:
    """(text, description) of the corpus at ``path``, or of the default corpus for None."""
    if path is None or path == DEFAULT_CORPUS:
        return default_corpus_text(), "pydoc_data.topics (CPython documentation, stdlib)"
    p = pathlib.Path(path)
    if not p.exists():
        raise ConfigError(f"--data {path}: no such file")
    if not p.is_file():
        raise ConfigError(f"--data {path}: not a regular file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--data {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"--data {path}: cannot read it ({e.strerror})") from None
    if not text:
        raise ConfigError(f"--data {path}: the file is empty")
    return text, str(p)


@dataclasses.dataclass(frozen=True)
class ByteDataset:
    """Train and validation byte arrays, split at a fixed fraction (validation at the end).

    Batches draw their windows with replacement, so any batch size fits a split that holds
    one window; a split shorter than that is a ``ConfigError``.
    """

    train: np.ndarray
    val: np.ndarray
    description: str

    @classmethod
    def from_text(
        cls, text: str, *, context: int, val_fraction: float = 0.1, description: str = ""
    ) -> ByteDataset:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        n_val = int(len(data) * val_fraction)
        train, val = data[: len(data) - n_val], data[len(data) - n_val :]
        need = context + 2  # a window of context + 1 bytes, at two offsets at least
        if len(train) < need or len(val) < need:
            raise ConfigError(
                f"--data {description or 'text'} is too short: {len(data)} bytes give "
                f"{len(train)} train / {len(val)} validation bytes (val_fraction="
                f"{val_fraction:g}), and each split needs at least model.context + 2 = {need}; "
                "use a longer file, a smaller model.context or another val_fraction"
            )
        return cls(train, val, description)

    @classmethod
    def load(cls, path: str | None, *, context: int, val_fraction: float = 0.1) -> ByteDataset:
        text, description = load_text(path)
        return cls.from_text(
            text, context=context, val_fraction=val_fraction, description=description
        )

    def batch(self, split: str, *, seed: int, step: int, batch_size: int, context: int):
        """(inputs, targets) of shape (batch_size, context), a function of (seed, split, step)."""
        data = self.train if split == "train" else self.val
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, step])
        starts = rng.integers(0, len(data) - context - 1, size=batch_size)
        idx = starts[:, None] + np.arange(context + 1)[None, :]
        window = data[idx].astype(np.int32)
        return window[:, :-1], window[:, 1:]
