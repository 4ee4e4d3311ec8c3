"""Tests of lstmbench.data: bundled data, CSV reading, scaling, windows, text, synthetic."""

import json
import os
import warnings
from dataclasses import replace

import numpy as np
import pytest

import lstmbench.data.series as series_module
import lstmbench.resources
from lstmbench.data import (
    BUNDLED_SERIES,
    BUNDLED_TEXTS,
    UNK,
    Series,
    Standardizer,
    Vocabulary,
    anbn,
    default_target,
    future_index,
    index_description,
    index_labels,
    index_spacing,
    load_series,
    load_text,
    make_text_dataset,
    make_windows,
    noisy_sine_mixture,
    read_csv_series,
)
from lstmbench.errors import DataError, NonFiniteError, ResourceError, ShapeError


def ramp(n: int, columns: int = 1) -> Series:
    """Row i of column c holds 100*c + i, so every value names its own position."""
    values = np.arange(n, dtype=float)[:, None] + 100.0 * np.arange(columns)
    return Series(values, tuple(f"c{c}" for c in range(columns)), name="ramp")


def write(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- bundled data ---------------------------------------------------------

def test_bundled_names():
    assert BUNDLED_SERIES == ("sunspots", "nile", "co2")
    assert BUNDLED_TEXTS == ("shakespeare",)


def test_co2_loads_weekly_and_trending():
    s = load_series("co2")
    assert s.values.shape == (2284, 1) and s.columns == ("co2",)
    assert s.index[0] == np.datetime64("1958-03-29") and s.index[-1] == np.datetime64("2001-12-29")
    assert index_spacing(s.index).description == "weekly"
    assert s.values[0, 0] == 316.1 and s.values[-1, 0] == 371.5  # first and last rows of the file
    assert s.values[6, 0] == 317.2  # 1958-05-10, empty in statsmodels: halfway between 316.9 and 317.5
    assert "public domain" in s.source
    data = make_windows(s, window=20)
    train_max = s.values[: data.train_rows[0], 0].max()
    assert data.truth(data.test).min() > train_max  # the test part lies above the training range


def test_sunspots_loads():
    s = load_series("sunspots")
    assert s.values.shape == (309, 1)
    assert s.columns == ("sunactivity",)
    assert s.index[0] == 1700 and s.index[-1] == 2008
    assert np.array_equal(s.index, np.arange(1700, 2009))
    assert np.all(np.isfinite(s.values))
    assert s.values[0, 0] == 5.0 and s.values[-1, 0] == 2.9  # first and last rows of the file
    assert "public domain" in s.source and "\n" not in s.source


def test_nile_loads():
    s = load_series("nile")
    assert s.values.shape == (100, 1)
    assert s.columns == ("volume",)
    assert np.array_equal(s.index, np.arange(1871, 1971))
    assert np.all(np.isfinite(s.values))
    assert s.values[0, 0] == 1120.0 and s.values[-1, 0] == 740.0
    assert "public domain" in s.source


def test_unknown_bundled_name_lists_available():
    with pytest.raises(DataError, match="sunspots.*nile"):
        load_series("no_such_series")
    with pytest.raises(DataError, match="shakespeare"):
        load_text("hamlet")


def test_shakespeare_text():
    text = load_text("shakespeare")
    assert 20_000 <= len(text.encode("utf-8")) <= 60_000
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    assert text.endswith("\n")


# --- Series and CSV -------------------------------------------------------

def test_series_is_read_only_copy():
    raw = np.array([[1.0], [2.0]])
    s = Series(raw, ("a",))
    raw[0, 0] = 99.0
    assert s.values[0, 0] == 1.0
    with pytest.raises(ValueError):
        s.values[0, 0] = 5.0
    assert np.array_equal(s.index, [0, 1])


def test_series_shape_errors():
    with pytest.raises(ShapeError):
        Series(np.zeros((3, 2)), ("only_one",))
    with pytest.raises(ShapeError):
        Series(np.zeros((3, 1)), ("a",), index=np.arange(4))


def test_read_csv_selects_numeric_columns(tmp_path):
    path = write(tmp_path, "date,temp,label,rain\n2020-01,1.5,x,0\n2020-02,2.5,y,3\n")
    s = read_csv_series(path, index_column="date")
    assert s.columns == ("temp", "rain")
    assert np.array_equal(s.values, [[1.5, 0.0], [2.5, 3.0]])
    assert list(s.index) == [np.datetime64("2020-01"), np.datetime64("2020-02")]
    assert s.name == "data" and s.index_name == "date"

    only = read_csv_series(path, columns=["rain"])  # the date column is found as the index
    assert only.columns == ("rain",) and only.index_name == "date" and only.index.dtype.kind == "M"
    plain = read_csv_series(path, columns=["rain"], detect_index=False)
    assert plain.index_name is None and np.array_equal(plain.index, [0, 1])


def test_read_csv_finds_a_year_or_date_index_in_the_first_column(tmp_path):
    years = read_csv_series(write(tmp_path, "year,a\n1990,1\n1991,2\n1993,3\n"))
    assert years.columns == ("a",) and years.index_name == "year" and list(years.index) == [1990, 1991, 1993]
    assert index_description(years) == "column 'year' (strictly increasing integers)"
    days = read_csv_series(write(tmp_path, "when,a\n2024-02-28,1\n2024-02-29,2\n2024-03-01 ,3\n", "d.csv"))
    assert days.index_name == "when" and days.index[-1] == np.datetime64("2024-03-01")
    assert index_description(days) == "column 'when' (dates)"
    # not an index: values out of order or repeated (and a name that is not a time), or the only
    # column, or asked for as a value, or detection off
    for text, kwargs in (("x,a\n3,1\n2,2\n5,3\n", {}), ("x,a\n1,1\n1,2\n2,3\n", {}), ("t\n1\n2\n3\n", {}),
                         ("t,a\n1,1\n2,2\n3,3\n", {"columns": ["t", "a"]}),
                         ("t,a\n1,1\n2,2\n3,3\n", {"detect_index": False})):
        s = read_csv_series(write(tmp_path, text, "n.csv"), **kwargs)
        assert s.index_name is None and s.columns[0] == text[0], text


def test_future_index_continues_a_regular_index():
    assert list(future_index(np.array([2000, 2001, 2002]), 2)) == [2003, 2004]
    months = np.array(["2020-01", "2020-02"], dtype="datetime64[M]")
    assert list(future_index(months, 2)) == [np.datetime64("2020-03"), np.datetime64("2020-04")]
    assert future_index(np.array([1, 2, 4]), 2) is None  # irregular: no guess
    assert future_index(np.array(["a", "b"]), 1) is None


def test_read_csv_missing_cell_names_line_and_column(tmp_path):
    path = write(tmp_path, "year,a,b\n2000,1,2\n2001,,4\n")
    with pytest.raises(DataError) as err:
        read_csv_series(path, index_column="year")
    message = str(err.value)
    assert "line 3" in message and "'a'" in message and "empty" in message and str(path) in message


def test_read_csv_non_numeric_cell_names_line_and_column(tmp_path):
    path = write(tmp_path, "year,a,b\n2000,1,2\n2001,3,4\n2002,5,oops\n")
    with pytest.raises(DataError) as err:
        read_csv_series(path, index_column="year")
    message = str(err.value)
    assert "line 4" in message and "'b'" in message and "oops" in message


def test_read_csv_nan_text_is_rejected(tmp_path):
    path = write(tmp_path, "a\n1\nnan\n")
    with pytest.raises(DataError, match="line 3"):
        read_csv_series(path)


def test_read_csv_unknown_column_lists_available(tmp_path):
    path = write(tmp_path, "year,a,b\n2000,1,2\n")
    with pytest.raises(DataError, match="'c'.*year, a, b"):
        read_csv_series(path, columns=["a", "c"])
    with pytest.raises(DataError, match="'when'"):
        read_csv_series(path, index_column="when")


def test_read_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        read_csv_series(tmp_path / "nope.csv")


def test_read_csv_no_rows_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="no data rows"):
        read_csv_series(write(tmp_path, "a,b\n"))
    with pytest.raises(DataError, match="empty"):
        read_csv_series(write(tmp_path, "", "empty.csv"))


