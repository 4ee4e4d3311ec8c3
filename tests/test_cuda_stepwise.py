"""The cuda backend's stepwise recurrence (backends/numba_cuda/stepwise.py) and the plan's choice
between it and the rows kernels.

The kernels run in Numba's CUDA simulator (tests/conftest.py). Stepwise launches have no
dependence between blocks within a launch, so the simulator checks them fully: the products'
chunks of K and their fixed-order sum, the rows each step takes with lengths, dropout and the
state. The default ("auto") picks rows for the kit's tiny models (tests/test_cuda_backend.py keeps
covering the rows kernels), so the kit runs here on NumbaCuda("stepwise"), with few examples: the
cell math is the rows kernels' own (kernels.forward_cell, cell_backward), which the full kit covers.
The plan's choice is host code: checked under an H100's modelled limits without a GPU."""

from __future__ import annotations

from dataclasses import replace

import numba
import numpy as np
import pytest

import lstmbench as lb
from lstmbench import ModelConfig
from lstmbench.bench import workloads
from lstmbench.config import DropoutDraw
from lstmbench.testing import Case, run_check
from lstmbench.testing.checks import assert_loss_and_grads
from lstmbench_backends.numba_cuda import (LAUNCH_MICROSECONDS, RECURRENCE_ENV, DeviceLimits, NumbaCuda, plan,
                                           stepwise_step_cycles, sweep_microseconds)

pytestmark = pytest.mark.usefixtures("quick_thread_switches")  # tests/conftest.py
H100 = DeviceLimits("H100 (modelled)", 1024, 48 * 1024, 132, 65535)
# the kit's checks and examples on the stepwise backend (CI's derandomized examples: about 35 s in all)
STEPWISE_CHECKS = {("forward", "float64"): 4, ("loss_and_grads", "float64"): 6, ("training_steps", "float64"): 2,
                   ("sequences", "float64"): 1, ("dropout", "float64"): 1, ("deterministic", "float64"): 1,
                   ("loss_and_grads", "float32"): 3}


def config(H: int, dtype: str = "float32") -> ModelConfig:
    return ModelConfig(input_size=1, hidden_size=H, output_size=1, num_layers=1, loss="mse", many_to_many=False,
                       dtype=dtype)


def stepwise(multiprocessors: int = 1) -> NumbaCuda:
    """NumbaCuda("stepwise") planning for ``multiprocessors`` SMs: with many, each step's product is
    split into several chunks of K even at the tiny shapes here (the simulator reports one SM)."""
    backend = NumbaCuda("stepwise")
    backend._limits = replace(backend._device_limits(), multiprocessors=multiprocessors)
    return backend


def recording(backend: NumbaCuda) -> list:
    """Every launch of ``backend`` from now on: (kernel, grid, args)."""
    calls, launch = [], backend._launch
    backend._launch = lambda kernel, grid, threads, shared, *args: calls.append((kernel, grid, args)) or launch(
        kernel, grid, threads, shared, *args)
    return calls


@pytest.mark.parametrize("check,dtype", list(STEPWISE_CHECKS))
def test_conformance_kit(check, dtype):
    run_check(NumbaCuda("stepwise"), check, dtype, max_examples=STEPWISE_CHECKS[check, dtype])


@pytest.mark.parametrize("many_to_many,lengths,dropout,state", [
    (False, [3, 1, 4, 2, 4], 0.25, True),  # many-to-one, packed rows, dropout, an initial state
    (True, [2, 4, 1, 4, 3], 0.0, False),   # many-to-many, packed rows
    (True, None, 0.25, True),              # many-to-many, a full batch (padding rows), dropout, state
])
def test_chunks_of_k_lengths_dropout_and_state_match_the_reference(many_to_many, lengths, dropout, state):
    """Two layers, H=10: on 132 modelled SMs each step's product is split (forward K=10: chunks of 8
    and 2, the last on gemm's edge path; backward K=40 in several), and the cell kernels add the
    chunks; float64 against the reference (1e-10). Each launch passes its kernel's declared types,
    the rows kernels are not launched, and each step's product runs over the rows that take it."""
    backend = stepwise(132)
    cfg = lb.ModelConfig(2, 10, 3, 2, "mse", many_to_many, "float64", dropout=dropout)
    x, y = workloads.bench_batch(cfg, 5, 4, 2)
    rng = np.random.default_rng(1)
    initial = tuple(0.5 * rng.standard_normal((2, 5, 10)) for _ in "hc") if state else None
    case = Case(cfg, lb.init_params(cfg, 2), x, y, lb.OptimizerConfig("adam"), 1, seed=2,
                lengths=None if lengths is None else np.array(lengths), initial_state=initial)
    draw = DropoutDraw(seed=5, step=2, first_row=3) if dropout else None
    calls = recording(backend)
    loss, grads = backend.loss_and_grads(cfg, case.params, x, y, dropout=draw, **case.sequence_args())
    assert_loss_and_grads(case, loss, grads, dropout=draw)
    for kernel, _, args in calls:
        assert tuple(getattr(a, "_numba_type_", None) or numba.typeof(a) for a in args) == kernel.arg_types, kernel.name
    names = {kernel.name for kernel, _, _ in calls}
    assert {"lstm_forward_cells", "lstm_backward_cells", "column_sums"} <= names
    assert not names & {"lstm_forward", "lstm_backward"}
    with backend.workspace(cfg, x, lengths is not None) as ws:
        p = ws.plan
    assert p.forward.recurrence == p.backward.recurrence == "stepwise"
    assert p.forward.splits == 2 and p.backward.splits > 2
    # each step's product (gemm: M, N, K at args 11 .. 13) over the rows that take it: forward M x 4H x H
    # for steps 1 .. T-1 (and 0 with a state), backward M x H x 4H for the rows of steps T-1 .. 1, per layer
    shapes = [tuple(args[11:14]) for kernel, grid, args in calls if kernel.name == "gemm" and len(grid) == 3]
    sorted_lengths = np.sort(lengths)[::-1] if lengths else np.full(5, 4)
    taking = [int((sorted_lengths > t).sum()) if lengths else p.padded_batch for t in range(4)]
    forward = [(m, 40, 10) for m in (taking if state else taking[1:])]
    backward = [(m, 10, 40) for m in taking[:0:-1]]
    assert shapes == 2 * forward + 2 * backward


