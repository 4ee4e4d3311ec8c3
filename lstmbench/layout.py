"""A backend's training state, and the flat layout of the fast backends' state.

``TrainState`` is what every backend's training state is (host arrays by default);
``Layout`` puts every parameter in a slice of one contiguous vector and
``FlatTrainState`` keeps parameters, gradient and optimizer buffers so.

Fast backends keep parameters, gradients and optimizer buffers as flat vectors
(one pass updates them all) and hand ``offs`` to their kernels; the dict of
named arrays the rest of lstmbench uses is a set of views into the vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np

from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.optim import OptState
from lstmbench.params import Params


@dataclass(frozen=True)
class Layout:
    offs: np.ndarray  # (L+1, 3) int64: offsets of W_x, W_h, b per layer; of W_y, b_y in row L
    slices: dict[str, tuple[int, int, tuple[int, ...]]]  # name -> (start, stop, shape)
    size: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> "Layout":
        """The layout of ``cfg``, made once per model and shared (it is never changed:
        the dataclass is frozen and ``offs`` is read-only)."""
        return _layout_of(cfg)

    def flatten(self, arrays: Mapping[str, np.ndarray], dtype, out: np.ndarray | None = None) -> np.ndarray:
        """One vector of ``arrays`` in this layout: a new one, or written into ``out``."""
        flat = np.empty(self.size, dtype=dtype) if out is None else out
        for name, (a, b, _) in self.slices.items():
            flat[a:b] = np.asarray(arrays[name]).ravel()
        return flat

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[a:b].reshape(shape) for name, (a, b, shape) in self.slices.items()}


@lru_cache(maxsize=64)
def _layout_of(cfg: ModelConfig) -> Layout:
    slices, pos = {}, 0
    for name, shape in cfg.param_shapes().items():
        n = int(np.prod(shape))
        slices[name] = (pos, pos + n, shape)
        pos += n
    L = cfg.num_layers
    offs = np.zeros((L + 1, 3), dtype=np.int64)
    for layer in range(L):
        offs[layer] = [slices[f"l{layer}.{p}"][0] for p in ("W_x", "W_h", "b")]
    offs[L, :2] = [slices["head.W"][0], slices["head.b"][0]]
    offs.setflags(write=False)  # shared by every caller of Layout.of
    return Layout(offs, slices, pos)


#: (gradient, loss) -> loss: see TrainState.gradient_hook
GradientHook = Callable[[np.ndarray, float], float]


@dataclass
class TrainState:
    """A backend's training state. The default keeps host arrays; fast backends
    subclass it (or store what they like in ``extra``).

    ``gradient_hook``, when set (data-parallel training sets it), must be called by
    every training step exactly once, between the gradient and the update, through
    :meth:`reduce_gradient`: with the gradient of the step's batch as one flat host
    vector (lstmbench.layout order, the model's dtype) and the batch's mean loss. It
    changes the gradient in place and returns the loss the step reports; the update,
    clipping included, then uses the changed gradient. The conformance kit checks it.

    ``carried``: the state (h, c) a step with ``carry_state=True`` ended with, each (L, B, H), in
    the backend's own array type (device arrays on a GPU), or None (zeros: the start of an
    epoch); the next carrying step starts from it. Read and set it through
    Backend.carried_state and Backend.set_carried_state, which copy to and from the host.

    ``lr``: the learning rate of the next step (a schedule sets it before each step; the
    optimizer's own by default). ``seed``: the run's seed, which with the step number picks
    the dropout masks of a model with dropout (design.md section 9).
    """

    cfg: ModelConfig
    opt: OptimizerConfig
    params: Params
    opt_state: OptState
    extra: dict[str, Any] = field(default_factory=dict)
    gradient_hook: GradientHook | None = None
    carried: tuple[Any, Any] | None = None
    lr: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = self.opt.lr

    @property
    def step(self) -> int:
        return int(self.opt_state["step"])

    def reduce_gradient(self, grad: np.ndarray, loss: float) -> float:
        """Hand ``grad`` (flat, changed in place) and ``loss`` to the hook; the loss to report."""
        if self.gradient_hook is None:
            return loss
        return float(self.gradient_hook(grad, loss))


@dataclass
class FlatTrainState(TrainState):
    """Training state of a backend that keeps everything in flat vectors (a
    lstmbench.fused.FusedBackend makes it and runs its steps).

    ``theta`` holds the parameters, ``slots[name]`` each optimizer buffer (Adam's
    "m" and "v", SGD's "momentum"), ``grad`` the reduced gradient; ``params`` and
    ``opt_state`` (what the core reads) are views into them, so nothing is copied
    until get_params / get_optimizer_state is called.
    """

    layout: Layout | None = None
    theta: np.ndarray | None = None
    slots: dict[str, np.ndarray] = field(default_factory=dict)
    grad: np.ndarray | None = None

    @classmethod
    def create(cls, layout: Layout, cfg: ModelConfig, opt, params: Mapping[str, np.ndarray],
               opt_state: Mapping[str, np.ndarray]) -> "FlatTrainState":
        dtype = cfg.np_dtype
        theta = layout.flatten(params, dtype)
        slot_names = sorted({key.split("/")[0] for key in opt_state if "/" in key})
        slots = {s: layout.flatten({n: opt_state[f"{s}/{n}"] for n in layout.slices}, dtype) for s in slot_names}
        views = {f"{s}/{n}": v for s, flat in slots.items() for n, v in layout.views(flat).items()}
        return cls(cfg, opt, layout.views(theta), {"step": opt_state["step"], **views}, layout=layout, theta=theta,
                   slots=slots, grad=np.empty(layout.size, dtype=dtype))
