"""Data-parallel training over MPI: P ranks give the model one process gives, faults end
the whole job, and bad setups are refused by rank 0 with nothing written.

Every multi-rank test runs ``mpiexec`` (MPICH from the ``mpich`` wheel, which the dev
extra installs) from pytest, in its own process group, killed on timeout. They fail,
not skip, when mpiexec or mpi4py is missing. 2 and 3 ranks on a 2-core machine
oversubscribe it, which changes nothing but the speed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lstmbench as lb
import lstmbench.data as lbdata
from lstmbench.training import distributed
from lstmbench.training.checkpoint import load_checkpoint
from lstmbench.cli import main as cli_main
from lstmbench.training.distributed import SINGLE, World, shard

SCRIPT = Path(__file__).parent / "mpi_run.py"
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
# nile, window 5: 65 training examples, batches of 30, 30 and 5 rows (every rank gets rows up to 5 ranks)
TRAIN = ["train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--batch-size", "30", "--dtype", "float64",
         "--quiet"]
TIMEOUT = 120


def mpirun(ranks: int, args: list[str], backend: str = "-", timeout: float = TIMEOUT, env=None, wait=True):
    """``mpiexec -n ranks python tests/mpi_run.py backend args...`` in a new process group."""
    assert MPIEXEC, "mpiexec not found: pip install 'lstmbench[mpi]' (the dev extra has it)"
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, str(SCRIPT), backend, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    return finish(proc, timeout) if wait else proc


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the MPI job did not end within {timeout} s\n{out[-2000:]}\n{err[-2000:]}")
    return proc.returncode, out, err


def single(tmp_path: Path, name: str, *args: str) -> Path:
    """The same training in this process, with no MPI launcher."""
    out = tmp_path / name
    assert cli_main([*TRAIN, *args, "--out", str(out)]) == 0
    return out


def params(out: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(out / "last.npz").params


def relative_gap(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()) for k in a)


# -- the pieces, in one process ---------------------------------------------------------


@pytest.mark.parametrize("rows,size", [(5, 2), (6, 3), (7, 3), (30, 4), (3, 3)])
def test_shards_are_contiguous_and_differ_by_at_most_one_row(rows, size):
    parts = [shard(rows, size, r) for r in range(size)]
    assert parts[0].start == 0 and parts[-1].stop == rows
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_one_process_needs_no_mpi(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.launched() == (1, 0, None)
    assert distributed._connect() is SINGLE and not SINGLE.distributed
    grad = np.array([1.0, -2.0])
    hook = SINGLE.gradient_hook(4, 4, lambda: False)
    assert hook(grad, 0.5) == 0.5 and grad.tolist() == [1.0, -2.0] and hook.stop is False


def test_the_hook_weights_a_shard_by_its_share_of_the_loss_terms():
    """With lengths a rank's mean is over its valid terms: it counts by terms, not rows."""
    grad = np.array([4.0, -8.0])
    hook = World().gradient_hook(3, 12, lambda: False)  # no communicator: the weighting alone
    assert hook(grad, 2.0) == 0.5 and grad.tolist() == [1.0, -2.0]


def test_the_loop_counts_valid_steps_of_many_to_many_rows_and_rows_otherwise():
    from lstmbench.training.loop import count_terms

    lengths = np.array([3, 1, 4, 2])
    m2m, m2o = lb.ModelConfig(1, 2, 1, many_to_many=True), lb.ModelConfig(1, 2, 1)
    assert count_terms(m2m, lengths, np.array([0, 2])) == 7 and count_terms(m2o, lengths, np.array([0, 2])) == 2
    assert count_terms(m2m, None, np.array([0, 2, 3])) == 3


