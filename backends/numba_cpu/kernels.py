"""Numba kernels of the threaded CPU backend: the reference's math, fused and sharded.

The math is the reference's (backends/reference/reference.py), step for step:

    z_t = x_t @ W_x + h_{t-1} @ W_h + b          gates i, f, g, o
    c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)

What is different is only how it is computed:

* the batch is cut into shards by the shape alone (``Plan`` in __init__.py), and the
  threads take them (``prange``); each shard runs forward and backward through every
  layer on its own rows and writes its gradient into its own row of ``grads``; the rows
  are then summed in shard order, so any thread count gives the same bits;
* or, for a batch of few rows, there is one shard and the threads share its
  hidden units: at every time step a ``prange`` over parts, each multiplying
  h_{t-1} by its own packed columns of the four gates and doing its units'
  gate math (team_forward_steps, team_backward_steps); the end of each step's
  parallel region is the barrier before the next step reads all of h_t;
* the four gate products are one (D, 4H) and one (H, 4H) product;
* x_t @ W_x for all T steps is one (T*b, D) @ (D, 4H) product before the
  recurrence, and the weight gradients are one large product each after the
  backward sweep (sum over t of h_{t-1}^T dz_t is one (H, T*b) @ (T*b, 4H));
* the pointwise gate math runs right after each step's product, row by row,
  in short loops over contiguous memory that LLVM vectorises (activated gates,
  c_t, tanh(c_t), h_t written in place); in the backward pass one loop turns
  the stored gates into dz, in place;
* every buffer is allocated once per (batch, steps, shards) and reused, so
  nothing is allocated inside the time loops;
* float32 evaluates exp and tanh with short polynomial forms (exp_f32,
  tanh_f32 below) that LLVM vectorises: 0.4 ns (exp) and 0.9 ns (tanh) per
  value here, against 3.5 ns and 20 ns for libm's expf/tanhf, which it cannot
  vectorise. They stay within 1.2 (exp), 2.4 (sigmoid) and 4.1 (tanh) float32
  ulps of the exact function over [-30, 30], as close as libm-based float32
  evaluation of the reference's formulas (2.5 ulps for its sigmoid), saturating
  tails included (tools/ablation_activations.py measures both). float64 keeps
  libm's exp and tanh.

Matrix products go through np.dot, which Numba hands to BLAS (SciPy's); the
backend pins BLAS to one thread because the threads are already the shards.

Buffers of shard s (time-major so that one step's rows are contiguous; bm rows
per shard, rows beyond the shard's nb real ones are zero padding):
    xs[s]        (T, bm, D0)     the shard's input
    hs[s, l]     (T+1, bm, H)    h_0 = 0, h_1 .. h_T of layer l
    cs[s, l]     (T+1, bm, H)    c_0 = 0, c_1 .. c_T
    gates[s, l]  (T, bm, 4H)     activated i, f, g, o; dz after the backward sweep
    tcs[s, l]    (T, bm, H)      tanh(c_t)
    yout[s]      (Tout, bm, O)   head outputs (Tout = T many-to-many, 1 many-to-one)
    dy[s]        (Tout, bm, O)   dLoss/dy
    dh_in[s]     (T, bm, H)      dLoss/dh_t arriving from above
Dropout (training passes with ``a.drop``; design.md section 9) masks what leaves a layer for
the next layer or the head, never the recurrence: the mask is drawn from a hash, element by
element (drop_row), never stored. The forward pass writes the masked copy of a layer's h into
``packed[s]`` just before the product that reads it (layer_input, head_input); the backward
pass draws the same mask again for dW_x / dW_y and for dLoss/dh (drop_gradient). Without
dropout none of this runs and the products read ``hs`` directly.
Parameters live in one flat vector ``theta``; ``offs[l]`` holds the offsets of
W_x, W_h, b of layer l and ``offs[L]`` those of W_y, b_y. run_shards and what it calls take
all of these, the batch and the settings as one ShardArgs (fields by name).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

CACHE = True  # compiled code is cached next to this file: only the first run compiles
# error_model="numpy": x / 0 gives inf like NumPy instead of a Python exception check,
# which also lets LLVM vectorise loops that divide.
JIT = dict(cache=CACHE, error_model="numpy")
LOG2E = np.float32(1.4426950408889634)
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 split for exact n*ln2
ROUND_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23
MASK32 = np.uint64(0xFFFFFFFF)


class ShardArgs(NamedTuple):
    """Everything run_shards reads and writes, by name: written once here instead of as a
    list of positional arguments in every signature and call. Numba resolves the fields at
    compile time, so ``a.xs`` costs what a separate argument did; the class lives at module
    level, so cache=True still finds the compiled code in a new process."""

    # the batch
    x: np.ndarray  # (B, T, D0)
    y_real: np.ndarray  # (B, Tout, O) targets of "mse", else a (1, 1, 1) placeholder
    y_class: np.ndarray  # (B, Tout) class ids of "xent", else a (1, 1) placeholder
    xent: bool
    coef: float  # in the dtype: dy = coef * (y_hat - y) (mse, 2/N) or coef * (softmax - onehot) (xent, 1/N)
    backward: bool  # also the loss and the gradient, not only the outputs
    # the model
    theta: np.ndarray  # the flat parameters
    theta_t: np.ndarray  # W^T where theta holds W (transpose_weights)
    offs: np.ndarray
    H: int
    many_to_many: bool
    one: float  # 1 in the dtype
    # lengths and state (design.md section 8); the host sorts the rows longest first, so the rows
    # of a shard that take step t are a prefix of it (active_rows)
    row_len: np.ndarray  # (B,) steps each row takes (T for every row without lengths)
    has_state: bool  # h0 and c0 hold an initial state (else they are placeholders and h_0 = c_0 = 0)
    h0: np.ndarray  # (L, B, H), or a (1, 1, 1) placeholder
    c0: np.ndarray
    # the shards and their buffers (the module docstring)
    shard_lo: np.ndarray  # first batch row of each shard
    shard_nb: np.ndarray  # real (not padding) rows of each shard
    xs: np.ndarray
    hs: np.ndarray
    cs: np.ndarray
    gates: np.ndarray
    tcs: np.ndarray
    rec: np.ndarray  # (S, bm, 4H): h_{t-1} @ W_h
    yout: np.ndarray
    dy: np.ndarray
    dh_in: np.ndarray
    dhn: np.ndarray  # (S, bm, H): dLoss/dh_t through step t+1
    dcn: np.ndarray  # (S, bm, H): dLoss/dc_t through step t+1
    packed: np.ndarray  # (S, T * bm * max(D, H)): with lengths, the rows that took each step (weight_grads_packed)
    grads: np.ndarray  # (S, P): each shard's gradient
    losses: np.ndarray  # (S,): each shard's sum of loss terms
    # the hidden-unit parts (team_forward_steps, team_backward_steps); one part: batch shards
    whp: np.ndarray
    rsp: np.ndarray
    whtp: np.ndarray
    dhp: np.ndarray
    # every row's final state, (L, B, H), written by each forward pass
    hn: np.ndarray
    cn: np.ndarray
    # dropout (design.md section 9; lstmbench.fused.DropoutPlan): when ``drop``, the inputs of
    # layers 1 .. L-1 and of the head are masked (drop_row); placeholders otherwise
    drop: bool
    drop_keys: np.ndarray  # (L+1,) uint32: each site's key
    drop_rows: np.ndarray  # (B,) uint32: each kernel row's index in the global minibatch
    drop_threshold: np.uint64  # a hash below it drops its element
    drop_scale: float  # 1 / (1 - p) in the dtype


@njit(**JIT)
def exp_f32(x):
    """exp(x) = 2^n exp(r), r = x - n ln2 in [-ln2/2, ln2/2], Taylor series to r^7;
    2^n is built from its bits. Within 1.2 float32 ulps of exp over [-87, 88]."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    # n = round(x log2 e) by adding 1.5 * 2^23: the sum's low mantissa bits hold n
    # (a float->int round that vectorises, unlike math.floor, which is a libm call here)
    shifted = x * LOG2E + ROUND_MAGIC
    n = shifted - ROUND_MAGIC
    r = x - n * LN2_HI - n * LN2_LO
    p = np.float32(1.0 / 5040)
    p = p * r + np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    n_bits = np.float32(shifted).view(np.int32) - np.int32(0x4B400000)  # n as an int32
    two_n = np.int32((n_bits + np.int32(127)) << np.int32(23)).view(np.float32)
    return p * two_n


