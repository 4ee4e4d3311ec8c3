"""Tests of lstmbench.data: bundled data, CSV reading, scaling, windows, text, synthetic."""

import json

import numpy as np
import pytest

from lstmbench.data import (
    BUNDLED_SERIES,
    BUNDLED_TEXTS,
    UNK,
    Series,
    Standardizer,
    Vocabulary,
    anbn,
    future_index,
    index_description,
    load_series,
    load_text,
    make_text_dataset,
    make_windows,
    noisy_sine_mixture,
    read_csv_series,
)
from lstmbench.errors import DataError, NonFiniteError, ShapeError


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
    assert BUNDLED_SERIES == ("sunspots", "nile")
    assert BUNDLED_TEXTS == ("shakespeare",)


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
    # not an index: not increasing, or the only column, or asked for as a value, or detection off
    for text, kwargs in (("t,a\n3,1\n2,2\n5,3\n", {}), ("t,a\n1,1\n1,2\n2,3\n", {}), ("t\n1\n2\n3\n", {}),
                         ("t,a\n1,1\n2,2\n3,3\n", {"columns": ["t", "a"]}),
                         ("t,a\n1,1\n2,2\n3,3\n", {"detect_index": False})):
        s = read_csv_series(write(tmp_path, text, "n.csv"), **kwargs)
        assert s.index_name is None and s.columns[0] == "t", text


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
    data = make_windows(series, window=5)
    # train is the first 70 rows: 0..69
    assert data.scaler.mean[0] == pytest.approx(np.mean(np.arange(70)))
    assert data.scaler.std[0] == pytest.approx(np.std(np.arange(70)))
    changed = series.values.copy()
    changed[95, 0] = 1e6  # a test-part value
    changed[75, 0] = -1e6  # a val-part value
    other = make_windows(Series(changed, series.columns), window=5)
    assert np.array_equal(other.scaler.mean, data.scaler.mean)
    assert np.array_equal(other.scaler.std, data.scaler.std)


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
    data = make_windows(ramp(100), window=6, horizon=4)
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
        make_windows(ramp(20), window=20)
    with pytest.raises(DataError, match=r"val part .* has 2 values .* at least 3"):
        make_windows(ramp(12), window=2, horizon=3)
    with pytest.raises(DataError, match="empty"):
        make_windows(Series(np.zeros((0, 1)), ("a",)), window=1)


@pytest.mark.parametrize("kwargs", [
    {"window": 0}, {"window": 2.5}, {"window": True}, {"window": 3, "horizon": 0},
    {"window": 3, "val_fraction": 0.0}, {"window": 3, "test_fraction": 1.2},
    {"window": 3, "val_fraction": 0.5, "test_fraction": 0.5},
])
def test_invalid_window_settings(kwargs):
    with pytest.raises(DataError):
        make_windows(ramp(100), **kwargs)


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
