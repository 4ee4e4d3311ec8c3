"""What a parallel region per time step costs in Numba, and what splitting a step's product buys.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/numba_region_cost.py

Times an empty prange region over 2 threads, and one (1x256)@(256x1024) float32 product
per step (BLAS on one thread) against the same product as a prange over two column
halves: the measurement behind the numba backend's hidden-unit split
(docs/numba-backend.md). Three rounds.
"""

import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import threadpool_limits

from lstmbench.bench.timing import timed_call

STEPS = 2000


@njit(parallel=True)
def empty_region(out):
    for k in prange(2):
        out[k] += 1.0


@njit
def regions(out, n):
    for _ in range(n):
        empty_region(out)


@njit(parallel=True)
def product_in_halves(h, w_halves, z_halves):
    for k in prange(w_halves.shape[0]):
        np.dot(h, w_halves[k], z_halves[k])


@njit
def steps_in_halves(h, w_halves, z_halves, n):
    for _ in range(n):
        product_in_halves(h, w_halves, z_halves)


@njit
def steps_whole(h, w, z, n):
    for _ in range(n):
        np.dot(h, w, z)


def per_step_us(run) -> float:
    return timed_call(run)[1] / STEPS * 1e6  # no warm-up here: main compiles everything first


def main() -> None:
    numba.set_num_threads(2)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((1, 256)).astype(np.float32)
    w = rng.standard_normal((256, 1024)).astype(np.float32)
    w_halves = np.stack([np.ascontiguousarray(w[:, :512]), np.ascontiguousarray(w[:, 512:])])
    z, z_halves, out = np.zeros((1, 1024), np.float32), np.zeros((2, 1, 512), np.float32), np.zeros(2)
    with threadpool_limits(1, "blas"):
        regions(out, 10), steps_whole(h, w, z, 5), steps_in_halves(h, w_halves, z_halves, 5)  # compile
        for _ in range(3):
            empty = per_step_us(lambda: regions(out, STEPS))
            whole = per_step_us(lambda: steps_whole(h, w, z, STEPS))
            halves = per_step_us(lambda: steps_in_halves(h, w_halves, z_halves, STEPS))
            print(f"empty prange region {empty:.2f} us; (1x256)@(256x1024) per step: one thread {whole:.2f} us, "
                  f"a prange over 2 column halves {halves:.2f} us")


if __name__ == "__main__":
    main()
