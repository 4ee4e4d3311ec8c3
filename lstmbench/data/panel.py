"""Several series in one CSV file (a "panel": stores, sensors, countries), for one global model.

``read_csv_panel`` reads each series as ``read_csv_series`` reads a file; ``make_panel_windows``
cuts them into forecasting windows that never cross from one series into another. A series
(or the start of one) with fewer rows than the window gives shorter examples, down to
``min_length`` rows, which training takes with ``lengths`` (design.md section 8).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from lstmbench.data.series import (
    Series,
    Standardizer,
    WindowedDataset,
    WindowSplit,
    _check_file,
    _check_positive_int,
    _position,
    _read_table,
    _series_from_table,
    _standardize,
    _target_position,
    _transform_offset,
    default_target,
    model_values,
    split_sizes,
)
from lstmbench.errors import DataError, NonFiniteError


def read_csv_panel(path: str | Path, series_column: str, columns: Sequence[str] | None = None,
                   index_column: str | None = None, detect_index: bool = True) -> list[Series]:
    """The series of a CSV file whose ``series_column`` names the series each row belongs to.

    Each series is the rows with one name (in file order), read as read_csv_series reads a
    whole file without the series column: its value columns, its own time index (detected
    or ``index_column``) and time order. ``Series.name`` is the name; the list follows the
    names' first appearance. Every series must have the same value columns.
    """
    path = Path(path)
    _check_file(path)
    header, body = _read_table(path)
    at = _position(path, header, series_column)
    if columns is not None and series_column in columns:
        raise DataError(f"CSV file {path}: column {series_column!r} names the series (--series-column), so it "
                        "cannot be a value column (--columns) too")
    if index_column == series_column:
        raise DataError(f"CSV file {path}: column {series_column!r} names the series; it cannot be the time index too")
    groups: dict[str, list] = {}
    for line, row in body:
        name = row[at].strip()
        if not name:
            raise DataError(f"{path}, line {line}, column {series_column!r}: empty cell; every row must name its "
                            "series")
        groups.setdefault(name, []).append((line, row[:at] + row[at + 1 :]))
    rest = header[:at] + header[at + 1 :]
    if not rest:
        raise DataError(f"CSV file {path} has no column besides the series column {series_column!r}")
    out = []
    for name, rows in groups.items():
        one = _series_from_table(path, rest, rows, columns, index_column, detect_index)
        out.append(dataclasses.replace(one, name=name, notes=tuple(f"series {name!r}: {n}" for n in one.notes)))
    for other in out[1:]:
        if other.columns != out[0].columns:
            raise DataError(f"CSV file {path}: series {out[0].name!r} has the value columns {', '.join(out[0].columns)} "
                            f"but series {other.name!r} has {', '.join(other.columns)} (a number in one series' first "
                            "row is a text in another's); name the value columns with --columns")
    return out


def make_panel_windows(
    series: Sequence[Series],
    window: int,
    horizon: int = 1,
    target_column: int | str | None = None,
    min_length: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    target_transform: str = "level",
) -> WindowedDataset:
    """Forecasting windows from several series with the same columns, for one global model.

    Each series is split chronologically into train, val and test rows as make_windows splits
    one, and every target belongs to one part. An example's inputs are the ``window`` rows
    before its first target in its own series, or, where the series has fewer rows before it,
    all of them if they are at least ``min_length`` (default half the window): such an example
    is shorter, ``lengths`` says by how much, and its padding (zeros) comes after its rows.
    So windows never cross from one series into another. The scaler is per column, fitted
    on the training rows of every series together. ``target_transform`` as in make_windows
    (each series differenced on its own; an example needs min_length changes, so one row more).
    """
    _check_positive_int("window", window)
    _check_positive_int("horizon", horizon)
    offset = _transform_offset(target_transform)
    min_length = max(1, window // 2) if min_length is None else min_length
    _check_positive_int("min_length", min_length)
    if min_length > window:
        raise DataError(f"min_length must be at most the window ({window}); got {min_length}")
    if not series:
        raise DataError("no series to make windows from")
    first = series[0]
    target = default_target(first) if target_column is None else _target_position(first, target_column)
    for s in series:
        bad = np.argwhere(~np.isfinite(s.values))
        if len(bad):
            raise NonFiniteError(f"series {s.name!r} has a non-finite value at row {bad[0][0]}, column "
                                 f"{s.columns[bad[0][1]]!r}")
    bounds = [_part_bounds(len(s), val_fraction, test_fraction) for s in series]
    n_train = [b["train"][1] for b in bounds]
    seen = [dataclasses.replace(s, values=model_values(s.values, target_transform)) for s in series]
    scaler = _panel_scaler(seen, n_train, offset)
    scaled = [(s.values - scaler.mean) / scaler.std for s in seen]
    no_change = -scaler.mean[target] / scaler.std[target] if offset else None
    splits = {part: _panel_split(scaled, [b[part] for b in bounds], window, horizon, target, min_length, no_change)
              for part in ("train", "val", "test")}
    for part, split in splits.items():
        if len(split) == 0:
            raise DataError(f"the {part} part of the {len(series)} series has no example: each needs at least "
                            f"min_length={min_length} rows before a target{' (and one more for diff)' * offset} "
                            f"and horizon={horizon} target rows; use longer series, a smaller --min-length or "
                            "--horizon")
    return WindowedDataset(splits["train"], splits["val"], splits["test"], scaler, window, horizon, target, first,
                           panel=tuple(series), min_length=min_length, target_transform=target_transform,
                           train_rows=tuple(n_train))


def _part_bounds(n: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    n_train, n_val, _ = split_sizes(n, val_fraction, test_fraction)
    return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}


def _panel_scaler(series: Sequence[Series], n_train: list[int], first: int = 0) -> Standardizer:
    """The scaler of every series' training rows (from row ``first`` of each) together (its
    checks: a value too large to scale is an error naming the column), checked on every row
    of every series."""
    rows = [s.values[first:n] for s, n in zip(series, n_train)] + [s.values[n:] for s, n in zip(series, n_train)]
    together = Series(np.concatenate(rows), series[0].columns, name=f"{len(series)} series", source=series[0].source)
    return _standardize(together, sum(n - first for n in n_train))[0]


def _panel_split(scaled: list[np.ndarray], bounds: list[tuple[int, int]], window: int, horizon: int, target: int,
                 min_length: int, no_change: float | None = None) -> WindowSplit:
    """One part's examples of every series, series after series. ``no_change``: the series
    are differences (their row 0 has none), and this is the naive forecast, a change of 0."""
    C = scaled[0].shape[1]
    offset = 0 if no_change is None else 1
    xs, ys, last, starts, lengths, ids = [], [], [], [], [], []
    for k, (values, (a, b)) in enumerate(zip(scaled, bounds)):
        begin = max(a, min_length + offset)  # at least min_length input rows before the first target
        start = np.arange(begin, b - horizon + 1)
        length = np.minimum(window, start - offset)
        x = np.zeros((len(start), window, C))
        for i, (s, n) in enumerate(zip(start, length)):
            x[i, :n] = values[s - n : s]  # the rows right before the target, padding after them
        xs.append(x)
        ys.append(values[start[:, None] + np.arange(horizon), target].reshape(len(start), horizon))
        naive = values[start - 1, target] if no_change is None else np.full(len(start), no_change)
        last.append(np.repeat(naive[:, None], horizon, axis=1))
        starts.append(start)
        lengths.append(length)
        ids.append(np.full(len(start), k))
    return WindowSplit(x=np.concatenate(xs), y=np.concatenate(ys), last_input=np.concatenate(last),
                       target_start=np.concatenate(starts).astype(np.int64),
                       lengths=np.concatenate(lengths).astype(np.int64), series_id=np.concatenate(ids).astype(np.int64))