def test_repeats_are_bit_identical():
    """No atomics: the chunks of K add up in a fixed order, so a repeat gives the same bits."""
    cfg = lb.ModelConfig(2, 10, 2, 1, "xent", True, "float32")
    x, y = workloads.bench_batch(cfg, 3, 3, 0)
    params, backend = lb.init_params(cfg, 0), stepwise(132)
    first = backend.loss_and_grads(cfg, params, x, y, lengths=np.array([3, 1, 2]))
    again = backend.loss_and_grads(cfg, params, x, y, lengths=np.array([3, 1, 2]))
    assert first[0] == again[0] and all(np.array_equal(first[1][k], again[1][k]) for k in first[1])


def test_launches_per_step():
    """Per layer and step: a product (none at the first forward step without a state, none at the
    last backward step) and a cell kernel; per layer besides the input product and dz's column sums."""
    cfg = lb.ModelConfig(2, 4, 2, 1, "mse", False, "float64")
    x, y = workloads.bench_batch(cfg, 3, 5, 0)
    backend = NumbaCuda("stepwise")
    state = backend.init_state(cfg, lb.init_params(cfg, 0), lb.OptimizerConfig("adam"))
    backend.train_step(state, x, y)
    rows = 6 + 6  # NumbaCuda("rows"): 6L + 6
    assert backend.launches_per_step == rows - 2 + (2 * 5 - 1) + (2 * 5 - 1) + 1


# -- the plan's choice (host code: no GPU) --------------------------------------------------------


def test_the_goal_shape_takes_the_stepwise_recurrence_in_both_sweeps():
    """H=512, B=128, T=64 on an H100: the rows kernels' 32 blocks read W_h from L2 at every step
    (2.12 ms a sweep); stepwise, each step's product split over 128 blocks, models at about 1.75 ms
    a sweep, most of it launches (127 and 128 of LAUNCH_MICROSECONDS)."""
    p = plan(config(512), 128, 64, H100)
    assert (p.forward.recurrence, p.backward.recurrence) == ("stepwise", "stepwise")
    assert (p.forward.splits, p.forward.k_chunk, p.backward.splits, p.backward.k_chunk) == (8, 64, 32, 64)
    assert (p.forward.rows, p.padded_batch) == (4, 128)  # the rows plan stays (the batch's padding)
    rows = plan(config(512), 128, 64, H100, "rows")
    for d in ("forward", "backward"):
        fast, slow = (sweep_microseconds(getattr(q, d), d, 512, 128, 64, 4, 132) for q in (p, rows))
        assert fast < 0.85 * slow and slow == pytest.approx(64 * 65536 / 1980 + LAUNCH_MICROSECONDS)
    product, cells = stepwise_step_cycles("forward", 512, 128, 8, 4, 132)
    assert product == pytest.approx(128 * 2048 * 512 / 128 * 1.3 / 128)  # 128 blocks, one an SM, 8 warps each
    assert cells < product


def test_small_shapes_keep_the_rows_kernels_and_a_choice_is_obeyed():
    """Where the rows kernels' whole sweep costs less than the stepwise launches alone, auto keeps them."""
    for H, B in ((3, 6), (64, 128), (256, 128)):
        p = plan(config(H), B, 64, H100)
        assert (p.forward.recurrence, p.backward.recurrence) == ("rows", "rows"), H
    for asked in ("rows", "stepwise", "persistent"):
        p = plan(config(512), 128, 64, H100, asked)
        assert p.forward.recurrence == p.backward.recurrence == asked


def test_the_recurrence_is_chosen_by_argument_or_environment(monkeypatch):
    monkeypatch.delenv(RECURRENCE_ENV, raising=False)
    assert NumbaCuda().recurrence == "auto"
    monkeypatch.setenv(RECURRENCE_ENV, "stepwise")
    backend = NumbaCuda()
    cfg = lb.ModelConfig(1, 3, 1, 1, "mse", False, "float64")
    x, y = workloads.bench_batch(cfg, 2, 2, 0)
    with backend.workspace(cfg, x) as ws:
        assert ws.plan.forward.recurrence == ws.plan.backward.recurrence == "stepwise"
