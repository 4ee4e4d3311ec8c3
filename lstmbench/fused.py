"""The host side of a fused training step, written once for every fast backend.

A backend that keeps its parameters, gradient and optimizer buffers as flat vectors
(lstmbench.layout) subclasses :class:`FusedBackend` and supplies kernels only:

* ``_loss_and_gradient(state, x, y)``: forward and backward at the state's parameters,
  the batch's gradient into ``state.grad``; returns the mean loss;
* ``_update(state, scalars)``: clipping (by ``scalars.clip_norm``, of the gradient in
  ``state.grad``) and the SGD/Adam update, with the step's constants from ``scalars``;
* optionally ``_fused_step(state, x, y, scalars)``: both in one call (used when no
  gradient hook is set); by default the two above in turn;
* optionally ``_make_workspace(key)`` and ``_workspace_key(cfg, x)``: scratch memory per
  batch shape, which the kernels take with ``with self.workspace(cfg, x) as ws``.

Lengths and states (a backend with Capabilities(sequences=True)): ``_loss_and_gradient`` and
``_fused_step`` take ``lengths=`` and ``initial_state=`` keywords, and, in a step that carries
the state (``train_step(..., carry_state=True)``), ``return_state=True``: they then return
``(loss, (h_n, c_n))``, the batch's final state at the parameters before the update, in the
backend's own arrays (device arrays stay on the device); ``initial_state`` is then the pair a
previous step returned. ``_carried_to_host`` / ``_carried_from_host`` (lstmbench.protocol)
copy it out for checkpoints and back in on resume.

Dropout (a backend with Capabilities(dropout=True), a model with ``cfg.dropout > 0``): the two
kernels above then also get ``dropout=`` a DropoutDraw; :class:`DropoutPlan` turns it into
what a kernel needs (per-site keys, the threshold, the scale, each kernel row's global index).

The base owns the rest: the flat training state, the step counter, the step's scalars
(:func:`lstmbench.optim.step_scalars`, computed once per step on the host, as llm.c's
adamw() wrapper hands its kernel bias-corrected scalars), the gradient hook between the
gradient and the update (so clipping sees the hooked gradient), and the workspace cache.
"""

from __future__ import annotations

import functools
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator

import numpy as np

from lstmbench.config import DropoutDraw, ModelConfig
from lstmbench.layout import FlatTrainState, Layout
from lstmbench.optim import StepScalars, step_scalars
from lstmbench.protocol import Backend

__all__ = ["MAX_WORKSPACE_SHAPES", "DropoutPlan", "FlatTrainState", "FusedBackend", "RowOrder", "WorkspaceCache"]

#: shapes whose workspaces are kept: a run sees a few (full batches, the last partial batch)
MAX_WORKSPACE_SHAPES = 8


@dataclass(frozen=True)
class RowOrder:
    """The batch's rows in the order a kernel with batch shards takes them (design.md section
    8): sorted by length, longest first (stable), and dealt to the shards in turn (dealt_ranks),
    so that in every shard the rows that take step t are a prefix, each step runs over the rows
    still going, and every shard holds long and short rows alike, so that its thread finishes
    with the others. Without lengths, the order is the batch's own and every row takes every step."""

    perm: np.ndarray | None  # kernel position -> batch row; None: the batch's own order
    lengths: np.ndarray  # (B,) int64, in the kernel's order
    state: tuple[np.ndarray, np.ndarray] | None  # (h0, c0), (L, B, H), in the kernel's order

    @classmethod
    def of(cls, x: np.ndarray, lengths=None, initial_state=None, shard_rows: int | None = None) -> "RowOrder":
        """``shard_rows``: the rows of the kernel's shards (the last may have fewer); None: one shard."""
        B, T = x.shape[0], x.shape[1]
        if lengths is None:
            return cls(None, np.full(B, T, np.int64), initial_state)
        perm = np.argsort(-lengths, kind="stable")[dealt_ranks(B, min(shard_rows or B, B))]
        if np.array_equal(perm, np.arange(B)):
            perm = None
        state = initial_state if initial_state is None or perm is None else tuple(s[:, perm] for s in initial_state)
        return cls(perm, np.ascontiguousarray(lengths if perm is None else lengths[perm], np.int64), state)

    def rows(self, a):
        """``a``'s rows (axis 0) in the kernel's order."""
        return a if self.perm is None or a is None else a[self.perm]

    def restore(self, a: np.ndarray, axis: int = 0) -> np.ndarray:
        """Rows in the kernel's order back to the batch's order (always a copy)."""
        out = np.array(a, copy=True)
        if self.perm is not None:
            index = [slice(None)] * a.ndim
            index[axis] = self.perm
            out[tuple(index)] = a
        return out


