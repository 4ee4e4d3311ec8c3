"""Time series: loading (bundled or CSV), scaling, and forecasting windows."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lstmbench.errors import DataError, NonFiniteError, ShapeError

BUNDLED_SERIES: tuple[str, ...] = ("sunspots", "nile")

# Which CSV column of each bundled file is the index (the rest are values).
_BUNDLED_INDEX = {"sunspots": "year", "nile": "year"}


@dataclass(frozen=True)
class Series:
    """A time series of N steps and C columns; arrays are read-only copies."""

    values: np.ndarray  # (N, C) float64
    columns: tuple[str, ...]
    index: np.ndarray | None = None  # (N,) e.g. years or datetime64 dates; None -> 0..N-1
    name: str = "series"
    source: str = "user data"
    index_name: str | None = None  # the CSV column the index came from, if any

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        if values.ndim == 1:  # a single column given as a flat array
            values = values.reshape(-1, 1)
        if values.ndim != 2:
            raise ShapeError(f"Series values must be 2-D (N, C); got shape {values.shape}")
        columns = tuple(str(c) for c in self.columns)
        if len(columns) != values.shape[1]:
            raise ShapeError(
                f"Series has {values.shape[1]} value columns but {len(columns)} column names"
            )
        index = np.arange(len(values)) if self.index is None else np.array(self.index)
        if index.shape != (len(values),):
            raise ShapeError(f"Series index must have shape ({len(values)},); got {index.shape}")
        values.setflags(write=False)
        index.setflags(write=False)
        # Frozen dataclass: normalised fields are set through object.__setattr__.
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "index", index)

    def __len__(self) -> int:
        return len(self.values)


def load_series(name: str) -> Series:
    """Load a series shipped with lstmbench (no network needed)."""
    if name not in BUNDLED_SERIES:
        raise DataError(
            f"unknown bundled series {name!r}; available: {', '.join(BUNDLED_SERIES)}"
        )
    folder = resources.files("lstmbench.data") / "bundled"
    source = (folder / f"{name}.SOURCE.txt").read_text(encoding="utf-8").splitlines()[0]
    with resources.as_file(folder / f"{name}.csv") as path:
        series = read_csv_series(path, index_column=_BUNDLED_INDEX[name])
    return Series(series.values, series.columns, series.index, name=name, source=source,
                  index_name=series.index_name)


def read_csv_series(
    path: str | Path,
    columns: Sequence[str] | None = None,
    index_column: str | None = None,
    detect_index: bool = True,
) -> Series:
    """Read a comma-separated file with a header row into a Series.

    ``columns`` picks the value columns by name.  By default every column
    except the index column whose first data cell is a number is used, so a
    text column (a label) is skipped rather than reported.  Without
    ``index_column``, a first column of strictly increasing integers (years)
    or ISO 8601 dates is taken as the index (``detect_index=False``: never;
    ``Series.index_name`` says which column it was).  Every problem raises
    DataError naming the file, line and column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(_numbered_rows(csv.reader(f)))
    except OSError as e:
        raise DataError(f"cannot read CSV file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {path} is not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise DataError(f"CSV file {path} is malformed: {e}") from None

    if not rows:
        raise DataError(f"CSV file {path} is empty (no header row)")
    header = [h.strip() for h in rows[0][1]]
    body = rows[1:]
    if len(set(header)) != len(header):
        raise DataError(f"CSV file {path} has duplicate column names in its header: {header}")
    if not body:
        raise DataError(f"CSV file {path} has a header but no data rows")
    for line, row in body:
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {line}: {len(row)} cells but the header has {len(header)} columns"
            )

    def position(column: str) -> int:
        if column not in header:
            raise DataError(
                f"CSV file {path} has no column {column!r}; available: {', '.join(header)}"
            )
        return header.index(column)

    index_pos = None if index_column is None else position(index_column)
    if index_pos is None and detect_index and len(header) > 1 and (columns is None or header[0] not in columns):
        if _looks_like_index([row[0].strip() for _, row in body]):
            index_pos = 0
    if columns is None:
        wanted = [
            i for i, cell in enumerate(body[0][1])
            if i != index_pos and (cell.strip() == "" or _is_number(cell))
        ]
        if not wanted:
            raise DataError(f"CSV file {path} has no numeric value columns (header: {header})")
    else:
        if isinstance(columns, str):  # a lone name, not a sequence of letters
            columns = [columns]
        wanted = [position(c) for c in columns]
        if not wanted:
            raise DataError("columns must name at least one column")

    values = np.empty((len(body), len(wanted)), dtype=np.float64)
    for r, (line, row) in enumerate(body):
        for c, i in enumerate(wanted):
            values[r, c] = _parse_cell(row[i], path, line, header[i])

    index = None
    if index_pos is not None:
        cells = [row[index_pos].strip() for _, row in body]
        for (line, _), cell in zip(body, cells):
            if cell == "":
                raise DataError(f"{path}, line {line}, column {header[index_pos]!r}: empty cell")
        index = _parse_index(cells)
    return Series(values, tuple(header[i] for i in wanted), index, name=path.stem,
                  source=f"user CSV file {path}", index_name=None if index_pos is None else header[index_pos])


