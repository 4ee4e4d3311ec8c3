"""Speed and accuracy of the Numba backend's float32 activations against libm's.

    python tools/ablation_activations.py

Times a loop applying each function to 10 million float32 values (one thread),
and measures the largest error in float32 ulps against float64 NumPy over
[-30, 30] plus logarithmic grids near 0.
"""

import math

import numpy as np
from numba import njit

from lstmbench.bench.timing import time_calls
from lstmbench_backends.numba_cpu.kernels import exp_f32, sigmoid, tanh_f32

JIT = dict(error_model="numpy")


@njit(**JIT)
def apply_exp(a, out):
    for j in range(a.shape[0]):
        out[j] = exp_f32(a[j])


@njit(**JIT)
def apply_libm_exp(a, out):
    for j in range(a.shape[0]):
        out[j] = math.exp(a[j])


@njit(**JIT)
def apply_sigmoid(a, out):
    for j in range(a.shape[0]):
        out[j] = sigmoid(a[j])


@njit(**JIT)
def apply_libm_sigmoid(a, out):
    one = np.float32(1.0)
    for j in range(a.shape[0]):
        out[j] = one / (one + math.exp(-a[j]))


@njit(**JIT)
def apply_tanh(a, out):
    for j in range(a.shape[0]):
        out[j] = tanh_f32(a[j])


@njit(**JIT)
def apply_libm_tanh(a, out):
    for j in range(a.shape[0]):
        out[j] = math.tanh(a[j])


def ns_per_value(fn, a):
    out = np.empty_like(a)
    return time_calls(lambda: fn(a, out), repeats=1, warmup=1).median_s / a.size * 1e9  # warm-up: compiles


def max_ulps(fn, exact_fn, xs):
    out = np.empty_like(xs)
    fn(xs, out)
    exact = exact_fn(xs.astype(np.float64))
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    spacing[spacing == 0] = np.finfo(np.float32).smallest_subnormal
    return float(np.max(np.abs(out.astype(np.float64) - exact) / spacing))


def main():
    a = (np.random.default_rng(0).random(10_000_000, dtype=np.float32) * 16 - 8)
    xs = np.concatenate([np.linspace(-30, 30, 2_000_001), np.logspace(-8, 1.4, 200_000),
                         -np.logspace(-8, 1.4, 200_000)]).astype(np.float32)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    rows = [("exp", apply_exp, apply_libm_exp, np.exp, np.abs(xs) < 80),
            ("sigmoid", apply_sigmoid, apply_libm_sigmoid, sig, slice(None)),
            ("tanh", apply_tanh, apply_libm_tanh, np.tanh, slice(None))]
    print("float32, 1 thread: ns per value (10M values), max error in ulps over [-30, 30]")
    for name, fast, libm, exact, mask in rows:
        print(f"{name:8s} polynomial {ns_per_value(fast, a):5.2f} ns, {max_ulps(fast, exact, xs[mask]):4.2f} ulps | "
              f"libm {ns_per_value(libm, a):5.2f} ns, {max_ulps(libm, exact, xs[mask]):4.2f} ulps")


if __name__ == "__main__":
    main()
