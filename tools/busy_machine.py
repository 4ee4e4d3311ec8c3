"""Training time on a quiet machine and beside a busy process: each parallel backend on one
thread, on every core, and on the adaptive count (--threads auto, the default), with the
reference beside them (issue 18's table, docs/determinism.md).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/busy_machine.py --runs 3

Each figure is `lstmbench train`'s own (metrics.json): the whole training, and the median epoch
after the first (the first loads Numba's cached kernels). "Busy" runs `busy_loops` processes
that spin (`while :; do :; done`) for the length of the run, as another job would. The
machine's load is stated with the figures: compare within one run of this tool only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

#: (row label, backend, --threads)
ROWS = [("numpy reference", "numpy", "1"), ("c, 1 thread", "c", "1"), ("c, every core", "c", str(os.cpu_count())),
        ("c, auto (default)", "c", "auto"), ("numba, 1 thread", "numba", "1"),
        ("numba, every core", "numba", str(os.cpu_count())), ("numba, auto (default)", "numba", "auto")]
TRAIN = ["--dataset", "sunspots", "--hidden", "48", "--epochs", "30", "--quiet"]


@contextmanager
def busy(loops: int):
    """``loops`` processes spinning on the CPU for the block."""
    spinners = [subprocess.Popen(["bash", "-c", "while :; do :; done"]) for _ in range(loops)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def train_once(backend: str, threads: str, folder: Path) -> dict:
    """One `lstmbench train` run: (whole training s, median epoch after the first s, threads used)."""
    cmd = [sys.executable, "-m", "lstmbench.cli", "train", *TRAIN, "--backend", backend, "--threads", threads,
           "--out", str(folder), "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    epochs = [h["seconds"] for h in metrics["history"]]
    return {"seconds": metrics["seconds"], "epoch_s": statistics.median(epochs[1:]),
            "threads": metrics.get("threads")}


def measure(runs: int, loops: int) -> dict:
    results: dict = {"quiet": {}, "busy": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for condition in ("quiet", "busy"):
            with busy(loops if condition == "busy" else 0):
                for k in range(runs):  # rows interleaved, so a change in the machine touches them all
                    for label, backend, threads in ROWS:
                        print(f"{condition} run {k + 1}/{runs}: {label}", file=sys.stderr, flush=True)
                        run = train_once(backend, threads, Path(tmp) / "run")
                        results[condition].setdefault(label, []).append(run)
    return results


def table(results: dict) -> str:
    lines = ["| | quiet: training s | quiet: epoch ms | busy: training s | busy: epoch ms | busy: threads used (auto) |",
             "|---|---:|---:|---:|---:|---|"]
    for label, _, _ in ROWS:
        cells = []
        for condition in ("quiet", "busy"):
            runs = results[condition][label]
            cells.append(_span([r["seconds"] for r in runs], 1, "{:.2f}"))
            cells.append(_span([r["epoch_s"] for r in runs], 1e3, "{:.1f}"))
        used = [r["threads"].get("steps_at") for r in results["busy"][label] if r["threads"].get("mode") == "auto"]
        cells.append("; ".join(", ".join(f"{n}: {s}" for n, s in u.items()) for u in used) if used else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _span(values: list[float], scale: float, fmt: str) -> str:
    values = sorted(v * scale for v in values)
    return f"{fmt.format(statistics.median(values))} ({fmt.format(values[0])}-{fmt.format(values[-1])})"


def goals(results: dict) -> list[str]:
    """Issue 18's goals, from the medians of the epochs after the first."""
    med = {c: {label: statistics.median(r["epoch_s"] for r in runs) for label, runs in rows.items()}
           for c, rows in results.items()}
    out = []
    for name in ("c", "numba"):
        ratio = med["busy"][f"{name}, auto (default)"] / med["busy"][f"{name}, 1 thread"]
        out.append(f"busy: {name} auto / {name} on 1 thread = {ratio:.2f} (goal <= 1.15)")
        quiet = med["quiet"][f"{name}, auto (default)"] / med["quiet"][f"{name}, every core"]
        out.append(f"quiet: {name} auto / {name} on every core = {quiet:.2f}")
    speedup = med["busy"]["numpy reference"] / med["busy"]["c, auto (default)"]
    out.append(f"busy: c auto is {speedup:.1f}x the reference (goal >= 3)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs of each row in each condition (default 3)")
    p.add_argument("--busy-loops", type=int, default=1, help="spinning processes in the busy condition (default 1)")
    p.add_argument("--json", help="also write the raw figures here")
    args = p.parse_args()
    results = measure(args.runs, args.busy_loops)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"{os.cpu_count()} cores; busy = {args.busy_loops} spinning process(es); {args.runs} runs each; "
          "median (range)")
    print(table(results))
    print("\n".join(goals(results)))


if __name__ == "__main__":
    main()
