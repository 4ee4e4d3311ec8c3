"""What other LSTM benchmarks time (issue 22): forward passes (--forward-only), the torch peer's
forward and backward apart, the latency of a streamed step (--latency) and DeepBench's shapes
(--suite deepbench). Verification gates every timing; no test asserts a time."""

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.bench import deepbench
from lstmbench.bench.flops import forward_flops, train_step_flops
from lstmbench.bench.formatting import format_grid
from lstmbench.bench.latency import format_latency, run_latency, stream_seconds
from lstmbench.bench.run import run_grid, run_suite
from lstmbench.bench.workloads import BENCH_OPTIMIZER, DEEPBENCH, SUITE, bench_model, deepbench_cut, suite_workloads
from lstmbench.cli import main
from lstmbench_backends.reference import NumpyReference

TORCH = find_spec("torch") is not None


class ScaledForward(NumpyReference):
    """Outputs 1% off: a forward-only row of it must be FAILED."""

    name = "test-scaled-forward"

    def _forward(self, cfg, params, x, **kw):
        out = super()._forward(cfg, params, x, **kw)
        return (out[0] * 1.01, out[1]) if kw.get("return_state") else out * 1.01


class ForgetfulState(NumpyReference):
    """Drops the carried cell state c (keeps h): each call alone is right, a stream is not."""

    name = "test-forgetful-state"

    def _forward(self, cfg, params, x, initial_state=None, **kw):
        if initial_state is not None:
            initial_state = (initial_state[0], np.zeros_like(initial_state[1]))
        return super()._forward(cfg, params, x, initial_state=initial_state, **kw)


@pytest.fixture(autouse=True)
def no_ceilings(monkeypatch):
    """The FMA and BLAS probes take seconds per report and no test here reads them."""
    monkeypatch.setattr("lstmbench.bench.run.measure_ceilings", lambda dtype, threads: {
        "fma_peak": None, "matmul_peak_gflops": 1.0, "blas": [], "blas_restriction": None})


@pytest.fixture
def registered():
    backends = [ScaledForward(), ForgetfulState()]
    for b in backends:
        lb.register_backend(b)
    yield backends
    for b in backends:
        lb.unregister_backend(b.name)


def rows_by_label(report):
    return {r["label"]: r for r in report["rows"]}


def test_forward_flops_are_the_forward_part_of_a_training_step():
    cfg = bench_model(6, "float32", 3, 2, 2, "mse", True)
    step, fwd = train_step_flops(cfg, 4, 5, BENCH_OPTIMIZER), forward_flops(cfg, 4, 5)
    assert fwd.forward_matmul == step.forward_matmul and fwd.backward_matmul == 0 and fwd.optimizer == 0
    assert fwd.pointwise == 2 * 4 * 5 * 6 * 14  # layers * B * T * H * FORWARD_POINTWISE
    assert forward_flops(cfg, 4, 5, [5, 1, 1, 1]).total < fwd.total / 2  # padding is no work


def test_forward_only_rows_are_verified_and_a_wrong_forward_is_failed(registered):
    report = run_grid(["c", "test-scaled-forward", "test-forgetful-state"], hidden_sizes=(5,), batch_sizes=(3,),
                      steps=4, repeats=2, with_torch=TORCH, progress=False, forward_only=True)
    assert report["timed"] == "forward" and report["optimizer"] is None
    rows = rows_by_label(report)
    bad = rows["test-scaled-forward"]
    assert bad["status"] == "FAILED" and bad["timing"] is None and "forward output" in bad["detail"]
    assert rows["test-forgetful-state"]["status"] == "ok"  # one forward pass from zeros: nothing carried
    c, ref = rows["c"], rows["numpy (1 BLAS thread)"]
    assert c["status"] == "ok" and c["fwd"] is None
    assert c["gflops"] == pytest.approx(forward_flops(bench_model(5), 3, 4).total / c["timing"]["median_s"] / 1e9)
    assert c["speedup"] == pytest.approx(ref["timing"]["median_s"] / c["timing"]["median_s"])
    if TORCH:
        assert rows["torch.nn.LSTM no_grad"]["status"] == "ok", rows["torch.nn.LSTM no_grad"]["detail"]
    text = format_grid(report)
    assert text.startswith("forward pass (inference") and "ms/fwd" in text and "FAILED" in text


