"""One training step of a variable-length batch against the same batch at full length, on
each backend that takes lengths (docs/numba-backend.md): D=8, H=256, B=64, T=200, lengths
uniform in [20, 200], many-to-one MSE, float32, Adam; three interleaved rounds.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/varlen_step.py --backends numba
"""

from __future__ import annotations

import argparse

import numpy as np

import lstmbench as lb
from lstmbench.bench.timing import time_calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["numba"])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    cfg = lb.ModelConfig(8, 256, 1, dtype="float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 200, 8)).astype("float32")
    y = rng.standard_normal((64, 1)).astype("float32")
    lengths = rng.integers(20, 201, 64)
    print(f"mean length {lengths.mean() / 200:.2f} T")
    for name in args.backends:
        backend = lb.get_backend(name)
        for rnd in range(args.rounds):
            for what, extra in (("full length", {}), ("lengths", {"lengths": lengths})):
                state = backend.init_state(cfg, lb.init_params(cfg, 0), lb.OptimizerConfig("adam", lr=1e-3))
                timing = time_calls(lambda: backend.train_step(state, x, y, **extra), 9, warmup=2)
                print(f"{name} round {rnd + 1}: {what:<11} {timing.median_s * 1e3:7.1f} ms", flush=True)


if __name__ == "__main__":
    main()
