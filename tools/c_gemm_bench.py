"""Timings of the C backend against the NumPy reference and PyTorch, and of its matrix product.

    python tools/c_gemm_bench.py grid [--threads 2] [--rounds 5]
    python tools/c_gemm_bench.py gemm [--threads 1]

``grid``: one training step (float32, D=1, T=64, O=1, many-to-one MSE, Adam) for
H in {32, 128, 512} x B in {32, 128}, on the bench's seeded batches
(lstmbench.bench.workloads); the three take turns within each round so that
background load hits them alike; medians are reported. The C backend is timed
only after the bench's verification against the reference on the same
configuration (lstmbench.bench.run.verify). torch is the bench's peer
(lstmbench.bench.peers: the same parameters, bias_hh frozen, checked against the
reference after two steps), timed with 1 thread and with ``--threads`` threads,
the better reported. FLOPs are the bench's FLOP model; "peak" is numpy's
2048^3 product with BLAS on the same number of threads
(lstmbench.bench.peak.matmul_peak_gflops), measured in the same run.

``gemm``: the kernel's own product, in both builds (32- and 64-byte vectors;
the second on CPUs with AVX-512 only), against numpy's (BLAS on ``--threads``)
at the shapes of a training step (one thread's shard: b rows).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

import lstmbench as lb
from lstmbench.bench import peak
from lstmbench.bench.peers import torch_disagreement, torch_training
from lstmbench.bench.run import verify
from lstmbench.bench.timing import call_seconds, timed_call
from lstmbench.bench.workloads import BENCH_OPTIMIZER, BenchCase, Workload
from lstmbench.protocol import Backend
from lstmbench.registry import REFERENCE
from lstmbench_backends.c_kernel import aligned_empty, matmul

TURN_S = 0.02  # a fast step is repeated within its turn to take at least this long


def interleaved_medians(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each step, the steps taking turns within each round."""
    repeats = {}
    for name, step in steps.items():  # the first call warms up, and says how many calls fill a turn
        repeats[name] = max(1, int(TURN_S / max(timed_call(step)[1], 1e-6)))
    seconds = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            seconds[name].append(timed_call(_repeated, step, repeats[name])[1] / repeats[name])
    return {name: statistics.median(s) for name, s in seconds.items()}


def _repeated(step: Callable[[], object], n: int) -> None:
    for _ in range(n):
        step()


def grid_point(c: Backend, ref: Backend, case: BenchCase, threads: int, rounds: int) -> dict[str, float]:
    """Median ms per step of c, the reference and torch (at its better thread count; NaN
    without torch, or where it disagrees with the reference) on ``case``."""
    cfg, x, y = case.cfg, case.x, case.y
    if (problem := verify(c, cfg, x, y)) is not None:
        raise SystemExit(f"c disagrees with the reference at {case.work.name}: {problem}")
    c_state = c.init_state(cfg, lb.init_params(cfg, 0), BENCH_OPTIMIZER)
    ref_state = ref.init_state(cfg, lb.init_params(cfg, 0), BENCH_OPTIMIZER)
    steps = {"c": lambda: c.train_step(c_state, x, y), REFERENCE: lambda: ref.train_step(ref_state, x, y)}
    steps.update(_torch_steps(case, threads))
    med = {name: 1e3 * s for name, s in interleaved_medians(steps, rounds).items()}
    torch_ms = [ms for name, ms in med.items() if name.startswith("torch")]
    return {"c": med["c"], REFERENCE: med[REFERENCE], "torch": min(torch_ms, default=float("nan"))}


def _torch_steps(case: BenchCase, threads: int) -> dict[str, Callable[[], object]]:
    """The bench's torch peer on ``case`` at 1 and ``threads`` threads; none without torch or
    where it disagrees with the reference (said on stdout)."""
    try:
        import torch
    except ImportError:
        return {}
    params = lb.init_params(case.cfg, 0)
    training = torch_training(case.cfg, params, case.x, case.y)
    if (problem := torch_disagreement(training, case.cfg, params, case.x, case.y)) is not None:
        print(f"torch left out at {case.work.name}: it disagrees with the reference: {problem}")
        return {}
    return {f"torch{n}": (lambda n=n: (torch.set_num_threads(n), training.step())) for n in sorted({1, threads})}


