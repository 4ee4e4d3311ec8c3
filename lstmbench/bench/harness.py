"""`lstmbench bench`: verified, side-by-side timings of a training step, and how
epoch time scales with the dataset.

Rules (docs/benchmarks.md says why):
* every backend is first checked against the NumPy reference on the very
  configuration it is timed on (same model, batch, steps, optimizer); a backend
  that disagrees is shown as FAILED and gets no time;
* speedup = time(reference, BLAS pinned to 1 thread) / time(backend), both
  measured in this run; the reference on all cores is shown beside it;
* medians over repeats, with the interquartile range; thread counts recorded;
* GFLOP/s from the FLOP model (lstmbench.bench.flops) and percent of this machine's
  FMA peak with its widest vectors, measured in the same run (lstmbench.bench.peak),
  with the BLAS rate and kernel beside it.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.training.progress import progress_bar
from lstmbench.bench.flops import train_step_flops
from lstmbench.bench.timing import Timing, time_calls  # noqa: F401  (Timing: part of this module's reports)
from lstmbench.params import init_params
from lstmbench.protocol import Backend, default_threads
from lstmbench.registry import get_backend, list_backends

REFERENCE = "numpy"
BENCH_OPTIMIZER = OptimizerConfig("adam", lr=1e-3)
# A row whose interquartile range is wider than this fraction of its median was timed while
# something else was running: on a quiet machine repeats of a step agree to a few percent.
UNSTABLE_SPREAD = 0.25


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

    def model(self, dtype: str) -> ModelConfig:
        return bench_model(self.hidden, dtype, self.input_size, self.output_size, self.layers, self.loss,
                           self.many_to_many)

    def data(self, cfg: ModelConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return bench_batch(cfg, self.batch, self.steps, seed, self.one_hot)

    @property
    def describe(self) -> str:
        inputs = f"D={self.input_size}{' one-hot' if self.one_hot else ''}"
        layers = f"{self.layers} x {self.hidden}" if self.layers > 1 else f"H={self.hidden}"
        shape = "many-to-many" if self.many_to_many else "many-to-one"
        return f"{inputs}, {layers}, O={self.output_size}, {self.loss} {shape}, T={self.steps}, B={self.batch}"


#: realistic workloads (``lstmbench bench --suite``; docs/benchmarks.md)
SUITE = {w.name: w for w in (
    Workload("char-onehot", 512, 64, 128, input_size=84, output_size=84, layers=3, loss="xent", many_to_many=True,
             one_hot=True),  # a character model on text
    Workload("forecast-short", 32, 256, 24),  # a short univariate forecaster
    Workload("hourly-multivariate", 64, 32, 168, input_size=12, output_size=12, layers=2),  # a week of hours
    Workload("long-b1", 256, 1, 512),  # one long sequence
    Workload("long-b2", 256, 2, 512),
    Workload("odd-sizes", 96, 100, 40, input_size=3, output_size=3, many_to_many=True),  # not powers of two
)}


@dataclass
class BenchRow:
    label: str  # "numba", "numpy (1 BLAS thread)", "torch.nn.LSTM", ...
    backend: str
    workload: str
    hidden: int
    batch: int
    steps: int
    threads: int
    status: str  # "ok", "FAILED", "skipped"
    detail: str = ""
    timing: Timing | None = None
    samples_per_s: float | None = None
    gflops: float | None = None
    pct_peak: float | None = None  # of the FMA peak on the threads used (CPU rows)
    speedup: float | None = None  # over the reference with one BLAS thread
    runtime: dict[str, Any] = field(default_factory=dict)
    unstable: str = ""  # why the timing is not to be trusted ("" when it is)


def bench_model(hidden: int, dtype: str = "float32", input_size: int = 1, output_size: int = 1,
                layers: int = 1, loss: str = "mse", many_to_many: bool = False) -> ModelConfig:
    """A benchmark model (Workload.model passes every field); the defaults are the default task:
    many-to-one MSE regression, D=1, O=1."""
    return ModelConfig(input_size, hidden, output_size, layers, loss, many_to_many, dtype)


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


def verify(backend: Backend, cfg: ModelConfig, x: np.ndarray, y: np.ndarray, opt: OptimizerConfig = BENCH_OPTIMIZER,
           steps: int = 2) -> str | None:
    """None if the backend matches the reference on exactly this configuration
    (forward, loss and gradients, ``steps`` optimizer steps), else what differed."""
    from lstmbench.testing.checks import check_forward, check_loss_and_grads, check_training_steps
    from lstmbench.testing.strategies import Case

    case = Case(cfg, init_params(cfg, seed=0), x, y, opt, steps)
    try:
        for check in (check_forward, check_loss_and_grads, check_training_steps):
            check(backend, case)
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def time_backend(backend: Backend, cfg: ModelConfig, x, y, repeats: int, opt=BENCH_OPTIMIZER) -> Timing:
    state = backend.init_state(cfg, init_params(cfg, seed=0), opt)
    return time_calls(lambda: backend.train_step(state, x, y), repeats, warmup=2)


def _backend_row(name: str, backend: Backend, work: Workload, cfg, x, y, flops, threads: int,
                 repeats: int) -> "BenchRow":
    """A backend's row: skipped (what it does not support), FAILED (it disagrees with the
    reference), or timed."""
    reason = backend.capabilities.why_unsupported(cfg, BENCH_OPTIMIZER)
    if reason:
        return _row(name, name, work, threads, None, flops, {}, "skipped", reason)
    if (problem := verify(backend, cfg, x, y)) is not None:
        return _row(name, name, work, threads, None, flops, {}, "FAILED", problem)
    return _row(name, name, work, threads, time_backend(backend, cfg, x, y, repeats), flops, backend.runtime_info())


def _row(label, name, work: Workload, threads, timing, flops, runtime, status="ok", detail=""):
    row = BenchRow(label, name, work.name, work.hidden, work.batch, work.steps, threads, status, detail, timing,
                   runtime=runtime)
    if timing is not None:
        row.samples_per_s = work.batch / timing.median_s
        row.gflops = flops / timing.median_s / 1e9
    return row


def grid_workloads(hidden_sizes=(32, 128), batch_sizes=(32, 128), steps: int = 64, **model) -> list[Workload]:
    """Every (H, B) of a grid, with one model shape (``model``: input_size, output_size,
    layers, loss, many_to_many, one_hot; default D=1, O=1, many-to-one MSE)."""
    return [Workload(f"H={H} B={B}", H, B, steps, **model) for H in hidden_sizes for B in batch_sizes]


def run_grid(backends: list[str] | None = None, hidden_sizes=(32, 128), batch_sizes=(32, 128), steps: int = 64,
             dtype: str = "float32", threads: int | None = None, repeats: int = 7, with_torch: bool = True,
             progress: bool = True, torch_devices=("cpu", "cuda"), model: dict | None = None) -> dict[str, Any]:
    """Verify, then time one training step per backend at every (H, B) of one model shape."""
    report = run_workloads(grid_workloads(hidden_sizes, batch_sizes, steps, **(model or {})), backends, dtype,
                           threads, repeats, with_torch, progress, torch_devices)
    report["steps"] = steps
    return report


def run_suite(names=None, backends: list[str] | None = None, dtype: str = "float32", threads: int | None = None,
              repeats: int = 5, with_torch: bool = True, progress: bool = True,
              torch_devices=("cpu", "cuda")) -> dict[str, Any]:
    """The realistic workloads of SUITE (all, or ``names``), verified and timed like a grid."""
    unknown = [n for n in names or () if n not in SUITE]
    if unknown:
        from lstmbench.errors import ConfigError

        raise ConfigError(f"unknown suite workload(s) {', '.join(unknown)}; the suite has {', '.join(SUITE)}")
    return run_workloads([SUITE[n] for n in names or SUITE], backends, dtype, threads, repeats, with_torch, progress,
                         torch_devices)


def run_workloads(workloads: list[Workload], backends: list[str] | None = None, dtype: str = "float32",
                  threads: int | None = None, repeats: int = 7, with_torch: bool = True, progress: bool = True,
                  torch_devices=("cpu", "cuda")) -> dict[str, Any]:
    """Verify, then time one training step per backend on every workload. With torch: a
    torch.nn.LSTM peer row on each of ``torch_devices`` ("cuda" only where a timed backend
    runs on a GPU). Returns a report dict; the ceilings are measured in the same run, last."""
    threads = threads or default_threads()
    load_before = _load_average()
    if backends:
        names, skipped = list(backends), {}
        for name in names:  # one named but not available: get_backend says why, before any timing
            get_backend(name)
    else:
        names, skipped = default_backends()
    gpu = any(_gpu_row(get_backend(n).runtime_info()) for n in names)
    torch_peers = [peer for device in (torch_devices if with_torch else ()) if device == "cpu" or gpu
                   if (peer := _torch_peer(device))]
    ref = get_backend(REFERENCE)
    rows: list[BenchRow] = []
    bar = progress_bar(progress, total=len(workloads) * (len(names) + 2 + len(torch_peers)), desc="bench",
                       unit="run")
    cases = {}
    for work in workloads:
        cfg = work.model(dtype)
        x, y = work.data(cfg)
        flops = train_step_flops(cfg, work.batch, work.steps, BENCH_OPTIMIZER).total
        cases[work] = cfg, x, y, flops
        with ref.using_threads(1):
            rows.append(_row(f"{REFERENCE} (1 BLAS thread)", REFERENCE, work, 1,
                             time_backend(ref, cfg, x, y, repeats), flops, ref.runtime_info()))
        bar.update(1)
        for name in names:
            if name == REFERENCE:
                bar.update(1)
                continue
            bar.set_postfix_str(f"{name} {work.name}")
            with get_backend(name).using_threads(threads) as backend:
                rows.append(_backend_row(name, backend, work, cfg, x, y, flops, threads, repeats))
            bar.update(1)
    # Then the rows whose thread pools outlive their calls (torch's OpenMP, OpenBLAS's
    # threads, which keep spinning for a while after a multi-threaded call and would slow
    # whatever ran next on the other core): the torch peer, the reference on all cores.
    for torch_peer in torch_peers:
        for work, (cfg, x, y, flops) in cases.items():
            rows.append(torch_peer(work, cfg, x, y, flops, repeats))
            bar.update(1)
    with ref.using_threads(threads):
        for work, (cfg, x, y, flops) in cases.items():
            rows.append(_row(f"{REFERENCE} ({threads} BLAS threads)", REFERENCE, work, threads,
                             time_backend(ref, cfg, x, y, repeats), flops, ref.runtime_info()))
            bar.update(1)
    ceilings = measure_ceilings(dtype, threads)  # last too: it runs every core flat out
    base = {r.workload: r.timing.median_s for r in rows if r.label == f"{REFERENCE} (1 BLAS thread)"}
    fma = ceilings["fma_peak"]
    for row in rows:
        if row.timing is not None:
            row.speedup = base[row.workload] / row.timing.median_s
            if fma and not _gpu_row(row.runtime):  # a CPU peak: no percentage of it for a GPU
                # the FMA peak of the row's threads: measured on all ``threads``, per core below that
                row_peak = fma["gflops"] if row.threads >= threads else fma["per_core_gflops"] * row.threads
                row.pct_peak = 100 * row.gflops / row_peak
            row.unstable = unstable_reason(row)
    order = {work.name: k for k, work in enumerate(workloads)}
    rows.sort(key=lambda r: order[r.workload])  # stable: keeps the row order within a workload
    bar.close()
    return {"kind": "grid", "machine": machine_info(), "load_average": [load_before, _load_average()],
            "dtype": dtype, "threads": threads, **ceilings,
            "optimizer": BENCH_OPTIMIZER.to_dict(), "unavailable": skipped,
            "workloads": [asdict(w) | {"describe": w.describe} for w in workloads], "rows": [asdict(r) for r in rows]}


def unstable_reason(row: BenchRow) -> str:
    """Why a timed row is not to be trusted: a wide spread over its repeats, or a rate
    above the peak measured in the same run (the peak was measured while the machine was
    busier than during the row); "" if neither."""
    t = row.timing
    reasons = []
    if t is not None and t.q3_s - t.q1_s > UNSTABLE_SPREAD * t.median_s:
        reasons.append(f"IQR {100 * (t.q3_s - t.q1_s) / t.median_s:.0f}% of the median")
    if row.pct_peak is not None and row.pct_peak > 100:
        reasons.append("above the peak measured in this run")
    return "; ".join(reasons)


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes), where the OS reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def measure_ceilings(dtype: str, threads: int) -> dict[str, Any]:
    """This machine's ceilings now: the FMA peak of its widest vectors (on one thread and on
    ``threads``), the BLAS matrix-product rate on ``threads`` and which kernel BLAS ran."""
    from lstmbench.bench import peak

    fma = peak.fma_peak(dtype, threads)
    matmul = peak.matmul_peak_gflops(dtype, threads)
    blas = peak.blas_info()
    return {"fma_peak": fma.to_dict() if fma else None, "matmul_peak_gflops": matmul, "blas": blas,
            "blas_restriction": peak.blas_restriction(blas)}


def _torch_peer(device: str = "cpu"):
    """A timer for torch.nn.LSTM + nn.Linear + Adam ("what a user would pick instead"),
    verified against the reference first; None without torch (or, for ``device="cuda"``,
    without a CUDA build of torch and a GPU). On the CPU it runs at its best thread count;
    on the GPU through cuDNN, with TF32 off (the rows it is compared with are exact
    float32), the batch already on the device and the clock read after a synchronize."""
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

    def run(work: Workload, cfg: ModelConfig, x, y, flops, repeats) -> BenchRow:
        from lstmbench.params import load_into_torch, params_from_torch
        from lstmbench.testing.checks import assert_trained_params, expected_training
        from lstmbench.testing.strategies import Case

        dt = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
        params = init_params(cfg, seed=0)
        lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True).to(dt)
        head = torch.nn.Linear(cfg.hidden_size, cfg.output_size).to(dt)
        load_into_torch(params, cfg, lstm, head)
        lstm, head = lstm.to(device), head.to(device)
        # torch keeps two biases per layer; Adam would move both and so the sum twice as far.
        # Freezing bias_hh (zero) leaves exactly our model: b = bias_ih.
        for k in range(cfg.num_layers):
            getattr(lstm, f"bias_hh_l{k}").requires_grad_(False)
        trained = [p for p in (*lstm.parameters(), *head.parameters()) if p.requires_grad]
        opt = torch.optim.Adam(trained, lr=BENCH_OPTIMIZER.lr)
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

        def step():
            opt.zero_grad()
            out, _ = lstm(xt)
            y_hat = head(out if cfg.many_to_many else out[:, -1])
            if cfg.loss == "xent":  # mean over every prediction, as lstmbench's
                loss = torch.nn.functional.cross_entropy(y_hat.reshape(-1, cfg.output_size), yt.reshape(-1))
            else:
                loss = torch.nn.functional.mse_loss(y_hat, yt)
            loss.backward()
            opt.step()
            if gpu:
                torch.cuda.synchronize()

        # Verify: two torch steps from the same parameters land where the reference does.
        step()
        step()
        status, detail = "ok", ""
        case = Case(cfg, params, x, y, BENCH_OPTIMIZER, 2)
        try:
            assert_trained_params(case, expected_training(case), params_from_torch(lstm, head, cfg), who="torch ")
        except AssertionError as exc:
            status, detail = "FAILED", str(exc).splitlines()[0]
        best, best_threads = None, 1
        if status == "ok":
            for n in range(1, 2 if gpu else default_threads() + 1):
                if not gpu:
                    torch.set_num_threads(n)
                timing = time_calls(step, repeats, warmup=2)
                if best is None or timing.median_s < best.median_s:
                    best, best_threads = timing, n
        runtime = {"torch": torch.__version__, "threads": best_threads}
        if gpu:
            runtime.update(device=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(), tf32=False)
        else:
            runtime["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the widest vectors its kernels use
        label = "torch.nn.LSTM (cuDNN)" if gpu else "torch.nn.LSTM"
        return _row(label, f"torch-{device}" if gpu else "torch", work, best_threads, best, flops, runtime,
                    status, detail)

    return run


def simulated(name: str) -> bool:
    """Whether a backend runs in a simulator here (Numba's CUDA simulator): correct, but
    its timings would mean nothing."""
    try:
        return bool(get_backend(name).runtime_info().get("simulator"))
    except Exception:  # an unavailable backend is not simulated; run_grid says why it is left out
        return False


def default_backends() -> tuple[list[str], dict[str, str]]:
    """(backends to time, {left out: why}) when none are named: every available backend
    except those running in a simulator."""
    names, left_out = [], {}
    for info in list_backends():
        if not info.available:
            left_out[info.name] = info.reason
        elif simulated(info.name):
            left_out[info.name] = ("runs in a simulator here; its times would mean nothing "
                                   "(name it with --backends to run it anyway)")
        else:
            names.append(info.name)
    return names, left_out


def epoch_seconds(backend: Backend, cfg: ModelConfig, x, y, batch: int) -> float:
    """Wall time of one epoch of training steps over (x, y) in minibatches of ``batch``."""
    state = backend.init_state(cfg, init_params(cfg, seed=0), BENCH_OPTIMIZER)
    backend.train_step(state, x[:batch], y[:batch])  # warm-up (JIT, buffers)
    if len(x) % batch:
        backend.train_step(state, x[-(len(x) % batch):], y[-(len(x) % batch):])
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        backend.train_step(state, x[i : i + batch], y[i : i + batch])
    return time.perf_counter() - start


def scaling_exponent(sizes, seconds) -> float:
    """a in seconds ~ sizes^a, by least squares on the logs."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def run_scaling(backends: list[str] | None = None, hidden: int = 32, base_n: int = 1000, steps: int = 32,
                batch: int = 32, dtype: str = "float32", threads: int | None = None, repeats: int = 3,
                progress: bool = True) -> dict[str, Any]:
    """Epoch time for N, 2N, 4N, 8N sequences with a fixed minibatch and with full-batch
    steps, and the fitted exponent per backend."""
    threads = threads or default_threads()
    names = backends or default_backends()[0]
    sizes = [base_n * k for k in (1, 2, 4, 8)]
    cfg = bench_model(hidden, dtype)
    x_all, y_all = bench_batch(cfg, sizes[-1], steps, seed=1)
    results = []
    bar = progress_bar(progress, total=len(names) * len(sizes) * 2, desc="scaling", unit="run")
    for name in names:
        with get_backend(name).using_threads(1 if name == REFERENCE else threads) as backend:
            if backend.capabilities.why_unsupported(cfg, BENCH_OPTIMIZER):
                bar.update(2 * len(sizes))
                continue
            for mode in ("fixed batch", "full batch"):
                times = []
                for n in sizes:
                    b = batch if mode == "fixed batch" else n
                    times.append(float(np.median([epoch_seconds(backend, cfg, x_all[:n], y_all[:n], b)
                                                  for _ in range(repeats)])))
                    bar.update(1)
                results.append({"backend": name, "mode": mode, "batch": batch if mode == "fixed batch" else "N",
                                "threads": backend.threads, "sizes": sizes, "seconds": times,
                                "exponent": scaling_exponent(sizes, times)})
    bar.close()
    return {"kind": "scaling", "machine": machine_info(), "dtype": dtype, "hidden": hidden, "steps": steps,
            "results": results}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": default_threads(), "python": platform.python_version(),
            "numpy": np.__version__}


