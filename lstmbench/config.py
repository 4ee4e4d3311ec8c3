"""Model and optimizer configuration, validated once at construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lstmbench.errors import ConfigError

LOSSES = ("mse", "xent")
DTYPES = ("float32", "float64")
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and task of an LSTM model: L stacked layers plus a linear head.

    ``loss="mse"`` is regression; ``loss="xent"`` is softmax cross-entropy on
    integer class targets (output_size classes). ``many_to_many`` puts the head
    on every hidden state h_t instead of h_T only.
    """

    input_size: int
    hidden_size: int
    output_size: int
    num_layers: int = 1
    loss: str = "mse"
    many_to_many: bool = False
    dtype: str = "float64"
    # inverted dropout on each layer's input above the first and on the head's input, in
    # training steps only (design.md section 9; torch.nn.LSTM's dropout, plus the head's input)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("input_size", "hidden_size", "output_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.loss not in LOSSES:
            raise ConfigError(f"ModelConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "xent" and self.output_size < 2:
            raise ConfigError("ModelConfig.loss='xent' needs output_size >= 2 (the number of classes)")
        dtype = np.dtype(self.dtype).name if _is_dtype_like(self.dtype) else self.dtype
        if dtype not in DTYPES:
            raise ConfigError(f"ModelConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "many_to_many", bool(self.many_to_many))
        _check_real("ModelConfig.dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1) (the probability of dropping a value), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def layer_input_size(self, layer: int) -> int:
        """D_l: the input width of layer ``layer`` (0-based)."""
        return self.input_size if layer == 0 else self.hidden_size

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in the canonical order."""
        H, O = self.hidden_size, self.output_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            shapes[f"l{layer}.W_x"] = (self.layer_input_size(layer), 4 * H)
            shapes[f"l{layer}.W_h"] = (H, 4 * H)
            shapes[f"l{layer}.b"] = (4 * H,)
        shapes["head.W"] = (H, O)
        shapes["head.b"] = (O,)
        return shapes

    def num_params(self) -> int:
        """The parameter count, in closed form (no walk over the layers: a size check can ask
        it of any configuration, a billion layers included)."""
        H, L = self.hidden_size, self.num_layers
        per_layer = 4 * H * (H + 1)  # W_h and b
        return 4 * H * self.input_size + 4 * H * H * (L - 1) + L * per_layer + H * self.output_size + self.output_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"not a ModelConfig: {exc}") from None


def _check_real(label: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{label} must be a number, got {value!r}")


def _is_dtype_like(value) -> bool:
    if value is None:  # np.dtype(None) is float64; a missing dtype is a mistake, not a choice
        return False
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD (with optional momentum), Adam or AdamW, as PyTorch defines them.

    ``clip_norm``: if set, gradients are scaled so that their global L2 norm is
    at most this value before the update (torch.nn.utils.clip_grad_norm_).
    ``weight_decay`` w (design.md section 10): SGD and Adam add w * theta to the clipped
    gradient (L2, torch's SGD and Adam); AdamW shrinks theta by lr * w before its update
    (decoupled, torch.optim.AdamW). Every parameter is decayed.
    """

    kind: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "eps", "weight_decay"):
            _check_real(f"OptimizerConfig.{name}", getattr(self, name))
            object.__setattr__(self, name, float(getattr(self, name)))
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise ConfigError(f"Adam betas must be a pair of numbers, got {self.betas!r}")
        for beta in self.betas:
            _check_real("OptimizerConfig.betas", beta)
        if self.clip_norm is not None:
            _check_real("OptimizerConfig.clip_norm", self.clip_norm)
            object.__setattr__(self, "clip_norm", float(self.clip_norm))
        if self.kind not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.kind!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive finite number, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ConfigError(f"Adam betas must be in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(b1), float(b2)))
        if not self.eps > 0:
            raise ConfigError(f"Adam eps must be positive, got {self.eps!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive or None, got {self.clip_norm!r}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.momentum > 0 and self.kind != "sgd":
            raise ConfigError(f"momentum is SGD's; {self.kind} keeps its own moments (betas)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "OptimizerConfig":
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"not an OptimizerConfig: {exc}") from None


def fmix32(h):
    """MurmurHash3's 32-bit finaliser on uint32 (a Python int or a numpy uint32 array), wrapping."""
    if isinstance(h, (int, np.integer)):
        h = int(h) & 0xFFFFFFFF
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


@dataclass(frozen=True)
class DropoutDraw:
    """Which dropout masks a training step draws (design.md section 9): ``seed`` the run's,
    ``step`` the optimizer step about to be taken (1 for the first), ``first_row`` the index of
    the batch's first row in the global minibatch (a data-parallel rank's shard starts there).

    Element j of row b (batch index, 0-based) at step t of a site of width W is kept when
    fmix32(((first_row + b) * T + t) * W + j ^ site_key(site)) >= threshold(p), all on uint32,
    wrapping; kept values are multiplied by 1 / (1 - p) in the model's dtype. Sites: l for the
    input of layer l (1 .. L-1), L for the head's input."""

    seed: int
    step: int
    first_row: int = 0

    def __post_init__(self) -> None:
        for name in ("seed", "step", "first_row"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"DropoutDraw.{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))

    def site_key(self, site: int) -> int:
        """k = fmix32(seed ^ fmix32(step ^ fmix32(site + 0x9E3779B9)))."""
        return fmix32(self.seed ^ fmix32(self.step ^ fmix32(site + 0x9E3779B9)))

    @staticmethod
    def threshold(p: float) -> int:
        """floor(p * 2**32): a hash below it drops its element."""
        return int(math.floor(p * 2**32))

    @staticmethod
    def scale(p: float, dtype) -> np.floating:
        """What a kept value is multiplied by: 1 / (1 - p), rounded to the model's dtype."""
        return np.dtype(dtype).type(1.0 / (1.0 - p))
