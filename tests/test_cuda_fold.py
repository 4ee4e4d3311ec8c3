"""Layer 0's dW_x folded into its backward sweep (kernels.folded_inputs): for an input of at most
FOLD_MAX_INPUTS values the rows recurrence's kernel sums x^T dz into per-block partials as it sums the bias
gradient, finish_grads adds them up in block order, and no dW_x product is launched.

In Numba's CUDA simulator (tests/conftest.py): against the NumPy reference in float64 (several
recurrence blocks with padding rows, lengths, dropout, a second layer above), bit-identical
repeats, and which launches the fold removes. Its static cost (registers, the W_h loop's
instructions per FMA) is tools/cuda_static_cost.py's, for the variants inspect.VARIANTS lists."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.bench import workloads
from lstmbench.config import DropoutDraw
from lstmbench.layout import Layout
from lstmbench.testing import Case
from lstmbench.testing.checks import assert_loss_and_grads

from lstmbench_backends.numba_cuda import NumbaCuda, kernels

pytestmark = pytest.mark.usefixtures("quick_thread_switches")  # tests/conftest.py


@pytest.fixture
def backend() -> NumbaCuda:
    return NumbaCuda("rows")  # the fold is the rows kernel's (the stepwise and persistent sweeps keep the product)


def case_of(D, L=1, many_to_many=False, B=11, T=4, H=5, dtype="float64", dropout=0.0, lengths=None) -> Case:
    cfg = lb.ModelConfig(D, H, 2, L, "mse", many_to_many, dtype, dropout=dropout)
    x, y = workloads.bench_batch(cfg, B, T, 3)
    case = Case(cfg, lb.init_params(cfg, 3), x, y, lb.OptimizerConfig("sgd", lr=0.1), 1, seed=3)
    return case if lengths is None else replace(case, lengths=np.array(lengths))


def launched(backend: NumbaCuda) -> list:
    """Every launch from now on: (kernel, args); the launches still run."""
    calls, launch = [], backend._launch

    def record(kernel, grid, threads, shared, *args):
        calls.append((kernel, args))
        launch(kernel, grid, threads, shared, *args)

    backend._launch = record
    return calls


def w_x_products(calls: list, cfg: lb.ModelConfig) -> list:
    """The products that write layer 0's W_x gradient: C (argument 8) at W_x's offset, M = D0 rows."""
    wx = int(Layout.of(cfg).offs[0, 0])
    return [args for kernel, args in calls if kernel.name == "gemm" and args[9] == wx and args[11] == cfg.input_size]


@pytest.mark.parametrize("what,case", [
    ("several blocks, padding rows", case_of(1)),
    ("lengths, two layers, many-to-many", case_of(1, L=2, many_to_many=True, lengths=[4, 1, 3, 2, 4, 3, 1, 2, 4, 2, 3])),
    ("dropout, lengths", case_of(1, L=2, dropout=0.3, lengths=[2, 4, 1, 3, 4, 4, 1, 2, 3, 3, 2])),
])
def test_the_folded_w_x_gradient_is_the_references(backend, what, case):
    assert kernels.folded_inputs(case.cfg.input_size) == case.cfg.input_size  # the fold applies
    draw = DropoutDraw(seed=5, step=2, first_row=7) if case.cfg.dropout else None
    calls = launched(backend)
    loss, grads = backend.loss_and_grads(case.cfg, case.params, case.x, case.y, dropout=draw, **case.sequence_args())
    assert_loss_and_grads(case, loss, grads, dropout=draw)
    # the fold was what ran: layer 0's sweep is the DX = D0 variant, and no product wrote W_x's gradient
    with backend.workspace(case.cfg, case.x) as ws:
        plan = ws.plan
    assert plan.backward.blocks >= 2 and plan.padded_batch > case.x.shape[0]  # partials of several blocks, padding
    sweeps = [kernel for kernel, _ in calls if kernel.name == "lstm_backward"]
    assert sweeps[-1] is kernels.lstm_backward_kernel(case.cfg.np_dtype, plan.backward.rows, plan.backward.threads, 1)
    assert all(kernel is not sweeps[-1] for kernel in sweeps[:-1])  # the layers above: no fold
    assert w_x_products(calls, case.cfg) == []


def test_a_folded_gradient_is_the_same_bits_every_time_and_a_wider_input_is_a_product(backend):
    """Two runs give the same bits (partials summed in block order, no atomics); with D0 past
    FOLD_MAX_INPUTS dW_x is the product again, one more launch, and the same gradient otherwise."""
    case = case_of(1, dtype="float32", B=13)
    first = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)
    second = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)
    assert first[0] == second[0]
    assert all(np.array_equal(first[1][name], second[1][name]) for name in first[1])
    assert_loss_and_grads(case, *first)

    counts = {}
    for D in (1, kernels.FOLD_MAX_INPUTS + 1):
        wide = case_of(D, B=5, T=3)
        recorder = NumbaCuda("rows")
        calls = launched(recorder)
        state = recorder.init_state(wide.cfg, wide.params, wide.opt)
        recorder.train_step(state, wide.x, wide.y)
        counts[D] = recorder.launches_per_step
        assert len(w_x_products(calls, wide.cfg)) == (D > kernels.FOLD_MAX_INPUTS)
    assert counts[kernels.FOLD_MAX_INPUTS + 1] == counts[1] + 1  # in the simulator a product is one launch


def test_the_fold_is_a_kernel_variant_of_its_own():
    """DX = 0 is the kernel without the fold (the same object as the three-argument call, the same
    arguments); a fold variant is another kernel with two more: x and dW_x's partials."""
    dt = np.dtype("float64")
    plain, folded = kernels.lstm_backward_kernel(dt, 2, 32), kernels.lstm_backward_kernel(dt, 2, 32, 1)
    assert kernels.lstm_backward_kernel("float64", 2, 32, 0) is plain and folded is not plain
    assert folded.arg_types == plain.arg_types + (plain.arg_types[0], plain.arg_types[0])
    assert [kernels.folded_inputs(D) for D in (1, kernels.FOLD_MAX_INPUTS, kernels.FOLD_MAX_INPUTS + 1)] == [
        1, kernels.FOLD_MAX_INPUTS, 0]
