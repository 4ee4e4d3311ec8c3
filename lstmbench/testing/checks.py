"""The conformance checks: what every backend must satisfy.

Each check takes a backend and a :class:`Case` and raises AssertionError with a
message that says what disagreed and by how much. The NumPy reference, run in
float64 on the same numbers, is the expected answer.

Tolerances (|actual - expected| <= rtol*|expected| + atol*max|expected|, per array):

* float64: rtol = atol = 1e-10. Different but correct summation orders differ by
  a few ulps (~1e-15 relative) per product; 1e-10 leaves room for T steps of
  accumulation and still catches any real bug, which shows up at 1e-3 or more.
* float32: rtol = atol = 1e-4. Measured: over 300 random models (T <= 16, H <= 32,
  saturating inputs included) the float32 reference itself differed from the
  float64 one by at most 6e-6 of an array's largest entry (about 50 float32
  ulps). 1e-4 is ~20x that, and a wrong formula is still off by 1e-2 or more.

  Where a float32 result comes from cancellation (the MSE gradient y_hat - y of
  a model that fits well, say) its rounding error is set by the size of the
  terms, not of the result. So for float32 the tolerance of each array is also
  at least ROUNDING_FACTOR times the float32 reference's own largest error on
  that same case: a backend may round differently, not ten times worse.

Adam divides each element's step by sqrt(v_hat), the RMS of its gradients, so
a gradient rounding error e moves the update by up to about 2*lr*e/sqrt(v_hat),
and never by more than 2*lr (a sign flip). The training check allows exactly
that per element and step, with e the gradient tolerance above: elements with
large gradients get almost no extra room, noise-level ones the most Adam can do.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from lstmbench.config import OPTIMIZERS, DropoutDraw, ModelConfig, OptimizerConfig
from lstmbench.errors import DataError, DTypeError, NonFiniteError, ShapeError, UnsupportedError
from lstmbench.layout import Layout
from lstmbench.optim import init_optimizer_state, optimizer_step
from lstmbench.params import copy_params, init_params
from lstmbench.protocol import Backend
from lstmbench.registry import REFERENCE, load_backend
from lstmbench.testing.strategies import Case


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # relative to each element
    atol: float  # relative to the largest element of the expected array


TOLERANCES = {"float64": Tolerance(1e-10, 1e-10), "float32": Tolerance(1e-4, 1e-4)}
ROUNDING_FACTOR = 10.0


def own_rounding_slack(case: Case, ref32, ref64) -> float:
    """float32 only: ROUNDING_FACTOR x the float32 reference's own error on this case."""
    if case.cfg.dtype == "float64":
        return 0.0
    return ROUNDING_FACTOR * float(np.max(np.abs(np.asarray(ref32, np.float64) - ref64), initial=0.0))


def reference() -> Backend:
    return load_backend(REFERENCE)


@dataclass(frozen=True)
class WorstError:
    """The comparison that came closest to its tolerance: ``ratio`` is
    |actual - expected| / allowed at its worst entry (at most 1 passes; inf where
    nothing was allowed, or for NaN), ``what`` names the array ("gradient of l0.W_h"),
    ``index`` is the entry's position in it."""

    ratio: float
    what: str
    index: tuple[int, ...]


class ErrorRecorder:
    """Keeps the worst error of every :func:`assert_close` made while it is active."""

    def __init__(self) -> None:
        self.worst: WorstError | None = None
        self.comparisons = 0

    def add(self, candidate: WorstError) -> None:
        self.comparisons += 1
        if self.worst is None or candidate.ratio > self.worst.ratio:
            self.worst = candidate


# the recorders active in this context; a tuple, so that nested ones all see each comparison
_RECORDERS: ContextVar[tuple[ErrorRecorder, ...]] = ContextVar("lstmbench_error_recorders", default=())


@contextmanager
def record_errors() -> Iterator[ErrorRecorder]:
    """``with record_errors() as rec:``, then ``rec.worst`` is the worst error, relative to
    its tolerance, of every assert_close inside the block (None if there was none).
    A check passes when every comparison is at most 1: how far below 1 says how much room
    the backend leaves."""
    recorder = ErrorRecorder()
    token = _RECORDERS.set(_RECORDERS.get() + (recorder,))
    try:
        yield recorder
    finally:
        _RECORDERS.reset(token)


