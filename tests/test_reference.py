"""The reference itself: against central finite differences and against torch.nn.LSTM."""

import numpy as np
import pytest

import lstmbench as lb
from lstmbench_backends.reference.reference import loss_and_grads

CONFIGS = [
    dict(input_size=3, hidden_size=5, output_size=2, num_layers=1, loss="mse", many_to_many=False),
    dict(input_size=2, hidden_size=4, output_size=3, num_layers=2, loss="mse", many_to_many=True),
    dict(input_size=3, hidden_size=4, output_size=4, num_layers=2, loss="xent", many_to_many=False),
    dict(input_size=4, hidden_size=3, output_size=5, num_layers=3, loss="xent", many_to_many=True),
]


def make_case(spec, seed=0, B=3, T=5):
    cfg = lb.ModelConfig(**spec, dtype="float64")
    rng = np.random.default_rng(seed)
    params = {k: 2.0 * v for k, v in lb.init_params(cfg, seed).items()}  # scaled so some gates saturate
    x = rng.standard_normal((B, T, cfg.input_size))
    lead = (B, T) if cfg.many_to_many else (B,)
    y = rng.standard_normal(lead + (cfg.output_size,)) if cfg.loss == "mse" else rng.integers(0, cfg.output_size, lead)
    return cfg, params, x, y


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s['loss']}-L{s['num_layers']}-m2m{s['many_to_many']}")
def test_gradients_match_central_finite_differences(spec):
    cfg, params, x, y = make_case(spec)
    _, grads = loss_and_grads(cfg, params, x, y)
    h = 1e-5  # truncation error ~h^2 = 1e-10, rounding ~1e-16/h = 1e-11
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            old = value[idx]
            value[idx] = old + h
            up, _ = loss_and_grads(cfg, params, x, y)
            value[idx] = old - h
            down, _ = loss_and_grads(cfg, params, x, y)
            value[idx] = old
            numeric[idx] = (up - down) / (2 * h)
        # Relative error per parameter array: largest difference over the largest gradient entry.
        scale = max(np.max(np.abs(numeric)), 1e-8)
        rel = np.max(np.abs(numeric - grads[name])) / scale
        assert rel <= 1e-6, f"{name}: max relative error {rel:.2e} against finite differences"


def torch_loss_and_grads(cfg, params, x, y):
    torch = pytest.importorskip("torch", reason="torch is not installed (CI installs torch==2.13.0)")
    lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True).double()
    linear = torch.nn.Linear(cfg.hidden_size, cfg.output_size).double()
    lb.load_into_torch(params, cfg, lstm, linear)
    out, _ = lstm(torch.from_numpy(x))
    y_hat = linear(out if cfg.many_to_many else out[:, -1])
    if cfg.loss == "mse":
        loss = torch.nn.functional.mse_loss(y_hat, torch.from_numpy(y))
    else:
        loss = torch.nn.functional.cross_entropy(y_hat.reshape(-1, cfg.output_size), torch.from_numpy(y).reshape(-1))
    loss.backward()
    grads = {}
    for k in range(cfg.num_layers):
        grads[f"l{k}.W_x"] = getattr(lstm, f"weight_ih_l{k}").grad.numpy().T
        grads[f"l{k}.W_h"] = getattr(lstm, f"weight_hh_l{k}").grad.numpy().T
        # b = bias_ih + bias_hh, so dL/db = dL/dbias_ih (= dL/dbias_hh)
        grads[f"l{k}.b"] = getattr(lstm, f"bias_ih_l{k}").grad.numpy()
        np.testing.assert_allclose(grads[f"l{k}.b"], getattr(lstm, f"bias_hh_l{k}").grad.numpy(), rtol=1e-13, atol=1e-15)
    grads["head.W"] = linear.weight.grad.numpy().T
    grads["head.b"] = linear.bias.grad.numpy()
    return float(loss.detach()), y_hat.detach().numpy(), grads


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s['loss']}-L{s['num_layers']}-m2m{s['many_to_many']}")
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_torch_lstm_float64(spec, seed):
    cfg, params, x, y = make_case(spec, seed, B=4, T=7)
    t_loss, t_out, t_grads = torch_loss_and_grads(cfg, params, x, y)
    loss, grads = loss_and_grads(cfg, params, x, y)
    out = lb.get_backend("numpy").forward(cfg, params, x)
    assert abs(loss - t_loss) <= 1e-10 * abs(t_loss)
    np.testing.assert_allclose(out, t_out, rtol=1e-10, atol=1e-12)
    for name, g in t_grads.items():
        rel = np.max(np.abs(grads[name] - g)) / np.max(np.abs(g))
        assert rel <= 1e-10, f"{name}: relative difference {rel:.2e} from torch"
