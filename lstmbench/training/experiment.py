"""From a dataset to a trained, evaluated model: what `lstmbench train` and
`lstmbench predict` do, as functions scripts can call too.

Two task kinds:
* "series": many-to-one regression; a window of every column predicts the
  next `horizon` values of the target column (output_size = horizon);
* "text": many-to-many next-symbol prediction on one-hot symbols ("xent").
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lstmbench import data as lbdata
from lstmbench.training.checkpoint import atomic_write
from lstmbench.config import ModelConfig
from lstmbench.training.distributed import SINGLE, World, shard
from lstmbench.training.progress import progress_bar
from lstmbench.errors import CheckpointError, DataError, LstmbenchError
from lstmbench.training.loop import split_parts, stream_outputs
from lstmbench.training import scoring
from lstmbench.training.metrics import accuracy, mean_loss, valid_steps
from lstmbench.params import Params
from lstmbench.protocol import Backend, draw_symbol
from lstmbench.resources import check_fits

SOURCE_KEYS = ("dataset", "csv", "text_file")  # a Source's spec names exactly one
SYNTHETIC = {"sine": "noisy sine mixture (1000 steps)", "anbn": "a^n b^n strings (400 of them)"}


def dataset_names() -> list[str]:
    return [*lbdata.BUNDLED_SERIES, *lbdata.BUNDLED_TEXTS, *SYNTHETIC]


@dataclass
class Source:
    """Where the data came from; stored in checkpoints so `predict` can reload it."""

    kind: str  # "series" or "text"
    # {"dataset": name} | {"csv": path, "columns": [...], "index_column": ..., "detect_index": bool} | {"text_file": path}
    # (a CSV of several series also has "series_column": the column that names each row's series)
    spec: dict[str, Any]

    def load(self):
        """The Series (a list of them for several series in one CSV) or text this source names."""
        if "dataset" in self.spec:
            name = self.spec["dataset"]
            if name == "sine":
                return lbdata.noisy_sine_mixture(1000, seed=0)
            if name == "anbn":
                return lbdata.anbn(400, seed=0)
            return lbdata.load_series(name) if name in lbdata.BUNDLED_SERIES else lbdata.load_text(name)
        if "csv" in self.spec and self.spec.get("series_column") is not None:
            return lbdata.read_csv_panel(self.spec["csv"], self.spec["series_column"], columns=self.spec.get("columns"),
                                         index_column=self.spec.get("index_column"),
                                         detect_index=self.spec.get("detect_index", True))
        if "csv" in self.spec:
            return lbdata.read_csv_series(self.spec["csv"], columns=self.spec.get("columns"),
                                          index_column=self.spec.get("index_column"),
                                          detect_index=self.spec.get("detect_index", True))
        return read_text_file(Path(self.spec["text_file"]))


#: bytes of memory per byte of a text file while it is read and decoded (the bytes, then a str of
#: up to 4 bytes per character)
TEXT_READ_FACTOR = 5


def read_text_file(path: Path) -> str:
    """A UTF-8 text file's contents; a DataError for anything that is not a regular file (a
    folder, /dev/zero, a pipe) and a ResourceError, before reading, for one too large for memory."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise DataError(f"text file {path} {what}")
    check_fits(path.stat().st_size * TEXT_READ_FACTOR, f"reading text file {path}",
               "use a shorter text")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read text file {path}: {exc}") from None


