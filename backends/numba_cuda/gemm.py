"""The ``cuda`` backend's matrix product: every product that is not sequential in t (the input
projection of all steps at once, the head, the weight gradients, dx and dh of the head).

C[i, j] = sum_k op(A)[i, k] * op(B)[k, j] (+ bias[j]), with op(A)[i, k] = A[a_off + i*a_rs + k*a_cs]
and op(B)[k, j] = B[b_off + k*b_rs + j*b_cs]: any operand, transposed or a slice of a bigger
buffer, is read in place. How it is computed (docs/cuda-backend.md, "The matrix product"):

* Tiles. A block computes a BM x BN tile of C (BM, BN in GEMM_TILE_SIZES; gemm_tile), each thread
  an 8 x 8 register block of it. The operands' BM x BK and BK x BN pieces are staged in shared
  memory k-major (row kk: op(A)[i0.., k0+kk], op(B)[k0+kk, j0..]); per k a thread makes 4 16-byte
  shared loads (LDS.128) and 64 FMAs.
* Full tiles take a branch-free path. A block whose tile lies inside M x N runs its whole steps of
  BK without a bounds check: each thread's staging addresses are worked out once, before the loop,
  which only moves them BK along k, and the BK rank-1 updates of a step are written out (constant
  shared-memory offsets). The rest (a tile on the edge of M or N, and the last K % BK values of k)
  takes the edge path: steps of GEMM_EDGE_BK, every element checked (0 outside), and only threads
  with a row and a column inside M x N multiply, by the k the step has.
* Split K (gemm_split). A product with few tiles and a long K (the weight gradients: K = T*B)
  runs as S products over consecutive chunks of K in one launch (grid z: the chunk), each writing
  its partial tile to a scratch buffer; a second launch adds the S partials in the order
  s = 0, 1, ..., S-1. That second launch is this same kernel: the sum is the product ones(1, S) @ P
  of the partials P, an S x (M*N) matrix (1 * p + acc is exact, so each FMA adds p), its one 1
  read with strides 0. No atomics: for a fixed shape and device the result is the same to the bit
  on every run.

Every index is unsigned (uint32 in a tile, uint64 across a buffer): Numba gives every load with a
signed index a negative-index wrap-around.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import boolean, cuda, int64, uint32, uint64

from .jit import SIMULATOR, dtype_of, kernel

GEMM_TILE_SIZES = (32, 64, 128)  # a tile's side: 32 along a short dimension, up to 128 along a long one
GEMM_REGISTER_BLOCK = 8  # a thread's rows and columns of C
GEMM_EDGE_BK = 16  # k per step of the edge path (it keeps no registers across steps: deeper, fewer barriers)
PAD = 4  # shared rows are BM + PAD (BN + PAD) long: staging stores hit distinct banks, rows stay 16-byte aligned
GEMM_SPLIT_BLOCKS_PER_SM = 2  # split a product with fewer tiles than multiprocessors up to this many blocks per SM,
GEMM_SPLIT_MIN_K = 256  # ... while every chunk keeps at least this much of K,
GEMM_MAX_SPLIT = 32  # ... into at most this many chunks

# The kernel's helpers are inlined into it; in the simulator they are plain Python functions (its
# device functions swap the module's globals under a lock on every call: slow with many threads).
device = (lambda fn: fn) if SIMULATOR else cuda.jit(device=True, inline="always")
# Index types: unsigned in the compiled kernel; in the simulator Python ints, the same values (no
# index is negative) at a fraction of the cost of numpy's unsigned scalars.
u32, u64 = (int, int) if SIMULATOR else (uint32, uint64)


def gemm_bk(np_dtype) -> int:
    """k per step of the fast path: 8 (float32), 4 (float64: its register block takes twice the registers)."""
    return 8 if np.dtype(np_dtype) == np.float32 else 4


@device
def staging_slots(slot, goff, base, tid, p_stride, k_stride, P, BK, NT):
    """This thread's share of staging a P x BK piece of an operand (p: i of op(A), or j of op(B)):
    its element r, at (p, kk) of the piece, comes from goff[r] past the piece's start and goes to
    slot[r] = base + kk*(P + PAD) + p in shared memory. Consecutive threads take consecutive
    addresses of whichever index is contiguous in memory, so the loads coalesce."""
    for r in range(slot.size):
        e = tid + u32(r * NT)
        if k_stride == 1:
            kk, p = e % u32(BK), e // u32(BK)
        else:
            p, kk = e % u32(P), e // u32(P)
        slot[r] = u32(base + kk * u32(P + PAD) + p)
        goff[r] = u64(p) * p_stride + u64(kk) * k_stride


@device
def stage_checked(tiles, base, X, x_off, p_stride, k_stride, p0, p_end, k0, k_end, tid, zero, P, BK, NT):
    """staging_slots' elements with bounds checks: X[x_off + p*p_stride + k*k_stride] at p = p0 + pp,
    k = k0 + kk, 0 outside p < p_end, k < k_end (the edge path)."""
    for r in range(P * BK // NT):
        e = tid + u32(r * NT)
        if k_stride == 1:
            kk, pp = e % u32(BK), e // u32(BK)
        else:
            pp, kk = e % u32(P), e // u32(P)
        p, k = p0 + u64(pp), k0 + u64(kk)
        inside = p < p_end and k < k_end
        tiles[base + kk * u32(P + PAD) + pp] = X[x_off + p * p_stride + k * k_stride] if inside else zero


@device
def rank1(tiles, acc, af, bf, a_at, b_at, NTY, NTX):
    """acc[m, n] += op(A)[row m, k] * op(B)[k, column n] for one k (a_at, b_at: where the thread's
    first row and column of row kk of the staged pieces are). Its rows are ty*4 + (m % 4) +
    (m // 4)*4*NTY, its columns likewise: every four are one 16-byte shared load, and a warp's
    loads hit distinct banks."""
    for m in range(af.size):
        af[m] = tiles[a_at + u32((m // 4) * 4 * NTY + m % 4)]
    for n in range(bf.size):
        bf[n] = tiles[b_at + u32((n // 4) * 4 * NTX + n % 4)]
    for m in range(af.size):
        for n in range(bf.size):
            acc[m, n] += af[m] * bf[n]


@device
def tile_product(tiles, acc, af, bf, a_at, b_at, A_ROW, B_ROW, BK, NTY, NTX):
    """acc += the staged BK columns of op(A) times the BK rows of op(B): BK rank-1 updates, written
    out (NVVM unrolls no loop this large), so each shared load has a constant offset."""
    rank1(tiles, acc, af, bf, a_at, b_at, NTY, NTX)
    rank1(tiles, acc, af, bf, a_at + u32(A_ROW), b_at + u32(B_ROW), NTY, NTX)
    rank1(tiles, acc, af, bf, a_at + u32(2 * A_ROW), b_at + u32(2 * B_ROW), NTY, NTX)
    rank1(tiles, acc, af, bf, a_at + u32(3 * A_ROW), b_at + u32(3 * B_ROW), NTY, NTX)
    if BK == 8:
        rank1(tiles, acc, af, bf, a_at + u32(4 * A_ROW), b_at + u32(4 * B_ROW), NTY, NTX)
        rank1(tiles, acc, af, bf, a_at + u32(5 * A_ROW), b_at + u32(5 * B_ROW), NTY, NTX)
        rank1(tiles, acc, af, bf, a_at + u32(6 * A_ROW), b_at + u32(6 * B_ROW), NTY, NTX)
        rank1(tiles, acc, af, bf, a_at + u32(7 * A_ROW), b_at + u32(7 * B_ROW), NTY, NTX)


@cache
def gemm_kernel(np_dtype, BM: int, BN: int):
    """C[c_off + z*c_split + i*ldc + j] = sum_{k in chunk z} op(A)[i, k] * op(B)[k, j] (+ bias[j])
    for i < M, j < N: chunk z = blockIdx.z is k in [z*k_chunk, min(K, (z+1)*k_chunk)) (one chunk,
    k_chunk = K, unless split). Grid: (ceil(N/BN), ceil(M/BM), chunks); block: gemm_shape's threads."""
    DT, BK = dtype_of(np_dtype), gemm_bk(np_dtype)
    ZERO = np.dtype(np_dtype).type(0)
    TM = TN = GEMM_REGISTER_BLOCK
    NTY, NTX = BM // TM, BN // TN  # threads along a tile's rows and columns
    NT = NTX * NTY
    A_ROW, B_ROW = BM + PAD, BN + PAD
    B_START, RA, RB = BK * A_ROW, BM * BK // NT, BK * BN // NT  # Bs follows As; elements each thread stages
    EK, E_START = GEMM_EDGE_BK, GEMM_EDGE_BK * A_ROW  # the edge path's depth, and where its Bs starts
    assert RA * NT == BM * BK and RB * NT == BK * BN and BK in (4, 8) and (BM * EK) % NT == (BN * EK) % NT == 0
    REGS, ALIGN = (TM, TN), None if SIMULATOR else 16  # LDS.128 needs 16-byte rows (the simulator takes no alignment)
    a = DT[::1]

    @kernel(NT, a, int64, int64, int64, a, int64, int64, int64, a, int64, int64, int64, int64, int64, a, int64,
            boolean, int64, int64)
    def gemm(A, a_off, a_rs, a_cs, B, b_off, b_rs, b_cs, C, c_off, ldc, M, N, K, bias, bias_off, has_bias,
             k_chunk, c_split):
        # tiles[kk*A_ROW + i] = op(A)[i0 + i, k0 + kk] and tiles[B_START + kk*B_ROW + j] = op(B)[k0 + kk, j0 + j],
        # in dynamic shared memory (gemm_shared_bytes; the simulator's static arrays are not thread-safe)
        tiles = cuda.shared.array(0, DT, alignment=ALIGN)
        acc = cuda.local.array(REGS, DT)
        af, bf = cuda.local.array(TM, DT), cuda.local.array(TN, DT)
        a_slot, a_goff = cuda.local.array(RA, uint32), cuda.local.array(RA, uint64)
        b_slot, b_goff = cuda.local.array(RB, uint32), cuda.local.array(RB, uint64)
        tid = u32(cuda.threadIdx.x)
        row0, col0 = tid // u32(NTX) * u32(4), tid % u32(NTX) * u32(4)  # the thread's first row, column
        i0, j0 = u64(cuda.blockIdx.y) * u64(BM), u64(cuda.blockIdx.x) * u64(BN)
        kb = u64(cuda.blockIdx.z) * u64(k_chunk)
        ke = max(kb, min(u64(K), kb + u64(k_chunk)))
        ars, acs, brs, bcs = u64(a_rs), u64(a_cs), u64(b_rs), u64(b_cs)
        # busy: the thread has a row and a column of C inside M x N (in a full tile, every thread)
        full = i0 + u64(BM) <= u64(M) and j0 + u64(BN) <= u64(N)
        busy = i0 + row0 < u64(M) and j0 + col0 < u64(N)
        for m in range(TM):
            for n in range(TN):
                acc[m, n] = ZERO
        # the fast path: a tile inside M x N, whole steps of BK; a_pos, b_pos: where the step starts
        steps = (ke - kb) // u64(BK) if full else u64(0)
        if full:
            staging_slots(a_slot, a_goff, u32(0), tid, ars, acs, BM, BK, NT)
            staging_slots(b_slot, b_goff, u32(B_START), tid, bcs, brs, BN, BK, NT)
        a_pos, b_pos = u64(a_off) + i0 * ars + kb * acs, u64(b_off) + kb * brs + j0 * bcs
        for _ in range(steps):
            for r in range(RA):
                tiles[a_slot[r]] = A[a_pos + a_goff[r]]
            for r in range(RB):
                tiles[b_slot[r]] = B[b_pos + b_goff[r]]
            cuda.syncthreads()
            tile_product(tiles, acc, af, bf, row0, u32(B_START) + col0, A_ROW, B_ROW, BK, NTY, NTX)
            cuda.syncthreads()
            a_pos += u64(BK) * acs
            b_pos += u64(BK) * brs
        # the edge path: the rest of the chunk, every element checked; only the k < ke of a step, and
        # only busy threads, multiply
        for k0 in range(kb + steps * u64(BK), ke, u64(EK)):
            stage_checked(tiles, u32(0), A, u64(a_off), ars, acs, i0, u64(M), k0, ke, tid, ZERO, BM, EK, NT)
            stage_checked(tiles, u32(E_START), B, u64(b_off), bcs, brs, j0, u64(N), k0, ke, tid, ZERO, BN,
                          EK, NT)
            cuda.syncthreads()
            if busy:
                for kk in range(min(u64(EK), ke - k0)):
                    a_at, b_at = row0 + kk * u64(A_ROW), u32(E_START) + col0 + kk * u64(B_ROW)
                    rank1(tiles, acc, af, bf, a_at, b_at, NTY, NTX)
            cuda.syncthreads()
        c_at = u64(c_off) + u64(cuda.blockIdx.z) * u64(c_split)
        for m in range(TM):
            i = i0 + u64(row0 + u32((m // 4) * 4 * NTY + m % 4))
            if i < u64(M):
                for n in range(TN):
                    j = j0 + u64(col0 + u32((n // 4) * 4 * NTX + n % 4))
                    if j < u64(N):
                        C[c_at + i * u64(ldc) + j] = acc[m, n] + bias[u64(bias_off) + j] if has_bias else acc[m, n]

    return gemm


def gemm_tile(M: int, N: int) -> tuple[int, int]:
    """(BM, BN) for an M x N result: per side the smallest of GEMM_TILE_SIZES that covers it, else
    the largest; never 32 x 32 (too little work per staged value), (32, 64) or (64, 32) instead."""
    def side(n: int) -> int:
        return next((s for s in GEMM_TILE_SIZES if n <= s), GEMM_TILE_SIZES[-1])

    BM, BN = side(M), side(N)
    small = GEMM_TILE_SIZES[0]
    if BM == BN == small:
        return (small, 2 * small) if N >= M else (2 * small, small)
    return BM, BN


def gemm_shape(M: int, N: int) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(tile, grid, threads per block) of a product with an M x N result (one chunk of K)."""
    BM, BN = gemm_tile(M, N)
    threads = (BM // GEMM_REGISTER_BLOCK) * (BN // GEMM_REGISTER_BLOCK)
    return (BM, BN), (-(-N // BN), -(-M // BM)), threads


def gemm_shared_bytes(tile: tuple[int, int], itemsize: int) -> int:
    """Dynamic shared memory of a gemm block: its two staged pieces, rows padded by PAD."""
    BM, BN = tile
    return max(gemm_bk(np.float32 if itemsize == 4 else np.float64), GEMM_EDGE_BK) * (BM + PAD + BN + PAD) * itemsize


def gemm_split(M: int, N: int, K: int, multiprocessors: int, np_dtype=np.float32) -> tuple[int, int]:
    """(S, k_chunk): how many chunks of K an M x N x K product runs as, and their length (whole
    staging steps; the last chunk takes the rest). (1, K) unless the product has fewer tiles than
    the device has multiprocessors; then enough chunks for GEMM_SPLIT_BLOCKS_PER_SM blocks per
    multiprocessor, as long as every chunk keeps GEMM_SPLIT_MIN_K of K, and at most GEMM_MAX_SPLIT."""
    _, grid, _ = gemm_shape(M, N)
    tiles = grid[0] * grid[1]
    if tiles >= multiprocessors:
        return 1, K
    splits = min(-(-GEMM_SPLIT_BLOCKS_PER_SM * multiprocessors // tiles), K // GEMM_SPLIT_MIN_K, GEMM_MAX_SPLIT)
    if splits <= 1:
        return 1, K
    bk = gemm_bk(np_dtype)
    chunk = -(-K // (splits * bk)) * bk
    return -(-K // chunk), chunk


def gemm_split_scratch(M: int, N: int, splits: int) -> int:
    """Elements of the scratch buffer of a split product: the 1 its sum reads, then S partial M x N tiles."""
    return 1 + splits * M * N
