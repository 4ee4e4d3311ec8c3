"""CUDA kernels of the ``cuda`` backend (numba-cuda): the reference's math, on the GPU.

The math is the reference's (backends/reference/reference.py), step for step:

    z_t = x_t @ W_x + h_{t-1} @ W_h + b          gates i, f, g, o
    c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)
    y = h_T @ W_y + b_y  (many-to-one)   or   y_t = h_t @ W_y + b_y  (many-to-many)

and backpropagation through time:

    dh = dLoss/dh_t (from the head or the layer above) + dz_{t+1} @ W_h^T
    dc = dh * o * (1 - tanh(c_t)^2) + dc_{t+1} * f_{t+1}
    dz = [dc g i (1-i),  dc c_{t-1} f (1-f),  dc i (1-g^2),  dh tanh(c_t) o (1-o)]
    dW_x = sum_t x_t^T dz_t,  dW_h = sum_t h_{t-1}^T dz_t,  db = sum_t dz_t,  dx_t = dz_t @ W_x^T

How it is computed (docs/cuda-backend.md has the picture and the reasons):

* ``gemm`` (gemm.py): one tiled shared-memory matrix product for every product that is
  not sequential in t: the input projection x @ W_x of all T steps at once,
  the head, the weight gradients dW_x, dW_h, dW_y (one product each, summed
  over all steps and rows; not layer 0's dW_x for an input of FOLD_MAX_INPUTS values or
  fewer: its backward sweep sums x^T dz as it sums the bias gradient), and dx, dh of the
  head. Operands are addressed through strides, so transposed operands need no copy.
* ``lstm_forward`` / ``lstm_backward``: the recurrence of one layer, the whole
  sequence in one launch. Block b owns batch rows [b*ROWS, (b+1)*ROWS) and
  loops over t on its own: its rows' h_{t-1} (forward) or dz_{t+1} (backward)
  sit in shared memory, transposed so that one k of every row is read together.
  A forward thread owns hidden unit j (and j + THREADS, ...) and computes all four
  gates of it for the block's rows, with the pointwise gate math fused in; a
  backward thread owns BACKWARD_UNITS neighbouring units, so each dz_{t+1} value
  it reads feeds several multiply-adds. The forward and backward sweeps choose
  their ROWS apart (the plan's cost model). The products' inner loops walk
  unsigned running offsets (no negative-index wrap-around) and are unrolled by
  hand; W_h comes from ``pack_wh``, which lays it out for each sweep once per
  step. Blocks never wait for one another (only ``cuda.syncthreads()`` inside a
  block), which is what Numba's simulator can check. With lengths a block
  runs only the steps of its longest row, and only its active rows' gates.
* ``gather_rows``: an (L, rows, H) state into or out of the sorted row order.
* ``loss_head``, ``finish_grads``: loss and dLoss/dy, then the sums over blocks
  (bias gradients, the loss) in a fixed order.
* ``sum_squares``, ``adam_update``, ``sgd_update``: clipping and the update
  (weight decay and AdamW included), the clipping norm reduced in a fixed order
  inside every block.
* dropout (training steps of a model with dropout): no mask is stored or copied.
  ``lstm_forward`` writes each h it sends up (to the next layer or the head)
  times its mask into ``hd``, which the products then read instead of ``hs``;
  ``lstm_backward`` draws the same mask again for the gradient coming back
  (``dropped``: a hash of the element's global index, design.md section 9).

No kernel uses atomics: every sum has a fixed order, so a run is reproducible
bit for bit. Shared memory is always the launch's dynamic shared memory
(``cuda.shared.array(0, ...)``), indexed flat: the simulator's registry of
fixed-size shared arrays is not thread-safe, and on the first launch in a
process two threads of a block can each get their own "shared" array (seen
once with a 16-thread test kernel in a fresh process: an observation, not a
measured rate). Accumulators are typed with the kernel's dtype (``DT(0)``): a
bare ``0.0`` would make float32 kernels accumulate in float64 on the GPU.

Buffers (flat device arrays, time-major; Bp = blocks * ROWS rows of either sweep, the rows past
the batch are zero padding that stays out of every gradient). A layout row is one
(step, row) pair: without lengths every row takes every step and step t holds rows
t*Bp .. t*Bp+Bp-1, N = T*Bp rows in all. With lengths the rows are sorted longest
first and step t holds only its n_t active rows, packed (torch's PackedSequence
layout): N = sum of the lengths, and the padded steps are not in any buffer.
    seq       int64: row_len (Bp) | step_off (T+1) | perm (B) | inverse (B): the steps
              each (sorted) row takes, the layout row of step t's first row, and the
              sorted order (sorted position -> batch row, batch row -> sorted position)
    xs        (N, D0)          the minibatch, staged by the host
    gates[l]  (N, 4H)          x W_x from gemm -> activated i, f, g, o -> dz
    hs[l]     (Bp + N, H)      h_0 (the initial state, or 0), then h_t at Bp + layout row
    cs[l]     (Bp + N, H)      c_0, then c_t
    tcs[l]    (N, H)           tanh(c_t)
    hprev[l]  (N, H)           with lengths only: h_{t-1} at each layout row (for dW_h)
    state0, staten (2, L, Bp, H)  initial and final state (h, then c), sorted rows
    yout, dy  (Tout*Bp or N, O) head output and dLoss/dy
    dh        (N, H)           dLoss/dh_t arriving from above
    dh_last   (Bp, H)          many-to-one: dLoss/dh at each row's last step, from the head
    hd[l]     (N, H)           with dropout only: layer l's h_t times its mask (the input of
                               layer l+1 or the head); the top layer of a many-to-one model:
                               (Bp, H), each row's last h, masked
Parameters are one flat vector ``theta`` (lstmbench.layout) of ``size`` values; ``wpack``
(2 * size) holds every layer's W_h as the sweeps read it: W_h^T at W_h's offsets, and from
``size`` on the forward order (pack_kernel).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import boolean, cuda, float64, int32, int64, uint64

from .gemm import GEMM_TILE_SIZES, gemm_kernel, gemm_shape, gemm_shared_bytes  # noqa: F401 (the backend's kernels, in one place)
from .jit import SIMULATOR, Kernel, dtype_of, kernel as _kernel  # noqa: F401

# Largest threads per block the launch plan may pick for each kernel; it is also the
# kernel's launch bound, so the compiler keeps registers within what that many need.
MAX_RECURRENCE_THREADS = 256
LOSS_THREADS = 256  # at most; a power of two (tree reduction)
REDUCE_THREADS = 128  # sum_squares, the update, finish_grads, pack_wh


# -- device functions (generic: numba compiles them for the caller's types) --------------


# exp's argument is capped where the result is already 0 in the dtype (sigmoid's exp_cap)
EXP_CAPS = {np.dtype(np.float32): np.float32(88.0), np.dtype(np.float64): np.float64(709.0)}


@cuda.jit(device=True, inline=True)
def sigmoid(x, one, exp_cap):
    # exp's argument is capped where the result is already 0 in the dtype: the GPU
    # would give inf and then exactly 0, the simulator's Python math.exp would raise
    return one / (one + math.exp(min(-x, exp_cap)))


# -- the recurrence ---------------------------------------------------------------------------
#
# Where a row's step t lives (``seq``, see the module docstring): rows are sorted longest
# first, so the rows that take step t are a prefix 0 .. n_t-1, and step t's rows sit at
# layout rows seq[Bp+t] .. seq[Bp+t+1]-1. hs and cs have one more slot in front: rows
# 0 .. Bp-1 hold the initial state, so h_t of a row at layout row p is hs row Bp + p.


@cuda.jit(device=True, inline=True)
def active_rows(seq, Bp, t, row0, rows):
    """How many of the block's rows (row0 .. row0+rows-1) take step t: a prefix of them."""
    return min(max(seq[Bp + t + 1] - seq[Bp + t] - row0, 0), rows)


