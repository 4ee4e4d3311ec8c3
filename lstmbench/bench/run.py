"""`lstmbench bench`'s grid and suite: every backend verified against the NumPy reference on
the configuration it is timed on, then timed, beside the reference and the torch peer; a
training step, or with --forward-only a forward pass (inference).

Rules (docs/benchmarks.md says why):
* a backend that disagrees with the reference on the very configuration it is timed on (same
  model, batch, steps, optimizer) is shown as FAILED and gets no time;
* speedup = time(reference, BLAS pinned to 1 thread) / time(backend), both measured in this
  run; the reference on all cores is shown beside it;
* medians over repeats, with the interquartile range; thread counts recorded;
* GFLOP/s from the FLOP model (lstmbench.bench.flops) and percent of this machine's FMA peak
  with its widest vectors, measured in the same run (lstmbench.bench.peak), with the BLAS
  rate and kernel beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lstmbench.bench.machine import OtherLoad, load_average, machine_info, measure_ceilings
from lstmbench.bench.peers import torch_peer
from lstmbench.bench.rows import BenchRow, make_row, on_gpu, unstable_reason
from lstmbench.bench.timing import Timing, time_calls
from lstmbench.bench.verify import verify, verify_forward
from lstmbench.bench.workloads import BENCH_OPTIMIZER, BenchCase, Workload, grid_workloads, suite_workloads
from lstmbench.config import ModelConfig
from lstmbench.errors import ConfigError
from lstmbench.params import init_params
from lstmbench.protocol import Backend, default_threads
from lstmbench.registry import REFERENCE, get_backend, list_backends
from lstmbench.training.progress import progress_bar
from lstmbench.training.threads import AUTO, ThreadTuner

REFERENCE_ONE_THREAD = f"{REFERENCE} (1 BLAS thread)"  # the row every speedup is over


def time_backend(backend: Backend, cfg: ModelConfig, x, y, repeats: int, opt=BENCH_OPTIMIZER,
                 tuner: ThreadTuner | None = None, lengths: np.ndarray | None = None) -> Timing:
    """One training step's times (on ``lengths``, where given); with ``tuner``, each step on
    the count it picks (--threads auto)."""
    state = backend.init_state(cfg, init_params(cfg, seed=0), opt)
    extra = {} if lengths is None else {"lengths": lengths}
    return _time_tuned(lambda: backend.train_step(state, x, y, **extra), backend, len(x), repeats, tuner)


def time_forward(backend: Backend, case: BenchCase, repeats: int, tuner: ThreadTuner | None = None) -> Timing:
    """One forward pass's times (inference: Backend.forward, as evaluation and prediction call
    it, on the case's lengths where it has them); with ``tuner`` as time_backend."""
    params = init_params(case.cfg, seed=0)
    return _time_tuned(lambda: backend.forward(case.cfg, params, case.x, **case.sequence_args()), backend,
                       len(case.x), repeats, tuner)


def _time_tuned(call, backend: Backend, rows: int, repeats: int, tuner: ThreadTuner | None) -> Timing:
    """``call``'s times after two warm-up calls; with ``tuner``, each call on the count it picks."""
    if tuner is None:
        return time_calls(call, repeats, warmup=2)

    def tuned_call():
        with tuner.step(backend, rows):
            call()
    # untimed: the tuner's first measurement of every count (what a long run pays once)
    return time_calls(tuned_call, repeats, warmup=2 + (tuner.samples + 1) * len(tuner.candidates))


@dataclass(frozen=True)
class Measured:
    """What the rows of a run time, and how each is verified first: a training step (the
    default), or a forward pass (--forward-only, inference: no gradient)."""

    what: str
    forward_only: bool

    def verify(self, backend: Backend, case: BenchCase) -> str | None:
        if self.forward_only:
            return verify_forward(backend, case.cfg, case.x, case.y, lengths=case.lengths)
        return verify(backend, case.cfg, case.x, case.y, lengths=case.lengths)

    def time(self, backend: Backend, case: BenchCase, repeats: int, tuner: ThreadTuner | None = None) -> Timing:
        if self.forward_only:
            return time_forward(backend, case, repeats, tuner)
        return time_backend(backend, case.cfg, case.x, case.y, repeats, tuner=tuner, lengths=case.lengths)


TRAINING_STEP = Measured("training step", False)
FORWARD = Measured("forward", True)