@njit(**JIT)
def tanh_f32(x):
    """Near 0 a rational x P(x^2)/Q(x^2) (Eigen's coefficients; no cancellation there),
    elsewhere 1 - 2/(exp(2|x|) + 1). Within 4.2 float32 ulps of tanh."""
    a = abs(x)
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    near_zero = x * p / q
    far = np.float32(1.0) - np.float32(2.0) / (exp_f32(np.float32(2.0) * a) + np.float32(1.0))
    far = far if x >= 0 else -far
    return near_zero if a < np.float32(0.625) else far


def tanh(x):
    """tanh for the kernels: chosen by dtype at compile time (see the module docstring)."""


def sigmoid(x):
    """1 / (1 + exp(-x)), chosen by dtype at compile time."""


@overload(tanh)
def _tanh(x):
    if x == types.float32:
        return lambda x: tanh_f32(x)
    return lambda x: math.tanh(x)


@overload(sigmoid)
def _sigmoid(x):
    if x == types.float32:
        return lambda x: np.float32(1.0) / (np.float32(1.0) + exp_f32(-x))
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@njit(**JIT)
def cell_forward(i, f, g, o, c_prev, c_new, tc, h):
    """One row of one step, on 1-D views of its hidden units (all of them, or a thread's part):
    activates the gates in place and writes c_t, tanh(c_t), h_t. Short loops over views that
    start at 0, which LLVM vectorises (an index range starting above 0 was not vectorised)."""
    for j in range(i.shape[0]):
        i[j] = sigmoid(i[j])
    for j in range(f.shape[0]):
        f[j] = sigmoid(f[j])
    for j in range(g.shape[0]):
        g[j] = tanh(g[j])
    for j in range(o.shape[0]):
        o[j] = sigmoid(o[j])
    for j in range(c_new.shape[0]):  # c_t = f * c_{t-1} + i * g
        c_new[j] = f[j] * c_prev[j] + i[j] * g[j]
    for j in range(tc.shape[0]):
        tc[j] = tanh(c_new[j])
    for j in range(h.shape[0]):  # h_t = o * tanh(c_t)
        h[j] = o[j] * tc[j]


