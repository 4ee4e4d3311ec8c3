"""``lstmbench`` under mpiexec with a test backend registered first (tests/test_distributed.py).

    mpiexec -n 2 python tests/mpi_run.py BACKEND [lstmbench arguments...]

BACKEND is one of the backends below, or "-" for none. Each rank writes its pid to
$LSTMBENCH_PID_DIR/rank<r>.pid when that variable is set, so a test can signal one
rank.
"""

import os
import sys
import time

import lstmbench as lb
from lstmbench.cli import main
from lstmbench.training.distributed import launched
from lstmbench_backends.reference import reference
from lstmbench_backends.reference.reference import NumpyReference


def rank() -> int:
    return launched()[1]


class PluginStyle(lb.Backend):
    """What a third-party backend with no fused step looks like: _forward and
    _loss_and_grads only, so training runs the protocol's default step."""

    name = "test-plugin-style"

    def _forward(self, cfg, params, x):
        return reference.forward_with_caches(cfg, params, x)[0]

    def _loss_and_grads(self, cfg, params, x, y):
        return reference.loss_and_grads(cfg, params, x, y)


class Slow(NumpyReference):
    """The reference, 0.1 s per step: time for a test to signal a rank mid-run."""

    name = "test-slow"

    def _train_step(self, state, x, y):
        time.sleep(0.1)
        return super()._train_step(state, x, y)


class FailsOnRank1(NumpyReference):
    """Raises in the third training step, on rank 1 only."""

    name = "test-fails-on-rank-1"
    steps = 0

    def _train_step(self, state, x, y):
        self.steps += 1
        if rank() == 1 and self.steps == 3:
            raise RuntimeError("planted failure on rank 1")
        return super()._train_step(state, x, y)


class DriftsOnRank1(NumpyReference):
    """Rank 1 nudges its parameters after every step: the ranks' models drift apart."""

    name = "test-drifts-on-rank-1"

    def _train_step(self, state, x, y):
        loss = super()._train_step(state, x, y)
        if rank() == 1:
            state.params["head.b"] += 1e-9
        return loss


if __name__ == "__main__":
    choice, args = sys.argv[1], sys.argv[2:]
    for backend in (PluginStyle, Slow, FailsOnRank1, DriftsOnRank1):
        if backend.name == choice:
            lb.register_backend(backend())
    if os.environ.get("LSTMBENCH_PID_DIR"):
        with open(os.path.join(os.environ["LSTMBENCH_PID_DIR"], f"rank{rank()}.pid"), "w") as f:
            f.write(str(os.getpid()))
    sys.exit(main(args))
