"""Hypothesis strategies for model configurations, parameters and batches.

Arrays are drawn from a numpy generator seeded by Hypothesis (fast, and still
reproducible and shrinkable through the seed); sizes and options are drawn
directly so Hypothesis can shrink a failure to the smallest model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st

from lstmbench.config import LOSSES, DropoutDraw, ModelConfig, OptimizerConfig
from lstmbench.params import Params, init_params
from lstmbench.protocol import Capabilities


@dataclass(frozen=True)
class Case:
    """One conformance example: a model, its parameters, a batch and an optimizer."""

    cfg: ModelConfig
    params: Params
    x: np.ndarray
    y: np.ndarray
    opt: OptimizerConfig
    steps: int  # optimizer steps for the training checks
    lengths: np.ndarray | None = None  # (B,) steps each row takes (design.md section 8)
    initial_state: tuple[np.ndarray, np.ndarray] | None = None  # (h0, c0), each (L, B, H)
    seed: int = 0  # the run's seed: with a step number, the dropout masks of a cfg with dropout

    def as_dtype(self, dtype: str) -> "Case":
        """The same numbers in another dtype (used to run the reference in float64)."""
        cfg = replace(self.cfg, dtype=dtype)
        y = self.y.astype(dtype) if self.cfg.loss == "mse" else self.y
        state = None if self.initial_state is None else tuple(s.astype(dtype) for s in self.initial_state)
        return replace(self, cfg=cfg, params={k: v.astype(dtype) for k, v in self.params.items()},
                       x=self.x.astype(dtype), y=y, initial_state=state)

    def sequence_args(self) -> dict:
        """lengths= and initial_state= for the protocol's methods, where the case has them."""
        return {k: v for k, v in (("lengths", self.lengths), ("initial_state", self.initial_state)) if v is not None}

    def draw(self, step: int) -> DropoutDraw:
        """The dropout masks of training step ``step`` (counted from 1) of this case's run."""
        return DropoutDraw(self.seed, step)


@st.composite
def model_configs(draw, dtype: str = "float64", capabilities: Capabilities = Capabilities(),
                  max_layers: int = 3, max_hidden: int = 9, max_input: int = 4, max_output: int = 4) -> ModelConfig:
    """Small model configs that ``capabilities`` supports."""
    losses = [loss for loss in LOSSES if loss in capabilities.losses]
    shapes = [m2m for m2m, ok in ((False, capabilities.many_to_one), (True, capabilities.many_to_many)) if ok]
    layers_cap = max_layers if capabilities.max_layers is None else min(max_layers, capabilities.max_layers)
    loss = draw(st.sampled_from(losses))
    return ModelConfig(
        input_size=draw(st.integers(1, max_input)),
        hidden_size=draw(st.integers(1, max_hidden)),
        output_size=draw(st.integers(2 if loss == "xent" else 1, max_output)),
        num_layers=draw(st.integers(1, layers_cap)),
        loss=loss,
        many_to_many=draw(st.sampled_from(shapes)),
        dtype=dtype,
    )


@st.composite
def batches(draw, cfg: ModelConfig, max_batch: int = 6, max_steps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) for ``cfg``: x (B, T, D); y (B, O)/(B, T, O) floats or (B,)/(B, T) classes."""
    B = draw(st.integers(1, max_batch))
    T = draw(st.integers(1, max_steps))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))  # 4.0 saturates some gates
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (scale * rng.standard_normal((B, T, cfg.input_size))).astype(cfg.dtype)
    lead = (B, T) if cfg.many_to_many else (B,)
    if cfg.loss == "mse":
        y = rng.standard_normal(lead + (cfg.output_size,)).astype(cfg.dtype)
    else:
        y = rng.integers(0, cfg.output_size, size=lead)
    return x, y


@st.composite
def parameters(draw, cfg: ModelConfig) -> Params:
    """init_params from a drawn seed, sometimes scaled up so gates saturate."""
    scale = draw(st.sampled_from([1.0, 3.0]))
    params = init_params(cfg, seed=draw(st.integers(0, 2**32 - 1)))
    return {k: (v * scale).astype(cfg.dtype) for k, v in params.items()}


@st.composite
def optimizers(draw, capabilities: Capabilities = Capabilities()) -> OptimizerConfig:
    kind = draw(st.sampled_from([k for k in ("adam", "sgd", "adamw") if k in capabilities.optimizers]))
    clip = draw(st.sampled_from([None, 0.05, 10.0]))  # 0.05 clips nearly always
    decay = draw(st.sampled_from([0.0, 0.1]))
    if kind != "sgd":
        return OptimizerConfig(kind, lr=draw(st.sampled_from([1e-3, 1e-2])), clip_norm=clip, weight_decay=decay)
    return OptimizerConfig("sgd", lr=draw(st.sampled_from([0.05, 0.5])),
                           momentum=draw(st.sampled_from([0.0, 0.9])), clip_norm=clip, weight_decay=decay)


@st.composite
def cases(draw, dtype: str = "float64", capabilities: Capabilities = Capabilities()) -> Case:
    cfg = draw(model_configs(dtype, capabilities))
    x, y = draw(batches(cfg))
    return Case(cfg, draw(parameters(cfg)), x, y, draw(optimizers(capabilities)), draw(st.integers(1, 4)),
                seed=draw(st.integers(0, 2**32 - 1)))
