"""How a backend's threads should share a step: batch shards or hidden units.

    python tools/ablation_parallel.py [--backend c|numba] [H,B,T ...]

For each shape (default: the suite's small-batch and mid-batch workloads) it times one
training step (float32, Adam, every thread) with the threads on batch shards (each its own
rows), on the hidden units of one shard (each its own slice of every gate; c meets at a
barrier per step, numba runs a parallel region per step), and with the backend's own choice
(auto), interleaved in one process so that the machine's noise hits all three alike.
Medians of 15 steps after 2 warm-up steps.
"""

import argparse

import lstmbench as lb
from lstmbench.bench.run import time_backend
from lstmbench.bench.workloads import Workload

DEFAULT = ["256,1,512", "256,2,512", "256,4,512", "256,8,128", "256,16,128", "256,32,64", "96,100,40", "512,8,64",
           "64,4,168"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("c", "numba"), default="c")
    parser.add_argument("shapes", nargs="*", default=DEFAULT, metavar="H,B,T")
    args = parser.parse_args()
    backend = lb.get_backend(args.backend)
    print(f"{args.backend} backend, {backend.threads} threads, float32, Adam; ms per training step (median of 15)")
    print(f"{'H':>5} {'B':>4} {'T':>4} {'shards':>9} {'units':>9} {'auto':>9}  auto ran")
    for spec in args.shapes:
        H, B, T = map(int, spec.split(","))
        work = Workload(spec, H, B, T)
        cfg = work.model("float32")
        x, y = work.data(cfg)
        times = {}
        for mode in ("shards", "units", "auto"):
            backend.parallel = mode
            times[mode] = 1e3 * time_backend(backend, cfg, x, y, 15).median_s
        print(f"{H:>5} {B:>4} {T:>4} {times['shards']:>9.2f} {times['units']:>9.2f} {times['auto']:>9.2f}  "
              f"{backend.last_plan}")
    backend.parallel = "auto"


if __name__ == "__main__":
    main()
