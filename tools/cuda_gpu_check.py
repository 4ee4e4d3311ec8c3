"""The CUDA backend on a GPU machine, in one command: install, check, benchmark.

    python3 tools/cuda_gpu_check.py --out cuda-results            # 6 minutes by design
    python3 tools/cuda_gpu_check.py --quick --out cuda-results    # 3 minutes by design
    python3 tools/cuda_gpu_check.py --simulate --out sim-results  # no GPU: the simulator

It needs Python 3.10+ with pip and an NVIDIA driver, nothing else. Its stages, each timed
(printed as it ends, against its budget, and kept in cuda_bench.json's "stages"):

1. install: a virtual environment of its own (``--venv``, default build/gpu-check-venv,
   reused when it is there: a system Python may refuse pip, PEP 668) holding lstmbench
   from this checkout and the CUDA runtime for the driver's CUDA version, which
   ``nvidia-smi`` prints ("CUDA Version: 12.8"): 12.x -> ``.[cuda]``, ``numba-cuda[cu12]``
   and pytest (the dev extra pins numba-cuda[cu13], which pip cannot install beside
   [cu12]); 13 or later -> ``.[cuda,dev]`` and ``numba-cuda[cu13]``. Without [cu12]/[cu13]
   numba-cuda has no NVVM, libdevice or runtime. torch joins the same pip install (for the
   cuDNN row; ``--no-torch`` leaves it out); where that fails, the rest installs without it.
   Then the script runs itself again inside that environment, for stages 2-6.
2. machine: nvidia-smi, the backend's runtime_info(), torch's CUDA and cuDNN.
3. tests: tests/test_cuda_backend.py on the device (NUMBA_ENABLE_CUDASIM=0), all but the
   sm_90 compile test (it needs no GPU, and CI runs it); --quick: the kit's float32 forward,
   gradient and training-step checks. They compile the kernels, which Numba caches on
   disk (cache=True), so that stages 4-5 load them.
4. verification: the backend against the NumPy reference at real sizes (float64 with the
   kit's tight tolerance, float32), 3 Adam steps, with the default recurrence (auto: rows or
   stepwise by the cost model) and with the opt-in persistent one (its first check with
   blocks running at once: the simulator runs a cooperative grid of one block).
   Stage 5 times it too, at the goal shape only: the row "cuda persistent (opt-in)", and the
   rows kernels alone ("cuda rows", verified there first), to test the model's choice.
5. benchmark: a float32 training step (many-to-one MSE, D=O=1, Adam) at each shape of the
   grid. The NumPy reference on one BLAS thread is timed ONCE per shape (1 warm-up, 2 timed
   steps), and every speedup at that shape is over that one time; the backend is verified
   against the reference on the shape, then timed (median of 5 steps after 2 warm-ups);
   torch.nn.LSTM on cuDNN with TF32 off likewise, or "not measured" (never "missed") where
   torch has no CUDA.
6. writes OUT/cuda_bench.json and OUT/cuda_bench.txt and prints the goal at H=512, B=128,
   T=64: at least 50x the reference's step and at most 2x cuDNN's (fp32, TF32 off).

The budget, designed, not measured (no GPU has run this yet), for an H100/H200-class GPU
and a 16-core CPU, in seconds:

    stage         full  --quick
    install         90       90   fresh venv: ~3.5 GB of wheels with torch, ~1 GB without
    machine         10       10   imports (torch's is the slow one) and queries
    tests          135       45   a cap: pytest is stopped there and the stage fails
    verification    30       10
    benchmark       95       25
    total          360      180

Install: at 100 MB/s or more, ~35 s to download and ~50 s to unpack; a reused venv ~10 s.
Tests: the one stage whose time is no sum of FLOPs: compiling ~38 kernel variants (a few
seconds or less each) and the kit's Hypothesis examples; hence the cap.
The CPU sets the rest. Write F for a shape's GFLOP per float32 training step, and assume,
conservatively, 40 GFLOP/s for the reference on one core, 200 (float32) and 100 (float64)
on all 16. Per shape the reference runs 3 steps on one core (3/40 = 0.075 s per GFLOP) and,
to verify the backend (forward, loss and gradients, 2 steps: 3.3 steps in float64 and in
float32) and cuDNN (2 steps in each), 5.3 steps in each dtype on all cores
(5.3 x (1/200 + 1/100) = 0.08 s per GFLOP): 0.155 s per GFLOP of the grid.
* full grid, 8 shapes: H in {256, 512, 1024} x B in {32, 128} at T=64, and H=512 with
  B=64 at T=64 and B=128 at T=25: 386 GFLOP -> 60 s; the GPU's ~20 steps per shape
  (verify, warm-up, 5 timed, backend and cuDNN) at 50 ms or less: 8 s; the CPU's ceilings
  (FMA peak, BLAS rate): 4 s; "cuda rows" at the goal shape, verified and timed there
  (about 55 GFLOP of verification at 0.08 s per GFLOP): 5 s. 77 s of 95.
* --quick, 2 shapes: H=512 B=128 T=64 and H=256 B=32 T=64: 55 GFLOP -> 9 s, + 2 s + 4 s:
  15 s of 25.
* verification: float64 2 x 256 (4.2 GFLOP) and float32 2 x 1024, B=33 (63 GFLOP), each
  4.3 steps in float64 and in its own dtype: 0.4 + 4.1 s, 5 s of 30 (plus compiling any
  kernel variant the tests did not); --quick, float32 2 x 512 (16 GFLOP): 1 s of 10.
(The old grid, 18 shapes and 707 GFLOP, timed the reference for 7 steps on one core and 7
on all cores per shape: 707 x (7/40 + 7/200 + 0.08) = 205 s of its 8 minutes, tests aside.)

--simulate runs the same stages in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) on a
tiny grid (one shape, H=8, B=4, T=3) with one test, in the current interpreter: no venv, no
install, no nvidia-smi. That is how CI checks this script. --no-install runs stages 2-6 on
the GPU in the current interpreter (a machine without a network, its environment ready).

Exit status: 0 when every check passed (tests, verification, every backend row verified),
1 otherwise (the figures are written either way), 2 when no driver or install stopped it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / "build" / "gpu-check-venv"  # build/ is git-ignored
# set by the outer run for the one it starts in the venv: the install stage's record (JSON)
INSTALL_RECORD_ENV = "LSTMBENCH_GPU_CHECK_INSTALL"

GOAL_SHAPE = (512, 128, 64)  # (H, B, T)
MIN_SPEEDUP, MAX_VS_CUDNN = 50.0, 2.0
CUDNN = "torch.nn.LSTM (cuDNN)"  # the torch peer's label on a GPU
PERSISTENT = "cuda persistent (opt-in)"  # the backend's row with the persistent recurrence
ROWS = "cuda rows"  # the backend's row with the rows kernels alone (the default is auto)
REFERENCE_WARMUP, REFERENCE_STEPS = 1, 2  # the reference's untimed and timed steps, once per shape
STAGES = ("install", "machine", "tests", "verification", "benchmark")


class Mode(NamedTuple):
    """What one kind of run checks and times, and its budget."""

    grid: tuple  # (H, B, T) shapes benchmarked
    verify: tuple  # (D, H, O, L, loss, many_to_many, dtype, B, T) checked at real size
    tests: str  # pytest -k selection of tests/test_cuda_backend.py
    tests_cap_s: int  # pytest is stopped after this
    repeats: int  # timed steps of the backend and of cuDNN, after 2 warm-ups
    budget_s: dict  # per stage


FULL_GRID = ((256, 32, 64), (256, 128, 64), (512, 32, 64), (512, 64, 64), (512, 128, 64), (512, 128, 25),
             (1024, 32, 64), (1024, 128, 64))
QUICK_GRID = ((256, 32, 64), (512, 128, 64))
MODES = {
    "full": Mode(FULL_GRID,
                 ((84, 256, 84, 2, "xent", True, "float64", 32, 25), (12, 1024, 3, 2, "mse", True, "float32", 33, 25)),
                 "not kernels_compile_for_a_gpu", 135, 5,
                 {"install": 90, "machine": 10, "tests": 135, "verification": 30, "benchmark": 95}),
    "quick": Mode(QUICK_GRID, ((12, 512, 3, 2, "mse", True, "float32", 33, 25),),
                  "runtime_info_reports_the_device or (conformance_kit and float32 and "
                  "(forward or loss_and_grads or training_steps))", 45, 5,
                  {"install": 90, "machine": 10, "tests": 45, "verification": 10, "benchmark": 25}),
    # the simulator: about a second per training step of a tiny model; the cap leaves room for a busy CI
    "simulate": Mode(((8, 4, 3),), ((3, 4, 2, 2, "xent", True, "float64", 4, 3),),
                     "runtime_info_reports_the_device", 300, 1,
                     {"install": 0, "machine": 15, "tests": 30, "verification": 30, "benchmark": 30}),
}


class SetupError(Exception):
    """No driver to run on, or the install failed: nothing to check."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- 1. install ----------------------------------------------------------------------------


