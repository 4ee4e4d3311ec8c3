"""The ``cuda`` backend's matrix product (backends/numba_cuda/gemm.py): the full-tile path and the
edge path against NumPy, split K (its chunks added in a fixed order, to the bit), how a product is
split, and every tile variant listed for the static tools.

Here the kernels run in Numba's CUDA simulator (tests/conftest.py), one block at a time, so the
shapes are tiny; a split is forced by a device with more multiprocessors and a shorter minimum chunk."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from lstmbench_backends.numba_cuda import (
    SIMULATED_LIMITS,
    DeviceLimits,
    NumbaCuda,
    gemm,
)
from lstmbench_backends.numba_cuda.inspect import VARIANTS
from lstmbench_backends.numba_cuda.jit import SIMULATOR as SIMULATED

TOLERANCE = {"float64": {"rtol": 1e-12, "atol": 1e-12}, "float32": {"rtol": 1e-5, "atol": 1e-5}}


pytestmark = pytest.mark.usefixtures("quick_thread_switches")  # tests/conftest.py


@pytest.fixture
def backend(cuda_backend) -> NumbaCuda:
    return cuda_backend


def launched(backend: NumbaCuda) -> list:
    """Record every launch: (kernel, grid, args)."""
    calls, launch = [], backend._launch

    def record(kernel, grid, threads, shared, *args):
        calls.append((kernel, grid, args))
        launch(kernel, grid, threads, shared, *args)

    backend._launch = record
    return calls


def operands(rng, M, N, K, a_t, b_t, dtype, off=3):
    """op(A) (M x K) and op(B) (K x N), each stored transposed or not at offset ``off`` of a longer
    buffer (NaN before it: never read), with the strides the kernel reads them by."""
    a = rng.standard_normal((K, M) if a_t else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if b_t else (K, N)).astype(dtype)
    flat = lambda m: np.concatenate([np.full(off, np.nan, dtype), m.ravel()])
    a_strides = (1, M) if a_t else (K, 1)
    b_strides = (1, K) if b_t else (N, 1)
    return (a.T if a_t else a), (b.T if b_t else b), flat(a), a_strides, flat(b), b_strides


def run_gemm(backend, dtype, M, N, K, a_flat, a_off, a_strides, b_flat, b_off, b_strides):
    """C = op(A) op(B) through the backend's _gemm, C (M x N) in a buffer of its own."""
    from numba import cuda

    c = cuda.to_device(np.full(M * N, np.nan, dtype))
    backend._gemm(np.dtype(dtype), M, N, K, cuda.to_device(a_flat), a_off, *a_strides, cuda.to_device(b_flat),
                  b_off, *b_strides, c, 0, N)
    return c.copy_to_host().reshape(M, N)


