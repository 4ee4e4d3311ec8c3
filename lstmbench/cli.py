"""The `lstmbench` command: list backends, train, predict."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import lstmbench as lb
from lstmbench import distributed
from lstmbench.experiment import finite_json
from lstmbench.commands import predict, train
from lstmbench.commands.common import natural as _natural  # noqa: F401  (check.py's flags)
from lstmbench.commands.common import positive as _positive
from lstmbench.commands.common import positive_float as _positive_float  # noqa: F401
from lstmbench.commands.common import say, usable_threads
from lstmbench.errors import LstmbenchError


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


def cmd_bench(args) -> int:
    from lstmbench import bench

    args.threads = usable_threads(args.threads)
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
        print(json.dumps(finite_json({"grid": grid, "scaling": scaling}), indent=2, allow_nan=False))
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
        print(json.dumps(finite_json(report), indent=2, allow_nan=False) if args.json else bench.format_distributed(report))
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

    train.register(sub)
    predict.register(sub)

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


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # each line as it is printed, also into a pipe or a file
        sys.stdout.reconfigure(line_buffering=True)
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
        if isinstance(exc, BrokenPipeError):  # `lstmbench backends | head -1`: the reader left early
            _discard_stdout()
            say("error: the output was closed before lstmbench finished writing it (a pipe into head, say)")
            return 2
        if isinstance(exc, MemoryError):  # the size checks missed one: still a sentence, not a traceback
            say(f"error: out of memory{f' ({exc})' if str(exc) else ''}; try smaller sizes (--hidden, --layers, "
                "--batch-size, a shorter file)")
            return 2
        raise


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush at exit does not raise
    BrokenPipeError again (the recipe of Python's signal module docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests capture stdout)
        pass


if __name__ == "__main__":
    sys.exit(main())
