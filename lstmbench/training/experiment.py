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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstmbench import data as lbdata
from lstmbench.training.checkpoint import atomic_write
from lstmbench.config import ModelConfig
from lstmbench.training.distributed import SINGLE, World, shard
from lstmbench.training.progress import progress_bar
from lstmbench.errors import CheckpointError, DataError, LstmbenchError
from lstmbench.training.metrics import accuracy, mae, mean_loss, rmse
from lstmbench.params import Params
from lstmbench.protocol import Backend
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
    spec: dict[str, Any]

    def load(self):
        """The Series or text this source names."""
        if "dataset" in self.spec:
            name = self.spec["dataset"]
            if name == "sine":
                return lbdata.noisy_sine_mixture(1000, seed=0)
            if name == "anbn":
                return lbdata.anbn(400, seed=0)
            return lbdata.load_series(name) if name in lbdata.BUNDLED_SERIES else lbdata.load_text(name)
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
                index_column: str | None = None, text_file: str | None = None, detect_index: bool = True) -> Source:
    """The data source the CLI's data flags name (exactly one of dataset, csv, text_file).
    ``index_column``: the CSV's time index; None detects one (lbdata.read_csv_series)
    unless ``detect_index`` is False."""
    given = [v for v in (dataset, csv, text_file) if v is not None]
    if len(given) != 1:
        raise DataError("give exactly one of --dataset, --csv or --text-file")
    if dataset is not None:
        if dataset not in dataset_names():
            raise DataError(f"unknown dataset {dataset!r}; available: {', '.join(dataset_names())}")
        kind = "text" if dataset in (*lbdata.BUNDLED_TEXTS, "anbn") else "series"
        return Source(kind, {"dataset": dataset})
    if csv is not None:
        return Source("series", {"csv": str(Path(csv).resolve()), "columns": columns, "index_column": index_column,
                                 "detect_index": detect_index})
    return Source("text", {"text_file": str(Path(text_file).resolve())})


@dataclass
class Task:
    """Arrays and model shape for one training run, plus what evaluation needs."""

    source: Source
    cfg: ModelConfig
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    meta: dict[str, Any]  # JSON: source, window/seq_len, scaler or vocabulary
    windows: lbdata.WindowedDataset | None = None
    text: lbdata.TextDataset | None = None


def build_task(source: Source, *, hidden_size: int, num_layers: int = 1, dtype: str = "float32",
               window: int = 20, horizon: int = 1, target: str | int | None = None, seq_len: int = 64) -> Task:
    """The arrays and model of a run. ``target`` None: the first value column that is not
    index-like (lbdata.default_target). ``meta`` records the data's fingerprint."""
    task = _build_task(source, hidden_size, num_layers, dtype, window, horizon, target, seq_len)
    task.meta["fingerprint"] = fingerprint({"train": task.train, "val": task.val, "test": task.test})
    return task


def _build_task(source: Source, hidden_size: int, num_layers: int, dtype: str, window: int, horizon: int,
                target: str | int | None, seq_len: int) -> Task:
    loaded = source.load()
    if source.kind == "series":
        win = lbdata.make_windows(loaded, window, horizon, target_column=target)
        cfg = ModelConfig(input_size=win.series.values.shape[1], hidden_size=hidden_size, output_size=horizon,
                          num_layers=num_layers, loss="mse", many_to_many=False, dtype=dtype)
        split = lambda s: (s.x.astype(dtype, copy=False), s.y.astype(dtype, copy=False))  # noqa: E731
        meta = {"task": "series", "source": source.spec, "window": window, "horizon": horizon,
                "target_column": win.target_column, "columns": list(win.series.columns),
                "scaler": win.scaler.to_dict()}
        return Task(source, cfg, split(win.train), split(win.val), split(win.test), meta, windows=win)
    text = lbdata.make_text_dataset(loaded, seq_len, dtype=dtype)
    V = text.vocab.size
    cfg = ModelConfig(input_size=V, hidden_size=hidden_size, output_size=V, num_layers=num_layers,
                      loss="xent", many_to_many=True, dtype=dtype)
    split = lambda s: (s.x.astype(dtype, copy=False), s.y)  # noqa: E731
    meta = {"task": "text", "source": source.spec, "seq_len": seq_len, "vocab": text.vocab.to_list()}
    return Task(source, cfg, split(text.train), split(text.val), split(text.test), meta, text=text)


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
                      world: World = SINGLE):
    """Model outputs for every row of ``x``; with several ranks each computes its shard
    and every rank gets them all."""
    if world.distributed:
        part = shard(len(x), world.size, world.rank)
        steps = (x.shape[1],) if cfg.many_to_many else ()
        mine = (predict_in_chunks(backend, cfg, params, x[part], chunk) if part.stop > part.start else
                np.empty((0, *steps, cfg.output_size), cfg.np_dtype))
        return np.concatenate(world.allgather(mine))
    return np.concatenate([backend.forward(cfg, params, x[i : i + chunk]) for i in range(0, len(x), chunk)])


