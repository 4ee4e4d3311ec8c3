"""`lstmbench bench --scaling`: how epoch time grows with the dataset, with a fixed minibatch
and with full-batch steps, and the exponent a of time ~ N^a per backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmbench.bench.machine import machine_info
from lstmbench.bench.run import default_backends
from lstmbench.bench.timing import timed_call
from lstmbench.bench.workloads import BENCH_OPTIMIZER, bench_batch, bench_model
from lstmbench.config import ModelConfig
from lstmbench.params import init_params
from lstmbench.protocol import Backend, default_threads
from lstmbench.registry import REFERENCE, get_backend
from lstmbench.training.progress import progress_bar

MODES = ("fixed batch", "full batch")


def epoch_seconds(backend: Backend, cfg: ModelConfig, x, y, batch: int) -> float:
    """Wall time of one epoch of training steps over (x, y) in minibatches of ``batch``."""
    state = backend.init_state(cfg, init_params(cfg, seed=0), BENCH_OPTIMIZER)
    backend.train_step(state, x[:batch], y[:batch])  # warm-up (JIT, buffers)
    if len(x) % batch:  # and at the last, shorter minibatch's shape
        backend.train_step(state, x[-(len(x) % batch):], y[-(len(x) % batch):])

    def epoch():
        for i in range(0, len(x), batch):
            backend.train_step(state, x[i : i + batch], y[i : i + batch])

    return timed_call(epoch)[1]


def scaling_exponent(sizes, seconds) -> float:
    """a in seconds ~ sizes^a, by least squares on the logs."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def run_scaling(backends: list[str] | None = None, hidden: int = 32, base_n: int = 1000, steps: int = 32,
                batch: int = 32, dtype: str = "float32", threads: int | None = None, repeats: int = 3,
                progress: bool = True) -> dict[str, Any]:
    """Epoch time for N, 2N, 4N, 8N sequences with a fixed minibatch and with full-batch
    steps, and the fitted exponent per backend (the reference on one BLAS thread)."""
    threads = threads or default_threads()
    names = backends or default_backends()[0]
    sizes = [base_n * k for k in (1, 2, 4, 8)]
    cfg = bench_model(hidden, dtype)
    x_all, y_all = bench_batch(cfg, sizes[-1], steps, seed=1)
    results = []
    bar = progress_bar(progress, total=len(names) * len(sizes) * len(MODES), desc="scaling", unit="run")
    for name in names:
        with get_backend(name).using_threads(1 if name == REFERENCE else threads) as backend:
            if backend.capabilities.why_unsupported(cfg, BENCH_OPTIMIZER):
                bar.update(len(MODES) * len(sizes))
                continue
            for mode in MODES:
                fixed = mode == "fixed batch"
                times = []
                for n in sizes:
                    times.append(float(np.median([epoch_seconds(backend, cfg, x_all[:n], y_all[:n],
                                                                batch if fixed else n) for _ in range(repeats)])))
                    bar.update(1)
                results.append({"backend": name, "mode": mode, "batch": batch if fixed else "N",
                                "threads": backend.threads, "sizes": sizes, "seconds": times,
                                "exponent": scaling_exponent(sizes, times)})
    bar.close()
    return {"kind": "scaling", "machine": machine_info(), "dtype": dtype, "hidden": hidden, "steps": steps,
            "results": results}