def test_every_tile_gemm_shape_picks_is_a_listed_variant():
    """inspect.VARIANTS (what the static tools compile) lists exactly the tiles gemm_shape can
    pick, the sum of a split product's partials (M = 1) included; each kernel's launch bound is its
    block's threads."""
    sizes = [1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 500, 100000]
    picked = {gemm.gemm_shape(M, N)[0] for M in sizes for N in sizes}
    assert picked == {args for factory, args in VARIANTS if factory == "gemm_kernel"}
    assert (32, 32) not in picked  # two short sides take a 32 x 64 tile
    for M in sizes:
        for N in sizes:
            tile, grid, threads = gemm.gemm_shape(M, N)
            assert grid[0] * tile[1] >= N and grid[1] * tile[0] >= M
            for dtype in ("float32", "float64"):
                assert gemm.gemm_kernel(np.dtype(dtype), *tile).launch_bound == threads


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_full_tiles_take_the_fast_path_and_edge_tiles_the_checked_one(backend, monkeypatch, dtype):
    """130 x 64 on 128 x 64 tiles: block row 0 is a full tile, which runs its whole steps of BK
    without bounds checks and the last K % BK values of k on the checked path; block row 1 is on
    the edge of M and takes the checked path for all of K, where only the threads with a row
    inside M multiply, and only by the k the step has. Both match NumPy, for every layout. (In
    the simulator the kernel's helpers are Python functions: their calls show which path ran.)"""
    counts = {"tile_product": 0, "stage_checked": 0, "rank1": 0}
    lock = threading.Lock()

    def counting(name):
        inner = getattr(gemm, name)

        def wrapper(*args):
            with lock:
                counts[name] += 1
            return inner(*args)
        return wrapper

    if SIMULATED:
        for name in counts:
            monkeypatch.setattr(gemm, name, counting(name))
    M, N, BK = 130, 64, gemm.gemm_bk(dtype)
    K = 2 * BK + 3
    tile, grid, threads = gemm.gemm_shape(M, N)
    assert tile == (128, 64) and grid == (1, 2)
    rng = np.random.default_rng(7)
    for a_t in (False, True):
        for b_t in (False, True):
            a, b, a_flat, a_strides, b_flat, b_strides = operands(rng, M, N, K, a_t, b_t, dtype)
            got = run_gemm(backend, dtype, M, N, K, a_flat, 3, a_strides, b_flat, 3, b_strides)
            np.testing.assert_allclose(got, a.astype(np.float64) @ b, **TOLERANCE[dtype],
                                       err_msg=f"A transposed: {a_t}, B transposed: {b_t}")
    if not SIMULATED:
        return
    products, edge_steps = 4, -(-K // gemm.GEMM_EDGE_BK)
    busy_on_the_edge = tile[1] // gemm.GEMM_REGISTER_BLOCK  # the threads of rows 128..135: 2 inside M
    # per product: two whole steps in the full tile, each thread; checked steps (two stage_checked
    # calls each: A's piece and B's) there 1, on the edge K / GEMM_EDGE_BK rounded up
    assert counts["tile_product"] == products * threads * 2
    assert counts["stage_checked"] == products * threads * 2 * (1 + edge_steps)
    # rank-1 updates: BK per tile_product; the full tile's last 3 k; on the edge all K, busy threads only
    edge_updates = threads * 3 + busy_on_the_edge * K
    assert counts["rank1"] == BK * counts["tile_product"] + products * edge_updates


def force_split(backend, monkeypatch, multiprocessors=8, min_k=8):
    """A device with more multiprocessors, and chunks of K as short as ``min_k``: tiny products split."""
    backend._limits = replace(DeviceLimits(**SIMULATED_LIMITS), multiprocessors=multiprocessors)
    monkeypatch.setattr(gemm, "GEMM_SPLIT_MIN_K", min_k)


@pytest.mark.parametrize("dtype,M,N", [("float32", 3, 5), ("float64", 32, 64)])
def test_split_k_adds_every_chunk_in_a_fixed_order(backend, monkeypatch, dtype, M, N):
    """A weight-gradient-like product (A transposed, like h^T) split in K: one launch of S chunks
    (grid z) into the scratch buffer, then the sum of the partials (M = 1, N = M*N, K = S). The
    result is, to the bit, chunk 0 + chunk 1 + ... + chunk S-1 added in that order, each chunk the
    unsplit product of its slice of K (read in place); it matches NumPy, and a rerun gives the same
    bits. (3 x 5: an edge tile; 32 x 64: a full tile, its chunks on the fast path.)"""
    K = 37
    force_split(backend, monkeypatch)
    splits, chunk = gemm.gemm_split(M, N, K, 8, np.dtype(dtype))
    assert splits >= 3 and chunk % gemm.gemm_bk(dtype) == 0 and (splits - 1) * chunk < K <= splits * chunk
    rng = np.random.default_rng(M)
    a, b, a_flat, a_strides, b_flat, b_strides = operands(rng, M, N, K, True, False, dtype)
    calls = launched(backend)
    got = run_gemm(backend, dtype, M, N, K, a_flat, 3, a_strides, b_flat, 3, b_strides)
    assert [grid for _, grid, _ in calls] == [(1, 1, splits), gemm.gemm_shape(1, M * N)[1]]
    assert calls[0][2][11:14] == (M, N, K) and calls[1][2][11:14] == (1, M * N, splits)
    scratch = backend._gemm_scratch[np.dtype(dtype)]
    assert scratch.size >= gemm.gemm_split_scratch(M, N, splits)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, **TOLERANCE[dtype])
    assert np.array_equal(run_gemm(backend, dtype, M, N, K, a_flat, 3, a_strides, b_flat, 3, b_strides), got)
    assert backend._gemm_scratch[np.dtype(dtype)] is scratch  # made once, then reused
    # each chunk on its own, unsplit (one multiprocessor): op(A)'s columns k0.. and op(B)'s rows k0..
    backend._limits = DeviceLimits(**SIMULATED_LIMITS)
    expected = None
    for k0 in range(0, K, chunk):
        part = run_gemm(backend, dtype, M, N, min(chunk, K - k0), a_flat, 3 + k0 * a_strides[1], a_strides, b_flat,
                        3 + k0 * b_strides[0], b_strides)
        expected = part if expected is None else expected + part
    assert np.array_equal(got, expected)


