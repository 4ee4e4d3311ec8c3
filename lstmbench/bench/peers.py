"""The torch peer: torch.nn.LSTM + nn.Linear + Adam on the very model, batch and parameters a
backend is timed on ("what a user would pick instead"), verified against the reference before
it is timed. The bench's peer row and tools/c_gemm_bench.py both build it here."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from lstmbench.bench.rows import BenchRow, make_row
from lstmbench.bench.timing import Timing, time_calls
from lstmbench.bench.workloads import BENCH_OPTIMIZER, BenchCase
from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.params import Params, init_params
from lstmbench.protocol import default_threads


class TorchTraining(NamedTuple):
    """torch modules loaded with a model's parameters, and ``step``: one training step of them."""

    step: Callable[[], None]
    lstm: Any  # torch.nn.LSTM
    head: Any  # torch.nn.Linear

    def params(self, cfg: ModelConfig) -> Params:
        from lstmbench.params import params_from_torch

        return params_from_torch(self.lstm, self.head, cfg)


def torch_training(cfg: ModelConfig, params: Params, x: np.ndarray, y: np.ndarray, device: str = "cpu",
                   opt: OptimizerConfig = BENCH_OPTIMIZER, lengths: np.ndarray | None = None) -> TorchTraining:
    """torch.nn.LSTM + nn.Linear + Adam from ``params``, training on (x, y) on ``device``,
    the batch already there; on a GPU each step ends with a synchronize, so that a clock read
    after it has seen the work. With ``lengths``, as a torch user runs rows of different
    lengths: pack_padded_sequence(..., enforce_sorted=False), the loss over valid terms."""
    import torch

    from lstmbench.params import load_into_torch

    dt = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True).to(dt)
    head = torch.nn.Linear(cfg.hidden_size, cfg.output_size).to(dt)
    load_into_torch(params, cfg, lstm, head)
    lstm, head = lstm.to(device), head.to(device)
    # torch keeps two biases per layer; Adam would move both and so the sum twice as far.
    # Freezing bias_hh (zero) leaves exactly our model: b = bias_ih.
    for k in range(cfg.num_layers):
        getattr(lstm, f"bias_hh_l{k}").requires_grad_(False)
    trained = [p for p in (*lstm.parameters(), *head.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=opt.lr)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    forward = _packed_forward(lstm, head, cfg, xt, lengths) if lengths is not None else None

    def step():
        optimizer.zero_grad()
        if forward is not None:
            loss = forward(yt)
        else:
            out, _ = lstm(xt)
            y_hat = head(out if cfg.many_to_many else out[:, -1])
            if cfg.loss == "xent":  # mean over every prediction, as lstmbench's
                loss = torch.nn.functional.cross_entropy(y_hat.reshape(-1, cfg.output_size), yt.reshape(-1))
            else:
                loss = torch.nn.functional.mse_loss(y_hat, yt)
        loss.backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()

    return TorchTraining(step, lstm, head)


def _packed_forward(lstm, head, cfg: ModelConfig, xt, lengths: np.ndarray):
    """``loss(yt)`` of torch on packed rows: the head on each row's last h (many-to-one) or on
    every valid step, the loss a mean over valid terms (design.md section 8)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T = xt.shape[1]
    lengths_t = torch.from_numpy(np.asarray(lengths, np.int64))  # on the CPU, as torch wants them
    valid = (torch.arange(T)[None, :] < lengths_t[:, None]).to(xt.device)

    def loss(yt):
        packed = pack_padded_sequence(xt, lengths_t, batch_first=True, enforce_sorted=False)
        out, (h_n, _) = lstm(packed)
        if not cfg.many_to_many:
            y_hat = head(h_n[-1])
            if cfg.loss == "xent":
                return torch.nn.functional.cross_entropy(y_hat, yt)
            return torch.nn.functional.mse_loss(y_hat, yt)
        y_hat = head(pad_packed_sequence(out, batch_first=True, total_length=T)[0])
        if cfg.loss == "xent":
            terms = torch.nn.functional.cross_entropy(y_hat.transpose(1, 2), yt, reduction="none")
            return terms[valid].sum() / valid.sum()
        terms = ((y_hat - yt) ** 2)[valid]
        return terms.sum() / terms.numel()

    return loss


def torch_disagreement(training: TorchTraining, cfg: ModelConfig, params: Params, x: np.ndarray,
                       y: np.ndarray, lengths: np.ndarray | None = None) -> str | None:
    """Runs two steps of a fresh ``training`` (from ``params``, on (x, y)): None if its
    parameters land where the reference's do after two Adam steps, else what differed."""
    from lstmbench.testing.checks import assert_trained_params, expected_training
    from lstmbench.testing.strategies import Case

    training.step()
    training.step()
    case = Case(cfg, params, x, y, BENCH_OPTIMIZER, 2, lengths)
    try:
        assert_trained_params(case, expected_training(case), training.params(cfg), who="torch ")
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def torch_peer(device: str = "cpu") -> Callable[[BenchCase, int], BenchRow] | None:
    """The bench's peer row maker, ``peer(case, repeats)``: torch verified against the reference
    on the case, then timed; None without torch (or, for ``device="cuda"``, without a CUDA
    build of torch and a GPU). On the CPU it runs at its best thread count; on the GPU through
    cuDNN, with TF32 off (the rows it is compared with are exact float32)."""
    try:
        import torch
    except ImportError:
        return None
    gpu = device == "cuda"
    if gpu:
        if not torch.cuda.is_available():
            return None
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def peer(case: BenchCase, repeats: int) -> BenchRow:
        params = init_params(case.cfg, seed=0)
        training = torch_training(case.cfg, params, case.x, case.y, device, lengths=case.lengths)
        problem = torch_disagreement(training, case.cfg, params, case.x, case.y, case.lengths)
        best, best_threads = (None, 1) if problem else _fastest_thread_count(training.step, repeats, gpu)
        runtime: dict[str, Any] = {"torch": torch.__version__, "threads": best_threads}
        if gpu:
            runtime.update(device=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(), tf32=False)
        else:
            runtime["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the widest vectors its kernels use
        label = "torch.nn.LSTM (cuDNN)" if gpu else "torch.nn.LSTM"
        if case.lengths is not None:
            label += " packed"
        return make_row(label, f"torch-{device}" if gpu else "torch", case, best_threads, best, runtime,
                        "FAILED" if problem else "ok", problem or "")

    return peer


def _fastest_thread_count(step: Callable[[], None], repeats: int, gpu: bool) -> tuple[Timing, int]:
    """(timing, threads) of ``step`` at its best thread count from 1 to all cores (a GPU: one run)."""
    import torch

    best, best_threads = None, 1
    for n in range(1, 2 if gpu else default_threads() + 1):
        if not gpu:
            torch.set_num_threads(n)
        timing = time_calls(step, repeats, warmup=2)
        if best is None or timing.median_s < best.median_s:
            best, best_threads = timing, n
    return best, best_threads
