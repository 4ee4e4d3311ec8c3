"""Why every bench timing first waits (lstmbench.bench.timing.settle): a backend's forward pass
timed right after one NumPy matrix product, and after pauses of growing length. OpenBLAS's idle
workers keep polling for a while after a product; on a 2-core machine a polling worker takes a
core from the backend being timed. Prints the median and the slowest of ``--calls`` forward
passes of the C backend (2 threads) after each pause, ``--rounds`` times over.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/pool_spin.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lstmbench.bench.timing import call_seconds
from lstmbench.bench.workloads import SUITE
from lstmbench.params import init_params
from lstmbench.registry import get_backend

PAUSES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="odd-sizes", choices=list(SUITE))
    parser.add_argument("--backend", default="c")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    case = SUITE[args.workload].case("float32", forward_only=True)
    params = init_params(case.cfg, seed=0)
    backend = get_backend(args.backend)
    backend.set_threads(2)

    def forward():
        backend.forward(case.cfg, params, case.x, **case.sequence_args())

    a = np.random.default_rng(0).standard_normal((400, 400))
    call_seconds(forward, 3)  # compiled, buffers allocated
    print(f"{args.backend} forward on {args.workload}, 2 threads: ms after a 400 x 400 NumPy product and a pause")
    for _ in range(args.rounds):
        for pause in PAUSES:
            a @ a
            time.sleep(pause)
            ms = [1e3 * s for s in call_seconds(forward, args.calls, warmup=0)]
            print(f"  pause {pause:4.2f} s: median {statistics.median(ms):6.2f}  slowest {max(ms):6.2f}")


if __name__ == "__main__":
    main()
