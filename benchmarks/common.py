"""Shared, seeded data and helpers for the asv suite.

Every benchmark builds its inputs here, from fixed seeds, so all backends are
timed on the same numbers. A backend that cannot run here, or that does not
support a configuration, makes setup raise NotImplementedError: asv then shows
the benchmark as skipped rather than failed.
"""

import os
import time

import lstmbench as lb
from lstmbench.bench.run import simulated
from lstmbench.bench.workloads import BENCH_OPTIMIZER, bench_batch, bench_model
from lstmbench.registry import REFERENCE

THREADS = lb.default_threads()  # every backend but the reference runs on all cores
REFERENCE_THREADS = 1  # speedups are over the reference with BLAS pinned to one thread
BACKENDS = lb.backend_names()
STEPS = 64  # sequence length T of the training-step grid
DTYPE = "float32"


def backend_or_skip(name: str, cfg=None, threads: int = THREADS):
    """The backend, with its thread count set; NotImplementedError (asv: skipped) if it
    cannot run here, runs in a simulator (NUMBA_ENABLE_CUDASIM: its times would mean
    nothing), or declares the configuration unsupported."""
    try:
        backend = lb.get_backend(name)
    except lb.LstmbenchError as exc:
        raise NotImplementedError(str(exc)) from None
    if simulated(name):
        raise NotImplementedError(f"{name} runs in a simulator here")
    if cfg is not None and (reason := backend.capabilities.why_unsupported(cfg, BENCH_OPTIMIZER)):
        raise NotImplementedError(reason)
    # for the rest of the benchmark: asv calls setup, then the timed method, in this one context
    backend.set_threads(REFERENCE_THREADS if name == REFERENCE else threads)
    return backend


def settle() -> None:
    """lstmbench.bench.timing.settle, which older commits lack: after a setup's verification ran
    the reference's BLAS, its idle workers stop spinning before anything here is timed."""
    time.sleep(0.3)


def train_state(backend, cfg, x, y, **sequences):
    """A training state warmed up by two steps (JIT compilation, buffers); ``sequences``:
    lengths= for a workload with rows of different lengths."""
    state = backend.init_state(cfg, lb.init_params(cfg, seed=0), BENCH_OPTIMIZER)
    for _ in range(2):
        backend.train_step(state, x, y, **sequences)
    return state


def grid_case(hidden: int, batch: int):
    cfg = bench_model(hidden, DTYPE)
    x, y = bench_batch(cfg, batch, STEPS, seed=0)
    return cfg, x, y


def dataset(n: int, steps: int = 32, hidden: int = 32):
    """N sequences for the epoch benchmarks (a prefix of one seeded set)."""
    cfg = bench_model(hidden, DTYPE)
    x, y = bench_batch(cfg, 8000, steps, seed=1)
    return cfg, x[:n], y[:n]


def cpu_count() -> int:
    return os.cpu_count() or 1
