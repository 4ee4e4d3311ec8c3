"""The `lstmbench` command: list backends, train, predict."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from tqdm.auto import tqdm

import lstmbench as lb
from lstmbench import data as lbdata
from lstmbench import distributed, experiment
from lstmbench.checkpoint import check_output_dir, load_checkpoint
from lstmbench.config import OptimizerConfig
from lstmbench.errors import DivergenceError, LstmbenchError
from lstmbench.training import BEST_CHECKPOINT, LAST_CHECKPOINT, RunConfig, train


def say(message: str) -> None:
    """A line on stderr, from rank 0 only when several ranks run."""
    if distributed.current().is_root:
        print(message, file=sys.stderr)


def cmd_backends(args) -> int:
    infos = lb.list_backends()
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    rows = [("name", "available", "dtypes", "notes")]
    for i in infos:
        rows.append((i.name, "yes" if i.available else "no", ",".join(i.dtypes), i.description if i.available else i.reason))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return 0


def _backend(name: str | None, threads: int | None) -> lb.Backend:
    """The backend named, or the fastest one here; a warning when ``threads`` oversubscribes."""
    backend = lb.get_backend(name or lb.fastest_available())
    _warn_threads(threads)
    backend.set_threads(threads)
    return backend


def _chosen(args) -> str:
    """How the run's backend was chosen, for the first lines of output."""
    return "" if args.backend else " (the fastest available here; choose one with --backend)"


def _warn_threads(threads: int | None) -> None:
    usable = lb.default_threads()
    if threads and threads > usable:
        say(f"warning: --threads {threads} is more than the {usable} core(s) this process may use; "
            "threads will take turns on the cores, which is usually slower")


def cmd_train(args) -> int:
    out = Path(args.out)
    w = distributed.world()  # several ranks under mpiexec: data-parallel (docs/distributed.md)
    root = w.is_root
    with w.together("preparing the run"):
        if args.resume and args.overwrite:
            raise LstmbenchError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        threads = args.threads or (distributed.threads_per_rank(w) if w.distributed else None)
        backend = _backend(args.backend, threads)
        index_column, detect_index = _index_column(args)
        source = experiment.make_source(args.dataset, args.csv, args.columns, index_column, args.text_file,
                                        detect_index=detect_index)
        task = experiment.build_task(source, hidden_size=args.hidden, num_layers=args.layers, dtype=args.dtype,
                                     window=args.window, horizon=args.horizon, target=args.target,
                                     seq_len=args.seq_len)
        opt = OptimizerConfig(args.optimizer, lr=args.lr, momentum=args.momentum, clip_norm=args.clip_norm)
        run = RunConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, patience=args.patience,
                        out_dir=out, progress=not args.quiet)
    resume = None
    with w.together("opening the output folder"):  # only rank 0 reads and writes it
        if root:
            check_output_dir(out, needed_bytes=_output_bytes(task.cfg), what="--out")
        if root and args.resume:
            resume = load_checkpoint(out / LAST_CHECKPOINT)
        elif root and (out / LAST_CHECKPOINT).exists() and not args.overwrite:
            raise LstmbenchError(f"{out} already holds a run; pass --resume to continue it or --overwrite to "
                                 "replace it")
    params = lb.init_params(task.cfg, seed=args.seed)
    ranks = f", {w.size} ranks (data-parallel over MPI)" if w.distributed else ""
    say(f"lstmbench train: {source.spec} -> {task.cfg}")
    if args.csv and task.windows.series.index_name and args.index_column is None:
        say(f"  time index: {lbdata.index_description(task.windows.series)}, detected (not a value column; "
            "--index-column none to use it as one)")
    say(f"  backend {backend.name}{_chosen(args)} on {backend.threads} thread(s)"
        f"{' per rank' if ranks else ''}{ranks}, "
        f"{len(task.train[0])} train / {len(task.val[0])} val / {len(task.test[0])} test examples")

    def report(rec):
        tqdm.write(f"epoch {rec['epoch']:3d}  train {rec['train_loss']:.5f}  val {rec['val_loss']:.5f}  "
                   f"({rec['seconds']:.2f} s)", file=sys.stderr)

    try:
        result = train(backend, task.cfg, opt, params, task.train, task.val, run, resume=resume, meta=task.meta,
                       on_epoch=report, world=w)
    except DivergenceError as exc:
        say(f"error: {exc}")
        return 3
    if result.stop_reason == "interrupted":
        say(f"interrupted: state saved to {out / LAST_CHECKPOINT}; continue with --resume")
        return 130
    report_ = experiment.evaluate(backend, task, result.params, world=w)
    if not root:
        return 0
    metrics = {"model": task.cfg.to_dict(), "optimizer": opt.to_dict(), "backend": backend.name,
               "runtime": backend.runtime_info(), "ranks": w.size, "data": task.meta["source"],
               "stop_reason": result.stop_reason,
               "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss, "seconds": result.seconds,
               "history": result.history, "test": report_}
    experiment.write_metrics(out / "metrics.json", metrics)
    experiment.plot_run(backend, task, result.params, result.history, out / "predictions.png")
    print(f"backend {backend.name}: {backend.runtime_info()}{ranks}")
    print(f"stopped: {result.stop_reason}; best validation loss {result.best_val_loss:.5f} at epoch {result.best_epoch}")
    if "test_rmse" in report_:
        verdict = "beats" if report_["test_rmse"] < report_["naive_rmse"] else "does NOT beat"
        print(f"test RMSE {report_['test_rmse']:.4g} {report_['units']} vs naive last-value forecast "
              f"{report_['naive_rmse']:.4g}: the model {verdict} the naive forecast")
    else:
        verdict = "beats" if report_["test_loss"] < report_["naive_loss"] else "does NOT beat"
        print(f"test cross-entropy {report_['test_loss']:.4f} nats/symbol (accuracy {report_['test_accuracy']:.3f}) "
              f"vs unigram baseline {report_['naive_loss']:.4f} ({report_['naive_accuracy']:.3f}): the model {verdict} it")
    print(f"wrote {out / BEST_CHECKPOINT}, {out / LAST_CHECKPOINT}, {out / 'metrics.json'}, {out / 'predictions.png'}")
    return 0