@dataclass(frozen=True)
class DropoutPlan:
    """A training step's dropout masks as a kernel draws them (design.md section 9): element j
    of kernel row k at step t of site s (width W = H) is kept when
    fmix32(((rows[k] * T + t) * W + j) ^ keys[s]) >= threshold, on uint32, and kept values are
    multiplied by ``scale``. Sites 1 .. L-1 are the inputs of layers 1 .. L-1, site L the head's;
    ``keys[0]`` is unused. For a many-to-one head, t is the last step the row takes."""

    keys: np.ndarray  # (L+1,) uint32
    threshold: int  # floor(p * 2**32), compared as uint32
    scale: np.floating  # 1 / (1 - p) in the model's dtype
    rows: np.ndarray  # (B,) uint32: each kernel row's index in the global minibatch

    @classmethod
    def of(cls, cfg: ModelConfig, draw: DropoutDraw, order: RowOrder) -> "DropoutPlan":
        B = len(order.lengths)
        batch_rows = np.arange(B, dtype=np.int64) if order.perm is None else order.perm.astype(np.int64)
        keys = np.array([0] + [draw.site_key(site) for site in range(1, cfg.num_layers + 1)], np.uint32)
        rows = ((draw.first_row + batch_rows) & 0xFFFFFFFF).astype(np.uint32)
        return cls(keys, DropoutDraw.threshold(cfg.dropout), DropoutDraw.scale(cfg.dropout, cfg.dtype), rows)


@functools.lru_cache(maxsize=64)
def dealt_ranks(batch: int, rows: int) -> np.ndarray:
    """For each position of a kernel's shards of ``rows`` rows (the last may have fewer), the
    rank (0: longest) of the row placed there: the ranks are dealt to the shards in turn,
    skipping full ones, so each shard's rows stay longest first and the shards' total steps
    are about equal. Measured on the suite's varlen batch (two shards, tools/varlen_step.py): c
    0.72-0.77 of the full batch's step with the longest half in one shard, 0.56-0.65 dealt;
    numba 0.80-0.81 and 0.66-0.68 (docs/c-backend.md)."""
    count = math.ceil(batch / rows)
    room = [min(rows, batch - s * rows) for s in range(count)]
    shards: list[list[int]] = [[] for _ in range(count)]
    rank = 0
    while rank < batch:
        for s in range(count):
            if len(shards[s]) < room[s] and rank < batch:
                shards[s].append(rank)
                rank += 1
    ranks = np.concatenate(shards)
    ranks.setflags(write=False)  # shared by every caller
    return ranks


