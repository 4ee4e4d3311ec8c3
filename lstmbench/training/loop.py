"""The training loop shared by every backend.

Epochs over minibatches shuffled by a generator seeded with (seed, epoch), so
the order of epoch k does not depend on what ran before: a run stopped and
resumed visits the same batches in the same order as an uninterrupted one, and
(with the optimizer state restored from the checkpoint) ends with the same
parameters. Checkpoints are written atomically; a NaN/inf loss, or one that
explodes (EXPLODED times its best so far), stops the run and keeps the last good
checkpoint; Ctrl-C saves the exact position and exits.

Splits may carry lengths, ``(x, y, lengths)``: every step, loss and validation then counts
valid terms alone (design.md section 8). A stateful run (RunConfig.stateful, truncated
backpropagation through time) takes its minibatches in order instead: the data holds
``batch_size`` streams cut into chunks (row k*B + b is chunk k of stream b), each step
carries the state of the last (train_step's carry_state), every epoch starts from zeros, and
the carried state is part of the checkpoint, so a resume continues bit for bit.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lstmbench.training.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, Checkpoint, load_checkpoint, save_checkpoint
from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.training.progress import progress_bar
from lstmbench.training.schedule import LRSchedule, ScheduleConfig
from lstmbench.training.threads import ThreadTuner
from lstmbench.training.distributed import SINGLE, DistributedError, World, on_every_rank, shard
from lstmbench.errors import (CheckpointError, ConfigError, DeviceError, DivergenceError, NonFiniteError, OutputError,
                              UnsupportedError)
from lstmbench.training.metrics import mean_loss
from lstmbench.params import Params
from lstmbench.protocol import Backend
from lstmbench.protocol import check_inputs, check_lengths, check_targets

# A minibatch loss this many times the best so far (the first minibatch's, or the best epoch
# mean) means the run is diverging. An epoch's loss is the row-weighted (with lengths: term-weighted)
# mean of its minibatch losses (all >= 0), so a minibatch of k of its n rows can exceed that mean at most n/k times
# (with equal batches, the number of minibatches; a short last batch, more). Where n/k is
# under 1000, a run whose loss is not growing cannot reach it; beyond, it would take one
# minibatch far outside ordinary noise.
EXPLODED = 1e3
ADVICE = "Try a smaller learning rate (--lr) or gradient clipping (--clip-norm)."


@dataclass(frozen=True)
class RunConfig:
    epochs: int = 20
    batch_size: int = 32
    seed: int = 0
    patience: int | None = None  # stop after this many epochs without a better validation loss
    min_delta: float = 0.0
    out_dir: Path | None = None  # where last.npz / best.npz go (None: no checkpoints)
    progress: bool = True
    # truncated BPTT: the data holds batch_size streams, row k*batch_size + b is chunk k of stream b;
    # minibatches in order, the state carried from one to the next and reset each epoch
    stateful: bool = False
    schedule: ScheduleConfig = ScheduleConfig()  # the learning rate of each step (design.md section 10)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"RunConfig.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience}")
        if not isinstance(self.stateful, bool):
            raise ConfigError(f"RunConfig.stateful must be True or False, got {self.stateful!r}")
        if not isinstance(self.schedule, ScheduleConfig):
            raise ConfigError(f"RunConfig.schedule must be a ScheduleConfig, got {type(self.schedule).__name__}")


@dataclass
class TrainResult:
    params: Params  # parameters with the best validation loss
    last_params: Params
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    stop_reason: str  # "completed", "early stopping", "interrupted"
    seconds: float
    run_id: str | None = None  # names the run in every checkpoint it writes (None: a run from before run ids)
    position: str = ""  # where the run stopped, for messages: "epoch 3, after batch 5 of 7"
    threads: dict | None = None  # ThreadTuner.summary() of an adaptive thread count, or None (a fixed one)


@dataclass
class _Progress:
    """Where the run is; saved in the checkpoint so a resume continues exactly."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # training loss of the current epoch so far (sum over samples)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: losses, seconds, backend
    first_loss: float | None = None  # of the run's first minibatch: the scale a diverging loss is judged by
    schedule: dict = field(default_factory=dict)  # LRSchedule.state() at the end of the last epoch

    def where(self, batches_per_epoch: int) -> str:
        """The position in words: "the end of epoch 3" or "epoch 4, after batch 5 of 7"."""
        if self.batch == 0:
            return f"the end of epoch {self.epoch}" if self.epoch else "the start (no step taken)"
        return f"epoch {self.epoch + 1}, after batch {self.batch} of {batches_per_epoch}"

    def best_train_loss(self) -> float:
        return min([self.first_loss if self.first_loss is not None else math.inf,
                    *(h["train_loss"] for h in self.history)])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def evaluate(backend: Backend, cfg: ModelConfig, params: Params, x: np.ndarray, y: np.ndarray,
             chunk: int = 4096, lengths: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Outputs and mean loss (over valid terms, with ``lengths``) of a whole split, in chunks
    to bound memory."""
    outputs = np.concatenate([backend.forward(cfg, params, x[i : i + chunk], **_lengths_of(lengths, i, chunk))
                              for i in range(0, len(x), chunk)])
    return outputs, mean_loss(cfg, outputs, y, lengths)


def _lengths_of(lengths: np.ndarray | None, start: int, count: int) -> dict:
    """forward's lengths= for rows start .. start+count (none without lengths)."""
    return {} if lengths is None else {"lengths": lengths[start : start + count]}


def stream_outputs(backend: Backend, cfg: ModelConfig, params: Params, x: np.ndarray, streams: int,
                   world: World = SINGLE) -> np.ndarray:
    """Outputs of a split laid out as ``streams`` streams (row k*streams + b: chunk k of stream
    b), chunk after chunk, each starting from the state the last one ended with (zeros
    first). With several ranks each runs its share of the streams, and every rank gets all
    the outputs, in the split's row order."""
    mine = shard(streams, world.size, world.rank)
    state, outputs = None, []
    for start in range(0, len(x), streams):
        rows = x[start : start + streams][mine]
        out, state = backend.forward(cfg, params, rows, initial_state=state, return_state=True)
        outputs.append(out)
    outputs = np.stack(outputs)  # (chunks, this rank's streams, T, O)
    if world.distributed:
        outputs = np.concatenate(world.allgather(outputs), axis=1)
    return outputs.reshape(len(x), *outputs.shape[2:])


def split_loss(backend: Backend, cfg: ModelConfig, params: Params, x: np.ndarray, y: np.ndarray,
               world: World = SINGLE, lengths: np.ndarray | None = None, streams: int | None = None) -> float:
    """Mean loss over a split; with several ranks each evaluates its shard and the sums over
    terms are added. ``streams``: the split is a stateful run's streams (stream_outputs)."""
    if streams is not None:
        return mean_loss(cfg, stream_outputs(backend, cfg, params, x, streams, world), y)
    if not world.distributed:
        return evaluate(backend, cfg, params, x, y, lengths=lengths)[1]
    part = shard(len(x), world.size, world.rank)
    rows = part.stop - part.start
    terms = count_terms(cfg, lengths, np.arange(part.start, part.stop))
    mine = lengths[part] if lengths is not None else None
    total = np.array([evaluate(backend, cfg, params, x[part], y[part], lengths=mine)[1] * terms if rows else 0.0,
                      terms])
    world.allreduce_(total)
    return float(total[0] / total[1])


def count_terms(cfg: ModelConfig, lengths: np.ndarray | None, rows: np.ndarray) -> int:
    """How many loss terms these rows have, up to a factor every row shares: one per row,
    or with lengths in a many-to-many model one per valid step (design.md section 8)."""
    if lengths is None or not cfg.many_to_many:
        return len(rows)
    return int(lengths[rows].sum())


def split_parts(data: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, y, lengths) of a split given as (x, y) or (x, y, lengths)."""
    if len(data) == 3:
        return data[0], data[1], data[2]
    x, y = data
    return x, y, None


def train(
    backend: Backend,
    cfg: ModelConfig,
    opt: OptimizerConfig,
    params: Params,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    run: RunConfig,
    *,
    resume: Checkpoint | None = None,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    world: World = SINGLE,
    threads: ThreadTuner | None = None,
) -> TrainResult:
    """Train ``params`` with ``backend``; see the module docstring for the guarantees.

    ``train_data``, ``val_data``: (x, y), or (x, y, lengths) for rows of different lengths.
    ``meta`` is stored in every checkpoint (dataset description, scaler, ...).
    ``resume``: a checkpoint written by this function (last.npz) to continue from.
    ``on_epoch``: called on rank 0 with each epoch's record (losses, seconds, backend).
    ``world``: the ranks of a data-parallel run (lstmbench.training.distributed). Every rank calls
    train with the same arguments and data; rank 0's parameters (or ``resume``, which
    only rank 0 needs) are broadcast, and only rank 0 writes checkpoints.
    ``threads``: a tuner that picks each step's thread count (lstmbench.training.threads); None
    keeps the backend's count. Either gives the same bits: only the time differs.
    """
    meta = dict(meta or {})
    _agree_on_the_run(backend, cfg, opt, run, meta, train_data, val_data, world)
    trainer = _Trainer(backend, cfg, opt, run, meta, train_data, val_data, world, on_epoch, threads)
    trainer.start(params, resume)
    return trainer.run()


def _agree_on_the_run(backend: Backend, cfg, opt, run: RunConfig, meta: dict, train_data, val_data,
                      world: World) -> None:
    """The data is valid, and (MPI agreement point) every rank has the same run and data."""
    (x, y, lengths), (x_val, y_val, lengths_val) = split_parts(train_data), split_parts(val_data)
    with world.together("checking the data"):
        for xs, ys, ls in ((x, y, lengths), (x_val, y_val, lengths_val)):
            check_inputs(cfg, xs)
            check_targets(cfg, xs, ys)
            if ls is not None:
                check_lengths(xs, ls)
        _check_sequences(backend, run, lengths is not None or lengths_val is not None, len(x), len(x_val))
        if world.distributed:
            _check_shards(len(x), run.batch_size, world.size)
    world.check_same({"model": cfg.to_dict(), "optimizer": opt.to_dict(),
                      "run": vars(run) | {"out_dir": None, "schedule": run.schedule.to_dict()},
                      "meta": meta}, "the run configuration")
    arrays = {"x": x, "y": y, "x_val": x_val, "y_val": y_val}
    arrays |= {k: v for k, v in (("lengths", lengths), ("lengths_val", lengths_val)) if v is not None}
    world.check_same_arrays(arrays, "the data")


def _check_sequences(backend: Backend, run: RunConfig, lengths: bool, n: int, n_val: int) -> None:
    """A run with lengths or a carried state needs a backend that takes them; a stateful
    run's splits hold whole chunks of its batch_size streams."""
    if (lengths or run.stateful) and not backend.capabilities.sequences:
        what = "a stateful run (a state carried across minibatches)" if run.stateful else "rows of different lengths"
        raise UnsupportedError(f"backend {backend.name!r} does not take lengths or states yet, which {what} needs "
                               "(design.md section 8); the numpy reference does")
    if run.stateful:
        if lengths:
            raise ConfigError("a stateful run takes whole chunks of its streams, without lengths")
        for part, rows in (("training", n), ("validation", n_val)):
            if rows % run.batch_size:
                raise ConfigError(f"a stateful run's {part} data must hold whole chunks of its {run.batch_size} "
                                  f"streams (batch_size), got {rows} rows")