def evaluate(backend: Backend, task: Task, params: Params, world: World = SINGLE) -> dict[str, Any]:
    """Test-part metrics next to a naive baseline's (the outputs computed on shards with several ranks)."""
    x, y = task.test
    out = predict_in_chunks(backend, task.cfg, params, x, world=world)
    if task.windows is not None:
        win = task.windows
        col = win.target_column
        pred = win.scaler.inverse(out.astype(np.float64), column=col)
        truth = win.scaler.inverse(win.test.y, column=col)
        naive = win.scaler.inverse(win.test.last_input, column=col)
        return {"test_loss": mean_loss(task.cfg, out, y), "test_rmse": rmse(pred, truth), "test_mae": mae(pred, truth),
                "naive_rmse": rmse(naive, truth), "naive_mae": mae(naive, truth), "units": win.series.columns[col],
                "baseline": "last value"}
    # Naive baseline for text: a unigram model of the training symbols (add-one smoothing).
    counts = np.bincount(task.train[1].ravel(), minlength=task.cfg.output_size) + 1.0
    log_p = np.log(counts / counts.sum())
    naive_loss = float(-log_p[y].mean())
    return {"test_loss": mean_loss(task.cfg, out, y), "test_accuracy": accuracy(out, y),
            "naive_loss": naive_loss, "naive_accuracy": float(np.mean(y == np.argmax(counts))),
            "baseline": "unigram frequencies"}


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
        out = predict_in_chunks(backend, task.cfg, params, task.test[0]).astype(np.float64)
        when = win.series.index[win.test.target_start]
        ax.plot(when, win.scaler.inverse(win.test.y, column=col)[:, 0], "k.-", label="truth")
        ax.plot(when, win.scaler.inverse(out, column=col)[:, 0], "C0.-", label=f"LSTM ({backend.name})")
        ax.plot(when, win.scaler.inverse(win.test.last_input, column=col)[:, 0], "C1--", alpha=0.7,
                label="naive: last value")
        ahead = "one step ahead" if win.horizon == 1 else f"the first of {win.horizon} steps forecast"
        ax.set_title(f"{win.series.name}: test part, {ahead}")
        ax.set_ylabel(win.series.columns[col])
        ax.set_xlabel(win.series.index_name or "row")
        if when.dtype.kind == "M":  # dates: short labels that do not overlap
            import matplotlib.dates as mdates

            locator = mdates.AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.legend()
    else:
        out = predict_in_chunks(backend, task.cfg, params, task.test[0][:1])
        probs = np.exp(out[0] - out[0].max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        truth = task.test[1][0]
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
    except (LstmbenchError, TypeError) as exc:
        problems.append(f"vocab: {exc}")
    return problems


def forecast(backend: Backend, cfg: ModelConfig, params: Params, meta: dict, series: lbdata.Series,
             steps: int, progress: bool = False) -> np.ndarray:
    """The next ``steps`` values of the target column after the end of ``series``.
    Beyond the model's horizon, predictions are fed back (univariate series only)."""
    scaler = lbdata.Standardizer.from_dict(meta["scaler"])
    window, horizon, col = meta["window"], meta["horizon"], meta["target_column"]
    if list(series.columns) != meta["columns"]:
        raise DataError(f"the series has columns {list(series.columns)}, the model was trained on {meta['columns']}")
    if len(series) < window:
        raise DataError(f"forecasting needs at least window={window} values, the series has {len(series)}")
    if steps > horizon and len(series.columns) > 1:
        raise DataError(f"this model forecasts {horizon} step(s) of one column from {len(series.columns)} columns; "
                        f"it cannot feed its predictions back, so --steps must be <= {horizon}")
    history = scaler.transform(series.values)[-window:]  # (window, C), standardized
    predicted: list[float] = []
    with progress_bar(progress, total=steps, desc="forecast", unit="step", leave=False) as bar:
        while len(predicted) < steps:
            out = backend.forward(cfg, params, history[None].astype(cfg.dtype))[0].astype(np.float64)  # (horizon,)
            bar.update(min(horizon, steps - len(predicted)))
            predicted.extend(out.tolist())
            if len(predicted) < steps:  # feed the forecast back (univariate only, checked above)
                history = np.concatenate([history, out[:, None]])[-window:]
    return scaler.inverse(np.array(predicted[:steps])[:, None], column=col)[:, 0]


def sample_text(backend: Backend, cfg: ModelConfig, params: Params, meta: dict, prime: str, length: int,
                temperature: float = 1.0, seed: int = 0, progress: bool = False) -> str:
    """Continue ``prime`` by ``length`` symbols sampled from the model."""
    if temperature <= 0:
        raise DataError(f"temperature must be positive, got {temperature}")
    vocab = lbdata.Vocabulary.from_list(meta["vocab"])
    unknown = sorted(set(prime) - set(vocab.symbols[1:]))  # symbols[0] is UNK, which no text spells
    if unknown:
        raise DataError(f"the prime text has symbol(s) {''.join(unknown)!r} that the model never saw; it knows "
                        f"{''.join(vocab.symbols[1:])!r}")
    rng = np.random.default_rng(seed)
    ids = list(vocab.encode(prime)) or [int(rng.integers(1, vocab.size))]
    with progress_bar(progress, total=length, desc="sample", unit="symbol", leave=False) as bar:
        for _ in range(length):
            context = vocab.one_hot(np.array(ids[-meta["seq_len"] :]), cfg.dtype)[None]
            logits = backend.forward(cfg, params, context)[0, -1].astype(np.float64) / temperature
            probs = np.exp(logits - logits.max())
            ids.append(int(rng.choice(vocab.size, p=probs / probs.sum())))
            bar.update(1)
    return vocab.decode(ids)
