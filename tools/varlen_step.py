"""One training step of the suite's variable-length batch (`varlen`: D=8, H=256, B=64, T=200,
lengths uniform in [20, 200], many-to-one MSE, float32, Adam) against the same batch at full
length, on each backend that takes lengths; and the rows of different lengths placed in the
kernel's shards two ways: longest first in contiguous shards, or dealt to the shards in turn
(lstmbench.fused.dealt_ranks, the default). Interleaved rounds, medians (docs/c-backend.md).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/varlen_step.py --backends c numba
"""

from __future__ import annotations

import argparse
from unittest import mock

import numpy as np

import lstmbench as lb
from lstmbench import fused
from lstmbench.bench.run import time_backend
from lstmbench.bench.workloads import SUITE


def contiguous(batch: int, rows: int) -> np.ndarray:
    return np.arange(batch)  # rank k at position k: shard 0 the longest rows, the last the shortest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["c", "numba"])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    case = SUITE["varlen"].case("float32")
    print(f"mean length {case.lengths.mean() / case.x.shape[1]:.3f} T; medians of 7 steps per round, ms")
    for name in args.backends:
        backend = lb.get_backend(name)
        for rnd in range(args.rounds):
            full = time_backend(backend, case.cfg, case.x, case.y, 7).median_s
            dealt = time_backend(backend, case.cfg, case.x, case.y, 7, lengths=case.lengths).median_s
            with mock.patch.object(fused, "dealt_ranks", contiguous):
                sorted_shards = time_backend(backend, case.cfg, case.x, case.y, 7, lengths=case.lengths).median_s
            print(f"{name} round {rnd + 1}: full length {1e3 * full:6.1f}   lengths, contiguous shards "
                  f"{1e3 * sorted_shards:6.1f} ({sorted_shards / full:.2f}x)   lengths, dealt {1e3 * dealt:6.1f} "
                  f"({dealt / full:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
