"""Nothing lost, nothing silent (issue 16): one run per output folder, a resume that checks what
it reads and remembers the run's settings, sizes checked before work starts, a backend's outputs
checked, and every failure one `error:` line. Each test failed on the code before that issue."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import lstmbench as lb
from lstmbench import resources
from lstmbench.training import experiment
from lstmbench.training.checkpoint import LOCK_FILE, load_checkpoint, save_checkpoint
from lstmbench.cli import main
from lstmbench_backends.reference import NumpyReference

NILE = ["train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--quiet", "--backend", "numpy"]
SINE = ["--dataset", "sine", "--window", "4", "--quiet", "--backend", "numpy"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lstmbench_process(*argv, **popen):
    return subprocess.Popen([sys.executable, "-m", "lstmbench.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def wait_for_lock(folder, process, seconds=120):
    """Until ``process`` holds the folder's lock (its pid written in the lock file)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lock = folder / LOCK_FILE
        if lock.exists() and f"pid {process.pid} " in lock.read_text():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


# --- one run per output folder ---------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "o"
    first = lstmbench_process("train", *SINE, "--hidden", "4", "--epochs", "300", "--seed", "1", "--overwrite",
                              "--out", out)
    try:
        wait_for_lock(out, first)
        second = lstmbench_process("train", *SINE, "--hidden", "6", "--epochs", "2", "--seed", "2", "--overwrite",
                                   "--out", out)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"is in use by another lstmbench run (pid {first.pid} " in err and "Traceback" not in err
    finally:
        first.send_signal(signal.SIGINT)  # the first run saves its position and stops
        first.communicate(timeout=120)
    assert first.returncode == 130
    last = load_checkpoint(out / "last.npz")
    assert last.model.hidden_size == 4 and last.meta["run"]["seed"] == 1  # nothing of the second run
    assert load_checkpoint(out / "best.npz").meta["run_id"] == last.meta["run_id"]


def test_two_runs_started_together_leave_one_consistent_run(tmp_path):
    out = tmp_path / "o"
    runs = [lstmbench_process("train", *SINE, "--hidden", h, "--epochs", "300", "--seed", s, "--overwrite",
                              "--out", out) for h, s in ((4, 1), (6, 2))]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    assert "in use by another lstmbench run" in next(err for code, err in results if code == 2)
    last, best = load_checkpoint(out / "last.npz"), load_checkpoint(out / "best.npz")
    metrics = json.loads((out / "metrics.json").read_text())
    assert last.meta["run_id"] == best.meta["run_id"] == metrics["run_id"]
    assert last.model == best.model and metrics["model"]["hidden_size"] == last.model.hidden_size


def test_a_killed_run_releases_the_folder_and_its_temporary_files_are_removed(tmp_path, capsys):
    out = tmp_path / "o"
    first = lstmbench_process("train", *SINE, "--hidden", "4", "--epochs", "300", "--out", out)
    wait_for_lock(out, first)
    first.kill()  # kill -9: no handler runs, the kernel drops the lock
    first.communicate()
    stale = out / ".last.npz.abc123.tmp"  # what a kill during atomic_write leaves
    stale.write_bytes(b"x" * 3_000_000)
    code, _, err = run(capsys, "train", *SINE, "--hidden", "4", "--epochs", "1", "--overwrite", "--out", out)
    assert code == 0, err
    assert not stale.exists() and not list(out.glob(".*.tmp"))
    # the kill may also have landed inside a real atomic write, which left its own temporary file
    removed = re.search(r"removed (\d+) temporary file\(s\) \(([\d.]+) MB\) left in", err)
    assert removed and int(removed[1]) >= 1 and float(removed[2]) >= 3.0


def test_the_refusal_of_a_second_run_says_how_to_start_another(tmp_path, capsys):
    out = tmp_path / "latest"
    assert run(capsys, *NILE, "--epochs", "1", "--out", out)[0] == 0
    code, _, err = run(capsys, *NILE, "--epochs", "1", "--out", out)
    assert code == 2
    assert f"{out} already holds a run (1 of 1 epochs done)" in err and f"--out {tmp_path / 'latest-2'}" in err


def test_overwrite_leaves_no_file_of_the_old_run(tmp_path, capsys):
    assert run(capsys, *NILE, "--epochs", "2", "--out", tmp_path)[0] == 0
    old = load_checkpoint(tmp_path / "best.npz").meta["run_id"]
    assert run(capsys, *NILE, "--epochs", "1", "--lr", "1e-9", "--overwrite", "--out", tmp_path)[0] == 0
    assert load_checkpoint(tmp_path / "best.npz").meta["run_id"] != old