def make_source(dataset: str | None = None, csv: str | None = None, columns: list[str] | None = None,
                index_column: str | None = None, text_file: str | None = None, detect_index: bool = True,
                series_column: str | None = None) -> Source:
    """The data source the CLI's data flags name (exactly one of dataset, csv, text_file).
    ``index_column``: the CSV's time index; None detects one (lbdata.read_csv_series)
    unless ``detect_index`` is False. ``series_column``: the CSV holds several series, this
    column names each row's (lbdata.read_csv_panel)."""
    given = [v for v in (dataset, csv, text_file) if v is not None]
    if len(given) != 1:
        raise DataError("give exactly one of --dataset, --csv or --text-file")
    if dataset is not None:
        if dataset not in dataset_names():
            raise DataError(f"unknown dataset {dataset!r}; available: {', '.join(dataset_names())}")
        kind = "text" if dataset in (*lbdata.BUNDLED_TEXTS, "anbn") else "series"
        return Source(kind, {"dataset": dataset})
    if csv is not None:
        spec = {"csv": str(Path(csv).resolve()), "columns": columns, "index_column": index_column,
                "detect_index": detect_index}
        return Source("series", spec | ({} if series_column is None else {"series_column": series_column}))
    return Source("text", {"text_file": str(Path(text_file).resolve())})


@dataclass
class Task:
    """Arrays and model shape for one training run, plus what evaluation needs. A split is
    (x, y), or (x, y, lengths) for rows of different lengths."""

    source: Source
    cfg: ModelConfig
    train: tuple[np.ndarray, ...]
    val: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...]
    meta: dict[str, Any]  # JSON: source, window/seq_len, scaler or vocabulary
    windows: lbdata.WindowedDataset | None = None
    text: lbdata.TextDataset | None = None
    streams: int | None = None  # a stateful text task: the splits are this many streams (loop.stream_outputs)


def build_task(source: Source, *, hidden_size: int, num_layers: int = 1, dtype: str = "float32",
               window: int = 20, horizon: int = 1, target: str | int | None = None, seq_len: int = 64,
               streams: int | None = None, per_line: bool = False, min_length: int | None = None,
               season: int | None = None, target_transform: str = "level", dropout: float = 0.0) -> Task:
    """The arrays and model of a run. ``target`` None: the first value column that is not
    index-like (lbdata.default_target). ``meta`` records the data's fingerprint.
    Text: ``streams`` cuts it into that many streams for stateful training
    (lbdata.make_stream_dataset), ``per_line`` into one record per line (make_line_dataset).
    Several series (a source with a series column): ``min_length`` is the shortest example.
    Series: ``season`` the seasonal-naive baseline's (None: detected from a date index,
    scoring.choose_season); ``target_transform`` "diff" forecasts changes (lbdata.make_windows).
    ``dropout``: the model's (ModelConfig.dropout), checked before the data is read."""
    ModelConfig(1, 1, 1, dropout=dropout)  # a bad dropout fails before the data is read
    loaded = source.load()
    if source.kind == "series":
        task = _series_task(source, loaded, hidden_size, num_layers, dtype, window, horizon, target, min_length,
                            target_transform)
        scoring.choose_season(task.windows, season)  # a --season the data cannot take fails before training
        if season is not None:
            task.meta["season"] = season
    else:
        if season is not None or target_transform != "level":
            flag = "--season" if season is not None else "--target-transform"
            raise DataError(f"{flag} is for series; a text model has no season and forecasts no values")
        task = _text_task(source, loaded, hidden_size, num_layers, dtype, seq_len, streams, per_line)
    task.meta["fingerprint"] = fingerprint({"train": task.train, "val": task.val, "test": task.test})
    task.cfg = replace(task.cfg, dropout=dropout)
    return task


def _series_task(source: Source, loaded, hidden_size: int, num_layers: int, dtype: str, window: int, horizon: int,
                 target: str | int | None, min_length: int | None, target_transform: str = "level") -> Task:
    if isinstance(loaded, list):  # several series (a series column)
        win = lbdata.make_panel_windows(loaded, window, horizon, target_column=target, min_length=min_length,
                                        target_transform=target_transform)
    else:
        win = lbdata.make_windows(loaded, window, horizon, target_column=target, target_transform=target_transform)
    cfg = ModelConfig(input_size=win.series.values.shape[1], hidden_size=hidden_size, output_size=horizon,
                      num_layers=num_layers, loss="mse", many_to_many=False, dtype=dtype)
    split = lambda s: (s.x.astype(dtype, copy=False), s.y.astype(dtype, copy=False)) + (  # noqa: E731
        () if s.lengths is None else (s.lengths,))
    meta = {"task": "series", "source": source.spec, "window": window, "horizon": horizon,
            "target_column": win.target_column, "columns": list(win.series.columns),
            "scaler": win.scaler.to_dict()}
    if win.names is not None:
        meta |= {"series": list(win.names), "min_length": win.min_length}
    if target_transform != "level":  # absent: levels (checkpoints from before the transform existed)
        meta["target_transform"] = target_transform
    return Task(source, cfg, split(win.train), split(win.val), split(win.test), meta, windows=win)


