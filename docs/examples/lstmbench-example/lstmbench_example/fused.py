"""The ``example-fused`` backend (optional): the same gradients, plus a fused training
step that keeps parameters, gradient and optimizer buffers as flat vectors
(lstmbench.layout), as a backend with its own memory (a GPU, one buffer) does.
Without it, training calls _loss_and_grads and the reference optimizer.

lstmbench.fused.FusedBackend does the host side of the step: the flat state, the step
counter, the optimizer's per-step constants, the gradient hook between gradient and
update, workspaces. A backend supplies the two kernels below."""

from __future__ import annotations

import math

import numpy as np

from lstmbench.fused import FusedBackend

from . import ExampleBackend


class FusedExampleBackend(FusedBackend, ExampleBackend):
    name = "example-fused"
    description = "example plugin: flat parameters and a fused SGD/Adam/AdamW step"

    def _loss_and_gradient(self, state, x, y):
        # state.theta, state.grad, state.slots["m"], ...: flat vectors in lstmbench.layout's
        # order; state.params: named views into state.theta
        loss, grads = self._loss_and_grads(state.cfg, state.params, x, y)
        state.layout.flatten(grads, state.cfg.np_dtype, out=state.grad)
        return loss  # the loss before the update

    def _update(self, state, scalars):
        # scalars: this step's constants (lstmbench.optim.StepScalars), computed once on the
        # host; the gradient hook, if one is set, has already changed state.grad
        dt, g, theta = state.cfg.np_dtype, state.grad, state.theta
        if scalars.clip_norm is not None:  # torch.nn.utils.clip_grad_norm_ on the global L2 norm
            g *= dt.type(scalars.clip_scale(math.sqrt(float(np.sum(np.square(g, dtype=np.float64))))))
        s = scalars.in_dtype(dt)  # the constants rounded to the parameters' dtype
        if s.l2:  # weight decay of SGD and Adam: an L2 term in the clipped gradient
            g = g + s.l2 * theta
        if s.decay_factor != 1:  # AdamW: the decay decoupled from the gradient, before the update
            theta *= s.decay_factor
        if s.kind == "sgd":
            if s.momentum > 0:
                buf = state.slots["momentum"]
                buf[...] = g if s.first_step else s.momentum * buf + g  # torch: first step sets buf = g
                g = buf
            theta -= s.lr * g
        else:  # Adam and AdamW, as torch.optim.Adam / AdamW (no amsgrad)
            m, v = state.slots["m"], state.slots["v"]
            m[...] = s.beta1 * m + s.one_minus_beta1 * g
            v[...] = s.beta2 * v + s.one_minus_beta2 * g * g
            theta -= s.step_size * (m / (np.sqrt(v) / s.bias2_sqrt + s.eps))