def _numbered_rows(reader: Any):
    """Yield (file line number, row), skipping blank lines."""
    for row in reader:
        if row and any(cell.strip() for cell in row):
            yield reader.line_num, row


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _parse_cell(cell: str, path: Path, line: int, column: str) -> float:
    text = cell.strip()
    where = f"{path}, line {line}, column {column!r}"
    if text == "":
        raise DataError(f"{where}: empty cell (missing values are not supported)")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {text!r} is not a finite number (missing values are not supported)")
    return value


def _parse_index(cells: list[str]) -> np.ndarray:
    """Integers if every cell is one (years), else floats, else ISO 8601 dates
    (datetime64), else the strings."""
    for kind in (int, float, np.datetime64):
        try:
            return np.array([kind(c) for c in cells])
        except ValueError:
            pass
    return np.array(cells)


def _looks_like_index(cells: list[str]) -> bool:
    """Whether ``cells`` are a time index: strictly increasing integers or ISO 8601 dates."""
    if len(cells) < 2:
        return False
    index = _parse_index(cells)
    return index.dtype.kind in "iM" and bool(np.all(index[1:] > index[:-1]))


def index_description(series: Series) -> str:
    """How the series' index was read, for messages: "column 'year' (strictly increasing integers)"."""
    if series.index_name is None:
        return "row numbers"
    kind = {"i": "strictly increasing integers", "M": "dates", "f": "numbers"}.get(series.index.dtype.kind, "labels")
    return f"column {series.index_name!r} ({kind})"


def future_index(index: np.ndarray, steps: int) -> np.ndarray | None:
    """The index of the ``steps`` rows after the end of a regularly spaced index
    (years, dates a fixed time apart, row numbers); None if the spacing varies."""
    if len(index) < 2 or index.dtype.kind not in "iuM":
        return None
    gaps = np.diff(index)
    if not np.all(gaps == gaps[0]):
        return None
    return index[-1] + gaps[0] * np.arange(1, steps + 1)


