"""A trained model's test part next to the baselines forecasters compare with: what
`lstmbench train` prints at the end and writes into metrics.json's "test" block.

Series: MAE, RMSE, sMAPE and MASE, in the target column's original units, of the model, of
the naive forecast (the last observed value) and of the seasonal-naive forecast (the value
one season before). Text: cross-entropy in nats and bits per symbol and accuracy, of the
model and of a unigram model. A model within metrics.LEVEL (1%) of a baseline is "level
with" it rather than better or worse.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstmbench import data as lbdata
from lstmbench.errors import DataError
from lstmbench.training.metrics import (
    LEVEL,
    compare,
    mae,
    mase,
    naive_scale,
    rmse,
    smape,
)

#: the forecasts of a series report, with their names in messages
FORECASTS = {"test": "model", "naive": "naive (last value)", "seasonal_naive": "seasonal naive"}
#: the metrics of each forecast (metrics.json keys end in these)
SERIES_METRICS = ("mae", "rmse", "smape", "mase")


def choose_season(win: lbdata.WindowedDataset, season: int | None) -> tuple[int | None, str]:
    """The season of the seasonal-naive forecast and of MASE's scale, and where it came
    from: ``season`` (train --season), or the one the date index implies
    (lbdata.detect_season; several series: only one all of them imply). A season the
    training part is too short for is an error when given, and dropped when detected."""
    longest = max(win.train_rows, default=0)
    if season is not None:
        if isinstance(season, bool) or not isinstance(season, int) or season < 1:
            raise DataError(f"--season must be a whole number of steps of at least 1, got {season!r}")
        if longest <= season:
            raise DataError(f"--season {season}: the training part has {longest} rows, too few to hold one season "
                            f"and the value a season later (MASE's scale needs more than {season}); give a shorter "
                            "--season or a longer series")
        return season, "--season"
    found = {lbdata.detect_season(s.index) for s in (win.panel or (win.series,))}
    seasons = {m for m, _ in found}
    if len(seasons) != 1 or None in seasons:
        spacing = " / ".join(sorted({d for _, d in found}))
        return None, f"{'an' if spacing[0] in 'aeiou' else 'a'} {spacing} index implies none"
    (detected, spacing), = found
    if longest <= detected:
        return None, f"the {spacing} index implies {detected} steps, more than the training part's {longest} rows"
    return detected, f"detected from the {spacing} index"


def seasonal_naive(win: lbdata.WindowedDataset, split: lbdata.WindowSplit, season: int) -> tuple[np.ndarray, int]:
    """(n, horizon) seasonal-naive forecasts of ``split`` in original units: for step h
    after the last observed row T, y[T + h - m (floor((h - 1) / m) + 1)], the latest
    observed value a whole number of seasons m before (Hyndman and Athanasopoulos, FPP
    5.2); and how many examples had too short a history for that and took the last value."""
    steps = np.arange(1, win.horizon + 1)
    origin = split.target_start - 1
    rows = origin[:, None] + steps - season * ((steps - 1) // season + 1)
    short = rows < 0
    return win.target_at(split, np.where(short, origin[:, None], rows)), int(short.any(axis=1).sum())


def training_values(win: lbdata.WindowedDataset) -> list[np.ndarray]:
    """The target column's training values of each series, in original units."""
    return [s.values[:n, win.target_column] for s, n in zip(win.panel or (win.series,), win.train_rows)]


def series_report(win: lbdata.WindowedDataset, out: np.ndarray, season: int | None = None,
                  season_from: str | None = None) -> dict[str, Any]:
    """The test part's metrics of model outputs ``out`` (the model's units) and of the naive
    and seasonal-naive forecasts (None without a season), all in original units; which
    baselines the model beats (by MAE, which ranks as MASE does); and how far the test
    part leaves the training range."""
    test = win.test
    truth = win.truth(test)
    forecasts = {"test": win.levels(test, out), "naive": np.repeat(win.last_values(test)[:, None], win.horizon, 1)}
    fallback = None
    if season is not None:
        forecasts["seasonal_naive"], fallback = seasonal_naive(win, test, season)
    scale = naive_scale(training_values(win), season)
    metrics = {"mae": mae, "rmse": rmse, "smape": smape, "mase": lambda f, a: mase(f, a, scale)}
    report: dict[str, Any] = {f"{name}_{m}": None if name not in forecasts else metric(forecasts[name], truth)
                              for name in FORECASTS for m, metric in metrics.items()}
    verdicts = {name: None if report[f"{name}_mae"] is None else compare(report["test_mae"], report[f"{name}_mae"])
                for name in ("naive", "seasonal_naive")}
    report |= {
        "units": win.series.columns[win.target_column], "baseline": "last value", "examples": len(test),
        "target_transform": win.target_transform, "season": season, "season_from": season_from,
        "seasonal_naive_short_history": fallback, "mase_scale": scale,
        "mase_scale_from": ("in-sample naive MAE" if season is None
                            else f"in-sample seasonal-naive MAE (season {season})"),
        "verdicts": verdicts, "verdict_metric": "MASE" if math.isfinite(scale) and scale > 0 else "MAE",
    }
    return report | _range_report(win, truth)