# -- presentation ------------------------------------------------------------------------


def _gpu_row(runtime: dict[str, Any]) -> bool:
    return bool(runtime.get("device")) and not runtime.get("simulator")


def _threads_cell(row: dict[str, Any]) -> str:
    if row["runtime"].get("simulator"):
        return "sim"
    return "gpu" if _gpu_row(row["runtime"]) else str(row["threads"])


def format_grid(report: dict[str, Any]) -> str:
    dtype, threads = report["dtype"], report["threads"]
    lines = [f"training step, {dtype}, Adam; backends on {threads} threads; {report['machine']['cpu']}"]
    fma = report.get("fma_peak")
    if fma:
        lines.append(f"FMA peak measured now: {fma['gflops']:.1f} GFLOP/s on {fma['threads']} threads "
                     f"({fma['per_core_gflops']:.1f} per core; {fma['isa']}, {fma['vector_bits']}-bit vectors, "
                     f"{fma['dtype']}): %peak is of this")
    else:
        lines.append("FMA peak: not measured (the probe lstmbench.bench.peak._fma_probe is not built): no %peak")
    kernels = sorted({f"{b['internal_api']} {b['version']}, {b['architecture']} kernel" for b in report["blas"]})
    lines.append(f"BLAS matrix product measured now: {report['matmul_peak_gflops']:.1f} GFLOP/s on {threads} "
                 f"threads ({'; '.join(kernels) or 'no BLAS found'})")
    if report.get("blas_restriction"):
        lines.append(f"note: {report['blas_restriction']}")
    lines += [f"  {w['name']}: {w['describe']}" for w in report["workloads"]]
    header = f"{'workload':<20} {'backend':<24} {'thr':>3}  {'ms/step':>9} {'IQR ms':>15}  {'samples/s':>10}  " \
             f"{'GFLOP/s':>8} {'%peak':>6}  {'speedup':>8}  check"
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        t = r["timing"]
        lead = f"{r['workload']:<20} {r['label']:<24} {_threads_cell(r):>3}  "
        if t is None:
            lines.append(f"{lead}{'-':>9} {'':>15}  {'':>10}  {'':>8} {'':>6}  {'':>8}  {r['status']}: {r['detail']}")
            continue
        iqr = f"{_sig(t['q1_s'] * 1e3)}-{_sig(t['q3_s'] * 1e3)}"
        mark = "verified" if r["backend"] != REFERENCE else "reference"
        if r.get("unstable"):
            mark += f"  ! unstable: {r['unstable']}"
        pct = f"{r['pct_peak']:>5.1f}%" if r["pct_peak"] is not None else f"{'-':>6}"
        lines.append(f"{lead}{_sig(t['median_s'] * 1e3, 4):>9} {iqr:>15}  {r['samples_per_s']:>10.1f}  "
                     f"{r['gflops']:>8.1f} {pct}  {_sig(r['speedup']) + 'x':>8}  {mark}")
    for name, reason in report.get("unavailable", {}).items():
        lines.append(f"{name}: not timed: {reason}")
    unstable = [r for r in report["rows"] if r.get("unstable")]
    if unstable:
        load = report.get("load_average") or [None]
        busy = f" (load average {load[0]:.1f} on {report['machine']['usable_cores']} cores at the start)" \
            if load[0] is not None else ""
        lines.append(f"warning: {len(unstable)} row(s) marked ! are unstable{busy}: something else was using the "
                     "cores. Compare nothing across them; rerun on a quiet machine, or with more --repeats.")
    lines.append("speedup = time of the NumPy reference with 1 BLAS thread / time of the row, same run; "
                 "GFLOP/s from the model's FLOP count (docs/benchmarks.md)")
    if any(_gpu_row(r["runtime"]) for r in report["rows"]):
        lines.append("%peak is of the CPU's FMA peak, so GPU rows have none")
    return "\n".join(lines)


