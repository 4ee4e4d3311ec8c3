"""lstmbench.fused and lstmbench.optim.step_scalars: the host side of a fused training step,
written once. A backend built from NumPy kernels on FusedBackend passes the conformance kit;
the step's scalars are the reference optimizer's; the workspace cache is reused and bounded."""

import math
from dataclasses import replace

import numpy as np
import pytest

import lstmbench as lb
from lstmbench import fused, optim
from lstmbench.fused import MAX_WORKSPACE_SHAPES, FusedBackend, WorkspaceCache
from lstmbench.optim import StepScalars, optimizer_step, step_scalars
from lstmbench.testing import CHECKS, run_conformance_case
from lstmbench_backends.reference import reference

# -- the step's scalars -----------------------------------------------------------------------


def test_step_scalars_by_hand():
    adam = lb.OptimizerConfig("adam", lr=0.75, betas=(0.5, 0.6), eps=1e-8, clip_norm=2.0)
    s = step_scalars(adam, 2)
    assert (s.kind, s.step, s.first_step, s.clip_norm) == ("adam", 2, False, 2.0)
    assert s.step_size == pytest.approx(0.75 / (1 - 0.25), rel=1e-15)  # lr / (1 - beta1^2)
    assert s.bias2_sqrt == pytest.approx(0.8, rel=1e-15)  # sqrt(1 - 0.6^2)
    assert (s.one_minus_beta1, s.one_minus_beta2) == (0.5, pytest.approx(0.4, rel=1e-15))
    sgd = step_scalars(lb.OptimizerConfig("sgd", lr=0.1, momentum=0.9), 1)
    assert (sgd.kind, sgd.first_step, sgd.lr, sgd.momentum, sgd.clip_norm) == ("sgd", True, 0.1, 0.9, None)
    assert sgd.clip_scale(1e9) == 1.0 and s.clip_scale(4.0) == pytest.approx(0.5)  # clip 2 of a norm of 4


def test_step_scalars_in_a_dtype_round_the_constants_alone():
    s = step_scalars(lb.OptimizerConfig("adam", lr=0.1, clip_norm=0.3), 3)
    low = s.in_dtype(np.float32)
    assert type(low.step_size) is np.float32 and low.step_size == np.float32(s.step_size)
    assert type(low.bias2_sqrt) is np.float32 and low.beta2 == np.float32(s.beta2)
    assert (low.step, low.first_step, low.kind) == (3, False, "adam")
    assert type(low.clip_norm) is float and low.clip_norm == 0.3  # float64, like the norm it is compared with


def test_the_reference_updates_with_the_scalars_of_each_step():
    """Adam on one parameter with a constant gradient 1/2, by hand: lr 0.75, betas (0.5, 0.6).
    Step 1: m = 1/4, v = 1/10, step size 1.5, sqrt(v)/sqrt(0.4) = 1/2: p = 1 - 0.75.
    Step 2: m = 3/8, v = 4/25, step size 1, sqrt(v)/0.8 = 1/2: p = 0.25 - 0.75."""
    opt = lb.OptimizerConfig("adam", lr=0.75, betas=(0.5, 0.6), eps=1e-300)
    params, grads = {"p": np.array([1.0])}, {"p": np.array([0.5])}
    state = lb.init_optimizer_state(opt, params)
    optimizer_step(opt, params, grads, state)
    assert params["p"][0] == pytest.approx(0.25, rel=1e-14)
    optimizer_step(opt, params, grads, state)
    assert params["p"][0] == pytest.approx(-0.5, rel=1e-14) and int(state["step"]) == 2


def test_the_reference_takes_its_constants_from_step_scalars(monkeypatch):
    """One place says how the constants are computed: change it, and the reference changes."""

    def half_the_step_size(opt, step, lr=None) -> StepScalars:
        scalars = step_scalars(opt, step, lr)
        return replace(scalars, step_size=scalars.step_size / 2)

    def adam_moves():
        opt = lb.OptimizerConfig("adam", lr=0.1)
        params = {"p": np.array([1.0])}
        optimizer_step(opt, params, {"p": np.array([0.5])}, lb.init_optimizer_state(opt, params))
        return 1.0 - params["p"][0]

    moved = adam_moves()
    monkeypatch.setattr(optim, "step_scalars", half_the_step_size)
    assert adam_moves() == pytest.approx(moved / 2, rel=1e-12)


# -- a fused backend from NumPy kernels ---------------------------------------------------------


class NumpyFused(FusedBackend):
    """The reference's gradients and a NumPy update on the flat vectors: the least a fused
    backend writes. It records which kernels ran, in order."""

    name = "test-numpy-fused"

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def _forward(self, cfg, params, x):
        return reference.forward_with_caches(cfg, params, x)[0]

    def _loss_and_grads(self, cfg, params, x, y):
        return reference.loss_and_grads(cfg, params, x, y)

    def _loss_and_gradient(self, state, x, y):
        self.calls.append("loss_and_gradient")
        with self.workspace(state.cfg, x):  # a workspace per shape, as a real kernel takes one
            loss, grads = reference.loss_and_grads(state.cfg, state.params, x, y)
        state.layout.flatten(grads, state.cfg.np_dtype, out=state.grad)
        return loss

    def _update(self, state, scalars):
        self.calls.append(f"update {scalars.step}")
        dt, g, theta = state.cfg.np_dtype, state.grad, state.theta
        if scalars.clip_norm is not None:
            g *= dt.type(scalars.clip_scale(math.sqrt(float(np.sum(np.square(g, dtype=np.float64))))))
        s = scalars.in_dtype(dt)
        if s.l2:
            g = g + s.l2 * theta
        if s.decay_factor != 1:
            theta *= s.decay_factor
        if s.kind == "sgd":
            if s.momentum > 0:
                buf = state.slots["momentum"]
                buf[...] = g if s.first_step else s.momentum * buf + g
                g = buf
            theta -= s.lr * g
        else:
            m, v = state.slots["m"], state.slots["v"]
            m[...] = s.beta1 * m + s.one_minus_beta1 * g
            v[...] = s.beta2 * v + s.one_minus_beta2 * g * g
            theta -= s.step_size * (m / (np.sqrt(v) / s.bias2_sqrt + s.eps))

    def _make_workspace(self, key):
        self.calls.append("make_workspace")
        return object()


