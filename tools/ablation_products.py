"""Measure the matrix-product choices behind the fast backends, one BLAS thread.

    python tools/ablation_products.py

For each (H, rows per shard) it times, with NumPy's BLAS on one thread:
* weight gradient: T products h_t^T dz_t accumulated, against one (H, T*b) @ (T*b, 4H);
* gate products: four (b, H) @ (H, H) per step, against one fused (b, H) @ (H, 4H);
* backward product dz @ W_h^T: on the transposed view of W_h, against a contiguous copy.
Medians of 20 runs; compare within one run (the machine is shared and noisy).
"""

import numpy as np
from threadpoolctl import threadpool_limits

from lstmbench.bench.timing import time_calls

T = 64


def median_ms(fn, repeats=20):
    return 1e3 * time_calls(fn, repeats).median_s


def main():
    rng = np.random.default_rng(0)
    print(f"T={T}, float32, 1 BLAS thread; times in ms (median of 20)")
    with threadpool_limits(1, user_api="blas"):
        for H, b in [(32, 16), (128, 16), (128, 64), (512, 64)]:
            G = 4 * H
            h = rng.random((T, b, H), dtype=np.float32)
            dz = rng.random((T, b, G), dtype=np.float32)
            W = rng.random((H, G), dtype=np.float32)
            out, tmp = np.zeros((H, G), np.float32), np.empty((H, G), np.float32)

            def per_step():
                out[:] = 0
                for t in range(T):
                    np.dot(h[t].T, dz[t], tmp)
                    np.add(out, tmp, out)

            def one_product():
                np.dot(h.reshape(T * b, H).T, dz.reshape(T * b, G), out)

            quarters = [np.ascontiguousarray(W[:, k * H : (k + 1) * H]) for k in range(4)]
            z, zs = np.empty((b, G), np.float32), [np.empty((b, H), np.float32) for _ in range(4)]

            def four_gates():
                for t in range(T):
                    for k in range(4):
                        np.dot(h[t], quarters[k], zs[k])

            def fused_gates():
                for t in range(T):
                    np.dot(h[t], W, z)

            WT, dh = np.ascontiguousarray(W.T), np.empty((b, H), np.float32)

            def transposed_view():
                for t in range(T):
                    np.dot(dz[t], W.T, dh)

            def transposed_copy():
                for t in range(T):
                    np.dot(dz[t], WT, dh)

            a, c = median_ms(per_step), median_ms(one_product)
            d, e = median_ms(four_gates), median_ms(fused_gates)
            f, g = median_ms(transposed_view), median_ms(transposed_copy)
            print(f"H={H:4d} b={b:3d}  weight grad: per step {a:8.2f}  one product {c:8.2f} ({a / c:4.1f}x)   "
                  f"gates: four {d:7.2f}  fused {e:7.2f} ({d / e:4.1f}x)   "
                  f"dz@W_h^T: view {f:7.2f}  copy {g:7.2f} ({f / g:4.1f}x)")


if __name__ == "__main__":
    main()
