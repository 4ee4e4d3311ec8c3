"""State across calls and sequences of different lengths (design.md section 8), in the reference:
against torch.nn.LSTM with (h0, c0) and packed sequences, against central finite differences,
padding that changes nothing, and the protocol's checks of lengths and initial states."""

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.errors import DataError, DTypeError, NonFiniteError, ShapeError, UnsupportedError
from lstmbench_backends.reference.reference import loss_and_grads

CONFIGS = [
    dict(input_size=3, hidden_size=5, output_size=2, num_layers=1, loss="mse", many_to_many=False),
    dict(input_size=2, hidden_size=4, output_size=3, num_layers=2, loss="mse", many_to_many=True),
    dict(input_size=3, hidden_size=4, output_size=4, num_layers=2, loss="xent", many_to_many=False),
    dict(input_size=4, hidden_size=3, output_size=5, num_layers=3, loss="xent", many_to_many=True),
]
IDS = [f"{s['loss']}-L{s['num_layers']}-m2m{s['many_to_many']}" for s in CONFIGS]


def make_case(spec, seed=0, B=5, T=7, dtype="float64"):
    """A batch with lengths from 1 to T (unsorted), padding filled with large values, and a
    nonzero initial state."""
    cfg = lb.ModelConfig(**spec, dtype=dtype)
    rng = np.random.default_rng(seed)
    params = {k: 2.0 * v for k, v in lb.init_params(cfg, seed).items()}  # some gates saturate
    lengths = np.array([T, 1, *rng.integers(1, T + 1, B - 2)], dtype=np.int64)
    rng.shuffle(lengths)
    x = rng.standard_normal((B, T, cfg.input_size))
    pad = np.arange(T)[None, :] >= lengths[:, None]
    x[pad] = 1e6 * rng.standard_normal((int(pad.sum()), cfg.input_size))
    lead = (B, T) if cfg.many_to_many else (B,)
    y = rng.standard_normal(lead + (cfg.output_size,)) if cfg.loss == "mse" else rng.integers(0, cfg.output_size, lead)
    state = tuple(0.5 * rng.standard_normal((cfg.num_layers, B, cfg.hidden_size)) for _ in range(2))
    return cfg, params, x.astype(cfg.dtype), y, lengths, tuple(s.astype(cfg.dtype) for s in state)


def torch_run(cfg, params, x, y, lengths, state):
    """torch.nn.LSTM on packed sequences (enforce_sorted=False) from (h0, c0): outputs (zeros at
    padded steps), final state, mean loss over valid terms, gradients."""
    torch = pytest.importorskip("torch", reason="torch is not installed (CI installs torch==2.13.0)")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True).double()
    linear = torch.nn.Linear(cfg.hidden_size, cfg.output_size).double()
    lb.load_into_torch(params, cfg, lstm, linear)
    packed = pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed, tuple(torch.from_numpy(s) for s in state))
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    if cfg.many_to_many:
        valid = torch.from_numpy(np.arange(x.shape[1])[None, :] < lengths[:, None])
        y_hat = linear(out) * valid[..., None]  # zeros at padded steps
        picked, targets = y_hat[valid], torch.from_numpy(y)[valid]
    else:
        y_hat = linear(h_n[-1])  # the top layer's state after each row's own last step
        picked, targets = y_hat, torch.from_numpy(y)
    loss = (torch.nn.functional.mse_loss(picked, targets) if cfg.loss == "mse"
            else torch.nn.functional.cross_entropy(picked, targets))
    loss.backward()
    grads = {"head.W": linear.weight.grad.numpy().T, "head.b": linear.bias.grad.numpy()}
    for k in range(cfg.num_layers):
        grads[f"l{k}.W_x"] = getattr(lstm, f"weight_ih_l{k}").grad.numpy().T
        grads[f"l{k}.W_h"] = getattr(lstm, f"weight_hh_l{k}").grad.numpy().T
        grads[f"l{k}.b"] = getattr(lstm, f"bias_ih_l{k}").grad.numpy()
    return y_hat.detach().numpy(), (h_n.detach().numpy(), c_n.detach().numpy()), float(loss.detach()), grads