def test_read_csv_ragged_row(tmp_path):
    with pytest.raises(DataError, match="line 3"):
        read_csv_series(write(tmp_path, "a,b\n1,2\n3\n"))


def test_read_csv_skips_blank_lines_and_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffa,b\r\n1,2\r\n\r\n3,4\r\n\r\n".encode("utf-8"))
    s = read_csv_series(path, detect_index=False)  # (a would be found as an index: 1, 3 increase)
    assert s.columns == ("a", "b")
    assert np.array_equal(s.values, [[1, 2], [3, 4]])



def test_read_csv_repeated_column_name_is_an_error(tmp_path):
    path = write(tmp_path, "year,v,w\n2000,1,2\n2001,3,4\n")
    with pytest.raises(DataError) as err:
        read_csv_series(path, columns=["v", "w", "v"])
    message = str(err.value)
    assert str(path) in message and "'v'" in message and "once" in message


def test_read_csv_refuses_what_is_not_a_regular_file(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a CSV file"):
        read_csv_series(tmp_path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(DataError, match="/dev/zero is a device, not a CSV file"):
            read_csv_series("/dev/zero")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.csv"
        os.mkfifo(fifo)  # opening it to read would wait for a writer forever
        with pytest.raises(DataError, match="pipe.csv is a pipe"):
            read_csv_series(fifo)


def test_read_csv_refuses_a_file_too_large_for_memory(tmp_path, monkeypatch):
    path = write(tmp_path, "year,v\n" + "".join(f"{1900 + i},{i}.5\n" for i in range(100)))
    needed = path.stat().st_size * series_module.CSV_PARSE_BYTES_PER_FILE_BYTE
    monkeypatch.setattr(lstmbench.resources, "available_memory", lambda: needed - 1)
    with pytest.raises(ResourceError) as err:
        read_csv_series(path)
    assert str(path) in str(err.value) and "MB of memory" in str(err.value)
    monkeypatch.setattr(lstmbench.resources, "available_memory", lambda: needed)
    assert len(read_csv_series(path)) == 100


def bundled_csv(name: str) -> str:
    return (series_module.resources.files("lstmbench.data") / "bundled" / f"{name}.csv").read_text()


# --- time order, year + period, spacing -------------------------------------

def test_read_csv_puts_a_newest_first_file_in_time_order(tmp_path):
    header, *rows = bundled_csv("sunspots").splitlines()
    path = write(tmp_path, "\n".join([header, *reversed(rows)]) + "\n", "sunspots_reversed.csv")
    s, forward = read_csv_series(path), load_series("sunspots")
    assert s.index_name == "year" and s.columns == ("sunactivity",)
    assert np.array_equal(s.index, forward.index) and np.array_equal(s.values, forward.values)
    assert s.notes == ("rows put in time order: the file runs newest first (2008 on line 2 down to 1700 "
                       "on line 310), so its 309 rows were reversed",)
    assert forward.notes == ()
    days = read_csv_series(write(tmp_path, "when,v\n2024-03-01,3\n2024-02-29,2\n2024-02-28,1\n", "d.csv"),
                           index_column="when")
    assert [str(d) for d in days.index] == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert days.values[:, 0].tolist() == [1, 2, 3]
    # whole numbers that only decrease are a newest-first index whatever the column's name
    countdown = read_csv_series(write(tmp_path, "n,v\n3,30\n2,20\n1,10\n", "n.csv"))
    assert countdown.index.tolist() == [1, 2, 3] and countdown.values[:, 0].tolist() == [10, 20, 30]
    labels = read_csv_series(write(tmp_path, "id,v\nb,1\na,2\n", "l.csv"), index_column="id")
    assert labels.index.tolist() == ["b", "a"] and labels.notes == ()  # labels have no time order


@pytest.mark.parametrize("text, problem", [
    ("date,v\n1959-01,1\n1959-02,2\n1959-03,3\n1959-04,4\n1959-04,5\n1959-05,6\n",
     "lines 5 and 6 both hold 1959-04"),
    ("date,v\n1960-01,1\n1960-02,2\n1960-03,3\n1960-01,4\n1960-04,5\n",
     "line 5 (1960-01) comes after line 4 (1960-03)"),
    ("year,v\n2003,1\n2002,2\n2001,3\n2002,4\n", "line 5 (2002) comes after line 4 (2001)"),
    ("t,a\n3,1\n2,2\n5,3\n", "line 3 (2) comes after line 2 (3)"),
])
def test_read_csv_index_named_as_time_out_of_order_is_an_error(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_csv_series(path)
    message = str(err.value)
    column = text.split(",")[0]
    assert f"{path}, column '{column}': the time index is not in order: {problem}" in message
    assert message.endswith("sort the file by its index, or give --index-column none to use the column as a value")


def test_read_csv_named_index_out_of_order_is_an_error_listing_a_few_places(tmp_path):
    with pytest.raises(DataError, match=r"'x'.*line 4 \(1\) comes after line 3 \(5\)"):
        read_csv_series(write(tmp_path, "x,v\n2,1\n5,2\n1,3\n"), index_column="x")
    zigzag = "year,v\n" + "".join(f"{y},1\n" for y in (2000, 1999, 2002, 2001, 2004, 2003, 2006, 2005, 2008, 2007))
    with pytest.raises(DataError) as err:
        read_csv_series(write(tmp_path, zigzag, "z.csv"), index_column="year")
    message = str(err.value)  # mostly newest first, so each step up is out of order
    assert "line 4 (2002) comes after line 3 (1999); line 6 (2004) comes after line 5 (2001); " \
           "line 8 (2006) comes after line 7 (2003); and 1 more" in message


def test_read_csv_gives_up_on_a_first_column_in_no_order_unless_named_as_time(tmp_path):
    s = read_csv_series(write(tmp_path, "x,v\n1,10\n1,20\n2,30\n"))
    assert s.index_name is None and s.columns == ("x", "v")
    assert s.notes == ("first column 'x' not used as the time index, its values are not in order: "
                       "lines 2 and 3 both hold 1",)
    when = read_csv_series(write(tmp_path, "when,v\n2020-01-01,1\n2020-01-03,2\n2020-01-02,3\n", "w.csv"))
    assert when.index_name is None and when.columns == ("v",)
    assert when.notes == ("first column 'when' not used as the time index, its values are not in order: "
                          "line 4 (2020-01-02) comes after line 3 (2020-01-03)",)
    # not candidates at all: whole numbers in no order, whole numbers written as floats (a value
    # such as a price), neither named as time
    for text in ("x,v\n3,1\n2,2\n5,3\n", "price,v\n100.0,1\n101.0,2\n103.0,3\n"):
        plain = read_csv_series(write(tmp_path, text, "p.csv"))
        assert plain.index_name is None and plain.columns[0] == text.split(",")[0] and plain.notes == ()


MACRODATA_HEAD = ("year,quarter,realgdp,infl\n1959.0,1.0,2710.349,0.0\n1959.0,2.0,2778.801,2.34\n"
                  "1959.0,3.0,2775.488,2.74\n1959.0,4.0,2785.204,0.27\n1960.0,1.0,2847.699,2.31\n")


def test_read_csv_reads_year_and_quarter_as_one_time_index(tmp_path):
    s = read_csv_series(write(tmp_path, MACRODATA_HEAD, "macrodata.csv"))
    assert s.columns == ("realgdp", "infl") and s.values[:, 0].tolist()[:2] == [2710.349, 2778.801]
    assert s.index.dtype == np.dtype("datetime64[M]")
    assert [str(m) for m in s.index] == ["1959-01", "1959-04", "1959-07", "1959-10", "1960-01"]
    assert s.index_name == "year+quarter" and s.index_columns == ("year", "quarter")
    assert index_description(s) == "columns 'year' and 'quarter' (quarterly dates)"
    assert s.notes == ("time index read from columns 'year' and 'quarter' together (1959Q1 to 1960Q1); "
                       "neither is a value column",)
    named = read_csv_series(write(tmp_path, MACRODATA_HEAD, "m2.csv"), index_column="year")
    assert np.array_equal(named.index, s.index) and named.columns == s.columns

    header, *rows = MACRODATA_HEAD.splitlines()
    newest_first = read_csv_series(write(tmp_path, "\n".join([header, *reversed(rows)]), "r.csv"))
    assert np.array_equal(newest_first.index, s.index) and np.array_equal(newest_first.values, s.values)
    assert newest_first.notes[1] == ("rows put in time order: the file runs newest first (1960Q1 on line 2 "
                                     "down to 1959Q1 on line 6), so its 5 rows were reversed")

    months = read_csv_series(write(tmp_path, "Year,Month,v\n2019,11,1\n2019,12,2\n2020,1,3\n", "mo.csv"))
    assert [str(m) for m in months.index] == ["2019-11", "2019-12", "2020-01"] and months.columns == ("v",)
    assert index_description(months) == "columns 'Year' and 'Month' (monthly dates)"


@pytest.mark.parametrize("text, expected", [
    ("year,quarter,v\n1959,1,1\n1959,5,2\n",
     "line 3, column 'quarter': '5' is not a quarter (a whole number 1 to 4), so columns 'year' and 'quarter' "
     "cannot be read as one time index; correct that cell, or give --index-column none to read both as values"),
    ("year,month,v\n1959,12,1\n1960,1.5,2\n", "line 3, column 'month': '1.5' is not a month (a whole number 1 to 12)"),
    ("year,v\n1959.0,1\n1959.0,2\n1959.0,3\n1959.0,4\n1960.0,5\n1960.0,6\n",
     "column 'year': the time index is not in order: lines 2 to 5 all hold 1959.0; lines 6 and 7 both hold "
     "1960.0; a year repeated for each quarter or month needs the period in the next column, named quarter "
     "or month"),
    ("year,quarter,v\n1959,1,1\n1959,1,2\n",
     "columns 'year' and 'quarter': the time index is not in order: lines 2 and 3 both hold 1959Q1; "
     "sort the file by year and quarter, or give --index-column none to use both columns as values"),
])
def test_read_csv_year_and_period_it_cannot_understand_is_an_error(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_csv_series(path)
    assert str(err.value).startswith(f"{path}, ") and expected in str(err.value)


def test_read_csv_value_column_named_like_a_period_after_a_year_stays_a_value(tmp_path):
    s = read_csv_series(write(tmp_path, "year,m,v\n2000,3.7,1\n2001,2.1,2\n2002,5.5,3\n"))  # m: a mass
    assert s.index_name == "year" and s.index.tolist() == [2000, 2001, 2002] and s.columns == ("m", "v")


def test_read_csv_notes_an_irregular_index(tmp_path):
    months = read_csv_series(write(tmp_path, "date,v\n2020-01-01,1\n2020-02-01,2\n2020-04-01,3\n2020-05-01,4\n"))
    assert months.notes == ("the index 'date' is irregular: the step changes at line 4 (1 month, then 2 months), "
                            "line 5 (2 months, then 1 month)",)
    years = read_csv_series(write(tmp_path, "year,a\n1990,1\n1991,2\n1993,3\n", "y.csv"))
    assert years.notes == ("the index 'year' is irregular: the step changes at line 4 (1, then 2)",)
    assert read_csv_series(write(tmp_path, "year,a\n1990,1\n1991,2\n1992,3\n", "r.csv")).notes == ()


def test_load_series_keeps_the_notes(monkeypatch):
    read = series_module.read_csv_series
    monkeypatch.setattr(series_module, "read_csv_series",
                        lambda *a, **k: replace(read(*a, **k), notes=("a note",)))
    assert load_series("nile").notes == ("a note",)


def days(*dates: str) -> np.ndarray:
    return np.array(dates, dtype="datetime64[D]")


@pytest.mark.parametrize("index, description, months, step", [
    (np.array(["2020-01", "2020-02", "2020-03"], dtype="datetime64[M]"), "monthly", 1, None),
    (days("2019-12-31", "2020-03-31", "2020-06-30", "2020-09-30"), "quarterly", 3, None),  # pandas' quarter ends
    (days("2020-01-01", "2020-04-01", "2020-07-01"), "quarterly", 3, None),
    (days("2020-01-15", "2020-02-15", "2020-03-15"), "monthly", 1, None),
    (days("2000-01-01", "2001-01-01", "2002-01-01"), "yearly", 12, None),
    (np.array([1990, 1991, 1992]), "yearly (integers)", None, 1),
    (np.array([0, 5, 10]), "step 5 (integers)", None, 5),
    (np.array([0.1, 0.2, 0.3]), "step 0.1", None, pytest.approx(0.1)),
    (days("2020-01-01", "2020-01-03", "2020-01-05"), "every 2 days", None, np.timedelta64(2, "D")),
    (days("2020-01-06", "2020-01-13", "2020-01-20"), "weekly", None, np.timedelta64(7, "D")),
    (np.array(["2020-01-01T22:00", "2020-01-01T23:00", "2020-01-02T00:00"], dtype="datetime64[m]"),
     "hourly", None, np.timedelta64(60, "m")),
])
def test_index_spacing_of_a_regular_index(index, description, months, step):
    spacing = index_spacing(index)
    assert spacing.regular and spacing.description == description and spacing.changes == ()
    assert spacing.months == months and spacing.step == step


def test_index_spacing_of_an_irregular_index_says_where_the_step_changes():
    spacing = index_spacing(days("2020-01-01", "2020-02-01", "2020-04-01", "2020-05-01"))
    assert not spacing.regular and spacing.description == "irregular"
    assert spacing.changes == ((2, "1 month", "2 months"), (3, "2 months", "1 month"))
    assert index_spacing(np.array([1, 2, 4])).changes == ((2, "1", "2"),)
    assert index_spacing(days("2020-01-01", "2020-01-02", "2020-01-04")).changes == ((2, "1 day", "2 days"),)
    assert future_index(days("2020-01-01", "2020-02-01", "2020-04-01"), 2) is None
    backwards = index_spacing(np.array([3, 2, 1]))
    assert not backwards.regular and backwards.description == "not in time order" and backwards.changes == ()
    assert future_index(np.array([3, 2, 1]), 1) is None


def test_future_index_continues_calendar_months():
    quarter_ends = days("2019-07-31", "2019-10-31", "2020-01-31")
    assert [str(d) for d in future_index(quarter_ends, 3)] == ["2020-04-30", "2020-07-31", "2020-10-31"]
    firsts = days("2019-12-01", "2020-01-01", "2020-02-01")  # day gaps 31, 31, then 29
    assert [str(d) for d in future_index(firsts, 2)] == ["2020-03-01", "2020-04-01"]
    fifteenths = days("2020-01-15", "2020-02-15")
    assert [str(d) for d in future_index(fifteenths, 1)] == ["2020-03-15"]
    assert [str(d) for d in future_index(days("2020-01-01", "2020-01-08"), 2)] == ["2020-01-15", "2020-01-22"]


def test_index_labels_follow_the_spacing():
    quarters = days("2009-01-01", "2009-04-01", "2009-07-01")
    assert index_labels(quarters, index_spacing(quarters)) == ["2009Q1", "2009Q2", "2009Q3"]
    ahead = future_index(quarters, 2)
    assert index_labels(ahead, index_spacing(quarters)) == ["2009Q4", "2010Q1"]
    assert index_labels(days("2009-06-30", "2009-09-30")) == ["2009Q2", "2009Q3"]  # spacing from the values
    assert index_labels(days("2009-07-31", "2009-08-31")) == ["2009-07", "2009-08"]
    assert index_labels(days("2009-07-01", "2009-07-02")) == ["2009-07-01", "2009-07-02"]
    assert index_labels(np.array([1990, 1991])) == ["1990", "1991"]
    assert index_labels(np.array(["a", "b"])) == ["a", "b"]
    assert all(type(label) is str for label in index_labels(quarters) + index_labels(days("2009-07-01")))


# --- the default target -----------------------------------------------------

def test_default_target_skips_index_like_columns():
    n = 30
    values = np.column_stack([np.sin(np.arange(n)), np.arange(n, 0, -1), np.cos(np.arange(n))])
    series = Series(values, ("Year", "n", "level"), name="s")  # a name that says time; whole numbers that only fall
    assert default_target(series) == 2
    assert make_windows(series, window=3).target_column == 2
    assert make_windows(series, window=3, target_column=0).target_column == 0  # an explicit choice wins
    assert make_windows(series, window=3, target_column="n").target_column == 1
    counts = Series(np.array([3, 1, 4, 1, 5, 9]), ("count",))  # whole numbers, but in no order
    assert default_target(counts) == 0


def test_default_target_of_a_csv_read_without_an_index(tmp_path):
    path = write(tmp_path, "year,sunactivity\n1700,5\n1701,11\n1702,9\n")
    assert default_target(read_csv_series(path, detect_index=False)) == 1


def test_default_target_when_every_column_is_index_like():
    series = Series(np.column_stack([np.arange(10), np.arange(10.0)]), ("date", "k"), source="user CSV file x.csv")
    with pytest.raises(DataError) as err:
        default_target(series)
    message = str(err.value)
    assert "x.csv" in message and "'date'" in message and "'k'" in message and "--target" in message


# --- Standardizer ---------------------------------------------------------

def test_standardizer_fit_transform_inverse():
    values = np.array([[1.0, 5.0], [3.0, 5.0]])
    scaler = Standardizer.fit(values)
    assert np.array_equal(scaler.mean, [2.0, 5.0])
    assert np.array_equal(scaler.std, [1.0, 1.0])  # the constant column gets std 1, not 0
    z = scaler.transform(values)
    assert np.array_equal(z, [[-1.0, 0.0], [1.0, 0.0]])
    assert np.allclose(scaler.inverse(z), values)
    assert np.allclose(scaler.inverse(z[:, 0], column=0), values[:, 0])


def test_standardizer_dict_round_trip():
    scaler = Standardizer.fit(np.array([[1.0, 2.0], [4.0, 8.0], [0.0, 1.0]]))
    again = Standardizer.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert np.array_equal(again.mean, scaler.mean) and np.array_equal(again.std, scaler.std)
    with pytest.raises(DataError):
        Standardizer.from_dict({"mean": [0.0]})
    with pytest.raises(DataError):
        Standardizer.from_dict({"mean": [0.0], "std": [0.0]})


def test_standardizer_shape_error():
    scaler = Standardizer.fit(np.ones((3, 2)))
    with pytest.raises(ShapeError):
        scaler.transform(np.ones((3, 3)))


def test_scaler_fitted_on_training_part_only():
    series = ramp(100)
    data = make_windows(series, window=5, target_column=0)
    # train is the first 70 rows: 0..69
    assert data.scaler.mean[0] == pytest.approx(np.mean(np.arange(70)))
    assert data.scaler.std[0] == pytest.approx(np.std(np.arange(70)))
    changed = series.values.copy()
    changed[95, 0] = 1e6  # a test-part value
    changed[75, 0] = -1e6  # a val-part value
    other = make_windows(Series(changed, series.columns), window=5, target_column=0)
    assert np.array_equal(other.scaler.mean, data.scaler.mean)
    assert np.array_equal(other.scaler.std, data.scaler.std)



def test_a_value_too_large_to_standardise_is_a_data_error_naming_file_and_column(tmp_path):
    path = write(tmp_path, "year,a,b\n" + "".join(f"{2000 + i},{i}.5,{'1e308' if i == 3 else i}\n" for i in range(20)))
    series = read_csv_series(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy RuntimeWarning would fail the test
        with pytest.raises(DataError) as err:
            make_windows(series, window=2)
        with pytest.raises(DataError):
            Standardizer.fit(series.values)
    message = str(err.value)
    assert str(path) in message and "'b'" in message and "--columns" in message


# --- make_windows ---------------------------------------------------------

def test_windows_line_up_with_raw_series():
    series = ramp(100, columns=2)
    data = make_windows(series, window=4, horizon=3, target_column=1)
    assert data.target_column == 1 and data.window == 4 and data.horizon == 3
    train, val, test = data.train, data.val, data.test
    # train rows 0..69: first targets 4..67; val rows 70..84: 70..82; test rows 85..99: 85..97
    assert len(train) == 64 and len(val) == 13 and len(test) == 13
    assert train.x.shape == (64, 4, 2) and train.y.shape == (64, 3)
    assert train.last_input.shape == (64, 3)
    for split in (train, val, test):
        assert split.x.dtype == np.float64 and split.y.dtype == np.float64

    raw_x = data.scaler.inverse(train.x)
    raw_y = data.scaler.inverse(train.y, column=1)
    assert np.allclose(raw_x[0], [[0, 100], [1, 101], [2, 102], [3, 103]])
    assert np.allclose(raw_y[0], [104, 105, 106])
    assert np.allclose(raw_x[10, -1], [13, 113]) and np.allclose(raw_y[10], [114, 115, 116])

    # val's first window takes its inputs from the end of train; its targets start the val part
    assert np.allclose(data.scaler.inverse(val.x[0])[:, 0], [66, 67, 68, 69])
    assert np.allclose(data.scaler.inverse(val.y[0], column=1), [170, 171, 172])
    assert np.allclose(data.scaler.inverse(test.y[-1], column=1), [197, 198, 199])
    assert list(test.target_start[[0, -1]]) == [85, 97]
    # y is standardized with the target column's statistics
    assert np.allclose(train.y[0], (np.array([104, 105, 106]) - data.scaler.mean[1]) / data.scaler.std[1])


def test_no_target_shared_across_parts():
    data = make_windows(ramp(100), window=6, horizon=4, target_column=0)
    rows = {}
    for part in ("train", "val", "test"):
        split = getattr(data, part)
        targets = data.scaler.inverse(split.y, column=0)  # ramp values are the row numbers
        rows[part] = set(np.rint(targets).astype(int).ravel())
        assert set(int(i) for i in (split.target_start[:, None] + np.arange(4)).ravel()) == rows[part]
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]
    assert max(rows["train"]) < min(rows["val"]) and max(rows["val"]) < min(rows["test"])
    assert max(rows["train"]) == 69 and min(rows["val"]) == 70 and max(rows["test"]) == 99


def test_naive_last_value_baseline():
    data = make_windows(load_series("nile"), window=5, horizon=2)
    raw = load_series("nile").values[:, 0]
    for split in (data.train, data.val, data.test):
        last = data.scaler.inverse(split.last_input, column=0)
        expected = raw[split.target_start - 1]
        assert np.allclose(last[:, 0], expected) and np.allclose(last[:, 1], expected)
        assert np.array_equal(split.last_input[:, 0], split.x[:, -1, 0])


def test_windows_by_column_name():
    data = make_windows(ramp(50, columns=2), window=3, target_column="c1")
    assert data.target_column == 1
    with pytest.raises(DataError, match="c0, c1"):
        make_windows(ramp(50, columns=2), window=3, target_column="zz")
    with pytest.raises(DataError):
        make_windows(ramp(50, columns=2), window=3, target_column=2)


def test_nan_in_series_raises_non_finite_error():
    values = np.arange(40, dtype=float)
    values[17] = np.nan
    with pytest.raises(NonFiniteError, match="row 17.*'v'"):
        make_windows(Series(values, ("v",)), window=3)
    values[17] = np.inf
    with pytest.raises(NonFiniteError):
        make_windows(Series(values, ("v",)), window=3)


def test_too_short_series_says_how_many_needed():
    with pytest.raises(DataError, match=r"train part .* has 14 values .* at least 21"):
        make_windows(ramp(20), window=20, target_column=0)
    with pytest.raises(DataError, match=r"val part .* has 2 values .* at least 3"):
        make_windows(ramp(12), window=2, horizon=3, target_column=0)
    with pytest.raises(DataError, match="empty"):
        make_windows(Series(np.zeros((0, 1)), ("a",)), window=1)


@pytest.mark.parametrize("kwargs", [
    {"window": 0}, {"window": 2.5}, {"window": True}, {"window": 3, "horizon": 0},
    {"window": 3, "val_fraction": 0.0}, {"window": 3, "test_fraction": 1.2},
    {"window": 3, "val_fraction": 0.5, "test_fraction": 0.5},
])
def test_invalid_window_settings(kwargs):
    with pytest.raises(DataError):
        make_windows(ramp(100), target_column=0, **kwargs)


# --- text -----------------------------------------------------------------

def test_vocabulary_basics():
    vocab = Vocabulary.from_text("banana!")
    assert vocab.symbols == (UNK, "!", "a", "b", "n")
    assert vocab.size == 5
    ids = vocab.encode("banana")
    assert ids.dtype == np.int64 and list(ids) == [3, 2, 4, 2, 4, 2]
    assert vocab.decode(ids) == "banana"
    assert list(vocab.encode("bz")) == [3, 0]  # unknown symbol -> UNK id 0
    assert vocab.decode(vocab.encode("bz")) == "b" + UNK


def test_vocabulary_one_hot():
    vocab = Vocabulary.from_text("abc")
    ids = np.array([[1, 2], [3, 0]])
    hot = vocab.one_hot(ids)
    assert hot.shape == (2, 2, 4) and hot.dtype == np.float64
    assert np.array_equal(hot.sum(axis=-1), np.ones((2, 2)))
    assert np.array_equal(hot.argmax(axis=-1), ids)
    with pytest.raises(DataError):
        vocab.one_hot([4])


def test_vocabulary_list_round_trip():
    vocab = Vocabulary.from_text(load_text("shakespeare"))
    again = Vocabulary.from_list(json.loads(json.dumps(vocab.to_list())))
    assert again == vocab
    assert again.encode("Citizen").tolist() == vocab.encode("Citizen").tolist()
    with pytest.raises(DataError):
        Vocabulary.from_list(["a", "b"])  # UNK missing


def test_text_vocabulary_from_training_text_only():
    text = "ab" * 40 + "xyz" * 10  # x, y and z only occur after the training part
    data = make_text_dataset(text, seq_len=4, val_fraction=0.15, test_fraction=0.15)
    assert data.vocab.symbols == (UNK, "a", "b")
    assert np.all(data.test.y == 0)  # the test part is all x/y/z -> UNK


def test_text_targets_are_inputs_shifted_by_one():
    text = load_text("shakespeare")[:5000]
    data = make_text_dataset(text, seq_len=20, stride=7)
    train = data.train
    assert train.x.shape[1:] == (20, data.vocab.size) and train.y.shape[1] == 20
    assert train.y.dtype == np.int64
    input_ids = train.x.argmax(axis=-1)
    assert np.array_equal(input_ids[:, 1:], train.y[:, :-1])
    # by hand: sequence 2 starts at character 14 of the text
    assert data.vocab.decode(input_ids[2]) == text[14:34]
    assert data.vocab.decode(train.y[2]) == text[15:35]
    assert len(train) == len(range(0, 4000 - 20, 7))


def test_text_sequences_stay_inside_their_part():
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    data = make_text_dataset(text, seq_len=9)  # parts: 80, 10, 10 characters
    assert len(data.train) == 8 and len(data.val) == 1 and len(data.test) == 1
    assert data.vocab.decode(data.val.y[0]) == text[81:90]
    assert data.vocab.decode(data.test.y[0]) == text[91:100]


def test_text_errors():
    with pytest.raises(DataError, match="at least 11"):
        make_text_dataset("abcdefghij" * 5, seq_len=10)  # val/test parts have 5 characters
    with pytest.raises(DataError):
        make_text_dataset("abc" * 100, seq_len=0)
    with pytest.raises(DataError):
        make_text_dataset("abc" * 100, seq_len=5, stride=0)


# --- synthetic ------------------------------------------------------------

def test_noisy_sine_mixture_deterministic_per_seed():
    a = noisy_sine_mixture(200, seed=3)
    b = noisy_sine_mixture(200, seed=3)
    c = noisy_sine_mixture(200, seed=4)
    assert a.values.shape == (200, 1) and a.columns == ("value",)
    assert np.array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)
    clean = noisy_sine_mixture(200, noise=0.0)
    t = np.arange(200)
    expected = np.sin(2 * np.pi * t / 20) + 0.5 * np.sin(2 * np.pi * t / 53)
    assert np.allclose(clean.values[:, 0], expected)
    assert len(make_windows(a, window=10).train) > 0


def test_anbn_well_formed_and_deterministic():
    text = anbn(50, max_n=5, seed=1)
    assert text == anbn(50, max_n=5, seed=1)
    assert text != anbn(50, max_n=5, seed=2)
    assert text.endswith(".")
    words = text[:-1].split(".")
    assert len(words) == 50
    for word in words:
        n = word.count("a")
        assert 1 <= n <= 5 and word == "a" * n + "b" * n
    data = make_text_dataset(anbn(200, seed=0), seq_len=16)
    assert data.vocab.symbols == (UNK, ".", "a", "b")


def test_synthetic_errors():
    with pytest.raises(DataError):
        noisy_sine_mixture(0)
    with pytest.raises(DataError):
        noisy_sine_mixture(10, periods=(5.0,), amplitudes=(1.0, 2.0))
    with pytest.raises(DataError):
        anbn(0)
