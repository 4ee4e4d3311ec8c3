"""tools/cuda_gpu_check.py: its pure pieces (the numba-cuda extra chosen from nvidia-smi's
report, the grids and budgets its docstring promises), and the whole script end to end in
Numba's CUDA simulator (``--simulate``), as on a machine without a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "cuda_gpu_check.py"

# nvidia-smi's header on an H100 with a 12.x driver (trimmed)
SMI_12 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |
"""
SMI_13 = SMI_12.replace("550.54.15 ", "580.65.06 ").replace("CUDA Version: 12.4", "CUDA Version: 13.0")
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
             "latest NVIDIA driver is installed and running.\n")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("cuda_gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("report,extra", [(SMI_12, "cu12"), (SMI_13, "cu13"),
                                          (SMI_12.replace("12.4", "12.9"), "cu12"),
                                          (SMI_12.replace("12.4", "14.1"), "cu13")])
def test_the_extra_follows_the_drivers_cuda_version(tool, report, extra):
    assert tool.cuda_extra(report) == extra


def test_the_cu12_install_leaves_out_the_dev_extras_cu13_runtime(tool):
    assert tool.requirements("cu13")[:2] == ["-e", f"{tool.ROOT}[cuda,dev]"]
    cu12 = tool.requirements("cu12")
    assert "numba-cuda[cu12]>=0.30" in cu12 and not any("dev" in p or "cu13" in p for p in cu12)
    assert any(p.startswith("pytest") for p in cu12)  # what the device tests need from dev


@pytest.mark.parametrize("report", [NO_DRIVER, "", "Failed to initialize NVML: Driver/library version mismatch\n"])
def test_no_driver_is_a_clear_error(tool, report):
    with pytest.raises(tool.SetupError, match="no working driver.*--simulate"):
        tool.cuda_extra(report)


def test_a_driver_older_than_cuda_12_is_refused(tool):
    with pytest.raises(tool.SetupError, match="CUDA 11.8.*update the NVIDIA driver"):
        tool.cuda_extra(SMI_12.replace("12.4", "11.8"))


def test_without_nvidia_smi_it_says_so(tool, tmp_path):
    with pytest.raises(tool.SetupError, match="not found: this machine has no NVIDIA driver.*--simulate"):
        tool.nvidia_smi(str(tmp_path / "nvidia-smi"))


def test_a_failing_nvidia_smi_names_its_message(tool, tmp_path):
    (tmp_path / "says").write_text(NO_DRIVER)
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'says'}\nexit 9\n")
    fake.chmod(0o755)
    with pytest.raises(tool.SetupError, match="couldn't communicate with the NVIDIA driver"):
        tool.nvidia_smi(str(fake))