def _record(what: str, err: np.ndarray, allowed: np.ndarray) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / allowed)  # 0/0: exactly equal
    ratio = np.where(np.isnan(ratio), np.inf, ratio)  # NaN in the result: as bad as it gets
    if ratio.size == 0:
        return
    at = np.unravel_index(np.argmax(ratio), ratio.shape)
    worst = WorstError(float(ratio[at]), what, tuple(int(i) for i in at))
    for recorder in _RECORDERS.get():
        recorder.add(worst)


def assert_close(what: str, actual, expected, dtype: str, slack: np.ndarray | float = 0.0,
                 scale_floor: float = 0.0) -> None:
    """Compare one array against the reference with the dtype's tolerance (+ ``slack``); atol is
    relative to the array's largest entry, or to ``scale_floor`` where that is larger.
    Inside :func:`record_errors` the comparison's worst error is also recorded."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape}, reference has {expected.shape}")
    tol = TOLERANCES[dtype]
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, scale_floor)
    err = np.abs(actual.astype(np.float64) - expected)
    allowed = tol.rtol * np.abs(expected) + tol.atol * scale + slack
    if _RECORDERS.get():
        _record(what, err, np.broadcast_to(allowed, err.shape))
    bad = ~(err <= allowed)  # also catches NaN
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape) if err.ndim else ()
        worst = tuple(int(i) for i in worst)  # (0, 2), not (np.int64(0), np.int64(2))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} entries differ from the reference beyond the {dtype} "
            f"tolerance (rtol={tol.rtol}, atol={tol.atol}*{scale:.3g}); worst at {worst}: "
            f"{actual[worst]} vs {expected[worst]}"
        )


def assert_dtype(what: str, value: np.ndarray, cfg: ModelConfig) -> None:
    if np.asarray(value).dtype != cfg.np_dtype:
        raise AssertionError(f"{what} has dtype {np.asarray(value).dtype}, the model uses {cfg.dtype}")


def assert_unchanged(what: str, before: dict, after: dict) -> None:
    for k in before:
        if not np.array_equal(before[k], after[k]):
            raise AssertionError(f"the backend modified its input {what}[{k!r}]")


# -- checks ---------------------------------------------------------------------------


def check_forward(backend: Backend, case: Case) -> None:
    """forward() equals the reference's outputs and leaves its inputs alone."""
    ref = case.as_dtype("float64")
    expected = reference().forward(ref.cfg, ref.params, ref.x)
    slack = own_rounding_slack(case, reference().forward(case.cfg, case.params, case.x), expected)
    params_before = copy_params(case.params)
    out = backend.forward(case.cfg, case.params, case.x)
    assert_dtype("forward output", out, case.cfg)
    assert_close("forward output", out, expected, case.cfg.dtype, slack)
    assert_unchanged("params", params_before, case.params)


def assert_loss_and_grads(case: Case, loss, grads: dict[str, np.ndarray], who: str = "",
                          dropout: DropoutDraw | None = None) -> None:
    """``loss`` and ``grads`` (at ``case.params``, with the masks of ``dropout``) equal the
    reference's, up to the dtype's tolerance."""
    ref = case.as_dtype("float64")
    expected_loss, expected_grads = reference().loss_and_grads(ref.cfg, ref.params, ref.x, ref.y, dropout=dropout,
                                                               **ref.sequence_args())
    own_loss, own_grads = reference().loss_and_grads(case.cfg, case.params, case.x, case.y, dropout=dropout,
                                                     **case.sequence_args())
    if set(grads) != set(expected_grads):
        raise AssertionError(f"{who}gradients have keys {sorted(grads)}, expected {sorted(expected_grads)}")
    assert_close(f"{who}loss", loss, expected_loss, case.cfg.dtype, own_rounding_slack(case, own_loss, expected_loss))
    floor = gradient_scale(expected_loss, expected_grads)
    for name, g in expected_grads.items():
        assert_dtype(f"{who}gradient of {name}", grads[name], case.cfg)
        assert_close(f"{who}gradient of {name}", grads[name], g, case.cfg.dtype,
                     own_rounding_slack(case, own_grads[name], g), scale_floor=floor)