def nvidia_smi(executable: str = "nvidia-smi") -> str:
    """nvidia-smi's report (its header names the driver's CUDA version); a SetupError without one."""
    try:
        done = subprocess.run([executable], capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SetupError(f"{executable} not found: this machine has no NVIDIA driver. Install one, or run "
                         "with --simulate (the CUDA simulator, no GPU)") from None
    if done.returncode != 0:
        raise SetupError(no_driver_message(done.stdout + done.stderr))
    return done.stdout


def no_driver_message(output: str) -> str:
    first = next((line.strip() for line in output.splitlines() if line.strip()), "no output")
    return (f"nvidia-smi found no working driver ({first}). Install or load the NVIDIA driver, or run with "
            "--simulate (the CUDA simulator, no GPU)")


def cuda_extra(smi_output: str) -> str:
    """"cu12" or "cu13": numba-cuda's extra whose runtime this driver runs, from nvidia-smi's
    "CUDA Version: X.Y" (the newest CUDA the driver supports); a SetupError where it has none."""
    found = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", smi_output)
    if not found:
        raise SetupError(no_driver_message(smi_output))
    major = int(found.group(1))
    if major < 12:
        raise SetupError(f"the driver supports CUDA {found.group(1)}.{found.group(2)}; numba-cuda's runtimes "
                         "need 12 or later: update the NVIDIA driver")
    return "cu12" if major == 12 else "cu13"


def requirements(extra: str) -> list[str]:
    """pip's arguments for lstmbench, its tests' needs and the runtime of ``extra``."""
    if extra == "cu13":
        return ["-e", f"{ROOT}[cuda,dev]", "numba-cuda[cu13]>=0.30"]
    # the dev extra pins numba-cuda[cu13] (cuda-bindings 13), which conflicts with [cu12]
    # (cuda-bindings 12): the cuda extra, the cu12 runtime, and pytest, all the device tests need
    return ["-e", f"{ROOT}[cuda]", "numba-cuda[cu12]>=0.30", "pytest>=8"]


def venv_pip(venv: Path) -> list[str]:
    """The pip command that installs into ``venv``, creating the venv unless it is there."""
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"  creating {venv}")
        if subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False).returncode != 0:
            # Debian's python3 without python3-venv has no ensurepip: a venv without pip, filled
            # by this interpreter's pip through --python (pip 22.3+)
            subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
    if subprocess.run([str(python), "-c", "import pip"], capture_output=True, check=False).returncode == 0:
        return [str(python), "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", str(python)]


