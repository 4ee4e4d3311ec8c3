"""FLOP model of one training step (and of a forward pass alone: forward_flops), for GFLOP/s
and percent-of-peak figures.

Counts model FLOPs (work the math needs, whatever a backend does), with a
multiply-add as 2 FLOPs:

* gate products, per layer and step: forward 2*B*4H*(D_l + H); backward twice
  that (the weight gradients, and the gradients flowing to h_{t-1} and x_t;
  layer 0 needs no gradient for x, so that part is left out there);
* head: 2*B*H*O per head application forward, twice that backward;
* pointwise gate math: FORWARD_POINTWISE and BACKWARD_POINTWISE FLOPs per
  hidden unit and step (an activation counts as one);
* the optimizer: a few FLOPs per parameter.

It is a convention, documented in docs/benchmarks.md, so figures are comparable
between backends and commits; it is not a hardware counter.
"""

from __future__ import annotations

from dataclasses import dataclass

from lstmbench.config import ModelConfig

FORWARD_POINTWISE = 14  # 4 bias adds, 5 activations, c = f*c + i*g (3), h = o*tanh(c) (2)
BACKWARD_POINTWISE = 26  # dc, dz for 4 gates, dc_next, bias gradient (4)
OPTIMIZER_FLOPS = {"sgd": 2, "sgd_momentum": 4, "adam": 12}


@dataclass(frozen=True)
class StepFlops:
    forward_matmul: int
    backward_matmul: int
    pointwise: int
    optimizer: int

    @property
    def matmul(self) -> int:
        return self.forward_matmul + self.backward_matmul

    @property
    def total(self) -> int:
        return self.matmul + self.pointwise + self.optimizer


def train_step_flops(cfg: ModelConfig, batch: int, steps: int, optimizer="adam", lengths=None) -> StepFlops:
    """FLOPs of one training step on a (batch, steps, input_size) minibatch.
    ``optimizer``: an OptimizerConfig, or one of "adam", "sgd", "sgd_momentum". ``lengths``:
    the steps each row takes (design.md section 8): only those count, padding is no work."""
    if not isinstance(optimizer, str):
        optimizer = "adam" if optimizer.kind == "adam" else ("sgd_momentum" if optimizer.momentum > 0 else "sgd")
    if optimizer not in OPTIMIZER_FLOPS:
        raise ValueError(f"unknown optimizer {optimizer!r}; one of {sorted(OPTIMIZER_FLOPS)}")
    row_steps = _row_steps(batch, steps, lengths)
    fwd, bwd = _products(cfg, batch, row_steps)
    pointwise = cfg.num_layers * row_steps * cfg.hidden_size * (FORWARD_POINTWISE + BACKWARD_POINTWISE)
    return StepFlops(fwd, bwd, pointwise, OPTIMIZER_FLOPS[optimizer] * cfg.num_params())


def forward_flops(cfg: ModelConfig, batch: int, steps: int, lengths=None) -> StepFlops:
    """FLOPs of one forward pass (inference: no loss, no gradient, no update) on a (batch, steps,
    input_size) batch: the forward part of train_step_flops, counted by the same rules."""
    row_steps = _row_steps(batch, steps, lengths)
    fwd, _ = _products(cfg, batch, row_steps)
    return StepFlops(fwd, 0, cfg.num_layers * row_steps * cfg.hidden_size * FORWARD_POINTWISE, 0)


def _row_steps(batch: int, steps: int, lengths) -> int:
    """(row, step) pairs that run: all B*T, or the steps each row takes."""
    return batch * steps if lengths is None else int(sum(lengths))


def _products(cfg: ModelConfig, batch: int, row_steps: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of the gate products and the head."""
    H, O = cfg.hidden_size, cfg.output_size
    fwd = bwd = 0
    for layer in range(cfg.num_layers):
        D = cfg.layer_input_size(layer)
        fwd += row_steps * 2 * 4 * H * (D + H)
        # weight gradients (D+H rows) + gradient to h_{t-1} (H) + to x_t (D, not for layer 0)
        bwd += row_steps * 2 * 4 * H * ((D + H) + H + (D if layer > 0 else 0))
    head_rows = row_steps if cfg.many_to_many else batch
    fwd += head_rows * 2 * H * O
    bwd += head_rows * 2 * 2 * H * O
    return fwd, bwd
