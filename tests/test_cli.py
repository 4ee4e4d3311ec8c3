"""The `lstmbench` command end to end, in-process (fast) through cli.main."""

import errno
import json

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.training import checkpoint as checkpoint_module
from lstmbench.training.checkpoint import LOCK_FILE, load_checkpoint
from lstmbench.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_backends_lists_numpy_available(capsys):
    code, out, _ = run(capsys, "backends", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["numpy"]["available"] is True
    assert "float64" in rows["numpy"]["dtypes"]


def test_train_sunspots_beats_naive_and_writes_outputs(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--dataset", "sunspots", "--backend", "numpy", "--epochs", "20",
                         "--out", str(out_dir), "--quiet")
    assert code == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())
    val = [h["val_loss"] for h in metrics["history"]]
    assert len(val) == 20 and min(val[-5:]) < val[0] / 2  # validation loss falls
    assert metrics["test"]["test_rmse"] < metrics["test"]["naive_rmse"]
    assert "beats the naive forecast" in out
    assert (out_dir / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(out_dir / "best.npz")
    assert best.meta["task"] == "series" and best.model.hidden_size == 32

    code, out, _ = run(capsys, "predict", str(out_dir / "best.npz"), "--steps", "3", "--json")
    assert code == 0
    forecast = json.loads(out)["forecast"]
    assert len(forecast) == 3 and all(np.isfinite(forecast))


def test_existing_run_is_not_overwritten_without_flag(tmp_path, capsys):
    args = ["train", "--dataset", "nile", "--epochs", "1", "--window", "5", "--out", str(tmp_path), "--quiet"]
    assert run(capsys, *args)[0] == 0
    before = (tmp_path / "last.npz").read_bytes()
    code, _, err = run(capsys, *args)
    assert code == 2 and "--resume" in err
    assert (tmp_path / "last.npz").read_bytes() == before


def test_resume_continues_the_run(tmp_path, capsys):
    base = ["train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--quiet", "--dtype", "float64"]
    assert run(capsys, *base, "--epochs", "4", "--out", str(tmp_path / "a"))[0] == 0
    assert run(capsys, *base, "--epochs", "2", "--out", str(tmp_path / "b"))[0] == 0
    assert run(capsys, *base, "--epochs", "4", "--out", str(tmp_path / "b"), "--resume")[0] == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.npz"), load_checkpoint(tmp_path / "b" / "last.npz")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_dropout_weight_decay_and_a_schedule_train_record_and_resume(tmp_path, capsys):
    base = ["train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--layers", "2", "--quiet", "--dtype",
            "float64", "--dropout", "0.25", "--optimizer", "adamw", "--lr-schedule", "cosine", "--warmup-steps", "3",
            "--backend", "numpy"]
    code, _, err = run(capsys, *base, "--epochs", "4", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "optimizer adamw, lr 0.01 (cosine to 0 after a 3-step linear warm-up), weight decay 0.01 (decoupled), " \
           "dropout 0.25" in err
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    rates = [h["lr"] for h in metrics["history"]]
    assert rates[0] < 0.01 and rates[1:] == sorted(rates[1:], reverse=True)  # warm-up, then the cosine decay
    assert rates[-1] < 0.1 * max(rates)
    assert metrics["schedule"]["kind"] == "cosine" and metrics["model"]["dropout"] == 0.25
    assert metrics["optimizer"]["weight_decay"] == 0.01
    assert f"lr {rates[0]:.3g}" in err
    code, _, err = run(capsys, "train", "--resume", "--lr-schedule", "step", "--out", str(tmp_path / "a"))
    assert code == 2 and "--lr-schedule step (the run has cosine)" in err
    code, _, err = run(capsys, "train", "--resume", "--epochs", "6", "--out", str(tmp_path / "a"))
    assert code == 2 and "cosine schedule decays over" in err


def test_text_training_and_sampling(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abcabcabd " * 60)
    code, out, err = run(capsys, "train", "--text-file", str(text), "--seq-len", "12", "--hidden", "8",
                         "--epochs", "3", "--out", str(tmp_path / "r"), "--quiet")
    assert code == 0, err
    assert "cross-entropy" in out
    code, out, _ = run(capsys, "predict", str(tmp_path / "r" / "best.npz"), "--prime", "abc", "--length", "20")
    assert code == 0 and out.startswith("abc") and len(out.strip()) == 23


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["train", "--dataset", "sunspots", "--backend", "nope"], "unknown backend 'nope'"),
        (["train", "--dataset", "nile", "--window", "90"], "too few"),
        (["train", "--csv", "/nonexistent.csv"], "nonexistent.csv"),
        (["predict", "/nonexistent.npz"], "does not exist"),
        (["train", "--dataset", "nile", "--gamma", "0.5"], "--gamma applies to --lr-schedule step, not constant"),
        (["train", "--dataset", "nile", "--lr-schedule", "cosine", "--step-size", "2"],
         "--step-size applies to --lr-schedule step, not cosine"),
        (["train", "--dataset", "nile", "--lr-schedule", "step"], "needs --step-size"),
        (["train", "--dataset", "nile", "--optimizer", "adam", "--momentum", "0.9"], "momentum is SGD's"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else []))
    assert code == 2
    assert message in err
    assert not (tmp_path / "o" / "last.npz").exists()


@pytest.mark.parametrize("flags, message", [
    (["--dropout", "1"], "argument --dropout: must be at least 0 and below 1"),
    (["--dropout", "-0.5"], "argument --dropout"),
    (["--weight-decay", "-1"], "argument --weight-decay: must be a finite number >= 0"),
    (["--lr-schedule", "linear"], "argument --lr-schedule: invalid choice: 'linear'"),
    (["--optimizer", "lamb"], "argument --optimizer: invalid choice: 'lamb'"),
])
def test_bad_regularisation_and_schedule_flags_are_named(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "nile", *flags, "--out", str(tmp_path / "o")])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_csv_with_missing_cell_names_row_and_column(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text("t,load\n" + "".join(f"{i},{i % 7}\n" for i in range(40)) + "40,\n")
    code, _, err = run(capsys, "train", "--csv", str(csv), "--index-column", "t", "--out", str(tmp_path / "o"))
    assert code == 2 and "load" in err and "42" in err  # file line 42 holds the empty cell


def test_garbage_checkpoint_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "predict", str(bad))
    assert code == 2 and "is not an lstmbench checkpoint" in err and "pickle" not in err


