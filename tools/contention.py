"""Does a second busy process slow this one? The c backend's training step on one
thread, timed in one process alone and in two processes started together (no MPI), in
alternating rounds. On a machine whose cores are really its own, the two agree; on a
shared virtual machine the pair's steps are slower, and a data-parallel run over two
ranks waits for the slower one (docs/distributed.md).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/contention.py [--hidden 128 --batch 64 --rounds 3]

Also: ``--batch 64 128`` alone times the step's growth with the batch (one process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import lstmbench as lb
from lstmbench.bench.timing import time_calls
from lstmbench.bench.workloads import BENCH_OPTIMIZER, bench_batch, bench_model


def child(hidden: int, batch: int, steps: int, repeats: int) -> float:
    """Median ms of one c training step on one thread."""
    cfg = bench_model(hidden, "float32")
    x, y = bench_batch(cfg, batch, steps)
    with lb.get_backend("c").using_threads(1) as backend:
        state = backend.init_state(cfg, lb.init_params(cfg, seed=0), BENCH_OPTIMIZER)
        return 1e3 * time_calls(lambda: backend.train_step(state, x, y), repeats, warmup=3).median_s


def run_children(n: int, args, batch: int) -> list[float]:
    cmd = [sys.executable, __file__, "--child", "--hidden", str(args.hidden), "--batch", str(batch),
           "--steps", str(args.steps), "--repeats", str(args.repeats)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [json.loads(p.communicate()[0]) for p in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[64])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.hidden, args.batch[0], args.steps, args.repeats)))
        return
    print(f"c training step, 1 thread, H={args.hidden}, T={args.steps}, float32, Adam; median ms of "
          f"{args.repeats} steps per process")
    for batch in args.batch:
        for r in range(1, args.rounds + 1):
            alone = run_children(1, args, batch)
            pair = run_children(2, args, batch)
            print(f"B={batch:<4} round {r}: alone {alone[0]:7.2f}   two at once "
                  + "  ".join(f"{v:7.2f}" for v in pair))


if __name__ == "__main__":
    main()
