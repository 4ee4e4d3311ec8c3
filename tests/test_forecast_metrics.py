"""Forecast and text metrics next to their baselines (lstmbench.training.scoring and metrics),
season detection, and the diff target transform: by hand on tiny arrays, and end to end
through `lstmbench train` / `predict`."""

import json
import math

import numpy as np
import pytest

from lstmbench import data as lbdata
from lstmbench.cli import main
from lstmbench.config import ModelConfig
from lstmbench.errors import CheckpointError, DataError
from lstmbench.training import experiment, scoring
from lstmbench.training.checkpoint import load_checkpoint
from lstmbench.training.metrics import compare, mase, naive_scale, smape


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the metrics, by hand ----------------------------------------------------

def test_smape_by_hand():
    # 200 |F - A| / (|A| + |F|): 200 * 1/3, 0, and 0 for a forecast and actual both 0
    assert smape([1.0, 2.0, 0.0], [2.0, 2.0, 0.0]) == pytest.approx(200 / 9, rel=1e-12)
    assert smape([110.0], [100.0]) == pytest.approx(200 * 10 / 210, rel=1e-12)
    assert smape([-1.0], [1.0]) == pytest.approx(200.0)  # the largest it can be


def test_mase_without_season_by_hand():
    train = np.array([1.0, 3.0, 2.0, 6.0])
    scale = naive_scale([train])  # |3-1|, |2-3|, |6-2| -> 7/3
    assert scale == pytest.approx(7 / 3, rel=1e-12)
    assert mase([7.0, 8.0], [6.0, 10.0], scale) == pytest.approx(1.5 / (7 / 3), rel=1e-12)


def test_mase_with_season_by_hand():
    train = np.array([1.0, 3.0, 2.0, 6.0, 4.0])
    scale = naive_scale([train], season=2)  # |2-1|, |6-3|, |4-2| -> 2
    assert scale == pytest.approx(2.0, rel=1e-12)
    assert mase([7.0, 8.0], [6.0, 10.0], scale) == pytest.approx(0.75, rel=1e-12)
    assert naive_scale([train], season=1) == naive_scale([train])


def test_mase_scale_pools_several_series_and_is_nan_without_pairs():
    assert naive_scale([np.array([1.0, 3.0]), np.array([10.0, 14.0, 13.0])]) == pytest.approx(7 / 3, rel=1e-12)
    assert math.isnan(naive_scale([np.array([1.0, 2.0])], season=2))
    assert math.isnan(mase([1.0], [2.0], 0.0))  # a constant training part has no scale


@pytest.mark.parametrize("model, baseline, verdict", [
    (0.98, 1.0, "beats"), (0.989, 1.0, "beats"), (0.991, 1.0, "level with"), (1.005, 1.0, "level with"),
    (1.009, 1.0, "level with"), (1.011, 1.0, "does NOT beat"), (2.0, 1.0, "does NOT beat"),
])
def test_compare_within_one_percent_is_level(model, baseline, verdict):
    assert compare(model, baseline) == verdict


def test_seasonal_naive_takes_the_value_whole_seasons_before():
    series = lbdata.Series(np.arange(40.0) ** 2, ("v",))
    win = lbdata.make_windows(series, window=4, horizon=3, target_column=0)
    forecast, short = scoring.seasonal_naive(win, win.test, season=2)
    start = win.test.target_start
    # the last observed row is start - 1; steps 1, 2, 3 take rows start - 2, start - 1, start - 2 + 2 - 2
    expected_rows = np.stack([start - 2, start - 1, start - 2], axis=1)
    np.testing.assert_array_equal(forecast, (expected_rows.astype(float)) ** 2)
    assert short == 0
    forecast, short = scoring.seasonal_naive(win, win.test, season=1)
    np.testing.assert_array_equal(forecast, np.repeat(((start - 1.0) ** 2)[:, None], 3, axis=1))  # = naive