@cuda.jit(device=True, inline=True)
def prev_slot(seq, Bp, t):
    """The hs / cs row of h_{t-1}, c_{t-1} of the first row: the initial-state slot at t = 0."""
    return 0 if t == 0 else Bp + seq[Bp + t - 1]


# Dropout (design.md section 9): the mask is never stored; each kernel that needs element j
# of (row, t) draws it again from a hash of its global index. uint32 arithmetic is done in
# uint64 with the top half cut off after every product (the products of two 32-bit values
# fit), so the compiled kernels and the simulator's numpy scalars wrap the same way.
U32 = np.uint64(0xFFFFFFFF)
FMIX_C1, FMIX_C2 = np.uint64(0x85EBCA6B), np.uint64(0xC2B2AE35)
SHIFT_13, SHIFT_16 = np.uint64(13), np.uint64(16)


@cuda.jit(device=True, inline=True)
def fmix32(h):
    """MurmurHash3's 32-bit finaliser (lstmbench.config.fmix32) of h < 2**32 held in a uint64."""
    h ^= h >> SHIFT_16
    h = (h * FMIX_C1) & U32
    h ^= h >> SHIFT_13
    h = (h * FMIX_C2) & U32
    return h ^ (h >> SHIFT_16)


@cuda.jit(device=True, inline=True)
def dropped(value, mask, seq, Bp, T, H, row, t, j, zero):
    """``value`` (element j of sorted row ``row`` at step t) times its dropout multiplier: 0 or
    1/(1-p). ``mask`` = (key, threshold, scale, first_row, B) of the site (lstm_forward's args).
    The row's index in the global minibatch is first_row + its batch index (seq's perm)."""
    key, threshold, scale, first_row, B = mask
    if row >= B:  # a padding row: nothing of it reaches the loss
        return zero
    b = (first_row + seq[Bp + T + 1 + row]) & 0xFFFFFFFF
    element = uint64(((b * T + t) * H + j) & 0xFFFFFFFF)  # ((b*T + t)*W + j) on uint32, W = H
    return value * scale if fmix32(element ^ key) >= threshold else zero


# Unsigned running offsets of the recurrent products' inner loops: Numba wraps a signed index
# that could be negative (``if i < 0: i += n``, two instructions and a select per index), an
# unsigned one it does not; np.uint64 constants keep the arithmetic unsigned (uint64 + int64
# would be float64 in Numba).
U1, U2, U3 = np.uint64(1), np.uint64(2), np.uint64(3)
UNROLL = 4  # steps of k per trip of a product's main loop, unrolled by hand
BACKWARD_UNITS = 2  # hidden units of one backward thread (j0, j0 + 1): each dz_{t+1} value read feeds both