def test_without_a_driver_the_script_stops_before_installing(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no nvidia-smi on it
    env.pop("LSTMBENCH_GPU_CHECK_INSTALL", None)
    done = subprocess.run([sys.executable, str(TOOL), "--venv", str(tmp_path / "venv"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nvidia-smi not found" in done.stdout and "--simulate" in done.stdout
    assert not (tmp_path / "venv").exists()


def test_a_venv_without_pip_is_filled_by_this_interpreters_pip(tool, tmp_path):
    """Debian's python3 without python3-venv makes venvs without pip: pip --python fills them."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = tool.venv_pip(venv)  # reused, not made again
    assert pip == [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True, check=True)
    assert "pytest" not in {p["name"] for p in json.loads(listed.stdout)}  # it lists the venv's, not ours


def test_the_grids_and_budgets_are_the_documented_ones(tool):
    full, quick, simulate = (tool.MODES[m] for m in ("full", "quick", "simulate"))
    assert len(full.grid) == 8 and len(quick.grid) == 2 and simulate.grid == ((8, 4, 3),)
    assert tool.GOAL_SHAPE in full.grid and tool.GOAL_SHAPE in quick.grid
    assert set(quick.grid) < set(full.grid)
    doc = " ".join(tool.__doc__.split())
    assert f"full grid, {len(full.grid)} shapes" in doc and f"--quick, {len(quick.grid)} shapes" in doc
    assert sum(full.budget_s.values()) <= 360 and sum(quick.budget_s.values()) <= 180
    for mode in (full, quick):
        assert set(mode.budget_s) == set(tool.STAGES)
        assert mode.tests_cap_s == mode.budget_s["tests"]  # the one stage without a FLOP count is capped
    for stage in tool.STAGES:  # the docstring's table: stage, full, --quick
        assert f"{stage} {full.budget_s[stage]} {quick.budget_s[stage]} " in doc, stage
    assert f"total {sum(full.budget_s.values())} {sum(quick.budget_s.values())} " in doc


@pytest.mark.parametrize("mode,selected", [("simulate", 1), ("quick", 4), ("full", -1)])
def test_each_modes_test_selection_names_tests_that_exist(tool, mode, selected):
    """-k matches names in tests/test_cuda_backend.py: a renamed test must not leave a mode with
    none of its tests (full: all but the sm_90 compile test)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "-k",
                           tool.MODES[mode].tests, str(tool.ROOT / "tests" / "test_cuda_backend.py")],
                          capture_output=True, text=True, timeout=300, cwd=tool.ROOT, check=False)
    counts = done.stdout.strip().splitlines()[-1]  # "4/45 tests collected (41 deselected) in 1.02s"
    assert done.returncode == 0 and "tests collected" in counts, done.stdout[-2000:] + done.stderr[-2000:]
    chosen, _, total = counts.split()[0].partition("/")  # "45 tests collected" when none is deselected
    chosen, total = int(chosen), int(total or chosen)
    assert chosen == (total - 1 if selected < 0 else selected), counts


def test_the_goal_without_cudnn_is_not_measured_never_missed(tool):
    def row(label, median, speedup=None, status="ok", detail=""):
        timing = {"median_s": median} if median else None
        return {"label": label, "hidden": 512, "batch": 128, "steps": 64, "timing": timing, "speedup": speedup,
                "status": status, "detail": detail}

    fast = row("cuda", 0.01, speedup=80.0)
    no_cudnn = tool.goal({"rows": [fast, row(tool.CUDNN, None, status="not measured", detail="no torch")]})
    assert no_cudnn["speedup_status"] == "met" and no_cudnn["cudnn_status"] == "not measured"
    assert no_cudnn["status"] == "partly measured" and no_cudnn["cudnn_detail"] == "not measured: no torch"
    assert "missed" not in json.dumps(no_cudnn)
    failed = tool.goal({"rows": [row("cuda", None, status="FAILED", detail="forward output"), row(tool.CUDNN, 0.004)]})
    assert failed["status"] == "not measured" and failed["detail"] == "the backend's row: FAILED: forward output"
    both = tool.goal({"rows": [fast, row(tool.CUDNN, 0.004)]})
    assert both["cudnn_status"] == "missed" and both["status"] == "missed" and both["time_vs_cudnn"] == 2.5
    assert tool.goal(None)["status"] == "not measured"


def test_the_script_runs_end_to_end_in_the_simulator(tmp_path):
    """--simulate, as CI runs it: every stage, the JSON and the table; the cuDNN row is
    "not measured" (no CUDA torch here), never "missed"."""
    env = {k: v for k, v in os.environ.items() if k != "LSTMBENCH_GPU_CHECK_INSTALL"}
    done = subprocess.run([sys.executable, str(TOOL), "--simulate", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env=env, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "cuda_bench.json").read_text())
    assert {"mode", "passed", "install", "machine", "device_tests", "verification", "bench", "goal", "stages",
            "seconds"} <= set(result)
    assert result["mode"] == "simulate" and result["passed"] is True
    assert "--simulate" in result["install"]["skipped"] and result["machine"]["nvidia-smi"].startswith("not run")
    assert result["machine"]["cuda_backend"]["simulator"] is True
    assert result["device_tests"]["passed"] is True
    assert result["verification"] and all(c["status"] == "passed" for c in result["verification"])
    rows = {r["label"]: r for r in result["bench"]["rows"]}
    assert rows["cuda"]["status"] == "ok" and rows["cuda"]["speedup"] > 0
    assert rows["numpy (1 BLAS thread)"]["timing"]["repeats"] == 2
    assert rows["torch.nn.LSTM (cuDNN)"]["status"] == "not measured" and rows["torch.nn.LSTM (cuDNN)"]["detail"]
    assert result["goal"]["cudnn_status"] == "not measured" and "missed" not in json.dumps(result["goal"])
    assert set(result["stages"]) == {"install", "machine", "tests", "verification", "benchmark"}
    assert all(s["seconds"] >= 0 and "error" not in s for s in result["stages"].values())
    assert result["stages"]["benchmark"]["seconds"] > 0
    text = (tmp_path / "cuda_bench.txt").read_text()
    assert " cuda " in text and "not measured" in text and "stages: install" in text