def test_series_report_by_hand():
    values = np.array([5.0, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14, 17, 16, 19, 18, 21, 20, 23, 22, 25])
    win = lbdata.make_windows(lbdata.Series(values, ("v",)), window=3, horizon=1, target_column=0)
    truth = values[win.test.target_start]
    pred = truth + np.array([1.0, -2.0, 0.5])[: len(truth)]
    out = win.scaler.transform(pred[:, None])  # the model's units
    report = scoring.series_report(win, out, season=2, season_from="--season")
    naive = values[win.test.target_start - 1]
    snaive = values[win.test.target_start - 2]
    train = values[: win.train_rows[0]]
    scale = np.mean(np.abs(train[2:] - train[:-2]))
    assert report["test_mae"] == pytest.approx(np.mean(np.abs(pred - truth)), rel=1e-12)
    assert report["test_rmse"] == pytest.approx(np.sqrt(np.mean((pred - truth) ** 2)), rel=1e-12)
    assert report["naive_mae"] == pytest.approx(np.mean(np.abs(naive - truth)), rel=1e-12)
    assert report["seasonal_naive_mae"] == pytest.approx(np.mean(np.abs(snaive - truth)), rel=1e-12)
    assert report["mase_scale"] == pytest.approx(scale, rel=1e-12)
    assert report["test_mase"] == pytest.approx(report["test_mae"] / scale, rel=1e-12)
    assert report["naive_smape"] == pytest.approx(smape(naive, truth), rel=1e-12)
    assert report["verdicts"] == {name: compare(report["test_mae"], report[f"{name}_mae"])
                                  for name in ("naive", "seasonal_naive")}


# --- season detection ----------------------------------------------------------

@pytest.mark.parametrize("index, season", [
    (np.arange("2000-01", "2003-01", dtype="datetime64[M]"), 12),
    (np.array(["2020-01-31", "2020-02-29", "2020-03-31", "2020-04-30"], dtype="datetime64[D]"), 12),  # month ends
    (np.arange("2020-01-01", "2020-03-01", dtype="datetime64[D]"), 7),
    (np.arange("2020-01-01T00", "2020-01-04T00", dtype="datetime64[h]"), 24),
    (np.arange("2020-01-01", "2021-01-01", 7, dtype="datetime64[D]"), None),  # weekly
    (np.arange("2000-01", "2010-01", 3, dtype="datetime64[M]"), None),  # quarterly
    (np.arange(1900, 1950), None),  # years as integers
    (np.arange(50), None),  # row numbers
    (np.array(["2020-01-01", "2020-01-02", "2020-01-05"], dtype="datetime64[D]"), None),  # irregular
])
def test_season_detection(index, season):
    assert lbdata.detect_season(index)[0] == season


def _monthly_csv(path, months=120):
    rng = np.random.default_rng(0)
    dates = np.datetime64("2000-01") + np.arange(months)
    values = 10 + 5 * np.sin(2 * np.pi * np.arange(months) / 12) + rng.normal(0, 0.3, months)
    path.write_text("month,v\n" + "".join(f"{d},{v:.4f}\n" for d, v in zip(dates, values)))
    return path


@pytest.fixture(scope="module")
def monthly(tmp_path_factory):
    return _monthly_csv(tmp_path_factory.mktemp("monthly") / "m.csv")


def _train(capsys, out, *argv):
    code, text, err = run(capsys, "train", *argv, "--backend", "numpy", "--hidden", "8", "--out", str(out), "--quiet")
    assert code == 0, err
    return text, json.loads((out / "metrics.json").read_text())["test"]


def test_season_is_detected_from_a_monthly_index_and_the_flag_overrides_it(monthly, tmp_path, capsys):
    text, test = _train(capsys, tmp_path / "a", "--csv", str(monthly), "--window", "12", "--epochs", "2")
    assert test["season"] == 12 and test["season_from"] == "detected from the monthly index"
    assert "seasonal naive (12)" in text and test["seasonal_naive_mae"] is not None
    text, test = _train(capsys, tmp_path / "b", "--csv", str(monthly), "--window", "12", "--epochs", "2",
                        "--season", "6")
    assert test["season"] == 6 and test["season_from"] == "--season" and "seasonal naive (6)" in text
    assert test["mase_scale_from"] == "in-sample seasonal-naive MAE (season 6)"
    raw = lbdata.read_csv_series(monthly).values[:, 0]
    win = lbdata.make_windows(lbdata.read_csv_series(monthly), window=12)
    rows = win.test.target_start
    assert test["seasonal_naive_mae"] == pytest.approx(np.mean(np.abs(raw[rows - 6] - raw[rows])), rel=1e-12)
    assert load_checkpoint(tmp_path / "b" / "best.npz").meta["season"] == 6


# --- the diff transform ------------------------------------------------------------

def _trend(n=120, columns=1, seed=0):
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.normal(0.5, 1.0, (n, columns)), axis=0) * 3.7 + 1000
    return lbdata.Series(values, tuple(f"c{k}" for k in range(columns)))


