"""The ``example`` backend: the two methods every backend must implement.

The math is in lstm.py, plain NumPy; a real plugin calls its own kernel there.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np

from lstmbench import Backend, Capabilities

from . import lstm


class ExampleBackend(Backend):
    name = "example"  # the same as the entry-point name
    description = "example plugin: an LSTM in plain NumPy"
    capabilities = Capabilities()  # float32 and float64, mse and xent, any depth, both heads, SGD and Adam

    def availability(self):
        if find_spec("threadpoolctl") is None:
            return False, "threadpoolctl is not installed; pip install threadpoolctl"
        return True, ""

    def runtime_info(self):
        return {"threads": self.threads, "numpy": np.__version__}

    # Inputs are validated before these are called: x is (B, T, D) of cfg.dtype and
    # finite, params have exactly cfg's names, shapes and dtype, y matches the task.
    def _forward(self, cfg, params, x):
        from threadpoolctl import threadpool_limits  # here, so that availability() can say it is missing

        with threadpool_limits(self.threads, user_api="blas"):  # honour --threads
            return lstm.forward(cfg, params, x)[0]  # (B, O) or (B, T, O), cfg.dtype

    def _loss_and_grads(self, cfg, params, x, y):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.threads, user_api="blas"):
            loss, grads = lstm.loss_and_grads(cfg, params, x, y)
        return float(loss), grads  # grads: the same keys, shapes and dtype as params
