"""A row of the bench's table: one backend (or the torch peer) on one workload, timed or
why not, and whether its timing is to be trusted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lstmbench.bench.timing import Timing
from lstmbench.bench.workloads import BenchCase

# A row whose interquartile range is wider than this fraction of its median was timed while
# something else was running: on a quiet machine repeats of a step agree to a few percent.
UNSTABLE_SPREAD = 0.25


@dataclass
class BenchRow:
    label: str  # "numba", "numpy (1 BLAS thread)", "torch.nn.LSTM", ...
    backend: str
    workload: str
    hidden: int
    batch: int
    steps: int
    threads: int
    status: str  # "ok", "FAILED", "skipped"
    detail: str = ""
    timing: Timing | None = None
    samples_per_s: float | None = None
    gflops: float | None = None
    pct_peak: float | None = None  # of the FMA peak on the threads used (CPU rows)
    speedup: float | None = None  # over the reference with one BLAS thread
    runtime: dict[str, Any] = field(default_factory=dict)
    unstable: str = ""  # why the timing is not to be trusted ("" when it is)
    # a training step's forward (with the loss) and backward timed apart, where the row can time
    # them apart (the torch peer: PyTorch's fastrnns reports avg_fwd and avg_bwd); None otherwise
    fwd: Timing | None = None
    bwd: Timing | None = None


def make_row(label: str, name: str, case: BenchCase, threads: int, timing: Timing | None,
             runtime: dict[str, Any], status: str = "ok", detail: str = "") -> BenchRow:
    """The row of ``case``, with its rates when it was timed (speedup and %peak come later,
    once the whole run is measured)."""
    work = case.work
    row = BenchRow(label, name, work.name, work.hidden, work.batch, work.steps, threads, status, detail, timing,
                   runtime=runtime)
    if timing is not None:
        row.samples_per_s = work.batch / timing.median_s
        row.gflops = case.flops / timing.median_s / 1e9
    return row


def unstable_reason(row: BenchRow) -> str:
    """Why a timed row is not to be trusted: a wide spread over its repeats, or a rate
    above the peak measured in the same run (the peak was measured while the machine was
    busier than during the row); "" if neither."""
    t = row.timing
    reasons = []
    if t is not None and t.q3_s - t.q1_s > UNSTABLE_SPREAD * t.median_s:
        reasons.append(f"IQR {100 * (t.q3_s - t.q1_s) / t.median_s:.0f}% of the median")
    if row.pct_peak is not None and row.pct_peak > 100:
        reasons.append("above the peak measured in this run")
    return "; ".join(reasons)


def on_gpu(runtime: dict[str, Any]) -> bool:
    """Whether a row's runtime_info() is of a real GPU (not a simulator): no CPU peak applies."""
    return bool(runtime.get("device")) and not runtime.get("simulator")
