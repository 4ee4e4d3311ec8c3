"""The persistent recurrence (opt-in, unverified on a GPU): cuDNN's persistent-RNN idea in numba-cuda.

The default sweeps (kernels.lstm_forward / lstm_backward) give each block batch rows and
all hidden units: blocks never wait for one another, but every block reads all of W_h
through L2 at every step, and the batch alone sets how many blocks run. Here the hidden
units are split across blocks as well. A task is (a group of ROWS rows, a slice of UNITS
units); its block keeps that slice of W_h in shared memory for all T steps, and each
thread owns one (row, unit) cell:

    forward   z[row, q*H + j] = x W_x + b + sum_k h_{t-1}[row, k] W_h[k, q*H + j]   (then the gate math)
    backward  dh[row, j] = dLoss/dh_t + sum_c dz_{t+1}[row, c] W_h[j, c]             (then dc and dz)

A cell needs h_{t-1} (dz_{t+1}) of its row from every other slice, so the whole grid
waits at a barrier (``cuda.cg.this_grid().sync()``, a cooperative launch) after every
step, and every block runs every step, even one whose rows are done. The grid is as
large as the device can hold at once; a block runs several tasks when there are more
(then it loads each task's slice again at every step). The math per cell is the default
kernels' own device functions (forward_cell, backward_cells), so both algorithms agree to
rounding. The bias gradient is a column sum of dz afterwards (``column_sums``, in row
order), not per-block partials.

What is verified: Numba's simulator runs a cooperative grid of one block only, so the
tests run every task in one block, with the barrier at every step: the indexing, the
slices, the math and the placement of the barriers within a block. What is not: blocks
running at once and the barrier between them. Until a GPU run matches these kernels
against the default ones (tools/cuda_gpu_check.py does), this algorithm is unverified
and stays off by default (NumbaCuda(recurrence="persistent") or
LSTMBENCH_CUDA_RECURRENCE=persistent turn it on).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import boolean, cuda, int64, uint64

from .jit import dtype_of, kernel
from .kernels import EXP_CAPS, U1, U2, U3, UNROLL, backward_cells, forward_cell, incoming_dh, prev_slot

THREADS = 256  # a block: ROWS rows x UNITS units, one cell a thread
MOST_UNITS = 4  # units of a slice: fewer when the slice of W_h would not fit in shared memory


def slice_units(H: int, itemsize: int, max_shared: int) -> int:
    """Units of a task's slice of W_h (4H x UNITS values in shared memory): a power of two up to
    MOST_UNITS that fits; 0 if not even one unit's column fits."""
    units = MOST_UNITS
    while units and 4 * H * units * itemsize > max_shared:
        units //= 2
    return units