def _two_column_csv(path):
    t = np.arange(120)
    rows = "".join(f"{i},{np.sin(i / 5):.5f},{np.cos(i / 7):.5f}\n" for i in t)
    path.write_text("t,a,b\n" + rows)
    return path


def test_multi_column_model_predicts_within_its_horizon(tmp_path, capsys):
    csv = _two_column_csv(tmp_path / "ab.csv")
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--csv", str(csv), "--index-column", "t", "--target", "1", "--window", "8",
                       "--horizon", "3", "--hidden", "6", "--epochs", "2", "--out", str(out), "--quiet")
    assert code == 0, err
    ckpt = load_checkpoint(out / "best.npz")
    assert ckpt.meta["columns"] == ["a", "b"] and ckpt.meta["target_column"] == 1  # --target 1 is a position
    code, stdout, _ = run(capsys, "predict", str(out / "best.npz"), "--steps", "3", "--json")
    assert code == 0 and json.loads(stdout)["column"] == "b" and len(json.loads(stdout)["forecast"]) == 3
    code, _, err = run(capsys, "predict", str(out / "best.npz"), "--steps", "4")
    assert code == 2 and "--steps must be <= 3" in err
    code, stdout, err = run(capsys, "predict", str(out / "best.npz"))  # the default: its horizon
    assert code == 0 and "next 3 value(s) of 'b'" in stdout, err


def test_resume_on_other_data_is_refused(tmp_path, capsys):
    base = ["train", "--window", "5", "--hidden", "4", "--quiet", "--out", str(tmp_path)]
    assert run(capsys, *base, "--dataset", "nile", "--epochs", "1")[0] == 0
    before = (tmp_path / "last.npz").read_bytes()
    code, _, err = run(capsys, *base, "--dataset", "sunspots", "--epochs", "2", "--resume")
    assert code == 2 and "--dataset sunspots (the run trained on --dataset nile)" in err
    assert (tmp_path / "last.npz").read_bytes() == before


