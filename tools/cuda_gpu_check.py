"""The CUDA backend on a GPU machine, in one command: install, check, benchmark.

    python3 tools/cuda_gpu_check.py --out cuda-results

1. installs lstmbench from this checkout (``pip install -e '.[cuda]'``, or, with
   no network, ``pip install --no-deps --no-build-isolation -e .`` over the
   packages already there); ``--no-install`` skips this;
2. records the machine: nvidia-smi, the backend's runtime_info(), torch/cuDNN;
3. runs tests/test_cuda_backend.py on the device (NUMBA_ENABLE_CUDASIM=0): the
   conformance kit, launch structure and shapes, errors, the CLI (every test but
   the one that runs this script);
4. checks the backend against the NumPy reference at real sizes (float64 with
   the kit's tight tolerance, and float32);
5. benchmarks a training step, H in {256, 512, 1024} x B in {32, 64, 128} x
   T in {25, 64}, float32, Adam: every configuration verified on the device
   first, medians of synchronised timings after warm-up, against the NumPy
   reference (1 BLAS thread, same run) and torch.nn.LSTM on cuDNN with TF32 off;
6. writes ``OUT/cuda_bench.json`` and ``OUT/cuda_bench.txt`` and prints the goal
   at H=512, B=128, T=64: >= 50x the reference and within 2x of cuDNN.

``--smoke`` runs steps 2-6 at toy sizes, with one test in step 3 (it works in the
simulator too, which is how CI checks that this script runs). Exit status: 0 when every check passed,
1 otherwise (the figures are written either way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIDDEN, BATCH, STEPS = (256, 512, 1024), (32, 64, 128), (25, 64)
GOAL = dict(hidden=512, batch=128, steps=64, min_speedup=50.0, max_vs_cudnn=2.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def install() -> None:
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if subprocess.run([*pip, "-e", f"{ROOT}[cuda]"]).returncode == 0:
        return
    log("installing with dependencies failed (no network?); installing over the packages already here")
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True)


def machine() -> dict:
    import lstmbench as lb

    info = {"python": sys.version.split()[0]}
    try:
        info["nvidia-smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["nvidia-smi"] = "not found"
    backend = lb.load_backend("cuda")
    info["cuda_backend"] = {"available": backend.availability(), **backend.runtime_info()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        info["torch"] = "not installed"
    return info


def device_tests(smoke: bool) -> bool:
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci"}
    env.setdefault("NUMBA_ENABLE_CUDASIM", "0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", str(ROOT / "tests" / "test_cuda_backend.py")]
    # the full run leaves out the test that runs this script (--smoke) again; --smoke itself runs one
    # test, which shows the file runs on this device (CI runs the rest in the simulator)
    cmd += ["-k", "runtime_info_reports_the_device" if smoke else "not gpu_check_script"]
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode == 0


def real_size_checks(smoke: bool) -> list[dict]:
    """forward, loss and gradients, and 3 training steps against the reference."""
    import lstmbench as lb
    from lstmbench.bench.run import verify
    from lstmbench.bench.workloads import bench_batch

    configs = [  # (D, H, O, L, loss, many_to_many, dtype, B, T)
        (84, 256, 84, 2, "xent", True, "float64", 32, 25),
        (1, 512, 1, 1, "mse", False, "float32", 128, 64),
        (12, 1024, 3, 2, "mse", True, "float32", 33, 25),
    ]
    if smoke:
        configs = [(3, 5, 2, 2, "xent", True, "float64", 9, 3), (1, 4, 1, 1, "mse", False, "float32", 3, 4)]
    backend, results = lb.get_backend("cuda"), []
    for D, H, O, L, loss, m2m, dtype, B, T in configs:
        cfg = lb.ModelConfig(D, H, O, L, loss, m2m, dtype)
        x, y = bench_batch(cfg, B, T)
        problem = verify(backend, cfg, x, y, lb.OptimizerConfig("adam", lr=1e-3, clip_norm=1.0), steps=3)
        status = "passed" if problem is None else f"FAILED: {problem}"
        results.append({"config": cfg.to_dict(), "batch": B, "steps": T, "status": status})
        log(f"  {cfg.dtype} H={H} L={L} {loss} {'many-to-many' if m2m else 'many-to-one'} B={B} T={T}: {status}")
    return results


def benchmark(smoke: bool) -> list[dict]:
    from lstmbench.bench.formatting import format_grid
    from lstmbench.bench.run import run_grid

    hidden, batch, steps = ((4,), (3,), (5,)) if smoke else (HIDDEN, BATCH, STEPS)
    reports = []
    for T in steps:
        log(f"  T={T}")
        reports.append(run_grid(["cuda"], hidden, batch, steps=T, repeats=3 if smoke else 5, progress=False,
                                torch_devices=("cuda",)))
        print(format_grid(reports[-1]), flush=True)
    return reports


def goal(reports: list[dict]) -> dict:
    """The issue's speed goal at H=512, B=128, T=64, from the rows of this run."""
    rows = [r for rep in reports for r in rep["rows"] if r["steps"] == GOAL["steps"] and r["hidden"] == GOAL["hidden"]
            and r["batch"] == GOAL["batch"] and r["timing"]]
    by = {r["label"]: r["timing"]["median_s"] for r in rows}
    out = {"point": {k: GOAL[k] for k in ("hidden", "batch", "steps")}}
    if "cuda" not in by:
        return {**out, "status": "not measured"}
    out["speedup_over_reference"] = next(r["speedup"] for r in rows if r["label"] == "cuda")
    if "torch.nn.LSTM (cuDNN)" in by:
        out["time_vs_cudnn"] = by["cuda"] / by["torch.nn.LSTM (cuDNN)"]
    met = out["speedup_over_reference"] >= GOAL["min_speedup"] and out.get("time_vs_cudnn", 1e9) <= GOAL["max_vs_cudnn"]
    return {**out, "status": "met" if met else "missed"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cuda-results", help="folder for cuda_bench.json and cuda_bench.txt")
    parser.add_argument("--no-install", action="store_true", help="use the lstmbench already installed")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: check that this script runs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not args.no_install:
        log("1. installing lstmbench")
        install()
        # a fresh interpreter sees the new install's entry points
        return subprocess.run([sys.executable, __file__, "--no-install", "--out", args.out,
                               *(["--smoke"] if args.smoke else [])]).returncode
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log("2. the machine")
    result = {"machine": machine()}
    print(json.dumps(result["machine"], indent=2), flush=True)
    log("3. tests/test_cuda_backend.py on the device")
    result["device_tests_passed"] = device_tests(args.smoke)
    log("4. real-size checks against the reference")
    result["real_size_checks"] = real_size_checks(args.smoke)
    log("5. benchmark")
    result["bench"] = benchmark(args.smoke)
    result["goal"] = goal(result["bench"])
    result["seconds"] = time.perf_counter() - start
    (out / "cuda_bench.json").write_text(json.dumps(result, indent=2))
    from lstmbench.bench.formatting import format_grid

    (out / "cuda_bench.txt").write_text("\n\n".join(format_grid(r) for r in result["bench"]) + "\n")
    log(f"6. goal at H=512, B=128, T=64: {json.dumps(result['goal'])}")
    log(f"wrote {out / 'cuda_bench.json'} and {out / 'cuda_bench.txt'} in {result['seconds']:.0f} s")
    ok = result["device_tests_passed"] and all(c["status"] == "passed" for c in result["real_size_checks"]) and \
        not any(r["status"] == "FAILED" for rep in result["bench"] for r in rep["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
