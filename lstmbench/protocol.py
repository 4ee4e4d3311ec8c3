"""The backend protocol: what every backend (built-in or plugin) provides.

A backend subclasses :class:`Backend` and implements ``_forward`` and
``_loss_and_grads``. The public methods validate their inputs first (so every
backend raises the same documented errors) and then call the backend's code.
A backend that can do better than "loss_and_grads + the reference optimizer"
overrides ``_init_state``/``_train_step``/``_get_params`` with a fused step
that keeps parameters and optimizer state in its own memory (possibly a GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from lstmbench.config import DTYPES, LOSSES, OPTIMIZERS, ModelConfig, OptimizerConfig
from lstmbench.errors import ConfigError, UnsupportedError
from lstmbench.optim import OptState, init_optimizer_state, optimizer_step
from lstmbench.params import Params, check_params, copy_params
from lstmbench.validation import check_inputs, check_loss, check_outputs, check_targets


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports; tests and benchmarks skip the rest."""

    dtypes: tuple[str, ...] = DTYPES
    losses: tuple[str, ...] = LOSSES
    max_layers: int | None = None  # None: any depth
    many_to_one: bool = True
    many_to_many: bool = True
    optimizers: tuple[str, ...] = OPTIMIZERS

    def why_unsupported(self, cfg: ModelConfig, opt: OptimizerConfig | None = None) -> str | None:
        """None if supported, else a sentence saying what is not."""
        if cfg.dtype not in self.dtypes:
            return f"dtype {cfg.dtype} is not supported (supported: {', '.join(self.dtypes)})"
        if cfg.loss not in self.losses:
            return f"loss {cfg.loss!r} is not supported (supported: {', '.join(self.losses)})"
        if self.max_layers is not None and cfg.num_layers > self.max_layers:
            return f"{cfg.num_layers} layers is more than the {self.max_layers} supported"
        if cfg.many_to_many and not self.many_to_many:
            return "many-to-many models are not supported"
        if not cfg.many_to_many and not self.many_to_one:
            return "many-to-one models are not supported"
        if opt is not None and opt.kind not in self.optimizers:
            return f"optimizer {opt.kind!r} is not supported (supported: {', '.join(self.optimizers)})"
        return None


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
    """

    cfg: ModelConfig
    opt: OptimizerConfig
    params: Params
    opt_state: OptState
    extra: dict[str, Any] = field(default_factory=dict)
    gradient_hook: GradientHook | None = None

    @property
    def step(self) -> int:
        return int(self.opt_state["step"])

    def reduce_gradient(self, grad: np.ndarray, loss: float) -> float:
        """Hand ``grad`` (flat, changed in place) and ``loss`` to the hook; the loss to report."""
        if self.gradient_hook is None:
            return loss
        return float(self.gradient_hook(grad, loss))


#: the most threads a backend may be given per usable core: some oversubscription is allowed (tests
#: and experiments use it), tens of thousands of threads crash OpenMP runtimes
MAX_THREADS_PER_CORE = 8


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Backend:
    """Base class of every backend. Subclasses set ``name`` and implement
    ``_forward`` and ``_loss_and_grads``; see docs/adding-a-backend.md."""

    name: str = "unnamed"
    description: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(self) -> None:
        self._threads = default_threads()

    # -- environment -------------------------------------------------------------

    def availability(self) -> tuple[bool, str]:
        """(can run here, reason). The reason is a sentence a user can act on."""
        return True, ""

    @property
    def threads(self) -> int:
        return self._threads

    def set_threads(self, n: int | None) -> None:
        """Use at most ``n`` threads (None: all cores)."""
        if n is None:
            n = default_threads()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"thread count must be a positive integer, got {n!r}")
        cores = default_threads()
        if n > MAX_THREADS_PER_CORE * cores:
            raise ConfigError(f"thread count {n} is more than {MAX_THREADS_PER_CORE} per core on the {cores} core(s) "
                              "this process may use; threading runtimes fail (or crash) long before such counts")
        self._threads = int(n)

    def runtime_info(self) -> dict[str, Any]:
        """Facts worth recording next to a timing (threads, threading layer, device)."""
        return {"threads": self.threads}

    # -- public, validated API -------------------------------------------------------

    def check_supported(self, cfg: ModelConfig, opt: OptimizerConfig | None = None) -> None:
        reason = self.capabilities.why_unsupported(cfg, opt)
        if reason is not None:
            raise UnsupportedError(f"backend {self.name!r}: {reason}")

    def forward(self, cfg: ModelConfig, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        """Model outputs: (B, O) for many-to-one, (B, T, O) for many-to-many
        (logits for "xent")."""
        self.check_supported(cfg)
        check_params(cfg, params)
        check_inputs(cfg, x)
        return check_outputs(self.name, cfg, x, self._forward(cfg, params, x))

    def loss_and_grads(
        self, cfg: ModelConfig, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> tuple[float, Params]:
        """Mean loss over the batch and its exact gradient for every parameter."""
        self.check_supported(cfg)
        check_params(cfg, params)
        check_inputs(cfg, x)
        check_targets(cfg, x, y)
        loss, grads = self._loss_and_grads(cfg, params, x, y)
        check_params(cfg, grads, what=f"backend {self.name!r}'s gradients", finite=False)
        return check_loss(self.name, loss, "loss_and_grads"), grads

    def init_state(
        self,
        cfg: ModelConfig,
        params: Mapping[str, np.ndarray],
        opt: OptimizerConfig,
        opt_state: Mapping[str, np.ndarray] | None = None,
    ) -> TrainState:
        """Training state from host parameters (and, to resume, optimizer state)."""
        self.check_supported(cfg, opt)
        check_params(cfg, params)
        fresh = init_optimizer_state(opt, params)
        if opt_state is not None:
            if set(opt_state) != set(fresh):
                raise ConfigError(
                    f"optimizer state does not match a {opt.kind} optimizer: "
                    f"expected keys {sorted(fresh)}, got {sorted(opt_state)}"
                )
            for k, v in opt_state.items():
                if np.shape(v) != fresh[k].shape:
                    raise ConfigError(f"optimizer state {k!r} has shape {np.shape(v)}, expected {fresh[k].shape}")
            fresh = {k: np.array(v, dtype=fresh[k].dtype) for k, v in opt_state.items()}
        return self._init_state(cfg, copy_params(params), opt, fresh)

    def train_step(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on (x, y); returns the loss before the update."""
        check_inputs(state.cfg, x)
        check_targets(state.cfg, x, y)
        return check_loss(self.name, self._train_step(state, x, y), "train_step")

    def get_params(self, state: TrainState) -> Params:
        """Host copy of the current parameters (checked: names, shapes, dtype, finite)."""
        params = self._get_params(state)
        check_params(state.cfg, params, what=f"backend {self.name!r}'s parameters")
        return params

    def get_optimizer_state(self, state: TrainState) -> OptState:
        """Host copy of the optimizer state (for checkpoints)."""
        return self._get_optimizer_state(state)

    # -- what a backend implements -------------------------------------------------

    def _forward(self, cfg: ModelConfig, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _loss_and_grads(self, cfg, params, x, y) -> tuple[float, Params]:
        raise NotImplementedError

    # Default training: gradients from the backend, update by the reference optimizer.

    def _init_state(self, cfg, params: Params, opt, opt_state: OptState) -> TrainState:
        return TrainState(cfg, opt, params, opt_state)

    def _train_step(self, state: TrainState, x, y) -> float:
        loss, grads = self._loss_and_grads(state.cfg, state.params, x, y)
        if state.gradient_hook is not None:
            from lstmbench.layout import Layout  # (layout imports this module)

            layout = Layout.of(state.cfg)
            flat = layout.flatten(grads, state.cfg.np_dtype)
            loss = state.reduce_gradient(flat, loss)
            grads = layout.views(flat)
        optimizer_step(state.opt, state.params, grads, state.opt_state)
        return loss

    def _get_params(self, state: TrainState) -> Params:
        return copy_params(state.params)

    def _get_optimizer_state(self, state: TrainState) -> OptState:
        return copy_params(state.opt_state)
