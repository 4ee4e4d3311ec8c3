"""The Numba backend's two ways of sharing a step between threads (batch shards, and hidden
units for a batch of few rows) and the rule that picks one. The conformance kit runs on its
default from tests/test_conformance.py like on every registered backend."""

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.testing import Case
from lstmbench.testing.checks import check_forward, check_loss_and_grads, check_training_steps

pytest.importorskip("numba")
from lstmbench_backends.numba_cpu import UNITS_ROWS, NumbaThreads, shares_units  # noqa: E402


@pytest.mark.parametrize("check", ["forward", "loss_and_grads", "training_steps", "gradient_hook", "deterministic",
                                   "thread_independent"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kit_with_the_threads_sharing_hidden_units(check, dtype):
    """parallel="units": one shard whose hidden units the threads share, a parallel region per
    time step (the kit's tiny models would otherwise get batch shards)."""
    from lstmbench.testing import run_check

    backend = NumbaThreads()
    backend.set_threads(2)
    backend.parallel = "units"
    run_check(backend, check, dtype, max_examples=15)
    assert backend.last_plan == "units"


@pytest.mark.parametrize("H,B,layers", [(40, 1, 1), (37, 3, 2), (64, 2, 3)])  # a last part that is shorter
def test_hidden_units_shared_out_match_the_reference(H, B, layers):
    backend = NumbaThreads()
    backend.set_threads(2)
    backend.parallel = "units"
    for loss, m2m in (("mse", False), ("xent", True)):
        cfg = lb.ModelConfig(3, H, 4, layers, loss, m2m, "float64")
        rng = np.random.default_rng(H)
        x = rng.standard_normal((B, 6, 3))
        y = rng.standard_normal((B, 4)) if loss == "mse" else rng.integers(0, 4, size=(B, 6))
        case = Case(cfg, lb.init_params(cfg, 1), x, y, lb.OptimizerConfig("adam", lr=1e-2, clip_norm=0.5), 3)
        check_forward(backend, case)
        check_loss_and_grads(backend, case)
        check_training_steps(backend, case)
    assert backend.runtime_info()["parallel"] == "units: units last"


def test_auto_shares_hidden_units_where_w_h_outgrows_l2_and_its_parts_do_not():
    l2 = 1 << 20  # 1 MiB, as on the Zen 5 it was measured on
    # float32 H=256: W_h is 1 MiB, a part of 2 is 512 KiB: units, up to UNITS_ROWS rows per thread
    assert shares_units("auto", 1, 256, 2, 4, l2) and shares_units("auto", 2 * UNITS_ROWS, 256, 2, 4, l2)
    assert not shares_units("auto", 2 * UNITS_ROWS + 1, 256, 2, 4, l2)
    assert not shares_units("auto", 1, 128, 2, 4, l2)  # W_h fits L2 already
    assert not shares_units("auto", 1, 512, 2, 4, l2)  # a part (2 MiB) does not fit either
    assert not shares_units("auto", 1, 256, 2, 8, l2)  # float64: a part is all of L2
    assert not shares_units("auto", 1, 256, 1, 4, l2)  # one thread
    assert not shares_units("auto", 1, 256, 2, 4, 0)  # L2 unknown
    assert shares_units("units", 64, 8, 2, 4, 0) and not shares_units("shards", 1, 256, 2, 4, l2)
    with pytest.raises(ValueError, match="parallel"):
        shares_units("wavefront", 1, 256, 2, 4, l2)


def test_the_plan_run_is_reported():
    backend = NumbaThreads()
    backend.set_threads(2)
    cfg = lb.ModelConfig(1, 8, 1)
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.last_plan == "shards"  # H=8: W_h fits any L2
    backend.parallel = "units"
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.runtime_info()["parallel"] == "units: units last"
