"""One-hot inputs in the C backend: row gathers and scatters against the products.

    python tools/ablation_one_hot.py

Times a training step (float32, Adam, every thread) of character models on one-hot
input with the kernel reading x as symbol ids (what it does) and with that detection
switched off (x multiplied as any input), interleaved in one process. Medians of 7
steps after 2 warm-up steps.
"""

import lstmbench as lb
from lstmbench.bench.run import time_backend
from lstmbench.bench.workloads import SUITE, Workload
from lstmbench_backends import c_kernel

WORKLOADS = [SUITE["char-onehot"], Workload("char-256", 256, 64, 128, input_size=84, output_size=84, layers=2,
                                            loss="xent", many_to_many=True, one_hot=True),
             Workload("char-wide-vocab", 256, 32, 64, input_size=512, output_size=512, loss="xent",
                      many_to_many=True, one_hot=True)]


def main():
    backend = lb.get_backend("c")
    detect = c_kernel.one_hot_symbols
    print(f"c backend, {backend.threads} threads, float32, Adam; ms per training step (median of 7)")
    for work in WORKLOADS:
        cfg = work.model("float32")
        x, y = work.data(cfg)
        times = {}
        for mode in ("products", "gathers", "products", "gathers"):
            c_kernel.one_hot_symbols = detect if mode == "gathers" else (lambda x: None)
            times.setdefault(mode, []).append(1e3 * time_backend(backend, cfg, x, y, 7).median_s)
        c_kernel.one_hot_symbols = detect
        print(f"{work.name:<16} {work.describe}: products {min(times['products']):.1f} ms, "
              f"gathers {min(times['gathers']):.1f} ms (best of 2 runs each)")


if __name__ == "__main__":
    main()