@pytest.mark.parametrize("horizon", [1, 4])
def test_diff_round_trip_gives_the_levels_back(horizon):
    series = _trend(columns=2)
    win = lbdata.make_windows(series, window=7, horizon=horizon, target_column=1, target_transform="diff")
    for split in (win.train, win.val, win.test):
        # the scaled changes the model is trained on, turned back into levels, are the series' values
        np.testing.assert_allclose(win.levels(split, split.y), win.truth(split), rtol=0, atol=1e-9)
        rows = split.target_start[:, None] + np.arange(horizon)
        np.testing.assert_array_equal(win.truth(split), series.values[rows, 1])
        # inputs are the scaled changes of every column over the window: rows start - 7 .. start - 1
        changes = np.diff(series.values, axis=0)  # changes[r - 1] is row r's
        first = split.target_start[0]
        np.testing.assert_allclose(win.scaler.inverse(split.x[0]), changes[first - 8 : first - 1])
    level = lbdata.make_windows(series, window=7, horizon=horizon, target_column=1)
    np.testing.assert_array_equal(level.test.target_start, win.test.target_start)  # the same test part
    assert win.train_rows == level.train_rows


def test_diff_round_trip_for_several_series():
    parts = [_trend(n, seed=n) for n in (60, 40, 90)]
    parts = [lbdata.Series(p.values, p.columns, name=f"s{k}") for k, p in enumerate(parts)]
    win = lbdata.make_panel_windows(parts, window=6, horizon=2, target_column=0, target_transform="diff")
    for split in (win.train, win.val, win.test):
        np.testing.assert_allclose(win.levels(split, split.y), win.truth(split), rtol=0, atol=1e-9)
        assert np.all(split.target_start - split.lengths >= 1)  # no input reaches the first row, which has no change


class _NoChange:
    """A stand-in backend whose forecasts are all 0 in the model's units."""

    def forward(self, cfg, params, x, lengths=None):
        return np.zeros((len(x), cfg.output_size))


def test_predict_of_a_diff_model_adds_the_changes_onto_the_last_value():
    values = 2.5 * np.arange(50.0) + 7  # changes all 2.5: their scaler has mean 2.5, so 0 means 2.5
    win = lbdata.make_windows(lbdata.Series(values, ("v",)), window=5, horizon=2, target_transform="diff")
    meta = {"window": 5, "horizon": 2, "target_column": 0, "columns": ["v"], "scaler": win.scaler.to_dict(),
            "target_transform": "diff"}
    cfg = ModelConfig(input_size=1, hidden_size=2, output_size=2)
    got = experiment.forecast(_NoChange(), cfg, None, meta, lbdata.Series(values, ("v",)), steps=5)
    np.testing.assert_allclose(got, values[-1] + 2.5 * np.arange(1, 6), rtol=1e-15)
    with pytest.raises(DataError, match=r"window=5 \(\+ 1"):
        experiment.forecast(_NoChange(), cfg, None, meta, lbdata.Series(values[:5], ("v",)), steps=1)