# --- a resume that checks what it reads -----------------------------------------------------------


def test_a_best_checkpoint_of_another_run_is_refused_at_resume(tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 2)):
        assert run(capsys, *NILE, "--epochs", "2", "--seed", seed, "--out", tmp_path / name)[0] == 0
    (tmp_path / "a" / "best.npz").write_bytes((tmp_path / "b" / "best.npz").read_bytes())
    code, _, err = run(capsys, "train", "--resume", "--epochs", "3", "--out", tmp_path / "a")
    assert code == 2 and "best.npz belongs to another run" in err


def _series_csv(path, n=80):
    rows = "".join(f"{1900 + i},{np.sin(i / 4):.6f}\n" for i in range(n))
    path.write_text("year,value\n" + rows)
    return path


@pytest.mark.parametrize("change, part", [
    (lambda lines: lines[:-1] + [lines[-1].replace(lines[-1].split(",")[1], "9.5")], "test"),
    (lambda lines: lines[:5] + [lines[5].split(",")[0] + "," + lines[6].split(",")[1],
                                lines[6].split(",")[0] + "," + lines[5].split(",")[1]] + lines[7:], "train"),
], ids=["last row edited", "two rows swapped"])
def test_a_resume_on_changed_data_is_refused_naming_the_part(tmp_path, capsys, change, part):
    csv = _series_csv(tmp_path / "s.csv")
    base = ["train", "--csv", csv, "--window", "5", "--hidden", "4", "--quiet", "--backend", "numpy"]
    assert run(capsys, *base, "--epochs", "1", "--out", tmp_path / "r")[0] == 0
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], *change(lines[1:])]) + "\n")
    code, _, err = run(capsys, "train", "--resume", "--epochs", "2", "--out", tmp_path / "r")
    assert code == 2 and f"the values of the {part} part differ" in err


def test_a_resume_takes_the_run_settings_from_its_checkpoint(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    model = ["--hidden", "6", "--layers", "2", "--dtype", "float64", "--lr", "0.005", "--batch-size", "16", "--seed", "4"]
    assert run(capsys, *NILE, *model, "--epochs", "3", "--out", straight)[0] == 0
    assert run(capsys, *NILE, *model, "--epochs", "1", "--out", resumed)[0] == 0
    code, _, err = run(capsys, "train", "--resume", "--epochs", "3", "--quiet", "--out", resumed)
    assert code == 0, err
    assert f"resuming {resumed}: 1 of 3 epochs done" in err
    a, b = load_checkpoint(straight / "last.npz"), load_checkpoint(resumed / "last.npz")
    assert a.model == b.model and all(a.params[k].tobytes() == b.params[k].tobytes() for k in a.params)


def test_a_resume_refuses_flags_that_contradict_the_run(tmp_path, capsys):
    assert run(capsys, *NILE, "--epochs", "1", "--out", tmp_path)[0] == 0
    code, _, err = run(capsys, "train", "--resume", "--hidden", "8", "--dataset", "sunspots", "--epochs", "2",
                       "--out", tmp_path)
    assert code == 2
    assert "--hidden 8 (the run has 4)" in err and "--dataset sunspots (the run trained on --dataset nile)" in err
    code, _, err = run(capsys, "train", "--resume", "--hidden", "4", "--dataset", "nile", "--epochs", "2", "--quiet",
                       "--out", tmp_path)
    assert code == 0, err  # flags that agree with the run are fine


def test_a_resume_with_nothing_left_to_do_says_so(tmp_path, capsys):
    assert run(capsys, *NILE, "--epochs", "2", "--out", tmp_path)[0] == 0
    code, _, err = run(capsys, "train", "--resume", "--out", tmp_path)
    assert code == 2 and "the run has already done 2 epochs; give a larger --epochs" in err


def test_the_backend_is_recorded_and_a_resume_on_another_one_says_what_changes(tmp_path, capsys):
    assert run(capsys, *NILE, "--epochs", "1", "--out", tmp_path)[0] == 0
    assert load_checkpoint(tmp_path / "last.npz").meta["run"]["backend"] == "numpy"
    code, _, err = run(capsys, "train", "--resume", "--epochs", "2", "--backend", "c", "--threads", "1", "--quiet",
                       "--out", tmp_path)
    assert code == 0, err
    assert "the run so far trained on numpy" in err and "not bit for bit" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["backends"] == ["numpy", "c"] and [h["backend"] for h in metrics["history"]] == ["numpy", "c"]
    code, _, err = run(capsys, "train", "--resume", "--epochs", "3", "--quiet", "--out", tmp_path)
    assert code == 0 and "backend c on 1 thread" not in err  # without --backend: the run's last backend, c


class SlowSigint(NumpyReference):
    """Sends itself Ctrl-C during its ``at``-th training step."""

    name = "test-sigint"

    def __init__(self, at):
        super().__init__()
        self.at, self.steps = at, 0

    def _train_step(self, state, x, y):
        self.steps += 1
        if self.steps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super()._train_step(state, x, y)


def test_the_interrupt_and_the_resume_say_where_the_run_stands(tmp_path, capsys):
    backend = SlowSigint(at=3)
    lb.register_backend(backend)
    try:
        code, _, err = run(capsys, *NILE[:-2], "--backend", backend.name, "--epochs", "2", "--out", tmp_path)
    finally:
        lb.unregister_backend(backend.name)
    assert code == 130
    assert "interrupted at epoch 1, after batch 3 of 3" in err and f"--resume --out {tmp_path}" in err
    code, _, err = run(capsys, "train", "--resume", "--backend", "numpy", "--quiet", "--out", tmp_path)
    assert code == 0 and "0 of 2 epochs done, and 3 batch(es) of epoch 1" in err


# --- flags that do not apply, and odd values ---------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nile", "--seq-len", "10"], "--seq-len does not apply to the nile series"),
    (["--dataset", "anbn", "--window", "10"], "--window does not apply to text"),
    (["--dataset", "nile", "--columns", "volume"], "--columns does not apply to the nile series"),
    (["--dataset", "nile", "--out", ""], "--out: must name a folder"),
])
def test_flags_that_do_not_apply_are_errors(tmp_path, capsys, argv, message):
    argv = argv if "--out" in argv else [*argv, "--out", str(tmp_path)]
    try:
        code, _, err = run(capsys, "train", *argv)
    except SystemExit as exc:  # argparse's own errors
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and message in err