def _text_task(source: Source, loaded: str, hidden_size: int, num_layers: int, dtype: str, seq_len: int,
               streams: int | None, per_line: bool) -> Task:
    if per_line:
        text = lbdata.make_line_dataset(loaded, dtype=dtype)
    elif streams is not None:
        text = lbdata.make_stream_dataset(loaded, seq_len, streams, dtype=dtype)
    else:
        text = lbdata.make_text_dataset(loaded, seq_len, dtype=dtype)
    V = text.vocab.size
    cfg = ModelConfig(input_size=V, hidden_size=hidden_size, output_size=V, num_layers=num_layers,
                      loss="xent", many_to_many=True, dtype=dtype)
    split = lambda s: (s.x.astype(dtype, copy=False), s.y) + (() if s.lengths is None else (s.lengths,))  # noqa: E731
    meta = {"task": "text", "source": source.spec, "seq_len": text.seq_len, "vocab": text.vocab.to_list()}
    if per_line:
        meta["per_line"] = True
    if streams is not None:
        meta["stateful"] = True
    return Task(source, cfg, split(text.train), split(text.val), split(text.test), meta, text=text, streams=streams)


def fingerprint(parts: dict[str, tuple[np.ndarray, ...]]) -> dict[str, dict[str, Any]]:
    """Per part of the data: its number of examples and a SHA-256 of every value in it (shapes
    and dtypes included), so that a resume can tell exactly which part changed."""
    out = {}
    for name, arrays in parts.items():
        digest = hashlib.sha256()
        for a in arrays:
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(a.data)
        out[name] = {"examples": len(arrays[0]), "sha256": digest.hexdigest()}
    return out


#: rows per forward call when a whole split is evaluated (bounds the activations' memory)
EVAL_CHUNK = 4096


def predict_in_chunks(backend: Backend, cfg: ModelConfig, params: Params, x: np.ndarray, chunk: int = EVAL_CHUNK,
                      world: World = SINGLE, lengths: np.ndarray | None = None):
    """Model outputs for every row of ``x`` (with its ``lengths``); with several ranks each
    computes its shard and every rank gets them all."""
    if world.distributed:
        part = shard(len(x), world.size, world.rank)
        steps = (x.shape[1],) if cfg.many_to_many else ()
        shard_lengths = None if lengths is None else lengths[part]
        mine = (predict_in_chunks(backend, cfg, params, x[part], chunk, lengths=shard_lengths)
                if part.stop > part.start else np.empty((0, *steps, cfg.output_size), cfg.np_dtype))
        return np.concatenate(world.allgather(mine))
    return np.concatenate([backend.forward(cfg, params, x[i : i + chunk],
                                           **({} if lengths is None else {"lengths": lengths[i : i + chunk]}))
                           for i in range(0, len(x), chunk)])


def split_outputs(backend: Backend, task: Task, params: Params, split: tuple, world: World = SINGLE) -> np.ndarray:
    """Outputs for every row of a split of ``task``: a stateful task's streams chunk after
    chunk with the state carried, rows with their lengths, or rows as they are."""
    x, _, lengths = split_parts(split)
    if task.streams is not None:
        return stream_outputs(backend, task.cfg, params, x, task.streams, world)
    return predict_in_chunks(backend, task.cfg, params, x, world=world, lengths=lengths)