class NumpyFusedWithItsOwnStep(NumpyFused):
    name = "test-numpy-fused-step"

    def _fused_step(self, state, x, y, scalars):
        self.calls.append("fused_step")
        return super()._fused_step(state, x, y, scalars)


class NumpyFusedOnADevice(NumpyFused):
    """Keeps its gradient where the host cannot see it (as a GPU does): the hook gets a copy,
    and what the hook made of it must be copied back before the update."""

    name = "test-numpy-fused-device"

    def _gradient_to_host(self, state):
        return state.grad.copy()

    def _gradient_from_host(self, state, host):
        state.grad[...] = host


@pytest.mark.parametrize("backend", [NumpyFused, NumpyFusedWithItsOwnStep, NumpyFusedOnADevice],
                         ids=lambda cls: cls.name)
@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_fused_backend_from_numpy_kernels_passes_the_kit(backend, check, dtype):
    run_conformance_case(backend(), check, dtype)


def _train(backend, steps, hook=None, opt=lb.OptimizerConfig("adam", lr=0.01, clip_norm=0.5), batch=4):
    cfg = lb.ModelConfig(2, 3, 1, dtype="float64")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((batch, 5, 2)), rng.standard_normal((batch, 1))
    state = backend.init_state(cfg, lb.init_params(cfg, seed=0), opt)
    state.gradient_hook = hook
    return state, [backend.train_step(state, x, y) for _ in range(steps)]


def test_the_fused_step_runs_without_a_hook_and_the_kernels_around_the_hook_with_one():
    backend = NumpyFusedWithItsOwnStep()
    _train(backend, 2)
    assert [c for c in backend.calls if c != "make_workspace"] == [
        "fused_step", "loss_and_gradient", "update 1", "fused_step", "loss_and_gradient", "update 2"]
    backend.calls.clear()
    seen = []
    _train(backend, 2, hook=lambda grad, loss: seen.append(len(backend.calls)) or loss)
    assert "fused_step" not in backend.calls
    # the hook ran after each gradient and before each update (clipping is in the update)
    assert [backend.calls[i - 1] for i in seen] == ["loss_and_gradient"] * 2
    assert [backend.calls[i] for i in seen] == ["update 1", "update 2"]


def test_the_step_counter_moves_only_when_the_step_has_run(monkeypatch):
    backend = NumpyFused()
    state, _ = _train(backend, 2)
    assert state.step == 2

    def fails(state, scalars):
        raise RuntimeError("planted")

    monkeypatch.setattr(backend, "_update", fails)
    with pytest.raises(RuntimeError, match="planted"):
        backend.train_step(state, np.zeros((4, 5, 2)), np.zeros((4, 1)))
    assert state.step == 2 and int(backend.get_optimizer_state(state)["step"]) == 2


def test_the_scalars_are_computed_once_per_step(monkeypatch):
    counted = []

    def counting(opt, step, lr=None):
        counted.append(step)
        return step_scalars(opt, step, lr)

    monkeypatch.setattr(fused, "step_scalars", counting)
    _train(NumpyFused(), 3)
    assert counted == [1, 2, 3]


# -- the workspace cache ------------------------------------------------------------------------


def test_the_cache_reuses_a_shapes_workspace_and_gives_concurrent_callers_their_own():
    cache = WorkspaceCache()
    with cache.lease("a", object) as first:
        pass
    with cache.lease("a", object) as again:
        assert again is first
        with cache.lease("a", object) as meanwhile:  # "a"'s one workspace is in use
            assert meanwhile is not first
    with cache.lease("b", object) as other:
        assert other is not first
    assert len(cache) == 2


def test_the_cache_is_bounded_and_a_failed_make_leaves_it_as_it_was():
    cache = WorkspaceCache(max_shapes=3)
    for shape in range(10):
        with cache.lease(shape, object):
            pass
        assert len(cache) <= 3

    def out_of_memory():
        raise MemoryError("planted")

    with pytest.raises(MemoryError), cache.lease("huge", out_of_memory):
        pass
    assert len(cache) == 1  # shape 9 alone: it arrived when 3 shapes were held, and emptied the cache


def test_a_fused_backend_makes_one_workspace_per_shape_and_keeps_a_few_shapes():
    backend = NumpyFused()
    for _ in range(3):
        _train(backend, 2, batch=4)
        _train(backend, 2, batch=3)  # the last, partial batch of an epoch
    assert backend.calls.count("make_workspace") == 2
    for batch in range(1, 2 * MAX_WORKSPACE_SHAPES):
        _train(backend, 1, batch=batch)
    assert len(backend.workspaces) <= MAX_WORKSPACE_SHAPES
