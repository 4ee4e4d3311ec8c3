"""`lstmbench demo`: one model, trained from the same seed on every backend that runs
here, each checked against the reference's result, then compared side by side.

The check is on the whole training, not one step: every backend trains the model a
second time in float64, and its final parameters must equal the NumPy reference's
float64 ones to FLOAT64_AGREEMENT of the largest parameter. Correct backends differ
there only by rounding, which after the demo's few hundred Adam steps is 1e-15 to
1e-12 (measured for the series and text tasks, H up to 128); a wrong gradient moves
parameters by 1e-3 or more. The float32 run (the one timed) cannot be held to a
fixed tolerance that way: rounding in float32 grows with training, and the float32
reference itself ends 1e-6 (series) to 1e-3 (text, 8 epochs) away from the float64
answer; its distance from the reference is shown beside that for comparison.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import lstmbench as lb
from lstmbench.training import experiment
from lstmbench.bench.run import default_backends
from lstmbench.training.checkpoint import atomic_write, check_output_dir
from lstmbench.bench.machine import OtherLoad, busy_note
from lstmbench.cli.common import AUTO, positive, thread_count, thread_tuner, usable_threads
from lstmbench.params import Params, cast_params
from lstmbench.registry import REFERENCE
from lstmbench.training.loop import RunConfig, TrainResult, train

#: the two demo tasks: a forecaster of yearly sunspots, and a character model of the bundled text
TASKS = {
    "series": dict(dataset="sunspots", hidden=48, epochs=30, batch_size=32, lr=0.01),
    "text": dict(dataset="shakespeare", hidden=64, epochs=10, batch_size=32, lr=0.01, seq_len=32),
}
FLOAT64_AGREEMENT = 1e-9  # of the largest parameter


@dataclass
class DemoRow:
    backend: str
    threads: str  # "2", or "auto 1-2" (the counts the tuner used)
    seconds: float  # the whole training in the demo's dtype (every epoch, validation included)
    speedup: float  # the reference's seconds (one thread) / this row's
    test: float  # test RMSE (series) or cross-entropy (text) of the best-validation parameters
    naive: float  # the same for the naive baseline (last value / unigram frequencies)
    deviation: float  # max |final parameter - the reference's| of the timed run
    deviation64: float  # the same for the float64 training
    allowed64: float
    verified: bool
    others: float | None = None  # cores other processes kept busy during the timed training (OtherLoad)


def max_deviation(a: Params, b: Params) -> float:
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in b)


class Trained(NamedTuple):
    """One backend's demo run: the float32 (timed) training and its float64 check's parameters."""

    backend: lb.Backend
    threads: str
    result: TrainResult
    seconds: float
    check: Params
    others: float | None


def run_demo(text: bool = False, epochs: int | None = None, hidden: int | None = None, dtype: str = "float32",
             backends: list[str] | None = None, out: str | Path = "runs/demo", progress: bool = True,
             say=print, threads: int | str = AUTO) -> dict[str, Any]:
    """Train the demo task on every backend (or ``backends``; the reference always), verify
    and compare them, write the plots into ``out``; returns the report. ``threads``: of every
    backend but the reference (which runs on one): a count, or "auto" (lstmbench.training.threads)."""
    spec = dict(TASKS["text" if text else "series"])
    spec.update({k: v for k, v in (("epochs", epochs), ("hidden", hidden)) if v is not None})
    out = check_output_dir(out, what="--out")
    source = experiment.make_source(spec["dataset"])
    task = experiment.build_task(source, hidden_size=spec["hidden"], dtype=dtype, seq_len=spec.get("seq_len", 64))
    opt = lb.OptimizerConfig("adam", lr=spec["lr"])
    run = RunConfig(epochs=spec["epochs"], batch_size=spec["batch_size"], seed=0, progress=progress)
    init = lb.init_params(task.cfg, seed=0)
    names, left_out = (list(backends), {}) if backends else default_backends()
    names = [REFERENCE] + [n for n in names if n != REFERENCE]
    fastest = lb.fastest_available()
    fastest = fastest if fastest in names else names[-1]
    say(f"lstmbench demo: {_describe(task, spec)}; {len(task.train[0])} training examples, {run.epochs} epochs, "
        f"{dtype}, Adam, seed 0")
    say(f"backends: {', '.join(names)}" + "".join(f"; {n} left out: {why}" for n, why in left_out.items()))

    exact = lb.ModelConfig(**{**task.cfg.to_dict(), "dtype": "float64"})
    exact_data = [tuple(a.astype(np.float64) if a.dtype.kind == "f" else a for a in part) for part in (task.train, task.val)]
    exact_init = cast_params(init, np.float64)
    quiet = replace(run, progress=False)
    trained: dict[str, Trained] = {}
    for name in names:
        count = 1 if name == REFERENCE else None if threads == AUTO else threads  # the reference: 1
        with lb.get_backend(name).using_threads(count) as backend:
            _warm_up(backend, [task.cfg, exact], task.train, opt, say)
            on_epoch = _epoch_printer() if (text and name == fastest) else None
            tuner = thread_tuner(backend, threads if name != REFERENCE else 1)
            with OtherLoad() as others:
                started = time.perf_counter()
                result = train(backend, task.cfg, opt, init, task.train, task.val, run, on_epoch=on_epoch,
                               threads=tuner)
                seconds = time.perf_counter() - started
            check = result if dtype == "float64" else train(backend, exact, opt, exact_init, *exact_data, quiet)
            trained[name] = Trained(backend, _threads_used(backend, result), result, seconds, check.last_params,
                                    others.cores)
        note = busy_note(others.cores, "these times")
        say(f"  {name:<8} {trained[name].threads} thread(s): {seconds:6.2f} s" + (f"  ({note})" if note else ""))
    ref = trained[REFERENCE]
    allowed = FLOAT64_AGREEMENT * max(float(np.max(np.abs(v))) for v in ref.check.values())

    rows, units = [], "nats/symbol"
    for name, t in trained.items():
        scores = experiment.evaluate(t.backend, task, t.result.params)
        test, naive = ((scores["test_rmse"], scores["naive_rmse"]) if "test_rmse" in scores else
                       (scores["test_loss"], scores["naive_loss"]))
        units = scores.get("units", units)  # the same for every backend: the task's
        deviation64 = max_deviation(t.check, ref.check)
        rows.append(DemoRow(name, t.threads, t.seconds, ref.seconds / t.seconds, test, naive,
                            max_deviation(t.result.last_params, ref.result.last_params), deviation64, allowed,
                            deviation64 <= allowed, t.others))
    backend, result = trained[fastest].backend, trained[fastest].result
    forecast_png, speedup_png = out / ("predictions.png" if text else "forecast.png"), out / "speedup.png"
    experiment.plot_run(backend, task, result.params, result.history, forecast_png)
    plot_speedups(rows, speedup_png, _describe(task, spec))
    report = {"task": "text" if text else "series", "spec": spec, "model": task.cfg.to_dict(), "dtype": dtype,
              "fastest": fastest, "rows": [asdict(r) for r in rows], "left_out": left_out,
              "units": units,
              "plots": [str(forecast_png), str(speedup_png)]}
    if text:
        report["sample"] = experiment.sample_text(backend, task.cfg, result.params, task.meta, "ROMEO:", 240,
                                                  temperature=0.7)
    return report


def _describe(task: experiment.Task, spec: dict) -> str:
    if task.windows is not None:
        index = task.windows.series.index
        return (f"a forecaster of yearly sunspots ({index[0]}-{index[-1]}), H={spec['hidden']}, "
                f"window {task.meta['window']}")
    return f"a next-character model of the bundled text (V={task.cfg.output_size}), H={spec['hidden']}, " \
           f"sequences of {task.meta['seq_len']}"


def _warm_up(backend: lb.Backend, cfgs: list[lb.ModelConfig], data, opt: lb.OptimizerConfig, say) -> None:
    """A step and a forward pass of each model before any clock starts, so compiling is not timed."""
    numba = any(key.startswith("numba") for key in backend.runtime_info())
    if numba:  # Numba's on-disk cache cannot be asked cheaply whether it holds these kernels
        say(f"  {backend.name}: loading its Numba kernels (from the cache in about a second; the first run on a "
            "machine compiles them, a minute or more) ...")
    start = time.perf_counter()
    for cfg in cfgs:
        x, y = (a[:2].astype(cfg.dtype) if a.dtype.kind == "f" else a[:2] for a in data)
        state = backend.init_state(cfg, lb.init_params(cfg, seed=0), opt)
        backend.train_step(state, x, y)
        backend.forward(cfg, backend.get_params(state), x)
    if numba:
        say(f"  {backend.name}: kernels ready in {time.perf_counter() - start:.1f} s")


def _threads_used(backend: lb.Backend, result: TrainResult) -> str:
    """The fixed count, or "auto " and the counts the tuner ran steps on ("auto 1-2")."""
    if result.threads is None:
        return str(backend.threads)
    used = sorted(int(n) for n, steps in result.threads["steps_at"].items() if steps)
    return "auto " + (f"{used[0]}-{used[-1]}" if len(used) > 1 else str(used[0]))


def _epoch_printer():
    from tqdm.auto import tqdm

    def report(rec):
        tqdm.write(f"    epoch {rec['epoch']:3d}  train loss {rec['train_loss']:.4f}  validation {rec['val_loss']:.4f} "
                   "nats/symbol", file=sys.stderr)
    return report


def format_demo(report: dict[str, Any]) -> str:
    metric = "test RMSE" if report["task"] == "series" else "test xent"
    baseline = "naive (last value)" if report["task"] == "series" else "unigram"
    dtype = report["dtype"]
    header = (f"{'backend':<8} {'threads':>7} {'train s':>8} {'speedup':>8} {metric:>10} {baseline:>18}  "
              f"{'|params - ref| ' + dtype:>24}  {'float64: verified':>26}")
    lines = [header, "-" * len(header)]
    for r in report["rows"]:
        verdict = f"{r['deviation64']:.2g} <= {r['allowed64']:.2g} {'yes' if r['verified'] else 'NO'}"
        lines.append(f"{r['backend']:<8} {r['threads']:>7} {r['seconds']:>8.2f} {r['speedup']:>7.2f}x "
                     f"{r['test']:>10.4g} {r['naive']:>18.4g}  {r['deviation']:>24.2g}  {verdict:>26}")
    busy = [(r["backend"], r["others"]) for r in report["rows"] if busy_note(r.get("others"))]
    if busy:
        lines.append("note: " + busy_note(max(o for _, o in busy), "the training times of " + ", ".join(b for b, _ in busy)))
    units = f"of {report['units']!r}" if report["task"] == "series" else "in nats/symbol"
    lines += [f"speedup: the reference's training time on one thread / the row's, this run. {metric} {units}, "
              "of the parameters with the best validation loss.",
              "verified: the same training in float64 ends at the reference's parameters, up to rounding "
              "(max difference <= 1e-9 of the largest parameter)"]
    return "\n".join(lines)


def plot_speedups(rows: list[DemoRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r.backend}\n{r.threads} thread(s)" for r in rows]
    bars = ax.bar(labels, [r.speedup for r in rows], color=["C7" if r.backend == REFERENCE else "C0" for r in rows])
    ax.bar_label(bars, [f"{r.speedup:.1f}x" for r in rows])
    ax.axhline(1, color="k", lw=0.8)
    ax.set_ylabel("training speedup over the reference")
    ax.margins(y=0.15)  # room for the bar labels
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def register(sub) -> None:
    p = sub.add_parser("demo", help="the same model trained on every backend, verified and compared")
    p.add_argument("--text", action="store_true", help="a next-character model of the bundled text instead of the "
                                                       "sunspot forecaster")
    p.add_argument("--epochs", type=positive, help="epochs (default 30; 10 with --text)")
    p.add_argument("--hidden", type=positive, help="hidden size H (default 48; 64 with --text)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--backends", nargs="+", help="backends to train (default: every available one; the reference "
                                                 "always)")
    p.add_argument("--out", default="runs/demo", help="folder for the plots (default runs/demo)")
    p.add_argument("--threads", type=thread_count, default=AUTO,
                   help="threads of every backend but the reference (which runs on one): a number, or auto "
                        "(default): each step on the count that is fastest now (the same bits either way)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    """The same model trained on every backend here, verified against the reference, compared."""
    report = run_demo(text=args.text, epochs=args.epochs, hidden=args.hidden, dtype=args.dtype,
                           backends=args.backends, out=args.out, progress=not args.quiet,
                           say=lambda m: print(m, flush=True),
                           threads=args.threads if args.threads == AUTO else usable_threads(args.threads))
    print()
    print(format_demo(report))
    if report["task"] == "text":
        print(f"\nsampled from the {report['fastest']} model, primed with 'ROMEO:':\n{report['sample']}")
    print(f"\nwrote {', '.join(report['plots'])}")
    print("next: `lstmbench bench` times one training step per backend at larger sizes, with the machine's "
          "FMA peak; `lstmbench train --help` trains on your own CSV or text")
    failed = [r["backend"] for r in report["rows"] if not r["verified"]]
    if failed:
        print(f"error: {', '.join(failed)} did not reproduce the reference's model", file=sys.stderr)
    return 1 if failed else 0
