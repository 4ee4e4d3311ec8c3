"""The `lstmbench` command: list backends, train, predict."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from tqdm.auto import tqdm

import lstmbench as lb
from lstmbench import distributed, experiment
from lstmbench.checkpoint import load_checkpoint
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


def _backend(name: str, threads: int | None) -> lb.Backend:
    backend = lb.get_backend(name)
    backend.set_threads(threads)
    return backend


def cmd_train(args) -> int:
    out = Path(args.out)
    w = distributed.world()  # several ranks under mpiexec: data-parallel (docs/distributed.md)
    root = w.is_root
    with w.together("preparing the run"):
        threads = args.threads or (distributed.threads_per_rank(w) if w.distributed else None)
        backend = _backend(args.backend, threads)
        source = experiment.make_source(args.dataset, args.csv, args.columns, args.index_column, args.text_file)
        task = experiment.build_task(source, hidden_size=args.hidden, num_layers=args.layers, dtype=args.dtype,
                                     window=args.window, horizon=args.horizon, target=args.target,
                                     seq_len=args.seq_len)
        opt = OptimizerConfig(args.optimizer, lr=args.lr, momentum=args.momentum, clip_norm=args.clip_norm)
        run = RunConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, patience=args.patience,
                        out_dir=out, progress=not args.quiet)
    resume = None
    with w.together("opening the output folder"):  # only rank 0 reads and writes it
        if root and args.resume:
            resume = load_checkpoint(out / LAST_CHECKPOINT)
        elif root and (out / LAST_CHECKPOINT).exists() and not args.overwrite:
            raise LstmbenchError(f"{out} already holds a run; pass --resume to continue it or --overwrite to "
                                 "replace it")
    params = lb.init_params(task.cfg, seed=args.seed)
    ranks = f", {w.size} ranks (data-parallel over MPI)" if w.distributed else ""
    say(f"lstmbench train: {source.spec} -> {task.cfg}")
    say(f"  backend {backend.name} on {backend.threads} thread(s){' per rank' if ranks else ''}{ranks}, "
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


def cmd_predict(args) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    meta = ckpt.meta
    if "task" not in meta:
        raise LstmbenchError(f"{args.checkpoint} was not written by `lstmbench train` (no task description)")
    backend = _backend(args.backend, args.threads)
    if meta["task"] == "series":
        spec = dict(meta["source"])
        if args.csv:
            spec = {"csv": args.csv, "columns": meta["columns"], "index_column": args.index_column}
        series = experiment.Source("series", spec).load()
        values = experiment.forecast(backend, ckpt.model, ckpt.params, meta, series, args.steps)
        col = meta["columns"][meta["target_column"]]
        if args.json:
            print(json.dumps({"column": col, "forecast": values.tolist()}))
        else:
            print(f"next {args.steps} value(s) of {col!r} after the end of the series:")
            for k, v in enumerate(values, 1):
                print(f"  +{k}: {v:.6g}")
        return 0
    print(experiment.sample_text(backend, ckpt.model, ckpt.params, meta, args.prime, args.length,
                                 args.temperature, args.seed))
    return 0


def cmd_bench(args) -> int:
    from lstmbench import bench

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
        available = [b.name for b in lb.list_backends() if b.available]
        name = args.backends[0] if args.backends else next((n for n in ("c", "numba") if n in available), "numpy")
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
    """A short training with the fastest available backend, then a quick comparison."""
    from lstmbench import bench

    available = [b.name for b in lb.list_backends() if b.available]
    fast = next((n for n in ("c", "numba") if n in available), "numpy")
    print(f"== 1. training a forecaster of yearly sunspots with the {fast!r} backend", flush=True)
    code = main(["train", "--dataset", "sunspots", "--epochs", str(args.epochs), "--backend", fast,
                 "--out", args.out, "--overwrite", *(["--quiet"] if args.quiet else [])])
    if code:
        return code
    print("\n== 2. the same training step on every available backend (verified first)", flush=True)
    grid = bench.run_grid(None, (32, 128), (32,), steps=64, repeats=5, progress=not args.quiet)
    print(bench.format_grid(grid))
    return 1 if any(r["status"] == "FAILED" for r in grid["rows"]) else 0


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
    data.add_argument("--index-column", help="CSV column holding the time index (e.g. year)")
    data.add_argument("--target", default=0, type=_column, help="column to forecast, by name or position (default: the first)")
    data.add_argument("--text-file", help="a UTF-8 text file for next-symbol prediction")
    data.add_argument("--window", type=int, default=20, help="input steps per example (series; default 20)")
    data.add_argument("--horizon", type=int, default=1, help="values to forecast after each window (default 1)")
    data.add_argument("--seq-len", type=int, default=64, help="symbols per sequence (text; default 64)")
    model = p.add_argument_group("model and training")
    model.add_argument("--hidden", type=int, default=32, help="hidden size H (default 32)")
    model.add_argument("--layers", type=int, default=1, help="stacked LSTM layers (default 1)")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    model.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    model.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    model.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    model.add_argument("--clip-norm", type=float, default=None, help="clip the global gradient norm to this")
    model.add_argument("--batch-size", type=int, default=32)
    model.add_argument("--epochs", type=int, default=20)
    model.add_argument("--patience", type=int, default=None, help="early stopping: epochs without improvement")
    model.add_argument("--seed", type=int, default=0)
    _add_backend_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    out.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    out.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="forecast a series or sample text from a trained checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by `lstmbench train` (e.g. runs/latest/best.npz)")
    p.add_argument("--steps", type=int, default=5, help="series: values to forecast (default 5)")
    p.add_argument("--csv", help="series: forecast after the end of this CSV instead of the training data")
    p.add_argument("--index-column", help="series: index column of --csv")
    p.add_argument("--prime", default="", help="text: the start of the text to continue")
    p.add_argument("--length", type=int, default=200, help="text: symbols to sample (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="text: sampling temperature (default 0.8)")
    p.add_argument("--seed", type=int, default=0, help="text: sampling seed")
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
    p.add_argument("--scaling-n", type=int, default=1000, help="smallest dataset of the scaling report (default 1000)")
    p.add_argument("--distributed", action="store_true",
                   help="under mpiexec: data-parallel strong and weak scaling over 1 .. P ranks (first --backends, "
                        "--hidden, --batch; per-rank batch for weak scaling)")
    p.add_argument("--batches", type=int, default=8, help="--distributed: minibatches per epoch (default 8)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", help="write speedup bars (and scaling curves) to this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="a short training and a quick side-by-side comparison of the backends")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def _positive(text: str) -> int:
    """An integer >= 1 (argparse turns the ValueError into a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _column(text: str) -> int | str:
    """A column given by position (digits) or by name."""
    return int(text) if text.isdigit() else text


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", default="numpy", help="backend name (see `lstmbench backends`; default numpy)")
    g.add_argument("--threads", type=int, default=None, help="threads the backend may use (default: all cores)")


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
