"""Evaluation metrics computed from model outputs on the host.

The training losses are defined by each backend's math (the reference's is the
definition); these are the same formulas applied to outputs, for validation,
test reports and comparisons across backends.
"""

from __future__ import annotations

import math

import numpy as np

from lstmbench.config import ModelConfig


def mean_loss(cfg: ModelConfig, y_hat: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
    """The training loss of ``cfg`` (MSE or mean cross-entropy), in float64; with ``lengths``
    (many-to-many) over the valid steps alone, as training averages (design.md section 8)."""
    y_hat = np.asarray(y_hat, dtype=np.float64)
    valid = valid_steps(cfg, y_hat, lengths)
    if cfg.loss == "mse":
        return float(np.mean(((y_hat - y) ** 2)[valid]))
    logits = y_hat[valid].reshape(-1, cfg.output_size)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    classes = np.asarray(y)[valid].reshape(-1)
    return float(-log_probs[np.arange(len(classes)), classes].mean())


def valid_steps(cfg: ModelConfig, y_hat: np.ndarray, lengths: np.ndarray | None):
    """An index of the predictions that count: every one (``...``), or with lengths in a
    many-to-many model a (B, T) mask of the steps t < len_b."""
    if lengths is None or not cfg.many_to_many:
        return ...
    return np.arange(y_hat.shape[1])[None, :] < np.asarray(lengths)[:, None]


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - truth) ** 2)))


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - truth)))


def accuracy(logits: np.ndarray, classes: np.ndarray, valid=...) -> float:
    """The share of predictions (those ``valid`` picks) whose largest logit is the class."""
    return float(np.mean((np.argmax(logits, axis=-1) == classes)[valid]))


def smape(pred: np.ndarray, truth: np.ndarray) -> float:
    """Symmetric mean absolute percentage error in percent (0 to 200), as the M3 and M4
    competitions define it: the mean of 200 |F - A| / (|A| + |F|); a term whose forecast and
    actual are both 0 counts 0 (a perfect forecast)."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    num, den = 2 * np.abs(pred - truth), np.abs(truth) + np.abs(pred)
    return float(100 * np.mean(np.divide(num, den, out=np.zeros_like(num), where=den > 0)))


def naive_scale(parts: list[np.ndarray], season: int | None = None) -> float:
    """The denominator of MASE (Hyndman and Koehler 2006): the in-sample mean absolute error
    of the naive forecast, |y_t - y_{t-1}|, or with a ``season`` m of the seasonal-naive
    forecast, |y_t - y_{t-m}|, over the training values. ``parts``: each series' training
    values (of several series, the differences of all of them pooled). NaN when there is no
    such pair (m rows or fewer)."""
    lag = season or 1
    diffs = [np.abs(p[lag:] - p[:-lag]) for p in map(np.asarray, parts) if len(p) > lag]
    return float(np.mean(np.concatenate(diffs))) if diffs else math.nan


def mase(pred: np.ndarray, truth: np.ndarray, scale: float) -> float:
    """Mean absolute scaled error: MAE over the in-sample naive MAE ``scale`` (naive_scale);
    below 1 beats the in-sample naive forecast. NaN when the scale is 0 or NaN (a constant
    training part)."""
    return mae(pred, truth) / scale if scale > 0 else math.nan


#: a model within this share of a baseline's error is "level with" it: closer than the run-to-run noise
LEVEL = 0.01


def compare(model: float, baseline: float, level: float = LEVEL) -> str:
    """How a model's error (lower is better) stands against a baseline's: "beats", "level
    with" (within ``level`` of the baseline's, relative) or "does NOT beat"."""
    if not (math.isfinite(model) and math.isfinite(baseline)):
        return "cannot be compared with"
    if abs(model - baseline) <= level * abs(baseline):
        return "level with"
    return "beats" if model < baseline else "does NOT beat"
