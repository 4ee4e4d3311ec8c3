"""The reference optimizers: gradient-norm clipping, SGD with momentum, Adam.

They follow torch.optim exactly (same update order, same bias correction), so
parameters after k steps can be compared with PyTorch. Optimizer state is a flat
dict of arrays (``"step"`` plus ``"<slot>/<param name>"``) so it can be saved in
a checkpoint and compared between backends.
"""

from __future__ import annotations

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
    if opt.kind == "adam":
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


def optimizer_step(
    opt: OptimizerConfig,
    params: dict[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    state: OptState,
) -> None:
    """One update of ``params`` and ``state`` in place (clipping included)."""
    scale = clip_scale(global_norm(grads), opt.clip_norm)
    step = int(state["step"]) + 1
    state["step"] = np.array(step, dtype=np.int64)
    for name, p in params.items():
        g = grads[name] * p.dtype.type(scale) if scale != 1.0 else grads[name]
        if opt.kind == "sgd":
            if opt.momentum > 0:
                buf = state[f"momentum/{name}"]
                # torch: the first step sets buf = g; later buf = momentum * buf + g
                buf[...] = g if step == 1 else opt.momentum * buf + g
                g = buf
            p -= p.dtype.type(opt.lr) * g
        else:
            b1, b2 = opt.betas
            m, v = state[f"m/{name}"], state[f"v/{name}"]
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            bias1 = 1 - b1**step
            bias2_sqrt = np.sqrt(1 - b2**step)
            step_size = opt.lr / bias1
            denom = np.sqrt(v) / p.dtype.type(bias2_sqrt) + p.dtype.type(opt.eps)
            p -= p.dtype.type(step_size) * (m / denom)
