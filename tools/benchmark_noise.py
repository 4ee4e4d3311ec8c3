"""How much the tracked figures move between runs of one commit (issue 22; docs/benchmarks.md,
"How much the figures move"): runs the measurement of benchmarks/bench_tracked.py (both
classes' setup_cache, as asv would) ``--runs`` times, each in a fresh process, and prints per
figure the spread over the runs (largest / smallest, per backend and workload) of the raw step
time and of the same-process ratios. The largest spread of a ratio is what
lstmbench.bench.regressions.NOISE_FACTOR is set from.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/benchmark_noise.py --runs 5 --json noise.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_RUN = """
import json, sys
sys.path.insert(0, {repo!r})
from benchmarks import bench_tracked as bt
found = {{**bt.Relative().setup_cache(), **{{(b, w, "ref"): v for (b, w), v in bt.OverReference().setup_cache().items()}}}}
print(json.dumps([[list(k), v] for k, v in found.items() if isinstance(v, dict)]))
"""
FIGURES = {  # (which measurement, field) -> what the docs call it
    ("probe", "step_s"): "raw step time",
    ("probe", "probe_gflop"): "step x FMA probe",
    ("ref", "step_s"): "raw step time (beside the reference)",
    ("ref", "over_reference"): "step / reference step",
}


def one_run() -> dict:
    out = subprocess.run([sys.executable, "-c", ONE_RUN.format(repo=str(REPO))], check=True, capture_output=True,
                         text=True, cwd=REPO).stdout
    return {tuple(k): v for k, v in json.loads(out.splitlines()[-1])}


def spreads(runs: list[dict]) -> dict[str, dict[str, float]]:
    """{figure: {"backend workload": largest / smallest over the runs}}."""
    table: dict[str, dict[str, float]] = {name: {} for name in FIGURES.values()}
    for key in runs[0]:
        which = "ref" if len(key) == 3 else "probe"
        for (kind, field), name in FIGURES.items():
            values = [run[key][field] for run in runs if key in run]
            if kind == which and values and None not in values:
                table[name][f"{key[0]} {key[1]}"] = max(values) / min(values)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write every run and the spreads here")
    args = p.parse_args(argv)
    runs = []
    for k in range(args.runs):
        runs.append(one_run())
        print(f"run {k + 1} of {args.runs} done", file=sys.stderr, flush=True)
    table = spreads(runs)
    for name, by_case in table.items():
        if by_case:
            values = sorted(by_case.values())
            print(f"{name:38s} spread over {args.runs} runs: median {statistics.median(values):.3f}, "
                  f"largest {values[-1]:.3f} ({max(by_case, key=by_case.get)})")
    if args.json:
        args.json.write_text(json.dumps({"runs": [[[*k], v] for run in runs for k, v in run.items()],
                                         "spreads": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
