"""Time from a fresh process to the Numba backend's first float32 and float64 step.

    python tools/numba_start_time.py          # warm: uses the on-disk cache
    python tools/numba_start_time.py --cold   # empties the cache first (compiles everything)
"""

import pathlib
import sys
import time

start = time.perf_counter()
if "--cold" in sys.argv:
    import lstmbench_backends.numba_cpu as package

    cache = pathlib.Path(package.__file__).parent / "__pycache__"
    for path in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
        path.unlink()

import numpy as np  # noqa: E402

import lstmbench as lb  # noqa: E402

backend = lb.get_backend("numba")
for dtype in ("float32", "float64"):
    cfg = lb.ModelConfig(1, 32, 1, 1, "mse", False, dtype)
    params = lb.init_params(cfg, 0)
    x, y = np.zeros((8, 16, 1), dtype), np.zeros((8, 1), dtype)
    state = backend.init_state(cfg, params, lb.OptimizerConfig())
    backend.train_step(state, x, y)
    backend.forward(cfg, params, x)
label = "cold" if "--cold" in sys.argv else "warm"
print(f"{label}: import + first float32 and float64 training step and forward: {time.perf_counter() - start:.1f} s")
