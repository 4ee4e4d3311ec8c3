"""Evaluation metrics computed from model outputs on the host.

The training losses are defined by each backend's math (the reference's is the
definition); these are the same formulas applied to outputs, for validation,
test reports and comparisons across backends.
"""

from __future__ import annotations

import numpy as np

from lstmbench.config import ModelConfig


def mean_loss(cfg: ModelConfig, y_hat: np.ndarray, y: np.ndarray) -> float:
    """The training loss of ``cfg`` (MSE or mean cross-entropy), in float64."""
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if cfg.loss == "mse":
        return float(np.mean((y_hat - y) ** 2))
    logits = y_hat.reshape(-1, cfg.output_size)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    classes = np.asarray(y).reshape(-1)
    return float(-log_probs[np.arange(len(classes)), classes].mean())


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - truth) ** 2)))


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - truth)))


def accuracy(logits: np.ndarray, classes: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == classes))
