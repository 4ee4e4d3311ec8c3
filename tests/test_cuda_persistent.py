"""The cuda backend's persistent recurrence (opt-in; backends/numba_cuda/persistent.py).

Numba's simulator runs a cooperative grid of one block, so here one block runs every task
(row group x unit slice) of every step, reloading each task's slice of W_h, with the grid
barrier after every step: the tasks' indexing, the slices, the math and the barriers'
placement within a block are checked against the NumPy reference; blocks running at once
are not (docs/cuda-backend.md). The kit runs on the persistent backend with fewer examples
than on the default one: the simulator is slow, and the cell math is shared with the
default sweeps, which the full kit covers."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import lstmbench as lb
from lstmbench.bench import workloads
from lstmbench.config import DropoutDraw
from lstmbench.errors import ConfigError
from lstmbench.testing import Case, run_check
from lstmbench.testing.checks import assert_loss_and_grads
from lstmbench_backends.numba_cuda import RECURRENCE_ENV, NumbaCuda, persistent

# the checks and examples: a few cases of each (sequences and dropout cost about 40 s an example here)
PERSISTENT_CHECKS = {"forward": 4, "loss_and_grads": 4, "training_steps": 3, "sequences": 2, "dropout": 2}


pytestmark = pytest.mark.usefixtures("quick_thread_switches")  # tests/conftest.py


@pytest.fixture
def backend() -> NumbaCuda:
    return NumbaCuda("persistent")


@pytest.mark.parametrize("check", list(PERSISTENT_CHECKS))
def test_conformance_kit(backend, check):
    run_check(backend, check, "float64", max_examples=PERSISTENT_CHECKS[check])


@pytest.mark.parametrize("many_to_many,lengths,dropout", [(False, [3, 1, 2, 3, 2], 0.0), (True, None, 0.25)])
def test_several_tasks_slices_and_rows_past_the_batch(backend, many_to_many, lengths, dropout):
    """H=6 with 4-unit slices (the second slice half past H), B=5 rows with lengths or dropout,
    two layers: 2 slices x 1 row group per sweep, run by one block."""
    cfg = lb.ModelConfig(2, 6, 2, 2, "mse", many_to_many, "float64", dropout=dropout)
    x, y = workloads.bench_batch(cfg, 5, 3, 2)
    case = Case(cfg, lb.init_params(cfg, 2), x, y, lb.OptimizerConfig("adam"), 1, seed=2,
                lengths=None if lengths is None else np.array(lengths))
    draw = DropoutDraw(seed=5, step=2, first_row=3) if dropout else None
    launches, launch = [], backend._launch
    backend._launch = lambda kernel, *shape_and_args: launches.append((kernel, shape_and_args[3:])) or launch(
        kernel, *shape_and_args)
    loss, grads = backend.loss_and_grads(cfg, case.params, case.x, case.y, dropout=draw, **case.sequence_args())
    assert_loss_and_grads(case, loss, grads, dropout=draw)
    for kernel, args in launches:  # what a GPU compiles for: the declared argument types
        assert tuple(getattr(a, "_numba_type_", None) or numba.typeof(a) for a in args) == kernel.arg_types, kernel.name
    names = {kernel.name for kernel, _ in launches}
    assert {"lstm_forward_persistent", "lstm_backward_persistent", "column_sums"} <= names
    assert not names & {"lstm_forward", "lstm_backward"}
    assert persistent.tasks(6, 8, 4) == 2 and persistent.slice_units(6, 8, 48 * 1024) == 4


def test_slices_shrink_to_fit_shared_memory():
    assert persistent.slice_units(512, 4, 48 * 1024) == 4  # 32 KiB of W_h a block
    assert persistent.slice_units(1024, 4, 48 * 1024) == 2
    assert persistent.slice_units(8192, 4, 48 * 1024) == 0  # not one unit: the backend says so


def test_the_recurrence_is_chosen_by_argument_or_environment(monkeypatch):
    monkeypatch.delenv(RECURRENCE_ENV, raising=False)
    assert NumbaCuda().recurrence == "auto"  # rows or stepwise by the plan's cost model (tests/test_cuda_stepwise.py)
    monkeypatch.setenv(RECURRENCE_ENV, "persistent")
    assert NumbaCuda().recurrence == "persistent"
    monkeypatch.setenv(RECURRENCE_ENV, "diagonal")
    named = f"unknown recurrence 'diagonal'.*{RECURRENCE_ENV}.*auto, rows, stepwise, persistent"
    with pytest.raises(ConfigError, match=named):
        NumbaCuda()
