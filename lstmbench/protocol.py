"""The backend protocol: what every backend (built-in or plugin) provides.

A backend subclasses :class:`Backend` and implements ``_forward`` and
``_loss_and_grads``. The public methods validate their inputs first (so every
backend raises the same documented errors) and then call the backend's code.
A backend that can do better than "loss_and_grads + the reference optimizer"
subclasses :class:`lstmbench.fused.FusedBackend` instead, which keeps parameters and
optimizer state in flat buffers (possibly on a GPU) and runs the host side of a fused
step (the step counter, the optimizer's scalars, the gradient hook) for its kernels.
It also checks what a backend returns: outputs, losses, parameters.

Lengths and states (design.md section 8), for a backend with Capabilities(sequences=True):
its methods take ``lengths=`` and ``initial_state=`` (``_forward`` also ``return_state=``)
when the caller gave them. A training step that carries the state (``train_step(...,
carry_state=True)``, truncated BPTT) calls ``_train_step`` with ``return_state=True`` and the
carried state as ``initial_state``, and takes back ``(loss, (h_n, c_n))`` in the backend's own
arrays, kept in ``TrainState.carried`` for the next step; ``_carried_to_host`` and
``_carried_from_host`` move it to and from the host (checkpoints, resume).

Dropout (design.md section 9), for a backend with Capabilities(dropout=True) and a model with
``cfg.dropout > 0``: ``_loss_and_grads`` and ``_train_step`` take ``dropout=`` a
:class:`lstmbench.config.DropoutDraw` (seed, step, first row) and draw their masks from it;
``_forward`` never gets one (forward, evaluation and prediction use no dropout).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, Mapping

import numpy as np

from lstmbench.config import DTYPES, LOSSES, OPTIMIZERS, DropoutDraw, ModelConfig, OptimizerConfig
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
    # dropout in training steps (design.md section 9): _loss_and_grads and _train_step take dropout=
    dropout: bool = False

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
        lengths: np.ndarray | None = None, initial_state=None, dropout: DropoutDraw | None = None,
    ) -> tuple[float, Params]:
        """Mean loss over the batch's valid terms and its exact gradient for every parameter
        (none for the initial state: it is a constant). ``dropout``: the masks of a training
        step of a model with ``cfg.dropout > 0`` (without it, or at p = 0, none is applied)."""
        self.check_supported(cfg)
        check_params(cfg, params)
        check_inputs(cfg, x)
        check_targets(cfg, x, y)
        extra = self._sequence_args(cfg, x, lengths, initial_state)
        extra.update(self._dropout_args(cfg, dropout))
        loss, grads = self._loss_and_grads(cfg, params, x, y, **extra)
        check_params(cfg, grads, what=f"backend {self.name!r}'s gradients", finite=False)
        return check_loss(self.name, loss, "loss_and_grads"), grads

    def stepper(self, cfg: ModelConfig, params: Mapping[str, np.ndarray]) -> "Stepper":
        """Forward passes one after another with the same parameters, each starting from the
        state the last one ended with (generation: a prime, then a symbol at a time). The
        parameters are checked and copied once here, not at every call."""
        self.check_supported(cfg)
        check_params(cfg, params)
        if not self.capabilities.sequences:
            raise UnsupportedError(f"backend {self.name!r} does not carry a state from one forward pass to the next "
                                   "yet (design.md section 8); the numpy reference does")
        return Stepper(self, cfg, self._prepared_forward(cfg, copy_params(params)))

    def generate(self, cfg: ModelConfig, params: Mapping[str, np.ndarray], prime: np.ndarray, uniforms: np.ndarray,
                 temperature: float = 1.0) -> np.ndarray:
        """Symbols drawn one after another by a next-symbol model (one-hot inputs of V symbols,
        many-to-many cross-entropy over the same V): the model runs ``prime`` (ids), then for
        each u of ``uniforms`` draws the next id, draw_symbol(logits, temperature, u), and
        runs it in turn, the state carried from step to step (no window runs again, the
        context has no cap). Returns len(uniforms) ids. The caller draws the uniforms, so every
        backend draws the same symbols from the same logits."""
        prime, uniforms = check_generation(cfg, prime, uniforms, temperature)
        self.check_supported(cfg)
        check_params(cfg, params)
        if not self.capabilities.sequences:
            raise UnsupportedError(f"backend {self.name!r} does not carry a state from one step to the next yet "
                                   "(design.md section 8); the numpy reference does")
        return self._generate(cfg, params, prime, uniforms, float(temperature))

    def init_state(
        self,
        cfg: ModelConfig,
        params: Mapping[str, np.ndarray],
        opt: OptimizerConfig,
        opt_state: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
    ) -> TrainState:
        """Training state from host parameters (and, to resume, optimizer state). ``seed``: the
        run's, from which (with the step number) the training steps draw their dropout masks."""
        self.check_supported(cfg, opt)
        if cfg.dropout > 0:
            self._dropout_args(cfg, DropoutDraw(seed, 1))  # refused here, not at the first step
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
        state = self._init_state(cfg, copy_params(params), opt, fresh)
        state.seed = int(seed)
        return state

    def train_step(self, state: TrainState, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None,
                   initial_state=None, carry_state: bool = False, first_row: int = 0) -> float:
        """One optimizer step on (x, y) at the learning rate ``state.lr``; returns the loss before
        the update. A model with dropout draws the masks of DropoutDraw(state.seed, step about
        to be taken, ``first_row``): ``first_row`` is the index of x's first row in the global
        minibatch (a data-parallel rank's shard starts there), so P ranks draw one process's masks.

        ``carry_state=True`` (truncated backpropagation through time, design.md section 8): the
        step starts from the state carried in ``state`` (zeros when none is) and keeps the
        batch's final state (h_n, c_n) there for the next carrying step; see carried_state and
        set_carried_state. It takes the place of ``initial_state``: passing both is a ConfigError.

        A backend's ``_train_step`` (FusedBackend: ``_loss_and_gradient``, ``_fused_step``) then
        gets ``return_state=True`` among its keywords, with ``initial_state=`` the carried pair
        as it stored it (its own array type, not checked again), and returns ``(loss, (h_n,
        c_n))``, the final state of the batch before the update, in its own array type."""
        check_inputs(state.cfg, x)
        check_targets(state.cfg, x, y)
        if carry_state:
            self._check_carry(state, x, initial_state)
        extra = self._sequence_args(state.cfg, x, lengths, initial_state)
        extra.update(self._dropout_args(state.cfg, DropoutDraw(state.seed, state.step + 1, first_row)))
        if not carry_state:
            return check_loss(self.name, self._train_step(state, x, y, **extra), "train_step")
        if state.carried is not None:
            extra["initial_state"] = state.carried
        loss, state.carried = self._checked_carry(state.cfg, x, self._train_step(state, x, y, return_state=True,
                                                                               **extra))
        return loss

    def carried_state(self, state: TrainState) -> tuple[np.ndarray, np.ndarray] | None:
        """Host copies (h, c), each (L, B, H), of the state carried in ``state``; None when none
        is (no carrying step yet, or a reset)."""
        if state.carried is None:
            return None
        return self._carried_to_host(state, state.carried)

    def set_carried_state(self, state: TrainState, value) -> None:
        """Reset the carried state (``None``: zeros, as at the start of an epoch) or restore it
        (a pair of host arrays (h, c), each (L, B, H) of the model's dtype, finite: a resume)."""
        if value is None:
            state.carried = None
            return
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not isinstance(value[0], np.ndarray) \
                or value[0].ndim != 3:
            raise ShapeError(f"the carried state must be a pair (h, c) of (layers, batch, hidden) arrays, "
                             f"got {type(value).__name__}")
        h, c = check_state_pair(state.cfg, value[0].shape[1], value, "carried state")
        state.carried = self._carried_from_host(state, (np.array(h), np.array(c)))

    def _check_carry(self, state: TrainState, x: np.ndarray, initial_state) -> None:
        """A carrying step: the backend has states, no initial state is given besides, and the
        carried state (if any) holds x's rows."""
        if not self.capabilities.sequences:
            raise UnsupportedError(f"backend {self.name!r} does not take carry_state yet (design.md section 8); "
                                   "the numpy reference does")
        if initial_state is not None:
            raise ConfigError("train_step takes an initial_state or carry_state=True, not both: a carrying step "
                              "starts from the carried state (set it with set_carried_state)")
        if state.carried is not None and tuple(state.carried[0].shape)[1] != x.shape[0]:
            raise ShapeError(f"the carried state holds {state.carried[0].shape[1]} rows, x has {x.shape[0]}; a "
                             "carrying step takes the same rows as the last one (reset with set_carried_state(state, "
                             "None))")

    def _checked_carry(self, cfg: ModelConfig, x: np.ndarray, out) -> tuple[float, tuple]:
        """What a carrying _train_step returned: (loss, (h_n, c_n)), the state of shape (L, B, H)."""
        want = (cfg.num_layers, x.shape[0], cfg.hidden_size)
        ok = isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2 and all(
            tuple(getattr(s, "shape", ())) == want for s in out[1])
        if not ok:
            raise BackendError(f"backend {self.name!r} returned {type(out).__name__} from a training step with "
                               f"return_state=True, not (loss, (h_n, c_n)) with states of shape {want}")
        return check_loss(self.name, out[0], "train_step"), out[1]

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

    def _dropout_args(self, cfg: ModelConfig, draw: DropoutDraw | None) -> dict:
        """``{"dropout": draw}`` for a model with dropout; {} without (so a backend without dropout
        is called as before)."""
        if draw is None or cfg.dropout == 0:
            return {}
        if not isinstance(draw, DropoutDraw):
            raise ConfigError(f"dropout must be a lstmbench.config.DropoutDraw, got {type(draw).__name__}")
        if not self.capabilities.dropout:
            raise UnsupportedError(f"backend {self.name!r} does not train with dropout yet (design.md section 9); "
                                   "the numpy reference does")
        return {"dropout": draw}

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

    def _generate(self, cfg: ModelConfig, params: Params, prime: np.ndarray, uniforms: np.ndarray,
                  temperature: float) -> np.ndarray:
        """generate as a loop of forward steps (a backend may run the whole loop itself)."""
        step, symbols = self.stepper(cfg, params), np.eye(cfg.input_size, dtype=cfg.np_dtype)
        logits = step(symbols[prime][None])[0, -1]
        drawn = np.empty(len(uniforms), np.int64)
        for k, u in enumerate(uniforms):
            drawn[k] = draw_symbol(logits, temperature, u)
            if k + 1 < len(uniforms):
                logits = step(symbols[drawn[k : k + 1]][None])[0, -1]
        return drawn

    def _prepared_forward(self, cfg: ModelConfig, params: Params):
        """``_forward`` for many calls with these (checked) parameters: a callable
        ``(x, **sequences)`` returning what _forward returns. A backend that converts its
        parameters (flattens them, copies them to a device) may do it once here (stepper)."""
        return partial(self._forward, cfg, params)

    # Default training: gradients from the backend, update by the reference optimizer.

    def _init_state(self, cfg, params: Params, opt, opt_state: OptState) -> TrainState:
        return TrainState(cfg, opt, params, opt_state)

    def _train_step(self, state: TrainState, x, y, return_state: bool = False, dropout=None, **sequences):
        """The loss (and, with ``return_state``, ``(loss, (h_n, c_n))``: the final state at the
        parameters before the update, from a forward pass of its own)."""
        if return_state and dropout is not None:  # that pass would have no dropout: another state
            raise UnsupportedError(f"backend {self.name!r} carries the state of a pass without dropout; a backend "
                                   "with dropout and states overrides _train_step to return its step's own state")
        masks = {} if dropout is None else {"dropout": dropout}
        loss, grads = self._loss_and_grads(state.cfg, state.params, x, y, **sequences, **masks)
        final = self._forward(state.cfg, state.params, x, return_state=True, **sequences)[1] if return_state else None
        loss = self._apply_gradients(state, loss, grads)
        return (loss, final) if return_state else loss

    def _apply_gradients(self, state: TrainState, loss: float, grads: Params) -> float:
        """The gradient hook (when set), then the reference optimizer; the loss to report."""
        if state.gradient_hook is not None:
            layout = Layout.of(state.cfg)
            flat = layout.flatten(grads, state.cfg.np_dtype)
            loss = state.reduce_gradient(flat, loss)
            grads = layout.views(flat)
        optimizer_step(state.opt, state.params, grads, state.opt_state, state.lr)
        return loss

    def _carried_to_host(self, state: TrainState, carried) -> tuple[np.ndarray, np.ndarray]:
        """The carried state as host copies (a device backend copies it out)."""
        return np.array(carried[0]), np.array(carried[1])

    def _carried_from_host(self, state: TrainState, host: tuple[np.ndarray, np.ndarray]):
        """Host arrays (checked, copies) as the carried state in this backend's array type (a
        device backend copies them in)."""
        return host

    def _get_params(self, state: TrainState) -> Params:
        return copy_params(state.params)

    def _get_optimizer_state(self, state: TrainState) -> OptState:
        return copy_params(state.opt_state)


