"""`lstmbench bench --distributed` under mpiexec: data-parallel strong and weak scaling over
1 .. P ranks, and the share of each epoch spent in the gradient's Allreduce."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmbench.bench.machine import machine_info
from lstmbench.bench.timing import timed_call
from lstmbench.bench.workloads import BENCH_OPTIMIZER, bench_batch, bench_model
from lstmbench.config import ModelConfig
from lstmbench.params import init_params
from lstmbench.protocol import Backend
from lstmbench.registry import get_backend
from lstmbench.training.progress import progress_bar

MODES = ("strong", "weak")


def run_distributed(world, backend_name: str, hidden: int = 128, batch: int = 128, steps: int = 64,
                    dtype: str = "float32", batches: int = 8, threads: int | None = None, repeats: int = 3,
                    progress: bool = True) -> dict[str, Any]:
    """Data-parallel training on P = 1 .. world.size ranks (the first P of them), ``batches``
    minibatches an epoch:

    * strong scaling: the global minibatch stays ``batch`` rows (each rank gets batch / P),
      the dataset stays ``batches * batch`` sequences: speedup t(1)/t(P) and efficiency;
    * weak scaling: each rank keeps ``batch`` rows (the global minibatch is P * batch) and
      the dataset grows with P: t(P)/t(1), which stays near 1 if adding ranks with the data
      keeps the time flat.

    Every epoch is timed on rank 0 between barriers, after a warm-up epoch; medians of
    ``repeats``. The share in Allreduce is the time in the gradient hook's Allreduce
    (waiting for the slowest rank included) over the epoch's."""
    from lstmbench.training.distributed import threads_per_rank

    threads = threads or threads_per_rank(world)
    cfg = bench_model(hidden, dtype)
    rows = []
    bar = progress_bar(progress and world.is_root, total=world.size * len(MODES), desc="distributed", unit="run")
    with get_backend(backend_name).using_threads(threads) as backend:
        for ranks in range(1, world.size + 1):
            sub = world.subset(ranks)
            for mode in MODES:
                global_batch = batch if mode == "strong" else batch * ranks
                if sub is not None:
                    row = _measure(backend, cfg, global_batch, batches, steps, repeats, sub)
                    if sub.is_root:
                        rows.append({"mode": mode, "ranks": ranks, "threads_per_rank": threads, **row})
                world.idle_barrier()  # the ranks left out of this measurement wait here without spinning
                bar.update(1)
        runtime = backend.runtime_info()
    bar.close()
    _add_scaling(rows)
    return {"kind": "distributed", "machine": machine_info(), "backend": backend_name, "runtime": runtime,
            "model": cfg.to_dict(), "steps": steps, "batches_per_epoch": batches,
            "optimizer": BENCH_OPTIMIZER.to_dict(), "rows": rows}


def _measure(backend: Backend, cfg: ModelConfig, global_batch: int, batches: int, steps: int, repeats: int,
             world) -> dict[str, Any]:
    """The figures of one (ranks, mode) row on ``world``: a warm-up epoch, then medians of
    ``repeats`` epochs and of their share in Allreduce."""
    x, y = bench_batch(cfg, batches * global_batch, steps, seed=1)
    _distributed_epoch(backend, cfg, x, y, global_batch, world)  # warm-up (JIT, workspaces)
    runs = [_distributed_epoch(backend, cfg, x, y, global_batch, world) for _ in range(repeats)]
    epoch = float(np.median([r[0] for r in runs]))
    return {"global_batch": global_batch, "rows_per_rank": global_batch // world.size,
            "sequences": batches * global_batch, "epoch_s": epoch, "step_s": epoch / batches,
            "allreduce_share": float(np.median([r[1] / r[0] for r in runs]))}


def _distributed_epoch(backend: Backend, cfg: ModelConfig, x, y, global_batch: int, world) -> tuple[float, float]:
    """(seconds, seconds in the gradient hook's Allreduce) of one epoch of data-parallel
    steps, on rank 0, between barriers."""
    from lstmbench.training.distributed import shard

    state = backend.init_state(cfg, init_params(cfg, seed=0), BENCH_OPTIMIZER)
    reducing = 0.0

    def timed(hook):
        def run(grad, loss):
            nonlocal reducing
            total, seconds = timed_call(hook, grad, loss)
            reducing += seconds
            return total
        return run

    def epoch():
        for lo in range(0, len(x), global_batch):
            idx = np.arange(lo, min(lo + global_batch, len(x)))
            part = idx[shard(len(idx), world.size, world.rank)]
            state.gradient_hook = timed(world.gradient_hook(len(part), len(idx), lambda: False))
            backend.train_step(state, x[part], y[part])
        world.barrier()

    world.barrier()
    return timed_call(epoch)[1], reducing


def _add_scaling(rows: list[dict[str, Any]]) -> None:
    """Strong rows: speedup and efficiency over one rank; weak rows: time against one rank's."""
    for mode in MODES:
        base = next(r["epoch_s"] for r in rows if r["mode"] == mode and r["ranks"] == 1) if rows else None
        for r in (r for r in rows if r["mode"] == mode):
            if mode == "strong":
                r["speedup"] = base / r["epoch_s"]
                r["efficiency"] = r["speedup"] / r["ranks"]
            else:
                r["time_vs_1_rank"] = r["epoch_s"] / base
