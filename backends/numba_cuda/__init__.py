"""The Numba CUDA backend (registered as ``cuda``): the whole training step on the GPU.

Importing this module is cheap: numba.cuda is imported (and kernels compiled, or
loaded from the on-disk cache) only when the backend is asked whether it can run
or first runs. The math and its kernels are in kernels.py; how they are
launched, and what one training step does, is here.

Parameters, optimizer state, activations and workspaces live on the device from
``init_state`` on; a training step copies the minibatch in and the loss out, and
host copies of the parameters or the optimizer state are made only by
``get_params`` / ``get_optimizer_state``. Each layer's recurrence runs in one of two ways,
chosen per sweep by plan()'s cost model: the rows kernels, one launch that loops over t (the
launches per step do not grow with the sequence length; ``runtime_info()["launches_per_step"]``),
or stepwise (stepwise.py): per step a product over all rows, split across many blocks, and a
cell kernel, two launches a step, which fills a large GPU where the batch alone cannot. On a GPU
a weight-gradient product split along its long K adds one launch (gemm.py). The host side of a
training step (step counter, the optimizer's per-step scalars, gradient hook,
workspace cache) is lstmbench.fused's; this backend supplies the kernels.

Lengths and an initial/final state (design.md section 8): with lengths the rows are
sorted longest first and the steps packed (Rows), so products, transfers and the
recurrence run over the steps rows take and no padded step is in any buffer; a full
batch keeps the padded (T, Bp) layout and its arithmetic. A state carried from step to
step (return_state=True) stays on the device.

Dropout (design.md section 9) and weight decay (section 10): a training step of a model with
dropout gets a DropoutDraw; the kernels draw every mask from its hash on the device (see
kernels.py), and the products read the masked layer outputs from ``hd``. With p = 0 nothing
changes: no extra buffer, launch or arithmetic. Weight decay (L2 for SGD and Adam, decoupled
for AdamW) is part of the update kernels, with the step's learning rate from StepScalars.

Run the kernels without a GPU in Numba's CUDA simulator with
``NUMBA_ENABLE_CUDASIM=1`` (set before numba.cuda is imported; slow, for tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from importlib.util import find_spec
from typing import Any

import numpy as np

from lstmbench import Capabilities, ModelConfig
from lstmbench.config import DropoutDraw
from lstmbench.errors import ConfigError, DeviceError, DTypeError, ShapeError
from lstmbench.fused import FusedBackend
from lstmbench.layout import FlatTrainState, Layout
from lstmbench.optim import StepScalars

RUNTIME = "the CUDA runtime that matches the driver (pip install 'numba-cuda[cu12]' or 'numba-cuda[cu13]')"
SIMULATOR_HINT = "set NUMBA_ENABLE_CUDASIM=1 to run the kernels in Numba's CUDA simulator (slow; for tests)"

# CUDA's own limits, which every device since compute capability 2.0 meets; the
# simulator has no device to ask.
SIMULATED_LIMITS = dict(name="Numba CUDA simulator (on the CPU)", max_threads=1024, max_shared=48 * 1024,
                        multiprocessors=1, max_grid_y=65535)
MAX_ROWS_PER_BLOCK = 8  # most batch rows a recurrence block owns (see plan())
UPDATE_BLOCKS = 1024  # most blocks of the elementwise kernels (grid-stride loops over the parameters)
NORM_BLOCKS = 256  # most partial sums of the clipping norm
PER_THREAD = 8  # elementwise kernels: at least this many elements per thread (fewer, larger blocks)
# How a layer's recurrence runs: "rows" (blocks own batch rows: kernels.lstm_forward / lstm_backward),
# "stepwise" (two launches a step: a product over all rows split across blocks, then the cells;
# stepwise.py), "auto" (the default: rows or stepwise for each sweep, whichever the cost model
# says is faster at the shape; plan()) or "persistent" (opt-in, unverified on a GPU: blocks own
# slices of the hidden units; persistent.py)
RECURRENCES = ("auto", "rows", "stepwise", "persistent")
RECURRENCE_ENV = "LSTMBENCH_CUDA_RECURRENCE"


def _cuda():
    from numba import cuda

    return cuda


def _persistent():
    from lstmbench_backends.numba_cuda import persistent as module  # imports numba.cuda: only when used

    return module


def _stepwise():
    from lstmbench_backends.numba_cuda import stepwise as module  # imports numba.cuda: only when used

    return module


def _kernels():
    from lstmbench_backends.numba_cuda import kernels

    return kernels


def cuda_errors() -> tuple[type[BaseException], ...]:
    """The exception types numba-cuda raises for a failed CUDA call (OOM, launch failure)."""
    from numba.cuda.cudadrv import driver, error

    return tuple({driver.CudaAPIError, *(getattr(error, n) for n in ("CudaDriverError", "CudaSupportError",
                                                                      "CudaRuntimeError") if hasattr(error, n))})


@dataclass(frozen=True)
class DeviceLimits:
    name: str
    max_threads: int  # threads per block
    max_shared: int  # bytes of shared memory per block (without opt-in)
    multiprocessors: int
    max_grid_y: int

    @classmethod
    def current(cls) -> "DeviceLimits":
        if _kernels().SIMULATOR:
            return cls(**SIMULATED_LIMITS)
        dev = _cuda().get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        return cls(name, int(dev.MAX_THREADS_PER_BLOCK), int(dev.MAX_SHARED_MEMORY_PER_BLOCK),
                   int(dev.MULTIPROCESSOR_COUNT), int(dev.MAX_GRID_DIM_Y))


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _elementwise_blocks(n: int, most: int) -> int:
    """Blocks of a grid-stride kernel over n elements: PER_THREAD or more elements per thread."""
    return max(1, min(-(-n // (_kernels().REDUCE_THREADS * PER_THREAD)), most))


# The recurrence's cost model (docs/cuda-backend.md, "Rows per block"), on the card the goals
# name (an H100): at every step a block reads all of W_h (4H x H values) through L2 and does
# rows x 4H x H multiply-adds. An SM takes about 64 bytes a clock from L2 and all SMs together
# about 2800 (5.5 TB/s at 1.98 GHz); it issues 128 instructions a clock (4 warps), and a DFMA
# takes two of those slots. The loops' instructions per multiply-add are the static cost's.
L2_BYTES_PER_SM_CLOCK, L2_BYTES_PER_CLOCK = 64, 2800
ISSUE_PER_SM_CLOCK = 128
LOOP_INSTRUCTIONS_PER_FMA = 2.0  # the goal tools/cuda_static_cost.py checks; the kernels are below it


def recurrence_step_cycles(rows: int, H: int, B: int, itemsize: int, sms: int,
                           instructions_per_fma: float = LOOP_INSTRUCTIONS_PER_FMA) -> float:
    """Modelled clocks of one step of a recurrence sweep with ``rows`` batch rows per block: the
    slowest of a block's multiply-adds, its read of W_h, in as many waves as the SMs need, and
    every block's read of W_h through the L2 as a whole."""
    blocks = -(-B // rows)
    wh_bytes = 4 * H * H * itemsize
    fma_cycles = rows * 4 * H * H * instructions_per_fma * (itemsize // 4) / ISSUE_PER_SM_CLOCK
    block = max(fma_cycles, wh_bytes / L2_BYTES_PER_SM_CLOCK)
    return max(-(-blocks // sms) * block, blocks * wh_bytes / L2_BYTES_PER_CLOCK)


# The stepwise recurrence's cost model (docs/cuda-backend.md, "Stepwise recurrence") and what
# the two algorithms are compared in: microseconds of a sweep, launches included. Every launch
# costs LAUNCH_MICROSECONDS on top of its work (numba-cuda's host side is commonly quoted at
# 10-30 µs a launch; not measured here); tools/cuda_static_cost.py --model uses the same figure.
CLOCK_GHZ = 1.98  # an H100 SXM's boost clock
LAUNCH_MICROSECONDS = 10.0
GEMM_INSTRUCTIONS_PER_FMA = 1.3  # gemm.py's loop measures 1.18-1.28 (tools/cuda_static_cost.py)
CELL_VALUES = {"forward": 12, "backward": 13}  # values a cell kernel moves per (row, unit), besides the partials


def product_cycles(fmas: float, blocks: int, threads: int, sms: int, itemsize: int, instructions_per_fma: float,
                   l2_bytes: float = 0.0) -> float:
    """Modelled clocks of one gemm launch: its multiply-adds, shared evenly by its blocks, ⌈blocks/SMs⌉
    blocks on an SM issuing ISSUE_PER_SM_CLOCK instructions a clock (32 a warp when it holds fewer
    than four warps), or ``l2_bytes`` through the L2, whichever is slower."""
    per_sm = -(-blocks // sms)
    issue = min(ISSUE_PER_SM_CLOCK, 32 * per_sm * -(-threads // 32))
    arithmetic = per_sm * fmas / blocks * instructions_per_fma * (itemsize // 4) / issue
    return max(arithmetic, l2_bytes / L2_BYTES_PER_CLOCK)


def stepwise_step_cycles(direction: str, H: int, M: int, splits: int, itemsize: int, sms: int,
                         instructions_per_fma: float = GEMM_INSTRUCTIONS_PER_FMA) -> tuple[float, float]:
    """(product, cells): modelled clocks of one step of a stepwise sweep over M rows, its product
    split into ``splits`` chunks of K. The product (M x 4H x H forward, M x H x 4H backward) reads
    its operands through L2 (W_h once per row tile) and writes the partials; the cell kernel moves
    CELL_VALUES values per cell and reads the partials."""
    N, K = (4 * H, H) if direction == "forward" else (H, 4 * H)
    (BM, BN), grid, threads = _kernels().gemm_shape(M, N)
    tiles = grid[0] * grid[1]
    partials = splits * M * N * itemsize
    product = product_cycles(M * N * K, tiles * splits, threads, sms, itemsize, instructions_per_fma,
                             tiles * (min(BM, M) + min(BN, N)) * K * itemsize + partials)
    return product, (CELL_VALUES[direction] * M * H * itemsize + partials) / L2_BYTES_PER_CLOCK


def stepwise_split(direction: str, H: int, M: int, np_dtype, sms: int) -> tuple[int, int]:
    """(chunks, chunk length) of K for each step's product: the count up to stepwise.MAX_SPLITS (whole
    staging steps each) with the fewest modelled clocks a step (on a tie the fewest)."""
    from lstmbench_backends.numba_cuda.gemm import gemm_bk

    K, bk, itemsize = (H if direction == "forward" else 4 * H), gemm_bk(np_dtype), np.dtype(np_dtype).itemsize
    options = {_stepwise().split_of(K, s, bk) for s in range(1, min(_stepwise().MAX_SPLITS, max(1, K // bk)) + 1)}
    return min(sorted(options), key=lambda o: sum(stepwise_step_cycles(direction, H, M, o[0], itemsize, sms)))


def sweep_microseconds(sweep: "Sweep", direction: str, H: int, Bp: int, T: int, itemsize: int, sms: int,
                       instructions_per_fma: float | None = None) -> float:
    """Modelled µs of one layer's sweep as ``sweep`` runs it, launches included. rows: one launch of
    T steps of recurrence_step_cycles. stepwise: T - 1 products (none at t = 0 forward without a
    state, none at t = T-1 backward) and T cell launches, backward one more (the bias's column
    sums). ``instructions_per_fma``: of the recurrence's loop (rows) or the product's (stepwise)."""
    if sweep.recurrence == "stepwise":
        product, cells = stepwise_step_cycles(direction, H, Bp, sweep.splits, itemsize, sms,
                                              instructions_per_fma or GEMM_INSTRUCTIONS_PER_FMA)
        cycles, launches = (T - 1) * product + T * cells, 2 * T - 1 + (direction == "backward")
    else:
        cycles = T * recurrence_step_cycles(sweep.rows, H, Bp, itemsize, sms,
                                            instructions_per_fma or LOOP_INSTRUCTIONS_PER_FMA)
        launches = 1
    return cycles / (CLOCK_GHZ * 1e3) + launches * LAUNCH_MICROSECONDS


@dataclass(frozen=True)
class Sweep:
    """Launch shape of one recurrence sweep (forward or backward): the rows kernel's (which also
    sets the batch's padding), how the sweep runs, and the stepwise product's split."""

    rows: int  # batch rows per block
    blocks: int
    threads: int
    recurrence: str = "rows"  # "rows", "stepwise" or "persistent" (RECURRENCES; "auto" resolved by plan())
    splits: int = 1  # stepwise: chunks of K of each step's product (the cell kernel adds their partials)
    k_chunk: int = 0  # stepwise: K of each chunk


@dataclass(frozen=True)
class Plan:
    """Launch shapes of one (model, batch, steps), derived from the sizes and checked
    against the device before anything runs."""

    padded_batch: int  # Bp: the batch padded to whole blocks of both sweeps; the padding rows zero
    forward: Sweep
    backward: Sweep
    loss_threads: int
    loss_blocks: int


def _sweep_rows(cfg: ModelConfig, B: int, values_per_row: int, limits: DeviceLimits, what: str) -> int:
    """Rows per block of a sweep whose block keeps ``values_per_row`` values of each of its rows in
    shared memory: of the powers of two up to MAX_ROWS_PER_BLOCK (and the batch) that fit, the one
    with the fewest modelled clocks a step (on a tie the most rows: the least traffic)."""
    H, size = cfg.hidden_size, cfg.np_dtype.itemsize
    need = values_per_row * size
    if need > limits.max_shared:
        raise ShapeError(f"hidden size {H} needs {need} bytes of shared memory per block for the {what} "
                         f"({values_per_row // H}H {cfg.dtype} values), more than the {limits.max_shared} this "
                         f"device allows ({limits.name}); use a hidden size of at most "
                         f"{limits.max_shared // (values_per_row // H * size)}")
    fits = [1 << k for k in range(MAX_ROWS_PER_BLOCK.bit_length())
            if (1 << k) <= _next_pow2(B) and (1 << k) * need <= limits.max_shared]
    return min(reversed(fits), key=lambda rows: recurrence_step_cycles(rows, H, B, size, limits.multiprocessors))


def _sweep_threads(units: int, limits: DeviceLimits) -> int:
    """Threads of a recurrence block with ``units`` units of work: one each, a power of two from a
    warp on (a block below one warp still takes one; few shapes: the kernels are compiled for their
    block size), a thread looping over several past MAX_RECURRENCE_THREADS."""
    return units if units < 32 else min(_next_pow2(units), _kernels().MAX_RECURRENCE_THREADS, limits.max_threads)


def _choose_recurrence(cfg: ModelConfig, sweep: Sweep, direction: str, Bp: int, T: int, limits: DeviceLimits,
                       recurrence: str) -> Sweep:
    """``sweep`` with its recurrence: the one asked for, or for "auto" stepwise where the cost model
    says its sweep is faster than the rows kernel's (sweep_microseconds), else rows."""
    H, dt, sms = cfg.hidden_size, cfg.np_dtype, limits.multiprocessors
    splits, chunk = stepwise_split(direction, H, Bp, dt, sms)
    stepwise = replace(sweep, recurrence="stepwise", splits=splits, k_chunk=chunk)
    if recurrence == "auto":
        faster = (sweep_microseconds(stepwise, direction, H, Bp, T, dt.itemsize, sms)
                  < sweep_microseconds(sweep, direction, H, Bp, T, dt.itemsize, sms))
        recurrence = "stepwise" if faster else "rows"
    return stepwise if recurrence == "stepwise" else replace(sweep, recurrence=recurrence)


def plan(cfg: ModelConfig, B: int, T: int, limits: DeviceLimits, recurrence: str = "auto") -> Plan:
    """Rows per block, per sweep: every block reads all of W_h at every step whatever its row
    count, so more rows make that read cheaper per row but leave SMs idle; the cost model picks.
    The forward block keeps h_{t-1} of its rows in shared memory (H values a row), the backward
    block dz_{t+1} (4H), so the backward sweep may have to take fewer rows. Then each sweep's
    recurrence (RECURRENCES; "auto": rows or stepwise by the cost model, _choose_recurrence)."""
    H = cfg.hidden_size
    rows_f = _sweep_rows(cfg, B, H, limits, "forward sweep")
    rows_b = _sweep_rows(cfg, B, 4 * H, limits, "backward sweep")
    most = max(rows_f, rows_b)
    Bp = -(-B // most) * most
    kernels = _kernels()
    forward = Sweep(rows_f, Bp // rows_f, _sweep_threads(H, limits))  # one hidden unit a thread
    backward = Sweep(rows_b, Bp // rows_b, _sweep_threads(-(-H // kernels.BACKWARD_UNITS), limits))
    forward = _choose_recurrence(cfg, forward, "forward", Bp, T, limits, recurrence)
    backward = _choose_recurrence(cfg, backward, "backward", Bp, T, limits, recurrence)
    n_pred = (T if cfg.many_to_many else 1) * B
    loss_threads = min(kernels.LOSS_THREADS, _next_pow2(n_pred))
    longest = T * Bp  # rows of the largest product (all steps at once)
    if kernels.gemm_shape(longest, 4 * H)[1][1] > limits.max_grid_y:  # its grid's y: row tiles
        raise ShapeError(f"a batch of {B} sequences of {T} steps gives products of {longest} rows, more than this "
                         f"device's grid allows ({limits.name}); use shorter sequences or smaller batches")
    return Plan(Bp, forward, backward, loss_threads, -(-n_pred // loss_threads))


@dataclass(frozen=True)
class Rows:
    """Where each (step, row) pair of a call lives: its layout row (kernels.py's module docstring).

    Without lengths (or with every length T): the batch's order, every row takes every step,
    step t at rows t*Bp .. t*Bp+Bp-1, as a full batch always was. With lengths: the rows sorted
    longest first (stable) and packed, so the rows that take step t are a prefix and padded
    steps are in no buffer: no product, recurrence step or transfer touches them (cuDNN and
    torch's packed path sort the same way). ``seq`` is what the kernels read of it."""

    B: int
    T: int
    Bp: int
    packed: bool
    n_rows: int  # N: layout rows (T*Bp, or the sum of the lengths)
    perm: np.ndarray | None  # sorted position -> batch row; None: the batch's own order
    active: np.ndarray | None  # (T, B) bool over the sorted rows: the pairs in the layout (packed only)
    seq: np.ndarray  # int64: row_len (Bp) | step_off (T+1) | perm (B) | inverse (B)

    @classmethod
    def full(cls, B: int, T: int, Bp: int) -> "Rows":
        order = np.arange(B)
        seq = np.concatenate([np.full(Bp, T), np.arange(T + 1) * Bp, order, order]).astype(np.int64)
        return cls(B, T, Bp, False, T * Bp, None, None, seq)

    @classmethod
    def packed_by(cls, B: int, T: int, Bp: int, lengths: np.ndarray) -> "Rows":
        perm = np.argsort(-lengths, kind="stable")
        ordered = lengths[perm]
        active = np.arange(T)[:, None] < ordered[None, :]  # (T, B): a prefix of the rows at every step
        step_off = np.concatenate([[0], np.cumsum(active.sum(axis=1))])
        row_len = np.zeros(Bp, np.int64)  # padding rows take no step
        row_len[:B] = ordered
        inverse = np.empty(B, np.int64)
        inverse[perm] = np.arange(B)
        seq = np.concatenate([row_len, step_off, perm, inverse]).astype(np.int64)
        return cls(B, T, Bp, True, int(step_off[-1]), perm, active, seq)

    @property
    def perm_off(self) -> int:
        return self.Bp + self.T + 1

    @property
    def inverse_off(self) -> int:
        return self.perm_off + self.B

    def rows(self, a: np.ndarray, axis: int = 0) -> np.ndarray:
        """``a``'s rows (along ``axis``) in the sorted order."""
        return a if self.perm is None else np.take(a, self.perm, axis=axis)

    def restore(self, a: np.ndarray, axis: int = 0) -> np.ndarray:
        """Rows in the sorted order back in the batch's order (always a new array)."""
        out = a if self.perm is None else np.take(a, self.seq[self.inverse_off:], axis=axis)
        return np.array(out, copy=True, order="C")

    def layout(self, a: np.ndarray) -> np.ndarray:
        """(B, T, ...) in the batch's order -> (N, ...) layout rows (packed only)."""
        return np.swapaxes(self.rows(a), 0, 1)[self.active]

    def unpack(self, a: np.ndarray) -> np.ndarray:
        """(N, ...) layout rows -> (B, T, ...) in the batch's order, zeros at padded steps (packed only)."""
        out = np.zeros((self.T, self.B) + a.shape[1:], a.dtype)
        out[self.active] = a
        return self.restore(np.swapaxes(out, 0, 1))


@dataclass
class Workspace:
    """Device buffers (and pinned host staging) for one (model, batch, steps, packed or not);
    reused across calls."""

    plan: Plan
    full: Rows  # the layout without lengths (its seq is the device's, when not packed)
    x_host: np.ndarray  # (T, Bp, D0) pinned staging of the minibatch, time-major, padding rows 0
    y_host: np.ndarray  # (Tout, Bp, O) targets or (Tout, Bp) class ids
    loss_host: np.ndarray  # (1,) float64
    seq_host: np.ndarray  # pinned staging of Rows.seq
    state_host: np.ndarray  # (2, L, Bp, H) pinned staging of a state (h, then c), sorted rows
    dev: dict[str, Any]  # name -> device array (per-layer buffers are lists)

    @classmethod
    def make(cls, cfg: ModelConfig, B: int, T: int, limits: DeviceLimits, packed: bool = False,
             recurrence: str = "auto") -> "Workspace":
        cuda = _cuda()
        p = plan(cfg, B, T, limits, recurrence)
        L, H, D0, O, dt = cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.output_size, cfg.np_dtype
        Bp, G, Tout = p.padded_batch, 4 * cfg.hidden_size, T if cfg.many_to_many else 1
        xent = cfg.loss == "xent"
        sizes = dict(xs=T * Bp * D0, yout=Tout * Bp * O, dy=Tout * Bp * O, dh=T * Bp * H,
                     dh_last=0 if cfg.many_to_many else Bp * H, dcn=Bp * H,
                     db_part=(L + _folded(cfg, p)) * p.backward.blocks * G,  # and layer 0's x^T dz partials
                     dby_part=p.loss_blocks * O, y_real=1 if xent else Tout * Bp * O,
                     state0=2 * L * Bp * H, staten=2 * L * Bp * H)
        per_layer = dict(gates=T * Bp * G, hs=(T + 1) * Bp * H, cs=(T + 1) * Bp * H, tcs=T * Bp * H,
                         hprev=T * Bp * H if packed else 0)  # at most T*Bp layout rows
        # dropout: each layer's masked h as it leaves (a many-to-one top layer: its rows' last h)
        masked = [(T * Bp if layer < L - 1 or cfg.many_to_many else Bp) * H if cfg.dropout > 0 else 0
                  for layer in range(L)]
        nbytes = (sum(sizes.values()) + L * sum(per_layer.values()) + sum(masked)) * dt.itemsize
        _check_free_memory(nbytes, f"the workspace of a batch of shape ({B}, {T}, {D0}) for {cfg}")
        zeros = lambda n, dtype=dt: cuda.to_device(np.zeros(max(n, 1), dtype))  # noqa: E731 (padding stays 0)
        dev: dict[str, Any] = {name: zeros(n) for name, n in sizes.items()}
        for name, n in per_layer.items():
            dev[name] = [zeros(n) for _ in range(L)]
        dev["hd"] = [zeros(n) for n in masked]
        dev["y_class"] = zeros(Tout * Bp if xent else 1, np.int32)
        dev["loss_part"] = zeros(p.loss_blocks, np.float64)
        dev["loss"] = zeros(1, np.float64)
        if _folded(cfg, p):  # finish_grads' sums: every layer's b, then dW_x's rows (the fold: _backward_pass)
            offs = Layout.of(cfg).offs
            dev["sum_offs"] = cuda.to_device(np.concatenate([offs[:-1, 2], offs[0, 0] + G * np.arange(D0)]))
        full = Rows.full(B, T, Bp)
        dev["seq"] = cuda.to_device(full.seq)  # constant unless packed (then staged by every call)
        y_shape = (Tout, Bp) if xent else (Tout, Bp, O)
        return cls(p, full, _pinned_zeros((T, Bp, D0), dt), _pinned_zeros(y_shape, np.int32 if xent else dt),
                   _pinned_zeros((1,), np.float64), _pinned_zeros(full.seq.shape, np.int64),
                   _pinned_zeros((2, L, Bp, H), dt), dev)


def _folded(cfg: ModelConfig, p: Plan) -> int:
    """Inputs of layer 0 whose dW_x its backward sweep computes (kernels.folded_inputs: x^T dz summed
    as its bias gradient is, no product launched); 0: dW_x is a product. Only the rows kernel folds."""
    return _kernels().folded_inputs(cfg.input_size) if p.backward.recurrence == "rows" else 0


def _pinned_zeros(shape, dtype) -> np.ndarray:
    a = _cuda().pinned_array(shape, dtype)
    a[...] = 0
    return a


def _device_state(cfg: ModelConfig, part, B: int):
    """A state part on the device (a carried state: numba's device array, or anything with the
    CUDA array interface) as the flat vector the kernels take, checked as the protocol checks
    host arrays."""
    if not hasattr(part, "copy_to_host"):
        part = _cuda().as_cuda_array(part)
    shape = (cfg.num_layers, B, cfg.hidden_size)
    if tuple(part.shape) != shape:
        raise ShapeError(f"initial_state on the device has shape {tuple(part.shape)}; the model and x need {shape}")
    if np.dtype(part.dtype) != cfg.np_dtype:
        raise DTypeError(f"initial_state on the device has dtype {part.dtype}, the model uses {cfg.dtype}")
    return part.reshape(part.size)


def _check_free_memory(nbytes: int, what: str) -> None:
    """A clear error before allocating more than the device has free."""
    if _kernels().SIMULATOR:
        return
    free, total = _cuda().current_context().get_memory_info()
    if nbytes > free:
        raise DeviceError(f"{what} needs {nbytes / 2**20:.1f} MiB of GPU memory, but only {free / 2**20:.1f} MiB "
                          f"of {total / 2**20:.0f} MiB are free; use a smaller batch, shorter sequences or a "
                          "smaller model")


@dataclass
class CudaTrainState(FlatTrainState):
    """Training state on the device: ``theta``, ``grad`` and ``slots`` are device arrays
    (lstmbench.layout's flat vectors), with W_h packed for the recurrence (``wpack``) and the
    clipping partial sums. ``params`` stays empty: host copies come only from get_params."""

    wpack: Any = None
    norm_part: Any = None
    grad_host: np.ndarray | None = None  # pinned host copy of the gradient, for a gradient hook


@dataclass
class ModelArrays:
    """Per-model constants on the device: the offsets of every layer's W_h and b."""

    wh_offs: Any
    b_offs: Any


class NumbaCuda(FusedBackend):
    """Numba CUDA kernels: tiled products, the recurrence in one launch per layer or stepwise (by the
    cost model; ``recurrence`` or LSTMBENCH_CUDA_RECURRENCE: one of RECURRENCES), fused update."""

    name = "cuda"
    description = "Numba CUDA: the whole training step on the GPU (recurrence inside the kernel, tiled products)"
    capabilities = Capabilities(sequences=True, dropout=True)

    def __init__(self, recurrence: str | None = None) -> None:
        super().__init__()
        self.recurrence = recurrence or os.environ.get(RECURRENCE_ENV) or "auto"
        if self.recurrence not in RECURRENCES:
            raise ConfigError(f"unknown recurrence {self.recurrence!r} for the cuda backend (from "
                              f"{'the argument' if recurrence else RECURRENCE_ENV}); choose one of {', '.join(RECURRENCES)}")
        self._model_arrays: dict[ModelConfig, ModelArrays] = {}
        self._gemm_scratch: dict[np.dtype, Any] = {}  # split products' partial tiles, per dtype (_gemm)
        self._step_scratch: dict[np.dtype, Any] = {}  # the stepwise products' partials, per dtype (_step_product)
        self._limits: DeviceLimits | None = None
        self._stream = None
        self._launches = 0
        self.launches_per_step: int | None = None  # kernel launches of the last training step

    # -- environment -------------------------------------------------------------------

    def availability(self):
        if find_spec("numba_cuda") is None:
            return False, f"numba-cuda is not installed; pip install 'lstmbench[cuda]', and on a GPU machine {RUNTIME}"
        cuda = _cuda()
        if _kernels().SIMULATOR:
            return True, ""
        if not cuda.is_available():
            from numba.cuda.cudadrv.driver import driver

            why = getattr(driver, "initialization_error", None)
            detail = f" ({str(why).strip().split('.')[0]})" if why else ""  # its first sentence
            return False, f"no CUDA GPU found{detail}; on a GPU machine install {RUNTIME}, or {SIMULATOR_HINT}"
        return True, ""

    def runtime_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"threads": self.threads, "launches_per_step": self.launches_per_step}
        ok, why = self.availability()
        if not ok:
            return {**info, "available": False, "reason": why}
        cuda, simulated = _cuda(), _kernels().SIMULATOR
        info["simulator"] = simulated
        if simulated:
            info.update(device=SIMULATED_LIMITS["name"], compute_capability="simulated", driver="none",
                        runtime="none")
            return info
        dev = cuda.get_current_device()
        info["device"] = self._device_limits().name
        info["multiprocessors"] = self._device_limits().multiprocessors
        info["compute_capability"] = "%d.%d" % tuple(dev.compute_capability)
        try:
            from numba.cuda.cudadrv.driver import driver

            info["driver"] = "%d.%d" % tuple(driver.get_version())
        except Exception as exc:  # a version we cannot read must not hide the rest
            info["driver"] = f"unknown ({exc})"
        try:
            info["runtime"] = "%d.%d" % tuple(cuda.runtime.get_version())
        except Exception as exc:
            info["runtime"] = f"unknown ({exc})"
        return info

    # -- plumbing ------------------------------------------------------------------------

    def _device_limits(self) -> DeviceLimits:
        if self._limits is None:
            self._limits = DeviceLimits.current()
        return self._limits

    def _model(self, cfg: ModelConfig) -> ModelArrays:
        if cfg not in self._model_arrays:
            offs = Layout.of(cfg).offs
            cuda = _cuda()
            self._model_arrays[cfg] = ModelArrays(cuda.to_device(np.ascontiguousarray(offs[:-1, 1])),
                                                  cuda.to_device(np.ascontiguousarray(offs[:-1, 2])))
        return self._model_arrays[cfg]

    def _workspace_key(self, cfg: ModelConfig, x: np.ndarray, packed: bool = False) -> tuple:
        """packed: lengths below T, whose workspace has the hprev buffers (and a seq of its own)."""
        return (cfg, x.shape[0], x.shape[1], packed)

    def _make_workspace(self, key: tuple) -> Workspace:
        cfg, B, T, packed = key
        return Workspace.make(cfg, B, T, self._device_limits(), packed, self.recurrence)

    def _launch(self, kernel, grid, threads: int, shared_bytes: int, *args) -> None:
        """Launch a kernels.Kernel on the backend's stream (and count it)."""
        self._launches += 1
        kernel.dispatcher[grid, threads, self._stream, shared_bytes](*args)

    def _device(self, what: str, cfg: ModelConfig, shape: tuple, fn):
        """Run ``fn`` and turn a CUDA failure into a DeviceError naming the step and the shape."""
        try:
            if self._stream is None:
                self._stream = _cuda().stream()
            return fn()
        except cuda_errors() as exc:
            model = "" if cfg is None else f", {cfg}"
            raise DeviceError(f"CUDA error in {what} (batch of shape {shape}{model}): {exc}") from exc

    def _to_device(self, host: np.ndarray):
        return _cuda().to_device(np.ascontiguousarray(host), stream=self._stream)

    def _stage(self, cfg: ModelConfig, ws: Workspace, x: np.ndarray, y, rows: Rows) -> None:
        """Copy the minibatch in: time-major, into the padded layout (padding rows stay 0), or
        packed (only the steps rows take; the seq of this batch too)."""
        B, D0, stream = x.shape[0], x.shape[2], self._stream
        if rows.packed:
            n = rows.n_rows * D0
            ws.x_host.reshape(-1)[:n] = rows.layout(x).reshape(-1)
            ws.dev["xs"][:n].copy_to_device(ws.x_host.reshape(-1)[:n], stream=stream)
            ws.seq_host[:] = rows.seq
            ws.dev["seq"].copy_to_device(ws.seq_host, stream=stream)
        else:
            ws.x_host[:, :B, :] = x.transpose(1, 0, 2)
            ws.dev["xs"].copy_to_device(ws.x_host.reshape(-1), stream=stream)
        if y is None:
            return
        xent = cfg.loss == "xent"
        host, dev = ws.y_host, ws.dev["y_class" if xent else "y_real"]
        if cfg.many_to_many and rows.packed:
            n = rows.n_rows * (1 if xent else cfg.output_size)
            host.reshape(-1)[:n] = rows.layout(y).reshape(-1)
            dev[:n].copy_to_device(host.reshape(-1)[:n], stream=stream)
            return
        Tout = x.shape[1] if cfg.many_to_many else 1
        y = rows.rows(y)
        if xent:
            host[:, :B] = y.reshape(B, Tout).T
        else:
            host[:, :B, :] = y.reshape(B, Tout, cfg.output_size).transpose(1, 0, 2)
        dev.copy_to_device(host.reshape(-1), stream=stream)

    def _stage_state(self, cfg: ModelConfig, ws: Workspace, rows: Rows, initial_state) -> bool:
        """The initial state into ``state0`` in the sorted order: host arrays through the pinned
        staging, device arrays (a carried state) by gather_rows. False: there is none."""
        if initial_state is None:
            return False
        L, H, Bp, B = cfg.num_layers, cfg.hidden_size, rows.Bp, rows.B
        on_host = False
        for k, part in enumerate(initial_state):
            if isinstance(part, np.ndarray):
                ws.state_host[k, :, :B] = rows.rows(part, axis=1)
                on_host = True
            else:
                self._gather(cfg.np_dtype, _device_state(cfg, part, B), 0, B, ws.dev["state0"], k * L * Bp * H, Bp,
                             ws.dev["seq"], rows.perm_off, B, L, H)
        if on_host:
            ws.dev["state0"].copy_to_device(ws.state_host.reshape(-1), stream=self._stream)
        return True

    def _final_state(self, cfg: ModelConfig, ws: Workspace, rows: Rows, on_device: bool):
        """(h_n, c_n), each (L, B, H) in the batch's order: new device arrays (gathered on the
        device), or host arrays (after a synchronize)."""
        L, H, Bp, B, dt = cfg.num_layers, cfg.hidden_size, rows.Bp, rows.B, cfg.np_dtype
        if on_device:
            out = []
            for k in range(2):
                dst = _cuda().device_array(L * B * H, dt)
                self._gather(dt, ws.dev["staten"], k * L * Bp * H, Bp, dst, 0, B, ws.dev["seq"], rows.inverse_off,
                             B, L, H)
                out.append(dst.reshape(L, B, H))
            return tuple(out)
        ws.dev["staten"].copy_to_host(ws.state_host.reshape(-1), stream=self._stream)
        self._stream.synchronize()
        return tuple(rows.restore(ws.state_host[k, :, :B], axis=1) for k in range(2))

    def _gather(self, dt, src, src_off, src_rows, dst, dst_off, dst_rows, idx, idx_off, n, L, H) -> None:
        k = _kernels()
        self._launch(k.gather_kernel(dt), _elementwise_blocks(L * n * H, UPDATE_BLOCKS), k.REDUCE_THREADS, 0, src,
                     src_off, src_rows, dst, dst_off, dst_rows, idx, idx_off, n, L, H)

    def _gemm(self, dt, M, N, K, A, a_off, a_rs, a_cs, Bm, b_off, b_rs, b_cs, C, c_off, ldc, bias=None, bias_off=0):
        """C = op(A) op(B) (+ bias) (gemm.py). A product with few tiles and a long K (a weight gradient:
        K = T*B; without bias, C's rows contiguous) runs split in K: S chunks into partial tiles in a
        scratch buffer, then one more product adds them in a fixed order (gemm.py's module docstring)."""
        from lstmbench_backends.numba_cuda.gemm import gemm_split, gemm_split_scratch

        k, cuda = _kernels(), _cuda()
        tile, grid, threads = k.gemm_shape(M, N)
        kernel, shared = k.gemm_kernel(dt, *tile), k.gemm_shared_bytes(tile, dt.itemsize)
        splits, chunk = 1, K
        if bias is None and ldc == N:
            splits, chunk = gemm_split(M, N, K, self._device_limits().multiprocessors, dt)
        if splits == 1:
            self._launch(kernel, grid, threads, shared, A, a_off, a_rs, a_cs, Bm, b_off, b_rs, b_cs, C, c_off, ldc,
                         M, N, K, C if bias is None else bias, bias_off, bias is not None, K, 0)
            return
        # scratch: a 1 (what the sum reads as ones(1, S)), then the S partial M x N tiles; one per
        # dtype, made (or grown) the first time a product needs it
        scratches = self._gemm_scratch
        need, scratch = gemm_split_scratch(M, N, splits), scratches.get(dt)
        if scratch is None or scratch.size < need:
            if scratch is not None and self._stream is not None:
                self._stream.synchronize()  # launches already queued may still read the old one
            host = np.zeros(need, dt)
            host[0] = 1
            scratch = scratches[dt] = cuda.to_device(host)
        MN = M * N
        self._launch(kernel, (grid[0], grid[1], splits), threads, shared, A, a_off, a_rs, a_cs, Bm, b_off, b_rs,
                     b_cs, scratch, 1, N, M, N, K, scratch, 0, False, chunk, MN)
        # C = ones(1, S) @ P, P the partials as an S x MN matrix: the 1 at scratch[0] is read with strides 0
        tile, grid, threads = k.gemm_shape(1, MN)
        self._launch(k.gemm_kernel(dt, *tile), grid, threads, k.gemm_shared_bytes(tile, dt.itemsize), scratch, 0, 0,
                     0, scratch, 1, MN, 1, C, c_off, MN, 1, MN, splits, scratch, 0, False, splits, 0)

    def _step_part(self, dt, size: int):
        """The stepwise products' partials: a device buffer of at least ``size`` values of ``dt``, one per
        dtype, made (or grown) the first time a shape needs it; every value is written before it is read."""
        scratch = self._step_scratch.get(dt)
        if scratch is None or scratch.size < size:
            if scratch is not None and self._stream is not None:
                self._stream.synchronize()  # launches already queued may still read the old one
            _check_free_memory(size * dt.itemsize, "the stepwise recurrence's partial products")
            scratch = self._step_scratch[dt] = _cuda().device_array(size, dt)
        return scratch

    def _step_product(self, dt, sweep: Sweep, M, N, K, A, a_off, a_rs, a_cs, Bm, b_off, b_rs, b_cs, part, stride):
        """One step's product of the stepwise recurrence, op(A) op(B) (gemm.py), in the sweep's chunks of K
        (grid z): chunk s's partial M x N product to part[s*stride + i*N + j], added up by the cell kernel."""
        k = _kernels()
        tile, grid, threads = k.gemm_shape(M, N)
        self._launch(k.gemm_kernel(dt, *tile), (grid[0], grid[1], sweep.splits), threads,
                     k.gemm_shared_bytes(tile, dt.itemsize), A, a_off, a_rs, a_cs, Bm, b_off, b_rs, b_cs, part, 0, N,
                     M, N, K, part, 0, False, sweep.k_chunk, stride)

    def _stepwise_forward(self, cfg: ModelConfig, ws: Workspace, theta, wh: int, b: int, rows: Rows, bufs: tuple,
                          after: tuple) -> None:
        """One layer's forward sweep, stepwise (stepwise.py): at each step t, h_{t-1} @ W_h (W_h from theta
        at ``wh``) over the n_t rows that take it, then the cell kernel. ``bufs`` and ``after``: the rows
        kernel's arguments before and after T (gates .. seq; Bp, H, has_state ..)."""
        dt, H, Bp, sweep, st = cfg.np_dtype, cfg.hidden_size, ws.plan.padded_batch, ws.plan.forward, _stepwise()
        G, seq, hs, state0, h_off, has_state = 4 * H, rows.seq, bufs[1], bufs[5], bufs[7], after[2]
        part, cells = self._step_part(dt, sweep.splits * Bp * G), st.forward_cells_kernel(dt)
        for t in range(rows.T):
            n = int(seq[Bp + t + 1] - seq[Bp + t])
            if n == 0:  # rows are sorted longest first: none takes a later step either
                break
            recurrent = t > 0 or has_state  # h_{-1} = 0: no product at the first step
            if recurrent:  # h_{t-1}: the initial state at t = 0, else hs at step t-1's rows (a prefix of them)
                h, h_at = (state0, h_off) if t == 0 else (hs, (Bp + int(seq[Bp + t - 1])) * H)
                self._step_product(dt, sweep, n, G, H, h, h_at, H, 1, theta, wh, G, 1, part, Bp * G)
            self._launch(cells, -(-n * H // st.THREADS), st.THREADS, 0, theta, b, part, Bp * G, sweep.splits,
                         recurrent, *bufs, t, rows.T, *after)

    def _stepwise_backward(self, cfg: ModelConfig, ws: Workspace, wpack, wh: int, rows: Rows, gates,
                           incoming: tuple, mask: tuple, db_part) -> None:
        """One layer's backward sweep, stepwise (stepwise.py): at each step t, dz_{t+1} @ W_h^T (wpack's
        W_h^T at ``wh``) over the rows that took step t+1, then the cell kernel; last, the bias gradient
        as dz's column sums into ``db_part``. ``incoming``: lstm_backward's cs .. dcn."""
        dt, H, Bp, sweep, st = cfg.np_dtype, cfg.hidden_size, ws.plan.padded_batch, ws.plan.backward, _stepwise()
        G, seq, T = 4 * H, rows.seq, rows.T
        part, cells = self._step_part(dt, sweep.splits * Bp * H), st.backward_cells_kernel(dt)
        for t in range(T - 1, -1, -1):
            n = int(seq[Bp + t + 1] - seq[Bp + t])
            if n == 0:  # no row has reached step t
                continue
            n_next = int(seq[Bp + t + 2] - seq[Bp + t + 1]) if t < T - 1 else 0  # the rows that took step t+1
            if n_next:
                self._step_product(dt, sweep, n_next, H, G, gates, int(seq[Bp + t + 1]) * G, G, 1, wpack, wh, H, 1,
                                   part, Bp * H)
            self._launch(cells, -(-n * H // st.THREADS), st.THREADS, 0, part, Bp * H, sweep.splits, n_next > 0, gates,
                         *incoming, ws.dev["seq"], t, T, Bp, H, *mask)
        self._launch(_persistent().column_sums_kernel(dt), -(-G // 128), 128, 0, gates, rows.n_rows, G, db_part)

    def _persistent_sweep(self, cfg: ModelConfig, ws: Workspace, direction: str) -> tuple:
        """(kernel, grid, threads, shared bytes) of a persistent sweep: one block a (rows, unit slice)
        task, or as many blocks as the device holds at once (a cooperative launch needs them all
        resident) each taking several tasks."""
        H, dt, limits = cfg.hidden_size, cfg.np_dtype, self._device_limits()
        units = _persistent().slice_units(H, dt.itemsize, limits.max_shared)
        if units == 0:
            raise ShapeError(f"hidden size {H} leaves no room for a slice of W_h (4H {cfg.dtype} values) in the "
                             f"{limits.max_shared} bytes of shared memory a block has ({limits.name}); use the "
                             f"default recurrence")
        factory = _persistent().forward_kernel if direction == "forward" else _persistent().backward_kernel
        kernel, shared = factory(dt, units), 4 * H * units * dt.itemsize
        resident = self._cooperative_blocks(kernel, _persistent().THREADS, shared)
        return kernel, min(_persistent().tasks(H, ws.plan.padded_batch, units), resident), _persistent().THREADS, shared

    def _cooperative_blocks(self, kernel, threads: int, shared: int) -> int:
        """The most blocks of ``kernel`` the device runs at once (a cooperative grid's limit; the
        simulator runs one)."""
        if _kernels().SIMULATOR:
            return 1
        compiled = kernel.dispatcher.compile(kernel.arg_types)  # the launch's own overload (compiled once)
        return int(compiled.max_cooperative_grid_blocks(threads, shared))

    # -- the step ------------------------------------------------------------------------

    def _forward_pass(self, cfg: ModelConfig, ws: Workspace, theta, wpack, rows: Rows, has_state: bool,
                      draw: DropoutDraw | None = None) -> None:
        """W_h packed into ``wpack`` for both sweeps (2 x the parameters: kernels.pack_kernel), every
        layer's recurrence, then the head: yout = h @ W_y + b_y (on each row's last h, or on every
        layout row's h). ``draw``: the step's dropout masks (None: none)."""
        k, p, d = _kernels(), ws.plan, ws.dev
        L, H, D0, O, dt = cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.output_size, cfg.np_dtype
        layout = Layout.of(cfg)
        Bp, G, offs, N = p.padded_batch, 4 * H, layout.offs, rows.n_rows
        self._launch(k.pack_kernel(dt), _elementwise_blocks(L * H * G, UPDATE_BLOCKS), k.REDUCE_THREADS, 0,
                     theta, wpack, layout.size, self._model(cfg).wh_offs, L, H)
        for layer in range(L):
            wx, wh, b = (int(o) for o in offs[layer])
            if layer == 0:  # x_t @ W_x for every layout row: (N, D0) @ (D0, 4H)
                self._gemm(dt, N, G, D0, d["xs"], 0, D0, 1, theta, wx, G, 1, d["gates"][0], 0, G)
            else:  # the layer below's h_t (masked, with dropout) is this layer's input
                below, below_off = self._layer_output(cfg, ws, layer - 1, draw)
                self._gemm(dt, N, G, H, below, below_off, H, 1, theta, wx, G, 1, d["gates"][layer], 0, G)
            h_off, c_off = layer * Bp * H, (L + layer) * Bp * H  # this layer's h and c in state0 / staten
            head_last = layer == L - 1 and not cfg.many_to_many
            bufs = (d["gates"][layer], d["hs"][layer], d["cs"][layer], d["tcs"][layer], d["hprev"][layer],
                    d["state0"], d["staten"], h_off, c_off, d["seq"])
            after = (Bp, H, has_state, rows.packed, d["hd"][layer], head_last,
                     *self._mask_args(cfg, rows, draw, layer + 1))
            sweep = p.forward
            if sweep.recurrence == "stepwise":
                self._stepwise_forward(cfg, ws, theta, wh, b, rows, bufs, after)
                continue
            if sweep.recurrence == "persistent":
                kernel, grid, threads, shared = self._persistent_sweep(cfg, ws, "forward")
                head = (theta, b, wh)
            else:
                kernel, grid, threads = k.lstm_forward_kernel(dt, sweep.rows, sweep.threads), sweep.blocks, sweep.threads
                shared, head = sweep.rows * H * dt.itemsize, (theta, b, wpack, layout.size + wh)
            self._launch(kernel, grid, threads, shared, *head, *bufs, rows.T, *after)
        # the head: on every h_t, (N, H) @ (H, O), or on each row's h after its last step
        wy, by = (int(o) for o in offs[L, :2])
        top, top_off = self._layer_output(cfg, ws, L - 1, draw)
        self._gemm(dt, N if cfg.many_to_many else Bp, O, H, top, top_off, H, 1, theta, wy, O, 1, d["yout"], 0, O,
                   bias=theta, bias_off=by)

    @staticmethod
    def _layer_output(cfg: ModelConfig, ws: Workspace, layer: int, draw: DropoutDraw | None) -> tuple[Any, int]:
        """(buffer, offset of its first layout row) of layer ``layer``'s h as it leaves for the
        layer above or the head: with dropout, masked (hd); else hs past its initial-state slot,
        or for a many-to-one head each row's final h (staten)."""
        d, Bp, H = ws.dev, ws.plan.padded_batch, cfg.hidden_size
        if draw is not None:
            return d["hd"][layer], 0
        if layer == cfg.num_layers - 1 and not cfg.many_to_many:
            return d["staten"], layer * Bp * H
        return d["hs"][layer], Bp * H

    @staticmethod
    def _mask_args(cfg: ModelConfig, rows: Rows, draw: DropoutDraw | None, site: int) -> tuple:
        """The recurrence kernels' dropout arguments for the mask of ``site`` (design.md section 9):
        (drop, key, threshold, scale, first_row, B); drop is False, the rest unused, without one."""
        dt = cfg.np_dtype
        if draw is None:
            return False, np.uint64(0), np.uint64(0), dt.type(0), 0, rows.B
        return (True, np.uint64(draw.site_key(site)), np.uint64(DropoutDraw.threshold(cfg.dropout)),
                DropoutDraw.scale(cfg.dropout, dt), draw.first_row & 0xFFFFFFFF, rows.B)

    def _backward_pass(self, cfg: ModelConfig, ws: Workspace, theta, wpack, grad, rows: Rows,
                       draw: DropoutDraw | None = None) -> None:
        """Loss and dy, then backpropagation through time into ``grad`` (bias sums last), through
        the forward pass's dropout masks (``draw``)."""
        k, p, d = _kernels(), ws.plan, ws.dev
        L, H, D0, O, dt = cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.output_size, cfg.np_dtype
        Bp, G, offs, model, N = p.padded_batch, 4 * H, Layout.of(cfg).offs, self._model(cfg), rows.n_rows
        xent = cfg.loss == "xent"
        coef = dt.type((1.0 if xent else 2.0) / self._n_terms(cfg, rows))
        if cfg.many_to_many and rows.packed:  # the predictions: one group of N, no padding rows
            B, Bp_y, Tout = N, N, 1
        else:  # Tout groups of B real rows, Bp apart
            B, Bp_y, Tout = rows.B, Bp, rows.T if cfg.many_to_many else 1
        self._launch(k.loss_kernel(dt), p.loss_blocks, p.loss_threads, 8 * p.loss_threads, d["yout"], d["y_real"],
                     d["y_class"], xent, d["dy"], d["loss_part"], d["dby_part"], B, Bp_y, Tout, O, coef)
        # head: dW_y = h^T dy (h as the head read it), and dLoss/dh of the top layer = dy @ W_y^T
        wy, by = (int(o) for o in offs[L, :2])
        top, h_off = self._layer_output(cfg, ws, L - 1, draw)
        if cfg.many_to_many:
            n_rows, dh_top = N, d["dh"]
        else:  # only each row's last h feeds the head: dh_last, added at that step
            n_rows, dh_top = Bp, d["dh_last"]
        self._gemm(dt, H, O, n_rows, top, h_off, 1, H, d["dy"], 0, O, 1, grad, wy, O)
        self._gemm(dt, n_rows, H, O, d["dy"], 0, O, 1, theta, wy, 1, O, dh_top, 0, H)
        sweep = p.backward  # bias-gradient partials a layer: the rows kernel's blocks, else dz's column sums (1)
        db_blocks = p.backward.blocks if sweep.recurrence == "rows" else 1
        fold = _folded(cfg, p)  # layer 0's dW_x summed by its sweep: partials after every layer's db_part
        for layer in range(L - 1, -1, -1):
            wx, wh, _ = (int(o) for o in offs[layer])
            Dl = D0 if layer == 0 else H
            head_last = layer == L - 1 and not cfg.many_to_many
            gates = d["gates"][layer]
            incoming = (d["cs"][layer], d["tcs"][layer], d["dh"], not head_last, d["dh_last"], head_last, d["dcn"])
            db_part, mask = d["db_part"][layer * db_blocks * G:], self._mask_args(cfg, rows, draw, layer + 1)
            if sweep.recurrence == "stepwise":
                self._stepwise_backward(cfg, ws, wpack, wh, rows, gates, incoming, mask, db_part)
            elif sweep.recurrence == "persistent":  # then the bias gradient: dz's column sums
                kernel, grid, threads, shared = self._persistent_sweep(cfg, ws, "backward")
                self._launch(kernel, grid, threads, shared, theta, wh, gates, *incoming, d["seq"], rows.T, Bp, H, *mask)
                self._launch(_persistent().column_sums_kernel(dt), -(-G // 128), 128, 0, gates, N, G, db_part)
            else:
                DX = fold if layer == 0 else 0  # with a fold: x and where dW_x's partials go, too
                self._launch(k.lstm_backward_kernel(dt, sweep.rows, sweep.threads, DX), sweep.blocks, sweep.threads,
                             sweep.rows * G * dt.itemsize, wpack, wh, gates, *incoming, db_part, d["seq"], rows.T, Bp, H,
                             *mask, *((d["xs"], d["db_part"][L * db_blocks * G:]) if DX else ()))
            # weight gradients: one product each over every layout row
            if layer == 0:  # dW_x = x^T dz (folded: finish_grads sums the sweep's partials)
                if not fold:
                    self._gemm(dt, D0, G, N, d["xs"], 0, 1, D0, gates, 0, G, 1, grad, wx, G)
            else:  # on the input this layer saw (masked, with dropout)
                below, below_off = self._layer_output(cfg, ws, layer - 1, draw)
                self._gemm(dt, H, G, N, below, below_off, 1, H, gates, 0, G, 1, grad, wx, G)
            # dW_h = sum_t h_{t-1}^T dz_t: without lengths hs[0 .. T-1] lines up with dz_0 .. dz_{T-1}
            # (h_{-1}: the initial state or 0); packed, hprev holds each layout row's h_{t-1}
            h_before = d["hprev"][layer] if rows.packed else d["hs"][layer]
            self._gemm(dt, H, G, N, h_before, 0, 1, H, gates, 0, G, 1, grad, wh, G)
            if layer > 0:  # dLoss/dh of the layer below = dz @ W_x^T
                self._gemm(dt, N, Dl, G, gates, 0, G, 1, theta, wx, 1, G, d["dh"], 0, H)
        n_sums = (L + fold) * G + O + 1  # dW_x's D0 rows of a fold are summed as more bias rows (sum_offs)
        self._launch(k.finish_kernel(dt), -(-n_sums // k.REDUCE_THREADS), k.REDUCE_THREADS, 0, d["db_part"],
                     d["sum_offs"] if fold else model.b_offs, db_blocks, G, d["dby_part"], by, O, d["loss_part"],
                     p.loss_blocks, grad, d["loss"], L + fold)

    def _loss_to_host(self, ws: Workspace, n_terms: int) -> float:
        ws.dev["loss"].copy_to_host(ws.loss_host, stream=self._stream)
        self._stream.synchronize()
        return float(ws.loss_host[0] / n_terms)

    @staticmethod
    def _n_terms(cfg: ModelConfig, rows: Rows) -> int:
        """Loss terms: predictions that count (valid steps only, packed), times O for mse."""
        predictions = (rows.n_rows if rows.packed else rows.T * rows.B) if cfg.many_to_many else rows.B
        return predictions if cfg.loss == "xent" else predictions * cfg.output_size

    # -- protocol ------------------------------------------------------------------------

    def _call(self, what: str, cfg: ModelConfig, x: np.ndarray, lengths, fn):
        """``fn(ws, rows)`` on the workspace of this batch's layout (packed when a length is
        below T), a CUDA failure turned into a DeviceError."""
        B, T = x.shape[0], x.shape[1]
        packed = lengths is not None and int(lengths.min()) < T

        def run():
            with self.workspace(cfg, x, packed) as ws:
                return fn(ws, Rows.packed_by(B, T, ws.plan.padded_batch, lengths) if packed else ws.full)

        return self._device(what, cfg, x.shape, run)

    def _outputs(self, cfg: ModelConfig, rows: Rows, yout: np.ndarray) -> np.ndarray:
        """The head's output in the batch's order: (B, O), or (B, T, O) with zeros at padded steps."""
        O = cfg.output_size
        if cfg.many_to_many and rows.packed:
            return rows.unpack(yout[: rows.n_rows * O].reshape(-1, O))
        Tout = rows.T if cfg.many_to_many else 1
        out = rows.restore(yout.reshape(Tout, -1, O)[:, : rows.B].transpose(1, 0, 2))  # (B, Tout, O)
        return out if cfg.many_to_many else np.ascontiguousarray(out[:, 0])

    def _forward(self, cfg, params, x, lengths=None, initial_state=None, return_state=False):
        def run(ws: Workspace, rows: Rows):
            theta = self._to_device(Layout.of(cfg).flatten(params, cfg.np_dtype))
            self._stage(cfg, ws, x, None, rows)
            wpack = _cuda().device_array(2 * Layout.of(cfg).size, cfg.np_dtype)
            self._forward_pass(cfg, ws, theta, wpack, rows, self._stage_state(cfg, ws, rows, initial_state))
            yout = ws.dev["yout"].copy_to_host(stream=self._stream)
            state = self._final_state(cfg, ws, rows, on_device=False) if return_state else None
            self._stream.synchronize()
            return self._outputs(cfg, rows, yout), state

        y, state = self._call("forward", cfg, x, lengths, run)
        return (y, state) if return_state else y

    def _loss_and_grads(self, cfg, params, x, y, lengths=None, initial_state=None, dropout=None):
        layout = Layout.of(cfg)

        def run(ws: Workspace, rows: Rows):
            theta = self._to_device(layout.flatten(params, cfg.np_dtype))
            wpack = _cuda().device_array(2 * layout.size, cfg.np_dtype)
            grad = _cuda().device_array(layout.size, cfg.np_dtype)
            self._forward_and_backward(cfg, ws, rows, theta, wpack, grad, x, y, initial_state, dropout)
            loss = self._loss_to_host(ws, self._n_terms(cfg, rows))
            return loss, grad.copy_to_host()

        loss, grad = self._call("loss_and_grads", cfg, x, lengths, run)
        return loss, {k: v.copy() for k, v in layout.views(grad).items()}

    def _init_state(self, cfg, params, opt, opt_state):
        layout = Layout.of(cfg)
        dt = cfg.np_dtype

        def run():
            cuda = _cuda()
            host = FlatTrainState.create(layout, cfg, opt, params, opt_state)  # the flat vectors, on the host
            # theta, W_h packed twice, the gradient and every optimizer slot
            _check_free_memory((4 + len(host.slots)) * layout.size * dt.itemsize, f"the training state of {cfg}")
            return CudaTrainState(cfg, opt, {}, {"step": np.array(opt_state["step"], dtype=np.int64)}, layout=layout,
                                  theta=cuda.to_device(host.theta),
                                  wpack=cuda.device_array(2 * layout.size, dt), grad=cuda.device_array(layout.size, dt),
                                  slots={s: cuda.to_device(flat) for s, flat in host.slots.items()},
                                  norm_part=cuda.to_device(np.zeros(NORM_BLOCKS, np.float64)))

        return self._device("init_state", cfg, (), run)

    # -- the fused step's kernels (lstmbench.fused) ------------------------------------------

    def _forward_and_backward(self, cfg: ModelConfig, ws: Workspace, rows: Rows, theta, wpack, grad, x, y,
                              initial_state, dropout: DropoutDraw | None = None) -> None:
        """The batch (and state) in, forward and backward: the gradient into ``grad``, the loss on the
        device; with the dropout masks of ``dropout`` (a training step of a model with dropout)."""
        draw = dropout if cfg.dropout > 0 else None
        self._stage(cfg, ws, x, y, rows)
        self._forward_pass(cfg, ws, theta, wpack, rows, self._stage_state(cfg, ws, rows, initial_state), draw)
        self._backward_pass(cfg, ws, theta, wpack, grad, rows, draw)

    def _step(self, state: CudaTrainState, x, y, scalars: StepScalars | None, lengths=None, initial_state=None,
              return_state=False, dropout=None):
        """Loss and gradient, and with ``scalars`` the update, all in launches on the stream; the loss
        is read back last. ``return_state``: also (h_n, c_n) as new device arrays, in the batch's order
        (a carried state, which comes back as the next step's initial_state: that of this step's own
        pass, with its dropout masks)."""
        cfg = state.cfg

        def run(ws: Workspace, rows: Rows):
            self._launches = 0
            self._forward_and_backward(cfg, ws, rows, state.theta, state.wpack, state.grad, x, y, initial_state,
                                       dropout)
            if scalars is not None:
                self._launch_update(state, scalars)
            carried = self._final_state(cfg, ws, rows, on_device=True) if return_state else None
            loss = self._loss_to_host(ws, self._n_terms(cfg, rows))
            if scalars is not None:
                self.launches_per_step = self._launches
            return (loss, carried) if return_state else loss

        return self._call("train_step", cfg, x, lengths, run)

    def _loss_and_gradient(self, state: CudaTrainState, x, y, **sequences):
        return self._step(state, x, y, None, **sequences)

    def _fused_step(self, state: CudaTrainState, x, y, scalars: StepScalars, **sequences):
        """The whole step in launches on the stream; the loss is read back after the update."""
        return self._step(state, x, y, scalars, **sequences)

    # -- a state carried across steps, on the device ---------------------------------------------

    def _carried_to_host(self, state: CudaTrainState, carried):
        """Host copies of a carried (h_n, c_n) (for a checkpoint)."""
        return self._device("the carried state", None, tuple(carried[0].shape),
                            lambda: tuple(np.array(a) if isinstance(a, np.ndarray) else a.copy_to_host()
                                          for a in carried))

    def _carried_from_host(self, state: CudaTrainState, pair):
        """A host (h, c) on the device, to be carried into the next step (a resume)."""
        return self._device("the carried state", None, tuple(pair[0].shape),
                            lambda: tuple(_cuda().to_device(np.ascontiguousarray(a)) for a in pair))

    def _update(self, state: CudaTrainState, scalars: StepScalars) -> None:
        """The update after a gradient hook; it has run when this returns."""
        def run():
            self._launch_update(state, scalars)
            self._stream.synchronize()
            self.launches_per_step = self._launches

        self._device("the update", state.cfg, (), run)

    def _launch_update(self, state: CudaTrainState, scalars: StepScalars) -> None:
        """Clipping (the norm's partial sums, then each block's factor from them) and SGD, Adam or AdamW,
        with weight decay (StepScalars.l2, .decay_factor) at the step's learning rate."""
        k, dt, P = _kernels(), state.cfg.np_dtype, state.layout.size
        blocks, n_part = _elementwise_blocks(P, UPDATE_BLOCKS), 0
        if scalars.clip_norm:
            n_part = _elementwise_blocks(P, NORM_BLOCKS)
            self._launch(k.sum_squares_kernel(dt), n_part, k.REDUCE_THREADS, 8 * k.REDUCE_THREADS, state.grad, P,
                         state.norm_part)
        clip, s = float(scalars.clip_norm or 0.0), scalars.in_dtype(dt)
        if s.kind in ("adam", "adamw"):  # AdamW: Adam with decay_factor != 1 and l2 = 0
            self._launch(k.adam_kernel(dt), blocks, k.REDUCE_THREADS, dt.itemsize, state.theta, state.grad,
                         state.slots["m"], state.slots["v"], P, state.norm_part, n_part, clip, s.beta1,
                         s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.step_size, s.bias2_sqrt, s.eps, s.l2,
                         s.decay_factor)
        else:
            buf = state.slots.get("momentum", state.grad)  # unused without momentum
            self._launch(k.sgd_kernel(dt), blocks, k.REDUCE_THREADS, dt.itemsize, state.theta, state.grad, buf, P,
                         state.norm_part, n_part, clip, s.lr, s.momentum, s.first_step, scalars.momentum > 0, s.l2)

    def _gradient_to_host(self, state: CudaTrainState) -> np.ndarray:
        """The gradient in a pinned host vector, for the hook."""
        def run():
            if state.grad_host is None:
                state.grad_host = _pinned_zeros((state.layout.size,), state.cfg.np_dtype)
            state.grad.copy_to_host(state.grad_host, stream=self._stream)
            self._stream.synchronize()
            return state.grad_host

        return self._device("the gradient hook", state.cfg, (), run)

    def _gradient_from_host(self, state: CudaTrainState, host: np.ndarray) -> None:
        self._device("the gradient hook", state.cfg, (),
                     lambda: state.grad.copy_to_device(host, stream=self._stream))

    def _get_params(self, state: CudaTrainState):
        theta = self._device("get_params", state.cfg, (), lambda: state.theta.copy_to_host())
        return {k: v.copy() for k, v in state.layout.views(theta).items()}

    def _get_optimizer_state(self, state: CudaTrainState):
        out = {"step": np.array(state.opt_state["step"], dtype=np.int64)}
        for slot, flat in state.slots.items():
            host = self._device("get_optimizer_state", state.cfg, (), flat.copy_to_host)
            out.update({f"{slot}/{n}": v.copy() for n, v in state.layout.views(host).items()})
        return out