@njit(**JIT)
def cell_backward(i, f, g, o, c_prev, tc, dh, dh_next, dc_next, one):
    """One row of one step, on 1-D views of its hidden units: the stored gates i, f, g, o become
    dz in place (the reference's layer_backward); dh_next, dc_next arrive from step t+1, and
    dc_next leaves for step t-1."""
    for j in range(i.shape[0]):
        i_, f_, g_, o_, tanh_c = i[j], f[j], g[j], o[j], tc[j]
        d_h = dh[j] + dh_next[j]
        d_c = d_h * o_ * (one - tanh_c * tanh_c) + dc_next[j]
        i[j] = d_c * g_ * i_ * (one - i_)
        f[j] = d_c * c_prev[j] * f_ * (one - f_)
        g[j] = d_c * i_ * (one - g_ * g_)
        o[j] = d_h * tanh_c * o_ * (one - o_)
        dc_next[j] = d_c * f_


@njit(parallel=True, **JIT)
def team_forward_steps(z, h, c, tc, Wh, b, nb, whp, rsp):
    """One layer's recurrence with the threads sharing its hidden units (a batch of few rows):
    part k owns units k*n .. k*n+n-1 (n = whp.shape[2] // 4, the last part fewer) and multiplies
    h_{t-1} by whp[k], its columns of the four gates side by side (padding zero). Each step is
    one parallel region; its end is the barrier before the next step reads all of h_t."""
    P, H, n = whp.shape[0], Wh.shape[0], whp.shape[2] // 4
    for k in prange(P):  # each part packs its own columns
        u0 = k * n
        for i in range(H):
            for g in range(4):
                for j in range(n):
                    whp[k, i, g * n + j] = Wh[i, g * H + u0 + j] if u0 + j < H else 0
    for t in range(z.shape[0]):
        for k in prange(P):
            u0 = k * n
            m = min(n, H - u0)
            if m > 0:
                if t > 0:  # h_0 = 0: no recurrent product at the first step
                    np.dot(h[t], whp[k], rsp[k])
                for r in range(nb):
                    for g in range(4):  # z_t = x_t W_x + h_{t-1} W_h + b, this part's columns
                        for j in range(m):
                            col = g * H + u0 + j
                            if t > 0:
                                z[t, r, col] = z[t, r, col] + rsp[k, r, g * n + j] + b[col]
                            else:
                                z[t, r, col] = z[t, r, col] + b[col]
                    zr, u1 = z[t, r], u0 + m
                    cell_forward(zr[u0:u1], zr[H + u0 : H + u1], zr[2 * H + u0 : 2 * H + u1], zr[3 * H + u0 : 3 * H + u1],
                                 c[t, r, u0:u1], c[t + 1, r, u0:u1], tc[t, r, u0:u1], h[t + 1, r, u0:u1])


@njit(parallel=True, **JIT)
def team_backward_steps(z, c, tc, dh, dh_next, dc_next, WhT, nb, whtp, dhp, one):
    """The backward sweep of one layer, shared out like team_forward_steps: part k multiplies
    dz_{t+1} by whtp[k], its units' columns of W_h^T (4H, n), for its part of dLoss/dh_t."""
    P, H, n = whtp.shape[0], WhT.shape[1], whtp.shape[2]
    for k in prange(P):
        u0 = k * n
        for i in range(4 * H):
            for j in range(n):
                whtp[k, i, j] = WhT[i, u0 + j] if u0 + j < H else 0
    T = z.shape[0]
    for t in range(T - 1, -1, -1):
        for k in prange(P):
            u0 = k * n
            m = min(n, H - u0)
            if m > 0:
                if t < T - 1:  # dLoss/dh_t through h_{t+1}: dz_{t+1} @ W_h^T, this part's units
                    np.dot(z[t + 1], whtp[k], dhp[k])
                    for r in range(nb):
                        for j in range(m):
                            dh_next[r, u0 + j] = dhp[k, r, j]
                for r in range(nb):
                    zr, u1 = z[t, r], u0 + m
                    cell_backward(zr[u0:u1], zr[H + u0 : H + u1], zr[2 * H + u0 : 2 * H + u1],
                                  zr[3 * H + u0 : 3 * H + u1], c[t, r, u0:u1], tc[t, r, u0:u1], dh[t, r, u0:u1],
                                  dh_next[r, u0:u1], dc_next[r, u0:u1], one)


