"""Core library: configs, parameters, optimizers, registry, torch exchange, FLOP model."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lstmbench as lb
from lstmbench import (
    BackendUnavailableError,
    ConfigError,
    DTypeError,
    LstmbenchError,
    ModelConfig,
    NonFiniteError,
    OptimizerConfig,
    ShapeError,
    UnknownBackendError,
)
from lstmbench.layout import Layout
from lstmbench.optim import clip_scale, global_norm, init_optimizer_state, optimizer_step
from lstmbench_backends.reference import NumpyReference


# --- ModelConfig ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("input_size", 0),
        ("input_size", -1),
        ("input_size", 2.0),
        ("input_size", "3"),
        ("input_size", True),
        ("hidden_size", 0),
        ("hidden_size", None),
        ("output_size", 0),
        ("num_layers", 0),
        ("num_layers", 1.5),
    ],
)
def test_model_config_rejects_bad_sizes(field, value):
    kwargs = dict(input_size=1, hidden_size=4, output_size=1)
    kwargs[field] = value
    with pytest.raises(ConfigError, match=f"ModelConfig.{field} must be a positive integer"):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("loss", ["l1", "MSE", "", None])
def test_model_config_rejects_bad_loss(loss):
    with pytest.raises(ConfigError, match="ModelConfig.loss must be one of"):
        ModelConfig(1, 4, 1, loss=loss)


def test_model_config_xent_needs_two_classes():
    with pytest.raises(ConfigError, match=r"loss='xent' needs output_size >= 2"):
        ModelConfig(1, 4, 1, loss="xent")
    assert ModelConfig(1, 4, 2, loss="xent").output_size == 2


@pytest.mark.parametrize("dtype", ["float16", "int32", "banana", "f4,", object, np.complex128])
def test_model_config_rejects_bad_dtype(dtype):
    with pytest.raises(ConfigError, match="ModelConfig.dtype must be one of"):
        ModelConfig(1, 4, 1, dtype=dtype)


def test_model_config_errors_are_value_errors_and_lstmbench_errors():
    with pytest.raises(ValueError):
        ModelConfig(0, 4, 1)
    with pytest.raises(LstmbenchError):
        ModelConfig(1, 4, 1, loss="l1")


def test_model_config_normalizes():
    cfg = ModelConfig(np.int64(2), np.int32(3), 1, dtype=np.float32, many_to_many=1)
    assert cfg.input_size == 2 and type(cfg.input_size) is int
    assert type(cfg.hidden_size) is int
    assert cfg.dtype == "float32" and cfg.np_dtype == np.float32
    assert cfg.many_to_many is True
    assert ModelConfig(1, 2, 1, dtype=np.dtype("float64")).dtype == "float64"
    assert cfg == ModelConfig.from_dict(cfg.to_dict())
    with pytest.raises(ConfigError, match="not a ModelConfig"):
        ModelConfig.from_dict({"input_size": 1, "hidden_size": 2, "output_size": 1, "bogus": 3})


def test_param_shapes_order_and_sizes():
    cfg = ModelConfig(input_size=3, hidden_size=5, output_size=2, num_layers=3)
    shapes = cfg.param_shapes()
    assert list(shapes) == [
        "l0.W_x", "l0.W_h", "l0.b",
        "l1.W_x", "l1.W_h", "l1.b",
        "l2.W_x", "l2.W_h", "l2.b",
        "head.W", "head.b",
    ]
    assert shapes["l0.W_x"] == (3, 20)
    assert shapes["l1.W_x"] == shapes["l2.W_x"] == (5, 20)
    assert shapes["l0.W_h"] == shapes["l2.W_h"] == (5, 20)
    assert shapes["l1.b"] == (20,)
    assert shapes["head.W"] == (5, 2) and shapes["head.b"] == (2,)
    assert cfg.num_params() == (3 * 20 + 25 * 4 + 20) + 2 * (5 * 20 + 5 * 20 + 20) + 10 + 2


# --- parameters ----------------------------------------------------------------------


def test_init_params_deterministic_per_seed():
    cfg = ModelConfig(2, 6, 3, num_layers=2)
    a, b, c = lb.init_params(cfg, seed=7), lb.init_params(cfg, seed=7), lb.init_params(cfg, seed=8)
    assert list(a) == list(cfg.param_shapes())
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()
    assert not np.array_equal(a["l0.W_x"], c["l0.W_x"])
    assert not np.array_equal(a["l1.W_h"], c["l1.W_h"])
    # different tensors of one model are not copies of each other
    assert not np.array_equal(a["l0.W_h"], a["l1.W_h"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_init_params_bounds_biases_dtype(dtype):
    H = 16
    cfg = ModelConfig(3, H, 2, num_layers=2, dtype=dtype)
    params = lb.init_params(cfg, seed=3)
    bound = 1 / np.sqrt(H)
    for name, value in params.items():
        assert value.dtype == np.dtype(dtype), name
        assert value.shape == cfg.param_shapes()[name]
        if name.endswith(".b"):
            continue
        assert np.all(np.abs(value) <= bound), name
        # uniform over the whole interval, not a narrower one
        assert value.max() > 0.8 * bound and value.min() < -0.8 * bound, name
    for k in range(2):
        b = params[f"l{k}.b"]
        assert np.all(b[H : 2 * H] == 1.0)  # forget gate
        assert np.all(b[:H] == 0) and np.all(b[2 * H :] == 0)
    assert np.all(params["head.b"] == 0)
    lb.check_params(cfg, params)


def test_init_params_float32_is_the_float64_draw_rounded():
    c64, c32 = ModelConfig(2, 5, 1), ModelConfig(2, 5, 1, dtype="float32")
    p64, p32 = lb.init_params(c64, 11), lb.init_params(c32, 11)
    for k in p64:
        assert np.array_equal(p32[k], p64[k].astype(np.float32))


def _params():
    cfg = ModelConfig(2, 3, 1)
    return cfg, lb.init_params(cfg, 0)


def test_check_params_missing_and_extra_keys():
    cfg, p = _params()
    del p["l0.W_h"]
    with pytest.raises(ShapeError, match=r"missing \['l0.W_h'\]"):
        lb.check_params(cfg, p)
    cfg, p = _params()
    p["l1.W_x"] = np.zeros((3, 12))
    with pytest.raises(ShapeError, match=r"unexpected \['l1.W_x'\]"):
        lb.check_params(cfg, p)


def test_check_params_wrong_shape():
    cfg, p = _params()
    p["head.W"] = np.zeros((1, 3))
    with pytest.raises(ShapeError, match=r"params\['head.W'\] has shape \(1, 3\), expected \(3, 1\)"):
        lb.check_params(cfg, p)


def test_check_params_wrong_dtype_and_type():
    cfg, p = _params()
    p["l0.b"] = p["l0.b"].astype(np.float32)
    with pytest.raises(DTypeError, match=r"'l0.b'.*float32.*float64"):
        lb.check_params(cfg, p)
    cfg, p = _params()
    p["l0.b"] = p["l0.b"].tolist()
    with pytest.raises(DTypeError, match="must be a numpy array"):
        lb.check_params(cfg, p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_params_non_finite(bad):
    cfg, p = _params()
    p["l0.W_x"][1, 2] = bad
    with pytest.raises(NonFiniteError, match="l0.W_x"):
        lb.check_params(cfg, p, what="weights")


# --- OptimizerConfig -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kind="rmsprop"), "optimizer must be one of"),
        (dict(lr=0.0), "learning rate"),
        (dict(lr=-1e-3), "learning rate"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(lr=float("inf")), "learning rate"),
        (dict(kind="sgd", momentum=-0.1), "momentum"),
        (dict(kind="sgd", momentum=1.0), "momentum"),
        (dict(kind="sgd", momentum=float("nan")), "momentum"),
        (dict(betas=(1.0, 0.999)), "betas"),
        (dict(betas=(0.9, -0.1)), "betas"),
        (dict(eps=0.0), "eps"),
        (dict(eps=-1e-8), "eps"),
        (dict(clip_norm=0.0), "clip_norm"),
        (dict(clip_norm=-1.0), "clip_norm"),
        (dict(clip_norm=float("nan")), "clip_norm"),
        (dict(weight_decay=-0.01), "weight decay must be a finite number >= 0"),
        (dict(kind="adamw", weight_decay=float("inf")), "weight decay"),
        (dict(kind="adam", momentum=0.9), "momentum is SGD's"),
    ],
)
def test_optimizer_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        OptimizerConfig(**kwargs)




@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(lr=None), id="lr=None"),
        pytest.param(dict(betas=(0.9,)), id="one-beta"),
        pytest.param(dict(clip_norm="1"), id="clip_norm-str"),
    ],
)
def test_optimizer_config_wrong_types_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        OptimizerConfig(**kwargs)


def test_optimizer_config_round_trip():
    opt = OptimizerConfig("sgd", lr=0.1, momentum=0.9, clip_norm=2.0)
    assert OptimizerConfig.from_dict(opt.to_dict()) == opt
    adam = OptimizerConfig(betas=[0.8, 0.99])
    assert adam.betas == (0.8, 0.99)
    assert OptimizerConfig.from_dict(adam.to_dict()) == adam
    with pytest.raises(ConfigError, match="not an OptimizerConfig"):
        OptimizerConfig.from_dict({"kind": "adam", "nesterov": True})
    adamw = OptimizerConfig("adamw", weight_decay=0.01)
    assert OptimizerConfig.from_dict(adamw.to_dict()) == adamw


# --- optimizers ----------------------------------------------------------------------


def _random_problem(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    shapes = {"a": (4, 6), "b": (6,), "c": (3, 2, 2)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s) * rng.choice([0.01, 1.0, 5.0]) for k, s in shapes.items()}
             for _ in range(steps)]
    return params, grads


def _run_ours(opt, params, grads, lrs=None):
    params = {k: v.copy() for k, v in params.items()}
    state = init_optimizer_state(opt, params)
    for step, g in enumerate(grads):
        optimizer_step(opt, params, {k: v.copy() for k, v in g.items()}, state, None if lrs is None else lrs[step])
    return params, state


def _run_torch(opt, params, grads, lrs=None):
    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    adam_args = {"lr": opt.lr, "betas": opt.betas, "eps": opt.eps, "weight_decay": opt.weight_decay}
    if opt.kind == "adam":
        topt = torch.optim.Adam(list(tp.values()), **adam_args)
    elif opt.kind == "adamw":
        topt = torch.optim.AdamW(list(tp.values()), **adam_args)
    else:
        topt = torch.optim.SGD(list(tp.values()), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    for step, g in enumerate(grads):
        if lrs is not None:  # as a torch scheduler sets it
            topt.param_groups[0]["lr"] = lrs[step]
        for k, p in tp.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        if opt.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), opt.clip_norm)
        topt.step()
    return {k: p.detach().numpy() for k, p in tp.items()}, topt


def _assert_rel(actual, expected, rtol=1e-12):
    for k in expected:
        err = np.max(np.abs(actual[k] - expected[k]))
        scale = np.max(np.abs(expected[k]))
        assert err <= rtol * scale, (k, err, scale)


@pytest.mark.parametrize(
    "opt",
    [
        OptimizerConfig("adam", lr=1e-2),
        OptimizerConfig("adam", lr=3e-3, betas=(0.8, 0.99), eps=1e-6, clip_norm=1.0),
        OptimizerConfig("sgd", lr=0.1),
        OptimizerConfig("sgd", lr=0.05, momentum=0.9),
        OptimizerConfig("sgd", lr=0.05, momentum=0.5, clip_norm=0.5),
        OptimizerConfig("sgd", lr=0.05, clip_norm=100.0),  # never clips
        OptimizerConfig("sgd", lr=0.05, momentum=0.9, weight_decay=0.3, clip_norm=0.5),
        OptimizerConfig("sgd", lr=0.1, weight_decay=0.01),
        OptimizerConfig("adam", lr=1e-2, weight_decay=0.2, clip_norm=1.0),
        OptimizerConfig("adamw", lr=1e-2),  # no decay: Adam
        OptimizerConfig("adamw", lr=1e-2, weight_decay=0.5),
        OptimizerConfig("adamw", lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, clip_norm=1.0),
    ],
    ids=lambda o: f"{o.kind}-m{o.momentum}-clip{o.clip_norm}-wd{o.weight_decay}",
)
def test_optimizer_matches_torch(opt):
    pytest.importorskip("torch")
    params, grads = _random_problem(seed=1, steps=6)
    ours, state = _run_ours(opt, params, grads)
    theirs, topt = _run_torch(opt, params, grads)
    _assert_rel(ours, theirs)
    assert int(state["step"]) == 6
    # the optimizer state matches torch's buffers too
    torch_state = [topt.state[p] for p in topt.param_groups[0]["params"]]
    for name, ts in zip(params, torch_state, strict=True):
        if opt.kind != "sgd":
            _assert_rel({"m": state[f"m/{name}"]}, {"m": ts["exp_avg"].numpy()})
            _assert_rel({"v": state[f"v/{name}"]}, {"v": ts["exp_avg_sq"].numpy()})
        elif opt.momentum > 0:
            _assert_rel({"buf": state[f"momentum/{name}"]}, {"buf": ts["momentum_buffer"].numpy()})
    # and the test is sensitive: a different learning rate does not match
    other = OptimizerConfig(opt.kind, lr=opt.lr * 1.001, momentum=opt.momentum, betas=opt.betas,
                            eps=opt.eps, clip_norm=opt.clip_norm, weight_decay=opt.weight_decay)
    wrong, _ = _run_ours(other, params, grads)
    with pytest.raises(AssertionError):
        _assert_rel(wrong, theirs)
    if opt.weight_decay:  # and so is it to the decay: the same optimizer without it does not match
        undecayed, _ = _run_ours(OptimizerConfig(**{**opt.to_dict(), "betas": opt.betas, "weight_decay": 0.0}),
                                 params, grads)
        with pytest.raises(AssertionError):
            _assert_rel(undecayed, theirs)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_a_learning_rate_per_step_matches_torch(kind):
    """A schedule hands the optimizer one learning rate per step (design.md section 10); torch's
    schedulers set param_groups' lr before each step: the same parameters."""
    pytest.importorskip("torch")
    opt = OptimizerConfig(kind, lr=0.05, weight_decay=0.1, momentum=0.9 if kind == "sgd" else 0.0)
    params, grads = _random_problem(seed=3, steps=6)
    lrs = [0.05, 0.01, 0.2, 0.003, 0.05, 0.07]
    _assert_rel(_run_ours(opt, params, grads, lrs)[0], _run_torch(opt, params, grads, lrs)[0])
    with pytest.raises(AssertionError):
        _assert_rel(_run_ours(opt, params, grads)[0], _run_torch(opt, params, grads, lrs)[0])


