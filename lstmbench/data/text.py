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
# the end-of-record symbol of per-line text (make_line_dataset): no line holds one, and it
# prints as the line break it stands for
EOR = "\n"


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
    lengths: np.ndarray | None = None  # (n,) int64: the real steps of each row (per-line records), or None: all

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class TextDataset:
    train: TextSplit
    val: TextSplit
    test: TextSplit
    vocab: Vocabulary
    seq_len: int
    streams: int | None = None  # make_stream_dataset's streams; None: independent rows


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



def _check_count(label: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{label} must be an integer >= 1; got {value!r}")


def make_stream_dataset(
    text: str,
    seq_len: int,
    streams: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    dtype="float64",
) -> TextDataset:
    """Truncated-BPTT data (design.md section 8) from a chronological 80/10/10 split of ``text``.

    Each part of N symbols is cut into ``streams`` contiguous streams: stream b holds symbols
    [b*S, (b+1)*S), S = N // streams. Row k*streams + b of a split is chunk k of stream b: its
    inputs are symbols [k*T, (k+1)*T) of the stream (T = ``seq_len``) and its targets the same
    positions shifted by one, for every whole chunk (the last symbols of a stream, fewer than
    T after the last chunk's, are left out). A training step on chunk k starts from the state
    chunk k-1 ended with, so the state reaches back past T. Each part needs at least
    streams * (seq_len + 1) symbols. The vocabulary comes from the training part, as in
    make_text_dataset.
    """
    _check_count("seq_len", seq_len)
    _check_count("streams", streams)
    if not isinstance(text, str):
        raise DataError(f"text must be a str; got {type(text).__name__}")
    n_train, n_val, _ = split_sizes(len(text), val_fraction, test_fraction)
    parts = {"train": text[:n_train], "val": text[n_train:n_train + n_val], "test": text[n_train + n_val:]}
    for part, chunk in parts.items():
        if len(chunk) < streams * (seq_len + 1):
            raise DataError(
                f"the {part} part of the text has {len(chunk)} characters (of {len(text)}), too few for {streams} "
                f"streams (the batch size) of at least seq_len + 1 = {seq_len + 1} symbols: it needs "
                f"{streams * (seq_len + 1)}; use a longer text, a smaller batch size or a shorter seq_len")
    vocab = Vocabulary.from_text(parts["train"])
    chunks = {part: (len(chunk) // streams - 1) // seq_len for part, chunk in parts.items()}
    symbols = sum(chunks.values()) * streams * seq_len
    check_fits(symbols * vocab.size * np.dtype(dtype).itemsize,
               f"the one-hot text data ({symbols} positions x {vocab.size} distinct symbols)",
               "use a shorter text or a text with fewer distinct symbols")
    splits = {}
    for part, chunk in parts.items():
        ids, K = vocab.encode(chunk), chunks[part]
        stream_start = np.arange(streams) * (len(chunk) // streams)
        positions = (np.arange(K)[:, None, None] * seq_len + stream_start[None, :, None] + np.arange(seq_len))
        positions = positions.reshape(K * streams, seq_len)  # row k*streams + b: chunk k of stream b
        splits[part] = TextSplit(x=vocab.one_hot(ids[positions], dtype), y=ids[positions + 1])
    return TextDataset(splits["train"], splits["val"], splits["test"], vocab, seq_len, streams)


#: the fixed seed of make_line_dataset's shuffle (a property of the data, like the split)
LINE_SHUFFLE_SEED = 0


def make_line_dataset(
    text: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    dtype="float64",
) -> TextDataset:
    """One record per non-empty line (names, words, sentences), for many-to-many next-symbol
    prediction with an end-of-record symbol EOR.

    A record's inputs are EOR and then its symbols, its targets its symbols and then EOR, so
    the model learns how records start (after an EOR) and where they end. Rows are padded
    to the longest record + 1 steps with ``lengths`` = the record's symbols + 1. Lines are
    independent records, so they are split 80/10/10 after a fixed shuffle (a sorted list of
    names would otherwise put the last letters in the test part). The vocabulary is the
    training records' symbols and EOR.
    """
    if not isinstance(text, str):
        raise DataError(f"text must be a str; got {type(text).__name__}")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError("the text has no non-empty line: per-line training needs one record per line")
    lines = [lines[i] for i in np.random.default_rng(LINE_SHUFFLE_SEED).permutation(len(lines))]
    n_train, n_val, _ = split_sizes(len(lines), val_fraction, test_fraction)
    parts = {"train": lines[:n_train], "val": lines[n_train:n_train + n_val], "test": lines[n_train + n_val:]}
    empty = [part for part, records in parts.items() if not records]
    if empty:
        need = next(n for n in range(len(lines), 10**6) if min(split_sizes(n, val_fraction, test_fraction)) > 0)
        raise DataError(f"the text has {len(lines)} non-empty line(s), too few for a {', '.join(empty)} part "
                        f"(a share of the lines each): per-line training needs at least {need} lines")
    vocab = Vocabulary((UNK, *sorted((set("".join(parts["train"])) | {EOR}) - {UNK})))
    T = max(len(line) for line in lines) + 1
    check_fits(len(lines) * T * vocab.size * np.dtype(dtype).itemsize,
               f"the one-hot text data ({len(lines)} lines padded to {T} positions x {vocab.size} distinct symbols)",
               "use fewer or shorter lines")
    splits = {part: _records(records, vocab, T, dtype) for part, records in parts.items()}
    return TextDataset(splits["train"], splits["val"], splits["test"], vocab, T)


def _records(lines: list[str], vocab: Vocabulary, T: int, dtype) -> TextSplit:
    """Padded rows of per-line records (make_line_dataset): padding is zeros in x and UNK in y."""
    eor = vocab.encode(EOR)[0]
    ids = np.zeros((len(lines), T + 1), np.int64)
    lengths = np.empty(len(lines), np.int64)
    for i, line in enumerate(lines):
        ids[i, 0] = ids[i, len(line) + 1] = eor
        ids[i, 1 : len(line) + 1] = vocab.encode(line)
        lengths[i] = len(line) + 1
    x = vocab.one_hot(ids[:, :T], dtype)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0  # padding: no symbol
    return TextSplit(x=x, y=ids[:, 1:], lengths=lengths)