@njit(**JIT)
def active_rows(row_len, lo, nb, t):
    """How many rows of the shard take step t: a prefix of its nb rows (sorted longest first)."""
    n = 0
    while n < nb and row_len[lo + n] > t:
        n += 1
    return n


@njit(**JIT)
def product_rows(na, nb, bm):
    """Rows a step's product runs over: all bm (zero padding included, as without lengths, so
    the same BLAS call gives the same bits) while every real row is active, else the na active."""
    return bm if na == nb else na


@njit(**JIT)
def fmix32(h):
    """MurmurHash3's 32-bit finaliser (lstmbench.config.fmix32) of a uint32 held in a uint64:
    numba widens uint32 arithmetic to 64 bits, so each product is cut back to its low 32 bits
    here, which is exactly uint32's wrap-around."""
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & MASK32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & MASK32
    return h ^ (h >> np.uint64(16))


@njit(**JIT)
def drop_row(a, site, k, t, src, dst):
    """dst = src * the dropout mask of ``site`` for kernel row k at step t (dst may be src).
    Element j is kept, times 1/(1-p), when fmix32(((rows[k] * T + t) * H + j) ^ key) >= threshold,
    on uint32 (design.md section 9): the index is formed in uint64 and cut to 32 bits, which
    equals the uint32 wrap-around. Dropped elements are multiplied by 0, as the reference does."""
    T = a.x.shape[1]
    base = (np.uint64(a.drop_rows[k]) * np.uint64(T) + np.uint64(t)) * np.uint64(src.shape[0])
    key, scale, zero = np.uint64(a.drop_keys[site]), a.drop_scale, a.one - a.one
    for j in range(src.shape[0]):
        kept = fmix32(((base + np.uint64(j)) & MASK32) ^ key) >= a.drop_threshold
        dst[j] = src[j] * (scale if kept else zero)


@njit(**JIT)
def drop_steps(a, site, lo, nb, src, dst):
    """dst[t, r] = src[t, r] * mask(site, row lo + r, step t) for every step of src (Ts, bm, H);
    padding rows (r >= nb) become 0. dst may be src."""
    for t in range(src.shape[0]):
        for r in range(src.shape[1]):
            if r < nb:
                drop_row(a, site, lo + r, t, src[t, r], dst[t, r])
            else:
                dst[t, r] = 0


@njit(**JIT)
def drop_last(a, site, lo, nb, src, dst):
    """dst[r] = src[r] * mask(site, row lo + r, its last step): a many-to-one head reads each row's
    h after its own last step (len - 1; T - 1 without lengths), masked at that step."""
    for r in range(src.shape[0]):
        if r < nb:
            drop_row(a, site, lo + r, a.row_len[lo + r] - 1, src[r], dst[r])
        else:
            dst[r] = 0


@njit(**JIT)
def layer_input(s, lo, nb, l, Ts, a):
    """(Ts, bm, H): what layer l >= 1 (l = L: a many-to-many head) reads at steps 0 .. Ts-1:
    h_1 .. h_Ts of layer l-1, or with dropout their masked copy (site l) in packed[s]."""
    h = a.hs[s, l - 1, 1 : Ts + 1]
    if not a.drop:
        return h
    out = a.packed[s, : h.size].reshape(h.shape)
    drop_steps(a, l, lo, nb, h, out)
    return out


@njit(**JIT)
def head_input(s, lo, nb, a):
    """(bm, H): what a many-to-one head reads, h_T of the top layer (each row's state after its
    last step), or with dropout its masked copy (site L) in packed[s]."""
    L = a.hs.shape[1]
    h = a.hs[s, L - 1, a.hs.shape[2] - 1]
    if not a.drop:
        return h
    out = a.packed[s, : h.size].reshape(h.shape)
    drop_last(a, L, lo, nb, h, out)
    return out


@njit(**JIT)
def drop_gradient(s, lo, nb, l, Ts, a):
    """dLoss/dh of layer l (a.dh_in[s]) from the gradient of its masked output: times the same
    mask (site l+1), in place. Many-to-one top layer: only dh at T-1 is nonzero, each row masked
    at its own last step (the gradient then passes back to it through the padded steps)."""
    dh, L, T = a.dh_in[s], a.hs.shape[1], a.gates.shape[2]
    if l == L - 1 and not a.many_to_many:
        drop_last(a, L, lo, nb, dh[T - 1], dh[T - 1])
    else:
        drop_steps(a, l + 1, lo, nb, dh[:Ts], dh[:Ts])