def _sig(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, never in exponent form for the sizes
    a bench shows (0.00123, 1.23, 1234)."""
    text = f"{value:.{digits}g}"
    return f"{value:.{max(0, digits - 1 - int(np.floor(np.log10(abs(value)))))}f}" if "e" in text else text


def format_scaling(report: dict[str, Any]) -> str:
    lines = [f"epoch time vs dataset size N (H={report['hidden']}, T={report['steps']}, {report['dtype']}); "
             "exponent a in time ~ N^a (a < 1: time grows slower than the data)"]
    for r in report["results"]:
        cells = "  ".join(f"N={n}: {s:.3f}s" for n, s in zip(r["sizes"], r["seconds"]))
        lines.append(f"{r['backend']:<10} {r['mode']:<11} thr={r['threads']}  {cells}  a={r['exponent']:.2f}")
    return "\n".join(lines)


def plot(grid: dict | None, scaling: dict | None, path) -> None:
    """Speedup bars per (H, B) and, if given, the epoch-time scaling curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lstmbench.training.checkpoint import atomic_write

    panels = [p for p in (grid, scaling) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    ax_iter = iter(axes[0])
    if grid:
        ax = next(ax_iter)
        timed = [r for r in grid["rows"] if r["speedup"] is not None]
        points = [w["name"] for w in grid["workloads"]]
        labels = sorted({r["label"] for r in timed}, key=lambda s: (not s.startswith(REFERENCE), s))
        width = 0.8 / max(1, len(labels))
        for k, label in enumerate(labels):
            vals = [next((r["speedup"] for r in timed if r["label"] == label and r["workload"] == p), 0)
                    for p in points]
            ax.bar(np.arange(len(points)) + k * width, vals, width, label=label)
        ax.set_xticks(np.arange(len(points)) + width * (len(labels) - 1) / 2, [p.replace(" ", "\n") for p in points])
        ax.set_ylabel("speedup over NumPy reference (1 BLAS thread)")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_title(f"training step, {grid['dtype']}")
        ax.legend(fontsize=8)
    if scaling:
        ax = next(ax_iter)
        for r in scaling["results"]:
            ax.loglog(r["sizes"], r["seconds"], "o-" if r["mode"] == "fixed batch" else "s--",
                      label=f"{r['backend']} {r['mode']} (a={r['exponent']:.2f})")
        sizes = scaling["results"][0]["sizes"] if scaling["results"] else []
        if sizes:
            ax.loglog(sizes, [scaling["results"][0]["seconds"][0] * n / sizes[0] for n in sizes], "k:", label="time ∝ N")
        ax.set_xlabel("sequences per epoch N")
        ax.set_ylabel("seconds per epoch")
        ax.set_title("epoch time vs dataset size")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


# -- data-parallel training over MPI ---------------------------------------------------------


def _distributed_epoch(backend: Backend, cfg: ModelConfig, x, y, global_batch: int, world) -> tuple[float, float]:
    """(seconds, seconds in the gradient hook's Allreduce) of one epoch of data-parallel
    steps, on rank 0, between barriers."""
    from lstmbench.training.distributed import shard

    state = backend.init_state(cfg, init_params(cfg, seed=0), BENCH_OPTIMIZER)
    reducing = 0.0

    def timed(hook):
        def run(grad, loss):
            nonlocal reducing
            start = time.perf_counter()
            total = hook(grad, loss)
            reducing += time.perf_counter() - start
            return total
        return run

    world.barrier()
    start = time.perf_counter()
    for lo in range(0, len(x), global_batch):
        idx = np.arange(lo, min(lo + global_batch, len(x)))
        part = idx[shard(len(idx), world.size, world.rank)]
        state.gradient_hook = timed(world.gradient_hook(len(part), len(idx), lambda: False))
        backend.train_step(state, x[part], y[part])
    world.barrier()
    return time.perf_counter() - start, reducing


def run_distributed(world, backend_name: str, hidden: int = 128, batch: int = 128, steps: int = 64,
                    dtype: str = "float32", batches: int = 8, threads: int | None = None, repeats: int = 3,
                    progress: bool = True) -> dict[str, Any]:
    """Data-parallel training on P = 1 .. world.size ranks (the first P of them), ``batches``
    minibatches an epoch:

    * strong scaling: the global minibatch stays ``batch`` rows (each rank gets batch / P),
      the dataset stays ``batches * batch`` sequences: speedup t(1)/t(P) and efficiency;
    * weak scaling: each rank keeps ``batch`` rows (the global minibatch is P * batch) and
      the dataset grows with P: t(P)/t(1), which stays near 1 if adding ranks with the data
      keeps the time flat.

    Every epoch is timed on rank 0 between barriers, after a warm-up epoch; medians of
    ``repeats``. The share in Allreduce is the time in the gradient hook's Allreduce
    (waiting for the slowest rank included) over the epoch's."""
    from lstmbench.training.distributed import threads_per_rank

    threads = threads or threads_per_rank(world)
    backend = get_backend(backend_name)
    backend.set_threads(threads)
    cfg = bench_model(hidden, dtype)
    rows = []
    bar = progress_bar(progress and world.is_root, total=world.size * 2, desc="distributed", unit="run")
    for ranks in range(1, world.size + 1):
        sub = world.subset(ranks)
        for mode in ("strong", "weak"):
            global_batch = batch if mode == "strong" else batch * ranks
            if sub is not None:
                x, y = bench_batch(cfg, batches * global_batch, steps, seed=1)
                _distributed_epoch(backend, cfg, x, y, global_batch, sub)  # warm-up (JIT, workspaces)
                runs = [_distributed_epoch(backend, cfg, x, y, global_batch, sub) for _ in range(repeats)]
                epoch = float(np.median([r[0] for r in runs]))
                reducing = float(np.median([r[1] / r[0] for r in runs]))
                if sub.is_root:
                    rows.append({"mode": mode, "ranks": ranks, "threads_per_rank": threads,
                                 "global_batch": global_batch, "rows_per_rank": global_batch // ranks,
                                 "sequences": batches * global_batch, "epoch_s": epoch, "step_s": epoch / batches,
                                 "allreduce_share": reducing})
            world.idle_barrier()  # the ranks left out of this measurement wait here without spinning
            bar.update(1)
    bar.close()
    for mode in ("strong", "weak"):
        base = next(r["epoch_s"] for r in rows if r["mode"] == mode and r["ranks"] == 1) if rows else None
        for r in (r for r in rows if r["mode"] == mode):
            if mode == "strong":
                r["speedup"] = base / r["epoch_s"]
                r["efficiency"] = r["speedup"] / r["ranks"]
            else:
                r["time_vs_1_rank"] = r["epoch_s"] / base
    return {"kind": "distributed", "machine": machine_info(), "backend": backend_name,
            "runtime": backend.runtime_info(), "model": cfg.to_dict(), "steps": steps, "batches_per_epoch": batches,
            "optimizer": BENCH_OPTIMIZER.to_dict(), "rows": rows}


def format_distributed(report: dict[str, Any]) -> str:
    m = report["model"]
    lines = [f"data-parallel training over MPI: backend {report['backend']}, H={m['hidden_size']}, "
             f"T={report['steps']}, {m['dtype']}, Adam, {report['batches_per_epoch']} minibatches an epoch; "
             f"{report['machine']['cpu']}",
             f"{'mode':<7} {'ranks':>5} {'thr/rank':>8} {'batch':>6} {'rows/rank':>9} {'seqs':>6} {'epoch s':>9} "
             f"{'step ms':>9} {'allreduce':>9}  scaling"]
    for r in report["rows"]:
        scaling = (f"speedup {r['speedup']:.2f}x, efficiency {100 * r['efficiency']:.0f}%" if r["mode"] == "strong"
                   else f"{r['time_vs_1_rank']:.2f}x the 1-rank epoch on {r['ranks']}x the data")
        lines.append(f"{r['mode']:<7} {r['ranks']:>5} {r['threads_per_rank']:>8} {r['global_batch']:>6} "
                     f"{r['rows_per_rank']:>9} {r['sequences']:>6} {r['epoch_s']:>9.3f} {1e3 * r['step_s']:>9.2f} "
                     f"{100 * r['allreduce_share']:>8.1f}%  {scaling}")
    lines.append("strong: fixed global minibatch and dataset; weak: fixed rows per rank, dataset grows with the "
                 "ranks; allreduce: share of the epoch in the gradient hook's Allreduce")
    return "\n".join(lines)