@pytest.mark.skipif(not TORCH, reason="torch is not installed")
def test_the_torch_peer_times_its_forward_and_backward_apart():
    report = run_grid(["c"], hidden_sizes=(4,), batch_sizes=(3,), steps=5, repeats=2, progress=False)
    rows = rows_by_label(report)
    torch_row = rows["torch.nn.LSTM"]
    assert torch_row["status"] == "ok" and torch_row["fwd"]["repeats"] == 2 and torch_row["bwd"]["median_s"] > 0
    assert rows["c"]["fwd"] is None and rows["c"]["bwd"] is None  # one call: no backward of its own
    text = format_grid(report)
    assert "fwd + bwd ms" in text and "fastrnns" in text


def test_forward_only_with_lengths_takes_them_everywhere(capsys):
    """varlen rows, forward only: the backends on their lengths, torch packed under no_grad."""
    assert main(["bench", "--forward-only", "--backends", "c", "--hidden", "6", "--batch", "5", "--steps", "9",
                 "--lengths", "uniform:2:7", "--many-to-many", "--repeats", "1", "--quiet", "--json"]) == 0
    grid = json.loads(capsys.readouterr().out)["grid"]
    rows = rows_by_label(grid)
    assert grid["timed"] == "forward" and rows["c"]["status"] == "ok"
    if TORCH:
        assert rows["torch.nn.LSTM no_grad packed"]["status"] == "ok"


def test_streamed_steps_are_verified_and_a_wrong_carried_state_is_failed(registered):
    report = run_latency(["numpy", "c", "test-forgetful-state"], hidden_sizes=(6,), steps=7, repeats=2,
                         with_torch=TORCH, model=dict(input_size=2, layers=2))
    rows = rows_by_label(report)
    assert rows["test-forgetful-state"]["status"] == "FAILED"
    assert "7 steps streamed one at a time" in rows["test-forgetful-state"]["detail"]
    for label in ("numpy (1 BLAS thread)", "c") + (("torch.nn.LSTM no_grad",) if TORCH else ()):
        row = rows[label]
        assert row["status"] == "ok", row["detail"]
        lat = row["latency"]
        assert lat["samples"] == 2 * 7 and 0 < lat["median_us"] <= lat["p90_us"]
    assert rows["numpy (1 BLAS thread)"]["speedup"] == pytest.approx(1.0)
    text = format_latency(report)
    assert "median us" in text and "FAILED" in text


def test_stream_seconds_times_every_step_of_every_stream():
    resets, calls = [], []
    seconds = stream_seconds(calls.append, [1, 2, 3], 2, lambda: resets.append(len(calls)))
    assert len(seconds) == 6 and calls == [1, 2, 3] * 3 and resets == [0, 3, 6]  # one untimed stream first


def test_deepbench_shapes_are_those_of_rnn_problems_h():
    train = [n for n in DEEPBENCH if n.startswith("db-train")]
    infer = [n for n in DEEPBENCH if n.startswith("db-infer")]
    assert len(train) == 22 and len(infer) == 15
    work = DEEPBENCH["db-train-1536x8x50"]
    assert (work.hidden, work.batch, work.steps, work.input_size, work.output_size) == (1536, 8, 50, 1536, 1)
    p = work.published
    assert p.parts_ms == (5.097, 4.571, 0.831) and p.time_ms == pytest.approx(10.499)
    assert "DeepBench_NV_V100.xlsx" in p.source and "row 308" in p.source
    p = DEEPBENCH["db-infer-1536x4x50"].published
    assert p.time_ms == 6.925 and p.tflops == pytest.approx(0.545, abs=1e-3)  # README: 6.93 ms, 0.55 TFLOPS
    assert deepbench.deepbench_flops(1536, 4, 50) == 8 * 50 * 4 * 1536**2