@njit(**JIT)
def load_shard(s, lo, nb, a):
    """This shard's rows of x (B, T, D) into xs, time-major, and h_0, c_0 of every layer: the
    initial state, or zeros (the buffers are reused)."""
    x, xs, hs, cs, H = a.x, a.xs, a.hs, a.cs, a.H
    for t in range(x.shape[1]):
        for r in range(nb):
            for d in range(x.shape[2]):
                xs[s, t, r, d] = x[lo + r, t, d]
    for l in range(hs.shape[1]):
        for r in range(nb):
            for j in range(H):
                hs[s, l, 0, r, j] = a.h0[l, lo + r, j] if a.has_state else 0
                cs[s, l, 0, r, j] = a.c0[l, lo + r, j] if a.has_state else 0


@njit(**JIT)
def shard_forward(s, lo, nb, a):
    x, theta, offs, H, xs, hs, cs = a.x, a.theta, a.offs, a.H, a.xs, a.hs, a.cs
    gates, tcs, rec, whp, rsp = a.gates, a.tcs, a.rec, a.whp, a.rsp
    T, D0 = x.shape[1], x.shape[2]
    L, bm, G = hs.shape[1], xs.shape[2], 4 * H
    Ts = a.row_len[lo]  # steps of the shard's longest row (rows sorted longest first): no row goes past it
    n = Ts * bm  # rows of the products over all steps
    load_shard(s, lo, nb, a)
    for l in range(L):
        Dl = D0 if l == 0 else H
        Wx = theta[offs[l, 0] : offs[l, 0] + Dl * G].reshape((Dl, G))
        Wh = theta[offs[l, 1] : offs[l, 1] + H * G].reshape((H, G))
        b = theta[offs[l, 2] : offs[l, 2] + G]
        z, h, c, tc, rs = gates[s, l], hs[s, l], cs[s, l], tcs[s, l], rec[s]
        # x_t @ W_x for every step at once (of the shard's longest row); layer l >= 1 reads
        # layer l-1's h (with dropout, masked: layer_input)
        if l == 0:
            np.dot(xs[s, :Ts].reshape((n, D0)), Wx, z[:Ts].reshape((n, G)))
        else:
            np.dot(layer_input(s, lo, nb, l, Ts, a).reshape((n, H)), Wx, z[:Ts].reshape((n, G)))
        if whp.shape[0] > 1:  # the threads share this shard's hidden units
            team_forward_steps(z, h, c, tc, Wh, b, nb, whp, rsp)
        else:
            for t in range(T):
                recurrent = t > 0 or a.has_state  # h_0 = 0: no recurrent product at the first step
                na = active_rows(a.row_len, lo, nb, t)
                m = product_rows(na, nb, bm)
                if recurrent and m > 0:
                    np.dot(h[t, :m], Wh, rs[:m])
                for r in range(na, nb):  # past its length a row keeps its state and stores no gates
                    h[t + 1, r] = h[t, r]
                    c[t + 1, r] = c[t, r]
                    z[t, r] = 0
                    tc[t, r] = 0
                for r in range(na):
                    # one row at a time, in short loops LLVM vectorises; z_t = x_t W_x + h_{t-1} W_h + b
                    if recurrent:
                        for j in range(G):
                            z[t, r, j] = z[t, r, j] + rs[r, j] + b[j]
                    else:
                        for j in range(G):
                            z[t, r, j] = z[t, r, j] + b[j]
                    zr = z[t, r]
                    cell_forward(zr[:H], zr[H : 2 * H], zr[2 * H : 3 * H], zr[3 * H :], c[t, r], c[t + 1, r], tc[t, r],
                                 h[t + 1, r])
    head_forward(s, lo, nb, a)
    for l in range(L):  # every row's final state: h_T, c_T (carried from its own last step; never masked)
        for r in range(nb):
            for j in range(H):
                a.hn[l, lo + r, j] = hs[s, l, T, r, j]
                a.cn[l, lo + r, j] = cs[s, l, T, r, j]


@njit(**JIT)
def head_forward(s, lo, nb, a):
    """y = h @ W_y + b_y on h_T, or on every h_t (with dropout: masked, site L); outputs past a
    row's length are zero."""
    theta, offs, H, yout, bm = a.theta, a.offs, a.H, a.yout, a.xs.shape[2]
    L, O = a.hs.shape[1], yout.shape[3]
    Ts = a.row_len[lo]
    Wy = theta[offs[L, 0] : offs[L, 0] + H * O].reshape((H, O))
    by = theta[offs[L, 1] : offs[L, 1] + O]
    if a.many_to_many:
        n = Ts * bm
        np.dot(layer_input(s, lo, nb, L, Ts, a).reshape((n, H)), Wy, yout[s, :Ts].reshape((n, O)))
    else:
        np.dot(head_input(s, lo, nb, a), Wy, yout[s, 0])
    for tt in range(yout.shape[1]):
        for r in range(nb):
            padded = a.many_to_many and tt >= a.row_len[lo + r]  # outputs zero past a row's length
            for k in range(O):
                yout[s, tt, r, k] = 0 if padded else yout[s, tt, r, k] + by[k]


