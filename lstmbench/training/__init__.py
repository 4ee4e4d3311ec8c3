"""Training: the loop shared by every backend, its checkpoints, data-parallel training over MPI,
and the experiments `lstmbench train` and `predict` run (dataset to task to evaluated model)."""

from lstmbench.training.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT
from lstmbench.training.loop import RunConfig, TrainResult, epoch_order, train

__all__ = ["BEST_CHECKPOINT", "LAST_CHECKPOINT", "RunConfig", "TrainResult", "epoch_order", "train"]