def test_the_deepbench_group_is_the_shapes_that_fit_and_the_cut_is_documented():
    kept_train = [w.name for w in suite_workloads(["deepbench"])]
    assert kept_train == ["db-train-512x16x25", "db-train-512x32x25", "db-train-512x64x25", "db-train-512x128x25",
                          "db-train-1024x16x25", "db-train-1024x32x25", "db-train-1536x8x50", "db-train-256x16x150",
                          "db-train-256x32x150", "db-train-256x64x150"]
    assert [w.name for w in suite_workloads(["deepbench"], forward_only=True)] == [
        n for n in DEEPBENCH if n.startswith("db-infer")]  # every inference shape fits
    assert set(deepbench_cut()) == {"db-train-1024x64x25", "db-train-1024x128x25", "db-train-1536x16x50",
                                    "db-train-1536x32x50"} | {f"db-train-{H}x{B}x25" for H in (2048, 4096)
                                                              for B in (16, 32, 64, 128)}
    assert [w.name for w in suite_workloads(["deepbench-inference"])][0] == "db-infer-512x1x25"
    # a shape left out still runs when named; names and groups mix with the suite's, once each
    names = [w.name for w in suite_workloads(["long-b1", "db-train-2048x128x25", "deepbench", "db-train-512x16x25"])]
    assert names[:3] == ["long-b1", "db-train-2048x128x25", "db-train-512x16x25"] and len(names) == 12
    assert [w.name for w in suite_workloads()] == list(SUITE)  # --suite alone: the realistic workloads
    with pytest.raises(lb.ConfigError, match="db-infer-HxBxT"):
        suite_workloads(["db-train-1x1x1"])
    docs = (Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md").read_text()
    section = docs[docs.index("## What other LSTM benchmarks time"):]
    table = [line.split("|") for line in section.splitlines() if line.endswith(("| cut |", "| yes |"))]
    documented = {"db-train-" + cells[1].strip().replace(" ", ""): cells[-2].strip() for cells in table}
    assert documented == {n: "cut" if n in deepbench_cut() else "yes" for n in DEEPBENCH if n.startswith("db-train")}


def test_a_deepbench_shape_runs_through_the_suite():
    report = run_suite(["db-infer-256x1x150"], ["c"], repeats=1, with_torch=False, progress=False, forward_only=True)
    assert report["workloads"][0]["published"]["source"].startswith("baidu-research/DeepBench@da81ba7")
    assert rows_by_label(report)["c"]["status"] == "ok"
    assert "published: 1.994 ms" in format_grid(report)


def test_latency_cli_end_to_end(capsys):
    assert main(["bench", "--latency", "--backends", "c", "--hidden", "4", "--steps", "5", "--repeats", "1",
                 "--no-torch", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "latency" and report["rows"][0]["workload"] == "H=4 B=1"


@pytest.mark.parametrize("args, message", [
    (["--latency", "--suite"], "--latency does not go with --suite"),
    (["--forward-only", "--dropout", "0.2"], "--forward-only does not go with --dropout"),
    (["--latency", "--batch", "4"], "--latency times one row (B=1)"),
    (["--latency", "--lengths", "uniform:2"], "--latency does not go with --lengths"),
    (["--forward-only", "--generation"], "--forward-only does not go with --generation"),
    (["--suite", "deepbench", "--dropout", "0.1", "--forward-only"], "--forward-only does not go with --dropout"),
])
def test_flags_that_do_not_go_together_are_one_line_errors(args, message, capsys):
    assert main(["bench", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_asv_inference_benchmarks_skip_on_a_commit_without_forward_rows(monkeypatch):
    """asv runs this file against old commits: there every benchmark must skip (NotImplementedError
    in setup), not fail in setup_cache."""
    from benchmarks import bench_inference

    monkeypatch.setattr(bench_inference, "FORWARD", None)
    speedup = bench_inference.InferenceSpeedup()
    found = speedup.setup_cache()
    with pytest.raises(NotImplementedError, match="no forward-only rows"):
        speedup.setup(found, "c", next(iter(bench_inference.WORKLOADS)))
    with pytest.raises(NotImplementedError, match="no forward-only rows"):
        bench_inference.Inference().setup("c", next(iter(bench_inference.WORKLOADS)))
