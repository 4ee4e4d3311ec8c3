"""The gate before every timing: a row is timed only on a configuration where it agrees with
the NumPy reference (the conformance kit's checks, lstmbench.testing.checks, on exactly the
model, batch, steps and optimizer it is timed on). One disagreeing is shown as FAILED."""

from __future__ import annotations

from typing import Callable

import numpy as np

from lstmbench.bench.workloads import BENCH_OPTIMIZER
from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.params import init_params
from lstmbench.protocol import Backend


def verify(backend: Backend, cfg: ModelConfig, x: np.ndarray, y: np.ndarray, opt: OptimizerConfig = BENCH_OPTIMIZER,
           steps: int = 2, lengths: np.ndarray | None = None) -> str | None:
    """None if the backend matches the reference on exactly this configuration
    (forward, loss and gradients, ``steps`` optimizer steps; with ``lengths``, all on them),
    else what differed."""
    from lstmbench.testing.checks import check_forward, check_loss_and_grads, check_training_steps

    checks = (check_forward, check_loss_and_grads) if lengths is None else (_check_with_lengths,)
    return _first_disagreement(backend, cfg, x, y, opt, steps, lengths, (*checks, check_training_steps))


def verify_forward(backend, cfg: ModelConfig, x: np.ndarray, y: np.ndarray,
                   lengths: np.ndarray | None = None) -> str | None:
    """None if the backend's forward outputs (on ``lengths``, where given) match the reference's on
    exactly this model and batch (the kit's check_forward), else what differed. ``backend``: a
    Backend, or anything with its forward() (lstmbench.bench.peers.TorchForward)."""
    from lstmbench.testing.checks import check_forward

    check = check_forward if lengths is None else _check_forward_with_lengths
    return _first_disagreement(backend, cfg, x, y, BENCH_OPTIMIZER, 1, lengths, (check,))


def _first_disagreement(backend, cfg, x, y, opt, steps, lengths, checks: tuple[Callable, ...]) -> str | None:
    """The first line of the first check that fails on the case (parameters init_params(seed=0)), or None."""
    from lstmbench.testing.strategies import Case

    case = Case(cfg, init_params(cfg, seed=0), x, y, opt, steps, lengths)
    try:
        for check in checks:
            check(backend, case)
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def _check_forward_with_lengths(backend, case) -> None:
    """Outputs on the case's lengths equal the reference's."""
    from lstmbench.testing.checks import assert_close, own_rounding_slack, reference

    ref = case.as_dtype("float64")
    expected = reference().forward(ref.cfg, ref.params, ref.x, **ref.sequence_args())
    own = reference().forward(case.cfg, case.params, case.x, **case.sequence_args())
    out = backend.forward(case.cfg, case.params, case.x, **case.sequence_args())
    assert_close("forward output (with lengths)", out, expected, case.cfg.dtype, own_rounding_slack(case, own, expected))


def _check_with_lengths(backend: Backend, case) -> None:
    """Outputs, loss and gradients on the case's lengths equal the reference's."""
    from lstmbench.testing.checks import assert_loss_and_grads

    _check_forward_with_lengths(backend, case)
    assert_loss_and_grads(case, *backend.loss_and_grads(case.cfg, case.params, case.x, case.y, **case.sequence_args()),
                          who="(with lengths) ")


def stream_disagreement(stream: Callable[[np.ndarray], np.ndarray], cfg: ModelConfig, params,
                        x: np.ndarray) -> str | None:
    """None if feeding x's steps one at a time to ``stream`` (fresh: from a zero state; each call
    takes x_t of shape (1, 1, D), carries the state to the next and returns the model's output at
    that step) gives, at every step, the output of one reference forward pass over all of x (in
    float64, with the kit's tolerance for the model's dtype), else what differed: a state carried
    wrongly shows from the second step on."""
    from dataclasses import replace
    from types import SimpleNamespace

    from lstmbench.testing.checks import assert_close, own_rounding_slack, reference

    every = replace(cfg, many_to_many=True)  # the same parameters, the head on every step
    ref64 = reference().forward(replace(every, dtype="float64"), {k: v.astype(np.float64) for k, v in params.items()},
                                x.astype(np.float64))[0]
    own = reference().forward(every, params, x)[0]
    got = np.stack([np.asarray(stream(np.ascontiguousarray(x[:, t : t + 1]))).reshape(-1) for t in range(x.shape[1])])
    try:
        assert_close(f"outputs of {x.shape[1]} steps streamed one at a time", got, ref64, cfg.dtype,
                     own_rounding_slack(SimpleNamespace(cfg=cfg), own, ref64))
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None
