"""Character-level text: bundled texts, vocabulary, next-symbol datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

import numpy as np

from lstmbench.data.series import split_sizes
from lstmbench.errors import DataError
from lstmbench.resources import check_fits

BUNDLED_TEXTS: tuple[str, ...] = ("shakespeare",)

UNK = "\ufffd"  # the Unicode replacement character; always id 0


def load_text(name: str) -> str:
    """A text shipped with lstmbench (no network needed)."""
    if name not in BUNDLED_TEXTS:
        raise DataError(f"unknown bundled text {name!r}; available: {', '.join(BUNDLED_TEXTS)}")
    path = resources.files("lstmbench.data") / "bundled" / f"{name}.txt"
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Vocabulary:
    """Single-character symbols; id 0 is UNK, the others sorted."""

    symbols: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        symbols = tuple(self.symbols)
        if not symbols or symbols[0] != UNK:
            raise DataError(f"a vocabulary's first symbol must be UNK {UNK!r}")
        if any(not isinstance(s, str) or len(s) != 1 for s in symbols):
            raise DataError("vocabulary symbols must be single characters")
        if len(set(symbols)) != len(symbols):
            raise DataError("vocabulary symbols must be unique")
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "_ids", {s: i for i, s in enumerate(symbols)})

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        return cls((UNK, *sorted(set(text) - {UNK})))

    @property
    def size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> np.ndarray:
        """int64 ids; symbols not in the vocabulary become UNK (0)."""
        return np.array([self._ids.get(ch, 0) for ch in text], dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = self._check_ids(ids)
        return "".join(self.symbols[i] for i in ids.reshape(-1))

    def one_hot(self, ids: Sequence[int] | np.ndarray, dtype="float64") -> np.ndarray:
        """(..., V) with a single 1 per position."""
        ids = self._check_ids(ids)
        out = np.zeros(ids.shape + (self.size,), dtype=dtype)
        np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
        return out

    def to_list(self) -> list[str]:
        return list(self.symbols)

    @classmethod
    def from_list(cls, symbols: Sequence[str]) -> "Vocabulary":
        return cls(tuple(symbols))

    def _check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"symbol ids must be integers; got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise DataError(f"symbol id out of range 0..{self.size - 1}: "
                            f"{ids.min() if ids.min() < 0 else ids.max()}")
        return ids


@dataclass(frozen=True)
class TextSplit:
    x: np.ndarray  # (n, seq_len, V) one-hot inputs (float64 unless asked otherwise)
    y: np.ndarray  # (n, seq_len) int64: y[i, t] is the id of the symbol after x[i, t]

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class TextDataset:
    train: TextSplit
    val: TextSplit
    test: TextSplit
    vocab: Vocabulary
    seq_len: int


def make_text_dataset(
    text: str,
    seq_len: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    stride: int | None = None,
    dtype="float64",
) -> TextDataset:
    """Next-symbol sequences from a chronological split of ``text``.

    The vocabulary comes from the training text only, so val/test symbols
    never seen in training map to UNK.  Sequences start every ``stride``
    characters (default ``seq_len``: non-overlapping) and never cross a part
    boundary, so each part needs ``seq_len + 1`` characters.  The one-hot inputs
    take n * seq_len * V bytes of ``dtype`` (checked against the memory available
    before they are made): a small stride on a long text is large.
    """
    for label, value in (("seq_len", seq_len), ("stride", seq_len if stride is None else stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{label} must be an integer >= 1; got {value!r}")
    if not isinstance(text, str):
        raise DataError(f"text must be a str; got {type(text).__name__}")
    stride = seq_len if stride is None else stride
    n_train, n_val, n_test = split_sizes(len(text), val_fraction, test_fraction)
    parts = {"train": text[:n_train], "val": text[n_train:n_train + n_val],
             "test": text[n_train + n_val:]}
    for part, chunk in parts.items():
        if len(chunk) < seq_len + 1:
            raise DataError(
                f"the {part} part of the text has {len(chunk)} characters (of {len(text)}), "
                f"too few for one sequence: seq_len={seq_len} needs at least {seq_len + 1}"
            )

    vocab = Vocabulary.from_text(parts["train"])
    starts = {part: np.arange(0, len(chunk) - seq_len, stride) for part, chunk in parts.items()}
    symbols = sum(len(s) for s in starts.values()) * seq_len
    check_fits(symbols * vocab.size * np.dtype(dtype).itemsize,
               f"the one-hot text data ({symbols} positions x {vocab.size} distinct symbols)",
               "use a shorter text, a text with fewer distinct symbols, or a larger stride")
    splits = {}
    for part, chunk in parts.items():
        ids = vocab.encode(chunk)
        positions = starts[part][:, None] + np.arange(seq_len)
        splits[part] = TextSplit(x=vocab.one_hot(ids[positions], dtype), y=ids[positions + 1])
    return TextDataset(splits["train"], splits["val"], splits["test"], vocab, seq_len)