def simulated(name: str) -> bool:
    """Whether a backend runs in a simulator here (Numba's CUDA simulator): correct, but
    its timings would mean nothing."""
    try:
        return bool(get_backend(name).runtime_info().get("simulator"))
    except Exception:  # an unavailable backend is not simulated; run_grid says why it is left out
        return False


def default_backends() -> tuple[list[str], dict[str, str]]:
    """(backends to time, {left out: why}) when none are named: every available backend
    except those running in a simulator."""
    names, left_out = [], {}
    for info in list_backends():
        if not info.available:
            left_out[info.name] = info.reason
        elif simulated(info.name):
            left_out[info.name] = ("runs in a simulator here; its times would mean nothing "
                                   "(name it with --backends to run it anyway)")
        else:
            names.append(info.name)
    return names, left_out


def run_grid(backends: list[str] | None = None, hidden_sizes=(32, 128), batch_sizes=(32, 128), steps: int = 64,
             dtype: str = "float32", threads: int | None = None, repeats: int = 7, with_torch: bool = True,
             progress: bool = True, torch_devices=("cpu", "cuda"), model: dict | None = None,
             forward_only: bool = False) -> dict[str, Any]:
    """Verify, then time one training step (``forward_only``: a forward pass) per backend at every
    (H, B) of one model shape."""
    report = run_workloads(grid_workloads(hidden_sizes, batch_sizes, steps, **(model or {})), backends, dtype,
                           threads, repeats, with_torch, progress, torch_devices, forward_only)
    report["steps"] = steps
    return report


def run_suite(names=None, backends: list[str] | None = None, dtype: str = "float32", threads: int | None = None,
              repeats: int = 5, with_torch: bool = True, progress: bool = True,
              torch_devices=("cpu", "cuda"), dropout: float = 0.0, forward_only: bool = False) -> dict[str, Any]:
    """The realistic workloads of SUITE (all, or ``names``: workloads, DeepBench's shapes or
    groups such as "deepbench"; workloads.suite_workloads), verified and timed like a grid."""
    return run_workloads(suite_workloads(names, dropout, forward_only), backends, dtype, threads, repeats, with_torch,
                         progress, torch_devices, forward_only)


def run_workloads(workloads: list[Workload], backends: list[str] | None = None, dtype: str = "float32",
                  threads: int | str | None = None, repeats: int = 7, with_torch: bool = True,
                  progress: bool = True, torch_devices=("cpu", "cuda"), forward_only: bool = False) -> dict[str, Any]:
    """Verify, then time one training step (``forward_only``: one forward pass, inference) per
    backend on every workload. With torch: a torch.nn.LSTM peer row on each of ``torch_devices``
    ("cuda" only where a timed backend runs on a GPU). ``threads``: a count (None: all cores), or
    "auto": the backends' calls each on the count a ThreadTuner picks, up to all cores. Returns a
    report dict; the ceilings are measured in the same run, last."""
    measured = FORWARD if forward_only else TRAINING_STEP
    if forward_only and any(w.dropout for w in workloads):
        raise ConfigError("a forward pass has no dropout (its masks are drawn in training steps only): time "
                          "forward passes without dropout, or training steps with it")
    auto = threads == AUTO
    threads = default_threads() if auto or not threads else threads
    load_before = load_average()
    names, skipped = _backends_to_time(backends)
    if with_torch and any(w.dropout for w in workloads):  # its masks differ: no row to verify it against
        with_torch, skipped = False, {**skipped, "torch": "not with dropout: torch draws other masks, so its step "
                                                          "cannot be verified against the reference"}
    peers = _torch_peers(names, torch_devices if with_torch else (), forward_only)
    bar = progress_bar(progress, total=len(workloads) * (len(names) + 2 + len(peers)), desc="bench", unit="run")
    cases = [work.case(dtype, forward_only) for work in workloads]
    with OtherLoad() as others:
        rows = _time_backends(cases, names, threads, repeats, bar, measured, auto)
        rows += _time_lasting_pools(cases, peers, threads, repeats, bar, measured)
    ceilings = measure_ceilings(dtype, threads)  # last too: it runs every core flat out
    _compare(rows, ceilings["fma_peak"], threads)
    order = {work.name: k for k, work in enumerate(workloads)}
    rows.sort(key=lambda r: order[r.workload])  # stable: keeps the row order within a workload
    bar.close()
    return {"kind": "grid", "timed": measured.what, "machine": machine_info(),
            "load_average": [load_before, load_average()], "others_cores": others.cores, "dtype": dtype,
            "threads": threads, "threads_mode": AUTO if auto else "fixed", **ceilings,
            "optimizer": None if forward_only else BENCH_OPTIMIZER.to_dict(), "unavailable": skipped,
            "workloads": [asdict(w) | {"describe": w.describe} for w in workloads], "rows": [asdict(r) for r in rows]}