def install(venv: Path, extra: str, with_torch: bool, torch_index: str | None) -> dict:
    """lstmbench and the runtime for ``extra`` in ``venv``, with torch if asked and if it
    installs; what was installed."""
    pip = [*venv_pip(venv), "install", "-q", "--disable-pip-version-check"]
    packages = requirements(extra)
    record = {"venv": str(venv), "cuda_extra": extra, "packages": packages, "torch": "not asked for (--no-torch)"}
    if with_torch:
        index = ["--extra-index-url", torch_index] if torch_index else []
        log(f"  pip install {' '.join(packages)} torch (a fresh venv: about 3.5 GB)")
        # one resolution, so that torch's CUDA libraries and numba-cuda's agree
        if subprocess.run([*pip, *index, *packages, "torch"], check=False).returncode == 0:
            return {**record, "torch": "installed"}
        log("  that failed; installing without torch (the cuDNN row will read 'not measured')")
        record["torch"] = "its install failed"
    else:
        log(f"  pip install {' '.join(packages)}")
    if subprocess.run([*pip, *packages], check=False).returncode != 0:
        raise SetupError(f"pip could not install {' '.join(packages)} into {venv} (see pip's message above)")
    return record


def install_and_rerun(args: argparse.Namespace, argv: list[str]) -> int:
    """Stage 1, then stages 2-6 in the venv's interpreter (which has the new install)."""
    log("1. install")
    start = time.perf_counter()
    try:
        extra = cuda_extra(nvidia_smi())
        log(f"  the driver's CUDA version -> numba-cuda[{extra}]")
        record = install(Path(args.venv).resolve(), extra, args.torch, args.torch_index_url)
    except (SetupError, OSError, subprocess.CalledProcessError) as exc:  # no venv is an OSError or a failed venv
        log(f"error: {exc}")
        return 2
    record["seconds"] = time.perf_counter() - start
    log(f"  install: {record['seconds']:.1f} s (budget {mode_of(args).budget_s['install']} s)")
    python = Path(record["venv"]) / "bin" / "python"
    env = {**os.environ, INSTALL_RECORD_ENV: json.dumps(record)}
    return subprocess.run([str(python), str(Path(__file__).resolve()), *argv], env=env, check=False).returncode


