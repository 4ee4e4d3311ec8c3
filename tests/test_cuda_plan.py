"""The cuda backend's launch plan: rows per block from the recurrence's cost model, chosen for each
sweep on its own, and kernels compiled for the block size they are launched with.

The plan is host code; the one test that launches runs in Numba's CUDA simulator (tests/conftest.py)."""

from __future__ import annotations

import pytest

import lstmbench as lb
from lstmbench import ModelConfig
from lstmbench.bench import workloads
from lstmbench.errors import ShapeError
from lstmbench_backends.numba_cuda import DeviceLimits, NumbaCuda, kernels, plan, recurrence_step_cycles

pytestmark = pytest.mark.usefixtures("quick_thread_switches")  # tests/conftest.py
H100 = DeviceLimits("H100 (modelled)", 1024, 48 * 1024, 132, 65535)


def config(H: int, dtype: str = "float32") -> ModelConfig:
    return ModelConfig(input_size=1, hidden_size=H, output_size=1, num_layers=1, loss="mse", many_to_many=False,
                       dtype=dtype)


def test_the_goal_shape_takes_four_rows_a_block_in_both_sweeps():
    """H=512, B=128: a block's read of W_h (4 MiB) through L2 takes as long as 4 rows' multiply-adds;
    fewer rows leave that read as long and multiply it over more blocks, more rows idle SMs."""
    p = plan(config(512), 128, 64, H100)
    assert (p.forward.rows, p.backward.rows, p.padded_batch) == (4, 4, 128)
    assert (p.forward.blocks, p.forward.threads, p.backward.threads) == (32, 256, 256)
    cycles = {rows: recurrence_step_cycles(rows, 512, 128, 4, 132) for rows in (1, 2, 4, 8)}
    assert cycles[4] == min(cycles.values()) and cycles[8] > cycles[4] and cycles[1] > cycles[4]


def test_the_sweeps_choose_their_rows_independently():
    """The backward block keeps 4H values of each row in shared memory, the forward H: at H=1024 in
    float64 (32 KiB a row backward) only one backward row fits in 48 KiB, while the forward sweep
    takes more; the batch is padded to whole blocks of both."""
    p = plan(config(1024, "float64"), 24, 8, H100)
    assert p.backward.rows == 1 and p.forward.rows > 1
    assert p.padded_batch % p.forward.rows == 0 and p.padded_batch >= 24
    assert p.backward.blocks * p.backward.rows == p.forward.blocks * p.forward.rows == p.padded_batch


def test_a_hidden_size_whose_rows_cannot_fit_names_the_sweep():
    with pytest.raises(ShapeError, match="backward sweep"):
        plan(config(4096), 8, 4, H100)  # 4H float32 values: 64 KiB


def test_kernels_are_compiled_for_their_block_size(monkeypatch):
    """The launch bound (the most threads a kernel is compiled for) is part of the kernel's key: a
    kernel built while MAX_RECURRENCE_THREADS is patched down is not reused for a larger launch
    afterwards (a GPU refuses a launch past the bound)."""
    calls = []

    def recording() -> NumbaCuda:
        backend = NumbaCuda()  # a fresh one: its own workspaces and plans
        launch = backend._launch

        def record(kernel, grid, threads, shared, *args):
            calls.append((kernel, threads))
            launch(kernel, grid, threads, shared, *args)

        backend._launch = record
        return backend

    cfg = config(40, "float64")
    params, (x, y) = lb.init_params(cfg, 0), workloads.bench_batch(cfg, 2, 2, 0)
    with monkeypatch.context() as patched:
        patched.setattr(kernels, "MAX_RECURRENCE_THREADS", 32)
        recording().loss_and_grads(cfg, params, x, y)
    recording().loss_and_grads(cfg, params, x, y)
    recurrence = [(kernel, threads) for kernel, threads in calls if kernel.name.startswith("lstm_")]
    assert {threads for _, threads in recurrence} == {32, 64, 20}  # forward 32 then 64 threads; backward 20 pairs
    assert all(threads <= kernel.launch_bound for kernel, threads in calls)
