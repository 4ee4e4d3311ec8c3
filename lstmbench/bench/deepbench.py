"""DeepBench's LSTM shapes and the figures it published for them (``--suite deepbench``).

Source: github.com/baidu-research/DeepBench at commit da81ba7 (SOURCE). The shapes are the
"lstm" rows of ``training_set`` and ``inference_server_set`` in code/kernels/rnn_problems.h
(hidden units, batch, time steps; ``inference_device_set``'s one LSTM, 256 x 1 x 150, is among
the server shapes). DeepBench times one cuDNN LSTM layer (code/nvidia/rnn_bench.cu): input x_t
of H values in CUDNN_SKIP_INPUT mode (x_t enters the gates as it is: no input product), no
head, no loss; training is cudnnRNNForwardTraining + cudnnRNNBackwardData +
cudnnRNNBackwardWeights, inference cudnnRNNForwardInference (100 calls each, the mean). Its
spreadsheets count 8*T*B*H^2 FLOPs per pass (the recurrent product h_{t-1} W_h alone; the
inference sheet adds T*B*H).

Published figures (float32), read from the spreadsheets of results/ (sheet and row in each):

* training: NVIDIA V100 (DGX-1, CUDA 10.1.243, cuDNN 7.6.2), results/train/DeepBench_NV_V100.xlsx,
  sheet "Results FP32", the "Recurrent Layers - LSTM" block: forward, backward wrt inputs and
  backward wrt weights in ms (their sum is the sheet's "Total Time");
* inference: NVIDIA TitanXp (CUDA 8.0.61, cuDNN 6), results/inference/server/DeepBench_NV_TitanXp.xlsx,
  sheet "Results - Mixed Precision" (RNNs in single precision, its cell B2), "Recurrent Layers -
  LSTM": forward in ms.

This module holds data only: lstmbench.bench.workloads makes the workloads of it.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "baidu-research/DeepBench@da81ba7"
TRAIN_SHEET = "results/train/DeepBench_NV_V100.xlsx, sheet 'Results FP32'"
INFERENCE_SHEET = "results/inference/server/DeepBench_NV_TitanXp.xlsx, sheet 'Results - Mixed Precision'"
TRAIN_HARDWARE = "NVIDIA V100, cuDNN 7.6.2, float32"
INFERENCE_HARDWARE = "NVIDIA TitanXp, cuDNN 6, float32"
FLOP_COUNT = "8*T*B*H^2 per pass (DeepBench's spreadsheets: the recurrent product alone)"

#: (H, B, T) -> (forward, backward wrt inputs, backward wrt weights) ms, V100, and the sheet's row
TRAINING = {
    (512, 16, 25): ((1.095, 0.937, 0.165), 292),
    (512, 32, 25): ((1.144, 1.014, 0.271), 293),
    (512, 64, 25): ((1.341, 1.257, 0.436), 294),
    (512, 128, 25): ((1.559, 1.594, 0.703), 295),
    (1024, 16, 25): ((1.923, 1.657, 0.445), 296),
    (1024, 32, 25): ((1.978, 1.746, 0.698), 297),
    (1024, 64, 25): ((2.205, 2.044, 1.158), 298),
    (1024, 128, 25): ((3.249, 3.017, 2.107), 299),
    (2048, 16, 25): ((3.609, 3.137, 1.254), 300),
    (2048, 32, 25): ((3.684, 3.312, 2.167), 301),
    (2048, 64, 25): ((5.57, 4.871, 4.1), 302),
    (2048, 128, 25): ((9.294, 8.45, 7.847), 303),
    (4096, 16, 25): ((10.009, 9.144, 4.326), 304),
    (4096, 32, 25): ((10.512, 9.55, 7.692), 305),
    (4096, 64, 25): ((16.598, 15.345, 14.648), 306),
    (4096, 128, 25): ((31.169, 29.969, 28.487), 307),
    (1536, 8, 50): ((5.097, 4.571, 0.831), 308),
    (1536, 16, 50): ((5.372, 4.64, 1.327), 309),
    (1536, 32, 50): ((5.574, 4.815, 2.42), 310),
    (256, 16, 150): ((4.542, 5.073, 0.221), 311),
    (256, 32, 150): ((4.899, 5.476, 0.404), 312),
    (256, 64, 150): ((6.7, 5.802, 0.605), 313),
}

#: (H, B, T) -> (forward ms, TitanXp, the sheet's row)
INFERENCE = {
    (512, 1, 25): (1.258, 228),
    (512, 2, 25): (1.296, 229),
    (512, 4, 25): (1.279, 230),
    (1024, 1, 25): (1.872, 231),
    (1024, 2, 25): (1.908, 232),
    (1024, 4, 25): (1.929, 233),
    (2048, 1, 25): (5.272, 234),
    (2048, 2, 25): (5.303, 235),
    (2048, 4, 25): (5.701, 236),
    (1536, 1, 50): (6.198, 237),
    (1536, 2, 50): (6.826, 238),
    (1536, 4, 50): (6.925, 239),
    (256, 1, 150): (1.994, 240),
    (256, 2, 150): (2.222, 241),
    (256, 4, 150): (2.185, 242),
}

#: a shape is in the ``deepbench`` group when what its rows time (a training step by
#: train_step_flops, a forward pass by forward_flops, our model) is at most this many GFLOP:
#: above it the NumPy reference's row (one thread, ~60-110 GFLOP/s here) and the float64
#: verification of every backend (about ten float64 passes of the reference) take minutes per
#: shape on this 2-core machine. A shape left out still runs when named (--suite db-train-...).
GFLOP_BUDGET = 40.0


@dataclass(frozen=True)
class Published:
    """A figure DeepBench published for a shape: ``time_ms`` of what it timed (``what``), on
    ``hardware``, and its rate by its own FLOP count (``flop_count``), with where it is."""

    time_ms: float
    what: str
    hardware: str
    tflops: float  # by its count: 8*T*B*H^2 per pass (3 passes for training) / time_ms
    flop_count: str
    source: str
    parts_ms: tuple[float, ...] = ()  # training: forward, backward wrt inputs, backward wrt weights


def deepbench_flops(hidden: int, batch: int, steps: int) -> int:
    """DeepBench's FLOP count of one pass of a shape (its spreadsheets' formula)."""
    return 8 * steps * batch * hidden * hidden


def published_training(hidden: int, batch: int, steps: int) -> Published:
    parts, row = TRAINING[(hidden, batch, steps)]
    return Published(round(sum(parts), 3), "forward + backward wrt inputs + backward wrt weights", TRAIN_HARDWARE,
                     round(3 * deepbench_flops(hidden, batch, steps) / (sum(parts) * 1e-3) / 1e12, 3), FLOP_COUNT,
                     f"{SOURCE} {TRAIN_SHEET}, row {row}", parts)


def published_inference(hidden: int, batch: int, steps: int) -> Published:
    ms, row = INFERENCE[(hidden, batch, steps)]
    return Published(ms, "forward (cudnnRNNForwardInference)", INFERENCE_HARDWARE,
                     round(deepbench_flops(hidden, batch, steps) / (ms * 1e-3) / 1e12, 3), FLOP_COUNT,
                     f"{SOURCE} {INFERENCE_SHEET}, row {row}")
