"""`lstmbench bench`: verification gates the timings; the report and outputs are well formed.
(No test asserts a time: only structure, verification and arithmetic.)"""

import io
import json
import sys
from importlib.util import find_spec

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.bench import peak
from lstmbench.bench.formatting import format_grid, significant
from lstmbench.bench.rows import BenchRow, unstable_reason
from lstmbench.bench.run import run_grid, run_suite
from lstmbench.bench.scaling import run_scaling, scaling_exponent
from lstmbench.bench.timing import Timing
from lstmbench.bench.workloads import BENCH_OPTIMIZER, SUITE, bench_model
from lstmbench.training import progress as console
from lstmbench.cli import main
from lstmbench_backends.reference import NumpyReference


class FlippedGradient(NumpyReference):
    name = "test-flipped"

    def _loss_and_grads(self, cfg, params, x, y):
        loss, grads = super()._loss_and_grads(cfg, params, x, y)
        grads["l0.W_h"] = -grads["l0.W_h"]
        return loss, grads


@pytest.fixture
def flipped():
    backend = FlippedGradient()
    lb.register_backend(backend)
    yield backend
    lb.unregister_backend(backend.name)


def small_grid(backends, **kw):
    return run_grid(backends, hidden_sizes=(4,), batch_sizes=(3,), steps=5, repeats=2, with_torch=False,
                    progress=False, **kw)


def test_a_disagreeing_backend_is_failed_and_not_timed(flipped):
    report = small_grid(["numpy", flipped.name])
    row = next(r for r in report["rows"] if r["backend"] == flipped.name)
    assert row["status"] == "FAILED" and row["timing"] is None and row["speedup"] is None
    assert "l0.W_h" in row["detail"]
    assert "FAILED" in format_grid(report)


def test_grid_report_rows_and_speedups():
    report = small_grid(["numpy", "numba"])
    rows = {r["label"]: r for r in report["rows"]}
    one = rows["numpy (1 BLAS thread)"]
    assert one["speedup"] == pytest.approx(1.0)
    numba = rows["numba"]
    assert numba["status"] == "ok"
    t = numba["timing"]
    assert t["q1_s"] <= t["median_s"] <= t["q3_s"] and t["repeats"] == 2
    assert numba["speedup"] == pytest.approx(one["timing"]["median_s"] / t["median_s"])
    flops = lb.train_step_flops(bench_model(4), 3, 5, BENCH_OPTIMIZER).total
    assert numba["gflops"] == pytest.approx(flops / t["median_s"] / 1e9)
    # %peak is of the FMA peak on the row's threads, measured in this run with the widest vectors
    fma = report["fma_peak"]
    assert fma["vector_bits"] == peak.widest_vector_bits() and fma["threads"] == report["threads"]
    assert numba["pct_peak"] == pytest.approx(100 * numba["gflops"] / fma["gflops"])
    assert one["pct_peak"] == pytest.approx(100 * one["gflops"] / fma["per_core_gflops"])  # 1 thread
    assert report["matmul_peak_gflops"] > 0 and report["blas"]


def test_torch_peer_is_verified_when_torch_is_installed():
    pytest.importorskip("torch")
    report = run_grid(["numpy"], hidden_sizes=(4,), batch_sizes=(3,), steps=5, repeats=1, progress=False)
    row = next(r for r in report["rows"] if r["backend"] == "torch")
    assert row["status"] == "ok", row["detail"]
    assert row["timing"] is not None and 1 <= row["threads"] <= lb.default_threads()


def test_scaling_exponent_fit_is_exact_on_power_laws():
    sizes = [1000, 2000, 4000, 8000]
    assert scaling_exponent(sizes, [3e-6 * n**0.7 for n in sizes]) == pytest.approx(0.7)
    assert scaling_exponent(sizes, [5e-4 * n for n in sizes]) == pytest.approx(1.0)


def test_scaling_report_covers_both_modes():
    report = run_scaling(["numpy"], hidden=4, base_n=8, steps=3, batch=4, repeats=1, progress=False)
    modes = {r["mode"] for r in report["results"]}
    assert modes == {"fixed batch", "full batch"}
    for r in report["results"]:
        assert r["sizes"] == [8, 16, 32, 64] and len(r["seconds"]) == 4 and np.isfinite(r["exponent"])


