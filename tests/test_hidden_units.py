"""The threads sharing one shard's hidden units (``parallel = "units"``), in every backend that
has that plan: c (a barrier per time step) and numba (a parallel region per time step). Each
backend's own file tests when ``auto`` picks it."""

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.testing import Case, run_check
from lstmbench.testing.checks import check_forward, check_loss_and_grads, check_training_steps

BACKENDS = ["c", "numba"]


def units_backend(name: str):
    backend = lb.load_backend(name)
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)
    backend.set_threads(2)
    backend.parallel = "units"
    return backend


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("check", ["forward", "loss_and_grads", "training_steps", "gradient_hook", "deterministic",
                                   "thread_independent"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kit_with_the_threads_sharing_hidden_units(backend_name, check, dtype):
    """The kit's tiny models would otherwise get batch shards."""
    backend = units_backend(backend_name)
    run_check(backend, check, dtype, max_examples=15)
    assert backend.last_plan == "units"


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("H,B,layers", [(40, 1, 1), (37, 3, 2), (64, 2, 3)])  # parts of unequal size, several layers
def test_hidden_units_shared_out_match_the_reference(backend_name, H, B, layers):
    backend = units_backend(backend_name)
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
