"""Rows of different lengths from real data: one record per line of a text (--per-line) and
several series in one CSV file (--series-column), each batched with lengths (design.md
section 8), from the data functions to `lstmbench train` and `lstmbench predict`."""

import json

import numpy as np
import pytest

import lstmbench as lb
import lstmbench.data as lbdata
from lstmbench.cli import main
from lstmbench.data.series import split_sizes
from lstmbench.errors import DataError
from lstmbench.training import experiment
from lstmbench.training.checkpoint import load_checkpoint
from lstmbench.training.metrics import mean_loss

NAMES = ["Anna", "Bob", "Carla", "Dee", "Eve", "Fritz", "Gus", "Hal", "Ivy", "Jo", "Kim", "Liam", "Mo", "Nell",
         "Otto", "Pia", "Quinn", "Rolf", "Sue", "Tom"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- one record per line ------------------------------------------------------------------------


def test_a_record_is_eor_then_its_symbols_and_its_targets_its_symbols_then_eor():
    data = lbdata.make_line_dataset("\n".join(NAMES) + "\n\n   \n")
    vocab, eor = data.vocab, data.vocab.encode(lbdata.EOR)[0]
    assert lbdata.EOR in vocab.symbols and data.seq_len == max(map(len, NAMES)) + 1
    seen = []
    for split in (data.train, data.val, data.test):
        for x, y, n in zip(split.x, split.y, split.lengths):
            line = vocab.decode(y[: n - 1])
            seen.append(line)
            assert x[0].argmax() == eor and y[n - 1] == eor and n == len(line) + 1
            assert vocab.decode(x[1:n].argmax(-1)) == line
            assert not x[n:].any()  # padding: no symbol
    # every line once, in one part (blank lines are no records; val and test symbols unseen in training are UNK)
    assert sorted(seen) == sorted(vocab.decode(vocab.encode(name)) for name in NAMES)
    assert (len(data.train.x), len(data.val.x), len(data.test.x)) == (16, 2, 2)


@pytest.mark.parametrize("text, message", [
    ("", "no non-empty line"), ("\n  \n\n", "no non-empty line"),
    ("a\nb\nc\nd\n", r"4 non-empty line\(s\), too few for a val, test part .* at least 6 lines"),
])
def test_a_text_with_too_few_lines_is_refused(text, message):
    with pytest.raises(DataError, match=message):
        lbdata.make_line_dataset(text)


@pytest.fixture(scope="module")
def names_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ra", "se", "to", "na", "vi"]
    names = sorted({"".join(rng.choice(syllables, rng.integers(1, 5))).capitalize() for _ in range(300)})
    (folder / "names.txt").write_text("\n".join(names) + "\n")
    code = main(["train", "--text-file", str(folder / "names.txt"), "--per-line", "--hidden", "8", "--epochs", "2",
                 "--dtype", "float64", "--backend", "numpy", "--out", str(folder / "run"), "--quiet"])
    assert code == 0
    return folder


def test_per_line_metrics_count_valid_positions_only(names_run):
    metrics = json.loads((names_run / "run" / "metrics.json").read_text())["test"]
    data = lbdata.make_line_dataset((names_run / "names.txt").read_text(), dtype="float64")
    best = load_checkpoint(names_run / "run" / "best.npz")
    test = data.test
    out = lb.get_backend("numpy").forward(best.model, best.params, test.x, lengths=test.lengths)
    valid = np.arange(test.y.shape[1])[None, :] < test.lengths[:, None]
    assert metrics["test_loss"] == pytest.approx(mean_loss(best.model, out, test.y, test.lengths), rel=1e-12)
    assert metrics["test_accuracy"] == pytest.approx(np.mean((out.argmax(-1) == test.y)[valid]), rel=1e-12)
    train_valid = np.arange(data.train.y.shape[1])[None, :] < data.train.lengths[:, None]
    counts = np.bincount(data.train.y[train_valid], minlength=data.vocab.size) + 1.0
    naive = -np.log(counts / counts.sum())[test.y[valid]].mean()
    assert metrics["naive_loss"] == pytest.approx(naive, rel=1e-12)
    padded_too = np.bincount(data.train.y.ravel(), minlength=data.vocab.size) + 1.0  # counting the padding
    assert abs(-np.log(padded_too / padded_too.sum())[test.y].mean() - naive) > 1e-3


def test_per_line_sampling_starts_a_record(names_run, capsys):
    code, out, err = run_cli(capsys, "predict", str(names_run / "run" / "best.npz"), "--prime", "Ka", "--length",
                             "40", "--backend", "numpy")
    assert code == 0 and out.startswith("Ka") and len(out) == 43  # and print's line break
    assert "symbols/s" in err


@pytest.mark.parametrize("content, extra, message", [
    ("\n\n", [], "no non-empty line"),
    ("a\nb\n", ["--seq-len", "5"], "--seq-len does not apply to --per-line"),
])
def test_bad_per_line_runs_are_one_line_errors(tmp_path, capsys, content, extra, message):
    (tmp_path / "t.txt").write_text(content)
    code, _, err = run_cli(capsys, "train", "--text-file", str(tmp_path / "t.txt"), "--per-line", *extra,
                           "--backend", "numpy", "--out", str(tmp_path / "o"))
    assert code == 2 and message in err and not (tmp_path / "o").exists()


# -- several series in one CSV file -------------------------------------------------------------


def panel_csv(path, sizes=(("north", 40), ("south", 30), ("tiny", 9))):
    """Rows of the series interleaved, each with its own dates; sales and temperature."""
    rng = np.random.default_rng(1)
    rows = [(i, name, k) for name, n in sizes for k, i in enumerate(np.sort(rng.permutation(200)[:n]))]
    rows.sort()  # interleaved in the file, each series in time order
    lines = ["date,store,sales,temp"]
    for _, name, k in rows:
        lines.append(f"{np.datetime64('2024-01-01') + k},{name},{10 + 3 * np.sin(k / 4) + len(name):.3f},{k % 7}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_each_series_is_read_on_its_own_with_its_index(tmp_path):
    series = lbdata.read_csv_panel(panel_csv(tmp_path / "p.csv"), "store")
    assert sorted((s.name, len(s)) for s in series) == [("north", 40), ("south", 30), ("tiny", 9)]
    assert all(s.columns == ("sales", "temp") for s in series)
    for s in series:
        assert s.index[0] == np.datetime64("2024-01-01") and np.all(np.diff(s.index) == np.timedelta64(1, "D"))


@pytest.mark.parametrize("column, columns, content, message", [
    ("shop", None, None, "has no column 'shop'; available: date, store, sales, temp"),
    ("store", ["store", "sales"], None, "names the series (--series-column), so it cannot be a value column"),
    ("store", None, "date,store,sales\n2024-01-01,,3\n", "line 2, column 'store': empty cell"),
    ("store", None, "store,sales,x\na,1,2\nb,3,z\n", "series 'a' has the value columns sales, x but series 'b'"),
])
def test_bad_panels_are_data_errors(tmp_path, column, columns, content, message):
    path = panel_csv(tmp_path / "p.csv") if content is None else tmp_path / "p.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lbdata.read_csv_panel(path, column, columns=columns)


def test_windows_never_cross_series_and_short_ones_carry_their_length(tmp_path):
    series = lbdata.read_csv_panel(panel_csv(tmp_path / "p.csv"), "store")
    win = lbdata.make_panel_windows(series, window=8, horizon=1, target_column="sales")
    assert win.min_length == 4 and win.names == tuple(s.name for s in series)
    train_rows = np.concatenate([s.values[: split_sizes(len(s), 0.15, 0.15)[0]] for s in series])
    assert np.allclose(win.scaler.mean, train_rows.mean(axis=0), rtol=1e-14)  # every series' training rows
    for split in (win.train, win.val, win.test):
        for x, y, n, start, k in zip(split.x, split.y, split.lengths, split.target_start, split.series_id):
            rows = win.scaler.transform(series[k].values)
            assert 4 <= n <= 8 and n == min(8, start)
            assert np.array_equal(x[:n], rows[start - n : start]) and not x[n:].any()
            assert y[0] == rows[start, 0]
    assert set(np.unique(win.train.lengths)) >= {4, 8}  # short examples at the start of each series


def test_a_series_shorter_than_min_length_gives_no_example(tmp_path):
    series = lbdata.read_csv_panel(panel_csv(tmp_path / "p.csv", (("a", 40), ("b", 3))), "store")
    win = lbdata.make_panel_windows(series, window=8, horizon=1, target_column="sales")
    assert set(win.train.series_id) == {0}
    with pytest.raises(DataError, match="min_length must be at most the window"):
        lbdata.make_panel_windows(series, window=8, min_length=9)


PANEL = ["--series-column", "store", "--columns", "sales", "--window", "8", "--hidden", "6", "--epochs", "2",
         "--dtype", "float64", "--backend", "numpy", "--quiet"]


@pytest.fixture()
def panel_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--csv", str(panel_csv(tmp_path / "p.csv")), *PANEL, "--out",
                             str(tmp_path / "run"))
    assert code == 0, err
    assert "3 series (" in err and "one model: windows never cross from one series into another" in err
    return tmp_path / "run" / "best.npz"


def test_train_several_series_and_forecast_each_by_name(panel_run, capsys):
    meta = load_checkpoint(panel_run).meta
    assert sorted(meta["series"]) == ["north", "south", "tiny"] and meta["min_length"] == 4
    for name in ("north", "tiny"):
        code, out, err = run_cli(capsys, "predict", str(panel_run), "--series", name, "--steps", "3", "--json",
                                 "--backend", "numpy")
        assert code == 0, err
        answer = json.loads(out)
        assert answer["series"] == name and len(answer["forecast"]) == 3


def test_a_short_series_is_forecast_from_its_rows_with_lengths(tmp_path, panel_run):
    ckpt = load_checkpoint(panel_run)
    series = lbdata.read_csv_panel(tmp_path / "p.csv", "store", columns=["sales"])
    short = lbdata.Series(series[0].values[:5], ("sales",), name="short")
    got = experiment.forecast(lb.get_backend("numpy"), ckpt.model, ckpt.params, ckpt.meta, short, 1)
    scaler = lbdata.Standardizer.from_dict(ckpt.meta["scaler"])
    x = np.zeros((1, 8, 1))
    x[0, :5] = scaler.transform(short.values)
    out = lb.get_backend("numpy").forward(ckpt.model, ckpt.params, x, lengths=np.array([5]))
    assert got[0] == pytest.approx(scaler.inverse(out, column=0)[0, 0], rel=1e-12)
    with pytest.raises(DataError, match="at least min_length=4 values, the series has 3"):
        experiment.forecast(lb.get_backend("numpy"), ckpt.model, ckpt.params, ckpt.meta,
                            lbdata.Series(short.values[:3], ("sales",)), 1)


@pytest.mark.parametrize("argv, message", [
    (["--series", "nowhere"], "--series nowhere: the data has no series 'nowhere'; it has south, north, tiny"),
    ([], "this model forecasts several series: name one with --series"),
])
def test_predict_names_the_series_it_needs(panel_run, capsys, argv, message):
    code, _, err = run_cli(capsys, "predict", str(panel_run), *argv, "--backend", "numpy")
    assert code == 2 and message in err


def test_series_on_a_model_of_one_series_is_refused(tmp_path, capsys):
    assert main(["train", "--dataset", "nile", "--window", "5", "--epochs", "1", "--backend", "numpy", "--quiet",
                 "--out", str(tmp_path)]) == 0
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "best.npz"), "--series", "x", "--backend", "numpy")
    assert code == 2 and "trained on one series, not several" in err


