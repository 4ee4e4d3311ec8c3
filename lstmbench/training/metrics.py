"""Evaluation metrics computed from model outputs on the host.

The training losses are defined by each backend's math (the reference's is the
definition); these are the same formulas applied to outputs, for validation,
test reports and comparisons across backends.
"""

from __future__ import annotations

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
