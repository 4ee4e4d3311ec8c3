"""`lstmbench train`: train a model on a bundled dataset, a CSV file or a text file.

The output folder holds one run and is locked while the run writes to it. A resumed run takes
its settings (data, model, optimizer, batch size, seed, backend) from its last checkpoint; a flag
given with --resume must agree with them, except the epoch budget, patience, the backend and
its threads, which may change.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

import lstmbench as lb
from lstmbench import data as lbdata
from lstmbench.training import distributed
from lstmbench.training import experiment, scoring
from lstmbench.training.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PLOT_FILE,
    Checkpoint,
    RunFolder,
    check_output_dir,
    load_checkpoint,
)
from lstmbench.cli.common import (
    AUTO,
    add_backend_args,
    chosen,
    choose_backend,
    fraction,
    index_column,
    natural,
    non_negative_float,
    positive,
    positive_float,
    say,
    thread_tuner,
    threads_text,
)
from lstmbench.config import OPTIMIZERS, OptimizerConfig
from lstmbench.errors import CheckpointError, DivergenceError, LstmbenchError, UnsupportedError
from lstmbench.resources import available_memory, check_fits, gigabytes, training_bytes
from lstmbench.training.loop import RunConfig, train
from lstmbench.training.schedule import APPLIES_TO as SCHEDULE_SETTINGS, SCHEDULES, ScheduleConfig
from lstmbench.training.threads import ThreadTuner

#: the settings a run is made of, with their defaults for a new run (a resumed run has its own).
#: The learning rate is 10x OptimizerConfig's (torch's Adam default): see docs/training.md.
DEFAULTS: dict[str, Any] = {
    "window": 20, "horizon": 1, "target": None, "seq_len": 64, "hidden": 32, "layers": 1, "dtype": "float32",
    "optimizer": "adam", "lr": 0.01, "momentum": 0.0, "clip_norm": None, "batch_size": 32, "epochs": 20,
    "patience": None, "seed": 0, "stateful": False, "per_line": False, "min_length": None,
    "season": None, "target_transform": "level", "dropout": 0.0, "weight_decay": None, "lr_schedule": "constant",
    **{name: None for name in SCHEDULE_SETTINGS},
}
#: --weight-decay when not given: torch.optim.AdamW's default for adamw, none for sgd and adam
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01}
#: settings a resumed run may change; any other flag given with --resume must equal the run's
MAY_CHANGE = ("epochs", "patience")
#: flags that only one kind of data takes
ONLY_FOR = {"window": "series", "horizon": "series", "target": "series", "season": "series",
            "target_transform": "series", "columns": "csv",
            "index_column": "csv", "seq_len": "text", "stateful": "text", "per_line": "text", "series_column": "csv",
            "min_length": "csv"}
DATA_FLAGS = ("dataset", "csv", "text_file", "columns", "index_column", "series_column")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model on a bundled dataset, a CSV file or a text file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (with --resume: the run's own unless given)")
    data.add_argument("--dataset", help=f"bundled or synthetic dataset: {', '.join(experiment.dataset_names())}")
    data.add_argument("--csv", help="a CSV file with a header row (a time series)")
    data.add_argument("--columns", nargs="+", help="CSV value columns to use (default: every numeric column)")
    data.add_argument("--index-column", help="CSV column holding the time index, e.g. year (default: detected, see "
                                             "docs/training.md; none: no index)")
    data.add_argument("--target", type=_column, help="column to forecast, by name or position (default: the first "
                                                     "value column that is not a time column)")
    data.add_argument("--text-file", help="a UTF-8 text file for next-symbol prediction")
    data.add_argument("--window", type=positive, help="series: input steps per example (default 20)")
    data.add_argument("--horizon", type=positive, help="series: values to forecast after each window (default 1)")
    data.add_argument("--season", type=positive,
                      help="series: steps per season of the seasonal-naive baseline and of MASE's scale (default: "
                           "12 for a monthly date index, 7 for daily, 24 for hourly, none otherwise)")
    data.add_argument("--target-transform", choices=lbdata.TARGET_TRANSFORMS,
                      help="series: level (default) forecasts the values; diff forecasts the change from the last "
                           "value, for series that trend out of their training range (docs/training.md)")
    data.add_argument("--seq-len", type=positive, help="text: symbols per sequence (default 64); with --stateful, "
                                                       "the truncation length")
    data.add_argument("--stateful", action="store_true", default=None,
                      help="text: truncated backpropagation through time: --batch-size streams, the state carried "
                           "from one minibatch to the next and reset each epoch")
    data.add_argument("--per-line", action="store_true", default=None,
                      help="text: one record per non-empty line (names, words, sentences), with an end-of-record "
                           "symbol")
    data.add_argument("--series-column", help="CSV: the column that names each row's series (several series, one "
                                              "model)")
    data.add_argument("--min-length", type=positive,
                      help="several series: the fewest input steps of an example (default half the --window)")
    model = p.add_argument_group("model and training (with --resume: the run's own unless given)")
    model.add_argument("--hidden", type=positive, help="hidden size H (default 32)")
    model.add_argument("--layers", type=positive, help="stacked LSTM layers (default 1)")
    model.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    model.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam (adamw: decoupled weight decay)")
    model.add_argument("--lr", type=positive_float, help="learning rate (default 0.01)")
    model.add_argument("--momentum", type=fraction, help="SGD momentum (default 0)")
    model.add_argument("--clip-norm", type=positive_float, help="clip the global gradient norm to this")
    model.add_argument("--dropout", type=fraction, help="dropout between layers and before the head, in training "
                                                        "steps only (default 0)")
    model.add_argument("--weight-decay", type=non_negative_float,
                       help="sgd, adam: L2 added to the gradient; adamw: decoupled (default 0; adamw 0.01)")
    sched = p.add_argument_group("learning-rate schedule (torch's; with --resume: the run's own)")
    sched.add_argument("--lr-schedule", choices=SCHEDULES, help="default constant")
    sched.add_argument("--warmup-steps", type=natural, help="constant, cosine: linear warm-up over this many steps")
    sched.add_argument("--lr-min", type=non_negative_float, help="cosine, plateau: the lowest rate (default 0)")
    sched.add_argument("--step-size", type=positive, help="step: epochs between reductions")
    sched.add_argument("--gamma", type=positive_float, help="step: the factor of each reduction (default 0.1)")
    sched.add_argument("--plateau-patience", type=natural,
                       help="plateau: epochs without a better validation loss before a reduction (default 10)")
    sched.add_argument("--plateau-factor", type=positive_float, help="plateau: the factor of a reduction (default 0.1)")
    model.add_argument("--batch-size", type=positive, help="default 32")
    model.add_argument("--epochs", type=positive, help="total epochs, those already done included (default 20)")
    model.add_argument("--patience", type=positive, help="early stopping: epochs without improvement")
    model.add_argument("--seed", type=natural, help="seeds the initial parameters and the shuffling (default 0)")
    add_backend_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", type=_folder, default="runs/latest", help="output folder (default runs/latest)")
    out.add_argument("--resume", action="store_true", help="continue the run saved in --out, with its settings")
    out.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


class Run(NamedTuple):
    """Everything a run is made of, before its first step."""

    settings: dict[str, Any]
    backend: lb.Backend
    task: experiment.Task
    opt: OptimizerConfig
    config: RunConfig
    memory: int  # bytes it needs beyond its data (about)
    tuner: ThreadTuner | None  # --threads auto


def run(args) -> int:
    out = Path(args.out)
    w = distributed.world()  # several ranks under mpiexec: data-parallel (docs/distributed.md)
    with ExitStack() as stack:
        resume = saved = None
        with w.together("opening the run to resume"):  # only rank 0 reads and writes --out
            if args.resume and args.overwrite:
                raise LstmbenchError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
            if args.resume and w.is_root:
                resume = _claim_output(stack, out, args)
                saved = _saved_run(resume)
        if args.resume:
            saved = w.bcast(saved)
        with w.together("preparing the run"):
            new = _prepare(args, saved, out, w)
        if not args.resume:  # claimed once everything that can fail before training has passed
            with w.together("opening the output folder"):
                if w.is_root:
                    _claim_output(stack, out, args)
        _say_run(args, new, saved, w)
        try:
            result = train(new.backend, new.task.cfg, new.opt, lb.init_params(new.task.cfg, seed=new.settings["seed"]),
                           new.task.train, new.task.val, new.config, resume=resume, meta=new.task.meta,
                           on_epoch=_print_epoch, world=w, threads=new.tuner)
        except DivergenceError as exc:
            say(f"error: {exc}")
            return 3
        if result.stop_reason == "interrupted":
            say(f"interrupted at {result.position}: state saved to {out / LAST_CHECKPOINT}; continue with "
                f"`lstmbench train --resume --out {out}`")
            return 130
        return _finish(result, new, out, w)


def _prepare(args, saved: dict | None, out: Path, w: distributed.World) -> Run:
    settings = _settings(args, saved)
    threads = args.threads
    if w.distributed:  # the ranks share the cores: auto tunes each rank's share
        threads = distributed.threads_per_rank(w) if threads == AUTO else threads
    backend = choose_backend(settings["backend"], threads)
    _check_takes_sequences(backend, settings)
    tuner = thread_tuner(backend, args.threads)
    task = _task(settings)
    opt = OptimizerConfig(settings["optimizer"], lr=settings["lr"], momentum=settings["momentum"],
                          clip_norm=settings["clip_norm"], weight_decay=_weight_decay(settings))
    config = RunConfig(epochs=settings["epochs"], batch_size=settings["batch_size"], seed=settings["seed"],
                       patience=settings["patience"], out_dir=out, progress=not args.quiet,
                       stateful=settings["stateful"], schedule=_schedule(settings))
    memory = _check_memory(task, config, backend)
    if w.is_root:
        check_output_dir(out, needed_bytes=_output_bytes(task.cfg), what="--out")
    return Run(settings, backend, task, opt, config, memory, tuner)


def _weight_decay(settings: dict) -> float:
    given = settings["weight_decay"]
    return DEFAULT_WEIGHT_DECAY.get(settings["optimizer"], 0.0) if given is None else given


def _schedule(settings: dict) -> ScheduleConfig:
    """The --lr-schedule and its flags (one that does not apply to it is refused, by name)."""
    return ScheduleConfig(settings["lr_schedule"], **{name: settings[name] for name in SCHEDULE_SETTINGS})


def _check_takes_sequences(backend: lb.Backend, settings: dict) -> None:
    """--stateful, --per-line and --series-column need lengths or states, which not every
    backend takes (Capabilities.sequences): refused before the data is read."""
    flag = next((f for f, on in (("--stateful", settings["stateful"]), ("--per-line", settings["per_line"]),
                                 ("--series-column", settings["source"].spec.get("series_column"))) if on), None)
    if flag and not backend.capabilities.sequences:
        takes = [name for name in lb.backend_names()
                 if lb.load_backend(name).capabilities.sequences and lb.load_backend(name).availability()[0]]
        raise UnsupportedError(f"{flag} needs a backend that takes {'states' if flag == '--stateful' else 'lengths'} "
                               f"(design.md section 8); backend {backend.name!r} does not yet: use --backend "
                               f"{' or '.join(takes)}")


def _claim_output(stack: ExitStack, out: Path, args) -> Checkpoint | None:
    """Rank 0: lock --out for this run (held until the run's last file is written), then
    decide what the folder holds: the checkpoint to resume, or nothing (a run already there
    is refused unless --overwrite, which removes its files)."""
    check_output_dir(out, what="--out")
    folder = stack.enter_context(RunFolder(out, what="--out"))
    if folder.removed:
        size = sum(n for _, n in folder.removed)
        say(f"removed {len(folder.removed)} temporary file(s) ({size / 1e6:.1f} MB) left in {out} by an "
            "interrupted run")
    if args.resume:
        if not (out / LAST_CHECKPOINT).exists():
            raise LstmbenchError(f"{out} holds no run to resume (no {LAST_CHECKPOINT}); start one without --resume")
        return load_checkpoint(out / LAST_CHECKPOINT)
    if folder.holds_run():
        if not args.overwrite:
            raise LstmbenchError(f"{out} already holds a run{_describe_run(out)}; pass --resume to continue it, "
                                 f"--overwrite to replace it, or --out {_free_folder(out)} for a new run")
        folder.clear()
    return None


def _describe_run(out: Path) -> str:
    try:
        meta = load_checkpoint(out / LAST_CHECKPOINT, arrays=False).meta
        return f" ({meta['progress']['epoch']} of {meta['run']['epochs']} epochs done)"
    except (LstmbenchError, KeyError, TypeError):
        return ""


def _free_folder(out: Path) -> Path:
    """A sibling of ``out`` that does not exist yet: runs/latest-2, runs/latest-3, ..."""
    return next(p for k in range(2, 10_000) if not (p := out.with_name(f"{out.name}-{k}")).exists())


def _saved_run(ckpt: Checkpoint) -> dict[str, Any]:
    """The settings of the run a last.npz belongs to (train's flag names), its data source and
    where it stands."""
    meta, model, opt = ckpt.meta, ckpt.model, ckpt.optimizer
    run = meta.get("run")
    if meta.get("task") not in ("series", "text") or not isinstance(meta.get("source"), dict) or opt is None \
            or not isinstance(run, dict) or not isinstance(meta.get("progress"), dict):
        raise CheckpointError(f"{LAST_CHECKPOINT} was not written by `lstmbench train` (no run settings in it)")
    schedule = ScheduleConfig.from_dict(run.get("schedule")).to_dict()
    settings = {"hidden": model.hidden_size, "layers": model.num_layers, "dtype": model.dtype,
                "optimizer": opt.kind, "lr": opt.lr, "momentum": opt.momentum, "clip_norm": opt.clip_norm,
                "dropout": model.dropout, "weight_decay": opt.weight_decay, "lr_schedule": schedule.pop("kind"),
                **schedule, "batch_size": run.get("batch_size"), "seed": run.get("seed"),
                "epochs": run.get("epochs", DEFAULTS["epochs"]), "patience": run.get("patience")}
    if meta["task"] == "series":
        settings |= {"window": meta.get("window"), "horizon": meta.get("horizon"), "target": meta.get("target_column"),
                     "min_length": meta.get("min_length"), "season": meta.get("season"),
                     "target_transform": meta.get("target_transform", "level")}
    else:
        settings |= {"seq_len": meta.get("seq_len"), "stateful": meta.get("stateful", False),
                     "per_line": meta.get("per_line", False)}
    return {"settings": settings, "task": meta["task"], "source": meta["source"], "columns": meta.get("columns"),
            "backend": run.get("backend"), "threads": run.get("threads"), "progress": meta["progress"]}


def _settings(args, saved: dict | None) -> dict[str, Any]:
    """Every setting of this run: the flags given, then the resumed run's own (a flag that
    contradicts them is an error) or the defaults; plus the data source and the backend."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if saved is None:
        source = _source(args)
        _refuse_flags_that_do_not_apply(args, source)
        return {**DEFAULTS, **given, "source": source, "backend": args.backend}
    _refuse_contradictions(args, saved)
    done = saved["progress"]["epoch"]
    epochs = given.get("epochs", saved["settings"]["epochs"])
    if epochs <= done:
        raise LstmbenchError(f"the run has already done {done} epochs" + (
            f", more than --epochs {epochs}" if epochs < done else "") + "; give a larger --epochs to train it further")
    backend = args.backend or (saved["backend"] if saved["backend"] in lb.backend_names() else None)
    return {**DEFAULTS, **saved["settings"], **given, "source": experiment.Source(saved["task"], saved["source"]),
            "backend": backend}


def _source(args) -> experiment.Source:
    column, detect = index_column(args.index_column)
    return experiment.make_source(args.dataset, args.csv, args.columns, column, args.text_file, detect_index=detect,
                                  series_column=args.series_column)


def _data_kind(source: experiment.Source) -> str:
    return "csv" if "csv" in source.spec else source.kind


def _refuse_flags_that_do_not_apply(args, source: experiment.Source) -> None:
    kind = _data_kind(source)
    wrong = [flag for flag, wants in ONLY_FOR.items() if getattr(args, flag) is not None
             and wants != kind and not (wants == "series" and kind == "csv")]
    if wrong:
        names = " and ".join(_flag(f) for f in wrong)
        what = {"csv": "a CSV file", "series": f"the {source.spec.get('dataset')} series", "text": "text"}[kind]
        raise LstmbenchError(f"{names} {'does' if len(wrong) == 1 else 'do'} not apply to {what}; "
                             + ", ".join(f"{_flag(f)} is for {ONLY_FOR[f]} data" for f in wrong))
    if args.stateful and args.per_line:
        raise LstmbenchError("--stateful carries the state along streams of the whole text, --per-line takes each "
                             "line as a record on its own: pass one of them")
    if args.per_line and args.seq_len is not None:
        raise LstmbenchError("--seq-len does not apply to --per-line, which pads every record to the longest line")
    if args.min_length is not None and args.series_column is None:
        raise LstmbenchError("--min-length is for several series in one CSV file: give --series-column too")


def _refuse_contradictions(args, saved: dict) -> None:
    """A flag given with --resume must say what the run already is."""
    wrong = []
    for name, value in saved["settings"].items():
        given = getattr(args, name)
        if given is None or name in MAY_CHANGE:
            continue
        if name == "target" and isinstance(given, str):
            given_position = saved["columns"].index(given) if given in (saved["columns"] or []) else given
            if given_position == value:
                continue
        if given != value:
            wrong.append(f"{_flag(name)} {given} (the run has {value})")
    wrong += _data_contradictions(args, saved)
    if wrong:
        raise LstmbenchError("--resume continues the run with its own settings, and these flags contradict them: "
                             + "; ".join(wrong) + ". Leave them out, or start a new run in another --out")


def _data_contradictions(args, saved: dict) -> list[str]:
    given = {f: getattr(args, f) for f in DATA_FLAGS if getattr(args, f) is not None}
    if not given:
        return []
    spec = saved["source"]
    ours = _source(args).spec if any(f in given for f in DATA_FLAGS[:3]) else {}
    wrong = [f"{_flag(f)} {given[f]} (the run trained on {_source_text(spec)})"
             for f in DATA_FLAGS[:3] if f in given and ours.get(f) != spec.get(f)]
    if "columns" in given and given["columns"] != (spec.get("columns") or saved["columns"]):
        wrong.append(f"--columns {' '.join(given['columns'])} (the run has {' '.join(saved['columns'] or [])})")
    if "index_column" in given and index_column(given["index_column"]) != (spec.get("index_column"),
                                                                           spec.get("detect_index", True)):
        wrong.append(f"--index-column {given['index_column']} (the run has {spec.get('index_column') or 'none'})")
    if "series_column" in given and given["series_column"] != spec.get("series_column"):
        wrong.append(f"--series-column {given['series_column']} (the run has {spec.get('series_column') or 'none'})")
    return wrong


def _source_text(spec: dict) -> str:
    key = next((k for k in DATA_FLAGS[:3] if k in spec), None)
    return f"{_flag(key)} {spec[key]}" if key else str(spec)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _task(settings: dict) -> experiment.Task:
    return experiment.build_task(settings["source"], hidden_size=settings["hidden"], num_layers=settings["layers"],
                                 dtype=settings["dtype"], window=settings["window"], horizon=settings["horizon"],
                                 target=settings["target"], seq_len=settings["seq_len"],
                                 streams=settings["batch_size"] if settings["stateful"] else None,
                                 per_line=settings["per_line"], min_length=settings["min_length"],
                                 season=settings["season"], target_transform=settings["target_transform"],
                                 dropout=settings["dropout"])


def _check_memory(task: experiment.Task, run: RunConfig, backend: lb.Backend) -> int:
    """Refuse, before any parameter exists, a run that cannot fit in memory; the bytes it needs."""
    cfg = task.cfg
    eval_rows = min(experiment.EVAL_CHUNK, max(len(task.val[0]), len(task.test[0])))
    batch = min(run.batch_size, len(task.train[0]))
    needed = training_bytes(cfg, batch, task.train[0].shape[1], backend.threads, eval_rows)
    check_fits(needed, f"training this model ({cfg.num_params():,} parameters: H={cfg.hidden_size}, "
                       f"{cfg.num_layers} layer(s), {cfg.dtype})",
               "use a smaller --hidden, --layers or --batch-size")
    return needed


def _output_bytes(cfg: lb.ModelConfig) -> int:
    """About what a run writes: best.npz, last.npz (parameters and Adam's two moments),
    their temporary copies while replaced, metrics and the plot."""
    return 8 * cfg.np_dtype.itemsize * cfg.num_params() + 2_000_000


def _say_run(args, new: Run, saved: dict | None, w: distributed.World) -> None:
    """The first lines of a run: what it trains, on what, from where."""
    settings, task, backend, needed = new.settings, new.task, new.backend, new.memory
    ranks = f", {w.size} ranks (data-parallel over MPI)" if w.distributed else ""
    say(f"lstmbench train: {task.source.spec} -> {task.cfg}")
    series = task.windows.series if task.windows is not None else None
    spec = settings["source"].spec
    if series is not None and series.index_name and "csv" in spec and spec.get("index_column") is None:
        one = len(series.index_columns) == 1
        say(f"  time index: {lbdata.index_description(series)}, detected (not "
            f"{'a value column' if one else 'value columns'}; --index-column none to use "
            f"{'it as one' if one else 'them as values'})")
    for line in _data_lines(task):
        say(f"  {line}")
    say(f"  {_training_text(new)}")
    say(f"  backend {backend.name}{chosen(settings['backend'])} on {threads_text(backend, new.tuner)}"
        f"{' per rank' if ranks else ''}{ranks}, "
        f"{len(task.train[0])} train / {len(task.val[0])} val / {len(task.test[0])} test examples")
    data_bytes = sum(a.nbytes for part in (task.train, task.val, task.test) for a in part)
    if needed + data_bytes > 1e9:
        say(f"  memory: about {gigabytes(needed + data_bytes)} for the data and training, of "
            f"{gigabytes(available_memory())} available")
    if saved is not None:
        say(f"  resuming {args.out}: {_position(saved['progress'], settings['epochs'])}"
            f"{_backend_change(saved, backend)}")


#: the most notes train prints about reading several series (one series' notes are all printed)
MAX_NOTES = 5


def _data_lines(task: experiment.Task) -> list[str]:
    """What reading the data did (notes) and how it became examples, where that is not plain."""
    win, text = task.windows, task.text
    if win is not None:
        notes = [n for s in (win.panel or (win.series,)) for n in s.notes]
        lines = [f"note: {n}" for n in notes[:MAX_NOTES]]
        if len(notes) > MAX_NOTES:
            lines.append(f"note: ... and {len(notes) - MAX_NOTES} more note(s) on reading the series")
        if win.target_transform == "diff":
            lines.append("target transform diff: the model sees each row's change from the row before and forecasts "
                         "the next change(s); the metrics and predict add them onto the last value")
        if win.panel is not None:
            short = int(np.sum(win.train.lengths < win.window))
            names = ", ".join(win.names[:5]) + (", ..." if len(win.names) > 5 else "")
            lines.append(f"{len(win.panel)} series ({names}), one model: windows never cross from one series into "
                         f"another; {short} training example(s) shorter than the window (at least {win.min_length})")
        return lines
    if task.streams is not None:
        chunks = len(task.train[0]) // task.streams
        return [f"stateful: {task.streams} streams, each {chunks} chunk(s) of {text.seq_len} symbols per epoch; the "
                "state is carried from one chunk to the next and reset each epoch"]
    if task.meta.get("per_line"):
        lengths = task.train[2]
        return [f"per line: {len(lengths)} training records of {lengths.min() - 1} to {lengths.max() - 1} symbols, "
                f"each followed by an end-of-record symbol; padded to {text.seq_len} steps"]
    return []


def _position(progress: dict, epochs: int) -> str:
    epoch, batch = progress["epoch"], progress["batch"]
    return f"{epoch} of {epochs} epochs done" + (f", and {batch} batch(es) of epoch {epoch + 1}" if batch else "")


def _backend_change(saved: dict, backend: lb.Backend) -> str:
    """What a resume on another backend changes (another thread count changes nothing: every
    backend gives the same bits on any count)."""
    if saved["backend"] in (None, backend.name):
        return ""
    return (f"; the run so far trained on {saved['backend']}, this part on {backend.name}: the result "
            "equals an uninterrupted run's up to rounding, not bit for bit")


def _training_text(new: Run) -> str:
    """The optimizer, its schedule and the regularisation, in a line."""
    opt, cfg = new.opt, new.task.cfg
    parts = [f"optimizer {opt.kind}, lr {opt.lr:g} ({new.config.schedule.describe()})"]
    if opt.weight_decay:
        parts.append(f"weight decay {opt.weight_decay:g}{' (decoupled)' if opt.kind == 'adamw' else ''}")
    if cfg.dropout:
        parts.append(f"dropout {cfg.dropout:g}")
    return ", ".join(parts)


def _print_epoch(rec: dict) -> None:
    tqdm.write(f"epoch {rec['epoch']:3d}  train {rec['train_loss']:.5f}  val {rec['val_loss']:.5f}  "
               f"lr {rec['lr']:.3g}  ({rec['seconds']:.2f} s)", file=sys.stderr)
    sys.stderr.flush()


def _finish(result, new: Run, out: Path, w: distributed.World) -> int:
    """Test metrics, metrics.json, the plot and the summary lines."""
    task, backend = new.task, new.backend
    with new.tuner.best_count(backend) if new.tuner else nullcontext():
        report = experiment.evaluate(backend, task, result.params, world=w)
    if not w.is_root:
        return 0
    backends = list(dict.fromkeys(h.get("backend") for h in result.history if h.get("backend")))
    metrics = {"run_id": result.run_id, "model": task.cfg.to_dict(), "optimizer": new.opt.to_dict(),
               "schedule": new.config.schedule.to_dict(), "backend": backend.name, "backends": backends, "runtime": backend.runtime_info(), "ranks": w.size,
               "threads": result.threads or {"mode": "fixed", "count": backend.threads},
               "data": task.meta["source"], "fingerprint": task.meta["fingerprint"],
               "stop_reason": result.stop_reason, "best_epoch": result.best_epoch,
               "best_val_loss": result.best_val_loss, "seconds": result.seconds, "history": result.history,
               "test": report}
    experiment.write_metrics(out / METRICS_FILE, metrics)
    experiment.plot_run(backend, task, result.params, result.history, out / PLOT_FILE)
    print(f"backend {backend.name}: {_runtime_text(backend.runtime_info())}"
          f"{f', {w.size} ranks' if w.distributed else ''}")
    if result.threads:
        steps = ", ".join(f"{n} thread(s): {s}" for n, s in result.threads["steps_at"].items())
        print(f"threads: auto, steps on each count ({steps}); the result is the same on any count")
    print(f"stopped: {result.stop_reason}; best validation loss {result.best_val_loss:.5f} at epoch {result.best_epoch}")
    for line in _verdict(report):
        print(line)
    print(f"wrote {out / BEST_CHECKPOINT}, {out / LAST_CHECKPOINT}, {out / METRICS_FILE}, {out / PLOT_FILE}")
    return 0


def _runtime_text(info: dict) -> str:
    """runtime_info() for a person: its facts in a line; the compiler flags stay in metrics.json."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in info.items() if k != "build_flags")


def _verdict(report: dict) -> list[str]:
    """The test part's lines: metrics next to the baselines', and which ones the model beats."""
    return scoring.summary_lines(report)


def _column(text: str) -> int | str:
    """A column given by position (digits) or by name."""
    return int(text) if text.isdigit() else text


def _folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return text
