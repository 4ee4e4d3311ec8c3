"""The Numba threaded CPU backend (registered as ``numba``).

Importing this module is cheap: numba is imported (and kernels compiled, or
loaded from the on-disk cache) only when the backend first runs.
The math and its fast form are in kernels.py; the host side of a training step
(step counter, optimizer scalars, gradient hook, workspace cache) is lstmbench.fused's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from lstmbench import Capabilities, ModelConfig
from lstmbench.fused import DropoutPlan, FusedBackend, RowOrder
from lstmbench.layout import FlatTrainState, Layout
from lstmbench.optim import StepScalars

PARALLEL = ("auto", "shards", "units")
UNITS_ROWS = 16  # auto shares out hidden units only for a batch of at most this many rows (measured)
MAX_PARTS = 2  # ... and in at most this many parts (more were not measured)
SHARD_ROWS = 64  # at most this many rows per batch shard (16 cost 30% at H=128, B=128: docs/determinism.md)
MIN_SHARDS = 2  # at least this many shards, where there are that many rows


@functools.cache
def l2_bytes() -> int:
    """One core's L2 cache in bytes (Linux sysfs), or 0 where the system does not say."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                return int(size.rstrip("KM")) * (1 << 20 if size.endswith("M") else 1 << 10 if size.endswith("K") else 1)
        except (OSError, ValueError):
            return 0
    return 0


@dataclass(frozen=True)
class Plan:
    """How a step of one shape is cut, from the shape alone: never from the thread count, so
    that 1, 2 or N threads run the same pieces with the same arithmetic, combined in the same
    order, and give the same bits (docs/determinism.md). Any number of threads takes the pieces."""

    rows: int  # rows per batch shard (the last one possibly fewer)
    parts: int  # hidden-unit parts of the one shard; 1: batch shards

    @property
    def units(self) -> bool:
        return self.parts > 1


def work_plan(parallel: str, B: int, H: int, itemsize: int, l2: int) -> Plan:
    """Batch shards: at least MIN_SHARDS (where there are rows), of at most SHARD_ROWS rows;
    or, auto, as measured
    (docs/numba-backend.md): one shard whose hidden units are cut into parts that each fit half
    of one core's L2, when the batch has few rows and W_h (4H^2 reals) does not fit one L2;
    then every thread streams its parts of W_h from its own L2 at each step instead of all of
    it from L3. Otherwise a parallel region per time step costs more than it saves."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    w_h = 4 * H * H * itemsize
    parts = max(2, math.ceil(w_h / (l2 / 2))) if l2 else 2
    few_rows = B <= UNITS_ROWS and l2 and w_h >= l2 and parts <= MAX_PARTS
    if parallel == "units" or (parallel == "auto" and few_rows):
        return Plan(rows=B, parts=parts)  # (a part past the last unit is empty: H=1 has one idle)
    return Plan(rows=min(SHARD_ROWS, math.ceil(B / MIN_SHARDS)), parts=1)


@dataclass
class Workspace:
    """Every buffer one call needs, for one (batch, steps, plan) shape; reused across calls.
    ``buffers``: kernels.ShardArgs' fields from shard_lo on, by name."""

    plan: Plan
    buffers: dict[str, np.ndarray]

    @classmethod
    def make(cls, cfg: ModelConfig, B: int, T: int, size: int, plan: Plan) -> "Workspace":
        rows = plan.rows
        S = math.ceil(B / rows)
        L, H, D, O, dt = cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.output_size, cfg.np_dtype
        Tout = T if cfg.many_to_many else 1
        z = lambda *shape: np.zeros(shape, dtype=dt)  # noqa: E731 (zero: padding rows must stay 0)
        buffers = dict(
            xs=z(S, T, rows, D), hs=z(S, L, T + 1, rows, H), cs=z(S, L, T + 1, rows, H),
            gates=z(S, L, T, rows, 4 * H), tcs=z(S, L, T, rows, H), rec=z(S, rows, 4 * H),
            yout=z(S, Tout, rows, O), dy=z(S, Tout, rows, O), dh_in=z(S, T, rows, H),
            dhn=z(S, rows, H), dcn=z(S, rows, H), grads=z(S, size), losses=np.zeros(S), theta_t=z(size),
            packed=z(S, T * rows * max(D, H)),
        )
        # the parts' packed columns of W_h and W_h^T and their products (kernels.team_forward_steps);
        # one part of size 1 when the threads are on batch shards
        P, units = plan.parts, plan.units
        n = math.ceil(H / P) if units else 1
        buffers.update(whp=z(P, H if units else 1, 4 * n), rsp=z(P, rows if units else 1, 4 * n),
                       whtp=z(P, 4 * H if units else 1, n), dhp=z(P, rows if units else 1, n))
        lo = np.arange(S, dtype=np.int64) * rows
        buffers.update(shard_lo=lo, shard_nb=np.minimum(rows, B - lo).astype(np.int64), hn=z(L, B, H), cn=z(L, B, H))
        return cls(plan, buffers)


