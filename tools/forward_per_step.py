"""Whether a backend's forward pass slows per step as the sequence grows (what it stores
leaving the caches): microseconds per step of one forward pass of suite workloads at several
sequence lengths T, the rest of each workload as it is (docs/benchmarks.md, "Where c's forward
pass spends its time"). Medians of ``--repeats`` passes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/forward_per_step.py --steps 8 24 64 168 400
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from lstmbench.bench.timing import time_calls
from lstmbench.bench.workloads import SUITE
from lstmbench.params import init_params
from lstmbench.registry import get_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=list(SUITE),
                        default=["forecast-short", "hourly-multivariate"])
    parser.add_argument("--steps", nargs="+", type=int, default=[8, 24, 64, 168, 400])
    parser.add_argument("--backend", default="c")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    backend = get_backend(args.backend)
    backend.set_threads(args.threads)
    print(f"{args.backend}, {args.threads} threads: microseconds per step of one forward pass "
          f"(median of {args.repeats})")
    for name in args.workloads:
        for steps in args.steps:
            case = replace(SUITE[name], steps=steps, lengths=None).case("float32", forward_only=True)
            params = init_params(case.cfg, seed=0)
            timing = time_calls(lambda: backend.forward(case.cfg, params, case.x), args.repeats, warmup=2)
            print(f"  {name:20} T={steps:4}: {1e6 * timing.median_s / steps:7.2f}")


if __name__ == "__main__":
    main()
