"""What a benchmark times: the model, the seeded batch and the optimizer of a workload, the
realistic workloads of the suite, and the (H, B) points of a grid."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lstmbench.bench import deepbench
from lstmbench.bench.deepbench import Published
from lstmbench.bench.flops import forward_flops, train_step_flops
from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.errors import ConfigError

BENCH_OPTIMIZER = OptimizerConfig("adam", lr=1e-3)


@dataclass(frozen=True)
class Workload:
    """One benchmark point: a model, a batch shape, and what the inputs look like."""

    name: str
    hidden: int
    batch: int
    steps: int
    input_size: int = 1
    output_size: int = 1
    layers: int = 1
    loss: str = "mse"
    many_to_many: bool = False
    one_hot: bool = False  # inputs are one-hot symbols (input_size of them), as text models see them
    lengths: tuple[int, int] | None = None  # rows of lengths uniform in [lo, hi] (design.md 8); None: all T
    dropout: float = 0.0  # the model's dropout, drawn in every timed training step (design.md 9)
    published: Published | None = None  # a figure published for this shape elsewhere (DeepBench's)

    def model(self, dtype: str) -> ModelConfig:
        return bench_model(self.hidden, dtype, self.input_size, self.output_size, self.layers, self.loss,
                           self.many_to_many, self.dropout)

    def data(self, cfg: ModelConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return bench_batch(cfg, self.batch, self.steps, seed, self.one_hot)

    def row_lengths(self, seed: int = 0) -> np.ndarray | None:
        """The batch's lengths (seeded, from their own stream: x and y are those of the same
        workload at full length), or None."""
        if self.lengths is None:
            return None
        lo, hi = self.lengths
        return np.random.default_rng([seed, 1]).integers(lo, hi + 1, self.batch)

    def case(self, dtype: str, forward_only: bool = False) -> "BenchCase":
        """This workload made concrete in ``dtype``: what every row of it is timed on, with the
        model FLOPs of what the rows time (a training step, or with ``forward_only`` a forward pass)."""
        cfg = self.model(dtype)
        x, y = self.data(cfg)
        lengths = self.row_lengths()
        if forward_only:
            flops = forward_flops(cfg, self.batch, self.steps, lengths).total
        else:
            flops = train_step_flops(cfg, self.batch, self.steps, BENCH_OPTIMIZER, lengths).total
        return BenchCase(self, cfg, x, y, flops, lengths)

    @property
    def describe(self) -> str:
        inputs = f"D={self.input_size}{' one-hot' if self.one_hot else ''}"
        layers = f"{self.layers} x {self.hidden}" if self.layers > 1 else f"H={self.hidden}"
        shape = "many-to-many" if self.many_to_many else "many-to-one"
        lengths = f", lengths uniform in [{self.lengths[0]}, {self.lengths[1]}]" if self.lengths else ""
        dropout = f", dropout {self.dropout:g}" if self.dropout else ""
        return (f"{inputs}, {layers}, O={self.output_size}, {self.loss} {shape}, T={self.steps}, B={self.batch}"
                f"{lengths}{dropout}")


@dataclass(frozen=True, eq=False)
class BenchCase:
    """A workload's model in one dtype, its seeded batch, and the model FLOPs of one step on it."""

    work: Workload
    cfg: ModelConfig
    x: np.ndarray
    y: np.ndarray
    flops: float  # of what the rows time (a training step or a forward pass), of the steps rows take
    lengths: np.ndarray | None = None

    def sequence_args(self) -> dict:
        """lengths= for a backend's methods, where the workload has them."""
        return {} if self.lengths is None else {"lengths": self.lengths}


#: realistic workloads (``lstmbench bench --suite``; docs/benchmarks.md)
SUITE = {w.name: w for w in (
    Workload("char-onehot", 512, 64, 128, input_size=84, output_size=84, layers=3, loss="xent", many_to_many=True,
             one_hot=True),  # a character model on text
    Workload("forecast-short", 32, 256, 24),  # a short univariate forecaster
    Workload("hourly-multivariate", 64, 32, 168, input_size=12, output_size=12, layers=2),  # a week of hours
    Workload("long-b1", 256, 1, 512),  # one long sequence
    Workload("long-b2", 256, 2, 512),
    Workload("odd-sizes", 96, 100, 40, input_size=3, output_size=3, many_to_many=True),  # not powers of two
    # rows of different lengths (mean 0.55 T), and the same batch with every row T steps long
    Workload("varlen", 256, 64, 200, input_size=8, lengths=(20, 200)),
    Workload("varlen-full", 256, 64, 200, input_size=8),
)}


def bench_model(hidden: int, dtype: str = "float32", input_size: int = 1, output_size: int = 1,
                layers: int = 1, loss: str = "mse", many_to_many: bool = False, dropout: float = 0.0) -> ModelConfig:
    """A benchmark model (Workload.model passes every field); the defaults are the default task:
    many-to-one MSE regression, D=1, O=1."""
    return ModelConfig(input_size, hidden, output_size, layers, loss, many_to_many, dtype, dropout)


