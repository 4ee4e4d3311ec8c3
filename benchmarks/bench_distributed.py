"""What data-parallel training adds to one rank's step, measurable without mpiexec: the
gradient's Allreduce (in an MPI world of one rank: the call's fixed cost and the copies,
no network), and a training step with the data-parallel gradient hook on, to compare
with TrainStep.time_train_step. Skipped where mpi4py is not installed."""

import numpy as np

from lstmbench.bench.workloads import bench_model
from lstmbench.training.distributed import World

from .common import BACKENDS, DTYPE, backend_or_skip, grid_case, train_state


def one_rank_world() -> World:
    try:
        from mpi4py import MPI
    except ImportError:
        raise NotImplementedError("mpi4py is not installed (pip install 'lstmbench[mpi]')") from None
    return World(MPI.COMM_WORLD.Split(0, 0), 0, 1)  # a real communicator of one rank


class GradientAllreduce:
    params = [[32, 128, 512]]
    param_names = ["hidden"]

    def setup(self, hidden):
        self.world = one_rank_world()
        self.grad = np.ones(bench_model(hidden, DTYPE).num_params(), DTYPE)

    def time_allreduce(self, hidden):
        self.world.allreduce_(self.grad)


class DataParallelStep:
    params = [BACKENDS, [32, 128, 512], [128]]
    param_names = ["backend", "hidden", "batch"]
    number = 1
    repeat = (3, 10, 20.0)
    timeout = 300

    def setup(self, backend, hidden, batch):
        self.world = one_rank_world()
        self.cfg, self.x, self.y = grid_case(hidden, batch)
        self.backend = backend_or_skip(backend, self.cfg)
        self.state = train_state(self.backend, self.cfg, self.x, self.y)
        self.state.gradient_hook = self.world.gradient_hook(batch, batch, lambda: False)

    def time_train_step_with_hook(self, backend, hidden, batch):
        self.backend.train_step(self.state, self.x, self.y)