@njit(**JIT)
def shard_loss(s, lo, nb, a):
    """This shard's sum of loss terms (float64) and dy = dLoss/dy.
    MSE: dy = coef * (y_hat - y) with coef = 2/N. xent: dy = coef * (softmax - onehot), coef = 1/N."""
    yout, y_real, y_class, xent, dy, coef = a.yout, a.y_real, a.y_class, a.xent, a.dy, a.coef
    total = 0.0
    Tout, O = yout.shape[1], yout.shape[3]
    for tt in range(Tout):
        for r in range(nb):
            if a.many_to_many and tt >= a.row_len[lo + r]:  # a padded step: no loss term
                for k in range(O):
                    dy[s, tt, r, k] = 0
                continue
            if xent:
                m = yout[s, tt, r, 0]
                for k in range(1, O):
                    m = max(m, yout[s, tt, r, k])
                sum_exp = 0.0
                for k in range(O):
                    sum_exp += math.exp(yout[s, tt, r, k] - m)
                log_sum = math.log(sum_exp)
                target = y_class[lo + r, tt]
                total -= yout[s, tt, r, target] - m - log_sum
                for k in range(O):
                    dy[s, tt, r, k] = coef * math.exp(yout[s, tt, r, k] - m - log_sum)
                dy[s, tt, r, target] -= coef
            else:
                for k in range(O):
                    diff = yout[s, tt, r, k] - y_real[lo + r, tt, k]
                    total += diff * diff
                    dy[s, tt, r, k] = coef * diff
    return total


@njit(**JIT)
def head_backward(s, lo, nb, a):
    """The head's gradients (on its input: with dropout, the masked h, drawn again) and
    dLoss/dh_t of its input into a.dh_in[s] (drop_gradient then takes it through the mask)."""
    offs, H, dy, bm, T = a.offs, a.H, a.dy, a.xs.shape[2], a.gates.shape[2]
    L, O = a.hs.shape[1], dy.shape[3]
    Ts = a.row_len[lo]
    n = Ts * bm
    g_all, dh = a.grads[s], a.dh_in[s]
    WyT = a.theta_t[offs[L, 0] : offs[L, 0] + H * O].reshape((O, H))
    dWy = g_all[offs[L, 0] : offs[L, 0] + H * O].reshape((H, O))
    dby = g_all[offs[L, 1] : offs[L, 1] + O]
    if a.many_to_many:
        dy2 = dy[s, :Ts].reshape((n, O))
        np.dot(layer_input(s, lo, nb, L, Ts, a).reshape((n, H)).T, dy2, dWy)
        np.dot(dy2, WyT, dh[:Ts].reshape((n, H)))
        dh[Ts:] = 0  # no loss past the longest row
    else:
        np.dot(head_input(s, lo, nb, a).T, dy[s, 0], dWy)
        dh[: T - 1] = 0
        np.dot(dy[s, 0], WyT, dh[T - 1])
    dby[:] = 0
    for tt in range(dy.shape[1]):
        for r in range(nb):
            for k in range(O):
                dby[k] += dy[s, tt, r, k]