def evaluate(backend: Backend, task: Task, params: Params, world: World = SINGLE,
             season: int | None = None) -> dict[str, Any]:
    """Test-part metrics next to the baselines' (scoring; the outputs computed on shards with
    several ranks). Series: ``season`` the seasonal-naive baseline's, by default the task's
    (meta "season") or the one its date index implies."""
    out = split_outputs(backend, task, params, task.test, world)
    if task.windows is not None:
        season, season_from = scoring.choose_season(task.windows, season or task.meta.get("season"))
        return {"test_loss": mean_loss(task.cfg, out, task.test[1]),
                **scoring.series_report(task.windows, out, season, season_from)}
    # Naive baseline for text: a unigram model of the training symbols (add-one smoothing); with
    # lengths (per-line records) every count and mean is over the valid positions alone.
    _, y, lengths = split_parts(task.test)
    _, y_train, lengths_train = split_parts(task.train)
    valid, valid_train = valid_steps(task.cfg, y, lengths), valid_steps(task.cfg, y_train, lengths_train)
    counts = np.bincount(y_train[valid_train].ravel(), minlength=task.cfg.output_size) + 1.0
    log_p = np.log(counts / counts.sum())
    return scoring.text_report(mean_loss(task.cfg, out, y, lengths), accuracy(out, y, valid),
                               float(-log_p[y[valid]].mean()), float(np.mean(y[valid] == np.argmax(counts))))