@cuda.jit(device=True, inline=True)
def stage_h_prev(hs, hprev, h_prev, prev, off, row0, na, rows, H, packed, zero):
    """h_{t-1} of the block's rows into shared ``h_prev``, transposed: h_prev[k*rows + r] (zeros
    past the na active rows), so a thread reads the rows of one k together; when ``packed`` also
    into ``hprev`` at this step's layout rows (for dW_h)."""
    for e in range(cuda.threadIdx.x, rows * H, cuda.blockDim.x):  # the block's rows of h_{t-1} are contiguous
        r, k = e // H, e % H
        v = hs[(prev + row0) * H + e] if r < na else zero
        h_prev[k * rows + r] = v
        if packed and r < na:
            hprev[(off + row0) * H + e] = v
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def gate_math(gates, z, H, c_prev, one, exp_cap):
    """Activates z_t in place (i, f, g, o at z, z+H, z+2H, z+3H); returns c_t and tanh(c_t)."""
    i = sigmoid(gates[z], one, exp_cap)
    f = sigmoid(gates[z + H], one, exp_cap)
    g = math.tanh(gates[z + 2 * H])
    o = sigmoid(gates[z + 3 * H], one, exp_cap)
    c = f * c_prev + i * g
    gates[z] = i
    gates[z + H] = f
    gates[z + 2 * H] = g
    gates[z + 3 * H] = o
    return c, math.tanh(c)


@cuda.jit(device=True, inline=True)
def forward_cell(bufs, row, j, step, H, seq, Bp, T, drop, mask, one, exp_cap, zero):
    """Unit j of row ``row`` at step t, its z in ``gates``: the gate math in place, c_t, tanh(c_t)
    and h_t into their buffers, the final state at the row's last step, and with ``drop`` h times
    its mask into ``hd`` (every h_t, or with ``head_last`` the last one only)."""
    gates, cs, tcs, hs, staten, h_off, c_off, hd, head_last = bufs
    t, off, prev = step
    cur = Bp + off
    c, tc = gate_math(gates, (off + row) * 4 * H + j, H, cs[(prev + row) * H + j], one, exp_cap)
    h = gates[(off + row) * 4 * H + 3 * H + j] * tc
    cs[(cur + row) * H + j] = c
    tcs[(off + row) * H + j] = tc
    hs[(cur + row) * H + j] = h
    last = t == seq[row] - 1  # the row's last step: its final state
    if last:
        staten[h_off + row * H + j] = h
        staten[c_off + row * H + j] = c
    if drop and (last or not head_last):  # h as it leaves the layer, masked
        hd[(row if head_last else off + row) * H + j] = dropped(h, mask, seq, Bp, T, H, row, t, j, zero)


@cuda.jit(device=True, inline=True)
def forward_fma_k(acc, wpack, w, h_prev, s, rows):
    """One k of z += h_{t-1} @ W_h for unit j: acc[q*rows + r] += h_{t-1}[r, k] * W_h[k, q*H + j],
    the four weights at w .. w+3, the rows' h_{t-1}[., k] at s .. s+rows-1."""
    w_i, w_f, w_g, w_o = wpack[w], wpack[w + U1], wpack[w + U2], wpack[w + U3]
    for r in range(rows):
        hk = h_prev[s + np.uint64(r)]
        acc[r] += hk * w_i
        acc[rows + r] += hk * w_f
        acc[2 * rows + r] += hk * w_g
        acc[3 * rows + r] += hk * w_o


