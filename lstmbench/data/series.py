"""Time series: loading (bundled or CSV), scaling, and forecasting windows."""

from __future__ import annotations

import csv
import dataclasses
import math
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lstmbench.errors import DataError, NonFiniteError, ShapeError
from lstmbench.resources import check_fits, gigabytes

BUNDLED_SERIES: tuple[str, ...] = ("sunspots", "nile", "co2")

# Which CSV column of each bundled file is the index (the rest are values).
_BUNDLED_INDEX = {"sunspots": "year", "nile": "year", "co2": "date"}

# Column names (compared lower-case) that say the column holds time, not a value.
TIME_NAMES = frozenset({"year", "date", "time", "timestamp", "period", "month", "quarter", "day", "week",
                        "hour", "t"})

# Names of a period column after a year column, and the months in one such period.
PERIOD_MONTHS = {"quarter": 3, "qtr": 3, "q": 3, "month": 1, "mon": 1, "m": 1}

# Peak bytes of Python memory per byte of CSV file while read_csv_series holds its rows as
# lists of strings.  Measured once, tracemalloc's peak over a whole read of generated
# 200,000-row files: 28 for rows like "1700,5.0", 13 to 21 for a date or year and quarter
# with several floats, 30 for rows of ten 2-digit numbers, 85 to 100 for a single column of
# 1- or 2-digit numbers.  30 covers the usual shapes without refusing files that would fit.
CSV_PARSE_BYTES_PER_FILE_BYTE = 30


@dataclass(frozen=True)
class Series:
    """A time series of N steps and C columns; arrays are read-only copies."""

    values: np.ndarray  # (N, C) float64
    columns: tuple[str, ...]
    index: np.ndarray | None = None  # (N,) e.g. years or datetime64 dates; None -> 0..N-1
    name: str = "series"
    source: str = "user data"
    index_name: str | None = None  # the CSV column the index came from ("year+quarter" for two), if any
    notes: tuple[str, ...] = ()  # what reading the file did that the user should know, one sentence each
    index_columns: tuple[str, ...] = ()  # the CSV columns of the index; default: (index_name,)

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
        index_columns = tuple(self.index_columns) or ((self.index_name,) if self.index_name else ())
        # Frozen dataclass: normalised fields are set through object.__setattr__.
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        object.__setattr__(self, "index_columns", index_columns)

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
    return dataclasses.replace(series, name=name, source=source)


def read_csv_series(
    path: str | Path,
    columns: Sequence[str] | None = None,
    index_column: str | None = None,
    detect_index: bool = True,
) -> Series:
    """Read a comma-separated file with a header row into a Series.

    ``columns`` picks the value columns by name.  By default every column
    except the index whose first data cell is a number is used, so a text
    column (a label) is skipped rather than reported.

    The index: ``index_column`` names it; otherwise (unless ``detect_index``
    is False) the first column is taken when it holds ISO 8601 dates, or
    whole numbers that either run one way or sit under a name that says time
    (year, date, t, ...).  A year column followed by a quarter or month
    column gives one index of datetime64[M] months.  An index that runs
    newest first is put in time order; repeated or disordered index values
    are a DataError, except that a detected column whose name does not say
    time is then used as a value instead.  ``Series.notes`` says what was done.

    Every problem raises DataError naming the file, line and column; a file
    too large for this machine's memory raises ResourceError before it is read.
    """
    path = Path(path)
    _check_file(path)
    header, body = _read_table(path)
    return _series_from_table(path, header, body, columns, index_column, detect_index)


def _series_from_table(path: Path, header: list[str], body: list, columns: Sequence[str] | None,
                       index_column: str | None, detect_index: bool) -> Series:
    """The Series of a table read by _read_table (read_csv_series says how)."""
    if columns is not None:
        columns = _checked_names(path, header, columns)
    notes: list[str] = []
    index = None
    if index_column is not None:
        index = _named_index(path, header, body, index_column)
    elif detect_index and len(header) > 1 and len(body) > 1 and (columns is None or header[0] not in columns):
        index = _detected_index(path, header, body, notes)

    skip = () if index is None else index.positions
    wanted = _value_positions(path, header, body, columns, skip)
    values = np.empty((len(body), len(wanted)), dtype=np.float64)
    for r, (line, row) in enumerate(body):
        for c, i in enumerate(wanted):
            values[r, c] = _parse_cell(row[i], path, line, header[i])
    names = tuple(header[i] for i in wanted)
    source = f"user CSV file {path}"
    if index is None:
        return Series(values, names, name=path.stem, source=source, notes=tuple(notes))
    index, values = _in_time_order(index, values, wanted, notes)
    return Series(values, names, index.values, name=path.stem, source=source, index_name=index.name,
                  notes=tuple(notes), index_columns=index.names)


