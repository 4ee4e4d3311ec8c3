"""`lstmbench demo`: every backend trains the same model; each is verified by its float64
training against the reference's, and the table, plots and sample come out."""

import json

import pytest

import lstmbench as lb
from lstmbench.cli import demo
from lstmbench.cli import main
from lstmbench_backends.reference import NumpyReference

PNG = b"\x89PNG\r\n\x1a\n"


class FlippedGradient(NumpyReference):
    """Correct forward pass, one gradient with the wrong sign."""

    name = "demo-flipped"

    def _loss_and_grads(self, cfg, params, x, y):
        loss, grads = super()._loss_and_grads(cfg, params, x, y)
        grads["l0.b"] = -grads["l0.b"]
        return loss, grads


def test_demo_trains_verifies_and_compares(tmp_path, capsys):
    code = main(["demo", "--backends", "numpy", "c", "--epochs", "3", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    table = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["numpy"], ["c"])
             and "x " in line}
    assert set(table) == {"numpy", "c"} and all(line.endswith("yes") for line in table.values())
    assert "a forecaster of yearly sunspots (1700-2008)" in out
    for name in ("forecast.png", "speedup.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
        assert str(tmp_path / name) in out


def test_demo_report_holds_the_numbers(tmp_path):
    report = demo.run_demo(backends=["numpy", "c"], epochs=2, hidden=8, out=tmp_path, progress=False,
                           say=lambda m: None)
    rows = {r["backend"]: r for r in report["rows"]}
    assert rows["numpy"]["threads"] == "1"  # the reference is the sequential row
    assert rows["c"]["threads"].startswith("auto" if lb.default_threads() > 1 else "1")
    c = rows["c"]
    assert c["speedup"] == pytest.approx(rows["numpy"]["seconds"] / c["seconds"])
    assert c["deviation64"] <= c["allowed64"] and c["verified"]
    assert 0 < c["deviation"] < 1e-4  # float32: rounding only
    json.dumps(report)  # plain data


def test_a_wrong_backend_is_not_verified_and_fails_the_demo(tmp_path, capsys):
    lb.register_backend(FlippedGradient())
    try:
        code = main(["demo", "--backends", "numpy", "demo-flipped", "--epochs", "2", "--hidden", "8",
                     "--out", str(tmp_path), "--quiet"])
    finally:
        lb.unregister_backend("demo-flipped")
    out, err = capsys.readouterr()
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("demo-flipped"))
    assert line.endswith("NO")
    assert "demo-flipped did not reproduce the reference's model" in err


def test_demo_text_prints_losses_and_a_sample(tmp_path, capsys):
    code = main(["demo", "--text", "--backends", "numpy", "--epochs", "2", "--hidden", "16", "--out", str(tmp_path),
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert [line.split()[:2] for line in captured.err.splitlines() if "train loss" in line] == \
        [["epoch", "1"], ["epoch", "2"]]
    sample = captured.out.split("primed with 'ROMEO:':\n", 1)[1]
    assert sample.startswith("ROMEO:") and len(sample.split("\n\nwrote")[0]) == len("ROMEO:") + 240
    assert (tmp_path / "predictions.png").read_bytes()[:8] == PNG
