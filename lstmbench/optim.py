"""The reference optimizers: gradient-norm clipping, SGD with momentum, Adam, AdamW, each
with weight decay (design.md section 10).

They follow torch.optim exactly (same update order, same bias correction), so
parameters after k steps can be compared with PyTorch. Optimizer state is a flat
dict of arrays (``"step"`` plus ``"<slot>/<param name>"``) so it can be saved in
a checkpoint and compared between backends. :func:`step_scalars` computes a step's
constants (bias corrections, ...) once, for this reference and for every backend's kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Mapping

import numpy as np

from lstmbench.config import OptimizerConfig

OptState = dict[str, np.ndarray]


def init_optimizer_state(opt: OptimizerConfig, params: Mapping[str, np.ndarray]) -> OptState:
    state: OptState = {"step": np.array(0, dtype=np.int64)}
    for slot in optimizer_slots(opt):
        for name, value in params.items():
            state[f"{slot}/{name}"] = np.zeros_like(value)
    return state


def optimizer_slots(opt: OptimizerConfig) -> tuple[str, ...]:
    """Names of the per-parameter buffers the optimizer keeps."""
    if opt.kind in ("adam", "adamw"):
        return ("m", "v")
    return ("momentum",) if opt.momentum > 0 else ()


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all gradients together (accumulated in float64)."""
    return float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values())))


def clip_scale(norm: float, clip_norm: float | None) -> float:
    """Factor torch.nn.utils.clip_grad_norm_ multiplies the gradients by."""
    if clip_norm is None:
        return 1.0
    return min(clip_norm / (norm + 1e-6), 1.0)


@dataclass(frozen=True)
class StepScalars:
    """Everything one optimizer step needs besides the arrays, computed once per step on the
    host, in float64 as torch does (:func:`step_scalars`). The reference optimizer and every
    backend's update kernel take their constants from here, so this is the one place that
    says how, for example, Adam's bias corrections are computed; a kernel rounds them to the
    parameters' dtype (:meth:`in_dtype`) and does nothing but elementwise arithmetic."""

    kind: str  # "sgd", "adam" or "adamw"
    step: int  # the step being taken, counted from 1
    lr: float  # this step's learning rate (a schedule's, lstmbench.training.schedule)
    clip_norm: float | None  # clip the gradient's global L2 norm to this (None: no clipping)
    # weight decay: SGD and Adam add l2 * theta to the clipped gradient; AdamW multiplies theta
    # by decay_factor = 1 - lr * w before its update (1.0 when it does not decay)
    l2: float
    decay_factor: float
    # SGD
    momentum: float
    first_step: bool  # torch's SGD starts its momentum buffer as the first step's gradient
    # Adam
    beta1: float
    beta2: float
    one_minus_beta1: float
    one_minus_beta2: float
    step_size: float  # lr / (1 - beta1^step): the first moment's bias correction folded into the rate
    bias2_sqrt: float  # sqrt(1 - beta2^step): the second moment's bias correction
    eps: float

    def in_dtype(self, dtype) -> "StepScalars":
        """The real-valued constants rounded to ``dtype`` (numpy scalars), as a kernel working in
        the parameters' dtype uses them; ``clip_norm`` stays float64, like the norm it meets."""
        to = np.dtype(dtype).type
        return replace(self, **{f.name: to(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), float) and f.name != "clip_norm"})

    def clip_scale(self, norm: float) -> float:
        """What the gradient is multiplied by, given its global L2 norm (1.0 without clipping)."""
        return clip_scale(norm, self.clip_norm)


def step_scalars(opt: OptimizerConfig, step: int, lr: float | None = None) -> StepScalars:
    """The scalars of step ``step`` (counted from 1) of ``opt`` at learning rate ``lr`` (None:
    ``opt.lr``): bias corrections and weight decay included."""
    b1, b2 = opt.betas
    lr = opt.lr if lr is None else float(lr)
    decoupled = opt.kind == "adamw"
    return StepScalars(kind=opt.kind, step=step, lr=lr, clip_norm=opt.clip_norm,
                       l2=0.0 if decoupled else opt.weight_decay,
                       decay_factor=1.0 - lr * opt.weight_decay if decoupled else 1.0,
                       momentum=opt.momentum, first_step=step == 1,
                       beta1=b1, beta2=b2, one_minus_beta1=1 - b1, one_minus_beta2=1 - b2,
                       step_size=lr / (1 - b1**step), bias2_sqrt=math.sqrt(1 - b2**step), eps=opt.eps)


def optimizer_step(
    opt: OptimizerConfig,
    params: dict[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    state: OptState,
    lr: float | None = None,
) -> None:
    """One update of ``params`` and ``state`` in place (clipping and weight decay included), at
    learning rate ``lr`` (None: ``opt.lr``)."""
    s = step_scalars(opt, int(state["step"]) + 1, lr)
    scale = s.clip_scale(global_norm(grads))
    state["step"] = np.array(s.step, dtype=np.int64)
    for name, p in params.items():
        g = grads[name] * p.dtype.type(scale) if scale != 1.0 else grads[name]
        if s.l2:
            g = g + p.dtype.type(s.l2) * p  # L2: torch's SGD and Adam, after clipping
        if s.decay_factor != 1.0:
            p *= p.dtype.type(s.decay_factor)  # AdamW: decoupled, before the update
        if s.kind == "sgd":
            if s.momentum > 0:
                buf = state[f"momentum/{name}"]
                # torch: the first step sets buf = g; later buf = momentum * buf + g
                buf[...] = g if s.first_step else s.momentum * buf + g
                g = buf
            p -= p.dtype.type(s.lr) * g
        else:
            m, v = state[f"m/{name}"], state[f"v/{name}"]
            m[...] = s.beta1 * m + s.one_minus_beta1 * g
            v[...] = s.beta2 * v + s.one_minus_beta2 * g * g
            denom = np.sqrt(v) / p.dtype.type(s.bias2_sqrt) + p.dtype.type(s.eps)
            p -= p.dtype.type(s.step_size) * (m / denom)