@dataclass(frozen=True)
class Standardizer:
    """Per-column z-scoring; fitted on training data only to avoid leakage."""

    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,), never 0

    def __post_init__(self) -> None:
        try:
            mean = np.array(self.mean, dtype=np.float64).reshape(-1)
            std = np.array(self.std, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"Standardizer mean and std must be numbers: {e}") from None
        if mean.shape != std.shape:
            raise ShapeError(f"Standardizer mean has {mean.size} columns but std has {std.size}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise DataError("Standardizer mean must be finite and std finite and positive")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def fit(cls, values: np.ndarray) -> "Standardizer":
        """Column means and population stds of (N, C) values; a constant column gets std 1."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ShapeError(f"Standardizer.fit needs non-empty (N, C) values; got shape {values.shape}")
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale (..., C) values to zero mean and unit std per column."""
        values = self._check(values)
        return (values - self.mean) / self.std

    def inverse(self, values: np.ndarray, column: int | None = None) -> np.ndarray:
        """Undo transform: all columns of (..., C) values, or any-shape values of one column."""
        if column is None:
            return self._check(values) * self.std + self.mean
        if not 0 <= column < self.mean.size:
            raise ShapeError(f"column {column} out of range for {self.mean.size} columns")
        return np.asarray(values, dtype=np.float64) * self.std[column] + self.mean[column]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Standardizer":
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            raise DataError(f"not a Standardizer dict (needs 'mean' and 'std' lists): {d!r:.200}")
        return cls(d["mean"], d["std"])

    def _check(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 0 or values.shape[-1] != self.mean.size:
            raise ShapeError(
                f"expected values with last dimension {self.mean.size}; got shape {values.shape}"
            )
        return values


@dataclass(frozen=True)
class WindowSplit:
    """Forecasting examples of one part; all values standardized."""

    x: np.ndarray  # (n, window, C) inputs
    y: np.ndarray  # (n, horizon) the next `horizon` target-column values
    last_input: np.ndarray  # (n, horizon) last target value of each window, for the naive forecast
    target_start: np.ndarray  # (n,) series row of each example's first target (int64)

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class WindowedDataset:
    train: WindowSplit
    val: WindowSplit
    test: WindowSplit
    scaler: Standardizer
    window: int
    horizon: int
    target_column: int
    series: Series


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) lengths of a chronological split of n items."""
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (isinstance(f, (int, float)) and 0 < f < 1):
            raise DataError(f"{label} must be a number in (0, 1); got {f!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction + test_fraction must be below 1 to leave training data; "
            f"got {val_fraction} + {test_fraction}"
        )
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    return n - n_val - n_test, n_val, n_test


def make_windows(
    series: Series,
    window: int,
    horizon: int = 1,
    target_column: int | str = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> WindowedDataset:
    """Cut a series into sliding forecasting windows, split chronologically.

    The rows are split into train, val and test parts, in that order, and the
    scaler is fitted on the train rows only.  Every target value belongs to
    exactly one part; a val or test window may take its *inputs* from the rows
    just before its part (the end of the previous part), because at forecast
    time the past is known.  So train needs ``window + horizon`` rows, while
    val and test each need only ``horizon`` rows.
    """
    _check_positive_int("window", window)
    _check_positive_int("horizon", horizon)
    n = len(series.values)
    if n == 0:
        raise DataError(f"series {series.name!r} is empty")
    target = _target_position(series, target_column)
    bad = np.argwhere(~np.isfinite(series.values))
    if len(bad):
        row, col = bad[0]
        raise NonFiniteError(
            f"series {series.name!r} has a non-finite value ({series.values[row, col]}) "
            f"at row {row} (index {series.index[row]}), column {series.columns[col]!r}; "
            f"{len(bad)} non-finite values in all"
        )

    n_train, n_val, n_test = split_sizes(n, val_fraction, test_fraction)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, n)}
    needed = {"train": window + horizon, "val": horizon, "test": horizon}
    for part, (a, b) in bounds.items():
        if b - a < needed[part]:
            extra = f"window={window} + horizon={horizon}" if part == "train" else f"horizon={horizon}"
            raise DataError(
                f"the {part} part of series {series.name!r} has {b - a} values (of {n}), "
                f"too few for one window: {extra} needs at least {needed[part]}; "
                f"use a longer series, a smaller window/horizon or other fractions"
            )

    scaler = Standardizer.fit(series.values[:n_train])
    scaled = scaler.transform(series.values)
    splits = {}
    for part, (a, b) in bounds.items():
        first = window if part == "train" else a  # train has no earlier rows for context
        starts = np.arange(first, b - horizon + 1)
        inputs = starts[:, None] + np.arange(-window, 0)  # rows of each window
        targets = starts[:, None] + np.arange(horizon)  # rows of each window's targets
        last = scaled[starts - 1, target]
        splits[part] = WindowSplit(
            x=scaled[inputs],
            y=scaled[targets, target],
            last_input=np.repeat(last[:, None], horizon, axis=1),
            target_start=starts.astype(np.int64),
        )
    return WindowedDataset(splits["train"], splits["val"], splits["test"], scaler,
                           window, horizon, target, series)


def _check_positive_int(label: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{label} must be an integer >= 1; got {value!r}")


def _target_position(series: Series, target_column: int | str) -> int:
    if isinstance(target_column, str):
        if target_column not in series.columns:
            raise DataError(
                f"series {series.name!r} has no column {target_column!r}; "
                f"available: {', '.join(series.columns)}"
            )
        return series.columns.index(target_column)
    n_columns = len(series.columns)
    if isinstance(target_column, bool) or not isinstance(target_column, (int, np.integer)) \
            or not 0 <= target_column < n_columns:
        raise DataError(
            f"target_column must be a column name or an index in 0..{n_columns - 1}; "
            f"got {target_column!r}"
        )
    return int(target_column)