def test_first_adam_step_by_hand():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    opt = OptimizerConfig("adam", lr=lr, betas=(b1, b2), eps=eps)
    p = {"w": np.array([1.0, -2.0, 0.5, 3.0])}
    g = {"w": np.array([0.5, -4.0, 1e-9, 0.0])}
    state = init_optimizer_state(opt, p)
    assert set(state) == {"step", "m/w", "v/w"}
    optimizer_step(opt, p, g, state)
    # step 1: m_hat = g, v_hat = g^2, so p -= lr * g / (|g| + eps)
    expected = np.array([1.0, -2.0, 0.5, 3.0]) - lr * g["w"] / (np.abs(g["w"]) + eps)
    np.testing.assert_allclose(p["w"], expected, rtol=1e-12, atol=0)
    assert p["w"][0] == pytest.approx(1.0 - lr, abs=1e-9)  # about a full lr step for a large gradient
    assert p["w"][3] == 3.0  # zero gradient: no move
    np.testing.assert_allclose(state["m/w"], (1 - b1) * g["w"], rtol=1e-15)
    np.testing.assert_allclose(state["v/w"], (1 - b2) * g["w"] ** 2, rtol=1e-15)
    assert int(state["step"]) == 1


def test_sgd_momentum_and_clipping_by_hand():
    opt = OptimizerConfig("sgd", lr=0.1, momentum=0.5, clip_norm=1.0)
    p = {"a": np.array([0.0, 0.0]), "b": np.array([1.0])}
    g = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}  # global norm 5
    assert global_norm(g) == 5.0
    scale = clip_scale(5.0, 1.0)
    assert scale == pytest.approx(1 / (5 + 1e-6), rel=1e-15)
    assert clip_scale(0.5, 1.0) == 1.0 and clip_scale(1e9, None) == 1.0
    state = init_optimizer_state(opt, p)
    optimizer_step(opt, p, g, state)
    np.testing.assert_allclose(p["a"], [-0.1 * 3 * scale, 0.0], rtol=1e-15)
    np.testing.assert_allclose(p["b"], [1.0 - 0.1 * 4 * scale], rtol=1e-15)
    optimizer_step(opt, p, g, state)  # buf = 0.5 * buf + g
    np.testing.assert_allclose(state["momentum/a"], [1.5 * 3 * scale, 0.0], rtol=1e-15)
    np.testing.assert_allclose(p["a"], [-0.1 * 3 * scale * 2.5, 0.0], rtol=1e-14)