# -- 2-5: the stages run inside the environment ----------------------------------------------


class Stages:
    """Runs each stage, timing it against its budget; a stage that raises is recorded and the
    others still run, so that the figures are written either way."""

    def __init__(self, budget_s: dict) -> None:
        self.budget_s = budget_s
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    def run(self, name: str, title: str, fn, *args):
        log(title)
        start = time.perf_counter()
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - recorded, printed, and the run fails
            traceback.print_exc()
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            self.record(name, time.perf_counter() - start)

    def record(self, name: str, seconds: float, say: bool = True) -> None:
        self.seconds[name] = seconds
        budget = self.budget_s[name]
        if say:
            log(f"  {name}: {seconds:.1f} s (budget {budget} s){'  OVER BUDGET' if seconds > budget else ''}")

    def to_dict(self) -> dict:
        return {name: {"seconds": round(self.seconds.get(name, 0.0), 2), "budget_s": self.budget_s[name],
                       **({"error": self.errors[name]} if name in self.errors else {})} for name in STAGES}


def gpu_listing() -> dict:
    """The GPUs and the driver, as nvidia-smi reports them (or why it could not)."""
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]
        gpus = subprocess.run(query, capture_output=True, text=True, timeout=60, check=True).stdout
        cuda = re.search(r"CUDA Version\s*:\s*([\d.]+)", nvidia_smi())
    except (OSError, subprocess.SubprocessError, SetupError) as exc:
        return {"error": str(exc)}
    return {"gpus": gpus.strip().splitlines(), "driver_cuda_version": cuda.group(1) if cuda else "unknown"}


def torch_cuda(simulate: bool) -> tuple[dict, str | None]:
    """torch's versions, and why its cuDNN row cannot be measured here (None when it can)."""
    try:
        import torch
    except ImportError:
        return {"torch": "not installed"}, "torch is not installed (--no-torch, or its install failed)"
    info = {"torch": torch.__version__, "built_for_cuda": torch.version.cuda}
    if simulate:
        return info, "the backend runs in the simulator (--simulate): no GPU time to compare cuDNN's with"
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return info, f"torch {torch.__version__} is a build without CUDA"
        return info, (f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no GPU: a driver "
                      "older than that CUDA? (--torch-index-url: a torch build for the driver's CUDA)")
    return {**info, "cudnn": torch.backends.cudnn.version(), "device": torch.cuda.get_device_name()}, None


def machine(simulate: bool) -> dict:
    import lstmbench as lb

    info = {"python": sys.version.split()[0], "executable": sys.executable}
    info["nvidia-smi"] = "not run (--simulate)" if simulate else gpu_listing()
    backend = lb.load_backend("cuda")
    ok, why = backend.availability()
    info["cuda_backend"] = {"available": ok, "reason": why, **backend.runtime_info()}
    info["torch"], info["cudnn_not_measured"] = torch_cuda(simulate)
    print(json.dumps(info, indent=2), flush=True)
    return info


