"""The stepwise recurrence: cuDNN's standard (non-persistent) algorithm, one step at a time.

The rows recurrence (kernels.lstm_forward / lstm_backward) gives each block batch rows and
all hidden units, so the batch alone sets how many blocks run (32 at B = 128) and every
block reads all of W_h at every step. Here every step is two launches over all the rows
that take it:

    forward   t = 0 .. T-1:   P = h_{t-1} @ W_h                          (gemm, split along K)
                              z = x_t W_x + b + sum_s P_s, gate math      (lstm_forward_cells)
    backward  t = T-1 .. 0:   P = dz_{t+1} @ W_h^T                       (gemm, split along K)
                              dh = dLoss/dh_t + sum_s P_s, dc, dz          (lstm_backward_cells)

The product is gemm.py's register-tiled kernel: its output tiles and S chunks of K
(Sweep.splits, from the plan's cost model) are the grid, so the hidden units are split
across blocks and the whole GPU works on each step. Each chunk writes its partial product
to a scratch buffer (``part``, chunk s at s * part_stride, a row's 4H or H values
contiguous); the cell kernel, one thread per (row, unit), adds the chunks in the order
s = 0, 1, ..., S-1 (no atomics: the same bits on every run for a given S) and then does the
default sweeps' cell math (kernels.forward_cell, kernels.backward_cell, the same dropout
draws). The bias gradient is dz's column sum after the sweep (persistent.column_sums).

Lengths: the host knows each step's rows (Rows.seq), so step t's product runs over the
n_t rows that take it and nothing else; the cell kernel reads the same counts from ``seq``
on the device. A row that ended at t gets no dz_{t+1} @ W_h^T back (the product covers the
n_{t+1} rows of step t+1, a prefix). Nothing here waits across blocks within a launch, so
Numba's simulator checks all of it; the order of the launches on the stream does the rest.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import boolean, cuda, int64, uint64

from .jit import dtype_of, kernel
from .kernels import EXP_CAPS, backward_cell, forward_cell, incoming_dh, prev_slot

THREADS = 128  # a cell kernel's block: one (row, unit) cell a thread
MAX_SPLITS = 32  # most chunks of K of one step's product


def split_of(K: int, splits: int, bk: int) -> tuple[int, int]:
    """(chunks, chunk length) for ``splits`` chunks of K in whole staging steps of bk (the last
    chunk takes the rest; rounding can leave fewer chunks than asked)."""
    chunk = -(-K // (max(1, splits) * bk)) * bk
    return -(-K // chunk), chunk


@cache
def forward_cells_kernel(np_dtype):
    """Step t of one layer's forward sweep after its product: for each of the n_t rows that take
    the step and each unit j, z = gates (x_t W_x) + b + the S partial products of h_{t-1} @ W_h
    (``recurrent``; none at t = 0 without a state), then forward_cell: the activated gates, c_t,
    tanh(c_t), h_t, the final state at the row's last step, hd with dropout, and (``packed``)
    h_{t-1} into hprev. At t = 0 it writes slot 0 of hs and cs first (the initial state or 0).
    kernels.lstm_forward's buffers and arguments, plus part / part_stride / splits and t."""
    DT = dtype_of(np_dtype)
    ZERO, ONE, EXP_CAP = np.dtype(np_dtype).type(0), np.dtype(np_dtype).type(1), EXP_CAPS[np.dtype(np_dtype)]
    a = DT[::1]

    @kernel(THREADS, a, int64, a, int64, int64, boolean, a, a, a, a, a, a, a, int64, int64, int64[::1], int64, int64,
            int64, int64, boolean, boolean, a, boolean, boolean, uint64, uint64, DT, int64, int64)
    def lstm_forward_cells(theta, b_off, part, part_stride, splits, recurrent, gates, hs, cs, tcs, hprev, state0,
                           staten, h_off, c_off, seq, t, T, Bp, H, has_state, packed, hd, head_last, drop, key,
                           threshold, scale, first_row, B):
        e = cuda.grid(1)
        off, prev = seq[Bp + t], prev_slot(seq, Bp, t)
        if e < (seq[Bp + t + 1] - off) * H:  # the rows that take step t: 0 .. n_t-1
            row, j = e // H, e % H
            G = 4 * H
            if t == 0:  # slot 0: the initial state (the buffers are reused); this thread reads it below
                hs[row * H + j] = state0[h_off + row * H + j] if has_state else ZERO
                cs[row * H + j] = state0[c_off + row * H + j] if has_state else ZERO
            if packed:
                hprev[(off + row) * H + j] = hs[(prev + row) * H + j]
            z, p = (off + row) * G + j, row * G + j
            for q in range(4):
                acc = gates[z + q * H] + theta[b_off + q * H + j]
                if recurrent:
                    for s in range(splits):  # the chunks of K in order: a fixed sum
                        acc += part[s * part_stride + p + q * H]
                gates[z + q * H] = acc
            forward_cell((gates, cs, tcs, hs, staten, h_off, c_off, hd, head_last), row, j, (t, off, prev), H, seq,
                         Bp, T, drop, (key, threshold, scale, first_row, B), ONE, EXP_CAP, ZERO)

    return lstm_forward_cells


@cache
def backward_cells_kernel(np_dtype):
    """Step t of one layer's backward sweep after its product: for each of the n_t rows and unit j,
    dh = dLoss/dh_t arriving from above (through its dropout mask) + the S partial products of
    dz_{t+1} @ W_h^T (``recurrent``: t < T-1, and only for the n_{t+1} rows that took step t+1),
    then dc and dz (in place of the gates) and dc_t f_t into dcn. kernels.lstm_backward's buffers
    and arguments but the bias partials (column_sums after the sweep), plus part / part_stride /
    splits and t."""
    DT = dtype_of(np_dtype)
    ZERO, ONE = np.dtype(np_dtype).type(0), np.dtype(np_dtype).type(1)
    a = DT[::1]

    @kernel(THREADS, a, int64, int64, boolean, a, a, a, a, boolean, a, boolean, a, int64[::1], int64, int64, int64,
            int64, boolean, uint64, uint64, DT, int64, int64)
    def lstm_backward_cells(part, part_stride, splits, recurrent, gates, cs, tcs, dh_in, has_dh_in, dh_last,
                            has_dh_last, dcn, seq, t, T, Bp, H, drop, key, threshold, scale, first_row, B):
        dh = cuda.local.array(1, DT)
        e = cuda.grid(1)
        off, prev = seq[Bp + t], prev_slot(seq, Bp, t)
        if e < (seq[Bp + t + 1] - off) * H:
            row, j = e // H, e % H
            mask = (key, threshold, scale, first_row, B)
            incoming_dh(dh, dh_in, has_dh_in, 1, (t, off, prev, row, 1), j, H, seq, Bp, T, drop, mask, ZERO)
            if recurrent and row < seq[Bp + t + 2] - seq[Bp + t + 1]:  # a row that ended at t gets nothing back
                for s in range(splits):  # the chunks of K in order: a fixed sum
                    dh[0] += part[s * part_stride + row * H + j]
            backward_cell((gates, cs, tcs, dcn, dh_last, has_dh_last), dh[0], row, j, (t, off, prev), H, seq, Bp, T,
                          drop, mask, ONE, ZERO)

    return lstm_backward_cells
