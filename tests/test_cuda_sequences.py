"""The CUDA backend with lengths and an initial/final state (design.md section 8), in Numba's
CUDA simulator (tests/conftest.py sets it up; see tests/test_cuda_backend.py): against the
NumPy reference in float64, padding that changes no bit, the packed layout (the products run
over the steps rows take, nothing more), several recurrence blocks that end at different
steps, bit-identical repeats, and a state carried on the device (return_state) round trip.

The conformance kit's ``sequences`` check runs on it in tests/test_cuda_backend.py; these
tests add shapes the kit's tiny models do not reach (two blocks of 8 rows) and what only the
backend's own methods show (device arrays, launch sizes)."""

from __future__ import annotations


import numpy as np
import pytest

import lstmbench as lb
from lstmbench.bench import workloads
from lstmbench.errors import DTypeError, ShapeError
from lstmbench.optim import step_scalars

from lstmbench_backends.numba_cuda import NumbaCuda, Rows

TOL = 1e-10  # float64 against the reference, relative to the largest value (as the kit's float64)
PADDING = 1e6  # the kit's scale of padding values
ADAM = lb.OptimizerConfig("adam", lr=1e-2, clip_norm=0.05)


pytestmark = pytest.mark.usefixtures("quick_thread_switches")  # tests/conftest.py


@pytest.fixture
def backend(cuda_backend) -> NumbaCuda:
    return cuda_backend


REFERENCE = lb.load_backend("numpy")


