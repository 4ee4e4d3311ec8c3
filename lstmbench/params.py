"""Model parameters: a dict of name -> ndarray in the order of
``ModelConfig.param_shapes()``.

Initialisation happens once, on the host, from a seed alone, so every backend
starts from the same numbers: weights uniform in [-1/sqrt(H), 1/sqrt(H)],
forget-gate bias 1, other biases 0.

Layout (gate order i, f, g, o along the 4H axis, as in torch.nn.LSTM):
    l{k}.W_x (D_k, 4H)   l{k}.W_h (H, 4H)   l{k}.b (4H,)   head.W (H, O)   head.b (O,)
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from lstmbench.config import ModelConfig
from lstmbench.errors import DTypeError, NonFiniteError, ShapeError

Params = dict[str, np.ndarray]


def init_params(cfg: ModelConfig, seed: int = 0) -> Params:
    """Fresh parameters for ``cfg``, a function of ``seed`` alone."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.hidden_size)
    H = cfg.hidden_size
    params: Params = {}
    for name, shape in cfg.param_shapes().items():
        if name.endswith(".b"):
            value = np.zeros(shape)
            if name.startswith("l"):  # LSTM layer bias: forget gate starts open
                value[H : 2 * H] = 1.0
        else:
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = value.astype(cfg.np_dtype)
    return params


def check_params(cfg: ModelConfig, params: Mapping[str, np.ndarray], what: str = "params",
                 finite: bool = True) -> None:
    """Raise a clear error unless ``params`` has exactly cfg's names, shapes and dtype (and,
    with ``finite``, only finite values)."""
    if not isinstance(params, Mapping):
        raise DTypeError(f"{what} must be a mapping of names to arrays, got {type(params).__name__}")
    expected = cfg.param_shapes()
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        raise ShapeError(f"{what} do not match the model: missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        value = params[name]
        if not isinstance(value, np.ndarray):
            raise DTypeError(f"{what}[{name!r}] must be a numpy array, got {type(value).__name__}")
        if value.shape != shape:
            raise ShapeError(f"{what}[{name!r}] has shape {value.shape}, expected {shape}")
        if value.dtype != cfg.np_dtype:
            raise DTypeError(f"{what}[{name!r}] has dtype {value.dtype}, the model uses {cfg.dtype}")
        if finite and not np.all(np.isfinite(value)):
            raise NonFiniteError(f"{what}[{name!r}] contains NaN or infinity")


def copy_params(params: Mapping[str, np.ndarray]) -> Params:
    return {k: np.array(v, copy=True) for k, v in params.items()}


def cast_params(params: Mapping[str, np.ndarray], dtype) -> Params:
    return {k: np.asarray(v, dtype=dtype).copy() for k, v in params.items()}


# --- exchange with PyTorch (nn.LSTM(batch_first=True) + nn.Linear) ---------------


def params_from_torch(lstm, linear, cfg: ModelConfig) -> Params:
    """Parameters from a torch ``nn.LSTM(batch_first=True)`` and ``nn.Linear`` head.

    W_x = weight_ih.T, W_h = weight_hh.T, b = bias_ih + bias_hh (torch keeps two
    biases per layer where the math needs one).
    """
    if not getattr(lstm, "batch_first", False):
        raise ShapeError("params_from_torch expects nn.LSTM(batch_first=True)")
    dims = (lstm.input_size, lstm.hidden_size, lstm.num_layers, linear.out_features)
    want = (cfg.input_size, cfg.hidden_size, cfg.num_layers, cfg.output_size)
    if dims != want or linear.in_features != cfg.hidden_size:
        raise ShapeError(
            f"torch modules have (input, hidden, layers, output) = {dims}, the config has {want}"
        )
    if getattr(lstm, "bidirectional", False) or getattr(lstm, "proj_size", 0):
        raise ShapeError("bidirectional or projected torch LSTMs are not supported")
    sd = {k: v.detach().cpu().numpy() for k, v in lstm.state_dict().items()}
    head = {k: v.detach().cpu().numpy() for k, v in linear.state_dict().items()}
    return params_from_state_dict({**sd, **{f"head.{k}": v for k, v in head.items()}}, cfg)


def params_from_state_dict(sd: Mapping[str, np.ndarray], cfg: ModelConfig) -> Params:
    """Inverse of :func:`params_to_torch` (head entries prefixed ``head.``)."""
    out: Params = {}
    dt = cfg.np_dtype
    for k in range(cfg.num_layers):
        out[f"l{k}.W_x"] = np.asarray(sd[f"weight_ih_l{k}"], dtype=dt).T.copy()
        out[f"l{k}.W_h"] = np.asarray(sd[f"weight_hh_l{k}"], dtype=dt).T.copy()
        bias = np.asarray(sd[f"bias_ih_l{k}"], dtype=np.float64) + np.asarray(
            sd[f"bias_hh_l{k}"], dtype=np.float64
        )
        out[f"l{k}.b"] = bias.astype(dt)
    out["head.W"] = np.asarray(sd["head.weight"], dtype=dt).T.copy()
    out["head.b"] = np.asarray(sd["head.bias"], dtype=dt).copy()
    check_params(cfg, out)
    return out


def params_to_torch(params: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The torch layout as numpy arrays: the nn.LSTM state_dict keys plus
    ``head.weight``/``head.bias`` for the nn.Linear. bias_hh is zero and bias_ih
    carries the whole bias. Load with ``lstm.load_state_dict`` on the entries
    without the ``head.`` prefix and ``linear.load_state_dict`` on the others.
    """
    check_params(cfg, params)
    sd: dict[str, np.ndarray] = {}
    for k in range(cfg.num_layers):
        sd[f"weight_ih_l{k}"] = params[f"l{k}.W_x"].T.copy()
        sd[f"weight_hh_l{k}"] = params[f"l{k}.W_h"].T.copy()
        sd[f"bias_ih_l{k}"] = params[f"l{k}.b"].copy()
        sd[f"bias_hh_l{k}"] = np.zeros_like(params[f"l{k}.b"])
    sd["head.weight"] = params["head.W"].T.copy()
    sd["head.bias"] = params["head.b"].copy()
    return sd


def load_into_torch(params: Mapping[str, np.ndarray], cfg: ModelConfig, lstm, linear) -> None:
    """Copy ``params`` into existing torch modules (their dtype is kept)."""
    import torch

    sd = params_to_torch(params, cfg)
    dtype = next(lstm.parameters()).dtype
    lstm.load_state_dict({k: torch.as_tensor(v, dtype=dtype) for k, v in sd.items() if not k.startswith("head.")})
    linear.load_state_dict(
        {k[len("head.") :]: torch.as_tensor(v, dtype=dtype) for k, v in sd.items() if k.startswith("head.")}
    )
