"""What dropout costs a training step: each suite workload's step on one backend (default c) at
the dropout probabilities given, in turn, medians in ms as one JSON line (issue 20's goal: at most
10% over p = 0, the hash computed in the kernels and no mask moved). Run it in a tree without
dropout too (`--p 0` alone: a commit before issue 20) and alternate the two processes in one
sitting to see that p = 0 costs what it did (docs/benchmarks.md):

    for r in 1 2 3; do
      (cd ../before && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python tools/dropout_cost.py --p 0 --tag before)
      env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/dropout_cost.py --p 0 0.2 --tag after
    done
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import lstmbench as lb
from lstmbench.bench.run import time_backend
from lstmbench.bench.workloads import SUITE


def step_ms(backend, work, p: float, repeats: int) -> float:
    """The median of ``repeats`` training steps of ``work`` with dropout ``p`` (after a warm-up)."""
    case = (replace(work, dropout=p) if p else work).case("float32")
    return 1e3 * time_backend(backend, case.cfg, case.x, case.y, repeats, lengths=case.lengths).median_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="c")
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--workloads", nargs="+", default=list(SUITE))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--tag", default="", help="names the tree in the output (before, after)")
    args = parser.parse_args()
    backend = lb.get_backend(args.backend)
    medians = {name: {str(p): step_ms(backend, SUITE[name], p, args.repeats) for p in args.p}
               for name in args.workloads}
    print(json.dumps({"tag": args.tag, "backend": args.backend, "threads": backend.threads,
                      "runtime": backend.runtime_info(), "ms": medians}))


if __name__ == "__main__":
    main()
