"""Timings of the C backend against the NumPy reference and PyTorch, and of its matrix product.

    python backends/c_kernel/bench.py grid [--threads 2] [--rounds 5]
    python backends/c_kernel/bench.py gemm [--threads 1]

``grid``: one training step (float32, D=1, T=64, O=1, many-to-one MSE, Adam) for
H in {32, 128, 512} x B in {32, 128}; the backends take turns within each
round so that background load hits them alike; medians are reported. A C timing
counts only if its loss and parameters after the step match the reference's
on the same data. torch (if installed) is timed with 1 thread and with
``--threads`` threads, and the better is reported. FLOPs are
lstmbench.train_step_flops; "peak" is numpy's sgemm (2048^3) with BLAS on the
same number of threads, measured in the same run.

``gemm``: the kernel's own product, in both builds (32- and 64-byte vectors;
the second on CPUs with AVX-512 only), against numpy's (BLAS on ``--threads``)
at the shapes of a training step (one thread's shard: b rows).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import lstmbench as lb
from lstmbench.optim import init_optimizer_state, optimizer_step
from lstmbench.params import copy_params
from lstmbench_backends.c_kernel import CKernel, aligned_empty, matmul
from lstmbench_backends.reference.reference import loss_and_grads


def sgemm_peak(threads: int, repeats: int = 15) -> float:
    """numpy's best sgemm rate on (2048 x 2048)^2: the best of many, since background load only slows it."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    with threadpool_limits(threads, "blas"):
        a @ a
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t)
    return 2 * 2048**3 / min(times) / 1e9


def torch_step(cfg, params, x, y):
    import torch

    from lstmbench.params import load_into_torch

    lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True)
    head = torch.nn.Linear(cfg.hidden_size, cfg.output_size)
    load_into_torch(params, cfg, lstm, head)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = lstm(xt)
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), yt)
        loss.backward()
        opt.step()

    return step


def grid(threads: int, rounds: int) -> None:
    try:
        import torch
    except ImportError:
        torch = None
    peak, peak1 = sgemm_peak(threads), sgemm_peak(1)
    be = CKernel()
    ok, why = be.availability()
    if not ok:
        raise SystemExit(why)
    be.set_threads(threads)
    opt = lb.OptimizerConfig("adam", lr=1e-3)
    rows = []
    for H in (32, 128, 512):
        for B in (32, 128):
            cfg = lb.ModelConfig(1, H, 1, dtype="float32")
            params = lb.init_params(cfg, 0)
            rng = np.random.default_rng(1)
            x = rng.standard_normal((B, 64, 1)).astype(np.float32)
            y = rng.standard_normal((B, 1)).astype(np.float32)
            # the C step must equal the reference's before its time counts
            ref_params, ref_state = copy_params(params), init_optimizer_state(opt, params)
            with threadpool_limits(1, "blas"):
                ref_loss, grads = loss_and_grads(cfg, ref_params, x, y)
                optimizer_step(opt, ref_params, grads, ref_state)
            state = be.init_state(cfg, params, opt)
            c_loss = be.train_step(state, x, y)
            got = be.get_params(state)
            assert abs(c_loss - ref_loss) <= 1e-4 * abs(ref_loss), (c_loss, ref_loss)
            for k, v in ref_params.items():
                assert np.allclose(got[k], v, rtol=1e-3, atol=2e-4), k

            ref_p, ref_s = copy_params(params), init_optimizer_state(opt, params)

            def numpy_step():
                with threadpool_limits(1, "blas"):
                    _, g = loss_and_grads(cfg, ref_p, x, y)
                    optimizer_step(opt, ref_p, g, ref_s)

            steps = {"c": lambda: be.train_step(state, x, y), "numpy": numpy_step}
            if torch is not None:
                tstep = torch_step(cfg, params, x, y)
                for n in sorted({1, threads}):
                    steps[f"torch{n}"] = (lambda n=n: (torch.set_num_threads(n), tstep()))
            times = {k: [] for k in steps}
            inner = {k: 1 for k in steps}
            for k, f in steps.items():  # warm up, and repeat fast steps to time > 20 ms
                t = time.perf_counter()
                f()
                inner[k] = max(1, int(0.02 / max(time.perf_counter() - t, 1e-6)))
            for _ in range(rounds):
                for k, f in steps.items():
                    t = time.perf_counter()
                    for _ in range(inner[k]):
                        f()
                    times[k].append((time.perf_counter() - t) / inner[k])
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            t_torch = min((v for k, v in med.items() if k.startswith("torch")), default=float("nan"))
            flops = lb.train_step_flops(cfg, B, 64).total
            rows.append((H, B, med, t_torch, flops))
    peak = max(peak, sgemm_peak(threads))  # again at the end: the best seen in this run
    print(f"numpy sgemm 2048^3: {peak1:.0f} GFLOP/s on 1 thread, {peak:.0f} on {threads}")
    print(f"C backend on {threads} threads; reference with BLAS on 1 thread; torch best of 1 and {threads} threads; "
          f"medians of {rounds} rounds, ms per training step")
    print(f"{'H':>4} {'B':>4} | {'C':>8} {'numpy':>8} {'torch':>8} | {'vs numpy':>8} {'vs torch':>8} | "
          f"{'GFLOP/s':>7} {'% peak':>6}")
    for H, B, med, t_torch, flops in rows:
        gflops = flops / (med["c"] * 1e-3) / 1e9
        print(f"{H:>4} {B:>4} | {med['c']:8.2f} {med['numpy']:8.2f} {t_torch:8.2f} | "
              f"{med['numpy'] / med['c']:7.1f}x {t_torch / med['c']:7.2f}x | {gflops:7.1f} {100 * gflops / peak:5.0f}%")


def gemm(threads: int) -> None:
    rng = np.random.default_rng(0)
    widths = (32, 64) if CKernel().runtime_info()["vector_bytes"] == 64 else (32,)  # auto picks 64 on AVX-512
    print(f"GFLOP/s, best of 5; numpy with BLAS on {threads} thread(s), the C product on 1")
    print(f"{'product':>34} | {'numpy':>6} " + " ".join(f"{f'C {w}B':>6}" for w in widths))
    shapes = []
    for H in (32, 128, 512):
        for b in (16, 64):
            shapes.append((f"h@W_h      ({b}x{H})@({H}x{4 * H})", b, H, 4 * H, False, True))
            shapes.append((f"dz@W_h^T ({b}x{4 * H})@({4 * H}x{H})", b, 4 * H, H, False, True))
        for b in (16, 64):
            shapes.append((f"h^T@dz ({H}x{64 * b})@({64 * b}x{4 * H})", H, 64 * b, 4 * H, True, False))
    with threadpool_limits(threads, "blas"):
        for label, M, K, N, trans, packed in shapes:
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
                ts = []
                for _ in range(5):
                    t = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t)
                return flops / min(ts) / 1e9

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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.what == "grid":
        grid(args.threads, args.rounds)
    else:
        gemm(args.threads if "--threads" in __import__("sys").argv else 1)