@pytest.fixture(scope="module")
def trend_runs(tmp_path_factory):
    """A linear trend with a little noise, trained as levels and as changes."""
    folder = tmp_path_factory.mktemp("trend")
    rng = np.random.default_rng(1)
    values = 0.5 * np.arange(300) + rng.normal(0, 0.1, 300)
    csv = folder / "trend.csv"
    csv.write_text("t,v\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(values)))
    runs = {}
    for transform in ("level", "diff"):
        code = main(["train", "--csv", str(csv), "--window", "10", "--hidden", "8", "--epochs", "10", "--backend",
                     "numpy", "--target-transform", transform, "--out", str(folder / transform), "--quiet"])
        assert code == 0
        runs[transform] = folder / transform
    return csv, runs


def test_diff_beats_the_naive_forecast_on_a_trend_where_the_level_model_loses(trend_runs):
    _, runs = trend_runs
    level = json.loads((runs["level"] / "metrics.json").read_text())["test"]
    diff = json.loads((runs["diff"] / "metrics.json").read_text())["test"]
    assert level["outside_training_range"] == 1.0  # every test value lies above the training part's
    assert level["test_mae"] > 10 * level["naive_mae"] and level["verdicts"]["naive"] == "does NOT beat"
    assert diff["test_mae"] < 0.5 * diff["naive_mae"] and diff["verdicts"]["naive"] == "beats"
    assert diff["naive_mae"] == level["naive_mae"]  # the same test part and baseline
    assert diff["target_transform"] == "diff" and level["target_transform"] == "level"
    assert load_checkpoint(runs["diff"] / "best.npz").meta["target_transform"] == "diff"
    assert "target_transform" not in load_checkpoint(runs["level"] / "best.npz").meta  # as before the transform


def test_the_summary_suggests_diff_when_a_level_model_loses_out_of_range(trend_runs):
    _, runs = trend_runs
    report = json.loads((runs["level"] / "metrics.json").read_text())["test"]
    text = "\n".join(scoring.summary_lines(report))
    assert "does NOT beat the naive forecast" in text
    assert "100% of the test values lie outside the training range" in text and "--target-transform diff" in text
    text = "\n".join(scoring.summary_lines(json.loads((runs["diff"] / "metrics.json").read_text())["test"]))
    assert "beats the naive forecast" in text and "--target-transform" not in text


def test_predict_of_a_diff_run_follows_the_trend(trend_runs, capsys):
    csv, runs = trend_runs
    last = lbdata.read_csv_series(csv).values[-1, 0]
    for transform, close in (("diff", True), ("level", False)):
        code, out, _ = run(capsys, "predict", str(runs[transform] / "best.npz"), "--steps", "4", "--json",
                           "--backend", "numpy")
        assert code == 0
        forecast = np.array(json.loads(out)["forecast"])
        assert np.allclose(forecast, last + 0.5 * np.arange(1, 5), atol=0.5) == close


def test_resume_keeps_the_transform(trend_runs, tmp_path, capsys):
    csv, _ = trend_runs
    args = ["train", "--csv", str(csv), "--window", "10", "--hidden", "4", "--backend", "numpy", "--quiet",
            "--target-transform", "diff", "--out", str(tmp_path)]
    assert run(capsys, *args, "--epochs", "1")[0] == 0
    code, _, err = run(capsys, "train", "--resume", "--out", str(tmp_path), "--epochs", "2",
                       "--target-transform", "level", "--quiet")
    assert code == 2 and "--target-transform level (the run has diff)" in err
    code, _, err = run(capsys, "train", "--resume", "--out", str(tmp_path), "--epochs", "2", "--quiet")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "last.npz").meta["target_transform"] == "diff"


def test_a_checkpoint_with_an_unknown_transform_is_refused(trend_runs):
    _, runs = trend_runs
    ckpt = load_checkpoint(runs["diff"] / "best.npz")
    meta = {**ckpt.meta, "target_transform": "log"}
    with pytest.raises(CheckpointError, match="target_transform must be one of level, diff, got 'log'"):
        experiment.check_meta(ckpt.model, meta, "x.npz")
    with pytest.raises(CheckpointError, match="season must be a positive integer"):
        experiment.check_meta(ckpt.model, {**ckpt.meta, "season": 0}, "x.npz")


# --- wording ---------------------------------------------------------------------

def _report(test_mae, naive_mae, seasonal_mae=None):
    report = {"examples": 3, "units": "v", "mase_scale_from": "in-sample naive MAE", "mase_scale": 1.0,
              "season": None if seasonal_mae is None else 12, "season_from": "a weekly index implies none",
              "target_transform": "level", "outside_training_range": 0.0, "training_range": [0.0, 1.0],
              "verdict_metric": "MASE", "seasonal_naive_short_history": 0}
    for name, value in (("test", test_mae), ("naive", naive_mae), ("seasonal_naive", seasonal_mae)):
        report |= {f"{name}_{m}": value for m in ("mae", "rmse", "smape", "mase")}
    report["verdicts"] = {"naive": compare(test_mae, naive_mae),
                          "seasonal_naive": None if seasonal_mae is None else compare(test_mae, seasonal_mae)}
    return report


def test_series_wording():
    assert scoring.summary_lines(_report(1.005, 1.0))[-1].startswith(
        "the model is level with the naive forecast (within 1%) (by MASE); no seasonal-naive baseline: a weekly "
        "index implies none (give --season N for one)")
    assert scoring.summary_lines(_report(0.5, 1.0, 0.502))[-1] == (
        "the model beats the naive forecast and is level with the seasonal-naive forecast (within 1%) (by MASE)")
    assert scoring.summary_lines(_report(0.5, 1.0, 0.7))[-1] == (
        "the model beats the naive and the seasonal-naive forecasts (by MASE)")
    assert scoring.summary_lines(_report(2.0, 1.0, 3.0))[-1] == (
        "the model does NOT beat the naive forecast and beats the seasonal-naive forecast (by MASE)")
    lines = scoring.summary_lines(_report(0.5, 1.0, 0.7))
    assert lines[2].split() == ["model", "0.5", "0.5", "0.5", "0.5"]
    assert lines[4].split() == ["seasonal", "naive", "(12)", "0.7", "0.7", "0.7", "0.7"]