def test_optimizer_state_slots_and_dtype():
    p32 = {"w": np.ones(3, np.float32)}
    assert set(init_optimizer_state(OptimizerConfig("sgd", lr=0.1), p32)) == {"step"}
    assert set(init_optimizer_state(OptimizerConfig("sgd", lr=0.1, momentum=0.9), p32)) == {"step", "momentum/w"}
    for opt in (OptimizerConfig("adam"), OptimizerConfig("sgd", lr=0.1, momentum=0.9, clip_norm=0.1)):
        p = {"w": np.ones(3, np.float32)}
        state = init_optimizer_state(opt, p)
        optimizer_step(opt, p, {"w": np.full(3, 2.0, np.float32)}, state)
        assert p["w"].dtype == np.float32
        assert all(v.dtype == np.float32 for k, v in state.items() if k != "step")
        assert np.all(p["w"] < 1.0)


# --- registry ------------------------------------------------------------------------


class _Dummy(lb.Backend):
    name = "test-core-dummy"
    description = "a dummy registered at run time"

    def _forward(self, cfg, params, x):
        return np.zeros((x.shape[0], cfg.output_size), cfg.dtype)


class _Unavailable(_Dummy):
    name = "test-core-unavailable"

    def availability(self):
        return False, "it needs a flux capacitor (install lstmbench[flux])"