def draw_symbol(logits: np.ndarray, temperature: float, u: float) -> int:
    """The id drawn from softmax(logits / temperature) at the uniform ``u`` in [0, 1): the
    first whose cumulative probability passes u (the inverse CDF), in float64."""
    scaled = logits.astype(np.float64) / temperature
    cdf = np.cumsum(np.exp(scaled - scaled.max()))
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)


def check_generation(cfg: ModelConfig, prime, uniforms, temperature) -> tuple[np.ndarray, np.ndarray]:
    """generate's arguments: a next-symbol model, prime ids (at least one) in [0, V), uniforms
    in [0, 1) (at least one), a positive temperature."""
    V = cfg.input_size
    if not (cfg.loss == "xent" and cfg.many_to_many and cfg.output_size == V):
        raise ConfigError(f"generate needs a next-symbol model (one-hot inputs, many-to-many xent over the same "
                          f"symbols), got {cfg}")
    prime, uniforms = np.asarray(prime), np.asarray(uniforms)
    if prime.ndim != 1 or prime.size < 1 or not np.issubdtype(prime.dtype, np.integer):
        raise ShapeError(f"prime must be a 1-D array of at least one symbol id, got shape {prime.shape} of "
                         f"{prime.dtype}")
    if prime.min() < 0 or prime.max() >= V:
        raise DataError(f"prime holds symbol ids outside [0, {V}): {int(prime.min())} .. {int(prime.max())}")
    if uniforms.ndim != 1 or uniforms.size < 1 or not (np.all(uniforms >= 0) and np.all(uniforms < 1)):
        raise DataError(f"uniforms must be a 1-D array of at least one value in [0, 1), got shape {uniforms.shape}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise DataError(f"temperature must be a positive number, got {temperature}")
    return prime.astype(np.int64), uniforms.astype(np.float64)


class Stepper:
    """Forward passes with fixed parameters, the state carried from each to the next: call it
    with x (B, T, D), get the outputs; ``state`` holds (h_n, c_n) of the last call (None:
    zeros, the next call starts from there). Made by Backend.stepper. Each call checks x
    and what the backend returned, which for a step of one symbol costs little."""

    def __init__(self, backend: Backend, cfg: ModelConfig, run) -> None:
        self.backend, self.cfg, self._run = backend, cfg, run
        self.state: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        check_inputs(self.cfg, x)
        if self.state is None:
            y, state = self._run(x, return_state=True)
        else:
            if self.state[0].shape[1] != x.shape[0]:
                raise ShapeError(f"the state carried from the last call holds {self.state[0].shape[1]} rows, x has "
                                 f"{x.shape[0]}; reset it (stepper.state = None) to start other rows")
            y, state = self._run(x, initial_state=self.state, return_state=True)
        name = self.backend.name
        y, self.state = check_outputs(name, self.cfg, x, y), check_state(name, self.cfg, x, state)
        return y


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
    return check_state_pair(cfg, x.shape[0], initial_state, "initial_state")


def check_state_pair(cfg: ModelConfig, batch: int, pair, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``pair`` (``what`` in messages): (h, c), each (L, batch, H) of the model's dtype, finite."""
    names = ("h0", "c0") if what == "initial_state" else ("h", "c")
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ShapeError(f"{what} must be a pair ({', '.join(names)}), got {type(pair).__name__}")
    want = (cfg.num_layers, batch, cfg.hidden_size)
    for name, part in zip(names, pair):
        if not isinstance(part, np.ndarray):
            raise DTypeError(f"{what} {name} must be a numpy array, got {type(part).__name__}")
        if part.shape != want:
            raise ShapeError(f"{what} {name} has shape {part.shape}; the model and the batch need "
                             f"(layers, batch, hidden) = {want}")
        if part.dtype != cfg.np_dtype:
            raise DTypeError(f"{what} {name} has dtype {part.dtype}, the model uses {cfg.dtype}")
        if not np.all(np.isfinite(part)):
            raise NonFiniteError(f"{what} {name} contains {int(part.size - np.isfinite(part).sum())} "
                                 "NaN or infinite values")
    return pair[0], pair[1]


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
