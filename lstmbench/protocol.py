"""The backend protocol: what every backend (built-in or plugin) provides.

A backend subclasses :class:`Backend` and implements ``_forward`` and
``_loss_and_grads``. The public methods validate their inputs first (so every
backend raises the same documented errors) and then call the backend's code.
A backend that can do better than "loss_and_grads + the reference optimizer"
subclasses :class:`lstmbench.fused.FusedBackend` instead, which keeps parameters and
optimizer state in flat buffers (possibly on a GPU) and runs the host side of a fused
step (the step counter, the optimizer's scalars, the gradient hook) for its kernels.
It also checks what a backend returns: outputs, losses, parameters.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from lstmbench.config import DTYPES, LOSSES, OPTIMIZERS, ModelConfig, OptimizerConfig
from lstmbench.errors import BackendError, ConfigError, DataError, DTypeError, NonFiniteError, ShapeError, UnsupportedError
from lstmbench.optim import OptState, init_optimizer_state, optimizer_step
from lstmbench.params import Params, check_params, copy_params
from lstmbench.layout import GradientHook, Layout, TrainState  # noqa: F401  (TrainState, GradientHook: public here too)


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports; tests and benchmarks skip the rest."""

    dtypes: tuple[str, ...] = DTYPES
    losses: tuple[str, ...] = LOSSES
    max_layers: int | None = None  # None: any depth
    many_to_one: bool = True
    many_to_many: bool = True
    optimizers: tuple[str, ...] = OPTIMIZERS
    # lengths, an initial state and the final state (design.md section 8): a backend that has
    # them takes lengths=, initial_state= (and return_state= in _forward) as keywords
    sequences: bool = False

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


#: the most threads a backend may be given per usable core: some oversubscription is allowed (tests
#: and experiments use it), tens of thousands of threads crash OpenMP runtimes
MAX_THREADS_PER_CORE = 8


#: backend -> thread count, per context (each thread has its own): see Backend.threads
THREADS: ContextVar[Mapping["Backend", int]] = ContextVar("lstmbench_threads", default={})


def _thread_count(n) -> int:
    """``n`` checked as a thread count (None: all cores)."""
    if n is None:
        return default_threads()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"thread count must be a positive integer, got {n!r}")
    cores = default_threads()
    if n > MAX_THREADS_PER_CORE * cores:
        raise ConfigError(f"thread count {n} is more than {MAX_THREADS_PER_CORE} per core on the {cores} core(s) "
                          "this process may use; threading runtimes fail (or crash) long before such counts")
    return int(n)


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
        pass  # nothing to set up: the thread count lives in THREADS (see threads)

    # -- environment -------------------------------------------------------------

    def availability(self) -> tuple[bool, str]:
        """(can run here, reason). The reason is a sentence a user can act on."""
        return True, ""

    @property
    def threads(self) -> int:
        """The threads this backend may use here: the count set in the calling context (its
        thread, or an ``asyncio`` task), else all cores. Backend objects are shared (one per
        name), so the count is not an attribute of the object: a caller setting it in one
        context never changes it under a caller in another."""
        return THREADS.get().get(self, default_threads())

    def set_threads(self, n: int | None) -> None:
        """Use at most ``n`` threads (None: all cores) in the calling context from now on; see
        :meth:`using_threads` for a count that applies to a block and is then restored."""
        THREADS.set({**THREADS.get(), self: _thread_count(n)})

    @contextmanager
    def using_threads(self, n: int | None) -> Iterator["Backend"]:
        """``with backend.using_threads(1): ...``: at most ``n`` threads (None: all cores) in the
        block, in the calling context alone; the previous count comes back when it ends."""
        token = THREADS.set({**THREADS.get(), self: _thread_count(n)})
        try:
            yield self
        finally:
            THREADS.reset(token)

    def runtime_info(self) -> dict[str, Any]:
        """Facts worth recording next to a timing (threads, threading layer, device)."""
        return {"threads": self.threads}

    # -- public, validated API -------------------------------------------------------

    def check_supported(self, cfg: ModelConfig, opt: OptimizerConfig | None = None) -> None:
        reason = self.capabilities.why_unsupported(cfg, opt)
        if reason is not None:
            raise UnsupportedError(f"backend {self.name!r}: {reason}")

    def forward(self, cfg: ModelConfig, params: Mapping[str, np.ndarray], x: np.ndarray,
                lengths: np.ndarray | None = None, initial_state=None, return_state: bool = False):
        """Model outputs: (B, O) for many-to-one, (B, T, O) for many-to-many (logits for
        "xent"; zeros at a row's padded steps). ``lengths`` (B,): the steps each row takes;
        ``initial_state``: (h0, c0), each (L, B, H); with ``return_state``, returns
        ``(y, (h_n, c_n))``, every row's state after its own last step (design.md section 8)."""
        self.check_supported(cfg)
        check_params(cfg, params)
        check_inputs(cfg, x)
        extra = self._sequence_args(cfg, x, lengths, initial_state, return_state)
        out = self._forward(cfg, params, x, **extra)
        if not return_state:
            return check_outputs(self.name, cfg, x, out)
        y, state = out
        return check_outputs(self.name, cfg, x, y), check_state(self.name, cfg, x, state)

    def loss_and_grads(
        self, cfg: ModelConfig, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray,
        lengths: np.ndarray | None = None, initial_state=None,
    ) -> tuple[float, Params]:
        """Mean loss over the batch's valid terms and its exact gradient for every parameter
        (none for the initial state: it is a constant)."""
        self.check_supported(cfg)
        check_params(cfg, params)
        check_inputs(cfg, x)
        check_targets(cfg, x, y)
        extra = self._sequence_args(cfg, x, lengths, initial_state)
        loss, grads = self._loss_and_grads(cfg, params, x, y, **extra)
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

    def train_step(self, state: TrainState, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None,
                   initial_state=None) -> float:
        """One optimizer step on (x, y); returns the loss before the update."""
        check_inputs(state.cfg, x)
        check_targets(state.cfg, x, y)
        extra = self._sequence_args(state.cfg, x, lengths, initial_state)
        return check_loss(self.name, self._train_step(state, x, y, **extra), "train_step")

    def _sequence_args(self, cfg: ModelConfig, x: np.ndarray, lengths, initial_state, return_state=False) -> dict:
        """The keywords a backend's method gets for lengths and state, checked; {} when none
        were given (so a backend without them is called as before)."""
        extra = {}
        if lengths is not None:
            extra["lengths"] = check_lengths(x, lengths)
        if initial_state is not None:
            extra["initial_state"] = check_initial_state(cfg, x, initial_state)
        if return_state:
            extra["return_state"] = True
        if extra and not self.capabilities.sequences:
            raise UnsupportedError(f"backend {self.name!r} does not take {' or '.join(k.replace('_', ' ') for k in extra)}"
                                   " yet (design.md section 8); the numpy reference does")
        return extra

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

    def _train_step(self, state: TrainState, x, y, **sequences) -> float:
        loss, grads = self._loss_and_grads(state.cfg, state.params, x, y, **sequences)
        if state.gradient_hook is not None:
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