@pytest.fixture
def registered():
    added = []

    def add(backend):
        lb.register_backend(backend)
        added.append(backend.name)
        return backend

    yield add
    for name in added:
        lb.unregister_backend(name)


def test_unknown_backend_lists_known_ones():
    with pytest.raises(UnknownBackendError) as info:
        lb.get_backend("nope")
    message = str(info.value)
    assert "'nope'" in message and "numpy" in message
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownBackendError):
        lb.load_backend("nope")


def test_numpy_backend_from_entry_point():
    be = lb.get_backend("numpy")
    assert be.name == "numpy"
    assert type(be).__module__.startswith("lstmbench_backends.reference")
    assert lb.get_backend("numpy") is be
    assert "numpy" in lb.backend_names()


def test_register_and_unregister(registered):
    assert _Dummy.name not in lb.backend_names()
    dummy = registered(_Dummy())
    assert _Dummy.name in lb.backend_names()
    assert lb.get_backend(_Dummy.name) is dummy
    info = {i.name: i for i in lb.list_backends()}[_Dummy.name]
    assert info.available and info.reason == "" and info.description == "a dummy registered at run time"
    lb.unregister_backend(_Dummy.name)
    assert _Dummy.name not in lb.backend_names()
    with pytest.raises(UnknownBackendError):
        lb.get_backend(_Dummy.name)
    lb.unregister_backend(_Dummy.name)  # twice is harmless