def tasks(H: int, Bp: int, units: int) -> int:
    """(row group, unit slice) pairs of a sweep."""
    return -(-Bp // (THREADS // units)) * -(-H // units)


@cuda.jit(device=True, inline=True)
def task_cell(task, n_slices, units):
    """The (row, unit) cell of this thread in ``task``: task = row group * n_slices + slice."""
    rows = cuda.blockDim.x // units
    r, u = cuda.threadIdx.x // units, cuda.threadIdx.x % units
    return (task // n_slices) * rows + r, (task % n_slices) * units + u


@cuda.jit(device=True, inline=True)
def load_forward_slice(theta, wh_off, w_slice, s, H, units, zero):
    """W_h[k, q*H + s*units + u] into w_slice[(k*units + u)*4 + q] (zero past H)."""
    cuda.syncthreads()  # nobody reads the previous slice any more
    for e in range(cuda.threadIdx.x, H * units * 4, cuda.blockDim.x):
        k, q, u = e // (4 * units), e // units % 4, e % units
        j = s * units + u
        w_slice[(k * units + u) * 4 + q] = theta[wh_off + k * 4 * H + q * H + j] if j < H else zero
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def load_backward_slice(theta, wh_off, w_slice, s, H, units, zero):
    """W_h[s*units + u, c] into w_slice[c*units + u] (zero past H)."""
    cuda.syncthreads()
    for e in range(cuda.threadIdx.x, 4 * H * units, cuda.blockDim.x):
        u, c = e // (4 * H), e % (4 * H)
        j = s * units + u
        w_slice[c * units + u] = theta[wh_off + j * 4 * H + c] if j < H else zero
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def forward_fma_k(acc, hs, hp, w_slice, wp):
    """One k of a cell's forward product: acc[q] += h_{t-1}[row, k] (at hp) * W_h[k, q*H + j] (at wp + q)."""
    hk = hs[hp]
    acc[0] += hk * w_slice[wp]
    acc[1] += hk * w_slice[wp + U1]
    acc[2] += hk * w_slice[wp + U2]
    acc[3] += hk * w_slice[wp + U3]


@cuda.jit(device=True, inline=True)
def forward_product(acc, hs, h_row, w_slice, u, H, units):
    """acc[q] += sum_k h_{t-1}[row, k] W_h[k, q*H + j]: h_{t-1} of the row from hs at h_row, the slice at
    (k*units + u)*4 + q; unsigned running offsets (no wrap-around), UNROLL steps of k a trip."""
    hp, wp, w_step = np.uint64(h_row), np.uint64(4 * u), np.uint64(4 * units)
    for _ in range(H // UNROLL):
        for _k in range(UNROLL):
            forward_fma_k(acc, hs, hp, w_slice, wp)
            hp, wp = hp + U1, wp + w_step
    for _ in range(H % UNROLL):
        forward_fma_k(acc, hs, hp, w_slice, wp)
        hp, wp = hp + U1, wp + w_step


@cuda.jit(device=True, inline=True)
def backward_product(gates, base, w_slice, u, G, units, zero):
    """sum_c dz_{t+1}[row, c] W_h[j, c]: dz_{t+1} of the row in gates from base, the slice at c*units + u
    (G = 4H: a whole number of trips)."""
    gp, wp, w_step = np.uint64(base), np.uint64(u), np.uint64(units)
    d = zero
    for _ in range(G // UNROLL):
        for _k in range(UNROLL):
            d += gates[gp] * w_slice[wp]
            gp, wp = gp + U1, wp + w_step
    return d


@cache
def forward_kernel(np_dtype, UNITS: int):
    """The forward sweep of one layer, persistent: kernels.lstm_forward's arguments and results,
    W_h read from theta at wh_off. Dynamic shared memory: the slice, H * UNITS * 4 values."""
    DT = dtype_of(np_dtype)
    ZERO, ONE, EXP_CAP = np.dtype(np_dtype).type(0), np.dtype(np_dtype).type(1), EXP_CAPS[np.dtype(np_dtype)]
    a = DT[::1]

    @kernel(THREADS, a, int64, int64, a, a, a, a, a, a, a, int64, int64, int64[::1], int64, int64, int64, boolean,
            boolean, a, boolean, boolean, uint64, uint64, DT, int64, int64)
    def lstm_forward_persistent(theta, b_off, wh_off, gates, hs, cs, tcs, hprev, state0, staten, h_off, c_off, seq,
                                T, Bp, H, has_state, packed, hd, head_last, drop, key, threshold, scale, first_row, B):
        w_slice = cuda.shared.array(0, DT)
        acc = cuda.local.array(4, DT)  # z of the cell's four gates
        grid = cuda.cg.this_grid()
        n_slices = -(-H // UNITS)
        n_tasks = -(-Bp // (cuda.blockDim.x // UNITS)) * n_slices
        resident = n_tasks == cuda.gridDim.x  # one task a block: its slice stays in shared memory
        for task in range(cuda.blockIdx.x, n_tasks, cuda.gridDim.x):  # slot 0: the initial state
            row, j = task_cell(task, n_slices, UNITS)
            if row < Bp and j < H:
                hs[row * H + j] = state0[h_off + row * H + j] if has_state else ZERO
                cs[row * H + j] = state0[c_off + row * H + j] if has_state else ZERO
        if resident:
            load_forward_slice(theta, wh_off, w_slice, cuda.blockIdx.x % n_slices, H, UNITS, ZERO)
        grid.sync()
        for t in range(T):  # every block takes every step: the barrier needs all of them
            off, prev = seq[Bp + t], prev_slot(seq, Bp, t)
            n_t = seq[Bp + t + 1] - off  # the rows that take step t: 0 .. n_t-1
            for task in range(cuda.blockIdx.x, n_tasks, cuda.gridDim.x):
                if not resident:
                    load_forward_slice(theta, wh_off, w_slice, task % n_slices, H, UNITS, ZERO)
                row, j = task_cell(task, n_slices, UNITS)
                if row < n_t and j < H:
                    u, z, h_row = j % UNITS, (off + row) * 4 * H + j, (prev + row) * H
                    if packed:
                        hprev[(off + row) * H + j] = hs[h_row + j]
                    for q in range(4):
                        acc[q] = gates[z + q * H] + theta[b_off + q * H + j]
                    if t > 0 or has_state:  # h_0 = 0: no recurrent product at the first step
                        forward_product(acc, hs, h_row, w_slice, u, H, UNITS)
                    for q in range(4):
                        gates[z + q * H] = acc[q]
                    forward_cell((gates, cs, tcs, hs, staten, h_off, c_off, hd, head_last), row, j, (t, off, prev),
                                 H, seq, Bp, T, drop, (key, threshold, scale, first_row, B), ONE, EXP_CAP, ZERO)
            grid.sync()  # h_t of every slice is written before any block reads it

    return lstm_forward_persistent


@cache
def backward_kernel(np_dtype, UNITS: int):
    """The backward sweep of one layer, persistent: kernels.lstm_backward's arguments and results
    but the bias-gradient partials (column_sums adds dz up afterwards), W_h from theta at wh_off.
    Dynamic shared memory: the slice, 4H * UNITS values."""
    DT = dtype_of(np_dtype)
    ZERO, ONE = np.dtype(np_dtype).type(0), np.dtype(np_dtype).type(1)
    a = DT[::1]

    @kernel(THREADS, a, int64, a, a, a, a, boolean, a, boolean, a, int64[::1], int64, int64, int64, boolean, uint64,
            uint64, DT, int64, int64)
    def lstm_backward_persistent(theta, wh_off, gates, cs, tcs, dh_in, has_dh_in, dh_last, has_dh_last, dcn, seq, T,
                                 Bp, H, drop, key, threshold, scale, first_row, B):
        w_slice = cuda.shared.array(0, DT)
        dh = cuda.local.array(1, DT)
        grid = cuda.cg.this_grid()
        G = 4 * H
        n_slices = -(-H // UNITS)
        n_tasks = -(-Bp // (cuda.blockDim.x // UNITS)) * n_slices
        resident = n_tasks == cuda.gridDim.x
        mask = (key, threshold, scale, first_row, B)
        if resident:
            load_backward_slice(theta, wh_off, w_slice, cuda.blockIdx.x % n_slices, H, UNITS, ZERO)
        for t in range(T - 1, -1, -1):
            off, prev = seq[Bp + t], prev_slot(seq, Bp, t)
            n_t = seq[Bp + t + 1] - off
            n_next = seq[Bp + t + 2] - seq[Bp + t + 1] if t < T - 1 else 0  # the rows that took step t+1
            for task in range(cuda.blockIdx.x, n_tasks, cuda.gridDim.x):
                if not resident:
                    load_backward_slice(theta, wh_off, w_slice, task % n_slices, H, UNITS, ZERO)
                row, j = task_cell(task, n_slices, UNITS)
                if row < n_t and j < H:
                    step = (t, off, prev, row, 1)
                    incoming_dh(dh, dh_in, has_dh_in, 1, step, j, H, seq, Bp, T, drop, mask, ZERO)
                    if row < n_next:  # dz_{t+1} @ W_h^T; a row that ended at t gets nothing back
                        dh[0] += backward_product(gates, (seq[Bp + t + 1] + row) * G, w_slice, j % UNITS, G, UNITS,
                                                  ZERO)
                    backward_cells((gates, cs, tcs, dcn, dh_last, has_dh_last), dh, 1, step, j,
                                   H, seq, Bp, T, drop, mask, ONE, ZERO)
            grid.sync()  # dz_t of every slice is written before any block reads it

    return lstm_backward_persistent


@cache
def column_sums_kernel(np_dtype):
    """out[c] = sum over n < N of a[n*G + c], in row order: the bias gradient of one layer from dz."""
    DT = dtype_of(np_dtype)
    ZERO = np.dtype(np_dtype).type(0)
    a = DT[::1]

    @kernel(128, a, int64, int64, a)
    def column_sums(src, N, G, out):
        c = cuda.grid(1)
        if c < G:
            acc = ZERO
            for n in range(N):
                acc += src[n * G + c]
            out[c] = acc

    return column_sums
