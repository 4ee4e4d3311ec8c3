"""The C backend's two builds, 32-byte against 64-byte vectors, on this CPU.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/c_vector_width.py [--rounds 2]

The install builds the kernel twice (_lstm_c with 32-byte vectors in its matrix
products, _lstm_c_avx512 with 64-byte ones); this alternates them, each round in
fresh processes, timing one product on one thread and a few training steps on
every thread (median of 5 steps). Needs a CPU with AVX-512. The FMA peak of both
vector widths is measured first, in the same run.
"""

import argparse
import subprocess
import sys

MEASURE = r"""
import sys, numpy as np, lstmbench as lb
from lstmbench.bench.run import time_backend
from lstmbench.bench.timing import timed_call
from lstmbench.bench.workloads import SUITE, Workload
from lstmbench_backends.c_kernel import matmul
width = int(sys.argv[1])
be = lb.load_backend("c"); be.vector_bytes = width
rng = np.random.default_rng(0)
a = rng.standard_normal((64, 512)).astype(np.float32); b = rng.standard_normal((512, 2048)).astype(np.float32)
matmul(a, b, repeats=5, vector_bytes=width)
_, s = timed_call(matmul, a, b, repeats=200, vector_bytes=width)
cells = [f"product (64x512)@(512x2048), 1 thread: {2*64*512*2048*200/s/1e9:.1f} GFLOP/s"]
for w in (Workload("H=512 B=128 T=64", 512, 128, 64), Workload("H=256 B=1 T=512", 256, 1, 512),
          *SUITE.values()):
    cfg = w.model("float32"); x, y = w.data(cfg)
    cells.append(f"{w.name}: {1e3*time_backend(be, cfg, x, y, 5).median_s:.2f} ms")
assert be.runtime_info()["vector_bytes"] == width
print(f"{width} bytes, {be.threads} threads | " + " | ".join(cells), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    subprocess.run([sys.executable, "-c", "from lstmbench.bench.peak import fma_peak\n"
                    "for bits in (256, 512): print(fma_peak('float32', 2, bits))"], check=True)
    for _ in range(rounds):
        for width in ("32", "64"):
            subprocess.run([sys.executable, "-c", MEASURE, width], check=True)


if __name__ == "__main__":
    main()