def bench_batch(cfg: ModelConfig, batch: int, steps: int, seed: int = 0,
                one_hot: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Seeded inputs (normal, or one-hot symbols) and targets of the model's task."""
    rng = np.random.default_rng(seed)
    if one_hot:
        x = np.eye(cfg.input_size, dtype=cfg.dtype)[rng.integers(0, cfg.input_size, size=(batch, steps))]
    else:
        x = rng.standard_normal((batch, steps, cfg.input_size)).astype(cfg.dtype)
    lead = (batch, steps) if cfg.many_to_many else (batch,)
    if cfg.loss == "xent":
        return x, rng.integers(0, cfg.output_size, size=lead)
    return x, rng.standard_normal(lead + (cfg.output_size,)).astype(cfg.dtype)


def grid_workloads(hidden_sizes=(32, 128), batch_sizes=(32, 128), steps: int = 64, **model) -> list[Workload]:
    """Every (H, B) of a grid, with one model shape (``model``: input_size, output_size,
    layers, loss, many_to_many, one_hot, lengths; default D=1, O=1, many-to-one MSE)."""
    return [Workload(f"H={H} B={B}", H, B, steps, **model) for H in hidden_sizes for B in batch_sizes]


def deepbench_workloads() -> dict[str, Workload]:
    """DeepBench's LSTM shapes (lstmbench.bench.deepbench), training (``db-train-HxBxT``) and
    inference (``db-infer-HxBxT``): one LSTM layer of H units, inputs of D = H values, and the
    smallest head and loss our step has (O = 1, MSE on the last step), with DeepBench's figure."""
    works = [Workload(f"db-train-{H}x{B}x{T}", H, B, T, input_size=H,
                      published=deepbench.published_training(H, B, T)) for H, B, T in deepbench.TRAINING]
    works += [Workload(f"db-infer-{H}x{B}x{T}", H, B, T, input_size=H,
                       published=deepbench.published_inference(H, B, T)) for H, B, T in deepbench.INFERENCE]
    return {w.name: w for w in works}


DEEPBENCH = deepbench_workloads()


def deepbench_gflop(work: Workload) -> float:
    """GFLOP by our model of what the shape's rows time: a training step (db-train) or a
    forward pass (db-infer); deepbench.GFLOP_BUDGET keeps a shape in the group or not."""
    cfg = work.model("float32")
    if work.name.startswith("db-infer"):
        return forward_flops(cfg, work.batch, work.steps).total / 1e9
    return train_step_flops(cfg, work.batch, work.steps, BENCH_OPTIMIZER).total / 1e9


def deepbench_cut() -> dict[str, str]:
    """{shape: why it is left out of the ``deepbench`` group}: more than GFLOP_BUDGET."""
    return {name: f"{deepbench_gflop(w):.0f} GFLOP a call, over the {deepbench.GFLOP_BUDGET:.0f} GFLOP kept here"
            for name, w in DEEPBENCH.items() if deepbench_gflop(w) > deepbench.GFLOP_BUDGET}


#: named groups of --suite: DeepBench's shapes that fit here (deepbench_cut: those that do not);
#: "deepbench" is its training shapes, or with --forward-only its inference shapes
GROUPS = ("deepbench", "deepbench-train", "deepbench-inference")


def _group(name: str, forward_only: bool) -> list[Workload]:
    kind = {"deepbench-train": "db-train", "deepbench-inference": "db-infer"}.get(name)
    kind = kind or ("db-infer" if forward_only else "db-train")
    cut = deepbench_cut()
    return [w for n, w in DEEPBENCH.items() if n.startswith(kind) and n not in cut]


def suite_workloads(names=None, dropout: float = 0.0, forward_only: bool = False) -> list[Workload]:
    """The workloads named (SUITE's, DeepBench's shapes, or the GROUPS; all of SUITE when
    ``names`` is empty), with ``dropout``; a ConfigError naming any unknown. ``forward_only``:
    the rows will time forward passes ("deepbench" is then DeepBench's inference shapes)."""
    unknown = [n for n in names or () if n not in SUITE and n not in DEEPBENCH and n not in GROUPS]
    if unknown:
        raise ConfigError(f"unknown suite workload(s) {', '.join(unknown)}; the suite has {', '.join(SUITE)}; "
                          f"the groups {', '.join(GROUPS)}; and DeepBench's shapes, db-train-HxBxT and "
                          "db-infer-HxBxT (such as db-train-512x16x25; every one is in lstmbench.bench.deepbench)")
    works: dict[str, Workload] = {}
    for n in names or SUITE:
        for w in _group(n, forward_only) if n in GROUPS else [SUITE.get(n) or DEEPBENCH[n]]:
            works.setdefault(w.name, w)
    return [replace(w, dropout=dropout) for w in works.values()]