def device_tests(mode: Mode) -> dict:
    """tests/test_cuda_backend.py, the mode's selection, on this device (or in the simulator)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", str(ROOT / "tests" / "test_cuda_backend.py"), "-k", mode.tests]
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci"}
    result = {"selection": mode.tests, "cap_s": mode.tests_cap_s}
    try:
        done = subprocess.run(cmd, env=env, cwd=ROOT, timeout=mode.tests_cap_s, check=False)
    except subprocess.TimeoutExpired:
        log(f"  stopped at its {mode.tests_cap_s} s cap")
        return {**result, "passed": False, "detail": f"stopped at the {mode.tests_cap_s} s cap"}
    return {**result, "passed": done.returncode == 0, "returncode": done.returncode}


def recurrences() -> list[tuple[str, object]]:
    """The backend with each recurrence: the default ("auto": rows or stepwise per sweep, by the
    cost model), the opt-in persistent one, which this run is the first to check with blocks
    running at once (docs/cuda-backend.md), and the rows kernels alone, whose time at the goal
    shape against the default's tests the model's choice."""
    from lstmbench_backends.numba_cuda import NumbaCuda

    return [("cuda", NumbaCuda()), (PERSISTENT, NumbaCuda("persistent")), (ROWS, NumbaCuda("rows"))]


def verification(mode: Mode) -> list[dict]:
    """Forward, loss and gradients, and 3 training steps against the reference at real sizes,
    with each recurrence."""
    import lstmbench as lb
    from lstmbench.bench.run import verify
    from lstmbench.bench.workloads import bench_batch

    results = []
    for label, backend in recurrences()[:2]:  # rows: verified where auto picks it, and before its timed row
        for D, H, O, L, loss, m2m, dtype, B, T in mode.verify:
            cfg = lb.ModelConfig(D, H, O, L, loss, m2m, dtype)
            x, y = bench_batch(cfg, B, T)
            try:
                problem = verify(backend, cfg, x, y, lb.OptimizerConfig("adam", lr=1e-3, clip_norm=1.0), steps=3)
            except Exception as exc:  # noqa: BLE001 - a device error fails this check; the others still run
                problem = f"{type(exc).__name__}: {exc}"
            status = "passed" if problem is None else f"FAILED: {problem}"
            results.append({"recurrence": label, "config": cfg.to_dict(), "batch": B, "steps": T, "status": status})
            log(f"  {label}: {dtype} {L} x {H} {loss} {'many-to-many' if m2m else 'many-to-one'} B={B} T={T}: "
                f"{status}")
    return results


# -- 5. the benchmark ----------------------------------------------------------------------


def shape_rows(case, peer, no_peer: str | None, repeats: int, threads: int) -> list:
    """The reference's row (timed once), the backend's and cuDNN's, at one shape."""
    from lstmbench.bench.rows import make_row
    from lstmbench.bench.run import REFERENCE_ONE_THREAD, time_backend, verify
    from lstmbench.bench.timing import time_calls
    from lstmbench.bench.workloads import BENCH_OPTIMIZER
    from lstmbench.params import init_params
    from lstmbench.registry import REFERENCE, get_backend

    ref = get_backend(REFERENCE)
    with ref.using_threads(1):
        state = ref.init_state(case.cfg, init_params(case.cfg, seed=0), BENCH_OPTIMIZER)
        timing = time_calls(lambda: ref.train_step(state, case.x, case.y), REFERENCE_STEPS, REFERENCE_WARMUP)
        rows = [make_row(REFERENCE_ONE_THREAD, REFERENCE, case, 1, timing, ref.runtime_info())]
    goal_shape = (case.cfg.hidden_size, *case.x.shape[:2]) == GOAL_SHAPE
    for label, cuda in recurrences()[: 3 if goal_shape else 1]:  # persistent and rows at the goal shape only
        try:
            problem = verify(cuda, case.cfg, case.x, case.y)
            timing = time_backend(cuda, case.cfg, case.x, case.y, repeats) if problem is None else None
        except Exception as exc:  # noqa: BLE001 - a device error fails this row; the other shapes still run
            problem, timing = f"{type(exc).__name__}: {exc}", None
        rows.append(make_row(label, "cuda", case, threads, timing, cuda.runtime_info() if timing else {},
                             "FAILED" if problem else "ok", problem or ""))
    rows.append(peer(case, repeats) if peer else make_row(CUDNN, "torch-cuda", case, 1, None, {}, "not measured",
                                                          no_peer or "torch cannot run on this GPU"))
    return rows


def speedups(rows: list, fma: dict | None) -> None:
    """Each timed row's speedup over the shape's one reference time, the reference's percent
    of one core's FMA peak, and whether a timing is to be trusted."""
    from lstmbench.bench.rows import unstable_reason
    from lstmbench.bench.run import REFERENCE_ONE_THREAD

    base = {r.workload: r.timing.median_s for r in rows if r.label == REFERENCE_ONE_THREAD}
    for row in rows:
        if row.timing is None:
            continue
        row.speedup = base[row.workload] / row.timing.median_s
        if fma and row.label == REFERENCE_ONE_THREAD:
            row.pct_peak = 100 * row.gflops / fma["per_core_gflops"]
        row.unstable = unstable_reason(row)