def write_metrics(path: Path, payload: dict[str, Any]) -> None:
    """JSON that any parser reads: a non-finite number (an infinite best loss before any epoch)
    is written as null, never as the NaN/Infinity that json.dumps would emit."""
    text = json.dumps(finite_json(payload), indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def finite_json(value):
    """``value`` with every non-finite float replaced by None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def plot_run(backend: Backend, task: Task, params: Params, history: list[dict], path: Path) -> None:
    """PNG: predictions against truth on the test part (series) and the loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    if task.windows is not None:
        win = task.windows
        col = win.target_column
        out = split_outputs(backend, task, params, task.test).astype(np.float64)
        # several series: the first one's test part (each series has its own index)
        one = slice(None) if win.panel is None else win.test.series_id == win.test.series_id[0]
        series = win.series if win.panel is None else win.panel[win.test.series_id[0]]
        when = series.index[win.test.target_start[one]]
        ax.plot(when, win.truth(win.test)[one, 0], "k.-", label="truth")
        ax.plot(when, win.levels(win.test, out)[one, 0], "C0.-", label=f"LSTM ({backend.name})")
        ax.plot(when, win.last_values(win.test)[one], "C1--", alpha=0.7, label="naive: last value")
        ahead = "one step ahead" if win.horizon == 1 else f"the first of {win.horizon} steps forecast"
        ax.set_title(f"{series.name}: test part, {ahead}")
        ax.set_ylabel(win.series.columns[col])
        ax.set_xlabel(win.series.index_name or "row")
        if when.dtype.kind == "M":  # dates: short labels that do not overlap
            import matplotlib.dates as mdates

            locator = mdates.AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.legend()
    else:
        _, y, lengths = split_parts(task.test)
        steps = y.shape[1] if lengths is None else int(lengths[0])  # a per-line record: its own steps
        out = predict_in_chunks(backend, task.cfg, params, task.test[0][:1])[:, :steps]
        probs = np.exp(out[0] - out[0].max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        truth = y[0, :steps]
        ax.plot(probs[np.arange(len(truth)), truth], "C0.-")
        ax.set_ylim(0, 1)
        ax.set_title("test sequence: probability given to the true next symbol")
        ax.set_xlabel("position")
    epochs = [h["epoch"] for h in history]
    axes[1].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[1].plot(epochs, [h["val_loss"] for h in history], label="validation")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(f"{task.cfg.loss} loss")
    axes[1].set_yscale("log")
    axes[1].legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def check_meta(cfg: ModelConfig, meta: dict, path) -> str:
    """The task ("series" or "text") of a checkpoint written by `lstmbench train`, after checking
    that its meta describes ``cfg``'s model; a CheckpointError naming the file and the entry
    otherwise (a checkpoint is data from outside: it may have been edited)."""
    task = meta.get("task")
    if task not in ("series", "text"):
        raise CheckpointError(f"{path} was not written by `lstmbench train` (no task description)")
    problems = _series_meta_problems(cfg, meta) if task == "series" else _text_meta_problems(cfg, meta)
    source = meta.get("source")
    if not (isinstance(source, dict) and sum(isinstance(source.get(k), str) for k in SOURCE_KEYS) == 1):
        problems.append(f"source must name one of {', '.join(SOURCE_KEYS)}, got {source!r:.100}")
    if problems:
        raise CheckpointError(f"{path} has a damaged description of its {task} model: {'; '.join(problems)}")
    return task


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _series_meta_problems(cfg: ModelConfig, meta: dict) -> list[str]:
    columns, scaler = meta.get("columns"), meta.get("scaler")
    problems = [f"{key} must be a positive integer, got {meta.get(key)!r}" for key in ("window", "horizon")
                if not _is_count(meta.get(key))]
    if meta.get("horizon") != cfg.output_size and not problems:
        problems.append(f"horizon {meta['horizon']} but the model has {cfg.output_size} outputs")
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns) and len(columns) == cfg.input_size):
        problems.append(f"columns must be {cfg.input_size} column name(s), got {columns!r:.100}")
    target = meta.get("target_column")
    if not (isinstance(target, int) and not isinstance(target, bool) and 0 <= target < cfg.input_size):
        problems.append(f"target_column must be a position in 0..{cfg.input_size - 1}, got {target!r}")
    if meta.get("target_transform", "level") not in lbdata.TARGET_TRANSFORMS:
        problems.append(f"target_transform must be one of {', '.join(lbdata.TARGET_TRANSFORMS)}, got "
                        f"{meta.get('target_transform')!r:.100}")
    if "season" in meta and not _is_count(meta["season"]):
        problems.append(f"season must be a positive integer, got {meta['season']!r:.100}")
    names, fewest = meta.get("series"), meta.get("min_length")
    if names is not None and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
                                  and _is_count(fewest)):
        problems.append(f"several series need their names and a positive min_length, got {names!r:.100} and "
                        f"{fewest!r}")
    try:
        if lbdata.Standardizer.from_dict(scaler).mean.size != cfg.input_size:
            problems.append(f"the scaler has {len(scaler['mean'])} column(s), the model {cfg.input_size}")
    except LstmbenchError as exc:
        problems.append(f"scaler: {exc}")
    return problems


def _text_meta_problems(cfg: ModelConfig, meta: dict) -> list[str]:
    problems = [] if _is_count(meta.get("seq_len")) else [f"seq_len must be a positive integer, got {meta.get('seq_len')!r}"]
    try:
        vocab = lbdata.Vocabulary.from_list(meta.get("vocab") or ())
        if vocab.size != cfg.input_size or vocab.size != cfg.output_size:
            problems.append(f"the vocabulary has {vocab.size} symbols, the model {cfg.input_size} inputs and "
                            f"{cfg.output_size} outputs")
        if meta.get("per_line") and lbdata.EOR not in vocab.symbols:
            problems.append("a per-line model's vocabulary must hold the end-of-record symbol")
    except (LstmbenchError, TypeError) as exc:
        problems.append(f"vocab: {exc}")
    return problems