def gradient_scale(loss: float, grads: dict[str, np.ndarray]) -> float:
    """The size of a case's numbers, below which a gradient entry is rounding noise: the largest
    of the loss and every gradient entry. One array's gradient can cancel to exactly 0 in the
    reference (with dropout: a head bias whose rows all read a dropped unit, with balanced
    targets) while its terms are as large as the others; it is then noise on both sides, and
    its own largest entry (0, or 1e-17) would allow none."""
    return max([abs(float(loss))] + [float(np.max(np.abs(g))) for g in grads.values() if g.size])


def check_loss_and_grads(backend: Backend, case: Case) -> None:
    """The loss and the gradient of every parameter equal the reference's."""
    params_before = copy_params(case.params)
    loss, grads = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)
    assert_unchanged("params", params_before, case.params)
    assert_loss_and_grads(case, loss, grads)


@dataclass
class ExpectedTraining:
    """The reference's ``case.steps`` optimizer steps: float64 values, the float32
    reference's own values (for float32 cases), and per parameter element how far Adam
    may carry gradient rounding noise (zero for SGD). ``carried``: with ``carry``, the
    final state of the last step (float64), and ``own_carried`` the float32 reference's."""

    losses: list[float]
    params: dict[str, np.ndarray]
    opt_state: dict[str, np.ndarray]
    adam_slack: dict[str, np.ndarray | float]
    own: tuple | None  # (losses, params, opt_state) of the float32 reference
    carried: tuple | None = None
    own_carried: tuple | None = None


def _reference_run(case: Case, transform: Callable | None = None, carry: bool = False):
    """Losses, final params and optimizer state, per step the gradients and (for Adam) sqrt
    of the bias-corrected second moment, and the last step's final state (or None).
    ``transform(grads)``, if given, changes each step's gradients before the update (as a
    gradient hook does). ``carry``: step i+1 starts from step i's final state (the first from
    ``case.initial_state``), as truncated backpropagation through time chains them: the final
    state of the step's own forward pass, at the parameters before the update (with dropout,
    the masked pass), from the reference's definition."""
    from lstmbench_backends.reference.reference import loss_and_grads  # the definition itself

    params, opt_state = copy_params(case.params), init_optimizer_state(case.opt, case.params)
    losses, grads_per_step, rms_per_step, state = [], [], [], case.initial_state
    for step in range(1, case.steps + 1):
        loss, grads, final = loss_and_grads(case.cfg, params, case.x, case.y, case.lengths, state, return_state=True,
                                            dropout=case.draw(step))
        if carry:
            state = final
        if transform is not None:
            grads = transform(grads)
        losses.append(loss)
        grads_per_step.append(grads)
        optimizer_step(case.opt, params, grads, opt_state)
        if case.opt.kind in ("adam", "adamw"):
            correction = 1 - case.opt.betas[1] ** step
            rms_per_step.append({k: np.sqrt(opt_state[f"v/{k}"] / correction) for k in params})
    return losses, params, opt_state, grads_per_step, rms_per_step, state if carry else None


def expected_training(case: Case, transform: Callable | None = None, carry: bool = False) -> ExpectedTraining:
    losses64, params, opt_state, grads64, rms64, carried = _reference_run(case.as_dtype("float64"), transform, carry)
    own = _reference_run(case, transform, carry) if case.cfg.dtype == "float32" else None
    slack: dict[str, np.ndarray | float] = {name: 0.0 for name in params}
    if case.opt.kind in ("adam", "adamw"):
        for name in params:
            for step, g in enumerate(grads64):
                # gradient noise at this step: the tolerance, or the float32 reference's own error
                noise = TOLERANCES[case.cfg.dtype].atol * max(float(np.max(np.abs(g[name]))),
                                                              gradient_scale(losses64[step], g))
                if own is not None:
                    noise = max(noise, own_rounding_slack(case, own[3][step][name], g[name]))
                # d(update)/d(gradient) <= ~2 lr / sqrt(v_hat); an update moves at most 2 lr
                slack[name] = slack[name] + 2 * case.opt.lr * np.minimum(
                    1.0, noise / (rms64[step][name] + case.opt.eps))
    return ExpectedTraining(losses64, params, opt_state, slack, own[:3] if own else None, carried,
                            own[5] if own else None)