def benchmark(mode: Mode, no_peer: str | None) -> dict:
    """The grid's rows as a `lstmbench bench` grid report (format_grid prints it)."""
    from lstmbench.bench.machine import (
        OtherLoad,
        load_average,
        machine_info,
        measure_ceilings,
    )
    from lstmbench.bench.peers import torch_peer
    from lstmbench.bench.workloads import BENCH_OPTIMIZER, Workload
    from lstmbench.protocol import default_threads

    threads = default_threads()
    works = [Workload(f"H={H} B={B} T={T}", H, B, T) for H, B, T in mode.grid]
    peer = None if no_peer else torch_peer("cuda")
    load_before, rows = load_average(), []
    with OtherLoad() as others:
        for work in works:
            log(f"  {work.describe}")
            rows += shape_rows(work.case("float32"), peer, no_peer, mode.repeats, threads)
    ceilings = measure_ceilings("float32", threads)  # last: it runs every core flat out
    speedups(rows, ceilings["fma_peak"])
    return {"kind": "grid", "machine": machine_info(), "load_average": [load_before, load_average()],
            "others_cores": others.cores, "dtype": "float32", "threads": threads, "threads_mode": "fixed",
            **ceilings, "optimizer": BENCH_OPTIMIZER.to_dict(), "unavailable": {},
            "reference_steps": {"warmup": REFERENCE_WARMUP, "timed": REFERENCE_STEPS}, "repeats": mode.repeats,
            "workloads": [asdict(w) | {"describe": w.describe} for w in works], "rows": [asdict(r) for r in rows]}


def goal(report: dict | None) -> dict:
    """The issue's goal at H=512, B=128, T=64 from this run's rows: each part met, missed, or
    not measured (no such row, or no cuDNN)."""
    rows = {r["label"]: r for r in (report or {}).get("rows", [])
            if (r["hidden"], r["batch"], r["steps"]) == GOAL_SHAPE}
    out = {"point": dict(zip(("hidden", "batch", "steps"), GOAL_SHAPE)), "min_speedup": MIN_SPEEDUP,
           "max_time_vs_cudnn": MAX_VS_CUDNN, "speedup_status": "not measured", "cudnn_status": "not measured"}
    cuda, cudnn = rows.get("cuda"), rows.get(CUDNN)
    if not rows:
        out["detail"] = "the benchmark stage failed" if report is None else "this run's grid has no such shape"
    elif not (cuda and cuda["timing"]):
        out["detail"] = f"the backend's row: {cuda['status']}: {cuda['detail']}" if cuda else "no backend row"
    else:
        out["speedup_over_reference"] = cuda["speedup"]
        out["speedup_status"] = "met" if cuda["speedup"] >= MIN_SPEEDUP else "missed"
        if cudnn and cudnn["timing"]:
            out["time_vs_cudnn"] = cuda["timing"]["median_s"] / cudnn["timing"]["median_s"]
            out["cudnn_status"] = "met" if out["time_vs_cudnn"] <= MAX_VS_CUDNN else "missed"
        else:
            out["cudnn_detail"] = f"{cudnn['status']}: {cudnn['detail']}" if cudnn else "no cuDNN row"
    parts = {out["speedup_status"], out["cudnn_status"]}
    out["status"] = "missed" if "missed" in parts else "met" if parts == {"met"} else \
        "not measured" if parts == {"not measured"} else "partly measured"
    return out


def goal_lines(g: dict) -> list[str]:
    speed = f"{g['speedup_over_reference']:.1f}x, " if "speedup_over_reference" in g else ""
    vs = f"{g['time_vs_cudnn']:.2f}x, " if "time_vs_cudnn" in g else ""
    why = f" ({g['cudnn_detail']})" if "cudnn_detail" in g else ""
    detail = f" ({g['detail']})" if "detail" in g else ""
    return [f"goal at H={GOAL_SHAPE[0]}, B={GOAL_SHAPE[1]}, T={GOAL_SHAPE[2]}: {g['status']}{detail}",
            (f"  speedup over the NumPy reference (1 BLAS thread): {speed}{g['speedup_status']} "
             f"(goal >= {MIN_SPEEDUP:g}x)"),
            f"  step time / cuDNN fp32 (TF32 off): {vs}{g['cudnn_status']} (goal <= {MAX_VS_CUDNN:g}x){why}"]