def test_register_rejects_non_backends():
    with pytest.raises(TypeError, match="lstmbench.Backend"):
        lb.register_backend(object())


def test_unavailable_backend(registered):
    registered(_Unavailable())
    with pytest.raises(BackendUnavailableError) as info:
        lb.get_backend(_Unavailable.name)
    assert "flux capacitor" in str(info.value) and _Unavailable.name in str(info.value)
    assert isinstance(lb.load_backend(_Unavailable.name), _Unavailable)  # loadable, just not runnable
    infos = {i.name: i for i in lb.list_backends()}
    assert not infos[_Unavailable.name].available
    assert infos[_Unavailable.name].reason == "it needs a flux capacitor (install lstmbench[flux])"
    assert infos["numpy"].available


def _fresh_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_import_is_cheap():
    out = _fresh_python(
        """
        import sys
        import lstmbench
        lstmbench.backend_names()
        heavy = ("numba", "torch", "lstmbench_backends", "matplotlib", "hypothesis")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    assert out == "[]"


def test_fresh_python_sees_numba_when_imported():
    """The check above can fail: importing numba does show up in sys.modules."""
    pytest.importorskip("numba")
    assert _fresh_python("import sys, numba; print('numba' in sys.modules)") == "True"


# --- torch exchange ------------------------------------------------------------------


def test_params_torch_round_trip():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = ModelConfig(input_size=3, hidden_size=5, output_size=2, num_layers=2)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True).double()
    head = torch.nn.Linear(5, 2).double()
    params = lb.params_from_torch(lstm, head, cfg)
    lb.check_params(cfg, params)
    sd = lstm.state_dict()
    assert np.array_equal(params["l1.W_h"], sd["weight_hh_l1"].numpy().T)
    assert np.array_equal(params["l0.b"], (sd["bias_ih_l0"] + sd["bias_hh_l0"]).numpy())
    assert np.array_equal(params["head.W"], head.weight.detach().numpy().T)

    # the layout is the one the reference computes with: same outputs as torch
    x = np.random.default_rng(0).standard_normal((4, 7, 3))
    with torch.no_grad():
        seq, _ = lstm(torch.from_numpy(x))
        expected = head(seq[:, -1]).numpy()
    got = lb.get_backend("numpy").forward(cfg, params, x)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)

    exported = lb.params_to_torch(params, cfg)
    assert set(exported) == set(sd) | {"head.weight", "head.bias"}
    assert np.all(exported["bias_hh_l0"] == 0)

    lstm2 = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True).double()
    head2 = torch.nn.Linear(5, 2).double()
    lb.load_into_torch(params, cfg, lstm2, head2)
    back = lb.params_from_torch(lstm2, head2, cfg)
    for k in params:
        assert np.array_equal(back[k], params[k]), k
    with torch.no_grad():
        seq2, _ = lstm2(torch.from_numpy(x))
        np.testing.assert_allclose(head2(seq2[:, -1]).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_params_from_torch_checks_modules():
    torch = pytest.importorskip("torch")
    cfg = ModelConfig(input_size=3, hidden_size=5, output_size=2, num_layers=2)
    with pytest.raises(ShapeError, match="batch_first"):
        lb.params_from_torch(torch.nn.LSTM(3, 5, num_layers=2), torch.nn.Linear(5, 2), cfg)
    with pytest.raises(ShapeError, match="config has"):
        lb.params_from_torch(torch.nn.LSTM(3, 5, num_layers=1, batch_first=True), torch.nn.Linear(5, 2), cfg)
    with pytest.raises(ShapeError, match="config has"):
        lb.params_from_torch(torch.nn.LSTM(3, 5, num_layers=2, batch_first=True), torch.nn.Linear(4, 2), cfg)


# --- FLOP model ----------------------------------------------------------------------


def test_train_step_flops_by_hand():
    cfg = ModelConfig(input_size=2, hidden_size=3, output_size=1, num_layers=2)
    B, T = 4, 5
    f = lb.train_step_flops(cfg, B, T, "adam")
    # layer 0 (D=2): fwd 5*2*4*12*(2+3) = 2400, bwd 5*2*4*12*(5+3) = 3840
    # layer 1 (D=3): fwd 5*2*4*12*(3+3) = 2880, bwd 5*2*4*12*(6+3+3) = 5760
    # head (once): fwd 2*4*3*1 = 24, bwd 48
    assert f.forward_matmul == 2400 + 2880 + 24
    assert f.backward_matmul == 3840 + 5760 + 48
    assert f.matmul == 5304 + 9648
    assert f.pointwise == 2 * 5 * 4 * 3 * (14 + 26)  # 4800
    assert cfg.num_params() == 160
    assert f.optimizer == 12 * 160
    assert f.total == 5304 + 9648 + 4800 + 1920

    sgd = lb.train_step_flops(cfg, B, T, "sgd")
    assert sgd.optimizer == 2 * 160 and sgd.matmul == f.matmul

    m2m = lb.train_step_flops(ModelConfig(2, 3, 1, num_layers=2, many_to_many=True), B, T)
    assert m2m.forward_matmul == 2400 + 2880 + 5 * 24
    assert m2m.backward_matmul == 3840 + 5760 + 5 * 48


# --- the gradient hook ---------------------------------------------------------------


class _IgnoresTheHook(lb.Backend):
    """A fused step that never calls the gradient hook."""

    name = "test-ignores-hook"

    def _forward(self, cfg, params, x):
        return lb.get_backend("numpy")._forward(cfg, params, x)

    def _loss_and_grads(self, cfg, params, x, y):
        return lb.get_backend("numpy")._loss_and_grads(cfg, params, x, y)

    def _train_step(self, state, x, y):
        loss, grads = self._loss_and_grads(state.cfg, state.params, x, y)
        optimizer_step(state.opt, state.params, grads, state.opt_state)
        return loss


class _UpdatesWithItsOwnGradient(_IgnoresTheHook):
    """Calls the hook on a copy, then updates with the gradient it had before."""

    name = "test-stale-gradient"

    def _train_step(self, state, x, y):
        loss, grads = self._loss_and_grads(state.cfg, state.params, x, y)
        layout = Layout.of(state.cfg)
        loss = state.reduce_gradient(layout.flatten(grads, state.cfg.np_dtype), loss)
        optimizer_step(state.opt, state.params, grads, state.opt_state)
        return loss


@pytest.mark.parametrize("backend,message", [(_IgnoresTheHook(), "called the gradient hook 0 times"),
                                             (_UpdatesWithItsOwnGradient(), "with the gradient hook, parameter")])
def test_the_kit_fails_a_backend_that_does_not_honour_the_gradient_hook(backend, message):
    from lstmbench.testing import run_check

    with pytest.raises(AssertionError, match=message):
        run_check(backend, "gradient_hook", "float64", max_examples=5)


def test_default_training_step_hands_the_gradient_to_the_hook():
    cfg = ModelConfig(2, 3, 1)
    backend = lb.get_backend("numpy")
    state = backend.init_state(cfg, lb.init_params(cfg), OptimizerConfig("sgd", lr=0.1))
    seen = []

    def hook(grad, loss):
        seen.append(grad.copy())
        grad[:] = 0.0  # nothing to learn: the update must leave the parameters alone
        return 42.0

    state.gradient_hook = hook
    x, y = np.ones((4, 5, 2)), np.zeros((4, 1))
    assert backend.train_step(state, x, y) == 42.0
    assert len(seen) == 1 and seen[0].shape == (cfg.num_params(),) and np.abs(seen[0]).max() > 0
    for name, value in lb.init_params(cfg).items():
        np.testing.assert_array_equal(backend.get_params(state)[name], value)


# --- the thread count is scoped, not process-wide (issue 17) ---------------------------------


def test_a_thread_count_applies_to_its_block_and_its_own_thread_only():
    import threading

    backend = NumpyReference()
    everything = lb.default_threads()
    seen_elsewhere = []
    with backend.using_threads(1):
        assert backend.threads == 1
        other = threading.Thread(target=lambda: seen_elsewhere.append(backend.threads))
        other.start()
        other.join()
        with backend.using_threads(2):
            assert backend.threads == 2
        assert backend.threads == 1
    assert backend.threads == everything and seen_elsewhere == [everything]
    assert NumpyReference().threads == everything  # another object of the same class is not touched either


def test_thread_counts_are_checked():
    backend = NumpyReference()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(lb.ConfigError, match="positive integer"):
            backend.set_threads(bad)
    with pytest.raises(lb.ConfigError, match="per core"):
        with backend.using_threads(9 * lb.default_threads()):
            pass