def forecast(backend: Backend, cfg: ModelConfig, params: Params, meta: dict, series: lbdata.Series,
             steps: int, progress: bool = False) -> np.ndarray:
    """The next ``steps`` values of the target column after the end of ``series``.
    Beyond the model's horizon, predictions are fed back (univariate series only). A model
    of several series (meta "min_length") forecasts from fewer rows than its window too, down
    to min_length, as it was trained to. A model of changes (meta "target_transform" diff)
    sees the series' changes and its forecasts are added up onto the last value."""
    scaler = lbdata.Standardizer.from_dict(meta["scaler"])
    window, horizon, col = meta["window"], meta["horizon"], meta["target_column"]
    transform = meta.get("target_transform", "level")
    offset = int(transform == "diff")  # a change needs the row before it
    fewest = meta.get("min_length") or window
    if list(series.columns) != meta["columns"]:
        raise DataError(f"the series has columns {list(series.columns)}, the model was trained on {meta['columns']}")
    if len(series) < fewest + offset:
        what = f"min_length={fewest}" if fewest < window else f"window={window}"
        what += " (+ 1: the model forecasts changes, and the first value has none)" if offset else ""
        raise DataError(f"forecasting needs at least {what} values, the series has {len(series)}")
    if steps > horizon and len(series.columns) > 1:
        raise DataError(f"this model forecasts {horizon} step(s) of one column from {len(series.columns)} columns; "
                        f"it cannot feed its predictions back, so --steps must be <= {horizon}")
    seen = lbdata.model_values(series.values, transform)[offset:]  # the values, or their changes
    history = scaler.transform(seen)[-window:]  # (up to window, C), standardized
    predicted: list[float] = []
    with progress_bar(progress, total=steps, desc="forecast", unit="step", leave=False) as bar:
        while len(predicted) < steps:
            x = np.zeros((1, window, len(series.columns)), cfg.dtype)
            x[0, : len(history)] = history  # fewer rows than the window: padding after them, and lengths
            short = {"lengths": np.array([len(history)])} if len(history) < window else {}
            out = backend.forward(cfg, params, x, **short)[0].astype(np.float64)  # (horizon,)
            bar.update(min(horizon, steps - len(predicted)))
            predicted.extend(out.tolist())
            if len(predicted) < steps:  # feed the forecast back (univariate only, checked above)
                history = np.concatenate([history, out[:, None]])[-window:]
    values = scaler.inverse(np.array(predicted[:steps])[:, None], column=col)[:, 0]
    return series.values[-1, col] + np.cumsum(values) if offset else values


def pick_series(meta: dict, loaded, name: str | None) -> lbdata.Series:
    """The series to forecast: the one series of a model of one, or the one ``name`` names of a
    model of several (meta "series"); a DataError naming the choices otherwise."""
    names = meta.get("series")
    if names is None:
        if name is not None:
            raise DataError(f"--series {name}: this model was trained on one series, not several; leave --series out")
        return loaded
    by_name = {s.name: s for s in loaded}
    listed = ", ".join(list(by_name)[:20]) + (f", ... ({len(by_name)} in all)" if len(by_name) > 20 else "")
    if name is None:
        raise DataError(f"this model forecasts several series: name one with --series (the data has {listed})")
    if name not in by_name:
        raise DataError(f"--series {name}: the data has no series {name!r}; it has {listed}")
    return by_name[name]


@dataclass
class Sample:
    """Sampled text, and how long the sampling took."""

    text: str
    symbols: int  # sampled (the prime's not counted)
    seconds: float  # the sampling after the prime (the prime's pass, with any first-call start-up, not counted)
    prime_seconds: float | None = 0.0  # the prime's pass (None: timed with the symbols, in the backend's own loop)

    @property
    def per_second(self) -> float:
        return self.symbols / self.seconds if self.seconds > 0 else math.inf


def sample_text(backend: Backend, cfg: ModelConfig, params: Params, meta: dict, prime: str, length: int,
                temperature: float = 1.0, seed: int = 0, progress: bool = False) -> str:
    """Continue ``prime`` by ``length`` symbols sampled from the model (generate_text's text)."""
    return generate_text(backend, cfg, params, meta, prime, length, temperature, seed, progress).text


