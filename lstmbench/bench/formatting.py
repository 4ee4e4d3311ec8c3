"""The bench's reports for people: the grid's table, the scaling and data-parallel summaries,
and the speedup and scaling figure."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmbench.bench.machine import busy_note
from lstmbench.bench.rows import on_gpu
from lstmbench.registry import REFERENCE


def format_grid(report: dict[str, Any]) -> str:
    lines = _grid_header(report)
    widths = (max([20] + [len(r["workload"]) for r in report["rows"]]),
              max([24] + [len(r["label"]) for r in report["rows"]]))
    split = any(r.get("fwd") for r in report["rows"])  # a row with its forward and backward timed apart
    unit = "ms/fwd" if report.get("timed") == "forward" else "ms/step"
    header = f"{'workload':<{widths[0]}} {'backend':<{widths[1]}} {'thr':>3}  {unit:>9} {'IQR ms':>15}  " \
             f"{'samples/s':>10}  {'GFLOP/s':>8} {'%peak':>6}  {'speedup':>8}  " + \
             (f"{'fwd + bwd ms':>17}  " if split else "") + "check"
    lines += [header, "-" * len(header)]
    lines += [_grid_line(r, widths, split) for r in report["rows"]]
    for name, reason in report.get("unavailable", {}).items():
        lines.append(f"{name}: not timed: {reason}")
    unstable = [r for r in report["rows"] if r.get("unstable")]
    if unstable:
        load = report.get("load_average") or [None]
        busy = f" (load average {load[0]:.1f} on {report['machine']['usable_cores']} cores at the start)" \
            if load[0] is not None else ""
        lines.append(f"warning: {len(unstable)} row(s) marked ! are unstable{busy}: something else was using the "
                     "cores. Compare nothing across them; rerun on a quiet machine, or with more --repeats.")
    if note := busy_note(report.get("others_cores"), "these times"):
        lines.append(f"note: {note}")
    lines.append("speedup = time of the NumPy reference with 1 BLAS thread / time of the row, same run; "
                 "GFLOP/s from the model's FLOP count (docs/benchmarks.md)")
    if split:
        lines.append("fwd + bwd: the torch row's forward (with the loss) and loss.backward() timed apart, medians "
                     "(fastrnns' avg_fwd, avg_bwd); the Adam update is the rest of its step. Our backends run the "
                     "step as one call (no separate backward in the protocol): theirs is not split")
    if any(on_gpu(r["runtime"]) for r in report["rows"]):
        lines.append("%peak is of the CPU's FMA peak, so GPU rows have none")
    return "\n".join(lines)


def _grid_header(report: dict[str, Any]) -> list[str]:
    """What the run was and what its ceilings were, and the workloads it timed."""
    dtype, threads = report["dtype"], report["threads"]
    on = f"up to {threads} threads (auto)" if report.get("threads_mode") == "auto" else f"{threads} threads"
    what = ("forward pass (inference: no gradient; torch under torch.no_grad()), " + dtype
            if report.get("timed") == "forward" else f"training step, {dtype}, Adam")
    lines = [f"{what}; backends on {on}; {report['machine']['cpu']}"]
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
    return lines + [f"  {w['name']}: {w['describe']}{_published(w.get('published'))}" for w in report["workloads"]]


def _published(p: dict[str, Any] | None) -> str:
    """A published figure for the workload's shape, with its source, or ""."""
    if not p:
        return ""
    parts = f" = {' + '.join(f'{v:g}' for v in p['parts_ms'])}" if p["parts_ms"] else ""
    return (f"\n      published: {p['time_ms']:g} ms{parts} ({p['what']}) on {p['hardware']}, {p['tflops']:g} TFLOP/s "
            f"by its count, {p['flop_count']}; {p['source']}")


def _grid_line(r: dict[str, Any], widths: tuple[int, int] = (20, 24), split: bool = False) -> str:
    t = r["timing"]
    lead = f"{r['workload']:<{widths[0]}} {r['label']:<{widths[1]}} {_threads_cell(r):>3}  "
    if t is None:
        return (f"{lead}{'-':>9} {'':>15}  {'':>10}  {'':>8} {'':>6}  {'':>8}  " + (f"{'':>17}  " if split else "")
                + f"{r['status']}: {r['detail']}")
    iqr = f"{significant(t['q1_s'] * 1e3)}-{significant(t['q3_s'] * 1e3)}"
    mark = "verified" if r["backend"] != REFERENCE else "reference"
    if r.get("unstable"):
        mark += f"  ! unstable: {r['unstable']}"
    pct = f"{r['pct_peak']:>5.1f}%" if r["pct_peak"] is not None else f"{'-':>6}"
    phases = ""
    if split:
        phases = (f"{significant(r['fwd']['median_s'] * 1e3)} + {significant(r['bwd']['median_s'] * 1e3)}"
                  if r.get("fwd") else "-")
        phases = f"{phases:>17}  "
    return (f"{lead}{significant(t['median_s'] * 1e3, 4):>9} {iqr:>15}  {r['samples_per_s']:>10.1f}  "
            f"{r['gflops']:>8.1f} {pct}  {significant(r['speedup']) + 'x':>8}  {phases}{mark}")


def _threads_cell(row: dict[str, Any]) -> str:
    if row["runtime"].get("simulator"):
        return "sim"
    return "gpu" if on_gpu(row["runtime"]) else str(row["threads"])


def significant(value: float, digits: int = 3) -> str:
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


def plot(grid: dict | None, scaling: dict | None, path) -> None:
    """Speedup bars per workload and, if given, the epoch-time scaling curves, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lstmbench.training.checkpoint import atomic_write

    panels = [p for p in (grid, scaling) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    ax_iter = iter(axes[0])
    if grid:
        _plot_speedups(next(ax_iter), grid)
    if scaling:
        _plot_scaling(next(ax_iter), scaling)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _plot_speedups(ax, grid: dict[str, Any]) -> None:
    timed = [r for r in grid["rows"] if r["speedup"] is not None]
    points = [w["name"] for w in grid["workloads"]]
    labels = sorted({r["label"] for r in timed}, key=lambda s: (not s.startswith(REFERENCE), s))
    width = 0.8 / max(1, len(labels))
    for k, label in enumerate(labels):
        vals = [next((r["speedup"] for r in timed if r["label"] == label and r["workload"] == p), 0) for p in points]
        ax.bar(np.arange(len(points)) + k * width, vals, width, label=label)
    ax.set_xticks(np.arange(len(points)) + width * (len(labels) - 1) / 2, [p.replace(" ", "\n") for p in points])
    ax.set_ylabel("speedup over NumPy reference (1 BLAS thread)")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_title(f"training step, {grid['dtype']}")
    ax.legend(fontsize=8)


def _plot_scaling(ax, scaling: dict[str, Any]) -> None:
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
