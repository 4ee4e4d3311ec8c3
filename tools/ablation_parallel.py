"""How the C backend's threads should share a step: batch shards or hidden units.

    python tools/ablation_parallel.py [H,B,T ...]

For each shape (default: the suite's small-batch and mid-batch workloads) it times one
training step (float32, Adam, every thread) with the threads on batch shards (each its own
rows), on the hidden units of one shard (each its own slice of every gate, a barrier per
step), and with the backend's own choice (auto), interleaved in one process so that the
machine's noise hits all three alike. Medians of 15 steps after 2 warm-up steps.
"""

import sys

import lstmbench as lb
from lstmbench.bench import Workload, time_backend

DEFAULT = ["256,1,512", "256,2,512", "256,4,512", "256,8,128", "256,16,128", "256,32,64", "96,100,40", "512,8,64",
           "64,4,168"]


def main(argv):
    backend = lb.get_backend("c")
    print(f"c backend, {backend.threads} threads, float32, Adam; ms per training step (median of 15)")
    print(f"{'H':>5} {'B':>4} {'T':>4} {'shards':>9} {'units':>9} {'auto':>9}  auto ran")
    for spec in argv or DEFAULT:
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
    main(sys.argv[1:])
