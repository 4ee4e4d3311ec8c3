"""Checks on the arrays a user hands to a backend, with errors that name the problem.

Every public Backend method runs these before any backend code sees the data,
so a plugin gets the documented errors for free.
"""

from __future__ import annotations

import numpy as np

from lstmbench.config import ModelConfig
from lstmbench.errors import BackendError, DataError, DTypeError, NonFiniteError, ShapeError


def check_inputs(cfg: ModelConfig, x) -> np.ndarray:
    """x must be a (B, T, D) array of the model's dtype with finite values."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"x must be a numpy array, got {type(x).__name__}")
    if x.ndim != 3:
        raise ShapeError(f"x must have shape (batch, time, {cfg.input_size}), got {x.shape}")
    B, T, D = x.shape
    if B < 1 or T < 1:
        raise ShapeError(f"x must hold at least one sequence of at least one step, got shape {x.shape}")
    if D != cfg.input_size:
        raise ShapeError(f"x has {D} features per step (shape {x.shape}), the model expects input_size={cfg.input_size}")
    if x.dtype != cfg.np_dtype:
        raise DTypeError(f"x has dtype {x.dtype}, the model uses {cfg.dtype}; convert with x.astype('{cfg.dtype}')")
    if not np.all(np.isfinite(x)):
        raise NonFiniteError(f"x contains {int(np.size(x) - np.isfinite(x).sum())} NaN or infinite values")
    return x


def expected_target_shape(cfg: ModelConfig, batch: int, steps: int) -> tuple[int, ...]:
    lead = (batch, steps) if cfg.many_to_many else (batch,)
    return lead + ((cfg.output_size,) if cfg.loss == "mse" else ())


def check_targets(cfg: ModelConfig, x: np.ndarray, y) -> np.ndarray:
    """y matches x and the task: MSE takes floats (B, O) or (B, T, O);
    "xent" takes integer classes (B,) or (B, T) in [0, output_size)."""
    if not isinstance(y, np.ndarray):
        raise DTypeError(f"y must be a numpy array, got {type(y).__name__}")
    want = expected_target_shape(cfg, x.shape[0], x.shape[1])
    task = "many-to-many" if cfg.many_to_many else "many-to-one"
    if y.shape != want:
        raise ShapeError(f"y has shape {y.shape}; a {task} {cfg.loss!r} model with x of shape {x.shape} needs {want}")
    if cfg.loss == "mse":
        if y.dtype != cfg.np_dtype:
            raise DTypeError(f"y has dtype {y.dtype}, the model uses {cfg.dtype}; convert with y.astype('{cfg.dtype}')")
        if not np.all(np.isfinite(y)):
            raise NonFiniteError(f"y contains {int(np.size(y) - np.isfinite(y).sum())} NaN or infinite values")
    else:
        if not np.issubdtype(y.dtype, np.integer):
            raise DTypeError(f"'xent' targets must be integer class ids, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= cfg.output_size):
            raise DataError(
                f"'xent' targets must lie in [0, {cfg.output_size}), got values in [{y.min()}, {y.max()}]"
            )
    return y


def check_outputs(backend: str, cfg: ModelConfig, x: np.ndarray, out) -> np.ndarray:
    """What a backend's forward returned must be (B, O) or (B, T, O) of the model's dtype and
    finite (the parameters and inputs were checked finite before the call)."""
    want = (x.shape[0], x.shape[1], cfg.output_size) if cfg.many_to_many else (x.shape[0], cfg.output_size)
    if not isinstance(out, np.ndarray):
        raise BackendError(f"backend {backend!r} returned {type(out).__name__} from forward, not a numpy array")
    if out.shape != want:
        raise BackendError(f"backend {backend!r} returned outputs of shape {out.shape} from forward; for x of "
                           f"shape {x.shape} the model's outputs have shape {want}")
    if out.dtype != cfg.np_dtype:
        raise BackendError(f"backend {backend!r} returned {out.dtype} outputs from forward; the model uses {cfg.dtype}")
    if not np.all(np.isfinite(out)):
        raise BackendError(f"backend {backend!r} returned {int(out.size - np.isfinite(out).sum())} NaN or infinite "
                           "output(s) from forward, from finite parameters and inputs")
    return out


def check_loss(backend: str, loss, method: str) -> float:
    """A loss a backend returned, as a float (it may be infinite or NaN: training calls that
    divergence); anything that is not one number is the backend's error."""
    try:
        return float(loss)
    except (TypeError, ValueError):
        raise BackendError(f"backend {backend!r} returned {type(loss).__name__} {np.shape(loss)} as the loss from "
                           f"{method}, not a number") from None