def relative(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("spec", CONFIGS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_state_and_lengths_match_torch_packed_sequences_float64(spec, seed):
    cfg, params, x, y, lengths, state = make_case(spec, seed)
    t_out, t_state, t_loss, t_grads = torch_run(cfg, params, x, y, lengths, state)
    ref = lb.get_backend("numpy")
    out, (h_n, c_n) = ref.forward(cfg, params, x, lengths=lengths, initial_state=state, return_state=True)
    loss, grads = ref.loss_and_grads(cfg, params, x, y, lengths=lengths, initial_state=state)
    assert relative(out, t_out) <= 1e-10
    assert relative(h_n, t_state[0]) <= 1e-10 and relative(c_n, t_state[1]) <= 1e-10
    assert abs(loss - t_loss) <= 1e-10 * abs(t_loss)
    for name, g in t_grads.items():
        assert relative(grads[name], g) <= 1e-10, f"{name}: {relative(grads[name], g):.2e} from torch"


@pytest.mark.parametrize("spec", CONFIGS[1:2] + CONFIGS[3:], ids=[IDS[1], IDS[3]])
def test_gradients_with_lengths_and_state_match_finite_differences(spec):
    cfg, params, x, y, lengths, state = make_case(spec, B=3, T=4)
    _, grads = loss_and_grads(cfg, params, x, y, lengths, state)
    h = 1e-5
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            old = value[idx]
            value[idx] = old + h
            up, _ = loss_and_grads(cfg, params, x, y, lengths, state)
            value[idx] = old - h
            down, _ = loss_and_grads(cfg, params, x, y, lengths, state)
            value[idx] = old
            numeric[idx] = (up - down) / (2 * h)
        assert relative(grads[name], numeric) <= 1e-6, name


@pytest.mark.parametrize("spec", CONFIGS, ids=IDS)
def test_padding_changes_nothing_and_full_lengths_change_nothing(spec):
    cfg, params, x, y, lengths, state = make_case(spec)
    ref = lb.get_backend("numpy")
    other = x.copy()
    pad = np.arange(x.shape[1])[None, :] >= lengths[:, None]
    other[pad] = -other[pad] * 3.0  # different padding, as large
    y2 = y.copy()
    if cfg.many_to_many:
        y2[pad] = 0 if cfg.loss == "xent" else 1e3  # padded targets count for nothing either
    a = ref.loss_and_grads(cfg, params, x, y, lengths=lengths, initial_state=state)
    b = ref.loss_and_grads(cfg, params, other, y2, lengths=lengths, initial_state=state)
    assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    # every row at full length is the same as no lengths at all
    full = np.full(len(x), x.shape[1])
    plain = ref.loss_and_grads(cfg, params, x, y)
    same = ref.loss_and_grads(cfg, params, x, y, lengths=full)
    assert plain[0] == same[0] and all(np.array_equal(plain[1][k], same[1][k]) for k in plain[1])


def test_a_row_with_lengths_is_the_row_alone_cut_to_its_length():
    cfg, params, x, _, lengths, state = make_case(CONFIGS[0])
    ref = lb.get_backend("numpy")
    out, (h_n, c_n) = ref.forward(cfg, params, x, lengths=lengths, initial_state=state, return_state=True)
    for b, n in enumerate(lengths):
        alone = tuple(s[:, b : b + 1] for s in state)
        o, (h, c) = ref.forward(cfg, params, x[b : b + 1, :n], initial_state=alone, return_state=True)
        np.testing.assert_allclose(out[b : b + 1], o, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(h_n[:, b : b + 1], h, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(c_n[:, b : b + 1], c, rtol=1e-13, atol=1e-15)


def test_the_final_state_continues_a_sequence():
    """Two calls, the second from the first's final state, equal one call over both halves."""
    cfg, params, x, _, _, _ = make_case(CONFIGS[1])
    ref = lb.get_backend("numpy")
    whole, whole_state = ref.forward(cfg, params, x, return_state=True)
    first, state = ref.forward(cfg, params, x[:, :3], return_state=True)
    second, end = ref.forward(cfg, params, x[:, 3:], initial_state=state, return_state=True)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-13, atol=1e-15)
    for a, b in zip(end, whole_state):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


BAD = [
    (dict(lengths=[3, 3, 3, 3, 3]), DTypeError, "lengths must be a numpy array"),
    (dict(lengths=np.full(5, 3.0)), DTypeError, "lengths must hold integers"),
    (dict(lengths=np.full(4, 3)), ShapeError, "lengths has shape (4,)"),
    (dict(lengths=np.array([3, 0, 3, 3, 3])), DataError, "lengths must lie in [1, 7] (the steps of x), got 0 for row 1"),
    (dict(lengths=np.array([3, 3, 8, 3, 3])), DataError, "got 8 for row 2"),
    (dict(initial_state=np.zeros((2, 5, 4))), ShapeError, "initial_state must be a pair (h0, c0)"),
    (dict(initial_state=(np.zeros((2, 5, 4)), np.zeros((1, 5, 4)))), ShapeError, "initial_state c0 has shape (1, 5, 4)"),
    (dict(initial_state=(np.zeros((2, 5, 4), np.float32),) * 2), DTypeError, "initial_state h0 has dtype float32"),
    (dict(initial_state=(np.full((2, 5, 4), np.nan), np.zeros((2, 5, 4)))), NonFiniteError, "initial_state h0 contains 40"),
]


@pytest.mark.parametrize("bad,error,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_lengths_and_states_are_named(bad, error, message):
    cfg, params, x, y, _, _ = make_case(CONFIGS[1])
    ref = lb.get_backend("numpy")
    for call in (lambda: ref.forward(cfg, params, x, **bad), lambda: ref.loss_and_grads(cfg, params, x, y, **bad)):
        with pytest.raises(error) as info:
            call()
        assert message in str(info.value)


class WithoutSequences(lb.Backend):
    """A plugin's backend from before lengths and state: the reference's math, no capability."""

    name = "plain"

    def _forward(self, cfg, params, x):
        return lb.get_backend("numpy").forward(cfg, params, x)

    def _loss_and_grads(self, cfg, params, x, y):
        return lb.get_backend("numpy").loss_and_grads(cfg, params, x, y)


def test_a_backend_without_them_refuses_them_by_name():
    cfg, params, x, y, lengths, state = make_case(CONFIGS[0])
    backend = WithoutSequences()
    with pytest.raises(UnsupportedError, match="backend 'plain' does not take lengths or initial state yet"):
        backend.loss_and_grads(cfg, params, x, y, lengths=lengths, initial_state=state)
    with pytest.raises(UnsupportedError, match="does not take return state"):
        backend.forward(cfg, params, x, return_state=True)


def test_training_steps_take_lengths_and_state():
    """The reference's (default) training step: the update from loss_and_grads with them."""
    cfg, params, x, y, lengths, state = make_case(CONFIGS[3])
    ref = lb.get_backend("numpy")
    opt = lb.OptimizerConfig("adam", lr=0.01)
    train = ref.init_state(cfg, params, opt)
    loss = ref.train_step(train, x, y, lengths=lengths, initial_state=state)
    expected, _ = ref.loss_and_grads(cfg, params, x, y, lengths=lengths, initial_state=state)
    assert loss == expected
    moved = ref.get_params(train)
    assert all(not np.array_equal(moved[k], params[k]) for k in params)


# -- the fast backends that take them ---------------------------------------------------------

FAST = ["numba", "c"]


def fast_backend(name):
    backend = lb.load_backend(name)
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)
    return backend


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("spec", CONFIGS, ids=IDS)
@pytest.mark.parametrize("B", [37, 70])  # several shards, rows of every length spread over them
def test_fast_backends_match_the_reference_with_lengths_and_state(name, spec, B):
    cfg, params, x, y, lengths, state = make_case(spec, seed=B, B=B, T=9)
    ref, fast = lb.get_backend("numpy"), fast_backend(name)
    out, h_c = ref.forward(cfg, params, x, lengths=lengths, initial_state=state, return_state=True)
    f_out, f_h_c = fast.forward(cfg, params, x, lengths=lengths, initial_state=state, return_state=True)
    assert relative(f_out, out) <= 1e-10
    assert relative(f_h_c[0], h_c[0]) <= 1e-10 and relative(f_h_c[1], h_c[1]) <= 1e-10
    loss, grads = ref.loss_and_grads(cfg, params, x, y, lengths=lengths, initial_state=state)
    f_loss, f_grads = fast.loss_and_grads(cfg, params, x, y, lengths=lengths, initial_state=state)
    assert abs(f_loss - loss) <= 1e-10 * abs(loss)
    for k, g in grads.items():
        assert relative(f_grads[k], g) <= 1e-10, k


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lengths_and_state_give_the_same_bits_on_any_thread_count(name, dtype):
    from lstmbench.testing.checks import check_thread_independent
    from lstmbench.testing import Case

    cfg, params, x, y, lengths, state = make_case(CONFIGS[3], seed=3, B=37, T=6, dtype=dtype)
    backend = fast_backend(name)
    case = Case(cfg, params, x, y, lb.OptimizerConfig("adam", lr=0.01), 2, lengths, state)

    class WithSequences:  # the kit's check, on calls that carry the case's lengths and state
        def __getattr__(self, attr):
            method = getattr(backend, attr)
            if attr in ("forward", "loss_and_grads", "train_step"):
                return lambda *a, **k: method(*a, **k, **case.sequence_args())
            return method

    check_thread_independent(WithSequences(), case)