def assert_trained_params(case: Case, expected: ExpectedTraining, got: dict[str, np.ndarray], who: str = "") -> None:
    """Parameters after ``case.steps`` steps equal the reference's, up to rounding, and,
    with Adam, up to what Adam's per-element normalisation makes of gradient rounding."""
    for name, value in expected.params.items():
        assert_dtype(f"{who}parameter {name} after {case.steps} steps", got[name], case.cfg)
        own = own_rounding_slack(case, expected.own[1][name], value) if expected.own else 0.0
        assert_close(f"{who}parameter {name} after {case.steps} {case.opt.kind} steps", got[name], value,
                     case.cfg.dtype, own + expected.adam_slack[name])


def check_training_steps(backend: Backend, case: Case) -> None:
    """After k fused training steps (clipping, SGD/Adam) the losses, parameters and
    optimizer state equal the reference's."""
    exp = expected_training(case)
    own_losses, _, own_state = exp.own if exp.own else (exp.losses, None, exp.opt_state)
    state = backend.init_state(case.cfg, case.params, case.opt, seed=case.seed)
    got_losses = [backend.train_step(state, case.x, case.y, **case.sequence_args()) for _ in range(case.steps)]
    dtype = case.cfg.dtype
    assert_close("losses along the steps", got_losses, exp.losses, dtype,
                 own_rounding_slack(case, own_losses, exp.losses))
    assert_trained_params(case, exp, backend.get_params(state))
    got_state = backend.get_optimizer_state(state)
    if set(got_state) != set(exp.opt_state) or int(got_state["step"]) != case.steps:
        raise AssertionError(f"optimizer state keys {sorted(got_state)} (step {got_state.get('step')}), "
                             f"expected {sorted(exp.opt_state)} (step {case.steps})")
    slot_scale: dict[str, float] = {}  # per slot (m, v, momentum), its largest entry over every parameter
    for key, value in exp.opt_state.items():
        if key != "step":
            slot = key.split("/")[0]
            slot_scale[slot] = max(slot_scale.get(slot, 0.0), float(np.max(np.abs(value))))
    for key, value in exp.opt_state.items():
        if key != "step":  # (a buffer of gradients that cancelled to 0: noise, as in gradient_scale)
            assert_close(f"optimizer state {key}", got_state[key], value, dtype,
                         own_rounding_slack(case, own_state[key], value), scale_floor=slot_scale[key.split("/")[0]])


def hook_pattern(cfg: ModelConfig) -> np.ndarray:
    """What check_gradient_hook's hook multiplies the gradient by: 2 and -1/2 in turn
    (powers of two: the product is exact in both dtypes), so both the gradient's
    direction and its norm change, and clipping must see the changed one."""
    return np.where(np.arange(Layout.of(cfg).size) % 2 == 0, 2.0, -0.5).astype(cfg.np_dtype)


