"""The cuda backend's static cost (tools/cuda_static_cost.py): its kernels compiled for sm_90
without a GPU, float32, H=512, as a training step at B=128, T=64 launches them (issue 21). It
needs the dev extra (numba-cuda with NVVM and nvJitLink, nvdisasm); asv's own environments have
no extras and skip it: run it with asv run --python=same."""

import json
import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "cuda_static_cost.py"


class CudaStaticCost:
    """The worst of the variants the step launches, per kernel family."""

    params = [["lstm_forward", "lstm_backward", "gemm"]]
    param_names = ["kernel"]
    timeout = 600

    def setup_cache(self):
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
        done = subprocess.run([sys.executable, str(TOOL), "--json", "--arch", "sm_90", "--dtype", "float32",
                               "--hidden", "512"], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or ["the tool failed"])[-1]}
        return {"rows": [r for r in json.loads(done.stdout) if r["blocks"] is not None]}

    def setup(self, cache, kernel):
        if "error" in cache:
            raise NotImplementedError(cache["error"])
        self.rows = [r for r in cache["rows"] if r["kernel"].startswith(kernel + "(")]
        if not self.rows:
            raise NotImplementedError(f"the step launches no {kernel}")

    def track_loop_instructions_per_fma(self, cache, kernel):
        return max(r["loop_instructions_per_fma"] for r in self.rows)

    track_loop_instructions_per_fma.unit = "instructions/FMA"

    def track_spill_bytes(self, cache, kernel):
        return max(r["spills"] for r in self.rows)

    track_spill_bytes.unit = "bytes"

    def track_registers(self, cache, kernel):
        return max(r["registers"] for r in self.rows)

    track_registers.unit = "registers"