def test_outputs_get_the_usual_file_mode(tmp_path, capsys):
    import os

    mask = os.umask(0o022)
    try:
        assert run(capsys, "train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--epochs", "1",
                   "--out", str(tmp_path), "--quiet")[0] == 0
    finally:
        os.umask(mask)
    for name in ("best.npz", "last.npz", "metrics.json", "predictions.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


# --- the rough edges a newcomer met (issue 11): each test fails without its fix ---------------

NILE = ["train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--quiet"]


def test_train_and_predict_default_to_the_fastest_backend(tmp_path, capsys):
    fastest = lb.fastest_available()
    assert fastest == "c"  # the C extension builds wherever lstmbench installs (gcc is required)
    code, _, err = run(capsys, *NILE, "--epochs", "1", "--out", str(tmp_path))
    assert code == 0, err
    assert f"backend {fastest} (the fastest available here" in err
    assert json.loads((tmp_path / "metrics.json").read_text())["backend"] == fastest
    code, _, err = run(capsys, "predict", str(tmp_path / "best.npz"))
    assert code == 0 and f"backend {fastest} (the fastest available here" in err


def test_fastest_available_skips_backends_that_cannot_run(monkeypatch):
    from lstmbench import registry

    monkeypatch.setattr(registry, "_runs_here", lambda name: name in ("numba", "numpy"))
    assert lb.fastest_available() == "numba"
    monkeypatch.setattr(registry, "_runs_here", lambda name: name == "numpy")
    assert lb.fastest_available() == "numpy"


@pytest.mark.parametrize("case", ["existing file", "under a file"])
def test_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, case):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    out = blocker if case == "existing file" else blocker / "run"
    code, stdout, err = run(capsys, *NILE, "--epochs", "1", "--out", str(out))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: --out {out} is a file, not a folder" if case == "existing file"
                                            else f"error: --out {out} cannot be made: {blocker} is a file, not a folder")
    assert blocker.read_text() == "keep me"


def test_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch):
    # Tests run as root here, for whom chmod does not stop writes; so the OS's answer is simulated.
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", refuse)
    code, _, err = run(capsys, *NILE, "--epochs", "1", "--out", str(tmp_path / "ro"))
    assert code == 2 and "Traceback" not in err
    assert f"error: --out {tmp_path / 'ro'} is not writable (it would be made in {tmp_path}): permission denied" in err


def test_full_disk_is_found_before_training(tmp_path, capsys, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    code, _, err = run(capsys, *NILE, "--epochs", "1", "--out", str(tmp_path / "o"))
    assert code == 2 and "MB free on its disk" in err and "epoch" not in err


def test_disk_full_during_training_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    real_savez, calls = np.savez, []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 wrote best.npz and last.npz; the disk is full after that
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(f, **arrays)

    monkeypatch.setattr(checkpoint_module.np, "savez", savez)
    code, _, err = run(capsys, *NILE, "--epochs", "3", "--lr", "0.001", "--out", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert "no space left on the device" in message and "end of epoch 2" in message and "--resume" in message
    kept = load_checkpoint(tmp_path / "last.npz")
    assert kept.meta["progress"]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "best.npz", "last.npz"]  # no temporary file


def test_progress_is_line_by_line_when_stderr_is_not_a_terminal(tmp_path, capsys):
    # capsys's stderr is not a terminal, as in a CI log
    code, _, err = run(capsys, "train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--epochs", "3",
                       "--out", str(tmp_path))
    assert code == 0
    assert "\r" not in err and "batch/s" not in err  # no progress bar redraws
    assert [line.split()[:2] for line in err.splitlines() if line.startswith("epoch")] == \
        [["epoch", "1"], ["epoch", "2"], ["epoch", "3"]]


def test_csv_with_a_year_column_uses_it_as_index(tmp_path, capsys):
    csv = tmp_path / "flow.csv"
    csv.write_text("year,flow\n" + "".join(f"{1900 + i},{100 + 10 * np.sin(i / 3):.3f}\n" for i in range(60)))
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--csv", str(csv), "--window", "5", "--hidden", "4", "--epochs", "1",
                       "--out", str(out), "--quiet")
    assert code == 0, err
    assert "time index: column 'year' (strictly increasing integers), detected" in err
    assert load_checkpoint(out / "best.npz").meta["columns"] == ["flow"]
    code, stdout, _ = run(capsys, "predict", str(out / "best.npz"), "--steps", "2")
    assert code == 0
    assert "(year 1959)" in stdout and "  1960: " in stdout and "  1961: " in stdout
    code, stdout, _ = run(capsys, "predict", str(out / "best.npz"), "--steps", "2", "--json")
    assert json.loads(stdout)["at"] == ["1960", "1961"]
    # --index-column none: the year is a value column again
    code, _, err = run(capsys, "train", "--csv", str(csv), "--index-column", "none", "--window", "5", "--hidden",
                       "4", "--epochs", "1", "--out", str(tmp_path / "r2"), "--quiet")
    assert code == 0 and load_checkpoint(tmp_path / "r2" / "best.npz").meta["columns"] == ["year", "flow"]