# -- the checks every public method runs (a plugin gets the documented errors for free) ---------


def check_inputs(cfg: ModelConfig, x) -> np.ndarray:
    """x must be a (B, T, D) array of the model's dtype with finite values."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"x must be a numpy array, got {type(x).__name__}")
    if x.ndim != 3:
        raise ShapeError(f"x must have shape (batch, time, {cfg.input_size}), got {x.shape}")
    B, T, D = x.shape
    if B < 1 or T < 1:
        raise ShapeError(f"x must hold at least one sequence of at least one step, got shape {x.shape}")
    if D != cfg.input_size:
        raise ShapeError(f"x has {D} features per step (shape {x.shape}), the model expects input_size={cfg.input_size}")
    if x.dtype != cfg.np_dtype:
        raise DTypeError(f"x has dtype {x.dtype}, the model uses {cfg.dtype}; convert with x.astype('{cfg.dtype}')")
    if not np.all(np.isfinite(x)):
        raise NonFiniteError(f"x contains {int(np.size(x) - np.isfinite(x).sum())} NaN or infinite values")
    return x


def check_lengths(x: np.ndarray, lengths) -> np.ndarray:
    """lengths: integers (B,) with 1 <= len <= T, for x of shape (B, T, D)."""
    B, T = x.shape[0], x.shape[1]
    if not isinstance(lengths, np.ndarray):
        raise DTypeError(f"lengths must be a numpy array of integers, got {type(lengths).__name__}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise DTypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ShapeError(f"lengths has shape {lengths.shape}; x of shape {x.shape} needs one length per row: ({B},)")
    if lengths.min() < 1 or lengths.max() > T:
        bad = int(np.flatnonzero((lengths < 1) | (lengths > T))[0])
        raise DataError(f"lengths must lie in [1, {T}] (the steps of x), got {int(lengths[bad])} for row {bad}")
    return lengths.astype(np.int64, copy=False)


def check_initial_state(cfg: ModelConfig, x: np.ndarray, initial_state) -> tuple[np.ndarray, np.ndarray]:
    """initial_state: (h0, c0), each (L, B, H) of the model's dtype with finite values."""
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise ShapeError(f"initial_state must be a pair (h0, c0), got {type(initial_state).__name__}")
    want = (cfg.num_layers, x.shape[0], cfg.hidden_size)
    for name, part in zip(("h0", "c0"), initial_state):
        if not isinstance(part, np.ndarray):
            raise DTypeError(f"initial_state {name} must be a numpy array, got {type(part).__name__}")
        if part.shape != want:
            raise ShapeError(f"initial_state {name} has shape {part.shape}; the model and x need "
                             f"(layers, batch, hidden) = {want}")
        if part.dtype != cfg.np_dtype:
            raise DTypeError(f"initial_state {name} has dtype {part.dtype}, the model uses {cfg.dtype}")
        if not np.all(np.isfinite(part)):
            raise NonFiniteError(f"initial_state {name} contains {int(part.size - np.isfinite(part).sum())} "
                                 "NaN or infinite values")
    return initial_state[0], initial_state[1]