def check_gradient_hook(backend: Backend, case: Case) -> None:
    """A training step hands its gradient to ``state.gradient_hook`` (flat, in the layout's
    order, the model's dtype) with its loss, once, before the update; it updates with what
    the hook left in the vector and returns what the hook returned. Data-parallel training
    sums gradients over processes this way: a backend that skips the hook trains each
    process on its own shard alone. With lengths (the sequences check runs it so) the hook
    sees the batch's mean loss over its valid terms."""
    layout, pattern = Layout.of(case.cfg), hook_pattern(case.cfg)
    views = layout.views(pattern.astype(np.float64))
    exp = expected_training(case, lambda grads: {k: (g * views[k]).astype(g.dtype) for k, g in grads.items()})
    calls: list[tuple[np.ndarray, float]] = []

    def hook(grad, loss):
        if not isinstance(grad, np.ndarray) or grad.shape != (layout.size,) or grad.dtype != case.cfg.np_dtype:
            raise AssertionError(f"gradient hook got {type(grad).__name__} {getattr(grad, 'shape', '')} "
                                 f"{getattr(grad, 'dtype', '')}, expected a flat {case.cfg.dtype} vector of "
                                 f"{layout.size} values")
        calls.append((grad.copy(), float(loss)))
        grad *= pattern
        return float(loss) + 1.0

    state = backend.init_state(case.cfg, case.params, case.opt, seed=case.seed)
    state.gradient_hook = hook
    got_losses = [backend.train_step(state, case.x, case.y, **case.sequence_args()) for _ in range(case.steps)]
    if len(calls) != case.steps:
        raise AssertionError(f"{case.steps} training steps called the gradient hook {len(calls)} times; "
                             "a fused step must call state.reduce_gradient(grad, loss) once, before its update")
    first_grad, first_loss = calls[0]
    assert_loss_and_grads(case, first_loss, {k: v.copy() for k, v in layout.views(first_grad).items()},
                          who="the gradient hook's first ", dropout=case.draw(1))
    hook_losses = [loss + 1.0 for _, loss in calls]
    if got_losses != hook_losses:
        raise AssertionError(f"train_step returned the losses {got_losses}, not the hook's {hook_losses}")
    assert_trained_params(case, exp, backend.get_params(state), who="with the gradient hook, ")


def _run_everything(backend: Backend, case: Case):
    out = backend.forward(case.cfg, case.params, case.x)
    loss, grads = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)
    runs = {"forward": out, "loss": np.array(loss), **{f"grad {k}": v for k, v in grads.items()}}
    for what, run in (("", case), ("with dropout ", with_dropout(case))):
        if what and not backend.capabilities.dropout:
            continue
        state = backend.init_state(run.cfg, run.params, run.opt, seed=run.seed)
        runs[f"losses {what}"] = np.array([backend.train_step(state, run.x, run.y) for _ in range(run.steps)])
        runs.update({f"trained {what}{k}": v for k, v in backend.get_params(state).items()})
    return runs


def check_deterministic(backend: Backend, case: Case) -> None:
    """The same inputs give the same bits, twice in a row."""
    first, second = _run_everything(backend, case), _run_everything(backend, case)
    for key in first:
        if not np.array_equal(first[key], second[key]) or first[key].dtype != second[key].dtype:
            raise AssertionError(f"{key}: two identical runs gave different bits")


#: the thread counts whose results must agree bit for bit (3: a count that divides no power of two)
THREAD_COUNTS = (1, 2, 3)


def check_thread_independent(backend: Backend, case: Case) -> None:
    """1, 2 and 3 threads give the same bits, in either dtype: the work is cut into pieces by
    the shape alone and the pieces meet in a fixed order (docs/determinism.md), so a run can
    change its thread count at any step, or resume on a machine with more cores, and get the
    same model."""
    runs = {}
    for n in THREAD_COUNTS:
        with backend.using_threads(n):
            runs[n] = _run_everything(backend, case)
    one = runs[THREAD_COUNTS[0]]
    for n, many in runs.items():
        for key in one:
            if not np.array_equal(many[key], one[key]):
                differ = np.asarray(many[key] != one[key])
                raise AssertionError(f"{key}: {n} threads and 1 thread differ in {int(differ.sum())} of "
                                     f"{differ.size} values (largest difference "
                                     f"{float(np.max(np.abs(np.asarray(many[key]) - one[key]))):.3g})")


#: what padded steps of x (and many-to-many y) hold in the sequences check: large enough that
#: using them anywhere would show
PADDING = 1e6


def with_lengths(case: Case, lengths: np.ndarray, seed: int) -> Case:
    """``case`` with ``lengths``, a nonzero initial state, and padding that holds large values."""
    rng = np.random.default_rng(seed)
    cfg, (B, T) = case.cfg, case.x.shape[:2]
    pad = np.arange(T)[None, :] >= lengths[:, None]
    x = case.x.copy()
    x[pad] = PADDING * rng.standard_normal((int(pad.sum()), cfg.input_size))
    y = case.y.copy()
    if cfg.many_to_many and cfg.loss == "mse":
        y[pad] = PADDING
    state = tuple((0.5 * rng.standard_normal((cfg.num_layers, B, cfg.hidden_size))).astype(cfg.dtype) for _ in "hc")
    return replace(case, x=x, y=y, lengths=lengths.astype(np.int64), initial_state=state)