def test_predict_prints_the_years_of_the_forecast(tmp_path, capsys):
    assert run(capsys, "train", "--dataset", "sunspots", "--hidden", "4", "--epochs", "1", "--out", str(tmp_path),
               "--quiet")[0] == 0
    code, stdout, _ = run(capsys, "predict", str(tmp_path / "best.npz"), "--steps", "2")
    assert code == 0 and "(year 2008)" in stdout and "  2009: " in stdout and "  2010: " in stdout


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_predict_steps_must_be_positive(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(tmp_path / "best.npz"), "--steps", steps])
    assert info.value.code == 2
    assert "argument --steps: must be at least 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    text = out / "t.txt"
    text.write_text("abcabcabd " * 60)
    assert main(["train", "--text-file", str(text), "--seq-len", "12", "--hidden", "8", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    return out / "best.npz"


@pytest.fixture(scope="module")
def series_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("series")
    assert main([*NILE, "--epochs", "1", "--out", str(out)]) == 0
    return out / "best.npz"


def test_flags_that_do_not_apply_to_the_checkpoint_are_errors(text_model, series_model, capsys):
    code, _, err = run(capsys, "predict", str(series_model), "--prime", "abc")
    assert code == 2 and "--prime does not apply" in err and "a series model" in err and "--steps" in err
    code, _, err = run(capsys, "predict", str(text_model), "--steps", "3")
    assert code == 2 and "--steps does not apply" in err and "a text model" in err and "--prime" in err
    code, _, err = run(capsys, "predict", str(series_model), "--length", "0", "--seed", "0")
    assert code == 2 and "--length and --seed do not apply" in err  # 0 is a value given, not an absent flag


def test_unknown_prime_symbols_are_an_error_listing_the_known(text_model, capsys):
    code, _, err = run(capsys, "predict", str(text_model), "--prime", "abz!")
    assert code == 2 and "'!z'" in err and "never saw" in err and "' abcd'" in err


def test_predict_on_a_folder_names_the_file(series_model, capsys):
    code, _, err = run(capsys, "predict", str(series_model.parent))
    assert code == 2
    assert f"{series_model.parent} is a folder; name a checkpoint file in it: {series_model}" in err


def test_resume_with_overwrite_is_an_error(tmp_path, capsys):
    code, _, err = run(capsys, *NILE, "--epochs", "1", "--out", str(tmp_path), "--resume", "--overwrite")
    assert code == 2 and "pass one of them" in err and not (tmp_path / "last.npz").exists()


def test_more_threads_than_cores_warns(tmp_path, capsys):
    code, _, err = run(capsys, *NILE, "--epochs", "1", "--out", str(tmp_path), "--backend", "numpy",
                       "--threads", str(lb.default_threads() + 1))
    assert code == 0 and f"warning: --threads {lb.default_threads() + 1} is more than the" in err


def test_a_huge_learning_rate_stops_with_advice(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--dataset", "sunspots", "--lr", "1e6", "--hidden", "8", "--epochs", "5",
                       "--out", str(tmp_path), "--quiet")
    assert code == 3
    message = err.strip().splitlines()[-1]
    assert "diverged" in message and "--lr" in message and "--clip-norm" in message
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("flag, value, rule", [
    ("--hidden", "0", "must be at least 1"), ("--epochs", "0", "must be at least 1"),
    ("--window", "-3", "must be at least 1"), ("--lr", "0", "must be a positive finite number"),
    ("--momentum", "1.5", "must be at least 0 and below 1"), ("--seed", "-1", "must be 0 or more"),
    ("--batch-size", "x", "'x' is not an integer"),
])
def test_errors_name_the_flag(capsys, flag, value, rule):
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "nile", flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: {rule}" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, rule", [
    ("--batch", "-1", "must be at least 1, got -1"), ("--repeats", "0", "must be at least 1, got 0"),
    ("--hidden", "0", "must be at least 1, got 0"), ("--steps", "1.5", "'1.5' is not an integer"),
])
def test_bad_bench_arguments_are_one_line_errors(capsys, flag, value, rule):
    with pytest.raises(SystemExit) as info:
        main(["bench", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {rule}" in err and "Traceback" not in err