def grid(threads: int, rounds: int) -> None:
    c = lb.load_backend("c")
    ok, why = c.availability()
    if not ok:
        raise SystemExit(why)
    blas_peak, blas_peak1 = peak.matmul_peak_gflops("float32", threads), peak.matmul_peak_gflops("float32", 1)
    rows = []
    with c.using_threads(threads), lb.get_backend(REFERENCE).using_threads(1) as ref:
        for H in (32, 128, 512):
            for B in (32, 128):
                case = Workload(f"H={H} B={B}", H, B, 64).case("float32")
                rows.append((H, B, grid_point(c, ref, case, threads, rounds), case.flops))
    blas_peak = max(blas_peak, peak.matmul_peak_gflops("float32", threads))  # again at the end: the best seen
    print(f"numpy sgemm 2048^3: {blas_peak1:.0f} GFLOP/s on 1 thread, {blas_peak:.0f} on {threads}")
    print(f"C backend on {threads} threads; reference with BLAS on 1 thread; torch best of 1 and {threads} threads; "
          f"medians of {rounds} rounds, ms per training step")
    print(f"{'H':>4} {'B':>4} | {'C':>8} {'numpy':>8} {'torch':>8} | {'vs numpy':>8} {'vs torch':>8} | "
          f"{'GFLOP/s':>7} {'% peak':>6}")
    for H, B, ms, flops in rows:
        gflops = flops / (ms["c"] * 1e-3) / 1e9
        print(f"{H:>4} {B:>4} | {ms['c']:8.2f} {ms[REFERENCE]:8.2f} {ms['torch']:8.2f} | "
              f"{ms[REFERENCE] / ms['c']:7.1f}x {ms['torch'] / ms['c']:7.2f}x | {gflops:7.1f} "
              f"{100 * gflops / blas_peak:5.0f}%")


def gemm_shapes() -> list[tuple[str, int, int, int, bool, bool]]:
    """(label, M, K, N, A transposed, B packed) of the products of a training step."""
    shapes = []
    for H in (32, 128, 512):
        for b in (16, 64):
            shapes.append((f"h@W_h      ({b}x{H})@({H}x{4 * H})", b, H, 4 * H, False, True))
            shapes.append((f"dz@W_h^T ({b}x{4 * H})@({4 * H}x{H})", b, 4 * H, H, False, True))
        for b in (16, 64):
            shapes.append((f"h^T@dz ({H}x{64 * b})@({64 * b}x{4 * H})", H, 64 * b, 4 * H, True, False))
    return shapes


def gemm(threads: int) -> None:
    rng = np.random.default_rng(0)
    widths = (32, 64) if lb.load_backend("c").runtime_info()["vector_bytes"] == 64 else (32,)  # auto: 64 on AVX-512
    print(f"GFLOP/s, best of 5; numpy with BLAS on {threads} thread(s), the C product on 1")
    print(f"{'product':>34} | {'numpy':>6} " + " ".join(f"{f'C {w}B':>6}" for w in widths))
    with threadpool_limits(threads, "blas"):
        for label, M, K, N, trans, packed in gemm_shapes():
            # operands on cache-line boundaries, like the kernel's own buffers (numpy's are 16-byte aligned)
            a = aligned_empty((K, M) if trans else (M, K), np.float32)
            a[:] = rng.standard_normal(a.shape)
            b = aligned_empty((K, N), np.float32)
            b[:] = rng.standard_normal(b.shape)
            if not packed:  # read in place, as the kernel reads dz: row length padded
                bp = aligned_empty((K, (-(-N // 32) | 1) * 32), np.float32)  # >= N rounded up to either panel
                bp[:] = 0
                bp[:, :N] = b
            reps = max(1, int(2e9 / (2 * M * N * K)))
            flops = 2 * M * N * K * reps

            def best(f):
                return flops / min(call_seconds(f, 5, warmup=0)) / 1e9

            t_np = best(lambda: [(a.T @ b if trans else a @ b) for _ in range(reps)])
            t_c = []
            for width in widths:
                if packed:  # packing once per call, amortised over reps as the kernel packs once per step
                    t_c.append(best(lambda: matmul(a, b, transpose_a=trans, repeats=reps, vector_bytes=width)))
                else:
                    t_c.append(best(lambda: matmul(a, bp, transpose_a=trans, pack_b=False, n=N, repeats=reps,
                                                   vector_bytes=width)))
            print(f"{label:>34} | {t_np:6.1f} " + " ".join(f"{t:6.1f}" for t in t_c))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("grid", "gemm"))
    parser.add_argument("--threads", type=int, help="grid: the C backend's threads (default 2); "
                                                     "gemm: numpy's BLAS threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.what == "grid":
        grid(args.threads or 2, args.rounds)
    else:
        gemm(args.threads or 1)