def length_variants(case: Case, seed: int) -> dict[str, np.ndarray]:
    """Random lengths, all T, all 1, and a mix of 1, T and between."""
    B, T = case.x.shape[:2]
    rng = np.random.default_rng(seed)
    mix = np.resize(np.array([1, T, max(1, T // 2)]), B)
    return {"random lengths": rng.integers(1, T + 1, B), "every length T": np.full(B, T),
            "every length 1": np.ones(B, np.int64), "lengths 1, T and between": rng.permutation(mix)}


def check_sequences(backend: Backend, case: Case) -> None:
    """With lengths (random; all T; all 1; a mix) and a nonzero initial state: outputs, final
    state, loss, gradients and k training steps equal the reference's; and padding filled with
    other large values changes no bit (design.md section 8)."""
    seed = int(abs(case.x).sum() * 1e3) % 2**32
    for what, lengths in length_variants(case, seed).items():
        padded = with_lengths(case, lengths, seed)
        ref = padded.as_dtype("float64")
        expected, expected_state = reference().forward(ref.cfg, ref.params, ref.x, return_state=True,
                                                       **ref.sequence_args())
        own, own_state = reference().forward(padded.cfg, padded.params, padded.x, return_state=True,
                                             **padded.sequence_args())
        out, state = backend.forward(padded.cfg, padded.params, padded.x, return_state=True, **padded.sequence_args())
        assert_close(f"forward output ({what})", out, expected, case.cfg.dtype,
                     own_rounding_slack(case, own, expected))
        for k, name in enumerate(("h_n", "c_n")):
            assert_close(f"final state {name} ({what})", state[k], expected_state[k], case.cfg.dtype,
                         own_rounding_slack(case, own_state[k], expected_state[k]))
        loss, grads = backend.loss_and_grads(padded.cfg, padded.params, padded.x, padded.y, **padded.sequence_args())
        assert_loss_and_grads(padded, loss, grads, who=f"({what}) ")
        repadded = with_lengths(case, lengths, seed + 1)  # other padding, the same state
        repadded = replace(repadded, initial_state=padded.initial_state)
        again = backend.loss_and_grads(repadded.cfg, repadded.params, repadded.x, repadded.y,
                                       **repadded.sequence_args())
        if again[0] != loss or any(not np.array_equal(again[1][k], grads[k]) for k in grads):
            raise AssertionError(f"({what}) other values in the padding changed the loss or a gradient")
    check_training_steps(backend, padded)
    check_gradient_hook(backend, padded)
    check_carried_steps(backend, replace(padded, steps=padded.steps + 1))  # at least two steps to chain


def check_carried_steps(backend: Backend, case: Case) -> None:
    """k training steps with ``carry_state=True`` (and lengths), from a restored carried state,
    equal the reference's chained steps: step i+1 starts from step i's final state, with the
    parameters updated in between; the carried state after them equals the last step's
    final state, and a reset leaves none."""
    exp = expected_training(case, carry=True)
    state = backend.init_state(case.cfg, case.params, case.opt, seed=case.seed)
    backend.set_carried_state(state, case.initial_state)
    got = [backend.train_step(state, case.x, case.y, lengths=case.lengths, carry_state=True)
           for _ in range(case.steps)]
    own_losses = exp.own[0] if exp.own else exp.losses
    assert_close("losses along steps that carry the state", got, exp.losses, case.cfg.dtype,
                 own_rounding_slack(case, own_losses, exp.losses))
    assert_trained_params(case, exp, backend.get_params(state), who="carrying the state, ")
    carried = backend.carried_state(state)
    if not (isinstance(carried, tuple) and len(carried) == 2):
        raise AssertionError(f"carried_state returned {type(carried).__name__} after {case.steps} carrying steps, "
                             "not a pair (h, c)")
    own = exp.own_carried or exp.carried
    for k, name in enumerate(("h", "c")):
        assert_dtype(f"carried state {name}", carried[k], case.cfg)
        assert_close(f"carried state {name} after {case.steps} steps", carried[k], exp.carried[k], case.cfg.dtype,
                     own_rounding_slack(case, own[k], exp.carried[k]))
    backend.set_carried_state(state, None)
    if backend.carried_state(state) is not None:
        raise AssertionError("set_carried_state(state, None) left a carried state behind")


#: the dropout probabilities the dropout check trains with (one per case, by its seed)
DROPOUT_PROBABILITIES = (0.25, 0.5, 0.8)


def with_dropout(case: Case) -> Case:
    """``case`` with a model that has dropout (p by the case's seed)."""
    p = DROPOUT_PROBABILITIES[case.seed % len(DROPOUT_PROBABILITIES)]
    return replace(case, cfg=replace(case.cfg, dropout=p))


def check_dropout(backend: Backend, case: Case) -> None:
    """Dropout (design.md section 9): the loss and gradients with a step's masks and k training
    steps equal the reference's (with lengths and a carried state too, for a backend with
    sequences); forward uses none; and the masks follow each row's index in the global
    minibatch, so the two halves of a batch, each given its first row, are the batch."""
    case = with_dropout(case)
    draw = case.draw(3)
    loss, grads = backend.loss_and_grads(case.cfg, case.params, case.x, case.y, dropout=draw)
    assert_loss_and_grads(case, loss, grads, who="with dropout, ", dropout=draw)
    plain = backend.forward(replace(case.cfg, dropout=0.0), case.params, case.x)
    if not np.array_equal(backend.forward(case.cfg, case.params, case.x), plain):
        raise AssertionError("forward of a model with dropout differs from the same model without: forward, "
                             "evaluation and prediction must use no dropout")
    check_split_batch(backend, case, draw)
    check_training_steps(backend, case)
    if backend.capabilities.sequences:
        seed = case.seed
        lengths = length_variants(case, seed)["random lengths"]
        padded = with_lengths(case, lengths, seed)
        loss, grads = backend.loss_and_grads(padded.cfg, padded.params, padded.x, padded.y, dropout=draw,
                                             **padded.sequence_args())
        assert_loss_and_grads(padded, loss, grads, who="with dropout and lengths, ", dropout=draw)
        check_training_steps(backend, padded)
        check_carried_steps(backend, replace(padded, steps=padded.steps + 1))


def check_split_batch(backend: Backend, case: Case, draw: DropoutDraw) -> None:
    """A data-parallel split: rows [0, k) drawn from first row 0 and rows [k, B) from first row k
    give, weighted by their rows, the whole batch's loss and gradients (mean over rows: the
    cases here have no lengths)."""
    B = case.x.shape[0]
    if B < 2:
        return
    k = B // 2
    parts = []
    for rows, first in ((slice(0, k), 0), (slice(k, B), k)):
        loss, grads = backend.loss_and_grads(case.cfg, case.params, case.x[rows], case.y[rows],
                                             dropout=replace(draw, first_row=first))
        weight = (rows.stop - rows.start) / B
        parts.append((weight * loss, {n: weight * g.astype(np.float64) for n, g in grads.items()}))
    loss = parts[0][0] + parts[1][0]
    grads = {n: (parts[0][1][n] + parts[1][1][n]).astype(case.cfg.dtype) for n in parts[0][1]}
    assert_loss_and_grads(case, loss, grads, who="halves of the batch (first rows 0 and B/2), with dropout: ",
                          dropout=draw)


def check_bad_inputs(backend: Backend, case: Case) -> None:
    """Bad inputs raise the documented error type, whatever the backend."""
    cfg, p, x, y = case.cfg, case.params, case.x, case.y
    other = "float32" if cfg.dtype == "float64" else "float64"
    bad_y_dtype = y.astype(other) if cfg.loss == "mse" else y.astype(np.float64)
    nan_x = x.copy()
    nan_x.flat[0] = np.nan
    bad_params = dict(p)
    bad_params["head.W"] = p["head.W"][:, :0]
    calls: list[tuple[str, type, Callable[[], object]]] = [
        ("x with 2 dimensions", ShapeError, lambda: backend.forward(cfg, p, x[0])),
        ("x with the wrong feature size", ShapeError,
         lambda: backend.forward(cfg, p, np.zeros(x.shape[:2] + (cfg.input_size + 1,), cfg.dtype))),
        ("x of the wrong dtype", DTypeError, lambda: backend.forward(cfg, p, x.astype(other))),
        ("x containing NaN", NonFiniteError, lambda: backend.forward(cfg, p, nan_x)),
        ("y of the wrong shape", ShapeError, lambda: backend.loss_and_grads(cfg, p, x, y[:, None])),
        ("y of the wrong dtype", DTypeError, lambda: backend.loss_and_grads(cfg, p, x, bad_y_dtype)),
        ("params with a wrong shape", ShapeError, lambda: backend.forward(cfg, bad_params, x)),
        ("params of the wrong dtype", DTypeError,
         lambda: backend.forward(cfg, {k: v.astype(other) for k, v in p.items()}, x)),
        ("x containing NaN in a training step", NonFiniteError,
         lambda: backend.train_step(backend.init_state(cfg, p, case.opt), nan_x, y)),
    ]
    if cfg.loss == "xent":
        calls.append(("class ids out of range", DataError,
                      lambda: backend.loss_and_grads(cfg, p, x, np.full_like(y, cfg.output_size))))
    else:
        nan_y = y.copy()
        nan_y.flat[0] = np.inf
        calls.append(("y containing inf", NonFiniteError, lambda: backend.loss_and_grads(cfg, p, x, nan_y)))
    for what, error, call in calls:
        try:
            call()
        except error:
            continue
        except Exception as exc:
            raise AssertionError(f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}") from exc
        raise AssertionError(f"{what}: expected {error.__name__}, nothing was raised")


def unsupported_variants(backend: Backend, cfg: ModelConfig) -> list[ModelConfig]:
    """Configurations near ``cfg`` that the backend declares it does not support."""
    caps = backend.capabilities
    variants: list[ModelConfig] = []
    if caps.max_layers is not None:
        variants.append(replace(cfg, num_layers=caps.max_layers + 1))
    variants += [replace(cfg, dtype=d) for d in ("float32", "float64") if d not in caps.dtypes]
    if not caps.many_to_many:
        variants.append(replace(cfg, many_to_many=True))
    if not caps.many_to_one:
        variants.append(replace(cfg, many_to_many=False))
    for loss in ("mse", "xent"):
        if loss not in caps.losses:
            variants.append(replace(cfg, loss=loss, output_size=max(cfg.output_size, 2)))
    return variants


def unsupported_optimizers(backend: Backend) -> list[OptimizerConfig]:
    return [OptimizerConfig(kind) for kind in OPTIMIZERS if kind not in backend.capabilities.optimizers]


def check_declared_unsupported(backend: Backend, case: Case) -> None:
    """What the backend declares unsupported is refused with UnsupportedError, not run."""
    for cfg in unsupported_variants(backend, case.cfg):
        x = np.zeros((1, 2, cfg.input_size), cfg.dtype)
        try:
            backend.forward(cfg, init_params(cfg, 0), x)
        except UnsupportedError:
            continue
        raise AssertionError(f"{cfg} is declared unsupported but forward() did not raise UnsupportedError")
    for opt in unsupported_optimizers(backend):
        try:
            backend.init_state(case.cfg, case.params, opt)
        except UnsupportedError:
            continue
        raise AssertionError(f"optimizer {opt.kind!r} is declared unsupported but init_state() accepted it")


CHECKS: dict[str, Callable[[Backend, Case], None]] = {
    "forward": check_forward,
    "loss_and_grads": check_loss_and_grads,
    "training_steps": check_training_steps,
    "gradient_hook": check_gradient_hook,
    "deterministic": check_deterministic,
    "thread_independent": check_thread_independent,
    "sequences": check_sequences,
    "dropout": check_dropout,
    "bad_inputs": check_bad_inputs,
    "declared_unsupported": check_declared_unsupported,
}
