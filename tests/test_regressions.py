"""Regressions on a noisy machine: the same-process ratios of benchmarks/bench_tracked.py, asv's
step detection, `lstmbench compare` around `asv continuous`, and the planted-regression drill."""

import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_tracked
from lstmbench.bench.regressions import HISTORY, NOISE_FACTOR, TRACKED, continuous_command, detected_steps
from lstmbench.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_ratios_are_taken_within_each_round(monkeypatch):
    """A slow spell of the machine (round 3: everything 4x slower) moves the raw time's rounds
    but not the ratios, which are taken round by round before the median."""
    slow = {3: 4.0}
    clock = iter([[1.0 * slow.get(r, 1)] * 3 if side == "step" else [4.0 * slow.get(r, 1)] * 3
                  for r in range(5) for side in ("step", "reference")])
    monkeypatch.setattr(bench_tracked, "call_seconds", lambda fn, repeats, warmup: next(clock))
    rates = iter([100.0, 100.0, 100.0, 25.0, 100.0])  # the probe slowed by the same spell
    got = bench_tracked.relative_step(lambda: None, lambda: None, lambda: next(rates), rounds=5, repeats=3)
    assert got.over_reference == pytest.approx(0.25) and got.probe_gflop == pytest.approx(100.0)
    assert got.step_s == pytest.approx(1.0)  # the median of the raw rounds
    monkeypatch.setattr(bench_tracked, "call_seconds", lambda fn, repeats, warmup: [2.0])
    alone = bench_tracked.relative_step(lambda: None, None, lambda: 10.0, rounds=3, repeats=1)
    assert alone.over_reference is None and alone.probe_gflop == pytest.approx(20.0)


def test_tracked_benchmarks_are_lower_is_better_and_selected_by_the_regex():
    """asv counts a larger value as worse: every tracked figure is a time or a time ratio."""
    import re

    compared = []
    for cls in (bench_tracked.Relative, bench_tracked.OverReference):
        for name in dir(cls):
            if name.startswith("track_"):
                assert getattr(cls, name).unit in ("GFLOP", "x reference", "seconds")
                full = f"bench_tracked.{cls.__name__}.{name}"
                assert re.search(HISTORY, full)
                compared += [full] if re.search(TRACKED, full) else []
    assert compared == ["bench_tracked.OverReference.track_over_reference"]  # the ratio that moved least
    assert re.search(HISTORY, "bench_scaling.ScalingExponent.track_exponent")
    assert not re.search(HISTORY, "bench_train_step.Suite.time_train_step")


def test_step_detection_finds_a_planted_step_and_not_noise():
    rng = np.random.default_rng(0)
    for _ in range(5):
        flat = list(1 + 0.03 * rng.standard_normal(10))
        assert detected_steps(flat) == []
        stepped = list(1 + 0.03 * rng.standard_normal(5)) + list(2 + 0.06 * rng.standard_normal(5))
        (step,) = detected_steps(stepped)
        assert step.start == 5 and step.ratio == pytest.approx(2, rel=0.1)
    assert detected_steps([1.0, math.nan, 2.0]) == []  # too few numbers to tell a step from noise
    (step,) = detected_steps([1.0, 1.0, math.nan, 2.0, 2.0, 2.0])
    assert step.start == 3  # positions count the commits without a number too


def test_compare_runs_asv_continuous_on_the_tracked_benchmarks(capsys):
    assert continuous_command("main", "HEAD") == ["asv", "continuous", "--factor", f"{NOISE_FACTOR:g}",
                                                  "--interleave-rounds", "--split", "--bench", TRACKED, "main", "HEAD"]
    assert main(["compare", "--dry-run"]) == 0
    assert capsys.readouterr().out.split()[-2:] == ["'HEAD^'", "HEAD"]
    assert main(["compare", "--against-main", "--factor", "1.5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--factor 1.5" in out and out.split()[-2:] == ["main", "HEAD"]


@pytest.fixture
def fake_asv(tmp_path, monkeypatch):
    """An `asv` on PATH that records its arguments and exits with $FAKE_ASV_EXIT."""
    script = tmp_path / "bin" / "asv"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'argv'}\nexit ${{FAKE_ASV_EXIT:-0}}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "asv.conf.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("asv_exit, expected, verdict", [(0, 0, "no tracked figure got worse"),
                                                          (1, 1, "a tracked figure got worse"),
                                                          (2, 2, "asv failed (exit 2)")])
def test_compare_passes_on_asv_s_verdict(fake_asv, monkeypatch, capsys, asv_exit, expected, verdict):
    monkeypatch.setenv("FAKE_ASV_EXIT", str(asv_exit))
    assert main(["compare", "abc123", "def456", "--machine", "box"]) == expected
    assert verdict in capsys.readouterr().err
    argv = (fake_asv / "argv").read_text().split()
    assert argv[0] == "continuous" and argv[-2:] == ["abc123", "def456"] and "--machine" in argv


@pytest.mark.parametrize("args, message", [(["--factor", "0.9"], "--factor must be above 1"),
                                           (["--config", "nowhere.json"], "no nowhere.json here")])
def test_compare_errors_are_one_line(fake_asv, capsys, args, message):
    assert main(["compare", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("LSTMBENCH_DRILL") != "1",
                    reason="builds commits with asv (minutes): set LSTMBENCH_DRILL=1 (CI does)")
def test_the_drill_flags_the_planted_regression_and_not_a_rebuild():
    """tools/regression_drill.py in its quick form: one comparison of each kind."""
    done = subprocess.run([sys.executable, "tools/regression_drill.py", "--tries", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 of 2 comparisons as expected" in done.stdout
