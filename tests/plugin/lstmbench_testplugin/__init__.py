"""Two tiny lstmbench backends, installed only while tests/test_plugin.py runs.

``testplugin-good`` computes exactly what the NumPy reference computes (it calls
the reference math). ``testplugin-flipped`` is the same except that the gradient
of ``l0.W_h`` has the wrong sign: the conformance kit must catch it.
"""

from lstmbench import Backend, Capabilities
from lstmbench_backends.reference.reference import forward_with_caches, loss_and_grads


class GoodBackend(Backend):
    name = "testplugin-good"
    description = "test plugin: the reference math, called from outside lstmbench"
    capabilities = Capabilities()

    def _forward(self, cfg, params, x):
        return forward_with_caches(cfg, params, x)[0]

    def _loss_and_grads(self, cfg, params, x, y):
        return loss_and_grads(cfg, params, x, y)


class FlippedBackend(GoodBackend):
    name = "testplugin-flipped"
    description = "test plugin: the reference math with the sign of dLoss/dl0.W_h flipped (a planted bug)"

    def _loss_and_grads(self, cfg, params, x, y):
        loss, grads = loss_and_grads(cfg, params, x, y)
        grads["l0.W_h"] = -grads["l0.W_h"]
        return loss, grads


__all__ = ["FlippedBackend", "GoodBackend"]
