"""`lstmbench bench`: verified timings of a training step per backend (a grid or the suite of
workloads; or a forward pass, --forward-only; or a streamed step at B=1, --latency), dataset
scaling, and data-parallel scaling under mpiexec."""

from __future__ import annotations

import argparse
import json
import sys

import lstmbench as lb
from lstmbench.cli.common import AUTO, fraction, positive, thread_count, usable_threads
from lstmbench.errors import LstmbenchError
from lstmbench.training import distributed
from lstmbench.training.experiment import finite_json


def register(sub) -> None:
    p = sub.add_parser("bench", help="verified timings of a training step (or a forward pass, or a streamed step) per "
                                      "backend, and dataset scaling")
    p.add_argument("--backends", nargs="+", help="backends to time (default: every available one)")
    p.add_argument("--hidden", type=positive, nargs="+", default=[32, 128], help="hidden sizes H (default 32 128)")
    p.add_argument("--batch", type=positive, nargs="+", help="batch sizes B (default 32 128)")
    p.add_argument("--steps", type=positive, default=64, help="sequence length T (default 64)")
    model = p.add_argument_group("the model timed (default: D=1, one layer, O=1, many-to-one MSE)")
    model.add_argument("--input-size", type=positive, default=1, help="inputs per step D")
    model.add_argument("--layers", type=positive, default=1, help="stacked LSTM layers")
    model.add_argument("--output-size", type=positive, default=1, help="outputs O (classes for xent)")
    model.add_argument("--loss", choices=["mse", "xent"], default="mse")
    model.add_argument("--many-to-many", action="store_true", help="the head on every step")
    model.add_argument("--one-hot", action="store_true", help="one-hot inputs (D symbols), as a text model sees them")
    model.add_argument("--dropout", type=fraction, default=0.0,
                       help="dropout in every timed training step (also with --suite; leaves torch out)")
    model.add_argument("--lengths", type=length_distribution, metavar="uniform:MIN[:MAX]",
                       help="rows of different lengths, uniform in [MIN, MAX] (MAX default --steps); backends take "
                            "them as lengths, torch as packed sequences")
    p.add_argument("--suite", nargs="*", metavar="WORKLOAD",
                   help="time the realistic workloads instead of a grid: all, or those named "
                        "(char-onehot, forecast-short, hourly-multivariate, long-b1, long-b2, odd-sizes, varlen, varlen-full); "
                        "deepbench: DeepBench's LSTM shapes that fit here (training; with --forward-only, inference), "
                        "deepbench-train, deepbench-inference, or one shape, db-train-HxBxT or db-infer-HxBxT")
    p.add_argument("--forward-only", action="store_true",
                   help="time a forward pass (inference, no gradient; torch under torch.no_grad()) instead of a "
                        "training step (grid and suite)")
    p.add_argument("--latency", action="store_true",
                   help="time one step of a streaming model instead (B=1, the state (h, c) carried from call to call) "
                        "per backend and torch, at each --hidden: median and p90 microseconds per step; --steps "
                        "steps per stream, --repeats streams")
    p.add_argument("--generation", action="store_true",
                   help="time text generation instead (B=1, a 2 x 256 character model): each backend with its state "
                        "carried, its window re-run, and torch's stepwise loop, in symbols per second")
    p.add_argument("--symbols", type=positive, default=1000, help="--generation: symbols per timed call (default 1000)")
    p.add_argument("--seq-len", type=positive, default=64,
                   help="--generation: the window the re-run rows run again for every symbol (default 64)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="threads for the backends: a number (default: all cores), or auto: each step on the count "
                        "that is fastest now, up to all cores, as `train` runs by default (grid and suite)")
    p.add_argument("--repeats", type=positive, default=7, help="timed repeats per point (default 7)")
    p.add_argument("--no-torch", action="store_true", help="leave out the torch.nn.LSTM peer row")
    p.add_argument("--scaling", action="store_true", help="also time epochs over N, 2N, 4N, 8N sequences")
    p.add_argument("--scaling-only", action="store_true", help="only the scaling report")
    p.add_argument("--scaling-n", type=positive, default=1000, help="smallest dataset of the scaling report (default 1000)")
    p.add_argument("--distributed", action="store_true",
                   help="under mpiexec: data-parallel strong and weak scaling over 1 .. P ranks (first --backends, "
                        "--hidden, --batch; per-rank batch for weak scaling)")
    p.add_argument("--batches", type=positive, default=8, help="--distributed: minibatches per epoch (default 8)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", help="write speedup bars (and scaling curves) to this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from lstmbench.bench.formatting import format_grid, format_scaling, plot
    from lstmbench.bench.run import run_grid, run_suite
    from lstmbench.bench.scaling import run_scaling

    auto = args.threads == AUTO
    check_modes(args, auto)
    batch_given, args.batch = args.batch is not None, args.batch or [32, 128]
    args.threads = None if auto else usable_threads(args.threads)
    if args.distributed:
        return bench_distributed(args)
    if args.generation:
        return bench_generation(args)
    if args.latency:
        return bench_latency(args, batch_given)
    grid = scaling = None
    if args.suite is not None:
        grid = run_suite(args.suite or None, args.backends, args.dtype, AUTO if auto else args.threads, args.repeats,
                         with_torch=not args.no_torch, progress=not args.quiet, dropout=args.dropout,
                         forward_only=args.forward_only)
    elif not args.scaling_only:
        grid = run_grid(args.backends, args.hidden, args.batch, args.steps, args.dtype, AUTO if auto else args.threads,
                        args.repeats, with_torch=not args.no_torch, progress=not args.quiet, model=grid_model(args),
                        forward_only=args.forward_only)
    if args.scaling or args.scaling_only:
        scaling = run_scaling(args.backends, hidden=args.hidden[0], base_n=args.scaling_n, steps=args.steps,
                              dtype=args.dtype, threads=args.threads, progress=not args.quiet)
    if args.json:
        print(json.dumps(finite_json({"grid": grid, "scaling": scaling}), indent=2, allow_nan=False))
    else:
        if grid:
            print(format_grid(grid))
        if scaling:
            print(format_scaling(scaling))
    if args.plot:
        plot(grid, scaling, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    failed = [r for r in (grid or {}).get("rows", []) if r["status"] == "FAILED"]
    return 1 if failed else 0


#: (flag, flag, why): flags that do not go together
CONFLICTS = (
    ("--forward-only", "--dropout", "a forward pass has no dropout (its masks are drawn in training steps only)"),
    ("--latency", "--suite", "--latency streams one model at each --hidden (B=1); the suite's workloads are batches"),
    ("--latency", "--forward-only", "--latency times forward steps already"),
    ("--latency", "--lengths", "a streamed step is one step of every row"),
    ("--latency", "--dropout", "a streamed step is a forward pass: no dropout"),
    ("--latency", "--threads auto", "give it a thread count"),
    ("--latency", "--scaling", "they time other things"),
    ("--forward-only", "--scaling-only", "the scaling report times epochs"),
    *((first, other, "they time other things") for first in ("--latency", "--forward-only")
      for other in ("--generation", "--distributed")),
)


def check_modes(args, auto: bool) -> None:
    """One error naming the two flags, for flags that do not go together (before anything runs)."""
    given = {"--forward-only": args.forward_only, "--dropout": bool(args.dropout), "--latency": args.latency,
             "--suite": args.suite is not None, "--lengths": bool(args.lengths), "--threads auto": auto,
             "--scaling": args.scaling or args.scaling_only, "--scaling-only": args.scaling_only,
             "--generation": args.generation, "--distributed": args.distributed}
    for first, second, why in CONFLICTS:
        if given[first] and given[second]:
            raise LstmbenchError(f"{first} does not go with {second}: {why}")


def grid_model(args) -> dict:
    """The model of the grid (and of --latency) from the model flags, checked."""
    lb.ModelConfig(args.input_size, 1, args.output_size, args.layers, args.loss, args.many_to_many)  # checks it
    return dict(input_size=args.input_size, output_size=args.output_size, layers=args.layers, loss=args.loss,
                many_to_many=args.many_to_many, one_hot=args.one_hot,
                lengths=args.lengths and checked_lengths(args.lengths, args.steps), dropout=args.dropout)


def bench_latency(args, batch_given: bool) -> int:
    """`lstmbench bench --latency`: one streamed step at B=1 per backend and torch, per hidden size."""
    from lstmbench.bench.latency import format_latency, run_latency
    from lstmbench.bench.run import default_backends

    if batch_given:
        raise LstmbenchError("--latency times one row (B=1); leave out --batch")
    model = {k: v for k, v in grid_model(args).items() if k not in ("lengths", "dropout")}
    names = args.backends or default_backends()[0]
    for name in names:
        lb.get_backend(name)  # one that cannot run here: its error, before anything is timed
    report = run_latency(names, args.hidden, args.steps, args.dtype, args.threads, args.repeats,
                         with_torch=not args.no_torch, model=model)
    print(json.dumps(finite_json(report), indent=2, allow_nan=False) if args.json else format_latency(report))
    return 1 if any(r["status"] == "FAILED" for r in report["rows"]) else 0


def bench_generation(args) -> int:
    """`lstmbench bench --generation`: symbols per second per backend, beside torch's loop."""
    from lstmbench.bench.generation import format_generation, run_generation
    from lstmbench.bench.run import default_backends

    names = args.backends or default_backends()[0]
    for name in names:
        lb.get_backend(name)  # one that cannot run here: its error, before anything is timed
    report = run_generation(names, args.dtype, args.threads, args.repeats, args.symbols, args.seq_len,
                            with_torch=not args.no_torch)
    print(json.dumps(finite_json(report), indent=2, allow_nan=False) if args.json else format_generation(report))
    return 1 if any(r["status"] == "FAILED" for r in report["rows"]) else 0


def length_distribution(text: str) -> tuple[int, int | None]:
    """--lengths uniform:MIN[:MAX] -> (MIN, MAX or None: the steps)."""
    parts = text.split(":")
    try:
        if parts[0] != "uniform" or len(parts) not in (2, 3):
            raise ValueError
        lo, hi = int(parts[1]), int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected uniform:MIN or uniform:MIN:MAX (whole numbers), got {text!r}")
    if lo < 1 or (hi is not None and hi < lo):
        raise argparse.ArgumentTypeError(f"lengths need 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def checked_lengths(lengths: tuple[int, int | None], steps: int) -> tuple[int, int]:
    """The distribution's (MIN, MAX) within 1 .. --steps, or an error naming both."""
    lo, hi = lengths[0], steps if lengths[1] is None else lengths[1]
    if hi > steps:
        raise LstmbenchError(f"--lengths reaches {hi}, past --steps {steps}: a row has at most T steps")
    return lo, hi


def bench_distributed(args) -> int:
    """`mpiexec -n P lstmbench bench --distributed`: scaling over 1 .. P ranks."""
    from lstmbench.bench.distributed import run_distributed
    from lstmbench.bench.formatting import format_distributed

    w = distributed.world()
    with w.together("preparing the benchmark"):
        if args.backends and len(args.backends) > 1:
            raise LstmbenchError("--distributed times one backend; name one with --backends")
        name = args.backends[0] if args.backends else lb.fastest_available()
        lb.get_backend(name)
    report = run_distributed(w, name, hidden=args.hidden[0], batch=args.batch[0], steps=args.steps,
                             dtype=args.dtype, batches=args.batches, threads=args.threads,
                             repeats=args.repeats, progress=not args.quiet)
    if w.is_root:
        print(json.dumps(finite_json(report), indent=2, allow_nan=False) if args.json else format_distributed(report))
        if not w.distributed:
            print("(one process: start it with `mpiexec -n P lstmbench bench --distributed` for P ranks)",
                  file=sys.stderr)
    return 0