def lengths_of(kind: str, B: int, T: int, rng) -> np.ndarray:
    if kind == "random":
        return rng.integers(1, T + 1, B)
    if kind == "all T":
        return np.full(B, T)
    if kind == "all 1":
        return np.ones(B, np.int64)
    return rng.permutation(np.resize(np.array([1, T, max(1, T // 2)]), B))  # a mix


def make(loss, many_to_many, layers, B=5, T=4, H=3, dtype="float64", kind="random", state=True, seed=0):
    """(cfg, params, x, y, sequences): padding in x (and y) filled with large values."""
    cfg = lb.ModelConfig(2, H, 3, layers, loss, many_to_many, dtype)
    x, y = workloads.bench_batch(cfg, B, T, seed)
    rng = np.random.default_rng(seed)
    lengths = lengths_of(kind, B, T, rng).astype(np.int64)
    sequences = {"lengths": lengths}
    if state:
        sequences["initial_state"] = tuple((0.5 * rng.standard_normal((layers, B, H))).astype(dtype) for _ in "hc")
    return cfg, lb.init_params(cfg, seed), *repad(cfg, x, y, lengths, seed + 1), sequences


def repad(cfg, x, y, lengths, seed):
    """x and y with their padded steps filled with new large values."""
    rng = np.random.default_rng(seed)
    pad = np.arange(x.shape[1])[None, :] >= lengths[:, None]
    x = x.copy()
    x[pad] = PADDING * rng.standard_normal((int(pad.sum()), x.shape[2]))
    y = y.copy()
    if cfg.many_to_many and cfg.loss == "mse":
        y[pad] = PADDING * rng.standard_normal((int(pad.sum()), y.shape[2]))
    elif cfg.many_to_many:
        y[pad] = rng.integers(0, cfg.output_size, int(pad.sum()))
    return x, y


def assert_near(what, got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(got - expected).max(initial=0.0))
    assert err <= TOL * scale, f"{what}: off by {err:.3g}"


def assert_like_reference(backend, cfg, params, x, y, sequences):
    out, (h_n, c_n) = backend.forward(cfg, params, x, return_state=True, **sequences)
    ref_out, (ref_h, ref_c) = REFERENCE.forward(cfg, params, x, return_state=True, **sequences)
    assert_near("forward output", out, ref_out)
    if cfg.many_to_many:  # zeros at padded steps, exactly (torch's pad_packed_sequence)
        pad = np.arange(x.shape[1])[None, :] >= sequences["lengths"][:, None]
        assert np.all(out[pad] == 0)
    assert_near("h_n", h_n, ref_h)
    assert_near("c_n", c_n, ref_c)
    loss, grads = backend.loss_and_grads(cfg, params, x, y, **sequences)
    ref_loss, ref_grads = REFERENCE.loss_and_grads(cfg, params, x, y, **sequences)
    assert_near("loss", loss, ref_loss)
    for name in ref_grads:
        assert_near(f"gradient of {name}", grads[name], ref_grads[name])


# -- against the reference -------------------------------------------------------------------


@pytest.mark.parametrize("loss,many_to_many,layers,kind,state", [
    ("mse", False, 1, "random", True),
    ("mse", True, 2, "mix", True),
    ("xent", True, 1, "random", False),
    ("xent", False, 2, "all 1", True),
    ("mse", True, 1, "all T", True),
    ("xent", True, 2, "all 1", False),
    ("mse", False, 2, "mix", False),
])
def test_matches_the_reference(backend, loss, many_to_many, layers, kind, state):
    assert_like_reference(backend, *make(loss, many_to_many, layers, kind=kind, state=state))


@pytest.mark.parametrize("loss,many_to_many", [("xent", True), ("mse", False)])
def test_blocks_that_end_at_different_steps(backend, loss, many_to_many):
    """B=11, H=16: several recurrence blocks; sorted longest first, the last block's rows (the
    shortest, lengths 1 and 2) end long before the first block's (T=6)."""
    cfg, params, x, y, sequences = make(loss, many_to_many, 2, B=11, T=6, H=16, seed=3)
    sequences["lengths"] = np.array([6, 1, 5, 2, 6, 3, 4, 1, 5, 3, 4], np.int64)
    x, y = repad(cfg, x, y, sequences["lengths"], 4)
    assert_like_reference(backend, cfg, params, x, y, sequences)
    with backend.workspace(cfg, x, True) as ws:
        sweep = ws.plan.forward
    assert sweep.blocks >= 2 and ws.plan.backward.blocks >= 2
    assert sorted(sequences["lengths"], reverse=True)[(sweep.blocks - 1) * sweep.rows] < 6  # the last block's longest


# -- padding, determinism, the full-length path --------------------------------------------------


@pytest.mark.parametrize("loss,many_to_many", [("mse", True), ("xent", False)])
def test_padding_changes_no_bit(backend, loss, many_to_many):
    cfg, params, x, y, sequences = make(loss, many_to_many, 2, B=6, T=5)
    runs = []
    for seed in (10, 11):
        x2, y2 = repad(cfg, x, y, sequences["lengths"], seed)
        out, state = backend.forward(cfg, params, x2, return_state=True, **sequences)
        runs.append((out, *state, *backend.loss_and_grads(cfg, params, x2, y2, **sequences)))
    (out_a, h_a, c_a, loss_a, g_a), (out_b, h_b, c_b, loss_b, g_b) = runs
    assert loss_a == loss_b
    for a, b in [(out_a, out_b), (h_a, h_b), (c_a, c_b), *((g_a[k], g_b[k]) for k in g_a)]:
        assert np.array_equal(a, b)


def test_float64_repeats_bit_for_bit(backend):
    cfg, params, x, y, sequences = make("mse", True, 2, B=6, T=5)
    runs = []
    for _ in range(2):
        state = backend.init_state(cfg, params, ADAM)
        losses = [backend.train_step(state, x, y, **sequences) for _ in range(2)]
        runs.append((losses, backend.get_params(state)))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_full_lengths_and_a_zero_state_give_the_bits_of_neither(backend):
    """Every length T takes the full-batch path; a zero initial state adds exact zeros; and a
    call without a state after one with a state (the same workspace) starts from zeros again."""
    cfg, params, x, y, sequences = make("xent", True, 2, B=5, T=4)
    plain = backend.loss_and_grads(cfg, params, x, y)
    zero = tuple(np.zeros((2, 5, 3)) for _ in "hc")
    for more in ({"lengths": np.full(5, 4)}, {"initial_state": zero}):
        loss, grads = backend.loss_and_grads(cfg, params, x, y, **more)
        assert loss == plain[0] and all(np.array_equal(grads[k], plain[1][k]) for k in grads), more
    packed = backend.loss_and_grads(cfg, params, x, y, lengths=sequences["lengths"])
    for more in ({}, {"lengths": sequences["lengths"]}):  # each workspace held a state last
        backend.loss_and_grads(cfg, params, x, y, **{**more, "initial_state": sequences["initial_state"]})
        loss, grads = backend.loss_and_grads(cfg, params, x, y, **more)
        expected = packed if more else plain
        assert loss == expected[0] and all(np.array_equal(grads[k], expected[1][k]) for k in grads), more


# -- the packed layout: padded steps cost nothing ----------------------------------------------


def launched(backend):
    calls = []
    launch = backend._launch

    def record(kernel, grid, threads, shared, *args):
        calls.append((kernel.name, grid, args))
        launch(kernel, grid, threads, shared, *args)

    backend._launch = record
    return calls


def test_products_run_over_the_steps_rows_take(backend):
    """With lengths every product's row count (M of x @ W_x and of the head, K of dW_x and
    dW_h) is the sum of the lengths, not T*B: padded steps are in no buffer."""
    cfg, params, x, y, sequences = make("mse", True, 2, B=5, T=6, kind="random")
    calls = launched(backend)
    backend.loss_and_grads(cfg, params, x, y, **sequences)
    n = int(sequences["lengths"].sum())
    assert n < 5 * 6
    gemm_sizes = [args[11:14] for name, _, args in calls if name == "gemm"]  # (M, N, K)
    G, H, O = 4 * 3, 3, 3
    assert gemm_sizes[:2] == [(n, G, 2), (n, G, H)]  # x @ W_x of both layers
    assert gemm_sizes[2] == (n, O, H)  # the head
    assert gemm_sizes.count((H, G, n)) == 3  # dW_x of layer 1, dW_h of both layers
    rows = Rows.packed_by(5, 6, 8, sequences["lengths"])
    assert rows.n_rows == n and list(rows.seq[8:15]) == [0, *np.cumsum((np.arange(6)[:, None] <
                                                                        sequences["lengths"][None, :]).sum(1))]


# -- a state carried on the device ---------------------------------------------------------------


@pytest.mark.parametrize("with_lengths", [True, False])
def test_return_state_gives_device_arrays_that_round_trip(backend, with_lengths):
    """_fused_step / _loss_and_gradient with return_state=True: (loss, (h_n, c_n)) with device
    arrays (L, B, H) in the batch's order, equal to the reference's final state; fed back as
    the next step's initial_state they give the bits their host copies give."""
    cfg, params, x, y, sequences = make("mse", True, 2, B=6, T=5)
    if not with_lengths:
        del sequences["lengths"]
    lengths = sequences.get("lengths")
    expected = REFERENCE.forward(cfg, params, x, return_state=True, **sequences)[1]
    runs = []
    for carry_on_device in (True, False):
        state = backend.init_state(cfg, params, ADAM)
        loss, carried = backend._fused_step(state, x, y, step_scalars(ADAM, 1), return_state=True, **sequences)
        assert loss == pytest.approx(REFERENCE.loss_and_grads(cfg, params, x, y, **sequences)[0], rel=1e-12)
        for part, want in zip(carried, expected):
            assert not isinstance(part, np.ndarray) and hasattr(part, "copy_to_host")
            assert tuple(part.shape) == (2, 6, 3) and part.dtype == np.float64
            assert_near("carried state", part.copy_to_host(), want)
        host = backend._carried_to_host(state, carried)
        assert all(isinstance(h, np.ndarray) for h in host)
        back = backend._carried_from_host(state, host)
        assert all(np.array_equal(b.copy_to_host(), h) for b, h in zip(back, host))
        more = {} if lengths is None else {"lengths": lengths}
        loss2, carried2 = backend._loss_and_gradient(state, x, y, initial_state=carried if carry_on_device else host,
                                                     return_state=True, **more)
        runs.append((loss2, backend._carried_to_host(state, carried2), state.grad.copy_to_host()))
    (loss_a, carried_a, grad_a), (loss_b, carried_b, grad_b) = runs
    assert loss_a == loss_b and np.array_equal(grad_a, grad_b)
    assert all(np.array_equal(a, b) for a, b in zip(carried_a, carried_b))


def test_carrying_steps_through_the_protocol(backend):
    """train_step(carry_state=True) keeps the device pair; carried_state copies it out."""
    cfg, params, x, y, sequences = make("xent", True, 1, B=4, T=3)
    state = backend.init_state(cfg, params, ADAM)
    backend.train_step(state, x, y, lengths=sequences["lengths"], carry_state=True)
    assert not isinstance(state.carried[0], np.ndarray)
    h, c = backend.carried_state(state)
    expected = REFERENCE.forward(cfg, params, x, return_state=True, lengths=sequences["lengths"])[1]
    assert_near("carried h", h, expected[0])
    assert_near("carried c", c, expected[1])


def test_a_bad_device_state_is_refused(backend):
    from numba import cuda

    cfg, params, x, y, _ = make("mse", False, 1, B=3, T=2)
    state = backend.init_state(cfg, params, ADAM)
    wrong_shape = (cuda.to_device(np.zeros((1, 2, 3))), cuda.to_device(np.zeros((1, 2, 3))))
    with pytest.raises(ShapeError, match="initial_state on the device has shape"):
        backend._loss_and_gradient(state, x, y, initial_state=wrong_shape)
    wrong_dtype = tuple(cuda.to_device(np.zeros((1, 3, 3), np.float32)) for _ in "hc")
    with pytest.raises(DTypeError, match="initial_state on the device has dtype"):
        backend._loss_and_gradient(state, x, y, initial_state=wrong_dtype)


def test_a_stepper_gives_the_outputs_of_one_forward_pass(backend):
    """Generation's Stepper: forward passes that each start from the state the last ended with."""
    cfg, params, x, _, _ = make("xent", True, 2, B=2, T=5)
    whole, (h, c) = backend.forward(cfg, params, x, return_state=True)
    step = backend.stepper(cfg, params)
    parts = np.concatenate([step(x[:, :2]), step(x[:, 2:3]), step(x[:, 3:])], axis=1)
    assert_near("stepped outputs", parts, whole)
    assert_near("stepped h", step.state[0], h)
    assert_near("stepped c", step.state[1], c)