def generate_text(backend: Backend, cfg: ModelConfig, params: Params, meta: dict, prime: str, length: int,
                  temperature: float = 1.0, seed: int = 0, progress: bool = False) -> Sample:
    """Continue ``prime`` by ``length`` symbols sampled from the model. The prime runs once;
    then each symbol is one forward step from the state the last one ended with
    (Backend.stepper): no window is run again and the context has no cap. A per-line
    model's prime starts a record (after an end-of-record symbol). A backend without
    states runs the last seq_len symbols again for every symbol instead."""
    if temperature <= 0:
        raise DataError(f"temperature must be positive, got {temperature}")
    vocab = lbdata.Vocabulary.from_list(meta["vocab"])
    unknown = sorted(set(prime) - set(vocab.symbols[1:]))  # symbols[0] is UNK, which no text spells
    if unknown:
        raise DataError(f"the prime text has symbol(s) {''.join(unknown)!r} that the model never saw; it knows "
                        f"{''.join(vocab.symbols[1:])!r}")
    rng = np.random.default_rng(seed)
    start = [int(vocab.encode(lbdata.EOR)[0])] if meta.get("per_line") else []  # a record starts after an EOR
    ids = start + list(vocab.encode(prime)) or [int(rng.integers(1, vocab.size))]
    clock = [time.perf_counter()]  # when sampling began, then when the prime's pass ended
    with progress_bar(progress, total=length, desc="sample", unit="symbol", leave=False) as bar:
        if backend.capabilities.sequences and not start and length and type(backend)._generate is not Backend._generate:
            # the backend runs the whole loop itself (the C kernel): one call, the same draws
            ids += list(backend.generate(cfg, params, np.array(ids), rng.random(length), temperature))
            bar.update(length)
        elif backend.capabilities.sequences:
            restart = start[0] if start else None  # a per-line model starts each record from zeros, as trained
            _sample_steps(backend.stepper(cfg, params), vocab, cfg, ids, length, temperature, rng, bar, clock, restart)
        else:
            clock.append(time.perf_counter())
            _sample_windows(backend, cfg, params, vocab, meta["seq_len"], ids, length, temperature, rng, bar)
    end = time.perf_counter()
    prime_seconds = None if len(clock) == 1 else clock[1] - clock[0]
    return Sample(vocab.decode(ids[len(start):]), length, end - clock[-1], prime_seconds)


def _draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """A symbol id drawn from softmax(logits / temperature) (at the generator's next uniform)."""
    return draw_symbol(logits, temperature, rng.random())


def _sample_steps(step, vocab, cfg: ModelConfig, ids: list[int], length: int, temperature: float, rng, bar,
                  clock: list[float], restart: int | None = None) -> None:
    """Append ``length`` sampled ids to ``ids``: the prime once (its end appended to ``clock``),
    then one step per symbol; after the symbol ``restart`` (end of record) the next step starts
    from zeros."""
    logits = step(vocab.one_hot(np.array(ids), cfg.dtype)[None])[0, -1]
    clock.append(time.perf_counter())
    x = np.zeros((1, 1, vocab.size), cfg.dtype)  # one symbol, reused: forward does not keep it
    for k in range(length):
        ids.append(_draw(logits, temperature, rng))
        bar.update(1)
        if k + 1 < length:  # the next symbol's logits, from the state the last step left
            if ids[-1] == restart:
                step.state = None
            x[0, 0] = 0
            x[0, 0, ids[-1]] = 1
            logits = step(x)[0, -1]


def _sample_windows(backend: Backend, cfg: ModelConfig, params: Params, vocab, seq_len: int, ids: list[int],
                    length: int, temperature: float, rng, bar) -> None:
    """As _sample_steps, for a backend without states: the last ``seq_len`` symbols run again for each."""
    for _ in range(length):
        context = vocab.one_hot(np.array(ids[-seq_len:]), cfg.dtype)[None]
        ids.append(_draw(backend.forward(cfg, params, context)[0, -1], temperature, rng))
        bar.update(1)
