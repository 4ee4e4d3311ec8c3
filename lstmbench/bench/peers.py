"""The torch peer: torch.nn.LSTM + nn.Linear + Adam on the very model, batch and parameters a
backend is timed on ("what a user would pick instead"), verified against the reference before
it is timed. The bench's peer rows (a training step, with its forward and backward timed apart
as PyTorch's fastrnns benchmark does; or a forward pass under torch.no_grad()), the streaming
and generation rows (torch_modules) and tools/c_gemm_bench.py all build it here."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from lstmbench.bench.rows import BenchRow, make_row
from lstmbench.bench.timing import Timing, time_calls, time_phases
from lstmbench.bench.workloads import BENCH_OPTIMIZER, BenchCase
from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.params import Params, init_params
from lstmbench.protocol import default_threads


def torch_modules(cfg: ModelConfig, params: Params, device: str = "cpu"):
    """(torch.nn.LSTM, torch.nn.Linear) in the model's dtype, loaded with ``params``, on ``device``."""
    import torch

    from lstmbench.params import load_into_torch

    dt = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True).to(dt)
    head = torch.nn.Linear(cfg.hidden_size, cfg.output_size).to(dt)
    load_into_torch(params, cfg, lstm, head)
    return lstm.to(device), head.to(device)


class TorchTraining(NamedTuple):
    """torch modules loaded with a model's parameters, and ``step``: one training step of them;
    ``phases``: the same step as (forward and loss, loss.backward(), the Adam update), each a
    call of its own (on a GPU each ends with a synchronize)."""

    step: Callable[[], None]
    lstm: Any  # torch.nn.LSTM
    head: Any  # torch.nn.Linear
    phases: tuple[Callable[[], None], ...] = ()

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

    lstm, head = torch_modules(cfg, params, device)
    # torch keeps two biases per layer; Adam would move both and so the sum twice as far.
    # Freezing bias_hh (zero) leaves exactly our model: b = bias_ih.
    for k in range(cfg.num_layers):
        getattr(lstm, f"bias_hh_l{k}").requires_grad_(False)
    trained = [p for p in (*lstm.parameters(), *head.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=opt.lr)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    outputs = torch_outputs(lstm, head, cfg, xt, lengths)
    valid = _valid(lengths, x.shape[1], device) if lengths is not None and cfg.many_to_many else None
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    held = {}

    def forward():
        held["loss"] = _loss(cfg, outputs(), yt, valid)

    def backward():
        held.pop("loss").backward()

    def update():
        optimizer.step()
        optimizer.zero_grad()

    def step():
        forward()
        backward()
        update()
        sync()

    def synced(phase):
        return lambda: (phase(), sync())

    return TorchTraining(step, lstm, head, tuple(synced(p) for p in (forward, backward, update)))


def torch_outputs(lstm, head, cfg: ModelConfig, xt, lengths: np.ndarray | None = None) -> Callable[[], Any]:
    """``outputs()``: the model's outputs on ``xt`` as lstmbench's forward gives them ((B, O), or
    (B, T, O) with zeros at a row's padded steps). With ``lengths``: pack_padded_sequence(...,
    enforce_sorted=False), the head on each row's last h (many-to-one) or on every step."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    if lengths is None:
        def outputs():
            out, _ = lstm(xt)
            return head(out if cfg.many_to_many else out[:, -1])
        return outputs
    T = xt.shape[1]
    lengths_t = torch.from_numpy(np.asarray(lengths, np.int64))  # on the CPU, as torch wants them
    valid = _valid(lengths, T, xt.device)

    def packed_outputs():
        out, (h_n, _) = lstm(pack_padded_sequence(xt, lengths_t, batch_first=True, enforce_sorted=False))
        if not cfg.many_to_many:
            return head(h_n[-1])
        return head(pad_packed_sequence(out, batch_first=True, total_length=T)[0]) * valid[..., None]
    return packed_outputs


def _valid(lengths: np.ndarray, steps: int, device):
    """(B, T) booleans: the steps each row takes, on ``device``."""
    import torch

    return (torch.arange(steps)[None, :] < torch.from_numpy(np.asarray(lengths, np.int64))[:, None]).to(device)


def _loss(cfg: ModelConfig, y_hat, yt, valid=None):
    """lstmbench's loss of ``y_hat``: the mean over every prediction, or (``valid``: a many-to-many
    model's rows of different lengths) over the valid terms (design.md section 8)."""
    import torch

    if valid is not None:
        if cfg.loss == "xent":
            terms = torch.nn.functional.cross_entropy(y_hat.transpose(1, 2), yt, reduction="none")
            return terms[valid].sum() / valid.sum()
        terms = ((y_hat - yt) ** 2)[valid]
        return terms.sum() / terms.numel()
    if cfg.loss == "xent":  # mean over every prediction, as lstmbench's
        return torch.nn.functional.cross_entropy(y_hat.reshape(-1, cfg.output_size), yt.reshape(-1))
    return torch.nn.functional.mse_loss(y_hat, yt)


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


class TorchForward:
    """torch.nn.LSTM + nn.Linear as a backend's forward(): what lstmbench's conformance check
    check_forward (and the bench's forward check with lengths) calls, under torch.no_grad()."""

    name = "torch"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def forward(self, cfg: ModelConfig, params: Params, x: np.ndarray, lengths: np.ndarray | None = None):
        import torch

        lstm, head = torch_modules(cfg, params, self.device)
        with torch.no_grad():
            return torch_outputs(lstm, head, cfg, torch.from_numpy(x).to(self.device), lengths)().cpu().numpy()


def torch_inference(cfg: ModelConfig, params: Params, x: np.ndarray, device: str = "cpu",
                    lengths: np.ndarray | None = None) -> Callable[[], Any]:
    """``run()``: one forward pass of torch modules loaded with ``params`` on ``x`` (already on
    ``device``) under torch.no_grad(), as a torch user runs inference; on a GPU it ends with a
    synchronize."""
    import torch

    lstm, head = torch_modules(cfg, params, device)
    outputs = torch_outputs(lstm, head, cfg, torch.from_numpy(x).to(device), lengths)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def run():
        with torch.no_grad():
            y_hat = outputs()
        sync()
        return y_hat
    return run


def torch_peer(device: str = "cpu", forward_only: bool = False) -> Callable[[BenchCase, int], BenchRow] | None:
    """The bench's peer row maker, ``peer(case, repeats)``: torch verified against the reference
    on the case, then timed: a training step (its forward, with the loss, and its backward also
    timed apart: the row's ``fwd`` and ``bwd``), or with ``forward_only`` a forward pass under
    torch.no_grad(); None without torch (or, for ``device="cuda"``, without a CUDA build of torch
    and a GPU). On the CPU it runs at its best thread count; on the GPU through cuDNN, with TF32
    off (the rows it is compared with are exact float32)."""
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
        if forward_only:
            problem = _forward_disagreement(case, device)
            call = None if problem else torch_inference(case.cfg, params, case.x, device, case.lengths)
        else:
            training = torch_training(case.cfg, params, case.x, case.y, device, lengths=case.lengths)
            problem = torch_disagreement(training, case.cfg, params, case.x, case.y, case.lengths)
            call = training.step
        best, best_threads = (None, 1) if problem else fastest_thread_count(call, repeats, gpu)
        runtime: dict[str, Any] = {"torch": torch.__version__, "threads": best_threads}
        if gpu:
            runtime.update(device=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(), tf32=False)
        else:
            runtime["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the widest vectors its kernels use
        label = ("torch.nn.LSTM (cuDNN)" if gpu else "torch.nn.LSTM") + (" no_grad" if forward_only else "")
        if case.lengths is not None:
            label += " packed"
        row = make_row(label, f"torch-{device}" if gpu else "torch", case, best_threads, best, runtime,
                       "FAILED" if problem else "ok", problem or "")
        if not (problem or forward_only):  # fastrnns' avg_fwd and avg_bwd, on the best count
            row.fwd, row.bwd, _ = time_phases(list(training.phases), repeats)
        return row

    return peer


def _forward_disagreement(case: BenchCase, device: str) -> str | None:
    """None if torch's outputs under no_grad equal the reference's forward on the case (the
    checks every backend's forward row passes first), else what differed."""
    from lstmbench.bench.verify import verify_forward

    return verify_forward(TorchForward(device), case.cfg, case.x, case.y, lengths=case.lengths)


def fastest_thread_count(step: Callable[[], None], repeats: int, gpu: bool = False) -> tuple[Timing, int]:
    """(timing, threads) of ``step`` at its best thread count from 1 to all cores (a GPU: one run)."""
    import torch

    best, best_threads = None, 1
    for n in range(1, 2 if gpu else default_threads() + 1):
        if not gpu:
            torch.set_num_threads(n)
        timing = time_calls(step, repeats, warmup=2)
        if best is None or timing.median_s < best.median_s:
            best, best_threads = timing, n
    if not gpu:
        torch.set_num_threads(best_threads)  # the count the timing was taken on, for what follows
    return best, best_threads


class TorchStream:
    """torch.nn.LSTM stepped as a streaming model is: ``step(x_t)`` runs one (1, 1, D) tensor
    from the (h, c) the last call returned (``reset()``: zeros again) and the head on its h,
    under torch.no_grad(); called with a NumPy x_t it returns the output as NumPy (verification)."""

    def __init__(self, cfg: ModelConfig, params: Params) -> None:
        self.lstm, self.head = torch_modules(cfg, params)
        self.state = None

    def reset(self) -> None:
        self.state = None

    def step(self, xt):
        import torch

        with torch.no_grad():
            out, self.state = self.lstm(xt, self.state)
            return self.head(out[:, -1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self.step(torch.from_numpy(x)).numpy()