def test_cli_json_and_plot(tmp_path, capsys):
    png = tmp_path / "bench.png"
    code = main(["bench", "--backends", "numpy", "--hidden", "4", "--batch", "3", "--steps", "5", "--repeats", "1",
                 "--no-torch", "--json", "--quiet", "--scaling", "--scaling-n", "8", "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["grid"]["rows"] and data["scaling"]["results"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_exit_code_is_nonzero_when_a_backend_fails(flipped, capsys):
    code = main(["bench", "--backends", flipped.name, "--hidden", "4", "--batch", "3", "--steps", "5",
                 "--repeats", "1", "--no-torch", "--quiet"])
    assert code == 1
    assert "FAILED" in capsys.readouterr().out


def test_kit_checks_declared_unsupported_optimizers_and_losses():
    from lstmbench.testing import run_check

    class AdamOnlyMse(NumpyReference):
        name = "test-adam-only"
        capabilities = lb.Capabilities(losses=("mse",), optimizers=("adam",))

    class Liar(AdamOnlyMse):
        """Declares SGD unsupported but runs it anyway: the kit must say so."""
        name = "test-liar"

        def check_supported(self, cfg, opt=None):
            return None

    run_check(AdamOnlyMse(), "declared_unsupported", "float64", max_examples=3)
    with pytest.raises(AssertionError, match="declared unsupported"):
        run_check(Liar(), "declared_unsupported", "float64", max_examples=3)


def test_fma_peak_is_measured_with_the_widest_vectors():
    bits = peak.widest_vector_bits()
    assert bits in (256, 512)  # x86-64 with AVX2 or AVX-512: the CI machine has one or the other
    one = peak.fma_peak("float32", threads=1, seconds=0.05)
    assert one.vector_bits == bits and one.isa == ("AVX-512" if bits == 512 else "AVX2+FMA")
    assert one.per_core_gflops > 0 and one.gflops == one.per_core_gflops
    assert peak.fma_peak("float32", vector_bits=1024) is None  # no such instructions


def test_a_restricted_blas_is_named(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setattr(peak, "widest_vector_bits", lambda: 512)
    monkeypatch.setattr(peak, "blas_info", lambda: [{"internal_api": "openblas", "architecture": "Haswell"}])
    assert "OPENBLAS_CORETYPE=Haswell holds OpenBLAS to its Haswell kernel" in peak.blas_restriction()
    monkeypatch.setattr(peak, "blas_info", lambda: [{"internal_api": "openblas", "architecture": "SkylakeX"}])
    assert peak.blas_restriction() is None  # the variable names a kernel with AVX-512: nothing held back
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert peak.blas_restriction() is None


def test_any_model_shape_is_benchmarked_and_verified():
    report = run_grid(["numpy", "c"], hidden_sizes=(5,), batch_sizes=(3,), steps=4, repeats=1, progress=False,
                      with_torch=False, model=dict(input_size=6, output_size=6, layers=2, loss="xent",
                                                   many_to_many=True, one_hot=True))
    assert report["workloads"][0]["describe"] == "D=6 one-hot, 2 x 5, O=6, xent many-to-many, T=4, B=3"
    row = next(r for r in report["rows"] if r["backend"] == "c")
    assert row["status"] == "ok" and row["workload"] == "H=5 B=3"


def test_the_suite_has_the_named_workloads_and_refuses_unknown_ones():
    assert set(SUITE) == {"char-onehot", "forecast-short", "hourly-multivariate", "long-b1", "long-b2",
                          "odd-sizes", "varlen", "varlen-full"}
    char = SUITE["char-onehot"]
    x, y = char.data(char.model("float32"))
    assert x.shape == (64, 128, 84) and np.all(x.sum(axis=2) == 1) and y.shape == (64, 128)
    with pytest.raises(lb.ConfigError, match="unknown suite workload"):
        run_suite(["no-such-workload"])


def test_rows_of_different_lengths_are_benchmarked_against_torch_packed(capsys):
    """--lengths: every row (torch's packed peer too) verified on the lengths it is timed on,
    and the model FLOPs are those of the steps the rows take."""
    main(["bench", "--backends", "c", "--hidden", "6", "--batch", "5", "--steps", "9", "--lengths", "uniform:2:7",
          "--repeats", "1", "--quiet", "--json"])
    grid = json.loads(capsys.readouterr().out)["grid"]
    assert grid["workloads"][0]["lengths"] == [2, 7]
    assert grid["workloads"][0]["describe"].endswith("lengths uniform in [2, 7]")
    rows = {r["label"]: r for r in grid["rows"]}
    assert rows["c"]["status"] == "ok"
    if find_spec("torch"):
        assert rows["torch.nn.LSTM packed"]["status"] == "ok"
    lengths = SUITE["varlen"].row_lengths()
    assert lengths.min() >= 20 and lengths.max() <= 200 and abs(lengths.mean() / 200 - 0.55) < 0.1
    cfg = bench_model(6)
    full, part = (lb.train_step_flops(cfg, 5, 9, BENCH_OPTIMIZER, ls).total for ls in (None, [9, 1, 1, 1, 1]))
    assert part < full / 2


def test_lengths_past_the_steps_are_refused(capsys):
    assert main(["bench", "--backends", "c", "--steps", "9", "--lengths", "uniform:2:10", "--quiet"]) != 0
    assert "--lengths reaches 10, past --steps 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--lengths", "normal:3"])
    assert "expected uniform:MIN" in capsys.readouterr().err


def test_bad_bench_arguments_are_one_line_errors(capsys):
    for args in (["--batch", "-1"], ["--repeats", "0"], ["--hidden", "x"]):
        with pytest.raises(SystemExit) as info:
            main(["bench", *args])
        assert info.value.code == 2
        assert "error: argument" in capsys.readouterr().err


# --- unstable rows (a busy machine) ----------------------------------------------------


def _timed_row(median, q1, q3, pct=50.0):
    row = BenchRow("numba", "numba", "w", 4, 3, 5, 2, "ok", timing=Timing(median, q1, q3, 7))
    row.pct_peak = pct
    return row


def test_unstable_rows_are_named():
    assert unstable_reason(_timed_row(1.0, 0.95, 1.05)) == ""
    assert unstable_reason(_timed_row(1.0, 0.8, 1.3)) == "IQR 50% of the median"
    assert unstable_reason(_timed_row(1.0, 0.99, 1.0, pct=116.9)) == "above the peak measured in this run"
    assert unstable_reason(_timed_row(1.0, 0.5, 1.5, pct=120)).count(";") == 1  # both reasons


def test_report_marks_unstable_rows_and_warns():
    report = small_grid(["numpy"])
    for r in report["rows"]:  # a busy machine marks rows of its own: start from none
        r["unstable"] = ""
    row = report["rows"][0]
    row["unstable"], row["pct_peak"] = "above the peak measured in this run", 116.9
    text = format_grid(report)
    assert "! unstable: above the peak measured in this run" in text
    assert "warning: 1 row(s) marked ! are unstable" in text and "quiet machine" in text
    for r in report["rows"]:
        r["unstable"] = ""
    assert "unstable" not in format_grid(report)


def test_small_figures_keep_their_significant_digits():
    assert significant(0.00123) == "0.00123" and significant(2512.3, 4) == "2512" and significant(1.2345) == "1.23"
    report = small_grid(["numpy"])
    row = report["rows"][0]
    row["speedup"], row["timing"]["median_s"] = 0.00123, 2.5123
    line = next(line for line in format_grid(report).splitlines() if line.startswith(row["workload"]))
    assert "0.00123x" in line and "2512" in line  # not "0.00x", and ms to 4 figures


# --- progress when stderr is not a terminal --------------------------------------------


class FakeClock:
    """time for lstmbench.training.progress: monotonic() is ``now``, moved on by the test, and by
    ``tick`` more at every call."""

    def __init__(self, tick: float = 0.0):
        self.now, self.tick = 1000.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


class Log(io.StringIO):
    """A stderr that is a file, not a terminal; ``flushed``: its text at the last flush."""

    flushed = ""

    def flush(self):
        self.flushed = self.getvalue()


def stderr_to_log(monkeypatch) -> Log:
    """sys.stderr a Log for the rest of the test (in its body: pytest sets its own
    sys.stderr again between a test's fixtures and the test)."""
    stream = Log()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_progress_in_a_log_is_a_plain_line_every_interval(monkeypatch):
    log = stderr_to_log(monkeypatch)
    clock = FakeClock()
    monkeypatch.setattr(console, "time", clock)
    bar = console.progress_bar(total=18, desc="bench", unit="run")
    bar.update(2)
    bar.set_postfix_str("numba char-onehot")
    clock.now += console.LOG_INTERVAL_S - 0.5
    bar.update(1)
    assert log.getvalue() == ""  # nothing before the interval has passed
    clock.now += 0.5
    bar.update(0)
    line = log.getvalue()
    assert line.startswith("bench: 3/18 [00:10<") and line.endswith(", numba char-onehot]\n"), line
    assert log.flushed == line
    bar.update(4)
    clock.now += console.LOG_INTERVAL_S - 0.5
    bar.update(1)
    assert log.getvalue() == line  # the next one: an interval after this one
    clock.now += 0.5
    bar.set_postfix(train="0.25", val="0.5")
    second = log.getvalue()[len(line):]
    assert second.startswith("bench: 8/18 [00:20<") and second.endswith(", train=0.25, val=0.5]\n"), second
    bar.update(10)
    bar.close()
    last = log.getvalue().splitlines()[-1]
    assert last.startswith("bench: 18/18 [00:20<") and log.flushed == log.getvalue()
    assert len(log.getvalue().splitlines()) == 3 and "\r" not in log.getvalue()


def test_progress_in_a_log_keeps_the_callers_lines_and_format(monkeypatch, capsys):
    log = stderr_to_log(monkeypatch)
    clock = FakeClock()
    monkeypatch.setattr(console, "time", clock)
    bar = console.progress_bar(total=4, bar_format="{n}/{total} {desc}")  # as lstmbench check's
    bar.write("a result", file=sys.stdout)
    bar.set_description_str("running gradients float32 on numba ...")
    bar.update()
    bar.close()
    assert capsys.readouterr().out == "a result\n"
    assert log.getvalue() == ""  # a run shorter than the interval: no progress line, not even at close
    with console.progress_bar(total=4, bar_format="{n}/{total} {desc}") as bar:
        clock.now += console.LOG_INTERVAL_S
        bar.set_description_str("running gradients float32 on numba ...")
        clock.now += console.LOG_INTERVAL_S
        bar.update()
    assert log.getvalue() == "0/4 running gradients float32 on numba ...\n1/4 running gradients float32 on numba ...\n"
    bar.close()  # closed already, by the with statement; and nothing done since the last line
    assert len(log.getvalue().splitlines()) == 2


def test_no_progress_when_disabled(monkeypatch):
    log = stderr_to_log(monkeypatch)
    clock = FakeClock(tick=console.LOG_INTERVAL_S)
    monkeypatch.setattr(console, "time", clock)
    bar = console.progress_bar(False, total=3, desc="bench")
    for _ in range(3):
        bar.set_postfix_str("numpy")
        bar.update()
    bar.close()
    assert log.getvalue() == ""


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = console.progress_bar(total=3, desc="bench", unit="run")
    bar.update(3)
    bar.close()
    assert "\rbench: 100%|" in terminal.getvalue()  # tqdm's redraw of its bar


def test_bench_reports_progress_to_a_log(monkeypatch):
    """`lstmbench bench 2> file`: a line of progress whenever the interval has passed (here
    at every call of the bar, the clock moving on a whole interval at each look)."""
    log = stderr_to_log(monkeypatch)
    monkeypatch.setattr(console, "time", FakeClock(tick=console.LOG_INTERVAL_S))
    run_grid(["numpy", "numba"], hidden_sizes=(4,), batch_sizes=(3,), steps=5, repeats=1, with_torch=False)
    lines = log.getvalue().splitlines()
    assert lines and "\r" not in log.getvalue()
    done = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("bench: ")]
    assert len(done) == len(lines) and done == sorted(done) and lines[-1].startswith("bench: 4/4 ")
    assert any(line.endswith(", numba H=4 B=3]") for line in lines)


def test_every_timing_starts_after_the_other_thread_pools_settle(monkeypatch):
    """A row timed while another pool's idle workers spin (OpenBLAS after the verification) runs
    on fewer cores than it says: each timing waits first (lstmbench.bench.timing.settle)."""
    from lstmbench.bench import latency, timing

    events = []
    monkeypatch.setattr(timing, "settle", lambda: events.append("settle"))
    monkeypatch.setattr(latency, "settle", lambda: events.append("settle"))
    monkeypatch.setattr(peak, "settle", lambda: events.append("settle"))
    timing.time_calls(lambda: events.append("call"), repeats=2, warmup=1)
    assert events == ["settle", "call", "call", "call"]
    events.clear()
    timing.time_phases([lambda: events.append("a"), lambda: events.append("b")], repeats=1, warmup=1)
    assert events == ["settle", "a", "b", "a", "b"]
    events.clear()
    latency.stream_seconds(events.append, ["x"], 1, lambda: events.append("reset"))
    assert events == ["settle", "reset", "x", "reset", "x"]
    events.clear()
    if peak.fma_peak("float32", 1, seconds=0.001) is not None:  # the ceiling too, where the probe is built
        assert events[:1] == ["settle"]