# -- the run ---------------------------------------------------------------------------------


def check(args: argparse.Namespace, mode: Mode, install_record: dict) -> int:
    """Stages 2-6 in this interpreter; writes OUT/cuda_bench.json and .txt; 0 when all passed."""
    from lstmbench.bench.formatting import format_grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(mode.budget_s)
    stages.record("install", install_record.get("seconds", 0.0), say=False)  # the outer run said it
    info = stages.run("machine", "2. the machine", machine, args.simulate) or {}
    tests = stages.run("tests", "3. tests/test_cuda_backend.py on the device", device_tests, mode) or {}
    checks = stages.run("verification", "4. real-size checks against the reference", verification, mode) or []
    no_peer = info.get("cudnn_not_measured", "the machine stage failed")
    report = stages.run("benchmark", "5. benchmark", benchmark, mode, no_peer)
    rows = (report or {}).get("rows", [])
    passed = (tests.get("passed") is True and bool(checks) and all(c["status"] == "passed" for c in checks)
              and report is not None and not stages.errors
              and all(r["status"] == "ok" for r in rows if r["backend"] == "cuda")
              and not any(r["status"] == "FAILED" for r in rows))
    result = {"mode": "simulate" if args.simulate else "quick" if args.quick else "full", "passed": passed,
              "install": install_record, "machine": info, "device_tests": tests, "verification": checks,
              "bench": report, "goal": goal(report), "stages": stages.to_dict(),
              "seconds": round(sum(stages.seconds.values()), 2)}
    table = format_grid(report) if report else f"benchmark failed: {stages.errors.get('benchmark')}"
    times = "stages: " + ", ".join(f"{n} {s['seconds']:.0f} s of {s['budget_s']}" for n, s in result["stages"].items())
    (out / "cuda_bench.json").write_text(json.dumps(result, indent=2))
    (out / "cuda_bench.txt").write_text("\n".join([table, "", *goal_lines(result["goal"]), times]) + "\n")
    if report:
        print(table, flush=True)
    for line in ["6. " + goal_lines(result["goal"])[0], *goal_lines(result["goal"])[1:], times]:
        log(line)
    log(f"{'all checks passed' if passed else 'CHECKS FAILED'}; wrote {out / 'cuda_bench.json'} and "
        f"{out / 'cuda_bench.txt'} ({result['seconds']:.0f} s in all)")
    return 0 if passed else 1


def mode_of(args: argparse.Namespace) -> Mode:
    return MODES["simulate" if args.simulate else "quick" if args.quick else "full"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="The module docstring has the stages and the time budget.")
    parser.add_argument("--out", default="cuda-results", help="folder for cuda_bench.json and cuda_bench.txt")
    parser.add_argument("--quick", action="store_true",
                        help="two shapes (the goal's and a small one), fewer tests: 3 minutes by design")
    parser.add_argument("--simulate", action="store_true",
                        help="no GPU: the same stages in Numba's CUDA simulator on a tiny grid, in the current "
                             "interpreter (no venv, no install, no nvidia-smi); CI runs this")
    parser.add_argument("--no-install", action="store_true",
                        help="on the GPU, in the current interpreter with what it has installed (no venv, no pip)")
    parser.add_argument("--venv", default=str(DEFAULT_VENV), help="the virtual environment to create or reuse")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                        help="install torch for the cuDNN row (default; where it fails, the row reads 'not measured')")
    parser.add_argument("--torch-index-url", help="an extra pip index for torch, e.g. PyTorch's own index of "
                                                  "builds for the driver's CUDA version")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # before numba is first imported (lstmbench imports it): the simulator, or the real device
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if args.simulate else "0"
    recorded = os.environ.get(INSTALL_RECORD_ENV)
    if recorded:
        return check(args, mode_of(args), json.loads(recorded))
    if args.simulate or args.no_install:
        why = "--simulate" if args.simulate else "--no-install"
        return check(args, mode_of(args), {"seconds": 0.0, "skipped": f"{why}: this interpreter, {sys.executable}"})
    return install_and_rerun(args, argv)


if __name__ == "__main__":
    sys.exit(main())