@njit(**JIT)
def shard_backward(s, lo, nb, a):
    theta_t, offs, H, one, xs, hs, cs, gates = a.theta_t, a.offs, a.H, a.one, a.xs, a.hs, a.cs, a.gates
    tcs, dh_in, dhn, dcn, grads, whtp, dhp = a.tcs, a.dh_in, a.dhn, a.dcn, a.grads, a.whtp, a.dhp
    L, T, bm, G = hs.shape[1], gates.shape[2], xs.shape[2], 4 * H
    D0 = xs.shape[3]
    Ts = a.row_len[lo]  # steps of the shard's longest row: dz is zero past it
    n = Ts * bm
    g_all, dh = grads[s], dh_in[s]
    head_backward(s, lo, nb, a)  # dh: dLoss/dh_t of the top layer (of its masked output, with dropout)
    for l in range(L - 1, -1, -1):
        Dl = D0 if l == 0 else H
        WxT = theta_t[offs[l, 0] : offs[l, 0] + Dl * G].reshape((G, Dl))
        WhT = theta_t[offs[l, 1] : offs[l, 1] + H * G].reshape((G, H))
        dWx = g_all[offs[l, 0] : offs[l, 0] + Dl * G].reshape((Dl, G))
        dWh = g_all[offs[l, 1] : offs[l, 1] + H * G].reshape((H, G))
        db = g_all[offs[l, 2] : offs[l, 2] + G]
        z, c, tc, dh_next, dc_next = gates[s, l], cs[s, l], tcs[s, l], dhn[s], dcn[s]
        if a.drop:  # dh arrived for the masked output: through the mask to h itself
            drop_gradient(s, lo, nb, l, Ts, a)
        dh_next[:] = 0  # nothing flows back into the last step
        dc_next[:] = 0
        if whtp.shape[0] > 1:  # the threads share this shard's hidden units
            team_backward_steps(z, c, tc, dh, dh_next, dc_next, WhT, nb, whtp, dhp, one)
        else:
            for t in range(T - 1, -1, -1):
                na = active_rows(a.row_len, lo, nb, t)
                if t < T - 1:  # dLoss/dh_t through h_{t+1}: dz_{t+1} @ W_h^T (z[t+1] holds dz now)
                    m = product_rows(active_rows(a.row_len, lo, nb, t + 1), nb, bm)
                    if m > 0:
                        np.dot(z[t + 1, :m], WhT, dh_next[:m])
                for r in range(na, nb):  # past its length: h passes through, gathering dLoss/dh_t
                    for j in range(H):
                        dh_next[r, j] += dh[t, r, j]
                for r in range(na):
                    zr = z[t, r]
                    cell_backward(zr[:H], zr[H : 2 * H], zr[2 * H : 3 * H], zr[3 * H :], c[t, r], tc[t, r], dh[t, r],
                                  dh_next[r], dc_next[r], one)
        if a.row_len[lo + nb - 1] < Ts:  # rows of different lengths: products over the rows that took each step
            weight_grads_packed(s, lo, nb, l, a)
            continue
        # weight gradients: one large product each over the steps of the longest row
        dz = z[:Ts].reshape((n, G))
        if l == 0:
            np.dot(xs[s, :Ts].reshape((n, D0)).T, dz, dWx)
        else:  # the input layer l read: layer l-1's h, with dropout masked (the same mask, drawn again)
            np.dot(layer_input(s, lo, nb, l, Ts, a).reshape((n, H)).T, dz, dWx)
        if a.has_state:  # sum over every t of h_{t-1}^T dz_t, h_0 the initial state
            np.dot(hs[s, l, 0:Ts].reshape((n, H)).T, dz, dWh)
        elif Ts > 1:  # sum over t >= 1 of h_{t-1}^T dz_t  (h_0 = 0)
            np.dot(hs[s, l, 1:Ts].reshape(((Ts - 1) * bm, H)).T, z[1:Ts].reshape(((Ts - 1) * bm, G)), dWh)
        else:
            dWh[:] = 0
        db[:] = 0
        for row in range(n):
            for k in range(G):
                db[k] += dz[row, k]
        if l > 0:  # dLoss/dh of the layer below: dz @ W_x^T (zero past the longest row)
            np.dot(dz, WxT, dh[:Ts].reshape((n, H)))
            dh[Ts:] = 0


@njit(**JIT)
def pack_steps(src, row_len, lo, nb, Ts, dst):
    """The rows of src (T, bm, w) that take each step t < Ts, one after another into dst (K, w), in
    increasing order (dst may be src's own memory: rows only move to earlier places); returns K."""
    K = 0
    for t in range(Ts):
        for r in range(active_rows(row_len, lo, nb, t)):
            for j in range(src.shape[2]):
                dst[K, j] = src[t, r, j]
            K += 1
    return K


@njit(**JIT)
def weight_grads_packed(s, lo, nb, l, a):
    """shard_backward's weight gradients with lengths: each product over the rows that took each
    step (sum of the shard's lengths), not Ts x bm rows: dz packed in place, the inputs and
    h_{t-1} into a.packed, the gradient to the layer below back to its (t, r) places."""
    offs, H = a.offs, a.H
    z, xs, hs, dh, g_all = a.gates[s, l], a.xs[s], a.hs[s], a.dh_in[s], a.grads[s]
    T, bm, G, D0 = z.shape[0], z.shape[1], 4 * H, xs.shape[2]
    Dl = D0 if l == 0 else H
    Ts = a.row_len[lo]
    dz = z.reshape((T * bm, G))
    K = pack_steps(z, a.row_len, lo, nb, Ts, dz)
    inputs = a.packed[s, : T * bm * Dl].reshape((T * bm, Dl))  # (contiguous: BLAS takes it)
    # the input layer l read (with dropout, masked: layer_input writes that into a.packed[s], which
    # pack_steps then packs in place, rows only moving to earlier places)
    pack_steps(xs if l == 0 else layer_input(s, lo, nb, l, Ts, a), a.row_len, lo, nb, Ts, inputs)
    np.dot(inputs[:K].T, dz[:K], g_all[offs[l, 0] : offs[l, 0] + Dl * G].reshape((Dl, G)))
    db = g_all[offs[l, 2] : offs[l, 2] + G]
    db[:] = 0
    for row in range(K):
        for k in range(G):
            db[k] += dz[row, k]
    hidden = a.packed[s, : T * bm * H].reshape((T * bm, H))
    pack_steps(hs[l, :T], a.row_len, lo, nb, Ts, hidden)  # h_{t-1} of step t (h_0: the state, or 0)
    np.dot(hidden[:K].T, dz[:K], g_all[offs[l, 1] : offs[l, 1] + H * G].reshape((H, G)))
    if l > 0:  # dLoss/dh of the layer below: dz @ W_x^T, back to the (t, r) places; 0 elsewhere
        WxT = a.theta_t[offs[l, 0] : offs[l, 0] + Dl * G].reshape((G, Dl))
        np.dot(dz[:K], WxT, hidden[:K])
        dh[:] = 0
        K = 0
        for t in range(Ts):
            for r in range(active_rows(a.row_len, lo, nb, t)):
                dh[t, r] = hidden[K]
                K += 1


