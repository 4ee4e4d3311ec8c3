"""The ``example-fused`` backend (optional): the same gradients, plus a fused training
step that keeps parameters, gradient and optimizer buffers as flat vectors
(lstmbench.layout), as a backend with its own memory (a GPU, one buffer) does.
Without it, training calls _loss_and_grads and the reference optimizer."""

from __future__ import annotations

import math

import numpy as np

from lstmbench.layout import FlatTrainState, Layout
from lstmbench.optim import clip_scale

from . import ExampleBackend


class FusedExampleBackend(ExampleBackend):
    name = "example-fused"
    description = "example plugin: flat parameters and a fused SGD/Adam step"

    def _init_state(self, cfg, params, opt, opt_state):
        # params: a private copy, already checked; opt_state: {"step", "<slot>/<param>"...},
        # zeros for a fresh run or the saved values when resuming. FlatTrainState keeps them
        # as flat vectors (theta, slots["m"], ...) with state.params / state.opt_state as views.
        return FlatTrainState.create(Layout.of(cfg), cfg, opt, params, opt_state)

    def _train_step(self, state, x, y):
        cfg, opt, dt = state.cfg, state.opt, state.cfg.np_dtype
        loss, grads = self._loss_and_grads(cfg, state.params, x, y)
        g = state.layout.flatten(grads, dt)
        # the gradient hook, between gradient and update: data-parallel training sums g and
        # the loss over all MPI ranks here, in place (a no-op in a single process)
        loss = state.reduce_gradient(g, loss)
        if opt.clip_norm is not None:  # torch.nn.utils.clip_grad_norm_ on the global L2 norm
            scale = clip_scale(math.sqrt(float(np.sum(np.square(g, dtype=np.float64)))), opt.clip_norm)
            if scale != 1.0:
                g *= dt.type(scale)
        step = int(state.opt_state["step"]) + 1
        state.opt_state["step"] = np.array(step, dtype=np.int64)
        theta = state.theta
        if opt.kind == "sgd":
            if opt.momentum > 0:
                buf = state.slots["momentum"]
                buf[...] = g if step == 1 else opt.momentum * buf + g  # torch: first step sets buf = g
                g = buf
            theta -= dt.type(opt.lr) * g
        else:  # Adam, as torch.optim.Adam (no weight decay, no amsgrad)
            b1, b2 = opt.betas
            m, v = state.slots["m"], state.slots["v"]
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            denom = np.sqrt(v) / dt.type(math.sqrt(1 - b2**step)) + dt.type(opt.eps)
            theta -= dt.type(opt.lr / (1 - b1**step)) * (m / denom)
        return loss  # the loss before the update

    def _get_params(self, state):
        return {name: view.copy() for name, view in state.layout.views(state.theta).items()}

    def _get_optimizer_state(self, state):
        return {key: np.array(value, copy=True) for key, value in state.opt_state.items()}