# --- sizes checked before work starts ----------------------------------------------------------


def test_a_billion_layers_is_refused_at_once_with_the_figure(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lstmbench.cli", "train", *NILE[1:], "--layers", "1000000000",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "needs about" in done.stderr and "GB of memory" in done.stderr and "--layers" in done.stderr


def test_a_hidden_size_that_cannot_fit_is_refused_with_the_figure(tmp_path, capsys):
    code, _, err = run(capsys, *NILE, "--hidden", "24000", "--epochs", "1", "--out", tmp_path)
    assert code == 2 and "2,304," in err and "GB of memory" in err  # 2.3e9 parameters
    assert not (tmp_path / "last.npz").exists()


def test_a_text_of_too_many_symbols_is_refused_before_its_one_hot_data(tmp_path, capsys, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text("".join(chr(0x4E00 + i % 6000) for i in range(30_000)), encoding="utf-8")  # 0.7 GB one-hot
    monkeypatch.setattr(resources, "available_memory", lambda: 500_000_000)
    code, _, err = run(capsys, "train", "--text-file", text, "--out", tmp_path / "o")
    assert code == 2 and "the one-hot text data" in err and "distinct symbols" in err and "500 MB available" in err


def test_a_device_is_not_read_as_a_text_file(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--text-file", "/dev/zero", "--out", tmp_path)
    assert code == 2 and "/dev/zero is not a regular file" in err


def test_more_threads_than_cores_are_clamped(tmp_path, capsys):
    code, _, err = run(capsys, *NILE[:-2], "--backend", "c", "--threads", "100000", "--epochs", "1", "--out", tmp_path)
    assert code == 0, err
    cores = lb.default_threads()
    assert f"--threads 100000 is more than the {cores} core(s) this process may use; using {cores}" in err
    with pytest.raises(lb.ConfigError, match="more than 8 per core"):
        lb.get_backend("c").set_threads(100000)


def _checkpoint(tmp_path, capsys):
    assert run(capsys, *NILE, "--epochs", "1", "--out", tmp_path / "run")[0] == 0
    return load_checkpoint(tmp_path / "run" / "best.npz")


def _with_member(source, target, name, data, compress=True):
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.writestr(name, data, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)


def test_a_checkpoint_array_larger_than_its_header_says_is_not_read(tmp_path, capsys):
    _checkpoint(tmp_path, capsys)
    huge = np.lib.format.header_data_from_array_1_0(np.zeros(1)) and b"\0" * 50_000_000  # compresses to ~50 kB
    _with_member(tmp_path / "run" / "best.npz", tmp_path / "big.npz", "opt/m/l0.W_x.npy", huge)
    code, _, err = run(capsys, "predict", tmp_path / "big.npz")
    assert code == 2 and "array 'opt/m/l0.W_x' holds 50000000 bytes" in err


def test_a_checkpoint_too_large_for_memory_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    _checkpoint(tmp_path, capsys)
    monkeypatch.setattr(resources, "available_memory", lambda: 100)
    code, _, err = run(capsys, "predict", tmp_path / "run" / "best.npz")
    assert code == 2 and "error: reading checkpoint" in err and "of memory and this machine has" in err


def test_a_checkpoint_header_of_a_billion_layers_is_refused_at_once(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, capsys)
    header = {"format": "lstmbench-checkpoint", "version": 1, "optimizer": None, "meta": ckpt.meta,
              "model": {**ckpt.model.to_dict(), "num_layers": 10**9}}
    arrays = {f"param/{k}": v for k, v in ckpt.params.items()}
    np.savez(tmp_path / "deep.npz", header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    code, _, err = run(capsys, "predict", tmp_path / "deep.npz")
    assert code == 2 and "holds 5 parameter arrays, a 1000000000-layer model has 3000000002" in err


@pytest.mark.parametrize("window", [None, "missing", "20", 0, 2.5])
def test_a_tampered_meta_is_one_error_line(tmp_path, capsys, window):
    ckpt = _checkpoint(tmp_path, capsys)
    meta = dict(ckpt.meta)
    if window == "missing":
        del meta["window"]
    else:
        meta["window"] = window
    save_checkpoint(tmp_path / "t.npz", ckpt.model, ckpt.params, meta=meta)
    code, out, err = run(capsys, "predict", tmp_path / "t.npz")
    assert code == 2 and "damaged description of its series model: window must be a positive integer" in err
    assert out == "" and "Traceback" not in err


def test_predict_bounds_its_steps(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "x.npz", "--steps", "1000000000"])
    assert info.value.code == 2 and "argument --steps: must be at most 100000" in capsys.readouterr().err


# --- a backend's outputs are checked -------------------------------------------------------


class WrongShape(NumpyReference):
    name = "test-wrong-shape"

    def _forward(self, cfg, params, x):
        return super()._forward(cfg, params, x).reshape(-1)


class NaNOutputs(NumpyReference):
    name = "test-nan-outputs"

    def _forward(self, cfg, params, x):
        return np.full_like(super()._forward(cfg, params, x), np.nan)


class OutOfMemory(NumpyReference):
    name = "test-out-of-memory"

    def _forward(self, cfg, params, x):
        raise MemoryError()


@pytest.fixture
def registered():
    names = []

    def register(backend):
        lb.register_backend(backend)
        names.append(backend.name)
        return backend.name

    yield register
    for name in names:
        lb.unregister_backend(name)


@pytest.mark.parametrize("backend, message", [
    (WrongShape, "returned outputs of shape (2,) from forward; for x of shape (2, 5, 1) the model's outputs have "
                 "shape (2, 1)"),
    (NaNOutputs, "returned 2 NaN or infinite output(s) from forward"),
])
def test_a_backend_with_bad_outputs_stops_train_and_predict(tmp_path, capsys, registered, backend, message):
    name = registered(backend())
    code, _, err = run(capsys, *NILE[:-2], "--backend", name, "--epochs", "1", "--batch-size", "2",
                       "--out", tmp_path / "r")
    assert code == 2 and f"error: backend {name!r} " in err and "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.json").exists()
    _checkpoint(tmp_path, capsys)
    code, out, err = run(capsys, "predict", tmp_path / "run" / "best.npz", "--backend", name, "--json")
    assert code == 2 and f"backend {name!r} returned" in err and out == ""


def test_an_out_of_memory_error_is_one_line(tmp_path, capsys, registered):
    _checkpoint(tmp_path, capsys)
    code, _, err = run(capsys, "predict", tmp_path / "run" / "best.npz", "--backend", registered(OutOfMemory()))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: out of memory")


def test_metrics_json_is_strict_json(tmp_path):
    experiment.write_metrics(tmp_path / "m.json", {"best_val_loss": float("inf"), "history": [{"val": float("nan")}]})
    strict = json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert strict == {"best_val_loss": None, "history": [{"val": None}]}


# --- output that goes away ---------------------------------------------------------------------


class ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_a_closed_pipe_is_one_error_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["backends"]) == 2
    assert capsys.readouterr().err == "error: the output was closed before lstmbench finished writing it " \
                                      "(a pipe into head, say)\n"


def test_a_pipe_closed_by_its_reader_ends_without_a_traceback():
    process = lstmbench_process("backends")
    process.stdout.close()  # before the first line: as `| head -0` would
    err = process.stderr.read()
    assert process.wait(timeout=120) == 2 and "Traceback" not in err and err.startswith("error: the output was closed")