class _Trainer:
    """One run of the loop: its settings, the backend's state and where the run stands. Each
    method is one part a reader can follow: start, an epoch, a step, the end of an epoch (the
    checkpoints and the decision to stop), and the result."""

    def __init__(self, backend, cfg, opt, run, meta, train_data, val_data, world, on_epoch, tuner) -> None:
        self.backend, self.cfg, self.opt, self.run_cfg, self.meta = backend, cfg, opt, run, meta
        self.tuner = tuner
        self.x, self.y, self.lengths = split_parts(train_data)
        self.x_val, self.y_val, self.lengths_val = split_parts(val_data)
        self.world, self.on_epoch = world, on_epoch
        self.batches_per_epoch = math.ceil(len(self.x) / run.batch_size)
        self.schedule = LRSchedule(run.schedule, opt.lr, self.batches_per_epoch, run.epochs)
        self.total_terms = count_terms(cfg, self.lengths, np.arange(len(self.x)))
        self.guard = _InterruptGuard()

    def start(self, params: Params, resume: Checkpoint | None) -> None:
        """The state to train from: ``params``, or the checkpoint's (MPI: rank 0's, broadcast)."""
        progress, opt_state, best_params, carried = _Progress(), None, params, None
        self.run_id = resume.meta.get("run_id") if resume is not None else uuid.uuid4().hex
        with self.world.together("restoring the checkpoint"):
            if resume is not None and self.world.is_root:
                params, opt_state, progress, carried = _restore(resume, self.cfg, self.opt, self.run_cfg, self.meta)
                best_params = _load_best(self.run_cfg.out_dir, self.cfg, self.run_id, progress, fallback=params)
        params, opt_state, progress, best_params, carried = self.world.bcast(
            (params, opt_state, progress, best_params, carried))
        self.progress, self.best_params = progress, best_params
        self.schedule.load(progress.schedule)
        self.state = self.backend.init_state(self.cfg, params, self.opt, opt_state, seed=self.run_cfg.seed)
        if carried is not None:  # a stateful run stopped mid-epoch: this rank's streams' state
            mine = shard(self.run_cfg.batch_size, self.world.size, self.world.rank)
            self.backend.set_carried_state(self.state, tuple(np.ascontiguousarray(s[:, mine]) for s in carried))

    def run(self) -> TrainResult:
        """Epochs until the budget, early stopping or an interrupt (saved at a safe point)."""
        started, stop_reason = time.perf_counter(), "completed"
        bar = progress_bar(self.run_cfg.progress and self.world.is_root,
                           total=self.run_cfg.epochs * self.batches_per_epoch,
                           initial=self.progress.epoch * self.batches_per_epoch + self.progress.batch,
                           unit="batch", desc=f"train[{self.backend.name}]", leave=False)
        try:
            with self.guard, bar:
                while self.progress.epoch < self.run_cfg.epochs:
                    if not self.epoch(bar):
                        stop_reason = "interrupted"
                        break
                    stop_reason = self.end_of_epoch(bar)
                    if stop_reason != "completed":
                        break
        except KeyboardInterrupt as exc:  # raised by code the guard does not cover (a backend's own)
            if isinstance(exc, _ForcedStop):
                raise  # second Ctrl-C: stop now; the last checkpoint on disk stays as it was
            stop_reason = "interrupted"
        finally:
            self.state.gradient_hook = None
        if stop_reason == "interrupted":  # the exact position (mid-epoch too): a resume continues bit for bit
            self.checkpoint(LAST_CHECKPOINT, self.backend.get_params(self.state), with_state=True)
        return TrainResult(self.best_params, self.backend.get_params(self.state), self.progress.history,
                           self.progress.best_epoch, self.progress.best_val_loss, stop_reason,
                           time.perf_counter() - started, self.run_id, self.progress.where(self.batches_per_epoch),
                           self.tuner.summary() if self.tuner else None)

    def epoch(self, bar) -> bool:
        """The remaining minibatches of the current epoch; False when an interrupt stopped it
        after a step (with several ranks, all stop at the same step: see stop_requested)."""
        self.epoch_started = time.perf_counter()
        if self.run_cfg.stateful:  # the streams in order; every epoch starts from a zero state
            order = np.arange(len(self.x))
            if self.progress.batch == 0:
                self.backend.set_carried_state(self.state, None)
        else:
            order = epoch_order(len(self.x), self.run_cfg.seed, self.progress.epoch)
        best_loss = self.progress.best_train_loss()
        size = self.run_cfg.batch_size
        while self.progress.batch < self.batches_per_epoch:
            rows = order[self.progress.batch * size : (self.progress.batch + 1) * size]
            best_loss = self.step(rows, best_loss)
            bar.update(1)
            if self.stop_requested():  # a safe point: the step and its bookkeeping are done
                return False
        return True

    def step(self, rows: np.ndarray, best_loss: float) -> float:
        """One minibatch; the best loss so far, to judge the next one by."""
        progress, world = self.progress, self.world
        part, first_row = rows, 0
        if world.distributed:  # this rank's shard; the hook sums gradients, losses and stop requests over ranks
            mine = shard(len(rows), world.size, world.rank)
            part, first_row = rows[mine], mine.start  # dropout masks follow the row in the global minibatch
            self.state.gradient_hook = world.gradient_hook(count_terms(self.cfg, self.lengths, part),
                                                           count_terms(self.cfg, self.lengths, rows),
                                                           lambda: self.guard.requested)
        extra = {} if self.lengths is None else {"lengths": self.lengths[part]}
        if first_row:
            extra["first_row"] = first_row
        if self.run_cfg.stateful:
            extra["carry_state"] = True
        self.state.lr = self.schedule.lr(self.state.step + 1)
        try:
            with self.tuner.step(self.backend, len(part)) if self.tuner else nullcontext():
                loss = float(self.backend.train_step(self.state, self.x[part], self.y[part], **extra))
        except DeviceError as exc:  # a GPU failure (out of memory, a failed launch)
            raise DeviceError(f"{exc}; at epoch {progress.epoch + 1}, batch {progress.batch + 1} the run stopped. "
                              f"{_kept(self.run_cfg, progress)}") from exc
        if progress.first_loss is None:
            progress.first_loss = best_loss = loss
        exploded = 0 < best_loss < math.inf and EXPLODED * best_loss < loss < math.inf
        if not math.isfinite(loss) or exploded:  # the loss is the global one: every rank stops here
            what = (f"exploded to {loss:.3g}, over {EXPLODED:g} times its best so far ({best_loss:.3g})"
                    if exploded else f"became {loss}")
            raise on_every_rank(DivergenceError(
                f"training loss {what} at epoch {progress.epoch + 1}, batch {progress.batch + 1}: the run "
                f"diverged and stopped. {_kept(self.run_cfg, progress)} {ADVICE}"))
        progress.loss_sum += loss * count_terms(self.cfg, self.lengths, rows)
        progress.batch += 1
        return best_loss

    def stop_requested(self) -> bool:
        """Ctrl-C or SIGTERM since the last safe point. With several ranks the gradient hook has
        added up every rank's request in the step's Allreduce, so every rank answers the same."""
        return self.state.gradient_hook.stop if self.world.distributed else self.guard.requested

    def end_of_epoch(self, bar) -> str:
        """Validation, the history, the checkpoints; "completed" to go on, or why the run stops."""
        progress, world = self.progress, self.world
        current = self.epoch_params()
        with self.tuner.best_count(self.backend) if self.tuner else nullcontext():  # validation too
            val_loss = split_loss(self.backend, self.cfg, current, self.x_val, self.y_val, world, self.lengths_val,
                                  self.run_cfg.batch_size if self.run_cfg.stateful else None)
        if not math.isfinite(val_loss):
            raise on_every_rank(DivergenceError(f"validation loss became {val_loss} after epoch {progress.epoch + 1}; "
                                                f"{_kept(self.run_cfg, progress)}"))
        record = {"epoch": progress.epoch + 1, "train_loss": progress.loss_sum / self.total_terms, "val_loss": val_loss,
                  "lr": self.state.lr,  # the rate of the epoch's last step
                  "seconds": time.perf_counter() - self.epoch_started, "backend": self.backend.name}
        if self.tuner:
            record["threads"] = self.tuner.last  # the count the epoch ended on
        progress.history.append(record)
        progress.epoch, progress.batch, progress.loss_sum = progress.epoch + 1, 0, 0.0
        self.schedule.end_epoch(val_loss)  # (every rank has the same validation loss)
        progress.schedule = self.schedule.state()
        if val_loss < progress.best_val_loss - self.run_cfg.min_delta:
            progress.best_val_loss, progress.best_epoch, progress.bad_epochs = val_loss, progress.epoch, 0
            self.best_params = current
            self.checkpoint(BEST_CHECKPOINT, current, with_state=False)
        else:
            progress.bad_epochs += 1
        self.checkpoint(LAST_CHECKPOINT, current, with_state=True)
        bar.set_postfix(train=f"{record['train_loss']:.4g}", val=f"{val_loss:.4g}", lr=f"{record['lr']:.3g}")
        if self.on_epoch and world.is_root:
            self.on_epoch(record)
        patience = self.run_cfg.patience
        if world.bcast(patience is not None and progress.bad_epochs >= patience):  # MPI: rank 0 decides
            return "early stopping"
        return "interrupted" if world.any(self.guard.requested) else "completed"  # MPI: any rank's Ctrl-C

    def epoch_params(self) -> Params:
        """The parameters at the end of an epoch, finite and (MPI agreement point) the same on every rank."""
        try:
            current = self.backend.get_params(self.state)
        except NonFiniteError as exc:  # the last step of the epoch diverged (its loss was still finite)
            raise on_every_rank(DivergenceError(
                f"the parameters became NaN or infinite in epoch {self.progress.epoch + 1} ({exc}); "
                f"{_kept(self.run_cfg, self.progress)} {ADVICE}")) from None
        self.world.check_same_arrays(current, f"the parameters after epoch {self.progress.epoch + 1}",
                                     fix="their models drifted apart; the backend must make the same update on every "
                                         "rank (deterministic, and through the training state's gradient hook)")
        return current

    def checkpoint(self, name: str, params: Params, with_state: bool) -> None:
        """best.npz (``with_state`` False) or last.npz, written by rank 0 alone."""
        run = self.run_cfg
        if run.out_dir is None:
            return
        carried = self.carried_state() if with_state else None  # (collective: every rank calls checkpoint)
        if not self.world.is_root:
            return
        meta = {**self.meta, "run_id": self.run_id}
        if with_state:
            meta |= {"run": _run_meta(run, self.backend), "progress": vars(self.progress).copy()}
        try:
            save_checkpoint(Path(run.out_dir) / name, self.cfg, params, self.opt,
                            self.backend.get_optimizer_state(self.state) if with_state else None, meta, carried)
        except OutputError as exc:
            raise OutputError(f"{exc}; the run stopped at the end of epoch {self.progress.epoch}. Checkpoints "
                              f"already in {run.out_dir} are unchanged (each is replaced only once its new copy is "
                              "complete); free space and continue with --resume") from None

    def carried_state(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The state a stateful run carries into its next minibatch, for every stream (MPI:
        gathered from the ranks, which hold contiguous shards of the streams in rank order);
        None at the start of an epoch, which starts from zeros."""
        if not self.run_cfg.stateful or self.progress.batch == 0:
            return None
        mine = self.backend.carried_state(self.state)
        if not self.world.distributed:
            return mine
        parts = self.world.allgather(mine)
        return tuple(np.concatenate([p[k] for p in parts], axis=1) for k in range(2))


def _check_shards(n: int, batch_size: int, ranks: int) -> None:
    """Every minibatch, the last (partial) one too, must give every rank at least one row.
    ``n`` >= 1: train checks the inputs (at least one sequence) first."""
    smallest = n % batch_size or batch_size
    if smallest < ranks:
        raise DistributedError(
            f"{ranks} ranks but a minibatch of {smallest} rows (batch size {batch_size}, {n} training examples"
            f"{', the last batch of each epoch' if smallest < min(batch_size, n) else ''}): every rank needs at "
            "least one row; use fewer ranks or another --batch-size")


class _ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C: stop without saving."""


class _InterruptGuard:
    """Defers Ctrl-C (SIGINT), and SIGTERM (what a scheduler sends before it kills a
    job), to the next safe point of the loop (after a step and its bookkeeping), so the
    saved position always matches the saved parameters. A second signal stops at once.
    Only the main thread receives signals."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> "_InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_sigint) for s in self.SIGNALS}
        return self

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise _ForcedStop()
        self.requested = True

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}


def _kept(run: RunConfig, progress: _Progress) -> str:
    if run.out_dir is None:
        return "No checkpoints are written in this run."
    if progress.epoch == 0 and not progress.history:
        return "No epoch had finished, so no checkpoint was written."
    return f"The last good checkpoint (epoch {progress.epoch}) is kept in {Path(run.out_dir) / LAST_CHECKPOINT}."


def _run_meta(run: RunConfig, backend: Backend | None = None) -> dict[str, Any]:
    """The run's settings as a checkpoint records them; a resume must match RESUME_MUST_MATCH."""
    saved = {"batch_size": run.batch_size, "seed": run.seed, "epochs": run.epochs, "patience": run.patience,
             "stateful": run.stateful, "schedule": run.schedule.to_dict()}
    if backend is not None:
        saved |= {"backend": backend.name, "threads": backend.threads}
    return saved


#: what a resumed run must share with its checkpoint to continue exactly (the rest, such as
#: the epoch budget or the backend, may change); a checkpoint from before stateful runs has none
RESUME_MUST_MATCH = ("batch_size", "seed", "stateful", "schedule")
RESUME_DEFAULTS = {"stateful": False, "schedule": ScheduleConfig().to_dict()}


def _restore(ckpt: Checkpoint, cfg: ModelConfig, opt: OptimizerConfig, run: RunConfig, meta: dict):
    """Parameters, optimizer state, position and carried state (None: none) from a last.npz,
    checked against this run (model, optimizer, batch size, seed, and the data: its
    fingerprint and description in ``meta``)."""
    saved_meta = {k: v for k, v in ckpt.meta.items() if k not in ("run", "progress", "run_id")}
    difference = data_difference(saved_meta.get("fingerprint"), meta.get("fingerprint"))
    if difference:
        raise CheckpointError(f"the data differs from the data the checkpoint was trained on: {difference}; "
                              "resume with the same data")
    if json.loads(json.dumps(meta)) != saved_meta:
        raise CheckpointError(f"checkpoint was trained on {saved_meta}, this run uses {meta}; "
                              "resume with the same data and windows")
    if ckpt.model != cfg:
        raise CheckpointError(f"checkpoint model {ckpt.model} does not match this run's {cfg}")
    if ckpt.optimizer != opt:
        raise CheckpointError(f"checkpoint optimizer {ckpt.optimizer} does not match this run's {opt}")
    saved = ckpt.meta.get("run")
    if not isinstance(saved, dict) or ckpt.opt_state is None or not isinstance(ckpt.meta.get("progress"), dict):
        raise CheckpointError("checkpoint has no training state to resume from (use last.npz)")
    ours = _run_meta(run)
    differ = [f"{k} {saved.get(k, RESUME_DEFAULTS.get(k))} (this run: {ours[k]})" for k in RESUME_MUST_MATCH
              if saved.get(k, RESUME_DEFAULTS.get(k)) != ours[k]]
    if differ:
        raise CheckpointError(f"the checkpoint was written with {'; '.join(differ)}: batch size and seed, the "
                              "learning-rate schedule and whether the run is stateful must match to resume exactly")
    try:
        progress = _Progress(**ckpt.meta["progress"])
    except TypeError as exc:
        raise CheckpointError(f"checkpoint's training position is damaged: {exc}") from None
    return ckpt.params, ckpt.opt_state, progress, _restored_carry(ckpt, cfg, run, progress)


def _restored_carry(ckpt: Checkpoint, cfg: ModelConfig, run: RunConfig, progress: _Progress):
    """The carried state of a stateful run stopped mid-epoch (None otherwise), checked: one row
    per stream, the model's layers, hidden size and dtype."""
    if not run.stateful or progress.batch == 0:
        return None
    want = (cfg.num_layers, run.batch_size, cfg.hidden_size)
    if ckpt.carried is None or any(s.shape != want or s.dtype != cfg.np_dtype for s in ckpt.carried):
        raise CheckpointError(f"the checkpoint stopped in the middle of an epoch of a stateful run but holds no "
                              f"carried state of {want} {cfg.dtype} values (it has "
                              f"{None if ckpt.carried is None else [s.shape for s in ckpt.carried]}): it cannot "
                              "continue bit for bit")
    return ckpt.carried


def data_difference(saved: dict | None, current: dict | None) -> str:
    """Which parts of the data differ between two fingerprints (experiment.fingerprint), in
    words; "" when they agree or either is missing (checked by the data description then)."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return ""
    parts = []
    for part in sorted(set(saved) | set(current)):
        was, now = saved.get(part), current.get(part)
        if was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict) and was.get("examples") != now.get("examples"):
            parts.append(f"the {part} part has {now.get('examples')} examples, the checkpoint's had "
                         f"{was.get('examples')}")
        else:
            parts.append(f"the values of the {part} part differ")
    return "; ".join(parts)


def _load_best(out_dir, cfg: ModelConfig, run_id: str | None, progress: _Progress, fallback: Params) -> Params:
    """The best parameters so far, from best.npz beside the resumed last.npz: it must exist when
    the run has a best epoch and belong to the same run (run id and model)."""
    if out_dir is None or progress.best_epoch == 0:
        return fallback
    path = Path(out_dir) / BEST_CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the run's best model (epoch {progress.best_epoch}) cannot be "
                              "restored; put it back, or start the run again with --overwrite")
    best = load_checkpoint(path)
    if best.meta.get("run_id") != run_id or best.model != cfg:
        raise CheckpointError(f"{path} belongs to another run (run id {best.meta.get('run_id')}, model "
                              f"{best.model}; this run is {run_id}, {cfg}): it cannot be the best model of the run "
                              "being resumed; put the run's own best.npz back, or start again with --overwrite")
    return best.params
