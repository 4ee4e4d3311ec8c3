"""The `lstmbench` command end to end, in-process (fast) through cli.main."""

import json

import numpy as np
import pytest

from lstmbench.checkpoint import load_checkpoint
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
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else []))
    assert code == 2
    assert message in err
    assert not (tmp_path / "o" / "last.npz").exists()


def test_csv_with_missing_cell_names_row_and_column(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text("t,load\n" + "".join(f"{i},{i % 7}\n" for i in range(40)) + "40,\n")
    code, _, err = run(capsys, "train", "--csv", str(csv), "--index-column", "t", "--out", str(tmp_path / "o"))
    assert code == 2 and "load" in err and "42" in err  # file line 42 holds the empty cell


def test_garbage_checkpoint_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "predict", str(bad))
    assert code == 2 and "not a readable lstmbench checkpoint" in err


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


def test_resume_on_other_data_is_refused(tmp_path, capsys):
    base = ["train", "--window", "5", "--hidden", "4", "--quiet", "--out", str(tmp_path)]
    assert run(capsys, *base, "--dataset", "nile", "--epochs", "1")[0] == 0
    before = (tmp_path / "last.npz").read_bytes()
    code, _, err = run(capsys, *base, "--dataset", "sunspots", "--epochs", "2", "--resume")
    assert code == 2 and "same data" in err
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
