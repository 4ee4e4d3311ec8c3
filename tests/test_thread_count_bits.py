"""1, 2 and 3 threads give the same bits on the parallel CPU backends, in both dtypes and every
plan, at shapes larger than the kit's (several batch shards, a short last shard, hidden-unit
parts of unequal size, several layers, one-hot input). docs/determinism.md says why."""

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.testing import Case
from lstmbench.testing.checks import check_thread_independent

# (batch, hidden, layers, loss, many_to_many, one-hot input)
SHAPES = [
    (37, 20, 1, "mse", False, False),  # shards of 16, 16 and 5 rows
    (70, 9, 2, "xent", True, False),
    (33, 12, 1, "xent", True, True),  # one-hot input: the C kernel's gather and scatter
    (2, 40, 3, "mse", True, False),
]


def backend_with(name: str, parallel: str):
    backend = lb.load_backend(name)
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)
    backend.parallel = parallel
    return backend


def case_for(B, H, layers, loss, m2m, one_hot, dtype) -> Case:
    D = O = 5
    cfg = lb.ModelConfig(D, H, O, layers, loss, m2m, dtype)
    rng = np.random.default_rng(B * H)
    T = 6
    x = np.eye(D)[rng.integers(0, D, (B, T))] if one_hot else rng.standard_normal((B, T, D))
    lead = (B, T) if m2m else (B,)
    y = rng.integers(0, O, lead) if loss == "xent" else rng.standard_normal((*lead, O))
    x, y = x.astype(cfg.dtype), y if loss == "xent" else y.astype(cfg.dtype)
    return Case(cfg, lb.init_params(cfg, 3), x, y, lb.OptimizerConfig("adam", lr=0.01, clip_norm=0.5), 3)


@pytest.mark.parametrize("name", ["c", "numba"])
@pytest.mark.parametrize("parallel", ["auto", "units"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-H{s[1]}-L{s[2]}-{s[3]}")
def test_one_two_and_three_threads_give_the_same_bits(name, parallel, dtype, shape):
    backend = backend_with(name, parallel)
    check_thread_independent(backend, case_for(*shape, dtype))
    assert backend.last_plan == ("units" if parallel == "units" else "shards")


def test_the_check_catches_a_thread_dependent_backend():
    """A backend that rounds differently with more threads (as a per-thread reduction does) fails."""

    class PerThreadSums(lb.load_backend("numpy").__class__):
        name = "per-thread-sums"

        def _forward(self, cfg, params, x):
            out = super()._forward(cfg, params, x)
            return out + out * np.finfo(out.dtype).eps * (self.threads - 1)

    with pytest.raises(AssertionError, match="2 threads and 1 thread differ"):
        check_thread_independent(PerThreadSums(), case_for(4, 3, 1, "mse", False, False, "float64"))
