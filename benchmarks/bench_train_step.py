"""One training step (forward, backward, Adam) per backend over the grid, plus
the speedup over the reference, GFLOP/s and peak memory."""

import lstmbench as lb
from lstmbench.bench.run import verify
from lstmbench.bench import timing  # a module: asv would take a function named time_* here for a benchmark
from lstmbench.bench.workloads import BENCH_OPTIMIZER, SUITE
from lstmbench.registry import REFERENCE

from .common import BACKENDS, DTYPE, STEPS, THREADS, backend_or_skip, grid_case, train_state

HIDDEN = [32, 128, 512]
BATCH = [32, 128]


def _step_seconds(backend, cfg, x, y, repeats: int) -> float:
    """Median seconds of a training step from a warmed-up state (timed here, not by asv)."""
    state = train_state(backend, cfg, x, y)
    return timing.time_calls(lambda: backend.train_step(state, x, y), repeats, warmup=0).median_s


class TrainStep:
    params = [BACKENDS, HIDDEN, BATCH]
    param_names = ["backend", "hidden", "batch"]
    number = 1
    repeat = (3, 10, 20.0)
    timeout = 300

    def setup(self, backend, hidden, batch):
        self.cfg, self.x, self.y = grid_case(hidden, batch)
        self.backend = backend_or_skip(backend, self.cfg)
        self.state = train_state(self.backend, self.cfg, self.x, self.y)

    def time_train_step(self, backend, hidden, batch):
        self.backend.train_step(self.state, self.x, self.y)

    def peakmem_train_step(self, backend, hidden, batch):
        self.backend.train_step(self.state, self.x, self.y)


class Speedup:
    """Speedup over the NumPy reference with one BLAS thread, both timed in this
    process on the same data; and the model GFLOP/s (lstmbench.bench.flops). A backend
    that disagrees with the reference on this configuration is not timed."""

    params = [[b for b in BACKENDS if b != REFERENCE], HIDDEN, BATCH]
    param_names = ["backend", "hidden", "batch"]
    timeout = 600

    def setup(self, backend, hidden, batch):
        self.cfg, self.x, self.y = grid_case(hidden, batch)
        self.backend = backend_or_skip(backend, self.cfg)
        problem = verify(self.backend, self.cfg, self.x, self.y)
        if problem:
            raise AssertionError(f"{backend} disagrees with the reference: {problem}")
        self.ref = backend_or_skip(REFERENCE, self.cfg)
        repeats = 3 if hidden >= 512 else 7
        self.t_backend = _step_seconds(self.backend, self.cfg, self.x, self.y, repeats)
        self.t_ref = _step_seconds(self.ref, self.cfg, self.x, self.y, repeats)

    def track_speedup(self, backend, hidden, batch):
        return self.t_ref / self.t_backend

    track_speedup.unit = "x"

    def track_gflops(self, backend, hidden, batch):
        return lb.train_step_flops(self.cfg, batch, STEPS, BENCH_OPTIMIZER).total / self.t_backend / 1e9

    track_gflops.unit = "GFLOP/s"


class Threads:
    """The thread counts the suite runs with (recorded with the results)."""

    def track_backend_threads(self):
        return THREADS

    track_backend_threads.unit = "threads"


class Suite:
    """The realistic workloads of `lstmbench bench --suite` (lstmbench.bench.workloads.SUITE), per
    backend, each verified against the reference first; and the model GFLOP/s as a
    percentage of the FMA peak measured in the same process."""

    params = [BACKENDS, list(SUITE)]
    param_names = ["backend", "workload"]
    number = 1
    repeat = (2, 5, 60.0)
    timeout = 900

    def setup(self, backend, workload):
        case = SUITE[workload].case(DTYPE)  # its batch, the rows' lengths (varlen) and model FLOPs
        self.cfg, self.x, self.y, self.flops, self.extra = case.cfg, case.x, case.y, case.flops, case.sequence_args()
        self.backend = backend_or_skip(backend, self.cfg)
        if case.lengths is not None and not self.backend.capabilities.sequences:
            raise NotImplementedError(f"{backend} does not take lengths")
        if backend != REFERENCE and (problem := verify(self.backend, self.cfg, self.x, self.y, lengths=case.lengths)):
            raise AssertionError(f"{backend} disagrees with the reference on {workload}: {problem}")
        self.state = train_state(self.backend, self.cfg, self.x, self.y, **self.extra)

    def time_train_step(self, backend, workload):
        self.backend.train_step(self.state, self.x, self.y, **self.extra)

    def track_pct_fma_peak(self, backend, workload):
        from lstmbench.bench import peak

        seconds = timing.time_calls(lambda: self.backend.train_step(self.state, self.x, self.y, **self.extra), 3,
                                    warmup=0).median_s
        fma = peak.fma_peak(DTYPE, self.backend.threads)
        if fma is None:
            raise NotImplementedError("the FMA probe is not built")
        return 100 * self.flops / seconds / 1e9 / fma.gflops

    track_pct_fma_peak.unit = "%"