def _backends_to_time(backends: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """(names, {left out: why}): those named, each checked to run here before any timing (get_backend
    says why not), else default_backends()."""
    if not backends:
        return default_backends()
    for name in backends:
        get_backend(name)
    return list(backends), {}


def _torch_peers(names: list[str], devices, forward_only: bool = False) -> list:
    """A torch peer per device of ``devices`` that torch can run on here; "cuda" only where a
    timed backend runs on a GPU too."""
    gpu = any(on_gpu(get_backend(n).runtime_info()) for n in names)
    return [peer for device in devices if device == "cpu" or gpu if (peer := torch_peer(device, forward_only))]


def _time_backends(cases: list[BenchCase], names: list[str], threads: int, repeats: int, bar,
                   measured: Measured = TRAINING_STEP, auto: bool = False) -> list[BenchRow]:
    """Per workload: the reference on one BLAS thread, then each backend on ``threads`` (auto: up to)."""
    ref = get_backend(REFERENCE)
    rows = []
    for case in cases:
        with ref.using_threads(1):
            rows.append(make_row(REFERENCE_ONE_THREAD, REFERENCE, case, 1, measured.time(ref, case, repeats),
                                 ref.runtime_info()))
        bar.update(1)
        for name in names:
            if name != REFERENCE:
                bar.set_postfix_str(f"{name} {case.work.name}")
                with get_backend(name).using_threads(threads) as backend:
                    rows.append(_backend_row(name, backend, case, threads, repeats, measured, auto))
            bar.update(1)
    return rows


def _backend_row(name: str, backend: Backend, case: BenchCase, threads: int, repeats: int,
                 measured: Measured = TRAINING_STEP, auto: bool = False) -> BenchRow:
    """A backend's row: skipped (what it does not support), FAILED (it disagrees with the
    reference), or timed."""
    reason = backend.capabilities.why_unsupported(case.cfg, None if measured.forward_only else BENCH_OPTIMIZER)
    if case.lengths is not None and not backend.capabilities.sequences:
        reason = "does not take lengths (design.md section 8)"
    if reason:
        return make_row(name, name, case, threads, None, {}, "skipped", reason)
    if (problem := measured.verify(backend, case)) is not None:
        return make_row(name, name, case, threads, None, {}, "FAILED", problem)
    tuner = ThreadTuner(threads) if auto and threads > 1 else None
    timing = measured.time(backend, case, repeats, tuner)
    return make_row(name, name, case, threads, timing,
                    backend.runtime_info() | ({"threads_auto": tuner.summary()} if tuner else {}))


def _time_lasting_pools(cases: list[BenchCase], peers: list, threads: int, repeats: int, bar,
                        measured: Measured = TRAINING_STEP) -> list[BenchRow]:
    """The rows whose thread pools outlive their calls, after all the others: the torch peer
    (torch's OpenMP) and the reference on all cores (OpenBLAS's threads keep spinning for a
    while after a multi-threaded call and would slow whatever ran next on the other cores)."""
    rows = []
    for peer in peers:
        for case in cases:
            rows.append(peer(case, repeats))
            bar.update(1)
    with get_backend(REFERENCE).using_threads(threads) as ref:
        for case in cases:
            rows.append(make_row(f"{REFERENCE} ({threads} BLAS threads)", REFERENCE, case, threads,
                                 measured.time(ref, case, repeats), ref.runtime_info()))
            bar.update(1)
    return rows


def _compare(rows: list[BenchRow], fma: dict[str, Any] | None, threads: int) -> None:
    """Each timed row's speedup over the reference on one thread, its percent of the FMA peak
    of its threads (CPU rows; measured on all ``threads``, per core below that), and whether
    it is to be trusted."""
    base = {r.workload: r.timing.median_s for r in rows if r.label == REFERENCE_ONE_THREAD}
    for row in rows:
        if row.timing is None:
            continue
        row.speedup = base[row.workload] / row.timing.median_s
        if fma and not on_gpu(row.runtime):  # a CPU peak: no percentage of it for a GPU
            row_peak = fma["gflops"] if row.threads >= threads else fma["per_core_gflops"] * row.threads
            row.pct_peak = 100 * row.gflops / row_peak
        row.unstable = unstable_reason(row)