@pytest.mark.parametrize("argv, message", [
    (["--series-column", "shop"], "has no column 'shop'; available: date, store, sales, temp"),
    (["--min-length", "3"], "--min-length is for several series in one CSV file: give --series-column too"),
    (["--series-column", "store", "--min-length", "30"], "min_length must be at most the window (20)"),
])
def test_bad_several_series_runs_are_one_line_errors(tmp_path, capsys, argv, message):
    code, _, err = run_cli(capsys, "train", "--csv", str(panel_csv(tmp_path / "p.csv")), *argv, "--backend", "numpy",
                           "--out", str(tmp_path / "o"))
    assert code == 2 and message in err and not (tmp_path / "o").exists()


def test_per_line_sampling_starts_each_record_from_zeros():
    """After an end-of-record symbol the next record starts from the zero state, as every
    training record did: the same symbols as running each record from its start again."""
    vocab = lbdata.Vocabulary((lbdata.UNK, lbdata.EOR, "a", "b"))
    cfg = lb.ModelConfig(4, 5, 4, loss="xent", many_to_many=True, dtype="float64")
    params, backend = lb.init_params(cfg, 2), lb.get_backend("numpy")
    meta = {"vocab": list(vocab.symbols), "seq_len": 8, "per_line": True}
    got = experiment.generate_text(backend, cfg, params, meta, "ab", 60, temperature=1.0, seed=4).text
    rng, eor = np.random.default_rng(4), 1
    ids, record = [], [eor, 2, 3]
    for _ in range(60):
        logits = backend.forward(cfg, params, vocab.one_hot(np.array(record), "float64")[None])[0, -1]
        ids.append(experiment._draw(logits, 1.0, rng))
        record = [eor] if ids[-1] == eor else record + [ids[-1]]
    assert got == "ab" + vocab.decode(ids) and got.count("\n") >= 3
