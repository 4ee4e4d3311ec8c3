"""`lstmbench bench --latency`: the latency of one step of a streaming model at B=1, the state
(h, c) carried from call to call, as a model serving a stream of readings or symbols runs.

Each backend steps through Backend.stepper (forward(..., initial_state=..., return_state=True)
with the parameters prepared once), the reference on one BLAS thread, the others on
``threads``; torch steps torch.nn.LSTM as its users do, ``lstm(x_t, (h, c))`` and the head under
torch.no_grad() (lstmbench.bench.peers.TorchStream), at its best thread count. Every step is
timed on its own over ``repeats`` streams of ``steps`` steps (each from a zero state, after one
untimed stream): the median and the 90th percentile in microseconds. Before it is timed, every
row's stream is verified: its output at each step equals one reference forward pass over the
same steps (lstmbench.bench.verify.stream_disagreement), so a state carried wrongly is FAILED.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from lstmbench.bench.machine import OtherLoad, busy_note, load_average, machine_info
from lstmbench.bench.peers import TorchStream, fastest_thread_count
from lstmbench.bench.timing import Latency, call_seconds, settle
from lstmbench.bench.verify import stream_disagreement
from lstmbench.bench.workloads import Workload, grid_workloads
from lstmbench.params import init_params
from lstmbench.protocol import Backend, default_threads
from lstmbench.registry import REFERENCE, get_backend


@dataclass
class LatencyRow:
    label: str
    backend: str
    workload: str
    hidden: int
    layers: int
    threads: int
    status: str  # "ok", "FAILED", "skipped"
    detail: str = ""
    latency: Latency | None = None
    steps_per_s: float | None = None  # 1 / the median step
    speedup: float | None = None  # the reference's median step (1 BLAS thread) / this row's
    runtime: dict[str, Any] = field(default_factory=dict)


def run_latency(backends: list[str], hidden_sizes=(32, 128), steps: int = 64, dtype: str = "float32",
                threads: int | None = None, repeats: int = 7, with_torch: bool = True,
                model: dict | None = None) -> dict[str, Any]:
    """Verify, then time one streamed step (B=1) per backend, and torch's, at every hidden size
    of one model shape (``model``: as the grid's); ``steps`` per stream, ``repeats`` streams."""
    threads = threads or default_threads()
    workloads = grid_workloads(hidden_sizes, (1,), steps, **(model or {}))
    load_before = load_average()
    rows = []
    with OtherLoad() as others:
        for work in workloads:
            cfg = work.model(dtype)
            params, x = init_params(cfg, seed=0), work.data(cfg)[0]
            for name in backends:
                with get_backend(name).using_threads(1 if name == REFERENCE else threads) as backend:
                    rows.append(_backend_row(name, backend, work, cfg, params, x, repeats))
            if with_torch and (row := _torch_row(work, cfg, params, x, repeats)) is not None:
                rows.append(row)
    base = {r.workload: r.latency.median_us for r in rows if r.backend == REFERENCE and r.latency}
    for r in rows:
        if r.latency and r.workload in base:
            r.speedup = base[r.workload] / r.latency.median_us
    return {"kind": "latency", "machine": machine_info(), "load_average": [load_before, load_average()],
            "others_cores": others.cores, "dtype": dtype, "threads": threads, "steps": steps, "repeats": repeats,
            "workloads": [asdict(w) | {"describe": w.describe} for w in workloads], "rows": [asdict(r) for r in rows]}


def stream_seconds(step: Callable[[Any], object], xs: list, repeats: int, reset: Callable[[], None]) -> list[float]:
    """The seconds of every ``step(x_t)`` over ``repeats`` streams of ``xs``, each started with
    ``reset()`` (a zero state), after one untimed stream."""
    seconds = []
    settle()
    for k in range(repeats + 1):
        reset()
        inputs = iter(xs)
        taken = call_seconds(lambda: step(next(inputs)), len(xs), warmup=0)
        seconds += taken if k else []
    return seconds


def _backend_row(name: str, backend: Backend, work: Workload, cfg, params, x: np.ndarray, repeats: int) -> LatencyRow:
    """A backend's row: skipped (no state carried, or the model unsupported), FAILED (its
    stream disagrees with the reference's forward pass), or timed."""
    label = REFERENCE + " (1 BLAS thread)" if name == REFERENCE else name
    row = LatencyRow(label, name, work.name, work.hidden, work.layers, backend.threads, "ok")
    reason = backend.capabilities.why_unsupported(cfg)
    if not backend.capabilities.sequences:
        reason = "does not carry a state from one call to the next (design.md section 8)"
    if reason:
        row.status, row.detail = "skipped", reason
        return row
    if problem := stream_disagreement(backend.stepper(cfg, params), cfg, params, x):
        row.status, row.detail = "FAILED", problem
        return row
    stepper = backend.stepper(cfg, params)
    xs = [np.ascontiguousarray(x[:, t : t + 1]) for t in range(x.shape[1])]
    row.latency = Latency.of(stream_seconds(stepper, xs, repeats, lambda: setattr(stepper, "state", None)))
    row.steps_per_s, row.runtime = 1e6 / row.latency.median_us, backend.runtime_info()
    return row


def _torch_row(work: Workload, cfg, params, x: np.ndarray, repeats: int) -> LatencyRow | None:
    """torch's stream at its best thread count, verified first; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    row = LatencyRow("torch.nn.LSTM no_grad", "torch", work.name, work.hidden, work.layers, 1, "ok",
                     runtime={"torch": torch.__version__})
    if problem := stream_disagreement(TorchStream(cfg, params), cfg, params, x):
        row.status, row.detail = "FAILED", problem
        return row
    stream = TorchStream(cfg, params)
    xs = [torch.from_numpy(np.ascontiguousarray(x[:, t : t + 1])) for t in range(x.shape[1])]

    def whole_stream():
        stream.reset()
        for xt in xs:
            stream.step(xt)
    row.threads = fastest_thread_count(whole_stream, max(1, repeats // 2))[1]  # and stays on that count
    row.latency = Latency.of(stream_seconds(stream.step, xs, repeats, stream.reset))
    row.steps_per_s = 1e6 / row.latency.median_us
    return row


def format_latency(report: dict[str, Any]) -> str:
    lines = [f"streaming latency: one step at B=1, the state (h, c) carried, {report['dtype']}; backends on "
             f"{report['threads']} threads; {report['repeats']} streams of {report['steps']} steps, each step timed "
             f"alone; {report['machine']['cpu']}"]
    lines += [f"  {w['name']}: " + w["describe"].replace(f", T={w['steps']}", "") for w in report["workloads"]]
    header = f"{'workload':<14} {'row':<24} {'thr':>3} {'median us':>10} {'p90 us':>10} {'steps/s':>10} " \
             f"{'speedup':>8}  check"
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        lead = f"{r['workload']:<14} {r['label']:<24} {r['threads']:>3} "
        lat = r["latency"]
        if lat is None:
            lines.append(f"{lead}{'-':>10} {'':>10} {'':>10} {'':>8}  {r['status']}: {r['detail']}")
            continue
        speedup = f"{r['speedup']:.3g}x" if r["speedup"] else "-"
        mark = "reference" if r["backend"] == REFERENCE else "verified"
        lines.append(f"{lead}{lat['median_us']:>10.1f} {lat['p90_us']:>10.1f} {r['steps_per_s']:>10.0f} {speedup:>8}  "
                     f"{mark}")
    if note := busy_note(report.get("others_cores"), "these times"):
        lines.append(f"note: {note}")
    lines.append("verified: each row's outputs, step by step, equal one reference forward pass over the same steps; "
                 "speedup = the reference's median step (1 BLAS thread) / the row's, same run")
    return "\n".join(lines)
