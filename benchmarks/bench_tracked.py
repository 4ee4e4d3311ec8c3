"""The figures a history tracks and `lstmbench compare` reads (lstmbench.bench.regressions):
each backend's training step relative to what was timed beside it in the same process, the
NumPy reference on one BLAS thread (grid points) and the FMA probe (grid and suite), and the
raw step time from the same rounds, to show how much more the raw time moves.

Everything is measured once, in one process (``setup_cache``), in a fixed order, in rounds
that interleave a backend's steps with what it is relative to, so that a slow spell of a
shared machine touches both sides of a ratio; each track_ method reads its number. A backend
that disagrees with the reference is not timed. Only package APIs that older commits have are
used here, so ``asv run`` over history can run this file against them.
"""

import statistics
from dataclasses import asdict, dataclass

from lstmbench.bench import peak
from lstmbench.bench.run import verify
from lstmbench.bench.timing import call_seconds
from lstmbench.bench.workloads import SUITE, grid_workloads
from lstmbench.registry import REFERENCE

from .common import BACKENDS, DTYPE, REFERENCE_THREADS, THREADS, backend_or_skip, settle, train_state

GRID = {w.name: w for w in grid_workloads((32, 128), (128,), 64)}  # the reference is cheap enough to time beside
# the suite without the character model (its verification and steps alone took most of a
# commit's time here) and without the near-copies long-b2 and varlen-full
TRACKED_SUITE = ("forecast-short", "hourly-multivariate", "long-b1", "odd-sizes", "varlen")
WORKLOADS = {**GRID, **{name: SUITE[name] for name in TRACKED_SUITE}}
ROUNDS = 5  # interleaved rounds in the process
REPEATS = 3  # steps per round and side


@dataclass(frozen=True)
class RelativeStep:
    """One backend's step, in seconds and relative to what was timed beside it."""

    step_s: float  # median over rounds of the backend's step
    probe_gflop: float  # median over rounds of step x the FMA probe's rate: the probe's GFLOP in one step
    over_reference: float | None  # median over rounds of step / the reference's step (None: not timed)


def relative_step(step, reference_step, probe_gflops, rounds: int = ROUNDS, repeats: int = REPEATS) -> RelativeStep:
    """Rounds of (``repeats`` calls of ``step``, of ``reference_step`` (None: none), one
    ``probe_gflops()``); each ratio is taken within its round, then the median over rounds."""
    steps, over, probe = [], [], []
    for _ in range(rounds):
        s = statistics.median(call_seconds(step, repeats, warmup=0))
        if reference_step is not None:
            over.append(s / statistics.median(call_seconds(reference_step, repeats, warmup=0)))
        probe.append(s * probe_gflops())
        steps.append(s)
    return RelativeStep(statistics.median(steps), statistics.median(probe), statistics.median(over) if over else None)


def probe_rate(threads: int) -> float:
    """A short FMA-probe measurement (GFLOP/s) on ``threads`` threads."""
    if hasattr(peak, "fma_rate"):
        return peak.fma_rate(DTYPE, threads, seconds=0.02)
    fma = peak.fma_peak(DTYPE, threads, seconds=0.02)  # commits before fma_rate
    return fma.per_core_gflops if threads == 1 else fma.gflops


def _stepper(backend, case):
    state = train_state(backend, case.cfg, case.x, case.y, **case.sequence_args())
    return lambda: backend.train_step(state, case.x, case.y, **case.sequence_args())


def measure(name: str, case, beside_reference: bool) -> "dict | str":
    """The backend's RelativeStep (as a dict) on ``case``, with the reference timed beside it
    or not, or why it has none."""
    try:
        backend = backend_or_skip(name, case.cfg)
    except NotImplementedError as exc:
        return str(exc)
    if case.lengths is not None and not backend.capabilities.sequences:
        return f"{name} does not take lengths"
    if name != REFERENCE and (problem := verify(backend, case.cfg, case.x, case.y, lengths=case.lengths)):
        return f"{name} disagrees with the reference: {problem}"
    threads = REFERENCE_THREADS if name == REFERENCE else THREADS
    settle()
    reference = _stepper(backend_or_skip(REFERENCE, case.cfg), case) if beside_reference else None  # 1 BLAS thread
    return asdict(relative_step(_stepper(backend, case), reference, lambda: probe_rate(threads)))  # plain: asv pickles it


class _Measured:
    """setup: the combination's measurement from setup_cache, or asv's skip with the reason."""

    def setup(self, found, backend, workload):
        if isinstance(found[backend, workload], str):
            raise NotImplementedError(found[backend, workload])


class Relative(_Measured):
    """Every backend on the grid points and the tracked suite workloads, its steps interleaved
    with the FMA probe on the same threads."""

    params = [BACKENDS, list(WORKLOADS)]
    param_names = ["backend", "workload"]
    timeout = 1800  # setup_cache measures every combination

    def setup_cache(self):
        if peak.fma_peak(DTYPE, 1, seconds=0.02) is None:
            raise NotImplementedError("the FMA probe is not built")
        return {(name, workload): measure(name, work.case(DTYPE), beside_reference=False)
                for workload, work in WORKLOADS.items() for name in BACKENDS}

    def track_probe_gflop(self, found, backend, workload):
        """The step's time times the FMA probe's rate on the same threads: how many GFLOP the
        probe does in one step (lower is faster)."""
        return found[backend, workload]["probe_gflop"]

    track_probe_gflop.unit = "GFLOP"

    def track_step_seconds(self, found, backend, workload):
        """The raw step time from the same rounds (beside the ratios, to show their spreads)."""
        return found[backend, workload]["step_s"]

    track_step_seconds.unit = "seconds"


class OverReference(_Measured):
    """Every other backend on the grid points, its steps interleaved with the reference's."""

    params = [[b for b in BACKENDS if b != REFERENCE], list(GRID)]
    param_names = ["backend", "workload"]
    timeout = 900

    def setup_cache(self):
        return {(name, workload): measure(name, work.case(DTYPE), beside_reference=True)
                for workload, work in GRID.items() for name in BACKENDS if name != REFERENCE}

    def track_over_reference(self, found, backend, workload):
        """The step's time over the reference's (one BLAS thread), round by round."""
        return found[backend, workload]["over_reference"]

    track_over_reference.unit = "x reference"

    def track_step_seconds(self, found, backend, workload):
        """The raw step time from the same rounds."""
        return found[backend, workload]["step_s"]

    track_step_seconds.unit = "seconds"
