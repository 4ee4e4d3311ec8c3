"""The C backend's micro-kernel with 32-byte against 64-byte vectors, on this CPU.

    python tools/c_vector_width.py

Builds the extension twice for -march=native (LSTMBENCH_C_NATIVE=1, with
LSTMBENCH_C_VECTOR_BYTES=32 and =64), keeps both binaries, then alternates them
(two rounds) in fresh processes timing one product on one thread and a few training
steps on every thread. Finally rebuilds the portable extension. Takes a few minutes.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "backends" / "c_kernel"

MEASURE = r"""
import sys, time, numpy as np, lstmbench as lb
from lstmbench.bench import SUITE, Workload, time_backend
from lstmbench_backends.c_kernel import matmul
be = lb.load_backend("c"); be._verified = be.source_dir  # a prebuilt binary of these sources, other flags
rng = np.random.default_rng(0)
a = rng.standard_normal((64, 512)).astype(np.float32); b = rng.standard_normal((512, 2048)).astype(np.float32)
matmul(a, b, repeats=5); s = time.perf_counter(); matmul(a, b, repeats=200)
cells = [f"product (64x512)@(512x2048), 1 thread: {2*64*512*2048*200/(time.perf_counter()-s)/1e9:.1f} GFLOP/s"]
for w in (Workload("H=512 B=128 T=64", 512, 128, 64), Workload("H=256 B=1 T=512", 256, 1, 512),
          SUITE["odd-sizes"], SUITE["char-onehot"]):
    cfg = w.model("float32"); x, y = w.data(cfg)
    cells.append(f"{w.name}: {1e3*time_backend(be, cfg, x, y, 5).median_s:.1f} ms")
print(sys.argv[1] + " bytes | " + " | ".join(cells), flush=True)
"""


def build(env_extra: dict) -> None:
    env = {**os.environ, **env_extra}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e",
                    str(ROOT)], check=True, env=env)


def main() -> None:
    so = next(EXT.glob("_lstm_c*.so"))
    with tempfile.TemporaryDirectory() as tmp:
        for width in ("32", "64"):
            build({"LSTMBENCH_C_NATIVE": "1", "LSTMBENCH_C_VECTOR_BYTES": width})
            shutil.copy(so, Path(tmp) / f"{width}.so")
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        try:
            for _ in range(2):
                for width in ("32", "64"):
                    shutil.copy(Path(tmp) / f"{width}.so", so)
                    subprocess.run([sys.executable, "-c", MEASURE, width], check=True, env=env)
        finally:
            build({})  # back to the portable build


if __name__ == "__main__":
    main()