def check_state(backend: str, cfg: ModelConfig, x: np.ndarray, state) -> tuple[np.ndarray, np.ndarray]:
    """The final state a backend returned: (h_n, c_n), each (L, B, H) of the model's dtype, finite."""
    want = (cfg.num_layers, x.shape[0], cfg.hidden_size)
    ok = isinstance(state, tuple) and len(state) == 2 and all(
        isinstance(s, np.ndarray) and s.shape == want and s.dtype == cfg.np_dtype and np.all(np.isfinite(s))
        for s in state)
    if not ok:
        raise BackendError(f"backend {backend!r} returned a final state that is not a pair of finite {cfg.dtype} "
                           f"arrays of shape {want}")
    return state


def expected_target_shape(cfg: ModelConfig, batch: int, steps: int) -> tuple[int, ...]:
    lead = (batch, steps) if cfg.many_to_many else (batch,)
    return lead + ((cfg.output_size,) if cfg.loss == "mse" else ())


def check_targets(cfg: ModelConfig, x: np.ndarray, y) -> np.ndarray:
    """y matches x and the task: MSE takes floats (B, O) or (B, T, O);
    "xent" takes integer classes (B,) or (B, T) in [0, output_size)."""
    if not isinstance(y, np.ndarray):
        raise DTypeError(f"y must be a numpy array, got {type(y).__name__}")
    want = expected_target_shape(cfg, x.shape[0], x.shape[1])
    task = "many-to-many" if cfg.many_to_many else "many-to-one"
    if y.shape != want:
        raise ShapeError(f"y has shape {y.shape}; a {task} {cfg.loss!r} model with x of shape {x.shape} needs {want}")
    if cfg.loss == "mse":
        if y.dtype != cfg.np_dtype:
            raise DTypeError(f"y has dtype {y.dtype}, the model uses {cfg.dtype}; convert with y.astype('{cfg.dtype}')")
        if not np.all(np.isfinite(y)):
            raise NonFiniteError(f"y contains {int(np.size(y) - np.isfinite(y).sum())} NaN or infinite values")
    else:
        if not np.issubdtype(y.dtype, np.integer):
            raise DTypeError(f"'xent' targets must be integer class ids, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= cfg.output_size):
            raise DataError(
                f"'xent' targets must lie in [0, {cfg.output_size}), got values in [{y.min()}, {y.max()}]"
            )
    return y


def check_outputs(backend: str, cfg: ModelConfig, x: np.ndarray, out) -> np.ndarray:
    """What a backend's forward returned must be (B, O) or (B, T, O) of the model's dtype and
    finite (the parameters and inputs were checked finite before the call)."""
    want = (x.shape[0], x.shape[1], cfg.output_size) if cfg.many_to_many else (x.shape[0], cfg.output_size)
    if not isinstance(out, np.ndarray):
        raise BackendError(f"backend {backend!r} returned {type(out).__name__} from forward, not a numpy array")
    if out.shape != want:
        raise BackendError(f"backend {backend!r} returned outputs of shape {out.shape} from forward; for x of "
                           f"shape {x.shape} the model's outputs have shape {want}")
    if out.dtype != cfg.np_dtype:
        raise BackendError(f"backend {backend!r} returned {out.dtype} outputs from forward; the model uses {cfg.dtype}")
    if not np.all(np.isfinite(out)):
        raise BackendError(f"backend {backend!r} returned {int(out.size - np.isfinite(out).sum())} NaN or infinite "
                           "output(s) from forward, from finite parameters and inputs")
    return out


def check_loss(backend: str, loss, method: str) -> float:
    """A loss a backend returned, as a float (it may be infinite or NaN: training calls that
    divergence); anything that is not one number is the backend's error."""
    try:
        return float(loss)
    except (TypeError, ValueError):
        raise BackendError(f"backend {backend!r} returned {type(loss).__name__} {np.shape(loss)} as the loss from "
                           f"{method}, not a number") from None