class NumbaThreads(FusedBackend):
    """Batch shards (or, for few rows, hidden units) on Numba threads, BLAS for the products, fused Adam/SGD."""

    name = "numba"
    description = "Numba, batch shards on CPU threads, fused training step"
    capabilities = Capabilities(sequences=True, dropout=True)

    def __init__(self) -> None:
        super().__init__()
        self._blas = None
        # How the threads share a step: "auto" (by the shape, work_plan), "shards" (the
        # threads take batch shards) or "units" (one shard, the threads share its hidden units;
        # a parallel region per time step); the last two for measurements.
        self.parallel = "auto"
        self.last_plan: str | None = None  # what the last call ran

    def availability(self):
        missing = [m for m in ("numba", "scipy") if find_spec(m) is None]
        if missing:
            return False, f"{' and '.join(missing)} not installed; pip install {' '.join(missing)}"
        return True, ""

    def runtime_info(self):
        import numba

        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            layer = "not yet chosen"
        from lstmbench.bench.peak import blas_info, blas_restriction

        info = {"threads": self.threads, "numba_threading_layer": layer,
                "parallel": self.parallel if self.last_plan is None else f"{self.parallel}: {self.last_plan} last",
                "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
                "blas": ", ".join(sorted({f"{b['internal_api']} {b['architecture']} kernel" for b in blas_info()}))}
        if restriction := blas_restriction():
            info["blas_restricted"] = restriction
        return info

    # -- plumbing ----------------------------------------------------------------------

    def _kernels(self):
        from lstmbench_backends.numba_cpu import kernels

        if self._blas is None:
            import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS numba uses, so it can be pinned)
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return kernels

    def _workspace_key(self, cfg: ModelConfig, x: np.ndarray, sequences: bool = False) -> tuple:
        """sequences: lengths or an initial state, which only the batch-shard plan takes."""
        B, T = x.shape[0], x.shape[1]
        parallel = "shards" if sequences else self.parallel
        return (cfg, B, T, work_plan(parallel, B, cfg.hidden_size, cfg.np_dtype.itemsize, l2_bytes()))

    def _make_workspace(self, key: tuple) -> Workspace:
        cfg, B, T, plan = key
        return Workspace.make(cfg, B, T, Layout.of(cfg).size, plan)

    def _run(self, cfg: ModelConfig, ws: Workspace, theta: np.ndarray, x: np.ndarray, y, backward: bool,
             order: RowOrder, dropout=None) -> float:
        """Run every shard on ``ws``: outputs, and with ``backward`` per-shard gradients; returns the mean loss.
        ``order``: the rows sorted longest first, their lengths and initial state (RowOrder);
        ``dropout``: a training pass's DropoutDraw (None: no dropout)."""
        import numba

        k = self._kernels()
        self.last_plan = "units" if ws.plan.units else "shards"
        B, T, dt = x.shape[0], x.shape[1], cfg.np_dtype
        xent = cfg.loss == "xent"
        Tout = T if cfg.many_to_many else 1
        x, y = order.rows(x), order.rows(y)
        valid = int(order.lengths.sum()) if cfg.many_to_many else B  # predictions that count
        if y is None:
            y_real, y_class, n_terms = np.zeros((1, 1, 1), dt), np.zeros((1, 1), np.int64), 1
        elif xent:
            y_real, y_class, n_terms = np.zeros((1, 1, 1), dt), np.ascontiguousarray(y, np.int64).reshape(B, Tout), valid
        else:
            y_real, y_class = np.ascontiguousarray(y).reshape(B, Tout, -1), np.zeros((1, 1), np.int64)
            n_terms = valid * cfg.output_size
        h0, c0 = order.state if order.state is not None else (np.zeros((1, 1, 1), dt),) * 2
        args = k.ShardArgs(x=np.ascontiguousarray(x), y_real=y_real, y_class=y_class, xent=xent,
                           coef=dt.type((1.0 if xent else 2.0) / n_terms), backward=backward, theta=theta,
                           offs=Layout.of(cfg).offs, H=cfg.hidden_size, many_to_many=cfg.many_to_many,
                           one=dt.type(1.0), row_len=order.lengths, has_state=order.state is not None,
                           h0=np.ascontiguousarray(h0), c0=np.ascontiguousarray(c0),
                           **self._dropout_fields(cfg, dropout, order), **ws.buffers)
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        with self._blas.limit(limits=1, user_api="blas"):
            k.run_shards(args)
        return float(ws.buffers["losses"].sum() / n_terms) if backward else math.nan

    @staticmethod
    def _dropout_fields(cfg: ModelConfig, dropout, order: RowOrder) -> dict:
        """ShardArgs' drop* fields: the kernels draw the masks themselves from the plan's keys (no
        mask is built here); placeholders of the same types without dropout (no new compiled variant)."""
        if dropout is None or cfg.dropout == 0:
            return {"drop": False, "drop_keys": np.zeros(1, np.uint32), "drop_rows": np.zeros(1, np.uint32),
                    "drop_threshold": np.uint64(0), "drop_scale": cfg.np_dtype.type(1.0)}
        plan = DropoutPlan.of(cfg, dropout, order)
        return {"drop": True, "drop_keys": plan.keys, "drop_rows": plan.rows,
                "drop_threshold": np.uint64(plan.threshold), "drop_scale": cfg.np_dtype.type(plan.scale)}

    @staticmethod
    def _outputs(cfg: ModelConfig, ws: Workspace, B: int) -> np.ndarray:
        yout = ws.buffers["yout"]  # (S, Tout, rows, O)
        S, Tout, rows, O = yout.shape
        out = yout.transpose(0, 2, 1, 3).reshape(S * rows, Tout, O)[:B]
        # always a copy: the reshape can be a view of the workspace, which the next call overwrites
        return np.array(out if cfg.many_to_many else out[:, 0], copy=True, order="C")

    # -- protocol ------------------------------------------------------------------------

    def _forward(self, cfg, params, x, return_state=False, **sequences):
        return self._forward_flat(cfg, Layout.of(cfg).flatten(params, cfg.np_dtype), x, return_state, **sequences)

    def _prepared_forward(self, cfg, params):
        theta = Layout.of(cfg).flatten(params, cfg.np_dtype)  # once, not at every call (generation)
        return lambda x, return_state=False, **sequences: self._forward_flat(cfg, theta, x, return_state, **sequences)

    def _forward_flat(self, cfg, theta, x, return_state=False, **sequences):
        with self.workspace(cfg, x, bool(sequences)) as ws:
            order = RowOrder.of(x, shard_rows=ws.plan.rows, **sequences)
            self._run(cfg, ws, theta, x, None, False, order)
            y = order.restore(self._outputs(cfg, ws, x.shape[0]))
            if not return_state:
                return y
            return y, tuple(order.restore(ws.buffers[k], axis=1) for k in ("hn", "cn"))

    def _loss_and_grads(self, cfg, params, x, y, dropout=None, **sequences):
        layout = Layout.of(cfg)
        grad = np.empty(layout.size, dtype=cfg.np_dtype)
        with self.workspace(cfg, x, bool(sequences)) as ws:
            order = RowOrder.of(x, shard_rows=ws.plan.rows, **sequences)
            loss = self._run(cfg, ws, layout.flatten(params, cfg.np_dtype), x, y, True, order, dropout)
            self._kernels().reduce_shards(ws.buffers["grads"], grad)
        return loss, {k: v.copy() for k, v in layout.views(grad).items()}

    # -- the fused step's kernels (lstmbench.fused) ------------------------------------------

    def _loss_and_gradient(self, state: FlatTrainState, x, y, return_state=False, dropout=None, **sequences):
        with self.workspace(state.cfg, x, bool(sequences)) as ws:
            order = RowOrder.of(x, shard_rows=ws.plan.rows, **sequences)
            loss = self._run(state.cfg, ws, state.theta, x, y, True, order, dropout)
            self._kernels().reduce_shards(ws.buffers["grads"], state.grad)
            if not return_state:
                return loss
            # the forward pass left every row's final state in hn, cn (sorted order): copies, in the batch's order
            return loss, tuple(order.restore(ws.buffers[k], axis=1) for k in ("hn", "cn"))

    def _update(self, state: FlatTrainState, scalars: StepScalars) -> None:
        k, dt = self._kernels(), state.cfg.np_dtype
        scale = scalars.clip_scale(math.sqrt(k.sum_of_squares(state.grad))) if scalars.clip_norm else 1.0
        s = scalars.in_dtype(dt)
        if s.kind in ("adam", "adamw"):  # adamw: Adam with decay_factor != 1 (and l2 = 0)
            k.adam_update(state.theta, state.grad, state.slots["m"], state.slots["v"], dt.type(scale), s.l2,
                          s.decay_factor, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.step_size,
                          s.bias2_sqrt, s.eps)
        else:
            buf = state.slots.get("momentum", state.grad)  # unused without momentum
            k.sgd_update(state.theta, state.grad, buf, dt.type(scale), s.l2, s.lr, s.momentum, s.first_step,
                          scalars.momentum > 0)