def test_launcher_variables_are_read(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.delenv("PMI_SIZE", raising=False)
    assert distributed.launched() == (4, 3, "OMPI_COMM_WORLD_SIZE")


def test_threads_are_this_ranks_share_of_the_node(monkeypatch):
    monkeypatch.setattr(lb.protocol, "default_threads", lambda: 16)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert distributed.threads_per_rank(World(None, 0, 4, local_size=4)) == 4
    assert distributed.threads_per_rank(World(None, 0, 32, local_size=32)) == 1
    monkeypatch.setattr(lb.protocol, "default_threads", lambda: 2)  # the launcher bound this rank to 2 cores
    assert distributed.threads_per_rank(World(None, 0, 4, local_size=4)) == 2


def run_cli_as(tmp_path: Path, env: dict, code: str = "pass") -> subprocess.CompletedProcess:
    program = f"import sys; {code}; from lstmbench.cli import main; sys.exit(main({TRAIN + ['--out', 'out']!r}))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "SLURM_"))}
    return subprocess.run([sys.executable, "-c", program], env={**clean, **env}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=TIMEOUT)


def test_mpi4py_missing_under_a_launcher_is_named_by_rank_0(tmp_path):
    block = "sys.modules['mpi4py'] = None"  # as if mpi4py were not installed
    root = run_cli_as(tmp_path, {"PMI_SIZE": "2", "PMI_RANK": "0"}, block)
    assert root.returncode == 2
    assert "mpi4py is not installed" in root.stderr and "lstmbench[mpi]" in root.stderr and "PMI_SIZE=2" in root.stderr
    other = run_cli_as(tmp_path, {"PMI_SIZE": "2", "PMI_RANK": "1"}, block)
    assert other.returncode == 2 and other.stderr == ""
    assert not (tmp_path / "out").exists()


def test_an_mpi_that_is_not_mpi4pys_is_named(tmp_path):
    """Open MPI's mpiexec starting processes whose mpi4py uses MPICH: each sees a world of one."""
    done = run_cli_as(tmp_path, {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"})
    assert done.returncode == 2
    assert "sees 1" in done.stderr and "another MPI" in done.stderr and "MPICH" in done.stderr
    assert not (tmp_path / "out").exists()


# -- P ranks and one process ---------------------------------------------------------------


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("backend", ["numpy", "c", "test-plugin-style"])
def test_ranks_train_the_model_one_process_trains(tmp_path, backend, ranks):
    args = ["--backend", backend, "--epochs", "2"]
    if backend == "test-plugin-style":
        lb.register_backend(_plugin_style())
    try:
        alone = single(tmp_path, "alone", *args)
    finally:
        lb.unregister_backend("test-plugin-style")
    code, out, err = mpirun(ranks, [*TRAIN, *args, "--out", str(tmp_path / "ranks")], backend)
    assert code == 0, err[-3000:]
    assert f"{ranks} ranks (data-parallel over MPI)" in err and out.count("wrote ") == 1  # rank 0 alone reports
    assert relative_gap(params(alone), params(tmp_path / "ranks")) <= 1e-12  # float64, rounding of the sums


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_ranks_draw_the_dropout_masks_of_one_process(tmp_path, backend):
    """Dropout masks follow each row's index in the global minibatch (design.md section 9), and
    the plateau schedule hears the same validation loss on every rank: two ranks train the model
    one process trains."""
    args = ["--backend", backend, "--epochs", "3", "--layers", "2", "--dropout", "0.4", "--optimizer", "adamw",
            "--lr-schedule", "plateau", "--plateau-patience", "0"]
    alone = single(tmp_path, "alone", *args)
    code, _, err = mpirun(2, [*TRAIN, *args, "--out", str(tmp_path / "ranks")])
    assert code == 0, err[-3000:]
    assert relative_gap(params(alone), params(tmp_path / "ranks")) <= 1e-12
    without = single(tmp_path, "without", *[a if a != "0.4" else "0" for a in args])
    assert relative_gap(params(alone), params(without)) > 1e-6  # dropout changed the model


def _text(tmp_path: Path, lines: bool) -> Path:
    path = tmp_path / "text.txt"
    text = lbdata.load_text("shakespeare")[:3000]
    path.write_text(text if not lines else "\n".join(w for w in text.split() if w.isalpha()))
    return path


@pytest.mark.parametrize("how", [["--stateful", "--seq-len", "8"], ["--per-line"]], ids=["stateful", "per-line"])
def test_ranks_train_the_model_one_process_trains_with_states_and_lengths(tmp_path, how):
    """Stateful: each rank carries its own streams. Per line: each rank's loss and gradient are
    divided by the global count of valid steps (weighting by rows gives another model)."""
    args = ["train", "--text-file", str(_text(tmp_path, how == ["--per-line"])), *how, "--batch-size", "8",
            "--hidden", "5", "--epochs", "2", "--dtype", "float64", "--backend", "numpy", "--quiet"]
    assert cli_main([*args, "--out", str(tmp_path / "alone")]) == 0
    code, _, err = mpirun(2, [*args, "--out", str(tmp_path / "ranks")])
    assert code == 0, err[-3000:]
    assert relative_gap(params(tmp_path / "alone"), params(tmp_path / "ranks")) <= 1e-12


def _plugin_style():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from mpi_run import PluginStyle
    finally:
        sys.path.pop(0)
    return PluginStyle()


def test_the_same_ranks_give_the_same_bits(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        code, _, err = mpirun(3, [*TRAIN, "--epochs", "2", "--backend", "c", "--out", str(out)])
        assert code == 0, err[-3000:]
    a, b = (params(out) for out in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# -- faults ---------------------------------------------------------------------------------


def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    start = time.monotonic()
    code, _, err = mpirun(2, [*TRAIN, "--epochs", "2", "--backend", "test-fails-on-rank-1", "--out",
                              str(tmp_path / "run")], "test-fails-on-rank-1", timeout=60)
    assert code != 0 and time.monotonic() - start < 60
    assert "rank 1 of 2: error" in err and "planted failure on rank 1" in err


def _start_slow_run(tmp_path: Path, out: Path, epochs: int = 6):
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = mpirun(2, [*TRAIN, "--epochs", str(epochs), "--batch-size", "10", "--backend", "test-slow", "--out",
                      str(out)], "test-slow", env={"LSTMBENCH_PID_DIR": str(pids)}, wait=False)
    deadline = time.monotonic() + 60
    while not (out / "last.npz").exists():  # the first epoch's checkpoint: a good one to keep
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint after the first epoch: {finish(proc)[2][-2000:]}")
        time.sleep(0.05)
    time.sleep(0.3)  # a few steps into the second epoch
    return proc, int((pids / "rank1.pid").read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and a scheduler's stop
def test_a_signal_to_one_rank_stops_every_rank_at_one_step_and_resume_is_exact(tmp_path, sig):
    out = tmp_path / "run"
    proc, rank1 = _start_slow_run(tmp_path, out)
    os.kill(rank1, sig)
    code, _, err = finish(proc, 60)
    assert code == 130, err[-3000:]
    saved = load_checkpoint(out / "last.npz")
    assert saved.meta["progress"]["batch"] > 0  # mid-epoch: the step where all ranks stopped
    args = [*TRAIN, "--epochs", "3", "--batch-size", "10", "--backend", "numpy"]
    code, _, err = mpirun(2, [*args, "--out", str(out), "--resume"])
    assert code == 0, err[-3000:]
    code, _, err = mpirun(2, [*args, "--out", str(tmp_path / "straight")])
    assert code == 0, err[-3000:]
    a, b = params(out), params(tmp_path / "straight")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_survives(tmp_path):
    out = tmp_path / "run"
    proc, rank1 = _start_slow_run(tmp_path, out)
    start = time.monotonic()
    os.kill(rank1, signal.SIGKILL)
    code, _, _ = finish(proc, 60)
    assert code != 0 and time.monotonic() - start < 60
    kept = load_checkpoint(out / "last.npz")  # complete (written atomically), and resumable
    assert kept.opt_state is not None and kept.meta["progress"]["epoch"] >= 1


# -- setups refused by rank 0, with nothing written ---------------------------------------------


def test_more_ranks_than_rows_is_refused(tmp_path):
    code, _, err = mpirun(6, [*TRAIN, "--out", str(tmp_path / "run")])  # the last batch has 5 rows
    assert code == 2 and err.count("error:") == 1
    assert "6 ranks but a minibatch of 5 rows" in err
    assert not (tmp_path / "run").exists()


def test_ranks_started_with_different_arguments_are_refused(tmp_path):
    assert MPIEXEC
    out = str(tmp_path / "run")
    cmd = [MPIEXEC, "-n", "1", sys.executable, str(SCRIPT), "-", *TRAIN, "--out", out, "--seed", "0", ":",
           "-n", "1", sys.executable, str(SCRIPT), "-", *TRAIN, "--out", out, "--seed", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    code, _, err = finish(proc)
    assert code == 2 and err.count("error:") == 1
    assert "rank(s) 1 differ from rank 0 in the run configuration" in err
    assert not (tmp_path / "run").exists()


def test_ranks_whose_models_drift_apart_are_stopped(tmp_path):
    code, _, err = mpirun(2, [*TRAIN, "--backend", "test-drifts-on-rank-1", "--out", str(tmp_path / "run")],
                          "test-drifts-on-rank-1")
    assert code == 2 and "rank(s) 1 differ from rank 0 in the parameters after epoch 1" in err


def test_bench_distributed_reports_strong_and_weak_scaling():
    code, out, err = mpirun(2, ["bench", "--distributed", "--backends", "numpy", "--hidden", "4", "--batch", "4",
                                "--steps", "3", "--batches", "2", "--repeats", "1", "--quiet", "--json"])
    assert code == 0, err[-3000:]
    rows = {(r["mode"], r["ranks"]): r for r in json.loads(out)["rows"]}  # rank 0 alone prints
    assert set(rows) == {("strong", 1), ("weak", 1), ("strong", 2), ("weak", 2)}
    assert rows["strong", 2]["rows_per_rank"] == 2 and rows["strong", 2]["sequences"] == 8
    assert rows["weak", 2]["global_batch"] == 8 and rows["weak", 2]["sequences"] == 16
    assert rows["strong", 2]["speedup"] == pytest.approx(rows["strong", 1]["epoch_s"] / rows["strong", 2]["epoch_s"])
    assert rows["weak", 2]["time_vs_1_rank"] == pytest.approx(rows["weak", 2]["epoch_s"] / rows["weak", 1]["epoch_s"])
    assert all(0 <= r["allreduce_share"] <= 1 for r in rows.values())
