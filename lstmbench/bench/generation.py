"""`lstmbench bench --generation`: text generation at one row (B=1), symbols per second.

Each backend generates with its state carried (Backend.generate: the prime once, then one
step per symbol), beside two ways to get the same text without that: torch.nn.LSTM stepped
by hand with (h, c) carried, as a torch user writes it, and the window re-run (every symbol
runs the last --seq-len symbols again from a zero state: what `predict --prime` did before
states were carried). Every row is verified first: a backend draws the reference's symbols
from the same uniforms (float64), torch's logits along a symbol sequence equal the
reference's forward pass over it (float64, the kit's tolerance; the streaming check of
`bench --latency`, lstmbench.bench.verify.stream_disagreement).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lstmbench.bench.machine import OtherLoad, load_average, machine_info
from lstmbench.bench.peers import TorchStream, fastest_thread_count, torch_modules
from lstmbench.bench.timing import Timing, time_calls
from lstmbench.bench.verify import stream_disagreement
from lstmbench.bench.workloads import bench_model
from lstmbench.config import ModelConfig
from lstmbench.params import Params, init_params
from lstmbench.protocol import Backend, default_threads, draw_symbol
from lstmbench.registry import REFERENCE, get_backend

VOCAB, HIDDEN, LAYERS = 65, 256, 2  # a character model: the bundled Shakespeare's symbols, 2 x 256
PRIME = 32  # symbols of the prime
VERIFY_SYMBOLS = 48  # symbols a row must draw as the reference does


@dataclass
class GenerationRow:
    label: str
    backend: str
    method: str  # "carried state", "torch stepwise", "window re-run (seq-len N)"
    threads: int
    symbols: int  # per timed call
    status: str  # "ok", "FAILED", "skipped"
    detail: str = ""
    timing: Timing | None = None
    symbols_per_s: float | None = None
    runtime: dict[str, Any] = field(default_factory=dict)


def char_model(dtype: str) -> ModelConfig:
    return bench_model(HIDDEN, dtype, VOCAB, VOCAB, LAYERS, "xent", True)


def window_generate(backend: Backend, cfg: ModelConfig, params: Params, prime: np.ndarray, uniforms: np.ndarray,
                    window: int, temperature: float = 1.0) -> np.ndarray:
    """Generation without a carried state: each symbol from a forward pass over the last
    ``window`` symbols, from zeros."""
    symbols, ids = np.eye(cfg.input_size, dtype=cfg.np_dtype), list(prime)
    for u in uniforms:
        logits = backend.forward(cfg, params, symbols[ids[-window:]][None])[0, -1]
        ids.append(draw_symbol(logits, temperature, u))
    return np.array(ids[len(prime):])


def run_generation(backends: list[str], dtype: str = "float32", threads: int | None = None, repeats: int = 5,
                   symbols: int = 1000, window: int = 64, with_torch: bool = True) -> dict[str, Any]:
    """Verify, then time generation per backend (carried state, and the window re-run on
    fewer symbols: it is slow), and torch's stepwise loop; symbols per second, medians."""
    threads = threads or default_threads()
    cfg = char_model(dtype)
    params = init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    prime, uniforms = rng.integers(0, VOCAB, PRIME), rng.random(symbols)
    load_before = load_average()
    rows = []
    with OtherLoad() as others:
        for name in backends:
            with get_backend(name).using_threads(1 if name == REFERENCE else threads) as backend:
                rows.append(_carried_row(name, backend, cfg, params, prime, uniforms, repeats))
                if name != REFERENCE:  # (the reference's window re-run would take minutes and say nothing new)
                    rows.append(_window_row(name, backend, cfg, params, prime, uniforms[: max(8, symbols // 50)],
                                            window, repeats))
        if with_torch and (row := torch_row(cfg, params, prime, symbols, repeats)) is not None:
            rows.append(row)
    return {"kind": "generation", "machine": machine_info(), "load_average": [load_before, load_average()],
            "others_cores": others.cores, "dtype": dtype, "threads": threads, "window": window,
            "model": f"one-hot {VOCAB} symbols, {LAYERS} x {HIDDEN}, B=1, prime {PRIME}",
            "rows": [asdict(r) for r in rows], "ratios": generation_ratios(rows)}


def verified_generation(backend: Backend, generate) -> str | None:
    """None if ``generate(backend, cfg, params, prime, uniforms)`` draws the reference's symbols
    in float64 (where rounding cannot move a draw), else what differed."""
    cfg = char_model("float64")
    params = init_params(cfg, seed=1)
    rng = np.random.default_rng(1)
    prime, uniforms = rng.integers(0, VOCAB, PRIME), rng.random(VERIFY_SYMBOLS)
    expected = get_backend(REFERENCE).generate(cfg, params, prime, uniforms)
    got = generate(backend, cfg, params, prime, uniforms)
    if np.array_equal(got, expected):
        return None
    first = int(np.flatnonzero(got != expected)[0])
    return f"symbol {first} drawn as {got[first]}, the reference draws {expected[first]} (float64)"


def _carried_row(name, backend, cfg, params, prime, uniforms, repeats) -> GenerationRow:
    row = GenerationRow(name, name, "carried state", backend.threads, len(uniforms), "ok")
    if not backend.capabilities.sequences:
        row.status, row.detail = "skipped", "does not carry a state (design.md section 8)"
        return row
    if problem := verified_generation(backend, lambda b, *args: b.generate(*args)):
        row.status, row.detail = "FAILED", problem
        return row
    row.timing = time_calls(lambda: backend.generate(cfg, params, prime, uniforms), repeats)
    row.symbols_per_s, row.runtime = len(uniforms) / row.timing.median_s, backend.runtime_info()
    return row


def _window_row(name, backend, cfg, params, prime, uniforms, window, repeats) -> GenerationRow:
    row = GenerationRow(f"{name} window re-run", name, f"window re-run (seq-len {window})", backend.threads,
                        len(uniforms), "ok")
    if problem := verified_generation(backend, lambda b, *args: window_generate(b, *args, window=window)):
        row.status, row.detail = "FAILED", problem  # (the reference runs the same windows: same symbols)
        return row
    row.timing = time_calls(lambda: window_generate(backend, cfg, params, prime, uniforms, window), repeats)
    row.symbols_per_s, row.runtime = len(uniforms) / row.timing.median_s, backend.runtime_info()
    return row


def torch_stepwise(lstm, head, prime: np.ndarray, n: int, temperature: float = 1.0) -> list[int]:
    """Generation as a torch user writes it: the prime once, then per symbol a softmax, a
    torch.multinomial draw and one step of the LSTM from the (h, c) it returned."""
    import torch

    symbols = torch.eye(lstm.input_size, dtype=next(lstm.parameters()).dtype)
    drawn = []
    with torch.no_grad():
        out, state = lstm(symbols[torch.from_numpy(prime)][None])
        logits = head(out[0, -1])
        for _ in range(n):
            drawn.append(int(torch.multinomial(torch.softmax(logits / temperature, -1), 1)))
            out, state = lstm(symbols[drawn[-1]].view(1, 1, -1), state)
            logits = head(out[0, -1])
    return drawn


def _torch_disagreement() -> str | None:
    """None if torch's stepwise logits (float64) along a symbol sequence are the reference's
    forward pass over it (the streaming check of `bench --latency`)."""
    cfg = char_model("float64")
    params = init_params(cfg, seed=1)
    ids = np.random.default_rng(2).integers(0, VOCAB, 24)
    return stream_disagreement(TorchStream(cfg, params), cfg, params, np.eye(VOCAB)[ids][None])


def torch_row(cfg, params, prime, n, repeats) -> GenerationRow | None:
    """torch's stepwise loop at its best thread count, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    row = GenerationRow("torch.nn.LSTM stepwise", "torch", "torch stepwise", 1, n, "ok",
                        runtime={"torch": torch.__version__})
    if problem := _torch_disagreement():
        row.status, row.detail = "FAILED", problem
        return row
    lstm, head = torch_modules(cfg, params)
    torch.manual_seed(0)
    row.timing, row.threads = fastest_thread_count(lambda: torch_stepwise(lstm, head, prime, n), repeats)
    row.symbols_per_s = n / row.timing.median_s
    return row


def generation_ratios(rows: list[GenerationRow]) -> dict[str, dict[str, float]]:
    """Per backend: its carried-state rate over torch's stepwise rate and over its own window re-run."""
    rate = {(r.backend, r.method.split(" (")[0]): r.symbols_per_s for r in rows if r.symbols_per_s}
    torch_rate = rate.get(("torch", "torch stepwise"))
    ratios = {}
    for (name, method), value in rate.items():
        if method != "carried state":
            continue
        ratios[name] = {}
        if torch_rate:
            ratios[name]["over_torch_stepwise"] = value / torch_rate
        if (window := rate.get((name, "window re-run"))) is not None:
            ratios[name]["over_window_rerun"] = value / window
    return ratios


def format_generation(report: dict[str, Any]) -> str:
    lines = [f"text generation, {report['dtype']}, {report['model']}; backends on {report['threads']} threads; "
             f"{report['machine']['cpu']}"]
    header = f"{'row':<28} {'thr':>3} {'symbols':>8} {'ms/call':>9} {'symbols/s':>11}  check"
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        timed = r["timing"] is not None
        ms = f"{1e3 * r['timing']['median_s']:9.2f}" if timed else f"{'-':>9}"
        rate = f"{r['symbols_per_s']:11.0f}" if timed else f"{'-':>11}"
        check = {"ok": "verified"}.get(r["status"], f"{r['status']}: {r['detail']}")
        lines.append(f"{r['label']:<28} {r['threads']:>3} {r['symbols']:>8} {ms} {rate}  {check}")
    for name, ratio in report["ratios"].items():
        parts = [f"{value:.1f}x {what.replace('over_', 'over ').replace('_', ' ')}" for what, value in ratio.items()]
        lines.append(f"{name}: {', '.join(parts)}")
    lines.append(f"window re-run: each symbol runs the last {report['window']} symbols again from zeros (the state "
                 "is not carried); medians of repeated calls, same run")
    return "\n".join(lines)