class WorkspaceCache:
    """Workspaces by shape, made once and reused; concurrent callers get different ones.

    At most ``max_shapes`` shapes are kept: a new shape beyond them empties the cache first,
    so a caller that keeps changing shapes does not keep every workspace it ever needed."""

    def __init__(self, max_shapes: int = MAX_WORKSPACE_SHAPES) -> None:
        self.max_shapes = max_shapes
        self._free: dict[Hashable, list[Any]] = {}  # key -> workspaces not in use
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The shapes held."""
        return len(self._free)

    @contextmanager
    def lease(self, key: Hashable, make: Callable[[], Any]) -> Iterator[Any]:
        """A workspace for ``key``: a free one, or ``make()``; it is back in the cache when
        the block ends (raised or not). ``make`` failing leaves the cache as it was."""
        with self._lock:
            free = self._free.get(key)
            workspace = free.pop() if free else None
        if workspace is None:
            workspace = make()
        try:
            yield workspace
        finally:
            self._give_back(key, workspace)

    def _give_back(self, key: Hashable, workspace: Any) -> None:
        with self._lock:
            if key not in self._free and len(self._free) >= self.max_shapes:
                self._free.clear()
            self._free.setdefault(key, []).append(workspace)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


class FusedBackend(Backend):
    """Base of a backend with a fused training step on flat vectors: it supplies the kernels
    (see the module docstring), and ``_forward`` and ``_loss_and_grads`` as every backend."""

    def __init__(self) -> None:
        super().__init__()
        self.workspaces = WorkspaceCache()

    # -- kernels: what a fused backend supplies ---------------------------------------------

    def _loss_and_gradient(self, state: FlatTrainState, x: np.ndarray, y: np.ndarray, **sequences):
        """Forward and backward at the state's parameters, the batch's gradient into ``state.grad``
        (flat, the layout's order); returns the batch's mean loss. ``sequences``: lengths= and
        initial_state=, for a backend that declares Capabilities(sequences=True); with
        return_state=True (a step that carries the state) it returns ``(loss, (h_n, c_n))``."""
        raise NotImplementedError

    def _update(self, state: FlatTrainState, scalars: StepScalars) -> None:
        """Clip ``state.grad`` by ``scalars.clip_norm`` (torch.nn.utils.clip_grad_norm_ on its
        global norm, see ``scalars.clip_scale``) and update ``state.theta`` and
        ``state.slots`` by SGD or Adam (``scalars.kind``) with the constants in ``scalars``."""
        raise NotImplementedError

    def _fused_step(self, state: FlatTrainState, x: np.ndarray, y: np.ndarray, scalars: StepScalars,
                    **sequences):
        """Loss, gradient, clipping and update in one call (no gradient hook is set); returns
        the loss (with return_state=True: ``(loss, (h_n, c_n))``, as _loss_and_gradient).
        Override with a kernel that does it all at once."""
        loss = self._loss_and_gradient(state, x, y, **sequences)
        self._update(state, scalars)
        return loss

    def _workspace_key(self, cfg: ModelConfig, x: np.ndarray) -> Hashable:
        """What a workspace depends on: the model and the batch's shape by default; a backend
        adds what else shapes its buffers (threads, a parallel plan)."""
        return (cfg, x.shape[0], x.shape[1])

    def _make_workspace(self, key: Hashable) -> Any:
        """A new workspace for ``key`` (from _workspace_key); None where none is needed."""
        return None

    def _gradient_to_host(self, state: FlatTrainState) -> np.ndarray:
        """``state.grad`` as a host vector, for the gradient hook (a device copies it out)."""
        return state.grad

    def _gradient_from_host(self, state: FlatTrainState, host: np.ndarray) -> None:
        """Take back what the hook made of the host vector (a device copies it in)."""

    # -- the host side ------------------------------------------------------------------------

    def workspace(self, cfg: ModelConfig, x: np.ndarray, *more):
        """``with self.workspace(cfg, x) as ws``: this batch shape's workspace, for the block
        (``more``: whatever else the backend's _workspace_key takes)."""
        key = self._workspace_key(cfg, x, *more)
        return self.workspaces.lease(key, lambda: self._make_workspace(key))

    def _init_state(self, cfg, params, opt, opt_state) -> FlatTrainState:
        return FlatTrainState.create(Layout.of(cfg), cfg, opt, params, opt_state)

    def _train_step(self, state: FlatTrainState, x, y, **sequences):
        """One step: the gradient, the hook (when set), then clipping and the update with the
        step's scalars; the step counter moves only when the step has run. With
        return_state=True among ``sequences``: ``(loss, (h_n, c_n))``."""
        scalars = step_scalars(state.opt, state.step + 1, state.lr)
        if state.gradient_hook is None:
            out = self._fused_step(state, x, y, scalars, **sequences)
        else:
            out = self._loss_and_gradient(state, x, y, **sequences)
            loss, final = out if sequences.get("return_state") else (out, None)
            loss = self._reduce_gradient(state, loss)
            self._update(state, scalars)
            out = (loss, final) if sequences.get("return_state") else loss
        state.opt_state["step"] = np.array(scalars.step, dtype=np.int64)
        return out

    def _reduce_gradient(self, state: FlatTrainState, loss: float) -> float:
        """The gradient hook on the host copy of the gradient (TrainState.reduce_gradient)."""
        host = self._gradient_to_host(state)
        loss = state.reduce_gradient(host, loss)
        self._gradient_from_host(state, host)
        return loss