def _range_report(win: lbdata.WindowedDataset, truth: np.ndarray) -> dict[str, Any]:
    """The training and test ranges of the target, and the share of test targets outside
    their own series' training range (a trend a level model may not follow)."""
    train = training_values(win)
    ids = np.zeros(len(truth), np.int64) if win.test.series_id is None else win.test.series_id
    low = np.array([p.min() if len(p) else math.inf for p in train])[ids][:, None]
    high = np.array([p.max() if len(p) else -math.inf for p in train])[ids][:, None]
    pooled = np.concatenate(train)
    return {"training_range": [float(pooled.min()), float(pooled.max())],
            "test_range": [float(truth.min()), float(truth.max())],
            "outside_training_range": float(np.mean((truth < low) | (truth > high)))}


def text_report(loss: float, accuracy: float, naive_loss: float, naive_accuracy: float) -> dict[str, Any]:
    """A text model's test cross-entropy (nats and bits per symbol) and accuracy next to the
    unigram baseline's, and whether it beats it (by cross-entropy)."""
    return {"test_loss": loss, "test_bits_per_symbol": loss / math.log(2), "test_accuracy": accuracy,
            "naive_loss": naive_loss, "naive_bits_per_symbol": naive_loss / math.log(2),
            "naive_accuracy": naive_accuracy, "baseline": "unigram frequencies",
            "verdict": compare(loss, naive_loss)}


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What `train` prints about the test part (metrics.json "test" as lines)."""
    if "test_rmse" not in report:
        verdict = report.get("verdict") or compare(report["test_loss"], report["naive_loss"])
        bits = report["test_loss"] / math.log(2), report["naive_loss"] / math.log(2)
        return [(f"test cross-entropy {report['test_loss']:.4f} nats/symbol ({bits[0]:.4f} bits, accuracy "
                 f"{report['test_accuracy']:.3f}) vs unigram baseline {report['naive_loss']:.4f} ({bits[1]:.4f} "
                 f"bits, accuracy {report['naive_accuracy']:.3f}): the model "
                 f"{_phrase(verdict, 'the unigram baseline')}")]
    lines = [(f"test part, {report['examples']} forecast(s) of {report['units']} in its units; MASE's scale: the "
              f"{report['mase_scale_from']} of the training part, {_number(report['mase_scale'])}"),
             f"  {'forecast':<22}{'MAE':>10}{'RMSE':>10}{'sMAPE %':>10}{'MASE':>9}"]
    for name, label in FORECASTS.items():
        if report[f"{name}_mae"] is not None:
            label += f" ({report['season']})" if name == "seasonal_naive" else ""
            lines.append(f"  {label:<22}" + "".join(f"{_number(report[f'{name}_{m}']):>{9 if m == 'mase' else 10}}"
                                                   for m in SERIES_METRICS))
    return [*lines, _series_verdict(report), *_trend_note(report)]


def _series_verdict(report: dict[str, Any]) -> str:
    verdicts = report["verdicts"]
    if verdicts["naive"] == verdicts["seasonal_naive"]:
        said = [_phrase(verdicts["naive"], "the naive and the seasonal-naive forecasts")]
    else:
        said = [_phrase(v, f"the {name.replace('_', '-')} forecast") for name, v in verdicts.items() if v is not None]
    line = f"the model {' and '.join(said)} (by {report['verdict_metric']})"
    if verdicts["seasonal_naive"] is None:
        line += f"; no seasonal-naive baseline: {report['season_from']} (give --season N for one)"
    elif report.get("seasonal_naive_short_history"):
        line += (f"; {report['seasonal_naive_short_history']} example(s) had less than a season of history and "
                 "took the last value")
    return line


def _trend_note(report: dict[str, Any]) -> list[str]:
    """Advice when a level model loses to the naive forecast on a test part that leaves the
    training range."""
    outside = report.get("outside_training_range") or 0
    if report["verdicts"]["naive"] == "beats" or outside == 0 or report.get("target_transform") != "level":
        return []
    low, high = report["training_range"]
    return [(f"note: {outside:.0%} of the test values lie outside the training range of {report['units']} "
             f"({_number(low)} to {_number(high)}), where a model of standardised levels cannot follow; try "
             "--target-transform diff, which forecasts the change from the last value (docs/training.md)")]


def _phrase(verdict: str, baseline: str) -> str:
    """"beats the naive forecast", "is level with the naive forecast (within 1%)", ..."""
    if verdict == "level with":
        return f"is level with {baseline} (within {LEVEL:.0%})"
    return f"{verdict} {baseline}"


def _number(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"