def _index_column(args) -> tuple[str | None, bool]:
    """(index column, whether to detect one) from --index-column: a name, "none", or not given."""
    if args.index_column is not None and args.index_column.lower() == "none":
        return None, False
    return args.index_column, True


def _output_bytes(cfg: lb.ModelConfig) -> int:
    """About what a run writes: best.npz, last.npz (parameters and Adam's two moments),
    their temporary copies while replaced, metrics and the plot."""
    return 8 * cfg.np_dtype.itemsize * cfg.num_params() + 2_000_000


#: predict's flags per task kind (the rest do not apply to that kind of checkpoint)
PREDICT_FLAGS = {"series": ("steps", "csv", "index_column", "json"),
                 "text": ("prime", "length", "temperature", "seed")}


def cmd_predict(args) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    meta = ckpt.meta
    if "task" not in meta:
        raise LstmbenchError(f"{args.checkpoint} was not written by `lstmbench train` (no task description)")
    task = meta["task"]
    wrong = [flag for kind, flags in PREDICT_FLAGS.items() if kind != task for flag in flags
             if getattr(args, flag) is not None and getattr(args, flag) is not False]  # 0 is given, too
    if wrong:
        names = " and ".join("--" + f.replace("_", "-") for f in wrong)
        raise LstmbenchError(f"{names} {'does' if len(wrong) == 1 else 'do'} not apply to {args.checkpoint}, a {task} "
                             "model; its flags are "
                             + ", ".join("--" + f.replace("_", "-") for f in PREDICT_FLAGS[task]))
    backend = _backend(args.backend, args.threads)
    if not args.backend:
        say(f"backend {backend.name}{_chosen(args)}")
    if task == "series":
        steps = args.steps or 5
        spec = dict(meta["source"])
        if args.csv:
            index_column, detect_index = _index_column(args)
            spec = {"csv": args.csv, "columns": meta["columns"], "index_column": index_column,
                    "detect_index": detect_index}
        series = experiment.Source("series", spec).load()
        values = experiment.forecast(backend, ckpt.model, ckpt.params, meta, series, steps)
        col = meta["columns"][meta["target_column"]]
        when = lbdata.future_index(series.index, steps)
        labels = [str(v) for v in when] if when is not None else [f"+{k}" for k in range(1, steps + 1)]
        if args.json:
            print(json.dumps({"column": col, "index": series.index_name, "at": labels, "forecast": values.tolist()}))
        else:
            last = f"{series.index_name} {series.index[-1]}" if series.index_name else f"row {len(series) - 1}"
            print(f"next {steps} value(s) of {col!r} after the end of the series ({last}):")
            for label, v in zip(labels, values):
                print(f"  {label}: {v:.6g}")
        return 0
    print(experiment.sample_text(backend, ckpt.model, ckpt.params, meta, args.prime or "",
                                 200 if args.length is None else args.length,
                                 0.8 if args.temperature is None else args.temperature,
                                 args.seed or 0))
    return 0