def test_a_product_with_a_bias_or_strided_rows_is_not_split(backend, monkeypatch):
    """The split writes C's M x N values as one contiguous run and adds no bias: the head (bias)
    and a C with a row stride of its own run unsplit, and still match NumPy."""
    from numba import cuda

    force_split(backend, monkeypatch)
    M, N, K, ldc = 3, 5, 37, 7
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    bias = rng.standard_normal(N)
    calls = launched(backend)
    c = cuda.to_device(np.zeros(M * ldc))
    backend._gemm(np.dtype("float64"), M, N, K, cuda.to_device(a.ravel()), 0, K, 1, cuda.to_device(b.ravel()), 0,
                  N, 1, c, 0, ldc, bias=cuda.to_device(bias), bias_off=0)
    got = c.copy_to_host().reshape(M, ldc)
    np.testing.assert_allclose(got[:, :N], a @ b + bias, **TOLERANCE["float64"])
    assert np.all(got[:, N:] == 0) and len(calls) == 1 and calls[0][1] == gemm.gemm_shape(M, N)[1]


def test_how_a_product_is_split():
    """At the benchmark's shapes on 132 multiprocessors (tools/cuda_static_cost.py's H100): the
    weight gradients (few tiles, K = T*B = 8192) split into chunks of whole staging steps that
    cover K; products with a tile per multiprocessor, a short K, or one multiprocessor (the
    simulator) do not."""
    for dtype in ("float32", "float64"):
        bk = gemm.gemm_bk(dtype)
        for M, N in ((512, 2048), (1, 2048), (512, 1), (256, 1024)):
            splits, chunk = gemm.gemm_split(M, N, 8192, 132, np.dtype(dtype))
            tiles = np.prod(gemm.gemm_shape(M, N)[1])
            assert 1 < splits <= gemm.GEMM_MAX_SPLIT and tiles * splits >= min(2 * 132, tiles * gemm.GEMM_MAX_SPLIT)
            assert chunk % bk == 0 and chunk >= gemm.GEMM_SPLIT_MIN_K and (splits - 1) * chunk < 8192 <= splits * chunk
        assert gemm.gemm_split(8192, 2048, 512, 132, np.dtype(dtype)) == (1, 512)  # 1024 tiles
        assert gemm.gemm_split(1024, 4096, 8192, 132, np.dtype(dtype)) == (1, 8192)  # 256 tiles: 2 per SM
        assert gemm.gemm_split(512, 2048, 300, 132, np.dtype(dtype)) == (1, 300)  # K too short to split
        assert gemm.gemm_split(512, 2048, 8192, 1, np.dtype(dtype)) == (1, 8192)  # the simulator
