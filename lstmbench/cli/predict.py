"""`lstmbench predict`: forecast a series or sample text from a checkpoint of `lstmbench train`."""

from __future__ import annotations

import json

from lstmbench import data as lbdata
from lstmbench.training import experiment
from lstmbench.training.checkpoint import load_checkpoint
from lstmbench.cli.common import (
    add_backend_args,
    at_most,
    chosen,
    choose_backend,
    index_column,
    natural,
    positive_float,
    say,
)
from lstmbench.errors import LstmbenchError

#: the longest forecast or sample one call makes (each step is a forward pass; a bound keeps a
#: typo such as --steps 1000000000 from running for days)
MAX_STEPS = 100_000
#: predict's flags per task kind (the rest do not apply to that kind of checkpoint)
FLAGS = {"series": ("steps", "csv", "index_column", "json", "series"),
         "text": ("prime", "length", "temperature", "seed")}


def register(sub) -> None:
    p = sub.add_parser("predict", help="forecast a series or sample text from a trained checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by `lstmbench train` (e.g. runs/latest/best.npz)")
    p.add_argument("--steps", type=at_most(MAX_STEPS),
                   help="series: values to forecast (default 5, or the model's horizon if it forecasts one column "
                        "from several and so cannot feed its forecasts back)")
    p.add_argument("--csv", help="series: forecast after the end of this CSV instead of the training data")
    p.add_argument("--index-column", help="series: index column of --csv (default: detected; none: no index)")
    p.add_argument("--series", help="series: the series to forecast, by name, for a model of several series "
                                    "(train --series-column)")
    p.add_argument("--prime", help="text: the start of the text to continue")
    p.add_argument("--length", type=at_most(MAX_STEPS, natural), help="text: symbols to sample (default 200)")
    p.add_argument("--temperature", type=positive_float, help="text: sampling temperature (default 0.8)")
    p.add_argument("--seed", type=natural, help="text: sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="series: machine-readable output")
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    task = experiment.check_meta(ckpt.model, ckpt.meta, args.checkpoint)
    wrong = [flag for kind, flags in FLAGS.items() if kind != task for flag in flags
             if getattr(args, flag) is not None and getattr(args, flag) is not False]  # 0 is given, too
    if wrong:
        names = " and ".join("--" + f.replace("_", "-") for f in wrong)
        raise LstmbenchError(f"{names} {'does' if len(wrong) == 1 else 'do'} not apply to {args.checkpoint}, a {task} "
                             "model; its flags are " + ", ".join("--" + f.replace("_", "-") for f in FLAGS[task]))
    backend = choose_backend(args.backend, args.threads)
    if not args.backend:
        say(f"backend {backend.name}{chosen(args.backend)}")
    if task == "series":
        return _forecast(args, backend, ckpt)
    sample = experiment.generate_text(backend, ckpt.model, ckpt.params, ckpt.meta, args.prime or "",
                                      200 if args.length is None else args.length,
                                      0.8 if args.temperature is None else args.temperature, args.seed or 0,
                                      progress=True)
    print(sample.text)
    how = ("one step per symbol from the carried state" if backend.capabilities.sequences
           else f"the last {ckpt.meta['seq_len']} symbols run again for each")
    prime = ("the prime's pass included, in the backend's own loop" if sample.prime_seconds is None
             else f"the prime's pass before: {sample.prime_seconds:.3f} s")
    say(f"sampled {sample.symbols} symbol(s) in {sample.seconds:.3f} s: {sample.per_second:,.0f} symbols/s on "
        f"{backend.name}, {how} ({prime})")
    return 0


def _forecast(args, backend, ckpt) -> int:
    meta = ckpt.meta
    feeds_back = len(meta["columns"]) == 1
    steps = args.steps or (5 if feeds_back else meta["horizon"])
    spec = dict(meta["source"])
    if args.csv:
        column, detect = index_column(args.index_column)
        spec = {"csv": args.csv, "columns": meta["columns"], "index_column": column, "detect_index": detect,
                "series_column": spec.get("series_column")}
    series = experiment.pick_series(meta, experiment.Source("series", spec).load(), args.series)
    values = experiment.forecast(backend, ckpt.model, ckpt.params, meta, series, steps, progress=True)
    col = meta["columns"][meta["target_column"]]
    when = lbdata.future_index(series.index, steps)
    labels = (lbdata.index_labels(when, lbdata.index_spacing(series.index)) if when is not None
              else [f"+{k}" for k in range(1, steps + 1)])
    if args.json:
        named = {"series": series.name} if "series" in meta else {}
        print(json.dumps({**named, "column": col, "index": series.index_name, "at": labels,
                          "forecast": experiment.finite_json(values.tolist())}, allow_nan=False))
        return 0
    last = (f"{series.index_name} {lbdata.index_labels(series.index[-1:], lbdata.index_spacing(series.index))[0]}"
            if series.index_name else f"row {len(series) - 1}")
    which = f"series {series.name!r}" if "series" in meta else "the series"
    print(f"next {steps} value(s) of {col!r} after the end of {which} ({last}):")
    for label, v in zip(labels, values):
        print(f"  {label}: {v:.6g}")
    return 0