def _in_time_order(index: _Index, values: np.ndarray, wanted: list[int],
                   notes: list[str]) -> tuple[_Index, np.ndarray]:
    """The index and value rows oldest first, with ``notes`` on how the index was read."""
    if len(index.names) == 2:
        values_too = set(index.positions) & set(wanted)  # named in columns
        notes.append(f"time index read from {index.what} together ({index.labels[0]} to {index.labels[-1]})"
                     + ("" if values_too else "; neither is a value column"))
    # The order checks left the index strictly increasing or strictly decreasing (newest
    # first); labels (strings) have no time order.
    if index.values.dtype.kind not in "US" and len(values) > 1 and index.values[0] > index.values[-1]:
        notes.append(f"rows put in time order: the file runs newest first ({index.labels[0]} on line "
                     f"{index.lines[0]} down to {index.labels[-1]} on line {index.lines[-1]}), so its "
                     f"{len(values)} rows were reversed")
        index, values = index.reversed(), values[::-1]
    notes.extend(_spacing_notes(index))
    return index, values


def _check_file(path: Path) -> None:
    """Refuse, before opening it, what is not a regular file (a folder; a device such as
    /dev/zero or a pipe, which never end or never start) and a file too large to parse in
    this machine's memory."""
    try:
        info = path.stat()
    except OSError as e:
        raise DataError(f"cannot read CSV file {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a pipe" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a file")
        raise DataError(f"{path} is {kind}, not a CSV file; give the path of a CSV file")
    check_fits(info.st_size * CSV_PARSE_BYTES_PER_FILE_BYTE,
               f"reading CSV file {path} ({gigabytes(info.st_size)})",
               "keep only the rows and columns you need in a smaller file")


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (stripped names) and the (file line, cells) of each data row, checked
    for the shape problems every CSV can have."""
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
    return header, body


def _numbered_rows(reader: Any):
    """Yield (file line number, row), skipping blank lines."""
    for row in reader:
        if row and any(cell.strip() for cell in row):
            yield reader.line_num, row


def _position(path: Path, header: list[str], column: str) -> int:
    if column not in header:
        raise DataError(f"CSV file {path} has no column {column!r}; available: {', '.join(header)}")
    return header.index(column)


def _checked_names(path: Path, header: list[str], columns: Sequence[str]) -> list[str]:
    """``columns`` as a list of header names, each named once."""
    if isinstance(columns, str):  # a lone name, not a sequence of letters
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise DataError(f"CSV file {path}: columns must name at least one column")
    for name in columns:
        _position(path, header, name)
        if columns.count(name) > 1:
            raise DataError(f"CSV file {path}: column {name!r} is asked for {columns.count(name)} times "
                            f"(columns: {' '.join(columns)}); name each column once")
    return columns


def _value_positions(path: Path, header: list[str], body: list, columns: list[str] | None,
                     skip: Sequence[int]) -> list[int]:
    if columns is not None:
        return [header.index(c) for c in columns]
    wanted = [i for i, cell in enumerate(body[0][1])
              if i not in skip and (cell.strip() == "" or _is_number(cell))]
    if not wanted:
        raise DataError(f"CSV file {path} has no numeric value columns (header: {header})")
    return wanted


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


# --- the time index of a CSV file ------------------------------------------

@dataclass(frozen=True)
class _Index:
    """A time index found in a CSV file, row by row in file order."""

    positions: tuple[int, ...]  # its CSV columns: one, or a year and a period column
    names: tuple[str, ...]
    values: np.ndarray
    labels: tuple[str, ...]  # each row's value as messages show it
    lines: np.ndarray  # each row's file line

    @property
    def name(self) -> str:
        return "+".join(self.names)

    @property
    def what(self) -> str:
        """For messages: "column 'year'" or "columns 'year' and 'quarter'"."""
        if len(self.names) == 1:
            return f"column {self.names[0]!r}"
        return f"columns {self.names[0]!r} and {self.names[1]!r}"

    def reversed(self) -> "_Index":
        return dataclasses.replace(self, values=self.values[::-1], labels=self.labels[::-1],
                                   lines=self.lines[::-1])


def _says_time(name: str) -> bool:
    return name.strip().lower() in TIME_NAMES


def _index_cells(path: Path, header: list[str], body: list, position: int) -> list[str]:
    """The stripped cells of an index column; an empty one is an error."""
    cells = [row[position].strip() for _, row in body]
    for (line, _), cell in zip(body, cells):
        if cell == "":
            raise DataError(f"{path}, line {line}, column {header[position]!r}: empty cell in the time index; "
                            f"fill it in, or give --index-column none to use the column as a value")
    return cells


def _named_index(path: Path, header: list[str], body: list, name: str) -> _Index:
    """The index in the column the caller named: any order problem is an error."""
    position = _position(path, header, name)
    cells = _index_cells(path, header, body, position)
    index = _year_period_index(path, header, body, position, insist=True)
    if index is None:
        values = _parse_index(cells)
        if values.dtype.kind == "f" and _whole(values):  # years written 1959.0
            values = values.astype(np.int64)
        index = _single_index(header, body, position, cells, values)
    if index.values.dtype.kind not in "US":  # labels have no time order to check
        problems = _order_problems(index)
        if problems:
            raise _order_error(path, index, problems)
    return index


def _detected_index(path: Path, header: list[str], body: list, notes: list[str]) -> _Index | None:
    """The first column as the index when it looks like one.  One whose name says time must
    be usable; any other is used as a value when its order is wrong (``notes`` says why)."""
    name, insist = header[0], _says_time(header[0])
    index = _year_period_index(path, header, body, 0, insist) or _first_column_index(path, header, body, notes)
    if index is None:
        return None
    problems = _order_problems(index)
    if not problems:
        return index
    if insist or len(index.names) > 1:
        raise _order_error(path, index, problems)
    notes.append(f"first column {name!r} not used as the time index, its values are not in order: "
                 f"{'; '.join(problems)}")
    return None


def _first_column_index(path: Path, header: list[str], body: list, notes: list[str]) -> _Index | None:
    """The first column as an index candidate: ISO 8601 dates always; whole numbers when
    its name says time or they run one way (written as integers); else None."""
    timely = _says_time(header[0])
    cells = _index_cells(path, header, body, 0) if timely else [row[0].strip() for _, row in body]
    values = _parse_index(cells)
    if values.dtype.kind == "f" and timely and _whole(values):  # years written 1959.0
        values = values.astype(np.int64)
    if values.dtype.kind == "M" or (values.dtype.kind == "i" and (timely or _monotonic(values))):
        return _single_index(header, body, 0, cells, values)
    if timely and values.dtype.kind in "US":
        line, cell = next((line, c) for (line, _), c in zip(body, cells) if not _is_date(c))
        notes.append(f"first column {header[0]!r} not used as the time index: line {line} holds {cell!r}, "
                     f"not an ISO 8601 date such as 2020-01-31")
    return None


def _single_index(header: list[str], body: list, position: int, cells: list[str], values: np.ndarray) -> _Index:
    return _Index((position,), (header[position],), values, tuple(cells), np.array([line for line, _ in body]))


def _year_period_index(path: Path, header: list[str], body: list, position: int, insist: bool) -> _Index | None:
    """One datetime64[M] index from a year column and the quarter or month column after it
    (statsmodels' macrodata: year 1959.0, quarter 1.0 to 4.0), or None when the columns are
    not laid out so.  A period cell out of range among mostly good ones is an error when
    ``insist`` or the year column's name says time."""
    if position + 1 >= len(header) or header[position + 1].lower() not in PERIOD_MONTHS:
        return None
    year_name, period_name = header[position], header[position + 1]
    years = [_whole_number(row[position]) for _, row in body]
    if None in years or not (insist or _says_time(year_name) or _monotonic(np.array(years))):
        return None
    months_per_period = PERIOD_MONTHS[period_name.lower()]
    periods = _periods(path, header, body, position, insist or _says_time(year_name))
    if periods is None:
        return None
    months = (np.array(years) - 1970) * 12 + (np.array(periods) - 1) * months_per_period
    values = months.astype("datetime64[M]")
    labels = index_labels(values, Spacing(_MONTH_STEPS[months_per_period], months=months_per_period))
    return _Index((position, position + 1), (year_name, period_name), values, tuple(labels),
                  np.array([line for line, _ in body]))


def _periods(path: Path, header: list[str], body: list, year_position: int, insist: bool) -> list[int] | None:
    """The quarters (1 to 4) or months (1 to 12) in the column after the year, or None when
    fewer than half of its cells are such numbers (a value column named q or m, say).  A
    bad cell among good ones is an error when ``insist``, else None."""
    position = year_position + 1
    count = 12 // PERIOD_MONTHS[header[position].lower()]
    periods = [_whole_number(row[position]) for _, row in body]
    bad = [r for r, period in enumerate(periods) if period is None or not 1 <= period <= count]
    if not bad:
        return periods
    if 2 * len(bad) > len(body) or not insist:
        return None
    line, row = body[bad[0]]
    raise DataError(
        f"{path}, line {line}, column {header[position]!r}: {row[position].strip()!r} is not a "
        f"{'quarter' if count == 4 else 'month'} (a whole number 1 to {count}), so columns {header[year_position]!r} "
        f"and {header[position]!r} cannot be read as one time index; correct that cell, or give "
        f"--index-column none to read both as values")


def _whole_number(cell: str) -> int | None:
    """The whole number a cell holds ("1959" or "1959.0"), else None."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else None


def _whole(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)) and np.all(abs(values) < 2**53))


def _monotonic(values: np.ndarray) -> bool:
    """Whether values never fall, or never rise (repeats allowed)."""
    steps = np.diff(values)
    return bool(np.all(steps >= 0) or np.all(steps <= 0))


def _is_date(cell: str) -> bool:
    try:
        return not np.isnat(np.datetime64(cell))
    except ValueError:
        return False


def _parse_index(cells: list[str]) -> np.ndarray:
    """Integers if every cell is one (years), else floats, else ISO 8601 dates
    (datetime64), else the strings."""
    for kind in (int, float):
        try:
            return np.array([kind(c) for c in cells])
        except ValueError:
            pass
    if all(_is_date(c) for c in cells):
        return np.array([np.datetime64(c) for c in cells])
    return np.array(cells)


def _order_problems(index: _Index, most: int = 3) -> list[str]:
    """What keeps the index from running strictly one way, in file order: repeated values
    and steps against the way most of the file runs; at most ``most`` of them described."""
    values = index.values
    up, down = values[1:] > values[:-1], values[1:] < values[:-1]
    if up.all() or down.all():
        return []
    wrong = np.flatnonzero(~up if up.sum() >= down.sum() else ~down)  # step i goes from row i to row i + 1
    places = []  # (first row, last row): a run of repeated values, or one step out of order
    for i in wrong:
        if places and places[-1][1] == i and values[i] == values[i + 1] == values[i - 1]:
            places[-1] = (places[-1][0], i + 1)  # the run of repeats goes on
        else:
            places.append((i, i + 1))
    problems = [_order_problem(index, first, last) for first, last in places[:most]]
    if len(places) > most:
        problems.append(f"and {len(places) - most} more")
    return problems


def _order_problem(index: _Index, first: int, last: int) -> str:
    """Rows first..last described: "lines 4 and 5 both hold 1959-04", "lines 2 to 5 all hold
    1959", or "line 5 (1960-01) comes after line 4 (1960-03)"."""
    lines, labels = index.lines, index.labels
    if index.values[first] != index.values[last]:
        return f"line {lines[last]} ({labels[last]}) comes after line {lines[first]} ({labels[first]})"
    if last == first + 1:
        return f"lines {lines[first]} and {lines[last]} both hold {labels[first]}"
    return f"lines {lines[first]} to {lines[last]} all hold {labels[first]}"


def _order_error(path: Path, index: _Index, problems: list[str]) -> DataError:
    if len(index.names) > 1:
        fix = (f"sort the file by {index.names[0]} and {index.names[1]}, or give --index-column none to use "
               f"both columns as values")
    else:
        fix = "sort the file by its index, or give --index-column none to use the column as a value"
        values = index.values
        if _looks_like_years(values) and np.any(values[1:] == values[:-1]):
            fix = ("a year repeated for each quarter or month needs the period in the next column, named quarter "
                   "or month; otherwise " + fix)
    return DataError(f"{path}, {index.what}: the time index is not in order: {'; '.join(problems)}; {fix}")


def _spacing_notes(index: _Index, most: int = 3) -> list[str]:
    """A note saying where an irregular index changes its step, by file line."""
    changes = index_spacing(index.values).changes
    if not changes:
        return []
    places = ", ".join(f"line {index.lines[row]} ({before}, then {after})" for row, before, after in changes[:most])
    more = f" and {len(changes) - most} more" if len(changes) > most else ""
    return [f"the index {index.name!r} is irregular: the step changes at {places}{more}"]


def index_description(series: Series) -> str:
    """How the series' index was read, for messages: "column 'year' (strictly increasing integers)",
    "columns 'year' and 'quarter' (quarterly dates)"."""
    if series.index_name is None:
        return "row numbers"
    if len(series.index_columns) == 2:
        year, period = series.index_columns
        return f"columns {year!r} and {period!r} ({index_spacing(series.index).description} dates)"
    kind = {"i": "strictly increasing integers", "M": "dates", "f": "numbers"}.get(series.index.dtype.kind, "labels")
    return f"column {series.index_name!r} ({kind})"


# --- the spacing of an index ------------------------------------------------

@dataclass(frozen=True)
class Spacing:
    """How far apart the values of an index are (see index_spacing)."""

    description: str  # for messages: "quarterly", "monthly", "every 2 days", "yearly (integers)", "irregular"
    months: int | None = None  # regular in calendar months: the step (3 = quarterly, 12 = yearly dates)
    step: Any = None  # regular by a fixed difference: an int, a float or a numpy timedelta64
    month_end: bool = False  # month steps between month-end dates (pandas writes quarters as 2020-03-31)
    # irregular: (position of the row the new step leads to, step before, step after) of each change
    changes: tuple[tuple[int, str, str], ...] = ()

    @property
    def regular(self) -> bool:
        return self.months is not None or self.step is not None


_MONTH_STEPS = {1: "monthly", 3: "quarterly", 12: "yearly"}
_DURATIONS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
_FIXED_STEPS = {"1 day": "daily", "7 days": "weekly", "1 hour": "hourly"}


def index_spacing(index: np.ndarray) -> Spacing:
    """How an index in time order is spaced.  Dates that all fall on the same day of the
    month, or all on month ends, step in calendar months (a quarter is 3); other dates,
    integers and floats by a fixed difference.  An irregular index lists where its
    step changes; labels and indexes shorter than 2 have no spacing."""
    index = np.asarray(index)
    if index.ndim != 1 or len(index) < 2 or index.dtype.kind not in "iufM":
        return Spacing("unspaced")
    if index.dtype.kind == "u":  # differences of unsigned integers would wrap round
        index = index.astype(np.int64)
    calendar = _calendar_months(index)
    if calendar is not None:
        months, month_end = calendar
        steps = np.diff(months)
        if np.all(steps == steps[0]) and steps[0] > 0:  # (0 or less: not in time order)
            step = int(steps[0])
            return Spacing(_MONTH_STEPS.get(step, f"every {step} months"), months=step, month_end=month_end)
        return _irregular(steps, _months_words)
    steps = np.diff(index)
    same = np.allclose(steps, steps[0], rtol=1e-9, atol=0) if index.dtype.kind == "f" else np.all(steps == steps[0])
    if same and steps[0] > 0:
        step = (index[-1] - index[0]) / (len(index) - 1) if index.dtype.kind == "f" else steps[0]
        return Spacing(_fixed_description(index, step), step=step)
    return _irregular(steps, _step_words)


def _calendar_months(index: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """(month numbers, whether on month ends) of dates that step in calendar months, else None."""
    if index.dtype.kind != "M":
        return None
    if np.datetime_data(index.dtype)[0] in ("Y", "M"):
        return index.astype("datetime64[M]").astype(np.int64), False
    days = index.astype("datetime64[D]")
    if np.any(days != index):  # times of day: a fixed step
        return None
    months = days.astype("datetime64[M]")
    day_of_month = days - months.astype("datetime64[D]")
    month_end = bool(np.all((days + 1).astype("datetime64[M]") != months))
    if month_end or np.all(day_of_month == day_of_month[0]):
        return months.astype(np.int64), month_end
    return None


def _irregular(steps: np.ndarray, words) -> Spacing:
    changed = ~np.isclose(steps[1:], steps[:-1], rtol=1e-9, atol=0) if steps.dtype.kind == "f" \
        else steps[1:] != steps[:-1]
    changes = tuple((int(k) + 2, words(steps[k]), words(steps[k + 1])) for k in np.flatnonzero(changed))
    # No change means one step throughout, so it was not above 0.
    return Spacing("irregular" if changes else "not in time order", changes=changes)


def _months_words(n: Any) -> str:
    return f"{int(n)} month" + ("" if int(n) == 1 else "s")


def _step_words(step: Any) -> str:
    """A step for messages: "1 day", "6 hours", "2" (integers), "0.25"."""
    if isinstance(step, np.timedelta64):
        seconds = step / np.timedelta64(1, "s")
        for unit, size in _DURATIONS:
            if seconds and seconds % size == 0:
                n = int(seconds // size)
                return f"{n} {unit}" + ("" if abs(n) == 1 else "s")
        return str(step)
    return str(int(step)) if isinstance(step, (int, np.integer)) else f"{float(step):.12g}"


def _fixed_description(index: np.ndarray, step: Any) -> str:
    words = _step_words(step)
    if index.dtype.kind == "M":
        return _FIXED_STEPS.get(words, f"every {words}")
    if index.dtype.kind in "iu":
        if _looks_like_years(index):
            return "yearly (integers)" if step == 1 else f"every {words} years (integers)"
        return f"step {words} (integers)"
    return f"step {words}"


def _looks_like_years(values: np.ndarray) -> bool:
    """Whether values are four-digit whole numbers, as years are (for wording only)."""
    return values.dtype.kind in "iu" and bool(np.all((values >= 1000) & (values < 3000)))


#: the season a date index implies (the default of train --season): steps per season by the
#: index's spacing; any other spacing (yearly, quarterly, weekly, integers, irregular) has none
SEASONS = {"monthly": 12, "daily": 7, "hourly": 24}


def detect_season(index: np.ndarray) -> tuple[int | None, str]:
    """(steps per season, the index's spacing as index_spacing describes it) of a date
    index: 12 for monthly dates, 7 for daily, 24 for hourly; None for anything else, numbers
    included (a year or a row number says nothing about seasons)."""
    index = np.asarray(index)
    description = index_spacing(index).description
    return (SEASONS.get(description) if index.dtype.kind == "M" else None), description


def future_index(index: np.ndarray, steps: int) -> np.ndarray | None:
    """The index of the ``steps`` rows after the end of a regularly spaced index
    (years, row numbers, dates a fixed time or a number of calendar months apart);
    None if the spacing varies (see index_spacing)."""
    index = np.asarray(index)
    spacing = index_spacing(index)
    if spacing.months is not None:
        return _months_after(index, spacing, steps)
    if spacing.step is not None:
        return index[-1] + spacing.step * np.arange(1, steps + 1)
    return None


def _months_after(index: np.ndarray, spacing: Spacing, steps: int) -> np.ndarray:
    """Dates ``spacing.months`` calendar months apart after the last one, on the same day
    of the month (the month's last day when it is shorter) or on month ends."""
    last = index[-1]
    months = last.astype("datetime64[M]") + spacing.months * np.arange(1, steps + 1)
    if np.datetime_data(index.dtype)[0] in ("Y", "M"):
        return months.astype(index.dtype)
    month_ends = (months + 1).astype("datetime64[D]") - 1
    if spacing.month_end:
        return month_ends.astype(index.dtype)
    day = last.astype("datetime64[D]") - last.astype("datetime64[M]").astype("datetime64[D]")
    return np.minimum(months.astype("datetime64[D]") + day, month_ends).astype(index.dtype)


def index_labels(values: np.ndarray, spacing: Spacing | None = None) -> list[str]:
    """Index values as text for printing, by the spacing of their index (default: their
    own): quarterly dates "2009Q3", yearly dates "2009", other month steps "2009-07",
    other dates "2009-07-01" (with the time of day when there is one), numbers as they are."""
    values = np.atleast_1d(np.asarray(values))
    spacing = index_spacing(values) if spacing is None else spacing
    kind = values.dtype.kind
    if kind == "M":
        if spacing.months == 3:
            months = values.astype("datetime64[M]").astype(np.int64)
            return [f"{m // 12 + 1970}Q{m % 12 // 3 + 1}" for m in months]
        if spacing.months is not None:
            unit = "Y" if spacing.months == 12 else "M"
            return [str(s) for s in np.datetime_as_string(values.astype(f"datetime64[{unit}]"))]
        days = values.astype("datetime64[D]")
        calendar = np.datetime_data(values.dtype)[0] in ("Y", "M")
        return [str(s) for s in np.datetime_as_string(values if calendar or np.any(days != values) else days)]
    if kind in "iu":
        return [str(int(v)) for v in values]
    if kind == "f":
        return [str(float(v)) for v in values]
    return [str(v) for v in values]


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
        mean, std = _column_stats(values)
        return cls(mean, std)

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


def _column_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population stds (1 for a constant column) of (N, C) values; inf or
    NaN, without a NumPy warning, where values near the float64 limit overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        std = values.std(axis=0)
        return values.mean(axis=0), np.where(std > 0, std, 1.0)


@dataclass(frozen=True)
class WindowSplit:
    """Forecasting examples of one part; all values standardized."""

    x: np.ndarray  # (n, window, C) inputs (target_transform "diff": each row's change from the row before)
    y: np.ndarray  # (n, horizon) the next `horizon` target-column values (diff: their one-step changes)
    # (n, horizon) the naive last-value forecast in the model's units: the last target value of each
    # window repeated, or with target_transform "diff" no change (a difference of 0, scaled)
    last_input: np.ndarray
    target_start: np.ndarray  # (n,) series row of each example's first target (int64)
    # several series (lstmbench.data.panel): the input rows of each example (shorter ones padded
    # at the end), and the series each example belongs to (its position in WindowedDataset.panel)
    lengths: np.ndarray | None = None
    series_id: np.ndarray | None = None

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
    series: Series  # the series (of several: the first, whose columns they all have)
    panel: tuple[Series, ...] | None = None  # several series (lstmbench.data.panel): every one, by name
    min_length: int | None = None  # several series: the fewest input rows of an example
    target_transform: str = "level"  # what the model sees and forecasts: "level" or "diff" (TARGET_TRANSFORMS)
    train_rows: tuple[int, ...] = ()  # the rows of the training part of each series (of one: a single count)

    @property
    def names(self) -> tuple[str, ...] | None:
        """The names of several series (None for one)."""
        return None if self.panel is None else tuple(s.name for s in self.panel)

    def target_at(self, split: WindowSplit, rows: np.ndarray) -> np.ndarray:
        """The target column's values in original units at ``rows`` (integers, a first axis of
        one entry per example of ``split``) of each example's own series."""
        rows = np.asarray(rows)
        if self.panel is None:
            return self.series.values[rows, self.target_column]
        out = np.empty(rows.shape)
        for k in np.unique(split.series_id):
            mine = split.series_id == k
            out[mine] = self.panel[k].values[rows[mine], self.target_column]
        return out

    def truth(self, split: WindowSplit) -> np.ndarray:
        """(n, horizon): the values each example forecasts, in original units."""
        return self.target_at(split, split.target_start[:, None] + np.arange(self.horizon))

    def last_values(self, split: WindowSplit) -> np.ndarray:
        """(n,): the last observed target value before each example's first target, in original units."""
        return self.target_at(split, split.target_start - 1)

    def levels(self, split: WindowSplit, out: np.ndarray) -> np.ndarray:
        """Model outputs (n, horizon) for ``split`` as target values in original units:
        unscaled, and with target_transform "diff" the last observed value plus the
        forecast changes added up step by step."""
        values = self.scaler.inverse(np.asarray(out, dtype=np.float64), column=self.target_column)
        if self.target_transform == "diff":
            values = self.last_values(split)[:, None] + np.cumsum(values, axis=1)
        return values


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
    target_column: int | str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    target_transform: str = "level",
) -> WindowedDataset:
    """Cut a series into sliding forecasting windows, split chronologically.

    The rows are split into train, val and test parts, in that order, and the
    scaler is fitted on the train rows only.  Every target value belongs to
    exactly one part; a val or test window may take its *inputs* from the rows
    just before its part (the end of the previous part), because at forecast
    time the past is known.  So train needs ``window + horizon`` rows, while
    val and test each need only ``horizon`` rows.

    ``target_column`` (a name or a position) is the column forecast; None picks
    default_target(series), the first column that does not look like a time index.

    ``target_transform`` "diff": the model sees each row's change from the row before
    (every column; scaled on the training rows' changes) and forecasts the target's next
    one-step changes, which WindowedDataset.levels adds up onto the last observed value.
    The parts are the same rows as with "level"; train needs one row more (the first row
    has no change).
    """
    _check_positive_int("window", window)
    _check_positive_int("horizon", horizon)
    offset = _transform_offset(target_transform)
    n = len(series.values)
    if n == 0:
        raise DataError(f"series {series.name!r} is empty")
    target = default_target(series) if target_column is None else _target_position(series, target_column)
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
    needed = {"train": window + horizon + offset, "val": horizon, "test": horizon}
    for part, (a, b) in bounds.items():
        if b - a < needed[part]:
            extra = f"window={window} + horizon={horizon}" if part == "train" else f"horizon={horizon}"
            extra += " + 1 (the first row has no change to forecast from)" if part == "train" and offset else ""
            raise DataError(
                f"the {part} part of series {series.name!r} has {b - a} values (of {n}), "
                f"too few for one window: {extra} needs at least {needed[part]}; "
                f"use a longer series, a smaller window/horizon or other fractions"
            )

    values = model_values(series.values, target_transform)
    scaler, scaled = _standardize(dataclasses.replace(series, values=values), n_train, first=offset)
    splits = {}
    for part, (a, b) in bounds.items():
        first = window + offset if part == "train" else a  # train has no earlier rows for context
        starts = np.arange(first, b - horizon + 1)
        inputs = starts[:, None] + np.arange(-window, 0)  # rows of each window
        targets = starts[:, None] + np.arange(horizon)  # rows of each window's targets
        # the naive forecast in the model's units: the last value, or (diff) no change
        last = np.full(len(starts), -scaler.mean[target] / scaler.std[target]) if offset else scaled[starts - 1, target]
        splits[part] = WindowSplit(
            x=scaled[inputs],
            y=scaled[targets, target],
            last_input=np.repeat(last[:, None], horizon, axis=1),
            target_start=starts.astype(np.int64),
        )
    return WindowedDataset(splits["train"], splits["val"], splits["test"], scaler,
                           window, horizon, target, series, target_transform=target_transform, train_rows=(n_train,))


#: what a series model sees and forecasts: "level", the values themselves, or "diff", each
#: row's change from the row before (for series that trend out of their training range)
TARGET_TRANSFORMS = ("level", "diff")


def _transform_offset(target_transform: str) -> int:
    """The rows at the start of a series that the transform leaves without a value (diff: 1)."""
    if target_transform not in TARGET_TRANSFORMS:
        raise DataError(f"target_transform must be one of {', '.join(TARGET_TRANSFORMS)}; got {target_transform!r}")
    return 1 if target_transform == "diff" else 0


def model_values(values: np.ndarray, target_transform: str) -> np.ndarray:
    """(N, C) values as the model of ``target_transform`` sees them, before scaling: as they
    are ("level"), or row t's change from row t - 1 ("diff"; row 0, which has none, is 0 and
    never read)."""
    values = np.asarray(values, dtype=np.float64)
    if _transform_offset(target_transform) == 0:
        return values
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is found by _standardize's check
        return np.concatenate([np.zeros((1, values.shape[1])), np.diff(values, axis=0)]) if len(values) else values


def _standardize(series: Series, n_train: int, first: int = 0) -> tuple[Standardizer, np.ndarray]:
    """The scaler fitted on rows ``first`` to ``n_train`` and every row scaled by it; a value
    so large that this overflows float64 is a DataError naming the column."""
    mean, std = _column_stats(series.values[first:n_train])
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (series.values - mean) / std
    bad = ~(np.isfinite(mean) & np.isfinite(std) & np.all(np.isfinite(scaled), axis=0))
    if bad.any():
        column = int(np.flatnonzero(bad)[0])
        largest = np.max(np.abs(series.values[:, column]))
        raise DataError(
            f"{series.source}, column {series.columns[column]!r}: values too large to standardise (the largest is "
            f"{largest:.3g}; its square or its distance from the mean overflows float64); rescale the column, "
            f"e.g. divide it by a power of ten, or leave it out with --columns"
        )
    return Standardizer(mean, std), scaled


def default_target(series: Series) -> int:
    """Position of the column to forecast when none is chosen: the first value column that
    does not look like a time index (a name that says time, such as year or date, or whole
    numbers that only rise or only fall); a DataError when every column does."""
    reasons = []
    for position, name in enumerate(series.columns):
        reason = _index_like(name, series.values[:, position])
        if reason is None:
            return position
        reasons.append(f"{name!r} {reason}")
    raise DataError(
        f"{series.source}: every column of series {series.name!r} looks like a time index rather than a value to "
        f"forecast ({'; '.join(reasons)}); choose the column to forecast with --target"
    )


def _index_like(name: str, values: np.ndarray) -> str | None:
    """Why a value column looks like a time index, or None when it does not."""
    if _says_time(name):
        return "is named as time"
    if len(values) > 1 and _whole(values):
        steps = np.diff(values)
        if np.all(steps > 0) or np.all(steps < 0):
            return "holds whole numbers that only " + ("rise" if steps[0] > 0 else "fall")
    return None


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