def test_text_metrics_and_wording():
    report = scoring.text_report(2.0, 0.4, 2.015, 0.15)
    assert report["test_bits_per_symbol"] == pytest.approx(2.0 / math.log(2), rel=1e-12)
    assert report["naive_bits_per_symbol"] == pytest.approx(2.015 / math.log(2), rel=1e-12)
    assert report["verdict"] == "level with"
    line = scoring.summary_lines(report)[0]
    assert line.endswith("the model is level with the unigram baseline (within 1%)")
    assert "2.0000 nats/symbol (2.8854 bits" in line
    assert scoring.summary_lines(scoring.text_report(1.5, 0.4, 2.015, 0.15))[0].endswith(
        "the model beats the unigram baseline")


# --- metrics.json ------------------------------------------------------------------

SERIES_KEYS = {"test_loss", "test_rmse", "test_mae", "naive_rmse", "naive_mae", "units", "baseline",  # as before
               "test_smape", "test_mase", "naive_smape", "naive_mase", "seasonal_naive_mae", "seasonal_naive_rmse",
               "seasonal_naive_smape", "seasonal_naive_mase", "season", "season_from", "mase_scale",
               "mase_scale_from", "verdicts", "verdict_metric", "target_transform", "examples",
               "seasonal_naive_short_history", "training_range", "test_range", "outside_training_range"}


def test_series_metrics_json_fields(tmp_path, capsys):
    text, test = _train(capsys, tmp_path, "--dataset", "nile", "--window", "5", "--epochs", "2")
    assert set(test) == SERIES_KEYS
    assert test["season"] is None and test["seasonal_naive_mae"] is None and test["verdicts"]["seasonal_naive"] is None
    raw = lbdata.load_series("nile").values[:, 0]
    win = lbdata.make_windows(lbdata.load_series("nile"), window=5)
    rows = win.test.target_start
    assert test["naive_mae"] == pytest.approx(np.mean(np.abs(raw[rows - 1] - raw[rows])), rel=1e-12)
    scale = np.mean(np.abs(np.diff(raw[: win.train_rows[0]])))
    assert test["mase_scale"] == pytest.approx(scale, rel=1e-12)
    assert test["naive_mase"] == pytest.approx(test["naive_mae"] / scale, rel=1e-12)
    assert test["test_mase"] == pytest.approx(test["test_mae"] / scale, rel=1e-12)
    assert test["baseline"] == "last value" and test["units"] == "volume" and test["examples"] == len(rows)
    assert "test part, 15 forecast(s) of volume" in text and "naive (last value)" in text


def test_text_metrics_json_fields(tmp_path, capsys):
    text_file = tmp_path / "t.txt"
    text_file.write_text("abcabcabd " * 60)
    text, test = _train(capsys, tmp_path / "r", "--text-file", str(text_file), "--seq-len", "12", "--epochs", "1")
    assert set(test) == {"test_loss", "test_accuracy", "naive_loss", "naive_accuracy", "baseline",
                         "test_bits_per_symbol", "naive_bits_per_symbol", "verdict"}
    assert test["test_bits_per_symbol"] == pytest.approx(test["test_loss"] / math.log(2), rel=1e-12)
    assert "bits" in text and "unigram baseline" in text


# --- bad input -----------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nile", "--season", "0"], "argument --season: must be at least 1, got 0"),
    (["--dataset", "nile", "--season", "-3"], "argument --season: must be at least 1, got -3"),
    (["--dataset", "nile", "--season", "x"], "argument --season: 'x' is not an integer"),
    (["--dataset", "nile", "--target-transform", "log"], "argument --target-transform: invalid choice: 'log'"),
])
def test_bad_flag_values_are_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "shakespeare", "--season", "12"],
     "error: --season does not apply to text; --season is for series data"),
    (["--dataset", "shakespeare", "--target-transform", "diff"],
     "error: --target-transform does not apply to text; --target-transform is for series data"),
    (["--dataset", "nile", "--window", "5", "--season", "70"],
     "error: --season 70: the training part has 70 rows, too few to hold one season"),
])
def test_flags_that_do_not_fit_the_data_are_one_line_errors(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "train", *argv, "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "last.npz").exists()


def test_python_api_refuses_series_options_on_text():
    source = experiment.make_source(dataset="anbn")
    with pytest.raises(DataError, match="--target-transform is for series"):
        experiment.build_task(source, hidden_size=4, target_transform="diff")
    with pytest.raises(DataError, match="target_transform must be one of level, diff"):
        lbdata.make_windows(_trend(), window=3, target_transform="log")