def cmd_bench(args) -> int:
    from lstmbench import bench

    _warn_threads(args.threads)
    if args.distributed:
        return bench_distributed(args)
    grid = scaling = None
    if args.suite is not None:
        grid = bench.run_suite(args.suite or None, args.backends, args.dtype, args.threads, args.repeats,
                               with_torch=not args.no_torch, progress=not args.quiet)
    elif not args.scaling_only:
        model = dict(input_size=args.input_size, output_size=args.output_size, layers=args.layers, loss=args.loss,
                     many_to_many=args.many_to_many, one_hot=args.one_hot)
        lb.ModelConfig(args.input_size, 1, args.output_size, args.layers, args.loss, args.many_to_many)  # checks it
        grid = bench.run_grid(args.backends, args.hidden, args.batch, args.steps, args.dtype, args.threads,
                              args.repeats, with_torch=not args.no_torch, progress=not args.quiet, model=model)
    if args.scaling or args.scaling_only:
        scaling = bench.run_scaling(args.backends, hidden=args.hidden[0], base_n=args.scaling_n, steps=args.steps,
                                    dtype=args.dtype, threads=args.threads, progress=not args.quiet)
    if args.json:
        print(json.dumps({"grid": grid, "scaling": scaling}, indent=2))
    else:
        if grid:
            print(bench.format_grid(grid))
        if scaling:
            print(bench.format_scaling(scaling))
    if args.plot:
        bench.plot(grid, scaling, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    failed = [r for r in (grid or {}).get("rows", []) if r["status"] == "FAILED"]
    return 1 if failed else 0


def bench_distributed(args) -> int:
    """`mpiexec -n P lstmbench bench --distributed`: scaling over 1 .. P ranks."""
    from lstmbench import bench

    w = distributed.world()
    with w.together("preparing the benchmark"):
        if args.backends and len(args.backends) > 1:
            raise LstmbenchError("--distributed times one backend; name one with --backends")
        name = args.backends[0] if args.backends else lb.fastest_available()
        lb.get_backend(name)
    report = bench.run_distributed(w, name, hidden=args.hidden[0], batch=args.batch[0], steps=args.steps,
                                   dtype=args.dtype, batches=args.batches, threads=args.threads,
                                   repeats=args.repeats, progress=not args.quiet)
    if w.is_root:
        print(json.dumps(report, indent=2) if args.json else bench.format_distributed(report))
        if not w.distributed:
            print("(one process: start it with `mpiexec -n P lstmbench bench --distributed` for P ranks)",
                  file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """The same model trained on every backend here, verified against the reference, compared."""
    from lstmbench import demo

    report = demo.run_demo(text=args.text, epochs=args.epochs, hidden=args.hidden, dtype=args.dtype,
                           backends=args.backends, out=args.out, progress=not args.quiet,
                           say=lambda m: print(m, flush=True))
    print()
    print(demo.format_demo(report))
    if report["task"] == "text":
        print(f"\nsampled from the {report['fastest']} model, primed with 'ROMEO:':\n{report['sample']}")
    print(f"\nwrote {', '.join(report['plots'])}")
    print("next: `lstmbench bench` times one training step per backend at larger sizes, with the machine's "
          "FMA peak; `lstmbench train --help` trains on your own CSV or text")
    failed = [r["backend"] for r in report["rows"] if not r["verified"]]
    if failed:
        print(f"error: {', '.join(failed)} did not reproduce the reference's model", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstmbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lstmbench {lb.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list backends, whether they run here, and why not")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("train", help="train a model on a bundled dataset, a CSV file or a text file")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", help=f"bundled or synthetic dataset: {', '.join(experiment.dataset_names())}")
    data.add_argument("--csv", help="a CSV file with a header row (a time series)")
    data.add_argument("--columns", nargs="+", help="CSV value columns to use (default: every numeric column)")
    data.add_argument("--index-column", help="CSV column holding the time index, e.g. year (default: the first column "
                                             "if it holds strictly increasing integers or ISO dates; none: no index)")
    data.add_argument("--target", default=0, type=_column, help="column to forecast, by name or position (default: the first)")
    data.add_argument("--text-file", help="a UTF-8 text file for next-symbol prediction")
    data.add_argument("--window", type=_positive, default=20, help="input steps per example (series; default 20)")
    data.add_argument("--horizon", type=_positive, default=1, help="values to forecast after each window (default 1)")
    data.add_argument("--seq-len", type=_positive, default=64, help="symbols per sequence (text; default 64)")
    model = p.add_argument_group("model and training")
    model.add_argument("--hidden", type=_positive, default=32, help="hidden size H (default 32)")
    model.add_argument("--layers", type=_positive, default=1, help="stacked LSTM layers (default 1)")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    model.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    model.add_argument("--lr", type=_positive_float, default=0.01, help="learning rate (default 0.01)")
    model.add_argument("--momentum", type=_fraction, default=0.0, help="SGD momentum (default 0)")
    model.add_argument("--clip-norm", type=_positive_float, default=None, help="clip the global gradient norm to this")
    model.add_argument("--batch-size", type=_positive, default=32)
    model.add_argument("--epochs", type=_positive, default=20)
    model.add_argument("--patience", type=_positive, default=None, help="early stopping: epochs without improvement")
    model.add_argument("--seed", type=_natural, default=0)
    _add_backend_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    out.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    out.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="forecast a series or sample text from a trained checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by `lstmbench train` (e.g. runs/latest/best.npz)")
    p.add_argument("--steps", type=_positive, help="series: values to forecast (default 5)")
    p.add_argument("--csv", help="series: forecast after the end of this CSV instead of the training data")
    p.add_argument("--index-column", help="series: index column of --csv (default: detected; none: no index)")
    p.add_argument("--prime", help="text: the start of the text to continue")
    p.add_argument("--length", type=_natural, help="text: symbols to sample (default 200)")
    p.add_argument("--temperature", type=_positive_float, help="text: sampling temperature (default 0.8)")
    p.add_argument("--seed", type=_natural, help="text: sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="series: machine-readable output")
    _add_backend_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", help="verified timings of a training step per backend, and dataset scaling")
    p.add_argument("--backends", nargs="+", help="backends to time (default: every available one)")
    p.add_argument("--hidden", type=_positive, nargs="+", default=[32, 128], help="hidden sizes H (default 32 128)")
    p.add_argument("--batch", type=_positive, nargs="+", default=[32, 128], help="batch sizes B (default 32 128)")
    p.add_argument("--steps", type=_positive, default=64, help="sequence length T (default 64)")
    model = p.add_argument_group("the model timed (default: D=1, one layer, O=1, many-to-one MSE)")
    model.add_argument("--input-size", type=_positive, default=1, help="inputs per step D")
    model.add_argument("--layers", type=_positive, default=1, help="stacked LSTM layers")
    model.add_argument("--output-size", type=_positive, default=1, help="outputs O (classes for xent)")
    model.add_argument("--loss", choices=["mse", "xent"], default="mse")
    model.add_argument("--many-to-many", action="store_true", help="the head on every step")
    model.add_argument("--one-hot", action="store_true", help="one-hot inputs (D symbols), as a text model sees them")
    p.add_argument("--suite", nargs="*", metavar="WORKLOAD",
                   help="time the realistic workloads instead of a grid: all, or those named "
                        "(char-onehot, forecast-short, hourly-multivariate, long-b1, long-b2, odd-sizes)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=_positive, default=None, help="threads for the backends (default: all cores)")
    p.add_argument("--repeats", type=_positive, default=7, help="timed repeats per point (default 7)")
    p.add_argument("--no-torch", action="store_true", help="leave out the torch.nn.LSTM peer row")
    p.add_argument("--scaling", action="store_true", help="also time epochs over N, 2N, 4N, 8N sequences")
    p.add_argument("--scaling-only", action="store_true", help="only the scaling report")
    p.add_argument("--scaling-n", type=_positive, default=1000, help="smallest dataset of the scaling report (default 1000)")
    p.add_argument("--distributed", action="store_true",
                   help="under mpiexec: data-parallel strong and weak scaling over 1 .. P ranks (first --backends, "
                        "--hidden, --batch; per-rank batch for weak scaling)")
    p.add_argument("--batches", type=_positive, default=8, help="--distributed: minibatches per epoch (default 8)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", help="write speedup bars (and scaling curves) to this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the same model trained on every backend, verified and compared")
    p.add_argument("--text", action="store_true", help="a next-character model of the bundled text instead of the "
                                                       "sunspot forecaster")
    p.add_argument("--epochs", type=_positive, help="epochs (default 30; 10 with --text)")
    p.add_argument("--hidden", type=_positive, help="hidden size H (default 48; 64 with --text)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--backends", nargs="+", help="backends to train (default: every available one; the reference "
                                                 "always)")
    p.add_argument("--out", default="runs/demo", help="folder for the plots (default runs/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    from lstmbench import report
    from lstmbench import check as check_command  # imports Hypothesis only when run

    check_command.register(sub)
    report.register(sub)
    return parser


def _positive(text: str) -> int:
    """An integer >= 1 (argparse reports an ArgumentTypeError as a one-line usage error
    naming the flag: "argument --hidden: must be at least 1, got 0")."""
    return _number(text, int, lambda v: v >= 1, "must be at least 1")


def _natural(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "must be 0 or more")


def _positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, lambda v: 0 < v < float("inf"), "must be a positive finite number")


def _fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "must be at least 0 and below 1")


def _number(text: str, kind, ok, rule: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value


def _column(text: str) -> int | str:
    """A column given by position (digits) or by name."""
    return int(text) if text.isdigit() else text


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", help="backend name (see `lstmbench backends`; default: the fastest available, "
                                     f"first of {', '.join(lb.registry.FASTEST_FIRST)})")
    g.add_argument("--threads", type=_positive, default=None, help="threads the backend may use (default: all cores)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BaseException as exc:
        w = distributed.current()
        if w.distributed and not distributed.raised_on_every_rank(exc) and not isinstance(exc, SystemExit):
            # this rank alone failed: the others would wait for it in a collective forever
            detail = str(exc) if isinstance(exc, LstmbenchError) else traceback.format_exc()
            print(f"rank {w.rank} of {w.size}: error: {detail}\nending all {w.size} ranks", file=sys.stderr,
                  flush=True)
            w.abort(130 if isinstance(exc, KeyboardInterrupt) else 2)
        if isinstance(exc, distributed.DistributedError) and distributed.launched()[1] != 0:
            return 2  # rank 0 says it (also when MPI could not be set up: the launcher's rank)
        if isinstance(exc, LstmbenchError):
            say(f"error: {exc}")
            return 2
        if isinstance(exc, KeyboardInterrupt):  # outside the training loop, which saves its own state
            say("interrupted")
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
