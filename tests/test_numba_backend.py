"""The rule by which the Numba backend shares a step between threads: batch shards, or hidden
units for a batch of few rows. The kit runs on its default from tests/test_conformance.py like
on every registered backend, and on the hidden-unit plan from tests/test_hidden_units.py."""

import numpy as np
import pytest

import lstmbench as lb

pytest.importorskip("numba")
from lstmbench_backends.numba_cpu import UNITS_ROWS, NumbaThreads, Plan, work_plan  # noqa: E402


def units(B, H, itemsize, l2, parallel="auto"):
    return work_plan(parallel, B, H, itemsize, l2).units


def test_auto_shares_hidden_units_where_w_h_outgrows_l2_and_its_parts_do_not():
    l2 = 1 << 20  # 1 MiB, as on the Zen 5 it was measured on
    # float32 H=256: W_h is 1 MiB, a part of 2 is 512 KiB: units, up to UNITS_ROWS rows
    assert units(1, 256, 4, l2) and units(UNITS_ROWS, 256, 4, l2)
    assert work_plan("auto", 1, 256, 4, l2) == Plan(rows=1, parts=2)
    assert not units(UNITS_ROWS + 1, 256, 4, l2)
    assert not units(1, 128, 4, l2)  # W_h fits L2 already
    assert not units(1, 512, 4, l2)  # a part of two (2 MiB) does not fit either
    assert not units(1, 256, 8, l2)  # float64: a part of two is all of L2
    assert not units(1, 256, 4, 0)  # L2 unknown
    assert units(64, 8, 4, 0, "units") and not units(1, 256, 4, l2, "shards")
    with pytest.raises(ValueError, match="parallel"):
        work_plan("wavefront", 1, 256, 4, l2)


def test_batch_shards_depend_on_the_shape_alone():
    """The same shards for any thread count (there is no thread count to pass): at least two,
    of at most 64 rows."""
    assert work_plan("auto", 32, 32, 4, 0) == Plan(rows=16, parts=1)
    assert work_plan("auto", 100, 32, 4, 0) == Plan(rows=50, parts=1)
    assert work_plan("auto", 256, 512, 4, 0) == Plan(rows=64, parts=1)
    assert work_plan("auto", 2, 32, 8, 0) == Plan(rows=1, parts=1)
    assert work_plan("auto", 1, 32, 8, 0) == Plan(rows=1, parts=1)


def test_the_plan_run_is_reported():
    backend = NumbaThreads()
    backend.set_threads(2)
    cfg = lb.ModelConfig(1, 8, 1)
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.last_plan == "shards"  # H=8: W_h fits any L2
    backend.parallel = "units"
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.runtime_info()["parallel"] == "units: units last"


# -- dropout and weight decay (design.md sections 9 and 10) --------------------------------------


def _dropout_case(B, H, layers, m2m, lengths, dtype="float64", p=0.3):
    cfg = lb.ModelConfig(3, H, 2, layers, "mse", m2m, dtype, dropout=p)
    rng = np.random.default_rng(B * H + layers)
    T = 6
    x = rng.standard_normal((B, T, 3)).astype(dtype)
    y = rng.standard_normal((B, T, 2) if m2m else (B, 2)).astype(dtype)
    seq = {"lengths": rng.integers(1, T + 1, size=B)} if lengths else {}
    return cfg, lb.init_params(cfg, 1), x, y, seq


@pytest.mark.parametrize("parallel,B,H,layers", [("units", 3, 37, 3), ("shards", 70, 9, 2), ("shards", 5, 4, 1)])
@pytest.mark.parametrize("m2m", [False, True])
def test_dropout_matches_the_reference_with_the_same_bits_on_any_thread_count(parallel, B, H, layers, m2m):
    """Masks drawn in the kernels from the hash, on either plan: the reference's loss and
    gradients, with lengths (rows permuted over several shards) too, and the same bits on 1
    and 2 threads."""
    from lstmbench_backends.reference.reference import loss_and_grads

    from lstmbench.config import DropoutDraw

    backend = NumbaThreads()
    backend.parallel = parallel
    variants = [(False, 5), (False, 2**32 - 3)]  # a first row near 2^32: the element index wraps around
    if parallel == "shards":  # (the unit plan takes no lengths)
        variants.append((True, 5))
    for lengths, first_row in variants:
        cfg, params, x, y, seq = _dropout_case(B, H, layers, m2m, lengths)
        draw = DropoutDraw(seed=11, step=4, first_row=first_row)
        runs = []
        for threads in (1, 2):
            backend.set_threads(threads)
            runs.append(backend.loss_and_grads(cfg, params, x, y, dropout=draw, **seq))
            assert backend.last_plan == parallel
        (loss, grads), (loss2, grads2) = runs
        assert loss == loss2 and all(np.array_equal(grads[k], grads2[k]) for k in grads)
        ref_loss, ref_grads = loss_and_grads(cfg, params, x, y, dropout=draw, **seq)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        for k, expected in ref_grads.items():
            np.testing.assert_allclose(grads[k], expected, rtol=1e-10, atol=1e-13, err_msg=k)
        no_dropout = lb.ModelConfig(**{**cfg.to_dict(), "dropout": 0.0})
        assert backend.loss_and_grads(no_dropout, params, x, y, **seq)[0] != loss  # the masks did something


@pytest.mark.parametrize("kind,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0), ("adamw", 0.0)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weight_decay_update_is_the_reference_s(kind, momentum, dtype):
    """The update kernels with weight decay (L2 for SGD and Adam, decoupled for AdamW), clipping
    and a scheduled learning rate: lstmbench.optim.optimizer_step's numbers over three steps."""
    from lstmbench.layout import Layout
    from lstmbench.optim import init_optimizer_state, optimizer_step, step_scalars

    cfg = lb.ModelConfig(3, 5, 2, 2, dtype=dtype)
    opt = lb.OptimizerConfig(kind, lr=0.05, momentum=momentum, clip_norm=1.0, weight_decay=0.1)
    params = lb.init_params(cfg, 3)
    backend = NumbaThreads()
    backend.set_threads(2)
    state = backend.init_state(cfg, params, opt)
    ref_params = {k: v.astype(dtype) for k, v in params.items()}
    ref_state = init_optimizer_state(opt, ref_params)
    layout, rng = Layout.of(cfg), np.random.default_rng(0)
    for step in (1, 2, 3):
        lr = opt.lr * (0.5 + 0.2 * step)  # a schedule's rate, not opt.lr
        state.grad[:] = rng.standard_normal(layout.size).astype(dtype)
        grads = {k: v.copy() for k, v in layout.views(state.grad).items()}
        backend._update(state, step_scalars(opt, step, lr))
        state.opt_state["step"] = np.array(step, dtype=np.int64)
        optimizer_step(opt, ref_params, grads, ref_state, lr)
    got = backend.get_params(state)
    # not bit for bit: the clipping norm is summed in another order
    rtol, atol = (1e-13, 1e-15) if dtype == "float64" else (2e-6, 1e-7)
    for k, expected in ref_params.items():
        np.testing.assert_allclose(got[k], expected, rtol=rtol, atol=atol, err_msg=k)


def test_the_kernels_hash_is_fmix32_on_uint32():
    """numba widens uint32 arithmetic: the kernel's fmix32 must still wrap at 32 bits."""
    from lstmbench_backends.numba_cpu import kernels

    from lstmbench.config import fmix32

    values = [0, 1, 0x9E3779B9, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, *np.random.default_rng(0).integers(0, 2**32, 50)]
    assert [int(kernels.fmix32(np.uint64(v))) for v in values] == [fmix32(int(v)) for v in values]