@njit(**JIT)
def transpose_into(theta, start, rows, cols, theta_t):
    """theta_t[start:...] = the (rows, cols) matrix at theta[start:...], transposed."""
    W = theta[start : start + rows * cols].reshape((rows, cols))
    WT = theta_t[start : start + rows * cols].reshape((cols, rows))
    for i in range(rows):
        for j in range(cols):
            WT[j, i] = W[i, j]


@njit(**JIT)
def transpose_weights(theta, offs, H, D0, O, theta_t):
    """theta_t holds W_x^T, W_h^T, W_y^T where theta holds W_x, W_h, W_y: the backward
    products dz @ W^T run up to 1.8x faster on a contiguous W^T (tools/ablation_products.py)."""
    L = offs.shape[0] - 1
    for l in range(L):
        transpose_into(theta, offs[l, 0], D0 if l == 0 else H, 4 * H, theta_t)
        transpose_into(theta, offs[l, 1], H, 4 * H, theta_t)
    transpose_into(theta, offs[L, 0], H, O, theta_t)


@njit(parallel=True, **JIT)
def run_shards(a):
    """Forward (and, if ``a.backward``, loss and gradients) of every shard, the threads taking them; or,
    when a.whp holds more than one part, of the one shard, the threads sharing its hidden units."""
    if a.backward:
        transpose_weights(a.theta, a.offs, a.H, a.x.shape[2], a.yout.shape[3], a.theta_t)
    if a.whp.shape[0] > 1:
        run_one_shard(0, a)
        return
    for s in prange(a.shard_lo.shape[0]):
        run_one_shard(s, a)


@njit(**JIT)
def run_one_shard(s, a):
    lo, nb = a.shard_lo[s], a.shard_nb[s]
    shard_forward(s, lo, nb, a)
    if a.backward:
        a.losses[s] = shard_loss(s, lo, nb, a)
        shard_backward(s, lo, nb, a)


@njit(parallel=True, **JIT)
def reduce_shards(grads, out):
    """out = sum of the shards' gradient rows, always in shard order (reproducible bits)."""
    S, P = grads.shape
    for j in prange(P):
        acc = grads[0, j]
        for s in range(1, S):
            acc += grads[s, j]
        out[j] = acc


@njit(**JIT)
def sum_of_squares(g):
    acc = 0.0
    for j in range(g.shape[0]):
        acc += float(g[j]) * float(g[j])
    return acc


@njit(parallel=True, **JIT)
def adam_update(theta, g, m, v, scale, l2, decay, b1, one_minus_b1, b2, one_minus_b2, step_size, bias2_sqrt, eps):
    """torch.optim.Adam's update (AdamW's with ``decay``), every constant already in the
    parameters' dtype, in lstmbench.optim.optimizer_step's order: clip, L2, decay, moments."""
    for j in prange(theta.shape[0]):
        gj = g[j] * scale
        if l2 != 0:  # Adam's weight decay: g + w * theta, after clipping, before the moments
            gj = gj + l2 * theta[j]
        if decay != 1:  # AdamW: theta * (1 - lr * w), decoupled from the gradient, before the update
            theta[j] = theta[j] * decay
        m[j] = b1 * m[j] + one_minus_b1 * gj
        v[j] = b2 * v[j] + one_minus_b2 * gj * gj
        theta[j] -= step_size * (m[j] / (math.sqrt(v[j]) / bias2_sqrt + eps))


@njit(parallel=True, **JIT)
def sgd_update(theta, g, buf, scale, l2, lr, momentum, first_step, use_momentum):
    """torch.optim.SGD: g + w * theta (weight decay, after clipping); buf = g on the first step,
    then momentum * buf + g; p -= lr * buf."""
    for j in prange(theta.shape[0]):
        gj = g[j] * scale
        if l2 != 0:
            gj = gj + l2 * theta[j]
        if use_momentum:
            buf[j] = gj if first_step else momentum * buf[j] + gj
            gj = buf[j]
        theta[j] -= lr * gj