@lru_cache(maxsize=None)
def lstm_forward_kernel(np_dtype, ROWS: int, THREADS: int):
    """One layer's forward recurrence over all T steps, ROWS batch rows per block of THREADS threads.

    On entry ``gates`` holds x_t @ W_x (from gemm); on exit the activated gates i, f, g, o.
    W_h comes packed (pack_kernel): its four gate weights of (k, j) together in ``wpack`` from
    ``wf_off`` + 4*(k*H + j). Writes slot 0 of hs and cs (the initial state, or zeros), c_t,
    tanh(c_t) and h_t of the steps rows take, each row's final state to ``staten`` (h at h_off,
    c at c_off), and if ``packed`` h_{t-1} to ``hprev`` (for dW_h). A block stops after its
    longest row's last step. With ``drop`` it also writes h times its dropout mask (the next
    layer's or the head's site) to ``hd``: every h_t, or (``head_last``: many-to-one) each row's
    last h only. Dynamic shared memory: ROWS * H values (h_{t-1} of the block's rows).
    """
    DT = dtype_of(np_dtype)
    ZERO, ONE = np.dtype(np_dtype).type(0), np.dtype(np_dtype).type(1)
    EXP_CAP = EXP_CAPS[np.dtype(np_dtype)]
    GATES = 4 * ROWS  # local array sizes must be constants
    ROWS_U = np.uint64(ROWS)

    a = DT[::1]

    @_kernel(THREADS, a, int64, a, int64, a, a, a, a, a, a, a, int64, int64, int64[::1], int64, int64, int64,
             boolean, boolean, a, boolean, boolean, uint64, uint64, DT, int64, int64)
    def lstm_forward(theta, b_off, wpack, wf_off, gates, hs, cs, tcs, hprev, state0, staten, h_off, c_off, seq, T,
                     Bp, H, has_state, packed, hd, head_last, drop, key, threshold, scale, first_row, B):
        h_prev = cuda.shared.array(0, DT)  # (H, ROWS): h_{t-1}[r, k] at k*ROWS + r
        acc = cuda.local.array(GATES, DT)  # z of gate q, row r at acc[q*ROWS + r]
        tid = cuda.threadIdx.x
        row0 = cuda.blockIdx.x * ROWS
        G = 4 * H
        w_step = np.uint64(G)  # wpack's next k: 4H values on
        for e in range(tid, ROWS * H, THREADS):  # slot 0: the initial state (the buffers are reused)
            hs[row0 * H + e] = state0[h_off + row0 * H + e] if has_state else ZERO
            cs[row0 * H + e] = state0[c_off + row0 * H + e] if has_state else ZERO
        cuda.syncthreads()
        for t in range(T):
            na = active_rows(seq, Bp, t, row0, ROWS)
            if na == 0:  # (the same for the whole block) its rows are done: they are sorted longest first
                break
            off, prev = seq[Bp + t], prev_slot(seq, Bp, t)
            recurrent = t > 0 or has_state  # h_0 = 0: no recurrent product at the first step
            if recurrent or packed:
                stage_h_prev(hs, hprev, h_prev, prev, off, row0, na, ROWS, H, packed, ZERO)
            for j in range(tid, H, THREADS):
                for r in range(ROWS):
                    if r < na:
                        z = (off + row0 + r) * G + j
                        for q in range(4):
                            acc[q * ROWS + r] = gates[z + q * H] + theta[b_off + q * H + j]
                if recurrent:  # running offsets along k, UNROLL steps a trip, then the rest of H
                    w, s = np.uint64(wf_off) + np.uint64(4 * j), np.uint64(0)
                    for _ in range(H // UNROLL):
                        for _k in range(UNROLL):
                            forward_fma_k(acc, wpack, w, h_prev, s, ROWS)
                            w, s = w + w_step, s + ROWS_U
                    for _ in range(H % UNROLL):
                        forward_fma_k(acc, wpack, w, h_prev, s, ROWS)
                        w, s = w + w_step, s + ROWS_U
                # z goes back to memory first: this loop stays short enough to be unrolled,
                # so acc lives in registers (the gate math's loop below is not unrolled)
                for r in range(ROWS):
                    if r < na:
                        z = (off + row0 + r) * G + j
                        for q in range(4):
                            gates[z + q * H] = acc[q * ROWS + r]
                for r in range(na):
                    forward_cell((gates, cs, tcs, hs, staten, h_off, c_off, hd, head_last), row0 + r, j,
                                 (t, off, prev), H, seq, Bp, T, drop, (key, threshold, scale, first_row, B), ONE,
                                 EXP_CAP, ZERO)
            cuda.syncthreads()  # h_t is complete before the next step reads it

    return lstm_forward


@cuda.jit(device=True, inline=True)
def cell_backward(gates, z, H, d_h, dc, c_prev, tc, one):
    """The stored gates at z become dz in place; returns dc (for dc * f) and f."""
    i, f, g, o = gates[z], gates[z + H], gates[z + 2 * H], gates[z + 3 * H]
    gates[z] = dc * g * i * (one - i)
    gates[z + H] = dc * c_prev * f * (one - f)
    gates[z + 2 * H] = dc * i * (one - g * g)
    gates[z + 3 * H] = d_h * tc * o * (one - o)
    return f


@cuda.jit(device=True, inline=True)
def fold_x(fold, x_row, gates, z, H):
    """Layer 0's dW_x folded into the backward sweep (``fold`` = (xs, DX, wx), DX = D0 > 0): one
    row's x[d] (layout row x_row) times its dz of the four gates (at z, z + H, .. in ``gates``), added
    to wx[4*d + q] (registers) for d < DX. DX = 0: nothing."""
    xs, dx, wx = fold
    for d in range(dx):
        x = xs[np.uint64(x_row) * np.uint64(dx) + np.uint64(d)]  # unsigned: no negative-index wrap-around
        for q in range(4):
            wx[4 * d + q] += x * gates[z + q * H]


@cuda.jit(device=True, inline=True)
def backward_cells(bufs, dh, rows, step, j, H, seq, Bp, T, drop, mask, one, zero):
    """Unit j of the block's active rows at step t, dLoss/dh_t of row r at dh[r]: dz into ``gates``
    in place, dc_t f_t into ``dcn``; returns the unit's four bias-gradient sums over those rows."""
    return backward_cells_fold(bufs, dh, rows, step, j, H, seq, Bp, T, drop, mask, one, zero, (bufs[0], 0, bufs[0]))


@cuda.jit(device=True, inline=True)
def backward_cell(bufs, d_h, row, j, step, H, seq, Bp, T, drop, mask, one, zero):
    """Unit j of one row at step t (``step`` = (t, off, prev)): dLoss/dh_t = d_h (plus the
    many-to-one head's at the row's last step), then dc, dz into ``gates`` in place and dc_t f_t
    into ``dcn``; returns where the row's dz of gate i is (z: + q H for gate q)."""
    gates, cs, tcs, dcn, dh_last, has_dh_last = bufs
    t, off, prev = step
    last = seq[row] - 1  # the row's last step
    z = (off + row) * 4 * H + j
    if has_dh_last and t == last:
        d_out = dh_last[row * H + j]
        d_h += dropped(d_out, mask, seq, Bp, T, H, row, t, j, zero) if drop else d_out
    tc = tcs[(off + row) * H + j]
    dc = d_h * gates[z + 3 * H] * (one - tc * tc)
    if t < last:
        dc += dcn[row * H + j]
    f = cell_backward(gates, z, H, d_h, dc, cs[(prev + row) * H + j], tc, one)
    dcn[row * H + j] = dc * f
    return z


@cuda.jit(device=True, inline=True)
def backward_cells_fold(bufs, dh, rows, step, j, H, seq, Bp, T, drop, mask, one, zero, fold):
    """backward_cells, and with a fold (``fold`` = (xs, DX, wx), DX > 0) the rows' x^T dz added to
    the unit's sums in wx (fold_x)."""
    gates = bufs[0]
    t, off, prev, row0, na = step
    db_i, db_f, db_g, db_o = zero, zero, zero, zero
    for r in range(rows):
        if r < na:
            z = backward_cell(bufs, dh[r], row0 + r, j, (t, off, prev), H, seq, Bp, T, drop, mask, one, zero)
            db_i += gates[z]
            db_f += gates[z + H]
            db_g += gates[z + 2 * H]
            db_o += gates[z + 3 * H]
            fold_x(fold, off + row0 + r, gates, z, H)
    return db_i, db_f, db_g, db_o


@cuda.jit(device=True, inline=True)
def incoming_dh(dh, dh_in, has_dh_in, rows, step, j, H, seq, Bp, T, drop, mask, zero):
    """dLoss/dh_t of unit j arriving from above (through its dropout mask) for the block's rows."""
    t, off, prev, row0, na = step
    for r in range(rows):
        dh[r] = dh_in[(off + row0 + r) * H + j] if has_dh_in and r < na and j < H else zero
        if drop and has_dh_in and r < na and j < H:
            dh[r] = dropped(dh[r], mask, seq, Bp, T, H, row0 + r, t, j, zero)


@cuda.jit(device=True, inline=True)
def backward_fma_k(dh_a, dh_b, wpack, w, dz_next, s, rows):
    """One k of dh += dz_{t+1} @ W_h^T for the thread's units j0 (dh_a) and j0 + 1 (dh_b), row r:
    += dz_{t+1}[r, k] * W_h^T[k, j], the weights at w and w + 1, dz_{t+1}[., k] at s .. s+rows-1."""
    w_a, w_b = wpack[w], wpack[w + U1]
    for r in range(rows):
        d = dz_next[s + np.uint64(r)]
        dh_a[r] += d * w_a
        dh_b[r] += d * w_b


@cuda.jit(device=True, inline=True)
def fold_flush(fold, wx_part, part, x_stride, j, H, zero):
    """Unit j's sums of fold_x (``fold`` = (xs, DX, wx)) added to this block's partials of x^T dz:
    input d's at wx_part[part + d*x_stride + q*H + j], then zeroed for the next step. DX = 0: nothing."""
    wx, dx = fold[2], fold[1]
    for d in range(dx):
        w = np.uint64(part + d * x_stride + j)
        for q in range(4):
            wx_part[w + np.uint64(q * H)] += wx[4 * d + q]
            wx[4 * d + q] = zero


@cuda.jit(device=True, inline=True)
def backward_sweep(wpack, wh_off, gates, cs, tcs, dh_in, has_dh_in, dh_last, has_dh_last, dcn, db_part, seq, T, Bp,
                   H, drop, mask, work, shape, fold, wx_part):
    """lstm_backward's body (lstm_backward_kernel): ``work`` = the shared dz_{t+1} and the registers
    dh_a, dh_b; ``shape`` the kernel's constants; ``fold`` = (xs, DX, wx) of fold_x and fold_flush,
    whose partials go to wx_part (DX = 0: none)."""
    # dz_{t+1}[r, k] at k*ROWS + r; dLoss/dh_t of units j0 and j0 + 1 at row r (two arrays, not one indexed
    # by unit: each stays in registers)
    dz_next, dh_a, dh_b = work
    ROWS, ROWS_U, THREADS, ZERO, ONE = shape
    tid = cuda.threadIdx.x
    row0 = cuda.blockIdx.x * ROWS
    G = 4 * H
    part = cuda.blockIdx.x * G
    x_stride = cuda.gridDim.x * G  # input d's partial of x^T dz: wx_part[part + d*blocks*4H ..]
    for e in range(4 * fold[1]):
        fold[2][e] = ZERO
    for j0 in range(BACKWARD_UNITS * tid, H, BACKWARD_UNITS * THREADS):  # the thread's own units
        for j in range(j0, min(j0 + BACKWARD_UNITS, H)):  # (it alone adds to them: no barrier needed)
            for q in range(4):
                db_part[part + q * H + j] = ZERO
                for d in range(fold[1]):
                    wx_part[part + d * x_stride + q * H + j] = ZERO
    for t in range(T - 1, -1, -1):
        na = active_rows(seq, Bp, t, row0, ROWS)
        if na == 0:  # (the same for the whole block) none of its rows has reached step t
            continue
        na1 = active_rows(seq, Bp, t + 1, row0, ROWS) if t < T - 1 else 0  # rows that took step t+1
        off, prev = seq[Bp + t], prev_slot(seq, Bp, t)
        if na1 > 0:
            base = (seq[Bp + t + 1] + row0) * G
            for e in range(tid, ROWS * G, THREADS):  # zero for a row that ended at t: nothing flows back
                r, k = e // G, e % G
                dz_next[k * ROWS + r] = gates[base + e] if r < na1 else ZERO
            cuda.syncthreads()
        step = (t, off, prev, row0, na)
        for j0 in range(BACKWARD_UNITS * tid, H, BACKWARD_UNITS * THREADS):
            incoming_dh(dh_a, dh_in, has_dh_in, ROWS, step, j0, H, seq, Bp, T, drop, mask, ZERO)
            incoming_dh(dh_b, dh_in, has_dh_in, ROWS, step, j0 + 1, H, seq, Bp, T, drop, mask, ZERO)
            if na1 > 0:  # running offsets along k (4H: a whole number of trips); a unit past H
                w, s = np.uint64(wh_off) + np.uint64(j0), np.uint64(0)  # reads W_h^T's next row: unused
                for _ in range(G // UNROLL):
                    for _k in range(UNROLL):
                        backward_fma_k(dh_a, dh_b, wpack, w, dz_next, s, ROWS)
                        w, s = w + np.uint64(H), s + ROWS_U
            bufs = (gates, cs, tcs, dcn, dh_last, has_dh_last)
            db = backward_cells_fold(bufs, dh_a, ROWS, step, j0, H, seq, Bp, T, drop, mask, ONE, ZERO, fold)
            for q in range(4):
                db_part[part + q * H + j0] += db[q]
            fold_flush(fold, wx_part, part, x_stride, j0, H, ZERO)
            if j0 + 1 < H:
                db = backward_cells_fold(bufs, dh_b, ROWS, step, j0 + 1, H, seq, Bp, T, drop, mask, ONE, ZERO,
                                         fold)
                for q in range(4):
                    db_part[part + q * H + j0 + 1] += db[q]
                fold_flush(fold, wx_part, part, x_stride, j0 + 1, H, ZERO)
        cuda.syncthreads()  # dz_t is complete before the next step reads it


#: layer 0's dW_x is folded into its backward sweep (DX = D0) for inputs of at most this many values: the
#: fold's 4*DX sums per unit are registers, and past 1 input lstm_backward(4,256) at sm_90 takes more than
#: 128 a thread (166 at DX = 2, 160 at 4: one block of 256 threads per SM instead of two), or at 8 the
#: fold's own loop (255 instructions / 34 FFMA) outgrows the W_h product's (tools/cuda_static_cost.py)
FOLD_MAX_INPUTS = 1


def folded_inputs(D0: int) -> int:
    """DX of layer 0's backward sweep: D0 when dW_x is folded into it (D0 <= FOLD_MAX_INPUTS), else 0."""
    return D0 if D0 <= FOLD_MAX_INPUTS else 0


def lstm_backward_kernel(np_dtype, ROWS: int, THREADS: int, DX: int = 0):
    """One layer's backward sweep over t = T-1 .. 0, ROWS batch rows per block of THREADS threads,
    each thread BACKWARD_UNITS neighbouring hidden units.

    Turns the activated gates in ``gates`` into dz in place, reading dLoss/dh_t
    from ``dh_in`` (if has_dh_in), dLoss/dh of each row's last step from
    ``dh_last`` (if has_dh_last: the many-to-one head's) and W_h^T from ``wpack`` at wh_off
    (pack_kernel); dc_{t+1} f_{t+1} waits in ``dcn``. A block starts at its longest row's last
    step. With ``drop`` both incoming gradients pass through the mask the forward sweep put on h
    as it left the layer (the same site: the next layer's input or the head's), drawn again here.
    Writes this block's bias-gradient partial sums to ``db_part[block]``.
    DX > 0 (layer 0, D0 = DX inputs: the fold): two more arguments, the layer's input ``xs``
    (N, DX) and ``wx_part``, where the block also writes its partial sums of x^T dz (dW_x), input
    d's at wx_part[(d*blocks + block)*4H ..]: finish_grads adds them up as it adds db_part's.
    Dynamic shared memory: ROWS * 4H values (dz_{t+1} of the block's rows).
    """
    return _backward_kernel(np.dtype(np_dtype), ROWS, THREADS, DX)


@lru_cache(maxsize=None)
def _backward_kernel(np_dtype, ROWS: int, THREADS: int, DX: int):
    DT = dtype_of(np_dtype)
    shape = (ROWS, np.uint64(ROWS), THREADS, np.dtype(np_dtype).type(0), np.dtype(np_dtype).type(1))
    a = DT[::1]
    WX = max(4 * DX, 1)  # fold_x's sums (a local array's size must be a constant)
    types = (a, int64, a, a, a, a, boolean, a, boolean, a, a, int64[::1], int64, int64, int64, boolean, uint64,
             uint64, DT, int64, int64)

    if DX == 0:
        @_kernel(THREADS, *types)
        def lstm_backward(wpack, wh_off, gates, cs, tcs, dh_in, has_dh_in, dh_last, has_dh_last, dcn, db_part,
                          seq, T, Bp, H, drop, key, threshold, scale, first_row, B):
            work = (cuda.shared.array(0, DT), cuda.local.array(ROWS, DT), cuda.local.array(ROWS, DT))
            backward_sweep(wpack, wh_off, gates, cs, tcs, dh_in, has_dh_in, dh_last, has_dh_last, dcn, db_part, seq,
                           T, Bp, H, drop, (key, threshold, scale, first_row, B), work, shape,
                           (db_part, 0, cuda.local.array(1, DT)), db_part)  # no fold: nothing reads x or wx

        return lstm_backward

    @_kernel(THREADS, *types, a, a)
    def lstm_backward(wpack, wh_off, gates, cs, tcs, dh_in, has_dh_in, dh_last, has_dh_last, dcn, db_part,
                      seq, T, Bp, H, drop, key, threshold, scale, first_row, B, xs, wx_part):
        work = (cuda.shared.array(0, DT), cuda.local.array(ROWS, DT), cuda.local.array(ROWS, DT))
        backward_sweep(wpack, wh_off, gates, cs, tcs, dh_in, has_dh_in, dh_last, has_dh_last, dcn, db_part, seq,
                       T, Bp, H, drop, (key, threshold, scale, first_row, B), work, shape,
                       (xs, DX, cuda.local.array(WX, DT)), wx_part)

    return lstm_backward


@lru_cache(maxsize=None)
def gather_kernel(np_dtype):
    """dst[dst_off + (l*dst_rows + r)*H + j] = src[src_off + (l*src_rows + idx[idx_off + r])*H + j] for
    l < L, r < n, j < H: a state (L, rows, H) into another row order (the sorted one and back)."""
    a = dtype_of(np_dtype)[::1]

    @_kernel(REDUCE_THREADS, a, int64, int64, a, int64, int64, int64[::1], int64, int64, int64, int64)
    def gather_rows(src, src_off, src_rows, dst, dst_off, dst_rows, idx, idx_off, n, L, H):
        for e in range(cuda.grid(1), L * n * H, cuda.gridsize(1)):
            layer, rest = e // (n * H), e % (n * H)
            r, j = rest // H, rest % H
            dst[dst_off + (layer * dst_rows + r) * H + j] = src[src_off + (layer * src_rows + idx[idx_off + r]) * H + j]

    return gather_rows


@lru_cache(maxsize=None)
def pack_kernel(np_dtype):
    """Every layer's W_h (offsets in wh_offs) in the two orders the recurrence reads, from theta (a
    copy per step: theta changes with every update). W_h[k, c] = theta[off + k*4H + c] goes to
    wpack[off + c*H + k] (W_h^T: lstm_backward's threads read neighbouring units k together) and to
    wpack[size + off + (k*H + j)*4 + q] for c = q*H + j (lstm_forward reads unit j's four gates together)."""
    a = dtype_of(np_dtype)[::1]

    @_kernel(REDUCE_THREADS, a, a, int64, int64[::1], int64, int64)
    def pack_wh(theta, wpack, size, wh_offs, L, H):
        G = 4 * H
        for e in range(cuda.grid(1), L * H * G, cuda.gridsize(1)):
            layer, rest = e // (H * G), e % (H * G)
            k, c = rest // G, rest % G
            off = wh_offs[layer]
            w = theta[off + rest]
            wpack[off + c * H + k] = w
            wpack[size + off + (k * H + c % H) * 4 + c // H] = w

    return pack_wh


# -- loss, and the sums over blocks ---------------------------------------------------------------


@lru_cache(maxsize=None)
def loss_kernel(np_dtype):
    """Loss terms and dy = dLoss/dy for the batch's real rows, one prediction per thread.

    mse:  term (y_hat - y)^2 per element, dy = coef * (y_hat - y), coef = 2/N;
    xent: term -log softmax(y_hat)[class], dy = coef * (softmax - onehot), coef = 1/N.
    Each block writes the float64 sum of its terms to loss_part[block] and the
    column sums of its dy rows (the head-bias gradient) to dby_part[block].
    Block: a power of two threads, at most LOSS_THREADS.
    """
    DT = dtype_of(np_dtype)
    ZERO = np.dtype(np_dtype).type(0)

    a = DT[::1]

    @_kernel(LOSS_THREADS, a, a, int32[::1], boolean, a, float64[::1], a, int64, int64, int64, int64, DT)
    def loss_head(yout, y_real, y_class, xent, dy, loss_part, dby_part, B, Bp, Tout, O, coef):
        terms = cuda.shared.array(0, float64)  # one float64 per thread
        tid, nt = cuda.threadIdx.x, cuda.blockDim.x
        first = cuda.blockIdx.x * nt
        p = first + tid
        n_pred = Tout * B
        total = float64(0)  # the loss is summed in float64 in every dtype
        if p < n_pred:
            base = ((p // B) * Bp + p % B) * O  # prediction p = (step p // B, row p % B)
            if xent:
                m = yout[base]
                for k in range(1, O):
                    m = max(m, yout[base + k])
                sum_exp = ZERO
                for k in range(O):
                    sum_exp += math.exp(yout[base + k] - m)
                log_sum = math.log(sum_exp)
                target = y_class[(p // B) * Bp + p % B]
                total -= float64(yout[base + target] - m - log_sum)
                for k in range(O):
                    dy[base + k] = coef * math.exp(yout[base + k] - m - log_sum)
                dy[base + target] -= coef
            else:
                for k in range(O):
                    diff = yout[base + k] - y_real[base + k]
                    total += float64(diff) * float64(diff)
                    dy[base + k] = coef * diff
        terms[tid] = total
        cuda.syncthreads()
        half = nt // 2
        while half > 0:  # tree sum: a fixed order
            if tid < half:
                terms[tid] += terms[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            loss_part[cuda.blockIdx.x] = terms[0]
        for k in range(tid, O, nt):  # this block's share of the head-bias gradient
            acc = ZERO
            for q in range(min(nt, n_pred - first)):
                pq = first + q
                acc += dy[((pq // B) * Bp + pq % B) * O + k]
            dby_part[cuda.blockIdx.x * O + k] = acc

    return loss_head


@lru_cache(maxsize=None)
def finish_kernel(np_dtype):
    """Sums over blocks, in block order: every layer's bias gradient (from the backward
    sweeps' db_part), the head bias gradient (dby_part) and the loss (loss_part). ``L`` rows of
    db_part partials go to grad at b_offs: with a fold, layer 0's dW_x rows are more of them."""
    ZERO = np.dtype(np_dtype).type(0)
    a = dtype_of(np_dtype)[::1]

    @_kernel(REDUCE_THREADS, a, int64[::1], int64, int64, a, int64, int64, float64[::1], int64, a, float64[::1], int64)
    def finish_grads(db_part, b_offs, n_rec_blocks, G, dby_part, by_off, O, loss_part, n_loss_blocks, grad, loss, L):
        e = cuda.grid(1)
        if e < L * G:
            layer, col = e // G, e % G
            acc = ZERO
            for b in range(n_rec_blocks):
                acc += db_part[(layer * n_rec_blocks + b) * G + col]
            grad[b_offs[layer] + col] = acc
        elif e < L * G + O:
            k = e - L * G
            acc = ZERO
            for b in range(n_loss_blocks):
                acc += dby_part[b * O + k]
            grad[by_off + k] = acc
        elif e == L * G + O:
            total = float64(0)
            for b in range(n_loss_blocks):
                total += loss_part[b]
            loss[0] = total

    return finish_grads


# -- clipping and the update ------------------------------------------------------------------------


@lru_cache(maxsize=None)
def sum_squares_kernel(np_dtype):
    """part[block] = sum of grad^2 over the block's grid-stride share (float64), in a fixed order.
    Block: REDUCE_THREADS threads; dynamic shared memory: 8 bytes a thread."""

    @_kernel(REDUCE_THREADS, dtype_of(np_dtype)[::1], int64, float64[::1])
    def sum_squares(grad, n, part):
        terms = cuda.shared.array(0, float64)  # one float64 per thread
        tid = cuda.threadIdx.x
        acc = float64(0)
        for e in range(cuda.grid(1), n, cuda.gridsize(1)):
            acc += float64(grad[e]) * float64(grad[e])
        terms[tid] = acc
        cuda.syncthreads()
        half = REDUCE_THREADS // 2
        while half > 0:
            if tid < half:
                terms[tid] += terms[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            part[cuda.blockIdx.x] = terms[0]

    return sum_squares


@cuda.jit(device=True, inline=True)
def clip_factor(part, n_part, clip_norm):
    """torch.nn.utils.clip_grad_norm_'s factor min(clip / (norm + 1e-6), 1), from the
    sum_squares partial sums (every block sums them in the same order: the same bits)."""
    total = float64(0)
    for b in range(n_part):
        total += part[b]
    return min(clip_norm / (math.sqrt(total) + 1e-6), 1.0)


@cuda.jit(device=True, inline=True)
def block_scale(part, n_part, clip_norm, scale):
    """The gradient's scale for this block: clip_factor with clipping (n_part > 0), else 1;
    thread 0 computes it into ``scale`` (one value of shared memory) for the whole block."""
    if cuda.threadIdx.x == 0:
        scale[0] = clip_factor(part, n_part, clip_norm) if n_part > 0 else 1.0
    cuda.syncthreads()
    return scale[0]


@lru_cache(maxsize=None)
def adam_kernel(np_dtype):
    """torch.optim.Adam's and AdamW's update; constants come in the parameters' dtype. With
    clipping (n_part > 0) the gradient is first scaled by clip_factor. Weight decay in the
    order of lstmbench.optim.optimizer_step: Adam's L2 (l2 != 0) adds l2 * theta to the clipped
    gradient before the moments; AdamW's (decay != 1) shrinks theta before the step."""
    DT = dtype_of(np_dtype)
    ZERO, ONE = np.dtype(np_dtype).type(0), np.dtype(np_dtype).type(1)
    a = DT[::1]

    @_kernel(REDUCE_THREADS, a, a, a, a, int64, float64[::1], int64, float64, DT, DT, DT, DT, DT, DT, DT, DT, DT)
    def adam_update(theta, grad, m, v, n, part, n_part, clip_norm, b1, one_minus_b1, b2, one_minus_b2, step_size,
                    bias2_sqrt, eps, l2, decay):
        s = block_scale(part, n_part, clip_norm, cuda.shared.array(0, DT))
        for e in range(cuda.grid(1), n, cuda.gridsize(1)):
            g, p = grad[e] * s, theta[e]
            if l2 != ZERO:
                g += l2 * p
            if decay != ONE:
                p *= decay
            m[e] = b1 * m[e] + one_minus_b1 * g
            v[e] = b2 * v[e] + one_minus_b2 * g * g
            theta[e] = p - step_size * (m[e] / (math.sqrt(v[e]) / bias2_sqrt + eps))

    return adam_update


@lru_cache(maxsize=None)
def sgd_kernel(np_dtype):
    """torch.optim.SGD: g += l2 * p (weight decay, after clipping), buf = g on the first step,
    then momentum * buf + g; p -= lr * buf."""
    DT = dtype_of(np_dtype)
    ZERO = np.dtype(np_dtype).type(0)
    a = DT[::1]

    @_kernel(REDUCE_THREADS, a, a, a, int64, float64[::1], int64, float64, DT, DT, boolean, boolean, DT)
    def sgd_update(theta, grad, buf, n, part, n_part, clip_norm, lr, momentum, first_step, use_momentum, l2):
        s = block_scale(part, n_part, clip_norm, cuda.shared.array(0, DT))
        for e in range(cuda.grid(1), n, cuda.gridsize(1)):
            g = grad[e] * s
            if l2 != ZERO:
                g += l2 * theta[e]
            if use_momentum:
                g = g if first_step else momentum * buf[e] + g
                buf[e] = g
            theta[e] -= lr * g

    return sgd_update
